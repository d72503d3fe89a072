/* The 4-bit products with AVX-512 VNNI (the same bits as matmul4.c's generic body). */
#include "q8_impl.h"

#if defined(Q8_AVX512_VNNI)
#include <immintrin.h>

#define MR 4 /* activation rows per register tile */

/* Rows m0..m0+mr of x against the 16 output rows of tile t (and t+1 when two): up to MR rows
 * with two tiles, or 8 rows with one. Each 64-byte load gives two groups of 4 k (its low and
 * high nibbles), each group one dpbusd per row; the low and high halves add into their own
 * accumulators (two dependency chains instead of one), summed per block. */
static inline __attribute__((always_inline)) void tile_product(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int two, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 f[8][2]; /* up to MR rows x 2 tiles, or 8 rows x 1 tile */
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i lo[8][2], hi[8][2]; /* lo starts at -8 sum(x): the weights' +8 taken out */
        for (int m = 0; m < mr; m++) {
            lo[m][0] = lo[m][1] = _mm512_set1_epi32(-xc[(m0 + m) * nb + b]);
            hi[m][0] = hi[m][1] = _mm512_setzero_si512();
        }
        const uint8_t *w0 = wq + (t * nb + b) * 256, *w1 = w0 + nb * 256;
        for (int g = 0; g < 4; g++) {
            const __m512i v0 = _mm512_loadu_si512((const void *)(w0 + g * 64));
            const __m512i v1 = two ? _mm512_loadu_si512((const void *)(w1 + g * 64)) : v0;
            _mm_prefetch(ahead(w0 + g * 64), _MM_HINT_T1);
            if (two) _mm_prefetch(ahead(w1 + g * 64), _MM_HINT_T1);
            const __m512i l0 = _mm512_and_si512(v0, low);
            const __m512i h0 = _mm512_and_si512(_mm512_srli_epi16(v0, 4), low);
            const __m512i l1 = _mm512_and_si512(v1, low);
            const __m512i h1 = _mm512_and_si512(_mm512_srli_epi16(v1, 4), low);
            for (int m = 0; m < mr; m++) {
                int32_t qlo, qhi;
                memcpy(&qlo, xq + (m0 + m) * K + b * QK + g * 4, 4);
                memcpy(&qhi, xq + (m0 + m) * K + b * QK + 16 + g * 4, 4);
                const __m512i xl = _mm512_set1_epi32(qlo), xh = _mm512_set1_epi32(qhi);
                lo[m][0] = _mm512_dpbusd_epi32(lo[m][0], l0, xl);
                hi[m][0] = _mm512_dpbusd_epi32(hi[m][0], h0, xh);
                if (two) {
                    lo[m][1] = _mm512_dpbusd_epi32(lo[m][1], l1, xl);
                    hi[m][1] = _mm512_dpbusd_epi32(hi[m][1], h1, xh);
                }
            }
        }
        const __m512 s0 =
            _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ws + (t * nb + b) * LANES)));
        const __m512 s1 = two ? _mm512_cvtph_ps(_mm256_loadu_si256(
                                    (const __m256i *)(ws + ((t + 1) * nb + b) * LANES)))
                              : s0;
        for (int m = 0; m < mr; m++) {
            const __m512 dx = _mm512_set1_ps(xs[(m0 + m) * nb + b]);
            f[m][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(lo[m][0], hi[m][0])),
                                      _mm512_mul_ps(dx, s0), f[m][0]);
            if (two)
                f[m][1] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(lo[m][1], hi[m][1])),
                                    _mm512_mul_ps(dx, s1), f[m][1]);
        }
    }
    const __m512 scale = _mm512_set1_ps(mult);
    for (int m = 0; m < mr; m++)
        for (int j = 0; j <= two; j++) {
            const int64_t n0 = (t + j) * LANES;
            const __mmask16 keep = first_lanes16(N - n0);
            _mm512_mask_storeu_ps(y + (m0 + m) * N + n0, keep, _mm512_mul_ps(f[m][j], scale));
        }
}

/* matmul_avx512.c's octet_tile on 4-bit weights: each 64-byte load unpacked into its low and
 * high nibbles' groups (quads g and 4 + g of a record), both added into the row's one chain
 * (the int32 sum is exact in any order). */
static inline __attribute__((always_inline)) void octet_tile(const uint8_t *x8,
                                                             const uint8_t *wq,
                                                             const uint16_t *ws, float mult,
                                                             float *y, int64_t t, int64_t N,
                                                             int64_t K) {
    const int64_t nb = K / QK;
    const __m512i low = _mm512_set1_epi8(0x0F);
    const uint8_t *w = wq + t * nb * 256;
    const uint16_t *s = ws + t * nb * LANES;
    __m512 f[8];
    for (int m = 0; m < 8; m++) f[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, x8 += OCTET_BYTES, w += 256, s += LANES) {
        const int32_t *quads = (const int32_t *)x8, *minus_c = (const int32_t *)(x8 + 288);
        const float *dx = (const float *)(x8 + 256);
        __m512i acc[8]; /* start at -8 sum(x): the weights' +8 taken back out */
        for (int m = 0; m < 8; m++) acc[m] = _mm512_set1_epi32(minus_c[m]);
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++) {
            const __m512i v = _mm512_loadu_si512((const void *)(w + g * 64));
            _mm_prefetch(ahead(w + g * 64), _MM_HINT_T1);
            const __m512i l = _mm512_and_si512(v, low);
            const __m512i h = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
            for (int m = 0; m < 8; m++)
                acc[m] = _mm512_dpbusd_epi32(acc[m], l, _mm512_set1_epi32(quads[g * 8 + m]));
            for (int m = 0; m < 8; m++)
                acc[m] =
                    _mm512_dpbusd_epi32(acc[m], h, _mm512_set1_epi32(quads[(4 + g) * 8 + m]));
        }
        const __m512 s0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)s));
        for (int m = 0; m < 8; m++)
            f[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m]),
                                   _mm512_mul_ps(_mm512_set1_ps(dx[m]), s0), f[m]);
    }
    const __m512 scale = _mm512_set1_ps(mult);
    const int64_t n0 = t * LANES;
    const __mmask16 keep = first_lanes16(N - n0);
    for (int m = 0; m < 8; m++)
        _mm512_mask_storeu_ps(y + m * N + n0, keep, _mm512_mul_ps(f[m], scale));
}

void q4_octets_product_avx512(const uint8_t *x8, int64_t octets, const uint8_t *wq,
                              const uint16_t *ws, float mult, float *y, int64_t t, int two,
                              int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    for (int64_t g = 0; g < octets; g++) {
        const uint8_t *rec = x8 + g * nb * OCTET_BYTES;
        octet_tile(rec, wq, ws, mult, y + 8 * g * N, t, N, K);
        if (two) octet_tile(rec, wq, ws, mult, y + 8 * g * N, t + 1, N, K);
    }
}

void q4_tiles_product_avx512(const int8_t *xq, const float *xs, const int32_t *xc,
                             const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                             int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    int64_t m0 = 0;
    for (; M - m0 >= 8; m0 += 8) { /* eight rows share each unpacked load (as matmul_avx512.c) */
        tile_product(xq, xs, xc, wq, ws, mult, y, m0, 8, t, 0, N, K);
        if (two) tile_product(xq, xs, xc, wq, ws, mult, y, m0, 8, t + 1, 0, N, K);
    }
    for (; m0 < M; m0 += MR) {
        switch (M - m0 < MR ? M - m0 : MR) { /* constant row counts: fully unrolled tiles */
        case 1: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 1, t, two, N, K); break;
        case 2: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 2, t, two, N, K); break;
        case 3: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 3, t, two, N, K); break;
        default: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 4, t, two, N, K); break;
        }
    }
}
#endif
