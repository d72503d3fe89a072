/* The int8 products with AVX2, FMA and F16C (the same bits as matmul.c's generic body). */
#include "q8_impl.h"

#if defined(Q8_AVX2_INT8)
#include <immintrin.h>

/* AVX2 (256-bit registers): each 64-byte group of the packed layout is two halves of 8 outputs.
 * maddubs multiplies |x| (unsigned) by the weights carrying x's signs; its 16-bit pair sums stay
 * within 2 * 127 * 127, so nothing saturates, and madd widens them to 32 bits: the same int32
 * sums as dpbusd, then the same float work per output and block, so the same bits as the other
 * paths. Up to four rows share each weight load (their 8 int32 accumulators, the two signed
 * weight halves and the temporaries fill the 16 registers), and each row's |x| is taken once
 * per block instead of once per 4 k: vector work is what bounds these products, not reads. */
#define MR4 4
static inline __attribute__((always_inline)) void tile_product8(
    const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws, float mult,
    float *y, int64_t m0, int mr, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    __m256 f[MR4][2];
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm256_setzero_ps();
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    const uint8_t *w = wq + t * nb * (8 * 64);
    const int8_t *x = xq + m0 * K;
    for (int64_t b = 0; b < nb; b++, w += 8 * 64, x += QK) {
        __m256i acc[MR4][2];
        int8_t ax[MR4][QK] __attribute__((aligned(32))); /* |x|: once per block, not per k */
        for (int m = 0; m < mr; m++) {
            acc[m][0] = acc[m][1] = _mm256_setzero_si256();
            if (mr > 1) {
                const __m256i row = _mm256_loadu_si256((const __m256i *)(x + m * K));
                _mm256_store_si256((__m256i *)ax[m], _mm256_abs_epi8(row));
            }
        }
        for (int kq = 0; kq < 8; kq++) {
            const __m256i lo =
                _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + kq * 64)), flip);
            const __m256i hi =
                _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(w + kq * 64 + 32)), flip);
            _mm_prefetch(ahead(w + kq * 64), _MM_HINT_T1);
            for (int m = 0; m < mr; m++) {
                int32_t quad, absolute;
                memcpy(&quad, x + m * K + kq * 4, 4);
                const __m256i xb = _mm256_set1_epi32(quad);
                __m256i xa;
                if (mr > 1) {
                    memcpy(&absolute, ax[m] + kq * 4, 4);
                    xa = _mm256_set1_epi32(absolute);
                } else {
                    xa = _mm256_abs_epi8(xb);
                }
                const __m256i plo = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(lo, xb));
                const __m256i phi = _mm256_maddubs_epi16(xa, _mm256_sign_epi8(hi, xb));
                acc[m][0] = _mm256_add_epi32(acc[m][0], _mm256_madd_epi16(plo, ones));
                acc[m][1] = _mm256_add_epi32(acc[m][1], _mm256_madd_epi16(phi, ones));
            }
        }
        const uint16_t *sc = ws + (t * nb + b) * LANES;
        const __m256 s0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)sc));
        const __m256 s1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 8)));
        for (int m = 0; m < mr; m++) {
            const __m256 dx = _mm256_set1_ps(xs[(m0 + m) * nb + b]);
            const __m256 d0 = _mm256_mul_ps(dx, s0), d1 = _mm256_mul_ps(dx, s1);
            f[m][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][0]), d0, f[m][0]);
            f[m][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][1]), d1, f[m][1]);
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

void q8_tiles_product_avx2(const int8_t *xq, const float *xs, const int32_t *xc,
                           const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                           int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    (void)xc; /* the +128 correction is for dpbusd's unsigned weights */
    for (int64_t tt = t; tt <= t + two; tt++)
        for (int64_t m0 = 0; m0 < M; m0 += MR4) {
            switch (M - m0 < MR4 ? M - m0 : MR4) { /* constant row counts: unrolled rows */
            case 1: tile_product8(xq, xs, wq, ws, mult, y, m0, 1, tt, N, K); break;
            case 2: tile_product8(xq, xs, wq, ws, mult, y, m0, 2, tt, N, K); break;
            case 3: tile_product8(xq, xs, wq, ws, mult, y, m0, 3, tt, N, K); break;
            default: tile_product8(xq, xs, wq, ws, mult, y, m0, 4, tt, N, K); break;
            }
        }
}
#endif
