/* Fake quantization in one pass: clamp to [lo, hi], round onto the grid lo + k * step (half to
 * even), and optionally the 1-byte mask of where the clamp let x through (the straight-through
 * gradient).  The same float32 operations, in the same order, as the torch ops it replaces
 * (clamp, sub, div, round, mul, add; built with -ffp-contract=off so no fused multiply-add
 * rounds differently): bit-identical results.  One range per tensor, or one per row. */
#include <math.h>
#include <stdbool.h>
#include <stdint.h>

static void span_mask(const float *x, float *out, bool *inside, int64_t n, float lo, float hi,
                      float step) {
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i];
        float c = v < lo ? lo : v;
        c = c > hi ? hi : c;
        inside[i] = c == v;
        out[i] = nearbyintf((c - lo) / step) * step + lo;
    }
}

static void span(const float *x, float *out, int64_t n, float lo, float hi, float step) {
    for (int64_t i = 0; i < n; ++i) {
        float v = x[i];
        float c = v < lo ? lo : v;
        c = c > hi ? hi : c;
        out[i] = nearbyintf((c - lo) / step) * step + lo;
    }
}

static void run(const float *x, float *out, bool *inside, int64_t n, float lo, float hi,
                float step) {
    if (inside)
        span_mask(x, out, inside, n, lo, hi, step);
    else
        span(x, out, n, lo, hi, step);
}

/* rows x cols values; lo/hi/step hold one value (the whole tensor) or one per row; inside may
 * be NULL (no mask wanted). */
void fullyqt_fake_quantize(const float *x, float *out, bool *inside, int64_t rows, int64_t cols,
                           const float *lo, const float *hi, const float *step, int per_row,
                           int threads) {
    if (per_row) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
        for (int64_t r = 0; r < rows; ++r)
            run(x + r * cols, out + r * cols, inside ? inside + r * cols : 0, cols, lo[r], hi[r],
                step[r]);
        return;
    }
    const int64_t n = rows * cols, chunk = 16384, chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for num_threads(threads) schedule(static) if (chunks > 2)
    for (int64_t k = 0; k < chunks; ++k) {
        int64_t s = k * chunk, e = s + chunk < n ? s + chunk : n;
        run(x + s, out + s, inside ? inside + s : 0, e - s, lo[0], hi[0], step[0]);
    }
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
            float c = x[i] < lo ? lo : x[i];
            c = c > hi ? hi : c;
            out[i] = nearbyintf((c - lo) / step);
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

/* Minimum and maximum over the rows r of a rows x cols matrix with valid[r] set (valid NULL:
 * every row), into out[0], out[1]; +-inf when no row is valid, NaN when a value is NaN (as
 * torch's reductions give). */
void fullyqt_masked_min_max(const float *x, const bool *valid, int64_t rows, int64_t cols,
                            float *out, int threads) {
    float lo = INFINITY, hi = -INFINITY;
    int nan = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(min : lo) \
    reduction(max : hi) reduction(| : nan) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        if (valid && !valid[r])
            continue;
        const float *xr = x + r * cols;
        float a = INFINITY, b = -INFINITY;
        int n = 0;
        for (int64_t i = 0; i < cols; ++i) {
            float v = xr[i];
            a = v < a ? v : a;
            b = v > b ? v : b;
            n |= v != v;
        }
        lo = a < lo ? a : lo;
        hi = b > hi ? b : hi;
        nan |= n;
    }
    out[0] = nan ? NAN : lo;
    out[1] = nan ? NAN : hi;
}

/* The straight-through gradient: grad where the clamp let x through, 0 elsewhere. */
void fullyqt_pass_inside(const float *grad, const bool *inside, float *out, int64_t n,
                         int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; ++i)
        out[i] = inside[i] ? grad[i] : 0.0f;
}
