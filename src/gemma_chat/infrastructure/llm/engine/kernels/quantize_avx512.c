/* AVX-512 bodies of quantize.c's operations (the same bits as the generic ones). */
#include "q8_impl.h"

#if defined(Q8_AVX512)
#include <immintrin.h>

void q8_quantize_block_avx512(const float *x, int8_t *q, float *s) {
    /* the same values as the generic body: max |x|, then x / d rounded to nearest even */
    const __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
    const float amax16 = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    const float d16 = amax16 / 127.0f, id16 = d16 != 0.0f ? 1.0f / d16 : 0.0f;
    *s = d16;
    const __m512 inv = _mm512_set1_ps(id16);
    _mm_storeu_si128((__m128i *)q, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inv))));
    _mm_storeu_si128((__m128i *)(q + 16),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inv))));
}

void q8_store_halves_avx512(uint16_t *out, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) out[i] = float_to_half(x[i]);
}
#endif
