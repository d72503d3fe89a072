/* What the kernel sources share and Python does not see: the thread pool, the float16
 * conversions, and each operation's bodies with the one this build runs.
 *
 * Every operation has a generic body (q8_<op>_generic, plain C, always compiled: the reference)
 * and may have bodies for an instruction set (q8_<op>_avx512, q8_<op>_avx2, q8_<op>_neon) in their
 * own files, compiled when the build's -march has it. The names without a suffix below are this
 * build's choice, as ggml-cpu's arch-fallback.h. Bodies give the reference's bits where the
 * reference defines them (int8 sums, quantization, float16 stores, weighted sums, argmax, top-k,
 * RMSNorm); where the order of float additions differs (dot products, exp, GELU) they agree
 * within rounding.
 */
#ifndef GEMMA_Q8_IMPL_H
#define GEMMA_Q8_IMPL_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "q8.h"

#pragma GCC visibility push(hidden) /* within the library only: direct calls, not via the PLT */

#define QK 32    /* values per quantization block */
#define LANES 16 /* output rows packed side by side */
#define PREFETCH_AHEAD 8192 /* bytes of packed weights */

/* PREFETCH_AHEAD bytes past p, computed as an integer: near the end of the weights the address
 * is past their end, which a prefetch may name (it never faults) but pointer arithmetic may not */
static inline const char *ahead(const uint8_t *p) {
    return (const char *)((uintptr_t)p + PREFETCH_AHEAD);
}

/* ---- Instruction sets this build has -------------------------------------------------------- */
/* Q8_AVXVNNI_EVEX (the avx2-vnni-evex build): AVX-512 is enabled only for AVX512VL's 256-bit
 * EVEX dpbusd in the AVX-VNNI products, so that AVX-512 machines (which lack AVX-VNNI) run and
 * test their source; every other body is the AVX2 one, as in the avx2-vnni build. */
#if defined(__AVX512F__) && !defined(Q8_AVXVNNI_EVEX)
#define Q8_AVX512 1 /* the float bodies (quantize, attention, GELU, argmax, top-k) */
#endif
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define Q8_AVX2 1 /* the float bodies where AVX-512's are not built */
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__) &&                   \
    !defined(Q8_AVXVNNI_EVEX)
#define Q8_AVX512_VNNI 1 /* the int8 products */
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define Q8_AVX2_INT8 1
#if defined(__AVXVNNI__) ||                                                                        \
    (defined(Q8_AVXVNNI_EVEX) && defined(__AVX512VNNI__) && defined(__AVX512VL__))
#define Q8_AVXVNNI 1 /* the int8 and 4-bit products with 256-bit dpbusd (matmul*_avxvnni.c) */
#endif
#endif
/* ARM64 (Q8_NO_NEON: the generic bodies only, for the cross-compiled comparison harness) */
#if defined(__aarch64__) && defined(__ARM_NEON) && !defined(Q8_NO_NEON)
#define Q8_NEON 1 /* the float bodies (quantize, attention, GELU, argmax, top-k) */
#if defined(__ARM_FEATURE_DOTPROD)
#define Q8_NEON_DOTPROD 1 /* the int8 products (sdot) */
#endif
#if defined(__ARM_FEATURE_DOTPROD) && defined(__ARM_FEATURE_MATMUL_INT8)
#define Q8_NEON_I8MM 1 /* the int8 products of several rows (usmmla), one row with sdot */
#endif
#endif

/* ---- Thread pool (thread_pool.c) ------------------------------------------------------------ */
typedef void (*item_fn)(void *ctx, int64_t item);

/* fn(ctx, i) for i in [0, count), in chunks of grain items, on every thread. One caller at a
 * time: another thread calling meanwhile runs its loop alone. */
void parallel_for(int64_t count, int64_t grain, item_fn fn, void *ctx);
int pool_threads(void);

/* ---- float16 (quantize.c) ------------------------------------------------------------------- */
static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        uint32_t m = man;
        do {
            e++;
            m <<= 1;
        } while ((m & 0x400) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((m & 0x3ff) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* float -> float16, rounding to nearest even (as vcvtps2ph does); overflow gives infinity */
static inline uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint32_t sign = (x >> 16) & 0x8000, abs = x & 0x7fffffff;
    if (abs >= 0x7f800000) /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 | ((abs >> 13) & 0x3ff) : 0));
    if (abs >= 0x477ff000) return (uint16_t)(sign | 0x7c00); /* rounds past 65504 */
    if (abs < 0x38800000) { /* a float16 subnormal (or zero): units of 2^-24 */
        const uint32_t man = (abs & 0x7fffff) | 0x800000, shift = 126 - (abs >> 23);
        if (shift > 24) return (uint16_t)sign;
        const uint32_t half = man >> shift, rest = man & ((1u << shift) - 1);
        const uint32_t mid = 1u << (shift - 1);
        return (uint16_t)(sign | (half + (rest > mid || (rest == mid && (half & 1)))));
    }
    const uint32_t rest = abs & 0x1fff, h = ((abs - 0x38000000) >> 13);
    return (uint16_t)(sign | (h + (rest > 0x1000 || (rest == 0x1000 && (h & 1)))));
}

/* ---- Operations: generic bodies, instruction-set bodies, and this build's choice ------------ */

/* quantize*.c: one block of QK floats -> QK int8 values and their scale */
void q8_quantize_block_generic(const float *x, int8_t *q, float *s);
void q8_quantize_block_avx512(const float *x, int8_t *q, float *s);
void q8_quantize_block_avx2(const float *x, int8_t *q, float *s);
/* quantize*.c: out[0..n) = x[0..n) as float16 (the same bits in every body) */
void q8_store_halves_generic(uint16_t *out, const float *x, int64_t n);
void q8_store_halves_avx512(uint16_t *out, const float *x, int64_t n);
void q8_store_halves_f16c(uint16_t *out, const float *x, int64_t n);
void q8_quantize_block_neon(const float *x, int8_t *q, float *s);
void q8_store_halves_neon(uint16_t *out, const float *x, int64_t n);

/* matmul*.c: rows [0, M) of y against output tiles t and t + 1 (when two). xc: 128 * the sum of
 * each row's block (the correction for unsigned weights) where the body needs it. */
typedef void tiles_product_fn(const int8_t *xq, const float *xs, const int32_t *xc,
                              const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                              int64_t M, int64_t t, int two, int64_t N, int64_t K);
tiles_product_fn q8_tiles_product_generic, q8_tiles_product_avx512, q8_tiles_product_avx2;
tiles_product_fn q8_tiles_product_avxvnni, q4_tiles_product_avxvnni; /* matmul*_avxvnni.c */
tiles_product_fn q8_tiles_product_neon;
/* matmul4*.c: the same on 4-bit weights; xc: 8 * the sum of each row's block (the correction
 * for the weights' +8), which every body but NEON's needs */
tiles_product_fn q4_tiles_product_generic, q4_tiles_product_avx512, q4_tiles_product_avx2;
tiles_product_fn q4_tiles_product_neon;
tiles_product_fn q8_tiles_product_i8mm, q4_tiles_product_i8mm; /* matmul*_neon.c, with i8mm */
/* matmul*.c: rows in groups of eight, as octet records (OCTET_BYTES per group and block: the
 * eight rows' k-quads interleaved, [8 quads][8 rows][4] int8, then their 8 scales xs and their
 * 8 negated corrections -xc), against output tiles t and t + 1 (when two): the same bits as
 * tiles_product on those rows, with every activation a broadcast from one running address. */
#define OCTET_BYTES 320
typedef void octets_product_fn(const uint8_t *x8, int64_t octets, const uint8_t *wq,
                               const uint16_t *ws, float mult, float *y, int64_t t, int two,
                               int64_t N, int64_t K);
octets_product_fn q8_octets_product_avx512, q4_octets_product_avx512;
/* matmul.c: y [M, N] = x [M, K] times packed w [N, K] transposed, tile pairs on the thread pool,
 * each through product (and octets, where the build has one, for rows in groups of eight);
 * offset: what the weights are stored plus (xc = offset * each row's block sums; 0: no xc);
 * q8p_matmul's 1 or 0; best (NULL: none): each row's q8_argmax_rows result, as for
 * q8p_matmul_argmax */
int q8_tiled_matmul(tiles_product_fn *product, octets_product_fn *octets, int32_t offset,
                    const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
                    float mult, float *y, int64_t M, int64_t N, int64_t K, int64_t *best);

/* attention*.c: a fixed-order float dot product (the same result for a row whatever the batch) */
float q8_dot_f32_generic(const float *a, const float *b, int64_t n);
float q8_dot_f32_avx512(const float *a, const float *b, int64_t n);
float q8_dot_f32_neon(const float *a, const float *b, int64_t n);
float q8_dot_f32_avx2(const float *a, const float *b, int64_t n);
/* attention*.c: out[i] = q . keys[i] for 16 consecutive float16 keys [16, D]; ``key`` [D] is the
 * caller's room for one key as floats */
void q8_dots16_generic(const float *q, const uint16_t *keys, int64_t D, float *out, float *key);
void q8_dots16_avx512(const float *q, const uint16_t *keys, int64_t D, float *out, float *key);
void q8_dots16_neon(const float *q, const uint16_t *keys, int64_t D, float *out, float *key);
/* attention*.c: out[h * 16 + i] = q[h * D..] . keys[i] for heads query rows q [heads, D] against
 * the same 16 keys: each the bits of this build's q8_dots16 for that head (every body), while
 * a key is read and converted once for several heads instead of once per head */
void q8_dots16_heads_generic(const float *q, int64_t heads, const uint16_t *keys, int64_t D,
                             float *out, float *key);
void q8_dots16_heads_avx512(const float *q, int64_t heads, const uint16_t *keys, int64_t D,
                            float *out, float *key);
void q8_dots16_heads_avx2(const float *q, int64_t heads, const uint16_t *keys, int64_t D,
                          float *out, float *key);
/* attention*.c: the largest of v[0..n) (exact, whatever the order) */
float q8_max_f32_generic(const float *v, int64_t n);
float q8_max_f32_avx512(const float *v, int64_t n);
float q8_max_f32_neon(const float *v, int64_t n);
/* attention*.c: v[i] = exp(v[i] - shift); returns the sum, added in a fixed order */
float q8_exp_shifted_generic(float *v, int64_t n, float shift);
float q8_exp_shifted_avx512(float *v, int64_t n, float shift);
float q8_exp_shifted_neon(float *v, int64_t n, float shift);
void q8_dots16_avx2(const float *q, const uint16_t *keys, int64_t D, float *out, float *key);
float q8_max_f32_avx2(const float *v, int64_t n);
float q8_exp_shifted_avx2(float *v, int64_t n, float shift);
/* attention*.c: outs[i][d] = sum over t of w[i * T + t] * v[t * D + d], for nq <= 16 rows of
 * weights, each output accumulated in t order, one FMA per t, whatever nq is */
void q8_weighted_sums_generic(const float *w, int64_t T, int64_t nq, const uint16_t *v,
                              int64_t D, float **outs);
void q8_weighted_sums_avx512(const float *w, int64_t T, int64_t nq, const uint16_t *v,
                             int64_t D, float **outs);
void q8_weighted_sums_neon(const float *w, int64_t T, int64_t nq, const uint16_t *v,
                           int64_t D, float **outs);
void q8_weighted_sums_avx2(const float *w, int64_t T, int64_t nq, const uint16_t *v, int64_t D,
                           float **outs);

/* activations*.c */
/* out[i] = gelu_tanh(gate[i]) * up[i] */
void q8_gelu_tanh_mul_generic(const float *gate, const float *up, float *out, int64_t n);
void q8_gelu_tanh_mul_avx512(const float *gate, const float *up, float *out, int64_t n);
void q8_gelu_tanh_mul_neon(const float *gate, const float *up, float *out, int64_t n);
void q8_gelu_tanh_mul_avx2(const float *gate, const float *up, float *out, int64_t n);

/* activations*.c: x[i] = cap * tanh(x[i] / cap) in place (a final logit cap). Every body
 * computes tanh(u) as the same ratio of an odd and an even polynomial in u (Eigen's fast tanh,
 * within a few ulp of tanhf; beyond +-TANH_CLAMP tanh is 1 within float rounding); a NaN stays
 * a NaN. An element's result does not depend on where it is (tails go through the vector
 * path, masked or padded), so a row gets the same bits alone or in a batch. */
#define TANH_CLAMP 7.90531110763549805f
#define TANH_A1 4.89352455891786e-03f
#define TANH_A3 6.37261928875436e-04f
#define TANH_A5 1.48572235717979e-05f
#define TANH_A7 5.12229709037114e-08f
#define TANH_A9 -8.60467152213735e-11f
#define TANH_A11 2.00018790482477e-13f
#define TANH_A13 -2.76076847742355e-16f
#define TANH_B0 4.89352518554385e-03f
#define TANH_B2 2.26843463243900e-03f
#define TANH_B4 1.18534705686654e-04f
#define TANH_B6 1.19825839466702e-06f
void q8_soft_cap_generic(float *x, int64_t n, float cap);
void q8_soft_cap_avx512(float *x, int64_t n, float cap);
void q8_soft_cap_neon(float *x, int64_t n, float cap);
void q8_soft_cap_avx2(float *x, int64_t n, float cap);

/* select*.c: row x [N]'s first largest value's index, or -1 (a NaN, or an infinite top) */
int64_t q8_argmax_row_generic(const float *x, int64_t N);
int64_t q8_argmax_row_avx512(const float *x, int64_t N);
int64_t q8_argmax_row_neon(const float *x, int64_t N);
int64_t q8_argmax_row_avx2(const float *x, int64_t N);
/* select*.c: offers x[from..N) to the min-heap v/id of k candidates (q8_offer below) */
void q8_top_k_scan_generic(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                           int64_t k);
void q8_top_k_scan_avx512(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                          int64_t k);
void q8_top_k_scan_neon(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                        int64_t k);
void q8_top_k_scan_avx2(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                        int64_t k);

#if defined(Q8_AVX512)
#define q8_quantize_block q8_quantize_block_avx512
#define q8_store_halves q8_store_halves_avx512
#define q8_dot_f32 q8_dot_f32_avx512
#define q8_dots16 q8_dots16_avx512
#define q8_dots16_heads q8_dots16_heads_avx512
#define q8_max_f32 q8_max_f32_avx512
#define q8_exp_shifted q8_exp_shifted_avx512
#define q8_weighted_sums q8_weighted_sums_avx512
#define q8_gelu_tanh_mul q8_gelu_tanh_mul_avx512
#define q8_soft_cap q8_soft_cap_avx512
#define q8_argmax_row q8_argmax_row_avx512
#define q8_top_k_scan q8_top_k_scan_avx512
#elif defined(Q8_NEON)
#define q8_quantize_block q8_quantize_block_neon
#define q8_store_halves q8_store_halves_neon
#define q8_dot_f32 q8_dot_f32_neon
#define q8_dots16 q8_dots16_neon
#define q8_dots16_heads q8_dots16_heads_generic
#define q8_max_f32 q8_max_f32_neon
#define q8_exp_shifted q8_exp_shifted_neon
#define q8_weighted_sums q8_weighted_sums_neon
#define q8_gelu_tanh_mul q8_gelu_tanh_mul_neon
#define q8_soft_cap q8_soft_cap_neon
#define q8_argmax_row q8_argmax_row_neon
#define q8_top_k_scan q8_top_k_scan_neon
#elif defined(Q8_AVX2)
#define q8_quantize_block q8_quantize_block_avx2
#define q8_store_halves q8_store_halves_f16c
#define q8_dot_f32 q8_dot_f32_avx2
#define q8_dots16 q8_dots16_avx2
#define q8_dots16_heads q8_dots16_heads_avx2
#define q8_max_f32 q8_max_f32_avx2
#define q8_exp_shifted q8_exp_shifted_avx2
#define q8_weighted_sums q8_weighted_sums_avx2
#define q8_gelu_tanh_mul q8_gelu_tanh_mul_avx2
#define q8_soft_cap q8_soft_cap_avx2
#define q8_argmax_row q8_argmax_row_avx2
#define q8_top_k_scan q8_top_k_scan_avx2
#else
#define q8_quantize_block q8_quantize_block_generic
#if defined(__F16C__)
#define q8_store_halves q8_store_halves_f16c
#else
#define q8_store_halves q8_store_halves_generic
#endif
#if defined(__AVX2__)
#define q8_dot_f32 q8_dot_f32_avx2
#else
#define q8_dot_f32 q8_dot_f32_generic
#endif
#define q8_dots16 q8_dots16_generic
#define q8_dots16_heads q8_dots16_heads_generic
#define q8_max_f32 q8_max_f32_generic
#define q8_exp_shifted q8_exp_shifted_generic
#define q8_weighted_sums q8_weighted_sums_generic
#define q8_gelu_tanh_mul q8_gelu_tanh_mul_generic
#define q8_soft_cap q8_soft_cap_generic
#define q8_argmax_row q8_argmax_row_generic
#define q8_top_k_scan q8_top_k_scan_generic
#endif

#if defined(Q8_AVX512_VNNI)
#define q8_octets_product q8_octets_product_avx512
#define q4_octets_product q4_octets_product_avx512
#else
#define q8_octets_product NULL /* groups of eight rows through tiles_product as the rest */
#define q4_octets_product NULL
#endif

#if defined(Q8_AVX512_VNNI)
#define q8_tiles_product q8_tiles_product_avx512
#define Q8_USES_BLOCK_SUMS 1 /* unsigned weights (w + 128): 128 * sum(x) comes back out */
#elif defined(Q8_AVXVNNI)
#define q8_tiles_product q8_tiles_product_avxvnni
#define Q8_USES_BLOCK_SUMS 1 /* dpbusd on unsigned weights, as AVX-512's */
#elif defined(Q8_AVX2_INT8)
#define q8_tiles_product q8_tiles_product_avx2
#define Q8_USES_BLOCK_SUMS 0 /* signed weights: no +128 to take back out */
#elif defined(Q8_NEON_I8MM)
#define q8_tiles_product q8_tiles_product_i8mm
#define Q8_USES_BLOCK_SUMS 1 /* usmmla on unsigned weights: 128 * sum(x) comes back out */
#elif defined(Q8_NEON_DOTPROD)
#define q8_tiles_product q8_tiles_product_neon
#define Q8_USES_BLOCK_SUMS 0 /* sdot on signed weights (w + 128 - 128) */
#else
#define q8_tiles_product q8_tiles_product_generic
#define Q8_USES_BLOCK_SUMS 1
#endif

#if defined(Q8_AVX512_VNNI)
#define q4_tiles_product q4_tiles_product_avx512
#elif defined(Q8_AVXVNNI)
#define q4_tiles_product q4_tiles_product_avxvnni
#elif defined(Q8_AVX2_INT8)
#define q4_tiles_product q4_tiles_product_avx2
#elif defined(Q8_NEON_I8MM)
#define q4_tiles_product q4_tiles_product_i8mm
#elif defined(Q8_NEON_DOTPROD)
#define q4_tiles_product q4_tiles_product_neon
#else
#define q4_tiles_product q4_tiles_product_generic
#endif

#if defined(__AVX2__)
#include <immintrin.h>
/* The first `count` (> 0) of v's 8 floats stored at y: a tile's last half of 8 outputs may be
 * short of N. */
static inline void store_floats8(float *y, __m256 v, int64_t count) {
    if (count >= 8) {
        _mm256_storeu_ps(y, v);
        return;
    }
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), lanes);
    _mm256_maskstore_ps(y, keep, v);
}
#endif

#if defined(Q8_AVX512)
#include <immintrin.h>

/* The mask of a tile's first `count` (> 0) of 16 outputs: the last tile may be short of N. */
static inline __mmask16 first_lanes16(int64_t count) {
    return count >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << count) - 1);
}

/* expf of 16 lanes, ~1.5 ulp (ggml's ggml_v_expf, MIT licence) */
static inline __m512 exp16(__m512 x) {
    const __m512 r = _mm512_set1_ps(0x1.8p23f);
    const __m512 z = _mm512_fmadd_ps(x, _mm512_set1_ps(0x1.715476p+0f), r);
    const __m512 n = _mm512_sub_ps(z, r);
    const __m512 b = _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.7f7d1cp-20f),
                                      _mm512_fnmadd_ps(n, _mm512_set1_ps(0x1.62e4p-1f), x));
    const __mmask16 d = _mm512_cmp_ps_mask(_mm512_abs_ps(n), _mm512_set1_ps(192), _CMP_GT_OQ);
    const __m512 u = _mm512_mul_ps(b, b);
    const __m512 j = _mm512_fmadd_ps(
        _mm512_fmadd_ps(_mm512_fmadd_ps(_mm512_set1_ps(0x1.0e4020p-7f), b,
                                        _mm512_set1_ps(0x1.573e2ep-5f)),
                        u,
                        _mm512_fmadd_ps(_mm512_set1_ps(0x1.555e66p-3f), b,
                                        _mm512_set1_ps(0x1.fffdb6p-2f))),
        u, _mm512_fmadd_ps(_mm512_set1_ps(0x1.ffffecp-1f), b, _mm512_set1_ps(1.0f)));
    const __m512 res = _mm512_scalef_ps(j, n);
    if (_mm512_kortestz(d, d)) return res;
    const __m512 zero = _mm512_setzero_ps();
    const __m512 alt = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(n, zero, _CMP_LE_OQ),
                                            _mm512_set1_ps(INFINITY), zero);
    return _mm512_mask_blend_ps(d, res, alt);
}
#endif

#if defined(Q8_NEON)
#include <arm_neon.h>

/* expf of 4 lanes, within a few ulp: 2^n e^r with n = round(x / ln 2), r = x - n ln 2 (ln 2 in
 * two parts, so r is exact enough), e^r by its Taylor series to r^7 (|r| <= ln 2 / 2), and 2^n
 * as two factors 2^(n/2) so that results down to the subnormals and up to infinity are right.
 * Below -104 the result is 0, above 89 infinity; a NaN stays a NaN (fmax/fmin keep it). */
static inline float32x4_t exp4(float32x4_t x) {
    x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-104.0f)), vdupq_n_f32(89.0f));
    const int32x4_t n = vcvtnq_s32_f32(vmulq_f32(x, vdupq_n_f32(1.44269504088896341f)));
    const float32x4_t nf = vcvtq_f32_s32(n);
    float32x4_t r = vfmsq_f32(x, nf, vdupq_n_f32(0.693145751953125f));  /* ln 2, high bits */
    r = vfmsq_f32(r, nf, vdupq_n_f32(1.42860682028622677e-06f));      /* and the rest */
    float32x4_t p = vdupq_n_f32(1.0f / 5040.0f);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 720.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 120.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 24.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f / 6.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
    /* n in [-150, 128]: n = h + (n - h), each part a normal float's exponent */
    const int32x4_t h = vshrq_n_s32(n, 1), rest = vsubq_s32(n, h);
    const int32x4_t bias = vdupq_n_s32(127);
    const float32x4_t s1 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(h, bias), 23));
    const float32x4_t s2 = vreinterpretq_f32_s32(vshlq_n_s32(vaddq_s32(rest, bias), 23));
    return vmulq_f32(vmulq_f32(p, s1), s2);
}
#endif

#if defined(Q8_AVX2) && !defined(Q8_AVX512)
#include <immintrin.h>
/* expf of 8 lanes, ~1.5 ulp (ggml's ggml_v_expf for AVX2, MIT licence): above ~88.7 infinity,
 * below ~-104 zero */
static inline __m256 exp8(__m256 x) {
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k =
        _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256 magnitude = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), n);
    const __m256 c = _mm256_cmp_ps(magnitude, _mm256_set1_ps(126), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(
        _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b,
                                        _mm256_set1_ps(0x1.573e2ep-5f)),
                        u,
                        _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b,
                                        _mm256_set1_ps(0x1.fffdb6p-2f))),
        u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(c)) return _mm256_fmadd_ps(j, k, k);
    /* a scale past float's exponent range: two factors (or an overflow / underflow) */
    const __m256i g = _mm256_and_si256(
        _mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
        _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 d = _mm256_cmp_ps(magnitude, _mm256_set1_ps(192), _CMP_GT_OQ);
    return _mm256_or_ps(
        _mm256_and_ps(d, _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(d, _mm256_or_ps(_mm256_and_ps(c, _mm256_mul_ps(
                                                              _mm256_fmadd_ps(s2, j, s2), s1)),
                                         _mm256_andnot_ps(c, _mm256_fmadd_ps(k, j, k)))));
}
#endif

/* ---- RMSNorm (norm*.c): the same bits in every body ---------------------------------------- */
#define Q8_NORM_LANES 16 /* double sums of squares, lane i % 16 */
void q8_rms_norm_generic(const float *x, const float *scale, float *out, int64_t n, float eps);
void q8_rms_norm_avx512(const float *x, const float *scale, float *out, int64_t n, float eps);
void q8_rms_norm_avx2(const float *x, const float *scale, float *out, int64_t n, float eps);
void q8_rms_norm_neon(const float *x, const float *scale, float *out, int64_t n, float eps);
#if defined(Q8_AVX512)
#define q8_rms_norm q8_rms_norm_avx512
#elif defined(Q8_NEON)
#define q8_rms_norm q8_rms_norm_neon
#elif defined(Q8_AVX2)
#define q8_rms_norm q8_rms_norm_avx2
#else
#define q8_rms_norm q8_rms_norm_generic
#endif

/* 1 / sqrt(mean of squares + eps) from the 16 lanes' sums (consumed): lane j + 8 into lane j,
 * then j + 4, j + 2, j + 1, as every body adds them */
static inline float q8_rms_inverse(double *lanes, int64_t n, float eps) {
    for (int width = Q8_NORM_LANES / 2; width >= 1; width /= 2)
        for (int j = 0; j < width; j++) lanes[j] += lanes[j + width];
    return 1.0f / sqrtf((float)(lanes[0] / (double)n) + eps);
}

/* ---- top-k's heap (select*.c): a min-heap on rank, the lowest-ranked candidate at the root.
 * Ranks: a larger value first, and of equal values the lower index. */
static inline int q8_ranks_below(float va, int64_t ia, float vb, int64_t ib) {
    return va < vb || (va == vb && ia > ib);
}

/* min-heap on rank: the lowest-ranked candidate at the root */
static inline void q8_sift_down(float *v, int64_t *id, int64_t n, int64_t i) {
    for (;;) {
        int64_t low = i;
        const int64_t l = 2 * i + 1, r = l + 1;
        if (l < n && q8_ranks_below(v[l], id[l], v[low], id[low])) low = l;
        if (r < n && q8_ranks_below(v[r], id[r], v[low], id[low])) low = r;
        if (low == i) return;
        const float tv = v[i];
        const int64_t ti = id[i];
        v[i] = v[low];
        id[i] = id[low];
        v[low] = tv;
        id[low] = ti;
        i = low;
    }
}

static inline void q8_offer(float *v, int64_t *id, int64_t k, float x, int64_t i) {
    if (x > v[0]) { /* a later index of an equal value ranks below: only a larger value enters */
        v[0] = x;
        id[0] = i;
        q8_sift_down(v, id, k, 0);
    }
}

#pragma GCC visibility pop

#endif
