/* The int8 products with ARM64 NEON's dot product (armv8.2-a+dotprod), and with its 8-bit
 * matrix multiply where the CPU has it (i8mm); the same bits as matmul.c's generic body. */
#include "q8_impl.h"

#if defined(Q8_NEON_DOTPROD)
#define BLOCK_BYTES (8 * 64) /* 8 groups of 64 bytes: 4 k of the tile's 16 outputs each */
#define TILES_PRODUCT_NEON q8_tiles_product_neon
#define TILES_PRODUCT_I8MM q8_tiles_product_i8mm
#include "neon_tiles.h"

/* Each 64-byte group of the packed layout holds 4 k values of 16 outputs: 4 vectors of 4
 * outputs x 4 bytes, exactly sdot's shape. The weights' +128 is taken off each byte (xor 0x80),
 * so sdot's signed products give the int32 sums of the generic body with its correction already
 * made, then the same float work per output and block (one multiply for the scale, one FMA), so
 * the same bits (neon_tiles.h). Two rows share each weight load. */

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

static inline __attribute__((always_inline)) void block_dots(
    int32x4_t acc[MR2][4], const uint8_t *w, const int8x16_t xl[MR2], const int8x16_t xh[MR2],
    int mr) {
    const uint8x16_t flip = vdupq_n_u8(0x80);
    DOT_GROUP(0, xl);
    DOT_GROUP(1, xl);
    DOT_GROUP(2, xl);
    DOT_GROUP(3, xl);
    DOT_GROUP(4, xh);
    DOT_GROUP(5, xh);
    DOT_GROUP(6, xh);
    DOT_GROUP(7, xh);
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
static inline __attribute__((always_inline)) void block_mmla(
    int32x4_t acc[RP][2], const uint8_t *w, int v, int8x16_t x8[RP][4], int rp) {
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
}
#endif
#endif
