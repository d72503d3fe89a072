/* F16C and AVX2 bodies of quantize.c's operations (the same bits as the generic ones). */
#include "q8_impl.h"

#if defined(__F16C__)
#include <immintrin.h>

void q8_store_halves_f16c(uint16_t *out, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) out[i] = float_to_half(x[i]);
}
#endif

#if defined(Q8_AVX2) && !defined(Q8_AVX512)
/* The generic body's values: max |x| (a NaN skipped), the same scale, x * (1 / scale) rounded
 * to nearest even, and of that integer its low byte as the (int8_t) cast keeps it (a product
 * out of int32's range or NaN gives 0x80000000 here and 0x8000000000000000 from lrintf: low
 * byte 0 in both). */
void q8_quantize_block_avx2(const float *x, int8_t *q, float *s) {
    __m256 v[4], m = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), m); /* a NaN keeps m */
    }
    float lanes[8], amax = 0.0f;
    _mm256_storeu_ps(lanes, m);
    for (int l = 0; l < 8; l++)
        if (lanes[l] > amax) amax = lanes[l];
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *s = d;
    const __m256 inv = _mm256_set1_ps(id);
    const __m256i low = _mm256_set1_epi32(0xff);
    __m256i r[4];
    for (int i = 0; i < 4; i++)
        r[i] = _mm256_and_si256(_mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv)), low);
    /* 0..255 each: the unsigned saturating packs keep every byte; then the lanes in order */
    const __m256i bytes = _mm256_packus_epi16(_mm256_packus_epi32(r[0], r[1]),
                                              _mm256_packus_epi32(r[2], r[3]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(
                                          bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}
#endif
