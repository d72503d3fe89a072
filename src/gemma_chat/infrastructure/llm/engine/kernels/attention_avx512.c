/* AVX-512 bodies of attention.c's operations (the same bits as the generic ones where the
 * generic ones define them: sums of lanes add in their own fixed order). */
#include <math.h>

#include "q8_impl.h"

#if defined(Q8_AVX512)
#include <immintrin.h>

float q8_dot_f32_avx512(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* Lane i of the result: the sum of the lanes of a[i] (a fixed tree of adds). */
static inline __m512 sum_lanes16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88),
                         _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}

/* one reduction tree for 16 dot products instead of one per product (D a multiple of 16) */
void q8_dots16_avx512(const float *q, const uint16_t *keys, int64_t D, float *out, float *key) {
    if (D % 16 != 0) {
        q8_dots16_generic(q, keys, D, out, key);
        return;
    }
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t c = 0; c < D; c += 16) {
        const __m512 qc = _mm512_loadu_ps(q + c);
        for (int i = 0; i < 16; i++)
            acc[i] = _mm512_fmadd_ps(
                qc, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(keys + i * D + c))),
                acc[i]);
    }
    _mm512_storeu_ps(out, sum_lanes16(acc));
}

/* q8_dots16_avx512's accumulation for up to 4 heads at once, 4 keys at a time: each key
 * converted once for every head, each accumulator the same FMAs in the same order */
static inline __attribute__((always_inline)) void dots16_heads_n(const float *q, int hn,
                                                                 const uint16_t *keys, int64_t D,
                                                                 float *out) {
    __m512 acc[4][16];
    for (int i0 = 0; i0 < 16; i0 += 4) {
        __m512 a[4][4];
        for (int h = 0; h < hn; h++)
            for (int i = 0; i < 4; i++) a[h][i] = _mm512_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) {
            __m512 k[4];
            for (int i = 0; i < 4; i++)
                k[i] = _mm512_cvtph_ps(
                    _mm256_loadu_si256((const __m256i *)(keys + (i0 + i) * D + c)));
            for (int h = 0; h < hn; h++) {
                const __m512 qc = _mm512_loadu_ps(q + h * D + c);
                for (int i = 0; i < 4; i++) a[h][i] = _mm512_fmadd_ps(qc, k[i], a[h][i]);
            }
        }
        for (int h = 0; h < hn; h++)
            for (int i = 0; i < 4; i++) acc[h][i0 + i] = a[h][i];
    }
    for (int h = 0; h < hn; h++) _mm512_storeu_ps(out + h * 16, sum_lanes16(acc[h]));
}

void q8_dots16_heads_avx512(const float *q, int64_t heads, const uint16_t *keys, int64_t D,
                            float *out, float *key) {
    if (D % 16 != 0) {
        q8_dots16_heads_generic(q, heads, keys, D, out, key);
        return;
    }
    for (int64_t h0 = 0; h0 < heads; h0 += 4) {
        const float *qh = q + h0 * D;
        float *o = out + h0 * 16;
        switch (heads - h0 < 4 ? heads - h0 : 4) { /* constant counts: accumulators in registers */
        case 1: q8_dots16_avx512(qh, keys, D, o, key); break;
        case 2: dots16_heads_n(qh, 2, keys, D, o); break;
        case 3: dots16_heads_n(qh, 3, keys, D, o); break;
        default: dots16_heads_n(qh, 4, keys, D, o); break;
        }
    }
}

float q8_max_f32_avx512(const float *v, int64_t n) {
    int64_t i = 0;
    float top = -INFINITY;
    if (n >= 16) {
        __m512 m = _mm512_loadu_ps(v);
        for (i = 16; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(v + i));
        top = _mm512_reduce_max_ps(m);
    }
    for (; i < n; i++) top = v[i] > top ? v[i] : top;
    return top;
}

float q8_exp_shifted_avx512(float *v, int64_t n, float shift) {
    int64_t i = 0;
    float total = 0.0f;
    const __m512 s = _mm512_set1_ps(shift);
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(v + i), s));
        _mm512_storeu_ps(v + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    total = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) {
        v[i] = expf(v[i] - shift);
        total += v[i];
    }
    return total;
}

static inline __attribute__((always_inline)) void weighted_sums_n(
    const float *w, int64_t T, int nq, const uint16_t *v, int64_t D, float **outs) {
    for (int64_t d = 0; d + 16 <= D; d += 16) {
        __m512 acc[16];
        for (int i = 0; i < nq; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t t = 0; t < T; t++) {
            const __m512 value =
                _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + t * D + d)));
            for (int i = 0; i < nq; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(w[i * T + t]), value, acc[i]);
        }
        for (int i = 0; i < nq; i++) _mm512_storeu_ps(outs[i] + d, acc[i]);
    }
}

void q8_weighted_sums_avx512(const float *w, int64_t T, int64_t nq, const uint16_t *v,
                             int64_t D, float **outs) {
    switch (nq) { /* constant counts keep the accumulators in registers */
    case 1: weighted_sums_n(w, T, 1, v, D, outs); break;
    case 2: weighted_sums_n(w, T, 2, v, D, outs); break;
    case 4: weighted_sums_n(w, T, 4, v, D, outs); break;
    case 8: weighted_sums_n(w, T, 8, v, D, outs); break;
    case 16: weighted_sums_n(w, T, 16, v, D, outs); break;
    default: weighted_sums_n(w, T, (int)nq, v, D, outs); break;
    }
    const int64_t done = D - D % 16;
    for (int64_t i = 0; i < nq; i++)
        for (int64_t d = done; d < D; d++) {
            float acc = 0.0f;
            for (int64_t t = 0; t < T; t++)
                acc = fmaf(w[i * T + t], half_to_float(v[t * D + d]), acc);
            outs[i][d] = acc;
        }
}
#endif
