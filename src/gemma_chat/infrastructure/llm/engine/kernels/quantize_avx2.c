/* F16C bodies (AVX2 machines) of quantize.c's operations (the same bits as the generic ones). */
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
