/* int8 x int8 matrix products in blocks of 32 along K, as llama.cpp's Q8_0.
 *
 * Weights and activations are quantized per block of 32 values with one float scale each.
 * Every output element is reduced in the same order whatever M is, so a row's result does not
 * depend on how many rows are computed together (batched decoding stays equal to unbatched).
 * Built at first use by q8_linear.py with the system's C compiler; AVX2 where available.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define QK 32

/* x: [M, K] float32 -> q: [M, K] int8, s: [M, K/QK] float32 */
void q8_quantize_rows(const float *x, int8_t *q, float *s, int64_t M, int64_t K) {
    const int64_t nb = K / QK;
#pragma omp parallel for schedule(static) if (M * K > 65536)
    for (int64_t r = 0; r < M * nb; r++) {
        const float *xb = x + r * QK;
        float amax = 0.0f;
        for (int i = 0; i < QK; i++) {
            float a = fabsf(xb[i]);
            if (a > amax) amax = a;
        }
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        s[r] = d;
        for (int i = 0; i < QK; i++) q[r * QK + i] = (int8_t)lrintf(xb[i] * id);
    }
}

static inline float dot_row_avx2(const int8_t *xq, const float *xs, const int8_t *wq,
                                 const float *ws, int64_t nb);

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
/* Two blocks per step: 64 products per dpbusd instruction. */
static inline float dot_row(const int8_t *xq, const float *xs, const int8_t *wq, const float *ws,
                            int64_t nb) {
    __m512 acc = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    int64_t b = 0;
    for (; b + 1 < nb; b += 2) {
        const __m512i x = _mm512_loadu_si512((const void *)(xq + b * QK));
        const __m512i w = _mm512_loadu_si512((const void *)(wq + b * QK));
        const __mmask64 negative = _mm512_movepi8_mask(x);
        const __m512i ax = _mm512_abs_epi8(x);
        const __m512i sw = _mm512_mask_sub_epi8(w, negative, zero, w); /* w * sign(x) */
        const __m512i p = _mm512_dpbusd_epi32(zero, ax, sw); /* lanes 0-7: block b; 8-15: b+1 */
        const __m512 d = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(xs[b] * ws[b]),
                                              _mm512_set1_ps(xs[b + 1] * ws[b + 1]));
        acc = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    if (b < nb) sum += dot_row_avx2(xq + b * QK, xs + b, wq + b * QK, ws + b, nb - b);
    return sum;
}
#else
#define dot_row dot_row_avx2
#endif

static inline float dot_row_avx2(const int8_t *xq, const float *xs, const int8_t *wq,
                                 const float *ws, int64_t nb) {
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        const __m256i x = _mm256_loadu_si256((const __m256i *)(xq + b * QK));
        const __m256i w = _mm256_loadu_si256((const __m256i *)(wq + b * QK));
        /* maddubs needs unsigned x signed: |x| times w with x's sign */
        const __m256i ax = _mm256_sign_epi8(x, x);
        const __m256i sw = _mm256_sign_epi8(w, x);
        const __m256i p16 = _mm256_maddubs_epi16(ax, sw);
        const __m256i p32 = _mm256_madd_epi16(p16, ones);
        const __m256 d = _mm256_set1_ps(xs[b] * ws[b]);
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p32), acc);
    }
    /* fixed-order horizontal sum */
    __m128 lo = _mm256_castps256_ps128(acc), hi = _mm256_extractf128_ps(acc, 1);
    lo = _mm_add_ps(lo, hi);
    lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
    lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
    return _mm_cvtss_f32(lo);
#else
    float sum = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t acc = 0;
        for (int i = 0; i < QK; i++) acc += (int32_t)xq[b * QK + i] * (int32_t)wq[b * QK + i];
        sum += xs[b] * ws[b] * (float)acc;
    }
    return sum;
#endif
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <stdlib.h>
#define MR 8 /* x rows computed against each weight row while it is in registers */

/* Rows m0..m0+mr of x against weight row n, two blocks per step; exact integer dot products
 * (x + 128 is unsigned for dpbusd; 128 * sum(w) is subtracted back), one float FMA per block
 * pair and row. xu: x + 128 as bytes; sx2: per row and block pair, the two scales spread over
 * 8 lanes each. */
static inline void rows_times_weight(const uint8_t *xu, const float *sx2, const int8_t *w,
                                     const float *ws, float *y, int64_t mr, int64_t N,
                                     int64_t nb, int64_t K) {
    __m512 acc[MR];
    for (int64_t m = 0; m < mr; m++) acc[m] = _mm512_setzero_ps();
    const __m512i zero = _mm512_setzero_si512();
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t b = 0; b + 1 < nb; b += 2) {
        const __m512i wv = _mm512_loadu_si512((const void *)(w + b * QK));
        const __m512i wsum = _mm512_slli_epi32(_mm512_dpbusd_epi32(zero, ones, wv), 7);
        const __m512 sw = _mm512_mask_blend_ps((__mmask16)0xFF00, _mm512_set1_ps(ws[b]),
                                               _mm512_set1_ps(ws[b + 1]));
        for (int64_t m = 0; m < mr; m++) {
            const __m512i xv = _mm512_loadu_si512((const void *)(xu + m * K + b * QK));
            const __m512i p = _mm512_sub_epi32(_mm512_dpbusd_epi32(zero, xv, wv), wsum);
            const __m512 d = _mm512_mul_ps(_mm512_loadu_ps(sx2 + (m * (nb / 2) + b / 2) * 16), sw);
            acc[m] = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(p), acc[m]);
        }
    }
    for (int64_t m = 0; m < mr; m++) y[m * N] = _mm512_reduce_add_ps(acc[m]);
}

/* y[m, n] = sum_k x[m, k] w[n, k]; xq/xs: [M, K], [M, K/QK]; wq/ws: [N, K], [N, K/QK]; y: [M, N] */
void q8_matmul(const int8_t *xq, const float *xs, const int8_t *wq, const float *ws, float *y,
               int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    if (nb % 2) { /* the blocked kernel takes block pairs; odd counts take the simple path */
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++)
            for (int64_t m = 0; m < M; m++)
                y[m * N + n] = dot_row(xq + m * K, xs + m * nb, wq + n * K, ws + n * nb, nb);
        return;
    }
    uint8_t *xu = (uint8_t *)malloc((size_t)(M * K));
    float *sx2 = (float *)malloc((size_t)(M * (nb / 2) * 16) * sizeof(float));
    for (int64_t i = 0; i < M * K; i++) xu[i] = (uint8_t)(xq[i] ^ 0x80);
    for (int64_t m = 0; m < M; m++)
        for (int64_t p = 0; p < nb / 2; p++)
            for (int l = 0; l < 16; l++)
                sx2[(m * (nb / 2) + p) * 16 + l] = xs[m * nb + 2 * p + (l >= 8)];
    const int64_t tile = 16; /* weight rows kept in cache while every x row uses them */
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += tile) {
        const int64_t n1 = n0 + tile < N ? n0 + tile : N;
        for (int64_t m0 = 0; m0 < M; m0 += MR) {
            const int64_t mr = M - m0 < MR ? M - m0 : MR;
            for (int64_t n = n0; n < n1; n++)
                rows_times_weight(xu + m0 * K, sx2 + m0 * (nb / 2) * 16, wq + n * K,
                                  ws + n * nb, y + m0 * N + n, mr, N, nb, K);
        }
    }
    free(xu);
    free(sx2);
}
#else
/* y[m, n] = sum_k x[m, k] w[n, k]; xq/xs: [M, K], [M, K/QK]; wq/ws: [N, K], [N, K/QK]; y: [M, N] */
void q8_matmul(const int8_t *xq, const float *xs, const int8_t *wq, const float *ws, float *y,
               int64_t M, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    const int64_t tile = 16; /* weight rows kept hot in cache while every x row uses them */
#pragma omp parallel for schedule(static)
    for (int64_t n0 = 0; n0 < N; n0 += tile) {
        const int64_t n1 = n0 + tile < N ? n0 + tile : N;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *xr = xq + m * K;
            const float *xsr = xs + m * nb;
            for (int64_t n = n0; n < n1; n++) {
                y[m * N + n] = dot_row(xr, xsr, wq + n * K, ws + n * nb, nb);
            }
        }
    }
}
#endif
