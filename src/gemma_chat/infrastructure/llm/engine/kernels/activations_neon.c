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

static inline float32x4_t soft_cap4(float32x4_t x, float32x4_t cap) {
    float32x4_t u = vdivq_f32(x, cap);
    /* vmin/vmax give a NaN when either operand is one: a NaN passes through */
    u = vmaxq_f32(vdupq_n_f32(-TANH_CLAMP), vminq_f32(vdupq_n_f32(TANH_CLAMP), u));
    const float32x4_t u2 = vmulq_f32(u, u);
    float32x4_t p = vfmaq_f32(vdupq_n_f32(TANH_A11), u2, vdupq_n_f32(TANH_A13));
    p = vfmaq_f32(vdupq_n_f32(TANH_A9), p, u2);
    p = vfmaq_f32(vdupq_n_f32(TANH_A7), p, u2);
    p = vfmaq_f32(vdupq_n_f32(TANH_A5), p, u2);
    p = vfmaq_f32(vdupq_n_f32(TANH_A3), p, u2);
    p = vfmaq_f32(vdupq_n_f32(TANH_A1), p, u2);
    p = vmulq_f32(p, u);
    float32x4_t q = vfmaq_f32(vdupq_n_f32(TANH_B4), u2, vdupq_n_f32(TANH_B6));
    q = vfmaq_f32(vdupq_n_f32(TANH_B2), q, u2);
    q = vfmaq_f32(vdupq_n_f32(TANH_B0), q, u2);
    return vmulq_f32(vdivq_f32(p, q), cap);
}

void q8_soft_cap_neon(float *x, int64_t n, float cap) {
    const float32x4_t c = vdupq_n_f32(cap);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, soft_cap4(vld1q_f32(x + i), c));
    if (i < n) { /* the tail through the same lanes, padded */
        float t[4] = {0};
        memcpy(t, x + i, sizeof(float) * (size_t)(n - i));
        vst1q_f32(t, soft_cap4(vld1q_f32(t), c));
        memcpy(x + i, t, sizeof(float) * (size_t)(n - i));
    }
}
#endif
