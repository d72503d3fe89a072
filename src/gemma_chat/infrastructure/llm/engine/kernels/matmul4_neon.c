/* The 4-bit products with ARM64 NEON's dot product (armv8.2-a+dotprod), and with its 8-bit
 * matrix multiply where the CPU has it (i8mm); the same bits as matmul4.c's generic body. */
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
#if defined(Q8_NEON_I8MM)
/* usmmla as in matmul_neon.c: two outputs' weights (unsigned) by two rows' activations
 * (signed) over 8 k. Two neighbouring groups interleaved per 4-byte word (zip1/zip2) hold 8
 * consecutive k of outputs 2l, 2l + 1 in their low nibbles (k 8q.. for groups 2q, 2q + 1) and
 * the 8 k sixteen further in their high ones; the nibbles (w + 8, 0..15) are the unsigned
 * operand as they are, and the sums start from -8 * sum(x) (xc), so the generic body's int32
 * sums, then its float work per output and block: the same bits. One row alone takes the sdot
 * body above. */
#define RP 2 /* row pairs per pass: four rows */

static inline __attribute__((always_inline)) void tile_product_mm(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int rp, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    const uint8x16_t low = vdupq_n_u8(0x0F);
    float32x4_t f[RP][8]; /* [row pair][output pair], arranged as usmmla's sums */
    for (int p = 0; p < rp; p++)
        for (int l = 0; l < 8; l++) f[p][l] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * 256;
        __builtin_prefetch(ahead(w));
        int32x4_t c4[RP];    /* -8 * sum(x): [row 2p, 2p + 1, 2p, 2p + 1] */
        int8x16_t x8[RP][4]; /* row pair p's k 8o..8o+7: [row 2p, row 2p + 1] */
        float32x4_t dx[RP];  /* [x scale of row 2p, of 2p + 1, of 2p, of 2p + 1] */
        for (int p = 0; p < rp; p++) {
            const int64_t r0 = m0 + 2 * p, r1 = r0 + 1;
            const int32_t c[2] = {-xc[r0 * nb + b], -xc[r1 * nb + b]};
            const int32x2_t c2 = vld1_s32(c);
            c4[p] = vcombine_s32(c2, c2);
            const float s2[2] = {xs[r0 * nb + b], xs[r1 * nb + b]};
            dx[p] = vcombine_f32(vld1_f32(s2), vld1_f32(s2));
            for (int h = 0; h < 2; h++) {
                const int64x2_t a = vreinterpretq_s64_s8(vld1q_s8(xq + r0 * K + b * QK + 16 * h));
                const int64x2_t z = vreinterpretq_s64_s8(vld1q_s8(xq + r1 * K + b * QK + 16 * h));
                x8[p][2 * h] = vreinterpretq_s8_s64(vzip1q_s64(a, z));
                x8[p][2 * h + 1] = vreinterpretq_s8_s64(vzip2q_s64(a, z));
            }
        }
        const uint16_t *sc = ws + (t * nb + b) * LANES;
        for (int v = 0; v < 4; v++) { /* outputs 4v..4v+3, each pair's sums then its float work */
            int32x4_t acc[RP][2];
            for (int p = 0; p < rp; p++) acc[p][0] = acc[p][1] = c4[p];
            for (int q = 0; q < 2; q++) { /* groups 2q and 2q + 1 */
                const uint8_t *g = w + 2 * q * 64 + 16 * v;
                const uint32x4_t lo = vreinterpretq_u32_u8(vld1q_u8(g));
                const uint32x4_t hi = vreinterpretq_u32_u8(vld1q_u8(g + 64));
                const uint8x16_t z[2] = {vreinterpretq_u8_u32(vzip1q_u32(lo, hi)),
                                         vreinterpretq_u8_u32(vzip2q_u32(lo, hi))};
                for (int e = 0; e < 2; e++) {
                    const uint8x16_t wl = vandq_u8(z[e], low), wh = vshrq_n_u8(z[e], 4);
                    for (int p = 0; p < rp; p++) {
                        acc[p][e] = vusmmlaq_s32(acc[p][e], wl, x8[p][q]);
                        acc[p][e] = vusmmlaq_s32(acc[p][e], wh, x8[p][2 + q]);
                    }
                }
            }
            /* [scale of 4v, 4v, 4v + 1, 4v + 1], [of 4v + 2, 4v + 2, 4v + 3, 4v + 3] */
            const float32x4_t s4 = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(sc + 4 * v)));
            const float32x4_t s0 = vzip1q_f32(s4, s4), s1 = vzip2q_f32(s4, s4);
            for (int p = 0; p < rp; p++) {
                f[p][2 * v] =
                    vfmaq_f32(f[p][2 * v], vcvtq_f32_s32(acc[p][0]), vmulq_f32(dx[p], s0));
                f[p][2 * v + 1] =
                    vfmaq_f32(f[p][2 * v + 1], vcvtq_f32_s32(acc[p][1]), vmulq_f32(dx[p], s1));
            }
        }
    }
    for (int p = 0; p < rp; p++)
        for (int v = 0; v < 4; v++) {
            const int64_t n0 = t * LANES + 4 * v;
            if (n0 >= N) break;
            for (int r = 0; r < 2; r++) { /* row 2p + r: the even or odd elements */
                const float32x4_t row = r ? vuzp2q_f32(f[p][2 * v], f[p][2 * v + 1])
                                          : vuzp1q_f32(f[p][2 * v], f[p][2 * v + 1]);
                const float32x4_t out = vmulq_n_f32(row, mult);
                float *dst = y + (m0 + 2 * p + r) * N + n0;
                if (N - n0 >= 4) {
                    vst1q_f32(dst, out);
                } else {
                    float lanes[4];
                    vst1q_f32(lanes, out);
                    for (int64_t i = 0; i < N - n0; i++) dst[i] = lanes[i];
                }
            }
        }
}

void q4_tiles_product_i8mm(const int8_t *xq, const float *xs, const int32_t *xc,
                           const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                           int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= 2 * RP; m0 += 2 * RP)
            tile_product_mm(xq, xs, xc, wq, ws, mult, y, m0, RP, tt, N, K);
        for (; M - m0 >= 2; m0 += 2) tile_product_mm(xq, xs, xc, wq, ws, mult, y, m0, 1, tt, N, K);
        if (m0 < M) tile_product16(xq, xs, wq, ws, mult, y, m0, 1, tt, N, K);
    }
}
#endif
#endif
