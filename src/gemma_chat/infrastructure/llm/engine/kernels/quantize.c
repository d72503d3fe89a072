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
