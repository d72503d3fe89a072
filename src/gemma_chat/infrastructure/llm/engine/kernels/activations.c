/* Per-row operations of the decoder block: the GELU-gated product (RMSNorm: norm.c); and the
 * final logit cap. Generic bodies; the instruction-set ones are in activations_avx512.c,
 * _avx2.c, _neon.c. */
#include <math.h>

#include "q8_impl.h"

/* gelu_tanh(x) with 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): scalar tanhf was a large part
 * of a batched decode step (DEVELOPMENT.md). */
void q8_gelu_tanh_mul_generic(const float *gate, const float *up, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const float x = gate[i];
        const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + expf(-2.0f * u)) * up[i];
    }
}

/* cap * tanh(x / cap), tanh as TANH_*'s ratio (q8_impl.h): the vector bodies' operations, one
 * lane at a time. The clamp is written with comparisons so that a NaN passes through. */
void q8_soft_cap_generic(float *x, int64_t n, float cap) {
    for (int64_t i = 0; i < n; i++) {
        float u = x[i] / cap;
        u = u > TANH_CLAMP ? TANH_CLAMP : (u < -TANH_CLAMP ? -TANH_CLAMP : u);
        const float u2 = u * u;
        float p = u2 * TANH_A13 + TANH_A11;
        p = p * u2 + TANH_A9;
        p = p * u2 + TANH_A7;
        p = p * u2 + TANH_A5;
        p = p * u2 + TANH_A3;
        p = p * u2 + TANH_A1;
        p = p * u;
        float q = u2 * TANH_B6 + TANH_B4;
        q = q * u2 + TANH_B2;
        q = q * u2 + TANH_B0;
        x[i] = p / q * cap;
    }
}

#define SOFT_CAP_GRAIN 16384 /* elements per item of the parallel loop (a multiple of 16) */

typedef struct {
    float *x;
    int64_t n;
    float cap;
} soft_cap_job;

static void soft_cap_item(void *ctx, int64_t item) {
    const soft_cap_job *j = ctx;
    const int64_t from = item * SOFT_CAP_GRAIN;
    const int64_t n = j->n - from < SOFT_CAP_GRAIN ? j->n - from : SOFT_CAP_GRAIN;
    q8_soft_cap(j->x + from, n, j->cap);
}

void q8_soft_cap_rows(float *x, int64_t R, int64_t N, float cap) {
    soft_cap_job job = {x, R * N, cap};
    parallel_for((R * N + SOFT_CAP_GRAIN - 1) / SOFT_CAP_GRAIN, 1, soft_cap_item, &job);
}
