/* Matrix products on 4-bit weights, and the lookup of a 4-bit table's rows.
 *
 * The layout is matmul.c's with two k values per byte: 16 output rows side by side, four k at a
 * time, [N/16][K/32][4][16][4] bytes, where byte (g, lane, j) of a block holds the weight of
 * k = 4g + j in its low nibble and of k = 16 + 4g + j in its high one (GGUF Q4_0's split of a
 * block in halves), each as w + 8 (0..15); one float16 scale per row and block of 32:
 * [N/16][K/32][16]. A 64-byte load is two of the int8 layout's groups once its nibbles are
 * split (an and, a shift and an and), so the products keep the int8 kernels' shape: dpbusd with
 * the nibbles as its unsigned operand, the +8 taken back out as 8 * sum(x) per row and block.
 *
 * Every output is reduced in the same order whatever M is (blocks in order, one FMA each, the
 * float work of matmul.c), so a row's result does not depend on the rows computed beside it.
 * The generic body is here; the instruction-set ones in matmul4_avx512.c (VNNI),
 * matmul4_avxvnni.c (AVX-VNNI), matmul4_avx2.c and matmul4_neon.c.
 */
#include "q8_impl.h"

#define Q4_GROUP_BYTES 64 /* 16 lanes x 4 k, two nibbles each */
#define Q4_BLOCK_BYTES (4 * Q4_GROUP_BYTES)

/* One output at a time (scalar FMAs give the same bits as the lanes). */
void q4_tiles_product_generic(const int8_t *xq, const float *xs, const int32_t *xc,
                              const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                              int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    for (int64_t tt = t; tt <= t + two; tt++)
        for (int lane = 0; lane < LANES && tt * LANES + lane < N; lane++)
            for (int64_t m = 0; m < M; m++) {
                float f = 0.0f;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *w = wq + (tt * nb + b) * Q4_BLOCK_BYTES + lane * 4;
                    const int8_t *x = xq + m * K + b * QK;
                    int32_t acc = 0;
                    for (int g = 0; g < 4; g++)
                        for (int j = 0; j < 4; j++) {
                            const uint8_t byte = w[g * Q4_GROUP_BYTES + j];
                            acc += (int32_t)(byte & 0x0F) * x[g * 4 + j];
                            acc += (int32_t)(byte >> 4) * x[16 + g * 4 + j];
                        }
                    const float d =
                        xs[m * nb + b] * half_to_float(ws[(tt * nb + b) * LANES + lane]);
                    f = fmaf((float)(acc - xc[m * nb + b]), d, f);
                }
                y[m * N + tt * LANES + lane] = f * mult;
            }
}

/* matmul.c's driver (tiles on the thread pool) around this build's 4-bit tile product */
int q4p_matmul(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
               float mult, float *y, int64_t M, int64_t N, int64_t K) {
    return q8_tiled_matmul(q4_tiles_product, q4_octets_product, 8, xq, xs, wq, ws, mult, y, M, N,
                           K, NULL);
}

int q4p_matmul_argmax(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
                      float mult, float *y, int64_t M, int64_t N, int64_t K, int64_t *best) {
    return q8_tiled_matmul(q4_tiles_product, q4_octets_product, 8, xq, xs, wq, ws, mult, y, M, N,
                           K, best);
}

void q4p_rows(const uint8_t *wq, const uint16_t *ws, float mult, const int64_t *ids, int64_t R,
              int64_t K, float *out) {
    const int64_t nb = K / QK;
    for (int64_t r = 0; r < R; r++) {
        const int64_t t = ids[r] / LANES, lane = ids[r] % LANES;
        for (int64_t b = 0; b < nb; b++) {
            const float d = half_to_float(ws[(t * nb + b) * LANES + lane]) * mult;
            const uint8_t *w = wq + (t * nb + b) * Q4_BLOCK_BYTES + lane * 4;
            float *o = out + r * K + b * QK;
            for (int g = 0; g < 4; g++)
                for (int j = 0; j < 4; j++) {
                    const uint8_t byte = w[g * Q4_GROUP_BYTES + j];
                    o[g * 4 + j] = (float)((int32_t)(byte & 0x0F) - 8) * d;
                    o[16 + g * 4 + j] = (float)((int32_t)(byte >> 4) - 8) * d;
                }
        }
    }
}
