/* The ARM64 NEON body of norm.c's RMSNorm (the generic body's bits): eight registers of two
 * double sums are the 16 lanes. */
#include "q8_impl.h"

#if defined(Q8_NEON)

void q8_rms_norm_neon(const float *x, const float *scale, float *out, int64_t n, float eps) {
    float64x2_t acc[8];
    for (int j = 0; j < 8; j++) acc[j] = vdupq_n_f64(0.0);
    int64_t i = 0;
    for (; i + Q8_NORM_LANES <= n; i += Q8_NORM_LANES)
        for (int j = 0; j < 4; j++) {
            const float32x4_t v = vld1q_f32(x + i + 4 * j);
            const float64x2_t a = vcvt_f64_f32(vget_low_f32(v)), b = vcvt_high_f64_f32(v);
            acc[2 * j] = vfmaq_f64(acc[2 * j], a, a); /* the square is exact: as mul then add */
            acc[2 * j + 1] = vfmaq_f64(acc[2 * j + 1], b, b);
        }
    double lanes[Q8_NORM_LANES];
    for (int j = 0; j < 8; j++) vst1q_f64(lanes + 2 * j, acc[j]);
    for (int64_t t = i; t < n; t++) lanes[t % Q8_NORM_LANES] += (double)x[t] * (double)x[t];
    const float r = q8_rms_inverse(lanes, n, eps);
    const float32x4_t rv = vdupq_n_f32(r);
    for (i = 0; i + 4 <= n; i += 4)
        vst1q_f32(out + i, vmulq_f32(vmulq_f32(vld1q_f32(x + i), rv), vld1q_f32(scale + i)));
    for (; i < n; i++) out[i] = x[i] * r * scale[i];
}
#endif
