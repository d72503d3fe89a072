/* The int8 products with ARM64 NEON's dot product (armv8.2-a+dotprod; the same bits as
 * matmul.c's generic body). */
#include "q8_impl.h"

#if defined(Q8_NEON_DOTPROD)

/* Each 64-byte group of the packed layout holds 4 k values of 16 outputs: 4 vectors of 4
 * outputs x 4 bytes, exactly sdot's shape. The weights' +128 is taken off each byte (xor 0x80),
 * so sdot's signed products give the int32 sums of the generic body with its correction already
 * made, then the same float work per output and block (one multiply for the scale, one FMA), so
 * the same bits. Two rows share each weight load. */
#define MR2 2

/* acc[m][v] += weights' 4 outputs v . row m's 4 activations of group kq (lane kq % 4) */
#define DOT_GROUP(kq, xv)                                                                       \
    do {                                                                                        \
        const uint8_t *g = w + (kq) * 64;                                                       \
        int8x16_t wv[4];                                                                        \
        for (int v = 0; v < 4; v++)                                                             \
            wv[v] = vreinterpretq_s8_u8(veorq_u8(vld1q_u8(g + 16 * v), flip));                  \
        for (int m = 0; m < mr; m++)                                                            \
            for (int v = 0; v < 4; v++)                                                         \
                acc[m][v] = vdotq_laneq_s32(acc[m][v], wv[v], xv[m], (kq) % 4);                 \
    } while (0)

static inline __attribute__((always_inline)) void tile_product16(
    const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws, float mult,
    float *y, int64_t m0, int mr, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    const uint8x16_t flip = vdupq_n_u8(0x80);
    float32x4_t f[MR2][4];
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < 4; v++) f[m][v] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * (8 * 64);
        __builtin_prefetch(ahead(w));
        int32x4_t acc[MR2][4];
        int8x16_t lo[MR2], hi[MR2];
        for (int m = 0; m < mr; m++) {
            for (int v = 0; v < 4; v++) acc[m][v] = vdupq_n_s32(0);
            lo[m] = vld1q_s8(xq + (m0 + m) * K + b * QK);
            hi[m] = vld1q_s8(xq + (m0 + m) * K + b * QK + 16);
        }
        DOT_GROUP(0, lo);
        DOT_GROUP(1, lo);
        DOT_GROUP(2, lo);
        DOT_GROUP(3, lo);
        DOT_GROUP(4, hi);
        DOT_GROUP(5, hi);
        DOT_GROUP(6, hi);
        DOT_GROUP(7, hi);
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

void q8_tiles_product_neon(const int8_t *xq, const float *xs, const int32_t *xc,
                           const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                           int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    (void)xc; /* the +128 correction is for unsigned weights */
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= MR2; m0 += MR2)
            tile_product16(xq, xs, wq, ws, mult, y, m0, 2, tt, N, K);
        if (m0 < M) tile_product16(xq, xs, wq, ws, mult, y, m0, 1, tt, N, K);
    }
}
#endif
