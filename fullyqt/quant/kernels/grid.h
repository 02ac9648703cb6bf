/* The float32 grid arithmetic every kernel shares: clamp, code and grid value of one value,
 * the same operations in the same order as the torch ops (round half to even). */
#ifndef FULLYQT_GRID_H
#define FULLYQT_GRID_H

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

/* The centred integer code clamp(round(x * scale_inv - shift), cmin, cmax) of one value: what
 * an integer matmul multiplies (Grid.centred_code_affine gives the four numbers). */
static inline float centred_code(float x, float scale_inv, float shift, float cmin, float cmax) {
    float v = nearbyintf(x * scale_inv - shift);
    v = v < cmin ? cmin : v;
    return v > cmax ? cmax : v;
}

#endif
