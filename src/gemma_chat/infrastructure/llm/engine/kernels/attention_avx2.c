/* AVX2 bodies (with FMA and F16C) of attention.c's operations. The same bits as the generic
 * bodies of the same build where those define them: the dot products (q8_dot_f32_avx2's lanes,
 * added lane by lane), the maximum and the weighted sums (one FMA per position, in position
 * order). The exponentials are ~1.5 ulp from expf's and their sum adds lanes in its own fixed
 * order: a row's softmax still does not depend on the rows beside it. */
#include <math.h>

#include "q8_impl.h"

#if defined(__AVX2__)
#include <immintrin.h>

float q8_dot_f32_avx2(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(acc0, acc1));
    for (int l = 0; l < 8; l++) sum += lanes[l];
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}
#endif

#if defined(Q8_AVX2) && !defined(Q8_AVX512)

/* t[l] lane i = r[i] lane l */
static inline void transpose8(const __m256 *r, __m256 *t) {
    __m256 a[8], b[8];
    for (int i = 0; i < 4; i++) {
        a[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        b[4 * i] = _mm256_shuffle_ps(a[4 * i], a[4 * i + 2], 0x44);
        b[4 * i + 1] = _mm256_shuffle_ps(a[4 * i], a[4 * i + 2], 0xEE);
        b[4 * i + 2] = _mm256_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0x44);
        b[4 * i + 3] = _mm256_shuffle_ps(a[4 * i + 1], a[4 * i + 3], 0xEE);
    }
    for (int l = 0; l < 4; l++) {
        t[l] = _mm256_permute2f128_ps(b[l], b[l + 4], 0x20);
        t[l + 4] = _mm256_permute2f128_ps(b[l], b[l + 4], 0x31);
    }
}

/* out[0..16): the lane sums of sums[0..16) (lane by lane, in lane order), 8 at once after a
 * transpose */
static inline void lane_totals16(const __m256 *sums, float *out) {
    for (int h = 0; h < 2; h++) {
        __m256 lanes[8];
        transpose8(sums + 8 * h, lanes);
        __m256 total = _mm256_setzero_ps();
        for (int l = 0; l < 8; l++) total = _mm256_add_ps(total, lanes[l]);
        _mm256_storeu_ps(out + 8 * h, total);
    }
}

/* Each key's product as q8_dot_f32_avx2 forms it (two accumulators over 16 columns, their
 * sum's lanes added in lane order), four keys at a time, the keys read as float16 directly;
 * the lane sums of 8 keys at once after a transpose (D a multiple of 16). */
void q8_dots16_avx2(const float *q, const uint16_t *keys, int64_t D, float *out, float *key) {
    if (D % 16 != 0) {
        q8_dots16_generic(q, keys, D, out, key);
        return;
    }
    __m256 sums[16];
    for (int i0 = 0; i0 < 16; i0 += 4) {
        __m256 lo[4], hi[4];
        for (int i = 0; i < 4; i++) lo[i] = hi[i] = _mm256_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) {
            const __m256 q0 = _mm256_loadu_ps(q + c), q1 = _mm256_loadu_ps(q + c + 8);
            for (int i = 0; i < 4; i++) {
                const uint16_t *k = keys + (i0 + i) * D + c;
                lo[i] = _mm256_fmadd_ps(q0, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)k)),
                                        lo[i]);
                hi[i] = _mm256_fmadd_ps(
                    q1, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 8))), hi[i]);
            }
        }
        for (int i = 0; i < 4; i++) sums[i0 + i] = _mm256_add_ps(lo[i], hi[i]);
    }
    lane_totals16(sums, out);
}

/* q8_dots16_avx2's accumulation for two heads at once, two keys at a time: each key converted
 * once for both heads, each accumulator the same FMAs in the same order */
static void dots16_two_heads(const float *q, const uint16_t *keys, int64_t D, float *out) {
    __m256 sums[2][16];
    for (int i0 = 0; i0 < 16; i0 += 2) {
        __m256 lo[2][2], hi[2][2];
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 2; i++) lo[h][i] = hi[h][i] = _mm256_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) {
            __m256 klo[2], khi[2];
            for (int i = 0; i < 2; i++) {
                const uint16_t *k = keys + (i0 + i) * D + c;
                klo[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)k));
                khi[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + 8)));
            }
            for (int h = 0; h < 2; h++) {
                const __m256 q0 = _mm256_loadu_ps(q + h * D + c);
                const __m256 q1 = _mm256_loadu_ps(q + h * D + c + 8);
                for (int i = 0; i < 2; i++) {
                    lo[h][i] = _mm256_fmadd_ps(q0, klo[i], lo[h][i]);
                    hi[h][i] = _mm256_fmadd_ps(q1, khi[i], hi[h][i]);
                }
            }
        }
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 2; i++) sums[h][i0 + i] = _mm256_add_ps(lo[h][i], hi[h][i]);
    }
    for (int h = 0; h < 2; h++) lane_totals16(sums[h], out + h * 16);
}

void q8_dots16_heads_avx2(const float *q, int64_t heads, const uint16_t *keys, int64_t D,
                          float *out, float *key) {
    if (D % 16 != 0) {
        q8_dots16_heads_generic(q, heads, keys, D, out, key);
        return;
    }
    int64_t h = 0;
    for (; h + 2 <= heads; h += 2) dots16_two_heads(q + h * D, keys, D, out + h * 16);
    if (h < heads) q8_dots16_avx2(q + h * D, keys, D, out + h * 16, key);
}

float q8_max_f32_avx2(const float *v, int64_t n) {
    int64_t i = 0;
    float top = -INFINITY;
    if (n >= 8) {
        __m256 m = _mm256_set1_ps(-INFINITY);
        for (; i + 8 <= n; i += 8) /* max_ps keeps its second operand for a NaN: skipped */
            m = _mm256_max_ps(_mm256_loadu_ps(v + i), m);
        float lanes[8];
        _mm256_storeu_ps(lanes, m);
        for (int l = 0; l < 8; l++) top = lanes[l] > top ? lanes[l] : top;
    }
    for (; i < n; i++) top = v[i] > top ? v[i] : top;
    return top;
}

/* every value through exp8 (the last few padded), so each is computed the same way wherever
 * it sits */
float q8_exp_shifted_avx2(float *v, int64_t n, float shift) {
    int64_t i = 0;
    const __m256 s = _mm256_set1_ps(shift);
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(v + i), s));
        _mm256_storeu_ps(v + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float lanes[8], total = 0.0f;
    _mm256_storeu_ps(lanes, acc);
    for (int l = 0; l < 8; l++) total += lanes[l];
    if (i < n) {
        float rest[8] = {0};
        memcpy(rest, v + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(rest, exp8(_mm256_sub_ps(_mm256_loadu_ps(rest), s)));
        for (int64_t l = 0; i + l < n; l++) {
            v[i + l] = rest[l];
            total += rest[l];
        }
    }
    return total;
}

/* nq (<= 4) rows of weights against 16 columns of values from column d: 8 accumulators */
static inline __attribute__((always_inline)) void weighted_sums_group(
    const float *w, int64_t T, int nq, const uint16_t *v, int64_t D, int64_t d, float **outs) {
    __m256 lo[4], hi[4];
    for (int i = 0; i < nq; i++) lo[i] = hi[i] = _mm256_setzero_ps();
    for (int64_t t = 0; t < T; t++) {
        const uint16_t *row = v + t * D + d;
        const __m256 a = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)row));
        const __m256 b = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(row + 8)));
        for (int i = 0; i < nq; i++) {
            const __m256 weight = _mm256_broadcast_ss(w + i * T + t);
            lo[i] = _mm256_fmadd_ps(weight, a, lo[i]);
            hi[i] = _mm256_fmadd_ps(weight, b, hi[i]);
        }
    }
    for (int i = 0; i < nq; i++) {
        _mm256_storeu_ps(outs[i] + d, lo[i]);
        _mm256_storeu_ps(outs[i] + d + 8, hi[i]);
    }
}

/* 16 columns at a time for up to 4 rows of weights (the 16 registers hold 8 accumulators);
 * a block of values is read again for each 4 rows, from the cache */
void q8_weighted_sums_avx2(const float *w, int64_t T, int64_t nq, const uint16_t *v, int64_t D,
                           float **outs) {
    for (int64_t d = 0; d + 16 <= D; d += 16)
        for (int64_t i = 0; i < nq; i += 4) {
            switch (nq - i < 4 ? nq - i : 4) { /* constant counts keep them in registers */
            case 4: weighted_sums_group(w + i * T, T, 4, v, D, d, outs + i); break;
            case 3: weighted_sums_group(w + i * T, T, 3, v, D, d, outs + i); break;
            case 2: weighted_sums_group(w + i * T, T, 2, v, D, d, outs + i); break;
            default: weighted_sums_group(w + i * T, T, 1, v, D, d, outs + i); break;
            }
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
