/* The int8 products with AVX-512 VNNI (the same bits as matmul.c's generic body). */
#include "q8_impl.h"

#if defined(Q8_AVX512_VNNI)
#include <immintrin.h>

#define MR 4 /* activation rows per register tile */

/* acc + the products of a's unsigned bytes with the signed quad at q, broadcast: dpbusd with
 * its memory operand's embedded broadcast, one instruction where the intrinsics (whatever the
 * compiler makes of _mm512_set1_epi32) give a broadcast load and then the dpbusd */
static inline __m512i dpbusd_quad(__m512i acc, __m512i a, const int32_t *q) {
    __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*q));
    return acc;
}

/* Rows m0..m0+mr of x against the 16 output rows of tile t (and t+1 when two): up to MR rows
 * with two tiles, or 8 rows with one. */
static inline __attribute__((always_inline)) void tile_product(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int two, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    __m512 f[8][2]; /* up to MR rows x 2 tiles, or 8 rows x 1 tile */
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i acc[8][2]; /* start at -128 sum(x): the weights' +128 taken back out */
        for (int m = 0; m < mr; m++)
            acc[m][0] = acc[m][1] = _mm512_set1_epi32(-xc[(m0 + m) * nb + b]);
        const uint8_t *w0 = wq + (t * nb + b) * (8 * 64), *w1 = w0 + nb * 8 * 64;
        for (int kq = 0; kq < 8; kq++) {
            const __m512i a0 = _mm512_loadu_si512((const void *)(w0 + kq * 64));
            const __m512i a1 = two ? _mm512_loadu_si512((const void *)(w1 + kq * 64)) : a0;
            /* into L2, 8 KB ahead: with the hardware prefetchers alone, the products with 8
             * rows waited for memory instead of overlapping it */
            _mm_prefetch(ahead(w0 + kq * 64), _MM_HINT_T1);
            if (two) _mm_prefetch(ahead(w1 + kq * 64), _MM_HINT_T1);
            for (int m = 0; m < mr; m++) {
                int32_t quad;
                memcpy(&quad, xq + (m0 + m) * K + b * QK + kq * 4, 4);
                const __m512i xb = _mm512_set1_epi32(quad);
                acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], a0, xb);
                if (two) acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], a1, xb);
            }
        }
        const __m512 s0 =
            _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ws + (t * nb + b) * LANES)));
        const __m512 s1 = two ? _mm512_cvtph_ps(_mm256_loadu_si256(
                                    (const __m256i *)(ws + ((t + 1) * nb + b) * LANES)))
                              : s0;
        for (int m = 0; m < mr; m++) {
            const __m512 dx = _mm512_set1_ps(xs[(m0 + m) * nb + b]);
            f[m][0] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][0]), _mm512_mul_ps(dx, s0), f[m][0]);
            if (two)
                f[m][1] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][1]), _mm512_mul_ps(dx, s1), f[m][1]);
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

/* Eight rows (one octet record per block) against the 16 output rows of tile t: eight
 * accumulators, one dependency chain per row, and each activation quad a broadcast operand of
 * its dpbusd straight from the record (no broadcast instruction, no per-row address). */
static inline __attribute__((always_inline)) void octet_tile(const uint8_t *x8,
                                                             const uint8_t *wq,
                                                             const uint16_t *ws, float mult,
                                                             float *y, int64_t t, int64_t N,
                                                             int64_t K) {
    const int64_t nb = K / QK;
    const uint8_t *w = wq + t * nb * (8 * 64);
    const uint16_t *s = ws + t * nb * LANES;
    __m512 f[8];
    for (int m = 0; m < 8; m++) f[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++, x8 += OCTET_BYTES, w += 8 * 64, s += LANES) {
        const int32_t *quads = (const int32_t *)x8, *minus_c = (const int32_t *)(x8 + 288);
        const float *dx = (const float *)(x8 + 256);
        __m512i acc[8]; /* start at -128 sum(x): the weights' +128 taken back out */
        for (int m = 0; m < 8; m++) acc[m] = _mm512_set1_epi32(minus_c[m]);
#pragma GCC unroll 8
        for (int kq = 0; kq < 8; kq++) {
            const __m512i a = _mm512_loadu_si512((const void *)(w + kq * 64));
            _mm_prefetch(ahead(w + kq * 64), _MM_HINT_T1);
            for (int m = 0; m < 8; m++)
                acc[m] = dpbusd_quad(acc[m], a, quads + kq * 8 + m);
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

void q8_octets_product_avx512(const uint8_t *x8, int64_t octets, const uint8_t *wq,
                              const uint16_t *ws, float mult, float *y, int64_t t, int two,
                              int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    for (int64_t g = 0; g < octets; g++) {
        /* each weight byte fetched from memory serves eight rows in one pass */
        const uint8_t *rec = x8 + g * nb * OCTET_BYTES;
        octet_tile(rec, wq, ws, mult, y + 8 * g * N, t, N, K);
        if (two) octet_tile(rec, wq, ws, mult, y + 8 * g * N, t + 1, N, K);
    }
}

void q8_tiles_product_avx512(const int8_t *xq, const float *xs, const int32_t *xc,
                             const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                             int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    int64_t m0 = 0;
    for (; M - m0 >= 8; m0 += 8) {
        /* eight rows against one tile: each weight byte fetched from memory serves eight rows
         * in one pass (two passes of four fetched it twice) */
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
