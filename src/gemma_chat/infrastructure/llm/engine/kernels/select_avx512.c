/* AVX-512 bodies of select.c's operations (the same results as the generic ones). */
#include <math.h>

#include "q8_impl.h"

#if defined(Q8_AVX512)
#include <immintrin.h>

/* Four chains over successive 16-float blocks: one chain's compare and blend wait for its last
 * (a few cycles a block), four keep the loads coming. Each lane of a chain keeps its first
 * largest; the chains, then the lanes, merge with the lower index winning a tie, so the result
 * is the row's first largest, as one pass in order finds it. */
#define ARGMAX_CHAINS 4

int64_t q8_argmax_row_avx512(const float *x, int64_t N) {
    int64_t i = 0, best_i = 0;
    float best = -INFINITY;
    int broken = 0; /* a NaN seen */
    if (N >= 16 * ARGMAX_CHAINS) {
        const __m512i lanes =
            _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const int64_t stride = 16 * ARGMAX_CHAINS;
        const __m512i step = _mm512_set1_epi32((int)stride);
        __m512 top[ARGMAX_CHAINS];
        __m512i at[ARGMAX_CHAINS], index[ARGMAX_CHAINS];
        __mmask16 nan = 0;
        for (int c = 0; c < ARGMAX_CHAINS; c++) {
            top[c] = _mm512_loadu_ps(x + 16 * c);
            nan |= _mm512_cmp_ps_mask(top[c], top[c], _CMP_UNORD_Q);
            at[c] = index[c] = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * c));
        }
        for (i = stride; i + stride <= N && i < INT32_MAX - 4 * stride; i += stride) {
            for (int c = 0; c < ARGMAX_CHAINS; c++) {
                index[c] = _mm512_add_epi32(index[c], step);
                const __m512 v = _mm512_loadu_ps(x + i + 16 * c);
                nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                const __mmask16 higher = _mm512_cmp_ps_mask(v, top[c], _CMP_GT_OQ); /* first wins */
                top[c] = _mm512_mask_blend_ps(higher, top[c], v);
                at[c] = _mm512_mask_blend_epi32(higher, at[c], index[c]);
            }
        }
        for (int c = 1; c < ARGMAX_CHAINS; c++) { /* a tie: the lower index */
            const __mmask16 higher =
                _mm512_cmp_ps_mask(top[c], top[0], _CMP_GT_OQ) |
                (_mm512_cmp_ps_mask(top[c], top[0], _CMP_EQ_OQ) &
                 _mm512_cmplt_epi32_mask(at[c], at[0]));
            top[0] = _mm512_mask_blend_ps(higher, top[0], top[c]);
            at[0] = _mm512_mask_blend_epi32(higher, at[0], at[c]);
        }
        broken = nan != 0;
        float values[16];
        int32_t where[16];
        _mm512_storeu_ps(values, top[0]);
        _mm512_storeu_si512((void *)where, at[0]);
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
