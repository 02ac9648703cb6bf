/* The quantized layer norm (layer_norm.py): its backward in training and its evaluation on
 * frozen ranges. */
#include "grid.h"
#include "row_sum.h"

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
 * the torch ops' order and roundings.  The root of each row is torch's: its sqrt (MKL's) is not
 * always the correctly rounded one.  First half, given the row means: num = Qn(x - mean). */
static inline void numerator_row(const float *restrict xr, float mean, float *restrict nr,
                                 int64_t cols, float lo, float hi, float step) {
    for (int64_t j = 0; j < cols; ++j)
        nr[j] = on_grid(xr[j] - mean, lo, hi, step);
}

void fullyqt_layer_norm_numerator(const float *x, const float *mean, float *num, int64_t rows,
                                  int64_t cols, float lo, float hi, float step, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r)
        numerator_row(x + r * cols, mean[r], num + r * cols, cols, lo, hi, step);
}

/* The first half with the means summed here in torch's order for vectors of `lanes` floats
 * (row_sum.h): num = Qn(x - mean(x)) and, one per row, var = mean(num^2) + eps. */
void fullyqt_layer_norm_moments(const float *x, float *num, float *var, int64_t rows,
                                int64_t cols, float lo, float hi, float step, float eps,
                                int lanes, int threads) {
    const float n = (float)cols;
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float *restrict xr = x + r * cols;
        float *restrict nr = num + r * cols;
        numerator_row(xr, torch_row_sum(xr, cols, lanes, 0) / n, nr, cols, lo, hi, step);
        var[r] = torch_row_sum(nr, cols, lanes, 1) / n + eps;
    }
}

/* Second half: out = Qo(Qq(num / Qd(root)) * gain + bias), root one per row; g holds the
 * denominator's, the quotient's and the output's (lo, hi, step) in that order. */
void fullyqt_layer_norm_output(const float *num, const float *root, const float *gain,
                               const float *bias, float *out, int64_t rows, int64_t cols,
                               const float *g, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static) if (rows * cols > 32768)
    for (int64_t r = 0; r < rows; ++r) {
        const float d = on_grid(root[r], g[0], g[1], g[2]);
        const float *restrict nr = num + r * cols;
        float *restrict yr = out + r * cols;
        for (int64_t j = 0; j < cols; ++j) {
            float quot = on_grid(nr[j] / d, g[3], g[4], g[5]);
            float y = quot * gain[j];
            y = y + bias[j];
            yr[j] = on_grid(y, g[6], g[7], g[8]);
        }
    }
}

/* Row means of x and of its squares in torch's summation order (the probe of `lanes`). */
void fullyqt_row_means(const float *x, int64_t rows, int64_t cols, int lanes, float *mean,
                       float *square_mean) {
    for (int64_t r = 0; r < rows; ++r) {
        mean[r] = torch_row_sum(x + r * cols, cols, lanes, 0) / (float)cols;
        square_mean[r] = torch_row_sum(x + r * cols, cols, lanes, 1) / (float)cols;
    }
}
