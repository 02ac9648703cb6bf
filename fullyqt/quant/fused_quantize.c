/* Fake quantization in one pass: clamp to [lo, hi], round onto the grid lo + k * step (half to
 * even), and optionally the 1-byte mask of where the clamp let x through (the straight-through
 * gradient).  The same float32 operations, in the same order, as the torch ops it replaces
 * (clamp, sub, div, round, mul, add; built with -ffp-contract=off so no fused multiply-add
 * rounds differently): bit-identical results.  One range per tensor, or one per row. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* clamp(v, lo, hi) as torch.clamp_min then clamp_max: NaN stays NaN. */
static inline float clamp_to(float v, float lo, float hi) {
    float c = v < lo ? lo : v;
    return c > hi ? hi : c;
}

/* The code round((clamp(v) - lo) / step) of one value (float32, half to even). */
static inline float code_of(float v, float lo, float hi, float step) {
    return nearbyintf((clamp_to(v, lo, hi) - lo) / step);
}

/* Fake quantization of one value on a frozen grid: span_any's arithmetic. */
static inline float on_grid(float v, float lo, float hi, float step) {
    return code_of(v, lo, hi, step) * step + lo;
}

/* One span of n values; the mask and the byte codes (k, also what autograd keeps of the output)
 * are written where wanted: constant flags, so each use compiles to a loop of its own.  Returns
 * 1 when the clamp cut a value, | 2 when a code is NaN (the codes then do not hold the output). */
static inline int span_any(const float *x, float *out, bool *inside, uint8_t *codes, int64_t n,
                           float lo, float hi, float step, const int want_mask,
                           const int want_codes) {
    int outside = 0, nan = 0;
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i];
        float c = clamp_to(v, lo, hi);
        float k = nearbyintf((c - lo) / step);
        if (want_mask) {
            inside[i] = c == v;
            outside |= c != v;
        }
        if (want_codes) {
            nan |= k != k;
            codes[i] = k == k ? (uint8_t)k : 0;
        }
        out[i] = k * step + lo;
    }
    return outside | (nan << 1);
}

static int run(const float *x, float *out, bool *inside, uint8_t *codes, int64_t n, float lo,
               float hi, float step) {
    if (inside)
        return codes ? span_any(x, out, inside, codes, n, lo, hi, step, 1, 1)
                     : span_any(x, out, inside, 0, n, lo, hi, step, 1, 0);
    return codes ? span_any(x, out, 0, codes, n, lo, hi, step, 0, 1)
                 : span_any(x, out, 0, 0, n, lo, hi, step, 0, 0);
}

/* rows x cols values; lo/hi/step hold one value (the whole tensor) or one per row; inside and
 * codes (uint8, top <= 255) may be NULL (not wanted).  Returns 1 when the mask holds a 0 (the
 * clamp cut a value), | 2 when a code is NaN. */
int fullyqt_fake_quantize(const float *x, float *out, bool *inside, uint8_t *codes, int64_t rows,
                          int64_t cols, const float *lo, const float *hi, const float *step,
                          int per_row, int threads) {
    int outside = 0;
    if (per_row) {
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : outside) \
    if (rows * cols > 32768)
        for (int64_t r = 0; r < rows; ++r)
            outside |= run(x + r * cols, out + r * cols, inside ? inside + r * cols : 0,
                           codes ? codes + r * cols : 0, cols, lo[r], hi[r], step[r]);
        return outside;
    }
    const int64_t n = rows * cols, chunk = 16384, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : outside) \
    if (chunks > 2)
    for (int64_t k = 0; k < chunks; ++k) {
        int64_t s = k * chunk, e = s + chunk < n ? s + chunk : n;
        outside |= run(x + s, out + s, inside ? inside + s : 0, codes ? codes + s : 0, e - s,
                       lo[0], hi[0], step[0]);
    }
    return outside;
}

/* fullyqt_fake_quantize of one range given by value, no mask (frozen inference ranges). */
void fullyqt_fake_quantize_one(const float *x, float *out, int64_t n, float lo, float hi,
                               float step, int threads) {
    fullyqt_fake_quantize(x, out, 0, 0, 1, n, &lo, &hi, &step, 0, threads);
}

/* Codes round((clamp(x, lo, hi) - lo) / step) of one range, as float32 (what Q.K^T and P.V
 * multiply in exact evaluation). */
void fullyqt_codes(const float *x, float *out, int64_t n, float lo, float hi, float step,
                   int threads) {
    const int64_t chunk = 16384, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static) if (chunks > 2)
    for (int64_t k = 0; k < chunks; ++k) {
        int64_t s = k * chunk, e = s + chunk < n ? s + chunk : n;
        for (int64_t i = s; i < e; ++i) {
            out[i] = code_of(x[i], lo, hi, step);
        }
    }
}

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
            float v = nearbyintf(xr[i] * scale_inv - shift);
            v = v < cmin ? cmin : v;
            v = v > cmax ? cmax : v;
            cr[i] = (int8_t)v;
            total += cr[i];
        }
        sums[r] = total;
    }
}

/* An integer matmul's affine over its rows x cols int32 sums, in place as float32:
 * y = fma(code_sums[m], beta[n], fma(float(sums), alpha[n], c[n])), each a fused multiply-add
 * rounded once, as torch's addcmul then addr compute it on CPU: one pass instead of three. */
void fullyqt_int_affine(int32_t *sums, const float *code_sums, const float *alpha,
                        const float *beta, const float *c, int64_t rows, int64_t cols,
                        int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        int32_t *sr = sums + r * cols;
        float *yr = (float *)sr, a = code_sums[r];
        for (int64_t n = 0; n < cols; ++n)
            yr[n] = fmaf(a, beta[n], fmaf((float)sr[n], alpha[n], c[n]));
    }
}

/* Minimum, maximum and NaN flag of n values, in LANES independent lanes (one vector register
 * each): a reduction the compiler may vectorize without reordering any comparison chain. */
#define LANES 16
static void row_min_max(const float *x, int64_t n, float *lo, float *hi, int *nan) {
    float a[LANES], b[LANES], c[LANES];
    for (int j = 0; j < LANES; ++j) {
        a[j] = INFINITY;
        b[j] = -INFINITY;
        c[j] = 0.0f;
    }
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; ++j) {
            float v = x[i + j];
            a[j] = v < a[j] ? v : a[j];
            b[j] = v > b[j] ? v : b[j];
            c[j] = v != v ? 1.0f : c[j];
        }
    for (int j = 0; i + j < n; ++j) {
        float v = x[i + j];
        a[j] = v < a[j] ? v : a[j];
        b[j] = v > b[j] ? v : b[j];
        c[j] = v != v ? 1.0f : c[j];
    }
    for (int j = 0; j < LANES; ++j) {
        *lo = a[j] < *lo ? a[j] : *lo;
        *hi = b[j] > *hi ? b[j] : *hi;
        *nan |= c[j] != 0.0f;
    }
}

/* Minimum and maximum over the rows r of a rows x cols matrix with valid[r] set (valid NULL:
 * every row), into out[0], out[1]; +-inf when no row is valid, NaN when a value is NaN (as
 * torch's reductions give). */
void fullyqt_masked_min_max(const float *x, const bool *valid, int64_t rows, int64_t cols,
                            float *out, int threads) {
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
    if (!valid) {  /* one span of rows * cols values, read in pieces */
        const int64_t n = rows * cols, piece = 16384, pieces = (n + piece - 1) / piece;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : lo) \
    reduction(max : hi) reduction(| : nan) if (pieces > 2)
        for (int64_t k = 0; k < pieces; ++k)
            row_min_max(x + k * piece, k * piece + piece < n ? piece : n - k * piece, &lo, &hi,
                        &nan);
    } else {  /* tasks of 64 rows; consecutive valid rows are read as one span */
        const int64_t chunk = 64;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : lo) \
    reduction(max : hi) reduction(| : nan) if (rows * cols > 32768)
        for (int64_t first = 0; first < rows; first += chunk) {
            int64_t end = first + chunk < rows ? first + chunk : rows;
            for (int64_t r = first; r < end;) {
                if (!valid[r]) {
                    ++r;
                    continue;
                }
                int64_t e = r + 1;
                while (e < end && valid[e])
                    ++e;
                row_min_max(x + r * cols, (e - r) * cols, &lo, &hi, &nan);
                r = e;
            }
        }
    }
    out[0] = nan ? NAN : lo;
    out[1] = nan ? NAN : hi;
}

/* The training step of an activation quantizer with a running min-max range, in one call:
 * the batch's (min, max) over the valid rows (lo's end pinned at 0 when unsigned_lo), the
 * running update range = keep * range + take * batch (as the torch ops: each product rounded,
 * then the sum; a batch without a finite min and max leaves the range as it was), the grid's
 * step max(hi - lo, 1e-8) / top, and the fake quantization of all rows * cols values in memory
 * order, with the straight-through mask and the codes where not NULL.  For a range already
 * initialized (the caller runs the first observation itself).  Returns as
 * fullyqt_fake_quantize. */
int fullyqt_observe_fake_quantize(const float *x, const bool *valid, int64_t rows,
                                   int64_t cols, float *lo, float *hi, float keep, float take,
                                   int unsigned_lo, int top, float *out, bool *inside,
                                   uint8_t *codes, int threads) {
    float batch[2];
    fullyqt_masked_min_max(x, valid, rows, cols, batch, threads);
    if (unsigned_lo)
        batch[0] = 0.0f;
    if (isfinite(batch[0]) && isfinite(batch[1])) {
        float a = keep * *lo, b = take * batch[0];
        *lo = a + b;
        a = keep * *hi;
        b = take * batch[1];
        *hi = a + b;
    }
    float step = *hi - *lo;
    step = step < 1e-8f ? 1e-8f : step;
    step = step / (float)top;
    return fullyqt_fake_quantize(x, out, inside, codes, 1, rows * cols, lo, hi, &step, 0,
                                 threads);
}

/* The straight-through gradient: grad where the clamp let x through, 0 elsewhere. */
void fullyqt_pass_inside(const float *grad, const bool *inside, float *out, int64_t n,
                         int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i)
        out[i] = inside[i] ? grad[i] : 0.0f;
}

/* The values k * step + lo of n byte codes on one range, bit for bit those
 * fullyqt_fake_quantize gave with them. */
void fullyqt_grid_values(const uint8_t *codes, float *out, int64_t n, float lo, float step,
                         int threads) {
    const int64_t chunk = 16384, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static) if (chunks > 4)
    for (int64_t k = 0; k < chunks; ++k) {
        int64_t s = k * chunk, e = s + chunk < n ? s + chunk : n;
        for (int64_t i = s; i < e; ++i)
            out[i] = (float)codes[i] * step + lo;
    }
}

/* Backward of the quantized layer norm (layer_norm.py) over rows x cols, row by row:
 *   out = Qo(quot * gain + bias), quot = Qq(num / den), den = Qd(root) (straight through),
 *   root = sqrt(mean(num^2) + eps), num = Qn(x - mean(x));
 * grad, num, quot and the masks (bytes 0/1; NULL: nothing clipped) are rows x cols, den and
 * root one per row.  Writes grad_x, and per block of rows the column sums of the output's
 * gradient (the bias's) and of its product with quot (the gain's) into
 * partial[block][2][cols].  (Masks read as bytes, not bool: GCC vectorizes those selects.) */
void fullyqt_layer_norm_backward(const float *grad, const float *num, const float *quot,
                                 const float *den, const float *root, const float *gain,
                                 const uint8_t *in_out, const uint8_t *in_quot,
                                 const uint8_t *in_num, int64_t rows, int64_t cols,
                                 float *grad_x, float *partial, int blocks) {
#pragma omp parallel for num_threads(blocks) schedule(static)
    for (int b = 0; b < blocks; ++b) {
        float *restrict gb = partial + (int64_t)b * 2 * cols, *restrict gg = gb + cols;
        uint8_t *ones = malloc(cols);  /* the mask of a range that clipped nothing */
        for (int64_t j = 0; j < cols; ++j) {
            gb[j] = gg[j] = 0.0f;
            ones[j] = 1;
        }
        const int64_t first = rows * b / blocks, last = rows * (b + 1) / blocks;
        for (int64_t r = first; r < last; ++r) {
            const int64_t o = r * cols;
            const float *restrict g = grad + o, *restrict n = num + o, *restrict q = quot + o;
            const uint8_t *restrict mo = in_out ? in_out + o : ones;
            const uint8_t *restrict mq = in_quot ? in_quot + o : ones;
            const uint8_t *restrict mn = in_num ? in_num + o : ones;
            float *restrict gx = grad_x + o;
            float dot = 0.0f, sum = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t j = 0; j < cols; ++j) {
                float gv = g[j];
                float gy = mo[j] != 0 ? gv : 0.0f;
                gb[j] += gy;
                gg[j] += gy * q[j];
                float gr = gy * gain[j];
                gr = mq[j] != 0 ? gr : 0.0f;
                gx[j] = gr;
                dot += gr * n[j];
            }
            /* den's gradient -dot / den^2 passes straight to root; root = sqrt(v) takes
             * 1 / (2 root); v = mean(num^2) gives 2 num / cols */
            const float dd = den[r];
            const float c = 2.0f * (-dot / (dd * dd) / (2.0f * root[r]) / (float)cols);
#pragma omp simd reduction(+ : sum)
            for (int64_t j = 0; j < cols; ++j) {
                float ga = gx[j] / dd + n[j] * c;
                ga = mn[j] != 0 ? ga : 0.0f;
                gx[j] = ga;
                sum += ga;
            }
            const float mean = sum / (float)cols;
            for (int64_t j = 0; j < cols; ++j)
                gx[j] -= mean;
        }
        free(ones);
    }
}

/* The quantized layer norm's evaluation (layer_norm.py, frozen ranges) over rows x cols, in
 * the torch ops' order and roundings.  First half: num = Qn(x - mean), mean one per row. */
void fullyqt_layer_norm_numerator(const float *x, const float *mean, float *num, int64_t rows,
                                  int64_t cols, float lo, float hi, float step, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float m = mean[r];
        const float *restrict xr = x + r * cols;
        float *restrict nr = num + r * cols;
        for (int64_t j = 0; j < cols; ++j)
            nr[j] = on_grid(xr[j] - m, lo, hi, step);
    }
}

/* Second half: out = Qo(Qq(num / den) * gain + bias), den one per row; q and o hold each
 * grid's (lo, hi, step). */
void fullyqt_layer_norm_output(const float *num, const float *den, const float *gain,
                               const float *bias, float *out, int64_t rows, int64_t cols,
                               const float *q, const float *o, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float d = den[r];
        const float *restrict nr = num + r * cols;
        float *restrict yr = out + r * cols;
        for (int64_t j = 0; j < cols; ++j) {
            float quot = on_grid(nr[j] / d, q[0], q[1], q[2]);
            float y = quot * gain[j];
            y = y + bias[j];
            yr[j] = on_grid(y, o[0], o[1], o[2]);
        }
    }
}

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

/* The codes of x's fake quantization on one frozen range, round((clamp(v) - lo) / step) of
 * v = the grid value: what fullyqt_codes gives of fullyqt_fake_quantize_one's output, in one
 * pass. */
void fullyqt_quantized_codes(const float *x, float *out, int64_t n, float lo, float hi,
                             float step, int threads) {
    const int64_t chunk = 16384, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static) if (chunks > 2)
    for (int64_t k = 0; k < chunks; ++k) {
        int64_t s = k * chunk, e = s + chunk < n ? s + chunk : n;
        for (int64_t i = s; i < e; ++i)
            out[i] = code_of(on_grid(x[i], lo, hi, step), lo, hi, step);
    }
}
