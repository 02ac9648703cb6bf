/* torch's float32 sum over one contiguous row, bit for bit: the cascade of its CPU sum kernel
 * (four interleaved accumulators of vectors of `lanes` floats, summed level by level, then the
 * values past the last whole vector, then the lanes), so that a kernel's row mean equals
 * Tensor.mean's.  `lanes` is the width of torch's float vector on this processor; fused.py
 * finds it by comparing with torch. */
#ifndef FULLYQT_ROW_SUM_H
#define FULLYQT_ROW_SUM_H

#include <stdint.h>
#include <string.h>

typedef float row_sum_v4 __attribute__((vector_size(16)));
typedef float row_sum_v8 __attribute__((vector_size(32)));
typedef float row_sum_v16 __attribute__((vector_size(64)));
typedef float row_sum_float;

/* The length of one cascade level: 2^max(4, ceil(log2(groups)) / 4) groups of four vectors. */
static inline int64_t row_sum_level_power(int64_t groups) {
    int64_t bits = 1; /* ceil(log2(groups)), at least 1: the bit length of groups - 1 */
    if (groups > 2)
        for (bits = 0; ((uint64_t)(groups - 1) >> bits) != 0;)
            ++bits;
    return bits / 4 < 4 ? 4 : bits / 4;
}

/* acc += the vector of floats at p (their squares where `square`). */
#define ROW_SUM_ADD(acc, TAG, p, square)                                                        \
    do {                                                                                        \
        row_sum_##TAG v_;                                                                       \
        memcpy(&v_, (p), sizeof v_);                                                            \
        (acc) += (square) ? v_ * v_ : v_;                                                       \
    } while (0)

/* NAME(x, n, square): the sum of x[0..n) (of their squares where `square`) with vectors
 * row_sum_TAG of L floats, in torch's order (torch's scalar loop is the case L = 1). */
#define ROW_SUM_DEFINE(NAME, TAG, L)                                                            \
    static inline float NAME(const float *x, int64_t n, int square) {                           \
        const int64_t vecs = n / (L), groups = vecs / 4, power = row_sum_level_power(groups);   \
        const int64_t step = (int64_t)1 << power, mask = step - 1;                              \
        const row_sum_##TAG zero = {0};                                                         \
        row_sum_##TAG a[4] = {zero, zero, zero, zero}, up[3][4];                                \
        for (int u = 0; u < 3; ++u)                                                             \
            for (int k = 0; k < 4; ++k)                                                         \
                up[u][k] = zero;                                                                \
        int64_t i = 0;                                                                          \
        while (i + step <= groups) {                                                            \
            for (int64_t j = 0; j < step; ++j, ++i)                                             \
                for (int k = 0; k < 4; ++k)                                                     \
                    ROW_SUM_ADD(a[k], TAG, x + (i * 4 + k) * (L), square);                      \
            for (int k = 0; k < 4; ++k) {                                                       \
                up[0][k] += a[k];                                                               \
                a[k] = zero;                                                                    \
            }                                                                                   \
            if ((i & (mask << power)) == 0) {                                                   \
                for (int k = 0; k < 4; ++k) {                                                   \
                    up[1][k] += up[0][k];                                                       \
                    up[0][k] = zero;                                                            \
                }                                                                               \
                if ((i & (mask << (2 * power))) == 0)                                           \
                    for (int k = 0; k < 4; ++k) {                                               \
                        up[2][k] += up[1][k];                                                   \
                        up[1][k] = zero;                                                        \
                    }                                                                           \
            }                                                                                   \
        }                                                                                       \
        for (; i < groups; ++i)                                                                 \
            for (int k = 0; k < 4; ++k)                                                         \
                ROW_SUM_ADD(a[k], TAG, x + (i * 4 + k) * (L), square);                          \
        for (int u = 0; u < 3; ++u)                                                             \
            for (int k = 0; k < 4; ++k)                                                         \
                a[k] += up[u][k];                                                               \
        for (int64_t v = groups * 4; v < vecs; ++v)                                             \
            ROW_SUM_ADD(a[0], TAG, x + v * (L), square);                                        \
        a[0] += a[1];                                                                           \
        a[0] += a[2];                                                                           \
        a[0] += a[3];                                                                           \
        float total = 0.0f, part[L];                                                            \
        memcpy(part, &a[0], sizeof part);                                                       \
        for (int64_t t = vecs * (L); t < n; ++t)                                                \
            total += square ? x[t] * x[t] : x[t];                                               \
        for (int l = 0; l < (L); ++l)                                                           \
            total += part[l];                                                                   \
        return 0.0f + total; /* torch adds the sum onto an output filled with zeros */          \
    }

ROW_SUM_DEFINE(row_sum_1, float, 1)
ROW_SUM_DEFINE(row_sum_4, v4, 4)
ROW_SUM_DEFINE(row_sum_8, v8, 8)
ROW_SUM_DEFINE(row_sum_16, v16, 16)

/* The sum of x[0..n) (of their squares where `square`) as torch sums a row with vectors of
 * `lanes` (4, 8 or 16) floats; a row shorter than one vector as its scalar loop does. */
static inline float torch_row_sum(const float *x, int64_t n, int lanes, int square) {
    if (n < lanes || (lanes != 4 && lanes != 8 && lanes != 16))
        return row_sum_1(x, n, square);
    return lanes == 8 ? row_sum_8(x, n, square)
         : lanes == 16 ? row_sum_16(x, n, square) : row_sum_4(x, n, square);
}

#endif
