/* Exact integer matmuls of 8-bit codes held as int16, by pair multiply-adds into int32 (AVX2
 * vpmaddwd: on cores without int8 dot-product instructions it does more multiply-adds per cycle
 * than float32 FMA, and every sum is exact), and the whole integer linear layer around them in
 * one call: its input's centred codes and their row sums, the sums, the affine to float32.
 *
 * The weight codes (k x n) are packed into panels of NR columns; a panel holds, for each pair of
 * rows (2i, 2i+1), the NR column pairs (w[2i][j], w[2i+1][j]) side by side: what one vpmaddwd
 * multiplies with a broadcast pair of input codes.  An odd k and the last panel's missing
 * columns are zeros. */
#include <string.h>

#include "grid.h"
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define NR 16 /* columns of a panel: two registers of eight int32 sums */
#define MR 4  /* input rows of a tile (the AVX2 tile below is written out for four) */

int fullyqt_int16_vectorized(void) {
#ifdef __AVX2__
    return 1;
#else
    return 0;
#endif
}

/* One output: the affine over an integer sum, as fullyqt_int_affine computes it. */
static inline float affine_of(int32_t sum, float code_sum, float alpha, float beta, float c) {
    return fmaf(code_sum, beta, fmaf((float)sum, alpha, c));
}

/* The int32 sums of MR rows of codes (row stride kp, an even k) times one panel, stored as they
 * are (affine NULL) or through the affine into y (affine: alpha, beta, c of the columns). */
static void tile(const int16_t *a, int64_t kp, const int16_t *panel, int64_t rows, int64_t cols,
                 const float *code_sums, const float *const *affine, void *out, int64_t ld) {
    int32_t acc[MR][NR];
#ifdef __AVX2__
    /* named registers, not an array: gcc keeps all eight sums in registers then */
    __m256i s00 = _mm256_setzero_si256(), s01 = s00, s10 = s00, s11 = s00, s20 = s00,
            s21 = s00, s30 = s00, s31 = s00;
    const int16_t *a0 = a, *a1 = a + kp, *a2 = a + 2 * kp, *a3 = a + 3 * kp;
    for (int64_t i = 0; i < kp / 2; ++i) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(panel + i * 2 * NR));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(panel + i * 2 * NR + NR));
        __asm__("" : "+x"(w0), "+x"(w1)); /* loaded once, not once per row */
#define FULLYQT_ROW(ar, t0, t1)                                                                \
    do {                                                                                     \
        int32_t pair;                                                                        \
        memcpy(&pair, ar + 2 * i, sizeof pair);                                              \
        __m256i x = _mm256_set1_epi32(pair);                                                 \
        t0 = _mm256_add_epi32(t0, _mm256_madd_epi16(x, w0));                                 \
        t1 = _mm256_add_epi32(t1, _mm256_madd_epi16(x, w1));                                 \
    } while (0)
        FULLYQT_ROW(a0, s00, s01);
        FULLYQT_ROW(a1, s10, s11);
        FULLYQT_ROW(a2, s20, s21);
        FULLYQT_ROW(a3, s30, s31);
#undef FULLYQT_ROW
    }
    __m256i s[MR][2] = {{s00, s01}, {s10, s11}, {s20, s21}, {s30, s31}};
    if (affine && cols == NR) {
        __m256 al0 = _mm256_loadu_ps(affine[0]), al1 = _mm256_loadu_ps(affine[0] + 8);
        __m256 be0 = _mm256_loadu_ps(affine[1]), be1 = _mm256_loadu_ps(affine[1] + 8);
        __m256 c0 = _mm256_loadu_ps(affine[2]), c1 = _mm256_loadu_ps(affine[2] + 8);
        for (int r = 0; r < rows; ++r) {
            __m256 cs = _mm256_set1_ps(code_sums[r]);
            float *yr = (float *)out + r * ld;
            _mm256_storeu_ps(yr, _mm256_fmadd_ps(cs, be0, _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(s[r][0]), al0, c0)));
            _mm256_storeu_ps(yr + 8, _mm256_fmadd_ps(cs, be1, _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(s[r][1]), al1, c1)));
        }
        return;
    }
    for (int r = 0; r < MR; ++r) {
        _mm256_storeu_si256((__m256i *)acc[r], s[r][0]);
        _mm256_storeu_si256((__m256i *)(acc[r] + 8), s[r][1]);
    }
#else
    memset(acc, 0, sizeof acc);
    for (int64_t i = 0; i < kp / 2; ++i)
        for (int r = 0; r < MR; ++r)
            for (int j = 0; j < NR; ++j)
                acc[r][j] += (int32_t)a[r * kp + 2 * i] * panel[(i * NR + j) * 2]
                             + (int32_t)a[r * kp + 2 * i + 1] * panel[(i * NR + j) * 2 + 1];
#endif
    for (int r = 0; r < rows; ++r)
        for (int j = 0; j < cols; ++j) {
            if (affine)
                ((float *)out)[r * ld + j] = affine_of(acc[r][j], code_sums[r], affine[0][j],
                                                       affine[1][j], affine[2][j]);
            else
                ((int32_t *)out)[r * ld + j] = acc[r][j];
        }
}

/* The tiles of rows x n outputs, MR rows by one panel each, split among the threads panel by
 * panel (a thread's panel stays in its L1 cache while the input rows pass by). */
static void tiles(const int16_t *a, int64_t rows, int64_t kp, const int16_t *packed, int64_t n,
                  const float *code_sums, const float *alpha, const float *beta, const float *c,
                  void *out, int big, int threads) {
    int64_t panels = (n + NR - 1) / NR, blocks = (rows + MR - 1) / MR;
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads) if (big)
    for (int64_t p = 0; p < panels; ++p)
        for (int64_t b = 0; b < blocks; ++b) {
            int64_t n0 = p * NR, m0 = b * MR;
            int64_t cols = n - n0 < NR ? n - n0 : NR, rs = rows - m0 < MR ? rows - m0 : MR;
            const float *affine[3] = {alpha + n0, beta + n0, c + n0};
            void *o = code_sums ? (void *)((float *)out + m0 * n + n0)
                                : (void *)((int32_t *)out + m0 * n + n0);
            tile(a + m0 * kp, kp, packed + p * (kp / 2) * 2 * NR, rs, cols,
                 code_sums ? code_sums + m0 : NULL, code_sums ? affine : NULL, o, n);
        }
}

/* int32 sums a @ w of int16 codes a (rows x kp, kp even; rows a multiple of MR, the extra ones
 * zero) and packed weight codes; out is rows x n (only the first `rows` rows are written). */
void fullyqt_int16_gemm(const int16_t *a, int64_t rows, int64_t kp, const int16_t *packed,
                        int64_t n, int32_t *out, int threads) {
    tiles(a, rows, kp, packed, n, NULL, NULL, NULL, NULL, out, rows * kp * n > (1 << 20),
          threads);
}

/* This thread's scratch memory of at least `bytes`, kept between calls (a fresh allocation of
 * this size would be a fresh mapping of the pages each call, costing as much as the products);
 * NULL where it cannot grow. */
static void *scratch(size_t bytes) {
    static __thread void *memory = NULL;
    static __thread size_t held = 0;
    if (bytes > held) {
        void *grown = realloc(memory, bytes);
        if (!grown)
            return NULL;
        memory = grown;
        held = bytes;
    }
    return memory;
}

/* The integer linear layer of a rows x k float32 input in one call: centred codes (grid.h's
 * centred_code) and their row sums, the exact sums against the packed weight codes, and
 * y = fma(code_sum, beta, fma(float(sum), alpha, c)), rows x n float32.  Returns 1 where its
 * scratch memory could not be had (nothing written), else 0. */
int fullyqt_int_linear(const float *x, int64_t rows, int64_t k, float scale_inv, float shift,
                       float cmin, float cmax, const int16_t *packed, int64_t n,
                       const float *alpha, const float *beta, const float *c, float *y,
                       int threads) {
    if (rows == 0)
        return 0;
    int64_t kp = k + (k & 1), padded = (rows + MR - 1) / MR * MR;
    size_t code_bytes = ((size_t)(padded * kp) * sizeof(int16_t) + 63) / 64 * 64;
    char *memory = scratch(code_bytes + (size_t)padded * sizeof(float));
    if (!memory)
        return 1;
    int16_t *a = (int16_t *)memory;
    float *sums = (float *)(memory + code_bytes);
    int big = rows * k * n > (1 << 20);
#pragma omp parallel for schedule(static) num_threads(threads) if (big)
    for (int64_t r = 0; r < padded; ++r) {
        int16_t *ar = a + r * kp;
        int32_t total = 0;
        if (r < rows) {
            const float *xr = x + r * k;
            for (int64_t i = 0; i < k; ++i) {
                ar[i] = (int16_t)centred_code(xr[i], scale_inv, shift, cmin, cmax);
                total += ar[i];
            }
            if (kp > k)
                ar[k] = 0;
        } else {
            memset(ar, 0, (size_t)kp * sizeof *ar);
        }
        sums[r] = (float)total;
    }
    tiles(a, rows, kp, packed, n, sums, alpha, beta, c, y, big, threads);
    return 0;
}
