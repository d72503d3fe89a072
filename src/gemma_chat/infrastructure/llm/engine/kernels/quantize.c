/* Quantization: float32 rows -> int8 blocks of QK values with one float32 scale each (rounded
 * to nearest even), and float32 -> float16 rows (the KV cache). Generic bodies; the
 * instruction-set ones are in quantize_avx512.c and quantize_avx2.c. */
#include <math.h>

#include "q8_impl.h"

void q8_quantize_block_generic(const float *x, int8_t *q, float *s) {
    float amax = 0.0f;
    for (int i = 0; i < QK; i++) {
        float a = fabsf(x[i]);
        if (a > amax) amax = a;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *s = d;
    for (int i = 0; i < QK; i++) q[i] = (int8_t)lrintf(x[i] * id);
}

typedef struct {
    const float *x;
    int8_t *q;
    float *s;
} quantize_job;

static void quantize_block(void *ctx, int64_t r) {
    const quantize_job *job = ctx;
    q8_quantize_block(job->x + r * QK, job->q + r * QK, job->s + r);
}

void q8_quantize_rows(const float *x, int8_t *q, float *s, int64_t M, int64_t K) {
    quantize_job job = {x, q, s};
    const int64_t blocks = M * (K / QK);
    parallel_for(blocks, M * K > 65536 ? 64 : blocks, quantize_block, &job);
}

void q8_store_halves_generic(uint16_t *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = float_to_half(x[i]);
}

/* ---- 4-bit weights (conversion time, one body: it runs once per model) ---------------------- */

/* Scales tried per block, as divisors of its signed largest value: Q4_0's -8 first, then a
 * little larger or smaller (the largest value rounded to 7, ...). */
static const float q4_divisors[] = {-8.0f, -7.5f, -7.0f, -6.5f, 7.0f, 7.5f, -8.5f};

typedef struct {
    const float *w, *importance;
    int8_t *q;
    float *scale;
    int64_t K;
} quantize4_job;

/* One block of QK weights: of the scales tried (each rounded at, then once more at the scale
 * fitted to that rounding), the values and least-squares scale with the smallest error, each
 * column's squared error weighed by iw. */
static void quantize4_block(const float *w, const float *iw, int8_t *q, float *scale) {
    float top = 0.0f;
    for (int i = 0; i < QK; i++)
        if (fabsf(w[i]) > fabsf(top)) top = w[i];
    float best_error = INFINITY, best_scale = 0.0f;
    int8_t candidate[QK];
    memset(q, 0, QK);
    for (size_t c = 0; c < sizeof q4_divisors / sizeof q4_divisors[0]; c++) {
        float d = top / q4_divisors[c];
        for (int pass = 0; pass < 2; pass++) {
            const float inverse = d != 0.0f ? 1.0f / d : 0.0f;
            float norm = 0.0f, dot = 0.0f;
            for (int i = 0; i < QK; i++) {
                float v = rintf(w[i] * inverse);
                v = v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v;
                candidate[i] = (int8_t)v;
                norm = fmaf(iw[i] * v, v, norm); /* explicit FMAs: the same bits everywhere */
                dot = fmaf(iw[i] * w[i], v, dot);
            }
            const float s = norm > 0.0f ? dot / norm : 0.0f;
            float error = 0.0f;
            for (int i = 0; i < QK; i++) {
                const float e = fmaf(-s, (float)candidate[i], w[i]);
                error = fmaf(iw[i] * e, e, error);
            }
            if (error < best_error) {
                best_error = error;
                best_scale = s;
                memcpy(q, candidate, QK);
            }
            d = s;
        }
    }
    *scale = best_scale;
}

static void quantize4_row(void *ctx, int64_t r) {
    const quantize4_job *j = ctx;
    float ones[QK];
    for (int i = 0; i < QK; i++) ones[i] = 1.0f;
    for (int64_t b = 0; b < j->K / QK; b++)
        quantize4_block(j->w + r * j->K + b * QK, j->importance ? j->importance + b * QK : ones,
                        j->q + r * j->K + b * QK, j->scale + r * (j->K / QK) + b);
}

void q4_quantize_weight(const float *w, const float *importance, int8_t *q, float *scale,
                        int64_t N, int64_t K) {
    quantize4_job job = {w, importance, q, scale, K};
    parallel_for(N, 16, quantize4_row, &job);
}
