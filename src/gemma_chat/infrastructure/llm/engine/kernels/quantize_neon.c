/* ARM64 NEON bodies of quantize.c's operations (the same bits as the generic ones). */
#include "q8_impl.h"

#if defined(Q8_NEON)

void q8_quantize_block_neon(const float *x, int8_t *q, float *s) {
    /* the same values as the generic body: max |x|, then x / d rounded to nearest even */
    float32x4_t v[8];
    float32x4_t top = vdupq_n_f32(0.0f);
    for (int i = 0; i < 8; i++) {
        v[i] = vld1q_f32(x + 4 * i);
        top = vmaxnmq_f32(top, vabsq_f32(v[i])); /* as the generic loop: a NaN is passed over */
    }
    const float amax = vmaxnmvq_f32(top);
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    *s = d;
    const float32x4_t inv = vdupq_n_f32(id);
    for (int h = 0; h < 2; h++) {
        int16x8_t w[2];
        for (int j = 0; j < 2; j++) {
            const int32x4_t a = vcvtnq_s32_f32(vmulq_f32(v[4 * h + 2 * j], inv));
            const int32x4_t b = vcvtnq_s32_f32(vmulq_f32(v[4 * h + 2 * j + 1], inv));
            w[j] = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
        }
        vst1q_s8(q + 16 * h, vcombine_s8(vqmovn_s16(w[0]), vqmovn_s16(w[1])));
    }
}

void q8_store_halves_neon(uint16_t *out, const float *x, int64_t n) {
    int64_t i = 0; /* fcvt rounds to nearest even, as float_to_half */
    for (; i + 4 <= n; i += 4)
        vst1_u16(out + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(x + i))));
    for (; i < n; i++) out[i] = float_to_half(x[i]);
}
#endif
