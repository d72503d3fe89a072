/* AVX-512 bodies of activations.c's operations. */
#include "q8_impl.h"

#if defined(Q8_AVX512)
#include <immintrin.h>

void q8_gelu_tanh_mul_avx512(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
    const __m512 c = _mm512_set1_ps(-2.0f * 0.7978845608028654f), a = _mm512_set1_ps(0.044715f);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(gate + i);
        const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(a, x), _mm512_mul_ps(x, x), x);
        const __m512 e = exp16(_mm512_mul_ps(c, inner));
        const __m512 g = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(g, _mm512_loadu_ps(up + i)));
    }
    for (; i < n; i++) {
        const float x = gate[i];
        const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + expf(-2.0f * u)) * up[i];
    }
}

static inline __m512 soft_cap16(__m512 x, __m512 cap) {
    __m512 u = _mm512_div_ps(x, cap);
    /* min/max return their second operand when one is a NaN: a NaN passes through */
    u = _mm512_max_ps(_mm512_set1_ps(-TANH_CLAMP), _mm512_min_ps(_mm512_set1_ps(TANH_CLAMP), u));
    const __m512 u2 = _mm512_mul_ps(u, u);
    __m512 p = _mm512_fmadd_ps(u2, _mm512_set1_ps(TANH_A13), _mm512_set1_ps(TANH_A11));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(TANH_A9));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(TANH_A7));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(TANH_A5));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(TANH_A3));
    p = _mm512_fmadd_ps(p, u2, _mm512_set1_ps(TANH_A1));
    p = _mm512_mul_ps(p, u);
    __m512 q = _mm512_fmadd_ps(u2, _mm512_set1_ps(TANH_B6), _mm512_set1_ps(TANH_B4));
    q = _mm512_fmadd_ps(q, u2, _mm512_set1_ps(TANH_B2));
    q = _mm512_fmadd_ps(q, u2, _mm512_set1_ps(TANH_B0));
    return _mm512_mul_ps(_mm512_div_ps(p, q), cap);
}

void q8_soft_cap_avx512(float *x, int64_t n, float cap) {
    const __m512 c = _mm512_set1_ps(cap);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, soft_cap16(_mm512_loadu_ps(x + i), c));
    if (i < n) { /* the tail through the same lanes, masked */
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(x + i, m, soft_cap16(_mm512_maskz_loadu_ps(m, x + i), c));
    }
}
#endif
