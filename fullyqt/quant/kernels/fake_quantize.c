/* Fake quantization in one pass: clamp to [lo, hi], round onto the grid lo + k * step (half to
 * even), and optionally the 1-byte mask of where the clamp let x through (the straight-through
 * gradient).  The same float32 operations, in the same order, as the torch ops it replaces
 * (clamp, sub, div, round, mul, add; built with -ffp-contract=off so no fused multiply-add
 * rounds differently): bit-identical results.  One range per tensor, or one per row. */
#include "grid.h"

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
