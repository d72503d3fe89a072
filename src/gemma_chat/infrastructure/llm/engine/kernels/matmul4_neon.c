/* The 4-bit products with ARM64 NEON's dot product (armv8.2-a+dotprod), and with its 8-bit
 * matrix multiply where the CPU has it (i8mm); the same bits as matmul4.c's generic body. */
#include "q8_impl.h"

#if defined(Q8_NEON_DOTPROD)
#define BLOCK_BYTES 256 /* 4 groups of 64 bytes: 8 k of the tile's 16 outputs each */
#define TILES_PRODUCT_NEON q4_tiles_product_neon
#define TILES_PRODUCT_I8MM q4_tiles_product_i8mm
#include "neon_tiles.h"

/* Each 64-byte group holds 4 vectors of 4 outputs x 4 bytes (sdot's shape, as in
 * matmul_neon.c), each byte two k values. The nibbles are split and 8 taken off each (signed,
 * -8..7), so sdot gives the generic body's int32 sums with the correction already made, then
 * the same float work per output and block, so the same bits (neon_tiles.h). Two rows share
 * each load. */
static inline __attribute__((always_inline)) void block_dots(
    int32x4_t acc[MR2][4], const uint8_t *w, const int8x16_t xl[MR2], const int8x16_t xh[MR2],
    int mr) {
    const uint8x16_t low = vdupq_n_u8(0x0F);
    const int8x16_t eight = vdupq_n_s8(8);
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
}

#if defined(Q8_NEON_I8MM)
/* usmmla as in matmul_neon.c: two outputs' weights (unsigned) by two rows' activations
 * (signed) over 8 k. Two neighbouring groups interleaved per 4-byte word (zip1/zip2) hold 8
 * consecutive k of outputs 2l, 2l + 1 in their low nibbles (k 8q.. for groups 2q, 2q + 1) and
 * the 8 k sixteen further in their high ones; the nibbles (w + 8, 0..15) are the unsigned
 * operand as they are, and the sums start from -8 * sum(x) (xc), so the generic body's int32
 * sums, then its float work per output and block: the same bits. One row alone takes the sdot
 * body above. */
static inline __attribute__((always_inline)) void block_mmla(
    int32x4_t acc[RP][2], const uint8_t *w, int v, int8x16_t x8[RP][4], int rp) {
    const uint8x16_t low = vdupq_n_u8(0x0F);
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
}
#endif
#endif
