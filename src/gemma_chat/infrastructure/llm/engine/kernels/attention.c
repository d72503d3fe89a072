/* Attention's operations over float16 keys and values: scores (dot products), softmax (max,
 * shifted exponentials) and the weighted sums of values. Generic bodies; the instruction-set
 * ones are in attention_avx512.c and attention_avx2.c. Each adds in a fixed order, so a row's
 * result does not depend on the rows computed beside it. */
#include <math.h>

#include "q8_impl.h"

float q8_dot_f32_generic(const float *a, const float *b, int64_t n) {
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

void q8_dots16_generic(const float *q, const uint16_t *keys, int64_t D, float *out, float *key) {
    for (int i = 0; i < 16; i++) {
        for (int64_t c = 0; c < D; c++) key[c] = half_to_float(keys[i * D + c]);
        out[i] = q8_dot_f32(q, key, D);
    }
}

void q8_dots16_heads_generic(const float *q, int64_t heads, const uint16_t *keys, int64_t D,
                             float *out, float *key) {
    for (int64_t h = 0; h < heads; h++) q8_dots16(q + h * D, keys, D, out + h * 16, key);
}

float q8_max_f32_generic(const float *v, int64_t n) {
    float top = -INFINITY;
    for (int64_t i = 0; i < n; i++) top = v[i] > top ? v[i] : top;
    return top;
}

float q8_exp_shifted_generic(float *v, int64_t n, float shift) {
    float total = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        v[i] = expf(v[i] - shift);
        total += v[i];
    }
    return total;
}

void q8_weighted_sums_generic(const float *w, int64_t T, int64_t nq, const uint16_t *v,
                              int64_t D, float **outs) {
    for (int64_t i = 0; i < nq; i++)
        for (int64_t d = 0; d < D; d++) {
            float acc = 0.0f;
            for (int64_t t = 0; t < T; t++)
                acc = fmaf(w[i * T + t], half_to_float(v[t * D + d]), acc);
            outs[i][d] = acc;
        }
}
