/* The quantized softmax of exact evaluation (attention.py). */
#include "grid.h"

/* The quantized softmax of exact evaluation (attention.py) from e = exp(scores - row max),
 * rows x cols, in the torch ops' order and roundings: num = Qn(e); the row's total from the
 * codes of num, float(sum) * sum_scale + sum_shift; den = Qd(total) (den_on: else total
 * itself), clamped below at 1e-6; p = Qo(num / den).  Writes p's codes (float32, what P.V
 * multiplies) and, where probs is not NULL, p.  g holds the (lo, hi, step) of Qn, Qd, Qo;
 * cols * (Qn's top code) < 2^31. */
void fullyqt_softmax_codes(const float *e, int64_t rows, int64_t cols, const float *g,
                           float sum_scale, float sum_shift, int den_on, float *probs,
                           float *codes, int threads) {
    const float nlo = g[0], nhi = g[1], nstep = g[2], olo = g[6], ohi = g[7], ostep = g[8];
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float *restrict er = e + r * cols;
        float *restrict cr = codes + r * cols;
        int32_t sum = 0, nan = 0;  /* the caller keeps cols * top below 2^31 */
        for (int64_t j = 0; j < cols; ++j) {
            float num = on_grid(er[j], nlo, nhi, nstep);
            cr[j] = num;
            float k = code_of(num, nlo, nhi, nstep);
            nan |= k != k;
            sum += k == k ? (int32_t)k : 0;
        }
        float total = (float)sum * sum_scale;
        total = nan ? NAN : total + sum_shift;  /* a NaN code makes the torch sum NaN */
        float den = den_on ? on_grid(total, g[3], g[4], g[5]) : total;
        den = den < 1e-6f ? 1e-6f : den;
        for (int64_t j = 0; j < cols; ++j) {
            float p = on_grid(cr[j] / den, olo, ohi, ostep);
            if (probs)
                probs[r * cols + j] = p;
            cr[j] = code_of(p, olo, ohi, ostep);
        }
    }
}
