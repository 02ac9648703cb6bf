/* Exact attention's two products around torch's exp, from the codes of Q, K, V and of the
 * probabilities: the scores minus their row maximum (ready for exp), and P·V.  Each element is
 * integer_form.codes_matmul's expression: exact integer sums (float32 partial sums of integer
 * products that the caller bounds below 2^24, so their order changes nothing), then one fixed
 * sequence of float32 operations. */
#include "grid.h"
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* The exact sums a·b and sum(b) of two rows of n codes (float32 integers). */
static inline void exact_dot(const float *a, const float *b, int64_t n, float *dot,
                             float *b_sum) {
    float total = 0, codes = 0;
    int64_t c = 0;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps(), acc_b = _mm256_setzero_ps();
    for (; c + 8 <= n; c += 8) {
        __m256 bc = _mm256_loadu_ps(b + c);
        acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + c), bc));
        acc_b = _mm256_add_ps(acc_b, bc);
    }
    float lanes[8], lanes_b[8];
    _mm256_storeu_ps(lanes, acc);
    _mm256_storeu_ps(lanes_b, acc_b);
    for (int l = 0; l < 8; ++l) {
        total += lanes[l];
        codes += lanes_b[l];
    }
#endif
    for (; c < n; ++c) {
        total += a[c] * b[c];
        codes += b[c];
    }
    *dot = total;
    *b_sum = codes;
}

/* codes_matmul's float32 expression of one element from its exact sums: terms[0] the scale;
 * flags 1: + row code sum * terms[1]; 2: + column code sum * terms[2]; 3: + terms[3] too. */
static inline float product_of(float sum, float row_sum, float col_sum, const float *terms,
                               int flags) {
    float out = sum * terms[0];
    if (flags & 1)
        out = out + row_sum * terms[1];
    if (flags & 2)
        out = out + col_sum * terms[2];
    if ((flags & 3) == 3)
        out = out + terms[3];
    return out;
}

/* out[g, i, j]: Q·Kᵀ of query i and key j of head group g (q: groups x t x d codes, k: groups x
 * s x d codes) [+ mask[i, j]] [-inf where key_pad[g / heads, j]], minus the row's max (0 where
 * that max is not finite), as attention.py's _exp takes it. */
void fullyqt_attention_scores(const float *q, const float *k, int64_t groups, int64_t heads,
                              int64_t t, int64_t s, int64_t d, const float *terms, int flags,
                              const float *mask, const bool *key_pad, float *out, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (groups * t * s * d > 65536)
    for (int64_t g = 0; g < groups; ++g) {
        const float *kg = k + g * s * d;
        const bool *pad = key_pad ? key_pad + (g / heads) * s : NULL;
        for (int64_t i = 0; i < t; ++i) {
            const float *qi = q + (g * t + i) * d;
            float *row = out + (g * t + i) * s;
            float row_sum = 0, top = -INFINITY;
            bool nan = false;
            for (int64_t c = 0; c < d; ++c)
                row_sum += qi[c];
            for (int64_t j = 0; j < s; ++j) {
                float sum, col_sum;
                exact_dot(qi, kg + j * d, d, &sum, &col_sum);
                float v = product_of(sum, row_sum, col_sum, terms, flags);
                if (mask)
                    v = v + mask[i * s + j];
                if (pad && pad[j])
                    v = -INFINITY;
                row[j] = v;
                nan |= isnan(v);
                top = v > top ? v : top;
            }
            if (nan || isinf(top))
                top = 0.0f;
            for (int64_t j = 0; j < s; ++j)
                row[j] = row[j] - top;
        }
    }
}

/* out[g, i, :] = P·V of query i of head group g from the probabilities' codes p (groups x t x
 * s) and the values' codes v (groups x s x d); terms and flags as above (P's grid starts at 0:
 * no column term).  A zero probability code adds nothing and is skipped. */
void fullyqt_attention_values(const float *p, const float *v, int64_t groups, int64_t t,
                              int64_t s, int64_t d, const float *terms, int flags, float *out,
                              int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (groups * t * s * d > 65536)
    for (int64_t g = 0; g < groups; ++g) {
        const float *vg = v + g * s * d;
        for (int64_t i = 0; i < t; ++i) {
            const float *pi = p + (g * t + i) * s;
            float *o = out + (g * t + i) * d, row_sum = 0;
            for (int64_t c = 0; c < d; ++c)
                o[c] = 0;
            for (int64_t j = 0; j < s; ++j) {
                float w = pi[j];
                row_sum += w;
                if (w == 0)
                    continue;
                const float *vj = vg + j * d;
                for (int64_t c = 0; c < d; ++c)
                    o[c] += w * vj[c];
            }
            for (int64_t c = 0; c < d; ++c)
                o[c] = product_of(o[c], row_sum, 0, terms, flags & 1);
        }
    }
}
