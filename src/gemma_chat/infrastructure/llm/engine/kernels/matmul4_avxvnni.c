/* The 4-bit products with AVX-VNNI's 256-bit dpbusd (the same bits as matmul4.c's generic body).
 *
 * matmul4_avx512.c's arithmetic on 256-bit registers: each 32-byte half of a 64-byte group
 * gives, once its nibbles are split, 4 k of 8 outputs in its low nibbles and 4 more in its high
 * ones, each one dpbusd per row against the row's broadcast int8 values; the accumulators start
 * at -8 sum(x) (the weights' +8 taken back out), then the generic body's float work. Built with
 * the VEX dpbusd for AVX-VNNI (avx2-vnni), or the EVEX one (avx2-vnni-evex, see
 * matmul_avxvnni.c). */
#include "q8_impl.h"

#if defined(Q8_AVXVNNI)
#include <immintrin.h>

#if defined(__AVXVNNI__)
#define DPBUSD(acc, u, s) _mm256_dpbusd_avx_epi32(acc, u, s) /* VEX */
#else
#define DPBUSD(acc, u, s) _mm256_dpbusd_epi32(acc, u, s) /* EVEX (AVX512_VNNI + AVX512VL) */
#endif

/* Rows m0..m0+mr against halves h0..h0+halves-1 of tile t, in one pass over its blocks (as
 * matmul_avxvnni.c), each unpacked load serving all the rows. */
static inline __attribute__((always_inline)) void tile_product(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int h0, int halves, int64_t N,
    int64_t K) {
    const int64_t nb = K / QK;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 f[8][2];
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * 256;
        const int8_t *x = xq + m0 * K + b * QK;
        const uint16_t *sc = ws + (t * nb + b) * LANES;
        {
            __m256i acc[8][2];
            for (int m = 0; m < mr; m++) {
                const __m256i c = _mm256_set1_epi32(-xc[(m0 + m) * nb + b]);
                for (int h = 0; h < halves; h++) acc[m][h] = c;
            }
            for (int g = 0; g < 4; g++) {
                __m256i lo[2], hi[2];
                for (int h = 0; h < halves; h++) {
                    const __m256i v =
                        _mm256_loadu_si256((const __m256i *)(w + g * 64 + (h0 + h) * 32));
                    lo[h] = _mm256_and_si256(v, low);
                    hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                }
                if (h0 == 0) _mm_prefetch(ahead(w + g * 64), _MM_HINT_T1);
                for (int m = 0; m < mr; m++) {
                    int32_t qlo, qhi;
                    memcpy(&qlo, x + m * K + g * 4, 4);
                    memcpy(&qhi, x + m * K + 16 + g * 4, 4);
                    const __m256i xl = _mm256_set1_epi32(qlo), xh = _mm256_set1_epi32(qhi);
                    for (int h = 0; h < halves; h++) {
                        acc[m][h] = DPBUSD(acc[m][h], lo[h], xl);
                        acc[m][h] = DPBUSD(acc[m][h], hi[h], xh);
                    }
                }
            }
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
 * block, gcc kept the first one's broadcasts on the stack for the second (half the speed). */
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

void q4_tiles_product_avxvnni(const int8_t *xq, const float *xs, const int32_t *xc,
                              const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                              int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= 8; m0 += 8) /* each unpacked load serves eight rows */
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
