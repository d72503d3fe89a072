/* The 4-bit products with AVX-VNNI's 256-bit dpbusd (the same bits as matmul4.c's generic body).
 *
 * matmul4_avx512.c's arithmetic on 256-bit registers: each 32-byte half of a 64-byte group
 * gives, once its nibbles are split, 4 k of 8 outputs in its low nibbles and 4 more in its high
 * ones, each one dpbusd per row against the row's broadcast int8 values; the accumulators start
 * at -8 sum(x) (the weights' +8 taken back out), then the generic body's float work
 * (avxvnni_tiles.h). Built with the VEX dpbusd for AVX-VNNI (avx2-vnni), or the EVEX one
 * (avx2-vnni-evex, see matmul_avxvnni.c). */
#include "q8_impl.h"

#if defined(Q8_AVXVNNI)
#define BLOCK_BYTES 256 /* 4 groups of 64 bytes: 8 k of the tile's 16 outputs each */
#define TILES_PRODUCT q4_tiles_product_avxvnni
#include "avxvnni_tiles.h"

static inline __attribute__((always_inline)) void block_dots(
    __m256i acc[8][2], const uint8_t *w, const int8_t *x, int64_t K, int mr, int h0,
    int halves) {
    const __m256i low = _mm256_set1_epi8(0x0F);
    for (int g = 0; g < 4; g++) {
        __m256i lo[2], hi[2];
        for (int h = 0; h < halves; h++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + g * 64 + (h0 + h) * 32));
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
}
#endif
