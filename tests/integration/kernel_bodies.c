/* Test access to the kernels' operation bodies, which the library keeps to itself: built with
 * the kernel sources (test_q8_kernels.py), each function runs the generic body (which == 0) or
 * the AVX2 one (which == 1) of one operation. */
#include "q8_impl.h"

#if !defined(Q8_AVX2) || defined(Q8_AVX512)
#error "an AVX2 build without AVX-512 (-march=haswell)"
#endif

void body_quantize_block(int which, const float *x, int8_t *q, float *s) {
    (which ? q8_quantize_block_avx2 : q8_quantize_block_generic)(x, q, s);
}

void body_dots16(int which, const float *q, const uint16_t *keys, int64_t D, float *out,
                 float *key) {
    (which ? q8_dots16_avx2 : q8_dots16_generic)(q, keys, D, out, key);
}

float body_max_f32(int which, const float *v, int64_t n) {
    return (which ? q8_max_f32_avx2 : q8_max_f32_generic)(v, n);
}

float body_exp_shifted(int which, float *v, int64_t n, float shift) {
    return (which ? q8_exp_shifted_avx2 : q8_exp_shifted_generic)(v, n, shift);
}

/* out: [nq, D] */
void body_weighted_sums(int which, const float *w, int64_t T, int64_t nq, const uint16_t *v,
                        int64_t D, float *out) {
    float *outs[16];
    for (int64_t i = 0; i < nq; i++) outs[i] = out + i * D;
    (which ? q8_weighted_sums_avx2 : q8_weighted_sums_generic)(w, T, nq, v, D, outs);
}

void body_gelu_tanh_mul(int which, const float *gate, const float *up, float *out, int64_t n) {
    (which ? q8_gelu_tanh_mul_avx2 : q8_gelu_tanh_mul_generic)(gate, up, out, n);
}

void body_soft_cap(int which, float *x, int64_t n, float cap) {
    (which ? q8_soft_cap_avx2 : q8_soft_cap_generic)(x, n, cap);
}

int64_t body_argmax_row(int which, const float *x, int64_t N) {
    return (which ? q8_argmax_row_avx2 : q8_argmax_row_generic)(x, N);
}

/* the heap of the k candidates after a scan of x [N] (its first k values to start with) */
void body_top_k_heap(int which, const float *x, int64_t N, int64_t k, float *v, int64_t *id) {
    for (int64_t t = 0; t < k; t++) {
        v[t] = x[t];
        id[t] = t;
    }
    for (int64_t t = k / 2 - 1; t >= 0; t--) q8_sift_down(v, id, k, t);
    (which ? q8_top_k_scan_avx2 : q8_top_k_scan_generic)(x, k, N, v, id, k);
}
