/* AVX2 bodies (with FMA) of activations.c's operations. GELU's exponential is exp8 (~1.5 ulp
 * from expf), the same for every element whatever the row's length. */
#include "q8_impl.h"

#if defined(Q8_AVX2) && !defined(Q8_AVX512)
#include <immintrin.h>

static inline __m256 gelu_tanh_mul8(__m256 x, __m256 up) {
    const __m256 c = _mm256_set1_ps(-2.0f * 0.7978845608028654f), a = _mm256_set1_ps(0.044715f);
    const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(a, x), _mm256_mul_ps(x, x), x);
    const __m256 e = exp8(_mm256_mul_ps(c, inner));
    const __m256 g = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
    return _mm256_mul_ps(g, up);
}

void q8_gelu_tanh_mul_avx2(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i,
                         gelu_tanh_mul8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i)));
    if (i < n) {
        float x[8] = {0}, u[8] = {0}, y[8];
        memcpy(x, gate + i, sizeof(float) * (size_t)(n - i));
        memcpy(u, up + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(y, gelu_tanh_mul8(_mm256_loadu_ps(x), _mm256_loadu_ps(u)));
        memcpy(out + i, y, sizeof(float) * (size_t)(n - i));
    }
}

static inline __m256 soft_cap8(__m256 x, __m256 cap) {
    __m256 u = _mm256_div_ps(x, cap);
    /* min/max return their second operand when one is a NaN: a NaN passes through */
    u = _mm256_max_ps(_mm256_set1_ps(-TANH_CLAMP), _mm256_min_ps(_mm256_set1_ps(TANH_CLAMP), u));
    const __m256 u2 = _mm256_mul_ps(u, u);
    __m256 p = _mm256_fmadd_ps(u2, _mm256_set1_ps(TANH_A13), _mm256_set1_ps(TANH_A11));
    p = _mm256_fmadd_ps(p, u2, _mm256_set1_ps(TANH_A9));
    p = _mm256_fmadd_ps(p, u2, _mm256_set1_ps(TANH_A7));
    p = _mm256_fmadd_ps(p, u2, _mm256_set1_ps(TANH_A5));
    p = _mm256_fmadd_ps(p, u2, _mm256_set1_ps(TANH_A3));
    p = _mm256_fmadd_ps(p, u2, _mm256_set1_ps(TANH_A1));
    p = _mm256_mul_ps(p, u);
    __m256 q = _mm256_fmadd_ps(u2, _mm256_set1_ps(TANH_B6), _mm256_set1_ps(TANH_B4));
    q = _mm256_fmadd_ps(q, u2, _mm256_set1_ps(TANH_B2));
    q = _mm256_fmadd_ps(q, u2, _mm256_set1_ps(TANH_B0));
    return _mm256_mul_ps(_mm256_div_ps(p, q), cap);
}

void q8_soft_cap_avx2(float *x, int64_t n, float cap) {
    const __m256 c = _mm256_set1_ps(cap);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, soft_cap8(_mm256_loadu_ps(x + i), c));
    if (i < n) { /* the tail through the same lanes, padded */
        float t[8] = {0};
        memcpy(t, x + i, sizeof(float) * (size_t)(n - i));
        _mm256_storeu_ps(t, soft_cap8(_mm256_loadu_ps(t), c));
        memcpy(x + i, t, sizeof(float) * (size_t)(n - i));
    }
}
#endif
