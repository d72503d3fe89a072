/* Per-row operations of the decoder block: the GELU-gated product (RMSNorm: norm.c). Generic bodies;
 * the instruction-set ones are in activations_avx512.c. */
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
