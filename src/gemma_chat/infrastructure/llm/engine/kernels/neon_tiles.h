/* The driver of the ARM64 products (matmul_neon.c, int8; matmul4_neon.c, 4-bit), which differ
 * only in a block's integer products: the including file defines BLOCK_BYTES (a tile's weight
 * bytes per block), the exported functions' names (TILES_PRODUCT_NEON, and TILES_PRODUCT_I8MM
 * with i8mm), then block_dots() (sdot) and, with i8mm, block_mmla() (usmmla), declared here.
 * The float work per output and block, the row pairs and the stores are here; each call inlined
 * with constant row counts, as when each file had its own copy. */
#ifndef Q8_NEON_TILES_H
#define Q8_NEON_TILES_H
#if !defined(BLOCK_BYTES) || !defined(TILES_PRODUCT_NEON)
#error "define BLOCK_BYTES and the exported functions' names before including neon_tiles.h"
#endif

#define MR2 2 /* rows per sdot pass: two share each weight load */

/* acc[m][v] += the block's products of outputs 4v..4v+3 and row m (activations xl[m], k 0..15,
 * and xh[m], k 16..31), its int32 sums with the weights' offset already taken off */
static inline __attribute__((always_inline)) void block_dots(
    int32x4_t acc[MR2][4], const uint8_t *w, const int8x16_t xl[MR2], const int8x16_t xh[MR2],
    int mr);

/* The first count (1..4) lanes of v at y */
static inline void store_floats4(float *y, float32x4_t v, int64_t count) {
    if (count >= 4) {
        vst1q_f32(y, v);
    } else {
        float lanes[4];
        vst1q_f32(lanes, v);
        for (int64_t l = 0; l < count; l++) y[l] = lanes[l];
    }
}

static inline __attribute__((always_inline)) void tile_product16(
    const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws, float mult,
    float *y, int64_t m0, int mr, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    float32x4_t f[MR2][4];
    for (int m = 0; m < mr; m++)
        for (int v = 0; v < 4; v++) f[m][v] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * BLOCK_BYTES;
        __builtin_prefetch(ahead(w));
        int32x4_t acc[MR2][4];
        int8x16_t xl[MR2], xh[MR2];
        for (int m = 0; m < mr; m++) {
            for (int v = 0; v < 4; v++) acc[m][v] = vdupq_n_s32(0);
            xl[m] = vld1q_s8(xq + (m0 + m) * K + b * QK);
            xh[m] = vld1q_s8(xq + (m0 + m) * K + b * QK + 16);
        }
        block_dots(acc, w, xl, xh, mr);
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
            store_floats4(y + (m0 + m) * N + n0, vmulq_n_f32(f[m][v], mult), N - n0);
        }
}

void TILES_PRODUCT_NEON(const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq,
                        const uint16_t *ws, float mult, float *y, int64_t M, int64_t t, int two,
                        int64_t N, int64_t K) {
    (void)xc; /* sdot's weights are signed: the offset is taken off each weight */
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= MR2; m0 += MR2)
            tile_product16(xq, xs, wq, ws, mult, y, m0, 2, tt, N, K);
        if (m0 < M) tile_product16(xq, xs, wq, ws, mult, y, m0, 1, tt, N, K);
    }
}

#if defined(Q8_NEON_I8MM)
#define RP 2 /* row pairs per usmmla pass: four rows */

/* acc[p][e] += the block's products of outputs 4v + 2e, 4v + 2e + 1 and row pair p (its
 * activations paired per 8 k in x8[p]), arranged as usmmla's 2 x 2 sums */
static inline __attribute__((always_inline)) void block_mmla(
    int32x4_t acc[RP][2], const uint8_t *w, int v, int8x16_t x8[RP][4], int rp);

static inline __attribute__((always_inline)) void tile_product_mm(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int rp, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    float32x4_t f[RP][8]; /* [row pair][output pair], arranged as usmmla's sums */
    for (int p = 0; p < rp; p++)
        for (int l = 0; l < 8; l++) f[p][l] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * BLOCK_BYTES;
        __builtin_prefetch(ahead(w));
        int32x4_t c4[RP];    /* -offset * sum(x): [row 2p, 2p + 1, 2p, 2p + 1] */
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
            block_mmla(acc, w, v, x8, rp);
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
                store_floats4(y + (m0 + 2 * p + r) * N + n0, vmulq_n_f32(row, mult), N - n0);
            }
        }
}

void TILES_PRODUCT_I8MM(const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq,
                        const uint16_t *ws, float mult, float *y, int64_t M, int64_t t, int two,
                        int64_t N, int64_t K) {
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
