/* The AVX-512 body of norm.c's RMSNorm (the generic body's bits): two registers of eight
 * double sums are the 16 lanes. */
#include "q8_impl.h"

#if defined(Q8_AVX512)
#include <immintrin.h>

void q8_rms_norm_avx512(const float *x, const float *scale, float *out, int64_t n, float eps) {
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + Q8_NORM_LANES <= n; i += Q8_NORM_LANES) {
        const __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
        const __m512d b = _mm512_cvtps_pd(_mm256_loadu_ps(x + i + 8));
        lo = _mm512_fmadd_pd(a, a, lo); /* the square is exact: as mul then add */
        hi = _mm512_fmadd_pd(b, b, hi);
    }
    double lanes[Q8_NORM_LANES];
    _mm512_storeu_pd(lanes, lo);
    _mm512_storeu_pd(lanes + 8, hi);
    for (int64_t t = i; t < n; t++) lanes[t % Q8_NORM_LANES] += (double)x[t] * (double)x[t];
    const float r = q8_rms_inverse(lanes, n, eps);
    const __m512 rv = _mm512_set1_ps(r);
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), rv),
                                                _mm512_loadu_ps(scale + i)));
    if (i < n) {
        const __mmask16 keep = (__mmask16)((1u << (n - i)) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(keep, x + i);
        const __m512 s = _mm512_maskz_loadu_ps(keep, scale + i);
        _mm512_mask_storeu_ps(out + i, keep, _mm512_mul_ps(_mm512_mul_ps(v, rv), s));
    }
}
#endif
