/* AVX2 bodies of attention.c's operations (the same bits as the generic ones where the generic
 * ones define them: the dot product's lanes add in their own fixed order). */
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
