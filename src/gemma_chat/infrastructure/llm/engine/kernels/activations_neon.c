/* ARM64 NEON bodies of activations.c's operations (exp4 is not libm's expf: within a few ulp
 * of the generic body). */
#include <math.h>

#include "q8_impl.h"

#if defined(Q8_NEON)

void q8_gelu_tanh_mul_neon(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    const float32x4_t c = vdupq_n_f32(-2.0f * 0.7978845608028654f), a = vdupq_n_f32(0.044715f);
    const float32x4_t one = vdupq_n_f32(1.0f);
    for (; i + 4 <= n; i += 4) {
        const float32x4_t x = vld1q_f32(gate + i);
        const float32x4_t inner = vfmaq_f32(x, vmulq_f32(a, x), vmulq_f32(x, x));
        const float32x4_t e = exp4(vmulq_f32(c, inner));
        const float32x4_t g = vdivq_f32(x, vaddq_f32(one, e));
        vst1q_f32(out + i, vmulq_f32(g, vld1q_f32(up + i)));
    }
    for (; i < n; i++) {
        const float x = gate[i];
        const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + expf(-2.0f * u)) * up[i];
    }
}
#endif
