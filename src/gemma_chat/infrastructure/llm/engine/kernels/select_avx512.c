/* AVX-512 bodies of select.c's operations (the same results as the generic ones). */
#include <math.h>

#include "q8_impl.h"

#if defined(Q8_AVX512)
#include <immintrin.h>

int64_t q8_argmax_row_avx512(const float *x, int64_t N) {
    int64_t i = 0, best_i = 0;
    float best = -INFINITY;
    int broken = 0; /* a NaN seen */
    if (N >= 16) {
        __m512 top = _mm512_loadu_ps(x);
        __mmask16 nan = _mm512_cmp_ps_mask(top, top, _CMP_UNORD_Q);
        __m512i at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i step = _mm512_set1_epi32(16);
        __m512i index = at;
        for (i = 16; i + 16 <= N && i < INT32_MAX - 16; i += 16) {
            index = _mm512_add_epi32(index, step);
            const __m512 v = _mm512_loadu_ps(x + i);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            const __mmask16 higher = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ); /* first wins */
            top = _mm512_mask_blend_ps(higher, top, v);
            at = _mm512_mask_blend_epi32(higher, at, index);
        }
        broken = nan != 0;
        float values[16];
        int32_t where[16];
        _mm512_storeu_ps(values, top);
        _mm512_storeu_si512((void *)where, at);
        best = values[0];
        best_i = where[0];
        for (int l = 1; l < 16; l++)
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

void q8_top_k_scan_avx512(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                          int64_t k) {
    int64_t i = from;
    for (; i + 16 <= N; i += 16) { /* most blocks hold nothing larger than the heap's least */
        __mmask16 above = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_set1_ps(v[0]),
                                             _CMP_GT_OQ);
        while (above) {
            const int lane = __builtin_ctz(above);
            q8_offer(v, id, k, x[i + lane], i + lane);
            above &= above - 1;
        }
    }
    for (; i < N; i++) q8_offer(v, id, k, x[i], i);
}
#endif
