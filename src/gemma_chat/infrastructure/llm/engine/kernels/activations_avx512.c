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
#endif
