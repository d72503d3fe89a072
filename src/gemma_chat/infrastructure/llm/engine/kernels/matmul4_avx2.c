/* The 4-bit products with AVX2, FMA and F16C (the same bits as matmul4.c's generic body). */
#include "q8_impl.h"

#if defined(Q8_AVX2_INT8)
#include <immintrin.h>

/* Each 64-byte group is two halves of 8 outputs. maddubs multiplies the nibbles (unsigned,
 * 0..15) by the signed activations and adds pairs into 16 bits; a block's eight such results
 * per lane (4 groups, low and high nibbles) stay within 8 * 2 * 15 * 128 < 32768, so they add in
 * 16 bits without saturating and one madd widens them to 32: the generic body's int32 sums
 * with the +8 still in, taken out as 8 * sum(x), then its float work, so the same bits. Two rows
 * share each weight load. */
#define MR2 2
static inline __attribute__((always_inline)) void tile_product8(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    __m256 f[MR2][2];
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm256_setzero_ps();
    const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * 256;
        __m256i acc[MR2][2]; /* 16-bit pair sums */
        for (int m = 0; m < mr; m++) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(w + g * 64));
            const __m256i v1 = _mm256_loadu_si256((const __m256i *)(w + g * 64 + 32));
            _mm_prefetch(ahead(w + g * 64), _MM_HINT_T1);
            const __m256i l0 = _mm256_and_si256(v0, low);
            const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low);
            const __m256i l1 = _mm256_and_si256(v1, low);
            const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low);
            for (int m = 0; m < mr; m++) {
                int32_t qlo, qhi;
                memcpy(&qlo, xq + (m0 + m) * K + b * QK + g * 4, 4);
                memcpy(&qhi, xq + (m0 + m) * K + b * QK + 16 + g * 4, 4);
                const __m256i xl = _mm256_set1_epi32(qlo), xh = _mm256_set1_epi32(qhi);
                acc[m][0] = _mm256_add_epi16(acc[m][0], _mm256_maddubs_epi16(l0, xl));
                acc[m][0] = _mm256_add_epi16(acc[m][0], _mm256_maddubs_epi16(h0, xh));
                acc[m][1] = _mm256_add_epi16(acc[m][1], _mm256_maddubs_epi16(l1, xl));
                acc[m][1] = _mm256_add_epi16(acc[m][1], _mm256_maddubs_epi16(h1, xh));
            }
        }
        const uint16_t *sc = ws + (t * nb + b) * LANES;
        const __m256 s0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)sc));
        const __m256 s1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 8)));
        for (int m = 0; m < mr; m++) {
            const __m256i c = _mm256_set1_epi32(xc[(m0 + m) * nb + b]);
            const __m256i i0 = _mm256_sub_epi32(_mm256_madd_epi16(acc[m][0], ones), c);
            const __m256i i1 = _mm256_sub_epi32(_mm256_madd_epi16(acc[m][1], ones), c);
            const __m256 dx = _mm256_set1_ps(xs[(m0 + m) * nb + b]);
            f[m][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(dx, s0), f[m][0]);
            f[m][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(dx, s1), f[m][1]);
        }
    }
    const __m256 scale = _mm256_set1_ps(mult);
    for (int m = 0; m < mr; m++)
        for (int h = 0; h < 2; h++) {
            const int64_t n0 = t * LANES + h * 8;
            if (n0 >= N) break;
            store_floats8(y + (m0 + m) * N + n0, _mm256_mul_ps(f[m][h], scale), N - n0);
        }
}

void q4_tiles_product_avx2(const int8_t *xq, const float *xs, const int32_t *xc,
                           const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                           int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= MR2; m0 += MR2)
            tile_product8(xq, xs, xc, wq, ws, mult, y, m0, 2, tt, N, K);
        if (m0 < M) tile_product8(xq, xs, xc, wq, ws, mult, y, m0, 1, tt, N, K);
    }
}
#endif
