/* The int8 products with ARM64 NEON's dot product (armv8.2-a+dotprod), and with its 8-bit
 * matrix multiply where the CPU has it (i8mm); the same bits as matmul.c's generic body. */
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
#if defined(Q8_NEON_I8MM)
/* usmmla multiplies a 2x8 matrix of unsigned bytes by an 8x2 one of signed bytes into 2x2 int32
 * sums: 32 products per instruction where sdot makes 16. Its unsigned operand is two outputs'
 * weights (the packed bytes w + 128 as they are: no flip), the signed one two rows' activations,
 * over 8 consecutive k. The packed layout holds 4 k per output and group, so two neighbouring
 * groups are interleaved per 4-byte word in registers (zip1/zip2: 8 k of outputs 2l, 2l + 1),
 * and each row pair's 32 activations of a block are paired per 8 bytes (zip of 64-bit halves).
 * acc[p][l] then holds [2l x row 2p, 2l x row 2p + 1, 2l + 1 x row 2p, 2l + 1 x row 2p + 1],
 * starting from -128 * sum(x) (the weights' +128 taken back out), so the generic body's int32
 * sums; the float work is the generic body's per output and block (the scale product, one FMA)
 * in that arrangement, undone when storing: the same bits. A weight load serves every row of
 * the pass; one row alone (single-stream decode) takes the sdot body above. */
#define RP 2 /* row pairs per pass: four rows */

static inline __attribute__((always_inline)) void tile_product_mm(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int rp, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    float32x4_t f[RP][8];
    for (int p = 0; p < rp; p++)
        for (int l = 0; l < 8; l++) f[p][l] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * (8 * 64);
        __builtin_prefetch(ahead(w));
        int32x4_t c4[RP]; /* -128 * sum(x): [row 2p, 2p + 1, 2p, 2p + 1] */
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
            for (int o = 0; o < 4; o++) { /* k 8o..8o+7: groups 2o and 2o + 1 */
                const uint8_t *g = w + 2 * o * 64 + 16 * v;
                const uint32x4_t lo = vreinterpretq_u32_u8(vld1q_u8(g));
                const uint32x4_t hi = vreinterpretq_u32_u8(vld1q_u8(g + 64));
                const uint8x16_t w0 = vreinterpretq_u8_u32(vzip1q_u32(lo, hi));
                const uint8x16_t w1 = vreinterpretq_u8_u32(vzip2q_u32(lo, hi));
                for (int p = 0; p < rp; p++) {
                    acc[p][0] = vusmmlaq_s32(acc[p][0], w0, x8[p][o]);
                    acc[p][1] = vusmmlaq_s32(acc[p][1], w1, x8[p][o]);
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
            for (int r = 0; r < 2; r++) {
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

void q8_tiles_product_i8mm(const int8_t *xq, const float *xs, const int32_t *xc,
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
