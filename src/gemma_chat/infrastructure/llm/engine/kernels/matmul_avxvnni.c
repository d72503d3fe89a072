/* The int8 products with AVX-VNNI's 256-bit dpbusd (the same bits as matmul.c's generic body).
 *
 * For CPUs with AVX2 and AVX-VNNI but no AVX-512 (Intel cores since Alder Lake, Sierra
 * Forest): the weights are read as stored, w + 128 unsigned, and one dpbusd per row and 32
 * bytes replaces matmul_avx2.c's sign, maddubs, madd and add; the +128 comes back out as in
 * matmul_avx512.c (the accumulators start at -128 sum(x)), then the generic body's float work
 * (avxvnni_tiles.h). The avx2-vnni-evex build compiles this file with AVX-512 VL's EVEX dpbusd
 * on the same 256-bit registers (Q8_AVXVNNI_EVEX), so that it runs on AVX-512 machines without
 * AVX-VNNI (Zen 4, Ice Lake); that build has 32 vector registers where the real one has 16. */
#include "q8_impl.h"

#if defined(Q8_AVXVNNI)
#define BLOCK_BYTES (8 * 64) /* 8 groups of 64 bytes: 4 k of the tile's 16 outputs each */
#define TILES_PRODUCT q8_tiles_product_avxvnni
#include "avxvnni_tiles.h"

static inline __attribute__((always_inline)) void block_dots(
    __m256i acc[8][2], const uint8_t *w, const int8_t *x, int64_t K, int mr, int h0,
    int halves) {
    for (int kq = 0; kq < 8; kq++) {
        __m256i a[2];
        for (int h = 0; h < halves; h++)
            a[h] = _mm256_loadu_si256((const __m256i *)(w + kq * 64 + (h0 + h) * 32));
        if (h0 == 0) _mm_prefetch(ahead(w + kq * 64), _MM_HINT_T1);
        for (int m = 0; m < mr; m++) {
            int32_t quad;
            memcpy(&quad, x + m * K + kq * 4, 4);
            const __m256i xb = _mm256_set1_epi32(quad);
            for (int h = 0; h < halves; h++) acc[m][h] = DPBUSD(acc[m][h], a[h], xb);
        }
    }
}
#endif
