/* The integer matmul around its int32 sums: the centred int8 codes of its input (and their
 * row sums) before, the affine that turns the sums into float32 outputs after. */
#include "grid.h"

/* Centred integer codes clamp(round(x * scale_inv - shift), cmin, cmax) of a rows x cols
 * matrix as int8, and each row's code sum: what an integer matmul reads, in one pass (the same
 * float32 operations as the torch ops). */
void fullyqt_centred_codes(const float *x, int8_t *codes, int32_t *sums, int64_t rows,
                           int64_t cols, float scale_inv, float shift, float cmin, float cmax,
                           int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float *xr = x + r * cols;
        int8_t *cr = codes + r * cols;
        int32_t total = 0;
        for (int64_t i = 0; i < cols; ++i) {
            cr[i] = (int8_t)centred_code(xr[i], scale_inv, shift, cmin, cmax);
            total += cr[i];
        }
        sums[r] = total;
    }
}

/* An integer matmul's affine over its rows x cols sums, in place as float32:
 * y = fma(code_sums[m], beta[n], fma(float(sums), alpha[n], c[n])), each a fused multiply-add
 * rounded once, as torch's addcmul then addr compute it on CPU: one pass instead of three.
 * The sums are int32, or (float_sums) float32 holding exact integers. */
void fullyqt_int_affine(void *sums, int float_sums, const float *code_sums, const float *alpha,
                        const float *beta, const float *c, int64_t rows, int64_t cols,
                        int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        float *yr = (float *)sums + r * cols, a = code_sums[r];
        if (float_sums) {
            for (int64_t n = 0; n < cols; ++n)
                yr[n] = fmaf(a, beta[n], fmaf(yr[n], alpha[n], c[n]));
        } else {
            const int32_t *sr = (const int32_t *)sums + r * cols;
            for (int64_t n = 0; n < cols; ++n)
                yr[n] = fmaf(a, beta[n], fmaf((float)sr[n], alpha[n], c[n]));
        }
    }
}
