/* AVX2 bodies of select.c's operations (the same results as the generic ones: the first
 * largest value, -1 for a row with a NaN or an infinite top; the same heap of candidates). */
#include <math.h>

#include "q8_impl.h"

#if defined(Q8_AVX2) && !defined(Q8_AVX512)
#include <immintrin.h>

int64_t q8_argmax_row_avx2(const float *x, int64_t N) {
    int64_t i = 0, best_i = 0;
    float best = -INFINITY;
    int broken = 0; /* a NaN seen */
    if (N >= 8) {
        __m256 top = _mm256_loadu_ps(x);
        __m256 nan = _mm256_cmp_ps(top, top, _CMP_UNORD_Q);
        __m256i at = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i step = _mm256_set1_epi32(8);
        __m256i index = at;
        for (i = 8; i + 8 <= N && i < INT32_MAX - 8; i += 8) {
            index = _mm256_add_epi32(index, step);
            const __m256 v = _mm256_loadu_ps(x + i);
            nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
            const __m256 higher = _mm256_cmp_ps(v, top, _CMP_GT_OQ); /* the first one wins */
            top = _mm256_blendv_ps(top, v, higher);
            at = _mm256_blendv_epi8(at, index, _mm256_castps_si256(higher));
        }
        broken = _mm256_movemask_ps(nan) != 0;
        float values[8];
        int32_t where[8];
        _mm256_storeu_ps(values, top);
        _mm256_storeu_si256((__m256i *)where, at);
        best = values[0];
        best_i = where[0];
        for (int l = 1; l < 8; l++)
            if (values[l] > best || (values[l] == best && where[l] < best_i)) {
                best = values[l];
                best_i = where[l];
            }
    }
    for (; i < N; i++) {
        if (x[i] != x[i]) broken = 1;
        if (x[i] > best || (i == 0 && best == -INFINITY)) {
            best = x[i];
            best_i = i;
        }
    }
    return broken || isinf(best) ? -1 : best_i;
}

void q8_top_k_scan_avx2(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                        int64_t k) {
    int64_t i = from;
    for (; i + 8 <= N; i += 8) { /* most blocks hold nothing larger than the heap's least */
        int above = _mm256_movemask_ps(
            _mm256_cmp_ps(_mm256_loadu_ps(x + i), _mm256_set1_ps(v[0]), _CMP_GT_OQ));
        while (above) {
            const int lane = __builtin_ctz((unsigned)above);
            q8_offer(v, id, k, x[i + lane], i + lane);
            above &= above - 1;
        }
    }
    for (; i < N; i++) q8_offer(v, id, k, x[i], i);
}
#endif
