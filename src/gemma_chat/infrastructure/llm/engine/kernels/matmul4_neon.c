/* The 4-bit products with ARM64 NEON's dot product (armv8.2-a+dotprod; the same bits as
 * matmul4.c's generic body). */
#include "q8_impl.h"

#if defined(Q8_NEON_DOTPROD)

/* Each 64-byte group holds 4 vectors of 4 outputs x 4 bytes (sdot's shape, as in
 * matmul_neon.c), each byte two k values. The nibbles are split and 8 taken off each (signed,
 * -8..7), so sdot gives the generic body's int32 sums with the correction already made, then
 * the same float work per output and block, so the same bits. Two rows share each load. */
#define MR2 2

static inline __attribute__((always_inline)) void tile_product16(
    const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws, float mult,
    float *y, int64_t m0, int mr, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    const uint8x16_t low = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(8);
    float32x4_t f[MR2][4];
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < 4; v++) f[m][v] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * 256;
        __builtin_prefetch(ahead(w));
        int32x4_t acc[MR2][4];
        int8x16_t xl[MR2], xh[MR2];
        for (int m = 0; m < mr; m++) {
            for (int v = 0; v < 4; v++) acc[m][v] = vdupq_n_s32(0);
            xl[m] = vld1q_s8(xq + (m0 + m) * K + b * QK);
            xh[m] = vld1q_s8(xq + (m0 + m) * K + b * QK + 16);
        }
        for (int g = 0; g < 4; g++)
            for (int v = 0; v < 4; v++) {
                const uint8x16_t bytes = vld1q_u8(w + g * 64 + 16 * v);
                const int8x16_t l = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(bytes, low)), eight);
                const int8x16_t h = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4)), eight);
                for (int m = 0; m < mr; m++) {
                    /* lane g of the low and high halves: k = 4g.. and 16 + 4g.. */
                    switch (g) { /* the lane must be a constant */
                    case 0:
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], l, xl[m], 0);
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], h, xh[m], 0);
                        break;
                    case 1:
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], l, xl[m], 1);
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], h, xh[m], 1);
                        break;
                    case 2:
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], l, xl[m], 2);
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], h, xh[m], 2);
                        break;
                    default:
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], l, xl[m], 3);
                        acc[m][v] = vdotq_laneq_s32(acc[m][v], h, xh[m], 3);
                        break;
                    }
                }
            }
        const uint16_t *sc = ws + (t * nb + b) * LANES;
        float32x4_t s[4];
        for (int v = 0; v < 4; v++)
            s[v] = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc + 4 * v)));
        for (int m = 0; m < mr; m++) {
            const float32x4_t dx = vdupq_n_f32(xs[(m0 + m) * nb + b]);
            for (int v = 0; v < 4; v++)
                f[m][v] = vfmaq_f32(f[m][v], vcvtq_f32_s32(acc[m][v]), vmulq_f32(dx, s[v]));
        }
    }
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < 4; v++) {
            const int64_t n0 = t * LANES + 4 * v;
            if (n0 >= N) break;
            const float32x4_t out = vmulq_n_f32(f[m][v], mult);
            float *dst = y + (m0 + m) * N + n0;
            if (N - n0 >= 4) {
                vst1q_f32(dst, out);
            } else {
                float lanes[4];
                vst1q_f32(lanes, out);
                for (int64_t l = 0; l < N - n0; l++) dst[l] = lanes[l];
            }
        }
}

void q4_tiles_product_neon(const int8_t *xq, const float *xs, const int32_t *xc,
                           const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                           int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    (void)xc; /* the +8 is taken off each weight */
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= MR2; m0 += MR2)
            tile_product16(xq, xs, wq, ws, mult, y, m0, 2, tt, N, K);
        if (m0 < M) tile_product16(xq, xs, wq, ws, mult, y, m0, 1, tt, N, K);
    }
}
#endif
