/* The AVX2 body of norm.c's RMSNorm (the generic body's bits): four registers of four double
 * sums are the 16 lanes, lane i % 16 in register (i % 16) / 4. */
#include "q8_impl.h"

#if defined(Q8_AVX2) && !defined(Q8_AVX512)
#include <immintrin.h>

void q8_rms_norm_avx2(const float *x, const float *scale, float *out, int64_t n, float eps) {
    __m256d acc[4];
    for (int j = 0; j < 4; j++) acc[j] = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + Q8_NORM_LANES <= n; i += Q8_NORM_LANES)
        for (int j = 0; j < 4; j++) {
            const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4 * j));
            acc[j] = _mm256_fmadd_pd(v, v, acc[j]); /* the square is exact: as mul then add */
        }
    double lanes[Q8_NORM_LANES];
    for (int j = 0; j < 4; j++) _mm256_storeu_pd(lanes + 4 * j, acc[j]);
    for (int64_t t = i; t < n; t++) lanes[t % Q8_NORM_LANES] += (double)x[t] * (double)x[t];
    const float r = q8_rms_inverse(lanes, n, eps);
    const __m256 rv = _mm256_set1_ps(r);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), rv),
                                                _mm256_loadu_ps(scale + i)));
    for (; i < n; i++) out[i] = x[i] * r * scale[i];
}
#endif
