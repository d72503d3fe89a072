/* The driver of the AVX-VNNI products (matmul_avxvnni.c, int8; matmul4_avxvnni.c, 4-bit),
 * which differ only in a block's integer dot products: the including file defines
 * BLOCK_BYTES (a tile's weight bytes per block) and TILES_PRODUCT (the name of the exported
 * function), and then block_dots() (declared here), which
 * adds a block's products of rows 0..mr-1 of x and halves h0..h0+halves-1 of the tile's 16
 * outputs into acc with DPBUSD. The float work, the tiles and the row counts are here; each
 * call inlined with constant row counts and halves, as when each file had its own copy. */
#ifndef Q8_AVXVNNI_TILES_H
#define Q8_AVXVNNI_TILES_H
#if !defined(BLOCK_BYTES) || !defined(TILES_PRODUCT)
#error "define BLOCK_BYTES and the exported functions' names before including avxvnni_tiles.h"
#endif
#include <immintrin.h>

#if defined(__AVXVNNI__)
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s) /* VEX */
#else
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s) /* EVEX (AVX512_VNNI + AVX512VL) */
#endif

static inline __attribute__((always_inline)) void block_dots(
    __m256i acc[8][2], const uint8_t *w, const int8_t *x, int64_t K, int mr, int h0,
    int halves);

/* Rows m0..m0+mr-1 of x against halves h0..h0+halves-1 of tile t's 16 outputs (8 per ymm), in
 * one pass over the tile's blocks, each weight load serving all the rows. */
static inline __attribute__((always_inline)) void tile_product(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int h0, int halves, int64_t N,
    int64_t K) {
    const int64_t nb = K / QK;
    __m256 f[8][2];
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * BLOCK_BYTES;
        const int8_t *x = xq + m0 * K + b * QK;
        const uint16_t *sc = ws + (t * nb + b) * LANES;
        {
            __m256i acc[8][2]; /* start at -xc: the weights' offset (+128, +8) taken back out */
            for (int m = 0; m < mr; m++) {
                const __m256i c = _mm256_set1_epi32(-xc[(m0 + m) * nb + b]);
                for (int h = 0; h < halves; h++) acc[m][h] = c;
            }
            block_dots(acc, w, x, K, mr, h0, halves);
            for (int h = 0; h < halves; h++) {
                const __m128i halves8 = _mm_loadu_si128((const __m128i *)(sc + (h0 + h) * 8));
                const __m256 s = _mm256_cvtph_ps(halves8);
                for (int m = 0; m < mr; m++) {
                    const __m256 d = _mm256_mul_ps(_mm256_set1_ps(xs[(m0 + m) * nb + b]), s);
                    f[m][h0 + h] =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][h]), d, f[m][h0 + h]);
                }
            }
        }
    }
    const __m256 scale = _mm256_set1_ps(mult);
    for (int m = 0; m < mr; m++)
        for (int h = h0; h < h0 + halves; h++) {
            const int64_t n0 = t * LANES + h * 8;
            if (n0 >= N) break;
            store_floats8(y + (m0 + m) * N + n0, _mm256_mul_ps(f[m][h], scale), N - n0);
        }
}

/* 5 to 8 rows: one half of the tile per pass over its blocks (8 accumulators, the weight load
 * and a broadcast fit the 16 registers, so each load serves every row; the second pass reads
 * the tile from L2); up to 4 rows take both halves in one pass. With both passes inside each
 * block, gcc kept the first one's broadcasts on the stack for the second (much slower). */
static inline __attribute__((always_inline)) void tile(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int64_t N, int64_t K) {
    if (mr > 4) {
        tile_product(xq, xs, xc, wq, ws, mult, y, m0, mr, t, 0, 1, N, K);
        if (t * LANES + 8 < N) tile_product(xq, xs, xc, wq, ws, mult, y, m0, mr, t, 1, 1, N, K);
    } else {
        tile_product(xq, xs, xc, wq, ws, mult, y, m0, mr, t, 0, 2, N, K);
    }
}

/* Tiles t..t+two, all M rows: eight at a time, then the rest at a constant count (the
 * exported function, named by the including file's TILES_PRODUCT). */
void TILES_PRODUCT(const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq,
                   const uint16_t *ws, float mult, float *y, int64_t M, int64_t t, int two,
                   int64_t N, int64_t K) {
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= 8; m0 += 8) /* each weight load serves eight rows */
            tile(xq, xs, xc, wq, ws, mult, y, m0, 8, tt, N, K);
        switch (M - m0) { /* constant row counts: unrolled rows */
        case 0: break;
        case 1: tile(xq, xs, xc, wq, ws, mult, y, m0, 1, tt, N, K); break;
        case 2: tile(xq, xs, xc, wq, ws, mult, y, m0, 2, tt, N, K); break;
        case 3: tile(xq, xs, xc, wq, ws, mult, y, m0, 3, tt, N, K); break;
        case 4: tile(xq, xs, xc, wq, ws, mult, y, m0, 4, tt, N, K); break;
        case 5: tile(xq, xs, xc, wq, ws, mult, y, m0, 5, tt, N, K); break;
        case 6: tile(xq, xs, xc, wq, ws, mult, y, m0, 6, tt, N, K); break;
        default: tile(xq, xs, xc, wq, ws, mult, y, m0, 7, tt, N, K); break;
        }
    }
}
#endif
