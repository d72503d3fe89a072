/* The int8 kernels' interface: every struct and function the library exports to Python.
 *
 * int8 x int8 matrix products in blocks of 32 along K, as llama.cpp's Q8_0, and the Gemma 3
 * decoder block built on them. Weights and activations are quantized per block of 32 values
 * with one scale each. Every output element is reduced in the same order whatever M is, so a
 * row's result does not depend on how many rows are computed together (batched decoding stays
 * equal to unbatched).
 *
 * This header is the one statement of the interface: q8.py hands the section between the
 * "cffi:begin" and "cffi:end" markers to cffi's cdef, so the Python side cannot drift from it.
 * Keep that section plain C declarations (no preprocessor lines). The sources behind it:
 *   thread_pool.c          the workers every parallel loop runs on
 *   quantize*.c            float32 -> int8 blocks, float32 -> float16 rows
 *   matmul*.c              int8 products on packed weights, the embedding lookup
 *   matmul4*.c             the same on 4-bit weights
 *   attention*.c           scores, softmax, weighted sums over float16 keys and values
 *   norm*.c                RMSNorm
 *   activations*.c         GELU, the final logit cap
 *   select*.c              argmax, top-k
 *   decoder_block.c        one Gemma 3 decoder block from the above
 * where the file without a suffix holds the generic (reference) body of each operation and
 * *_avx512.c / *_avx2.c / *_neon.c the bodies for those instruction sets (q8_impl.h picks one
 * per build).
 */
#ifndef GEMMA_Q8_H
#define GEMMA_Q8_H

#include <stdint.h>

/* cffi:begin */
/* One packed weight [n, k]: int8 (matmul.c's layout) or 4-bit (matmul4.c's). */
typedef struct {
    const uint8_t *q;  /* packed: int8 [N/16][K/32][8][16][4], 4-bit [N/16][K/32][4][16][4] */
    const uint16_t *s; /* float16: [N/16][K/32][16] */
    float mult;        /* scales are stored times 1 / mult (float16 range) */
    int64_t n, k;
    int64_t bits;      /* 4: the 4-bit layout; 8 (or 0): int8 */
} q8_weight;

/* One Gemma 3 decoder block's weights and shape. */
typedef struct {
    q8_weight qkv, o, gate_up, down;
    /* RMSNorm scales, already (1 + w) */
    const float *input_norm, *q_norm, *k_norm, *post_attention_norm, *pre_feedforward_norm,
        *post_feedforward_norm;
    int64_t hidden, heads, kv_heads, head_dim, intermediate;
    int64_t window; /* keys a query may see (sliding layers); 0: all before it */
    float eps, scaling;
} gemma_block;

/* Threads to use (the caller's own included), before the first product; 0: one per CPU. */
void gemma_set_threads(int n);

/* Which int8 products run here: 1 AVX-512 VNNI, 2 AVX2, 3 ARM64 NEON dot product, 4 the same with
 * i8mm's matrix multiply, 0 the portable loops (correct, but slower than bfloat16: the engine
 * then uses int8 only when asked to). */
int q8_vector_kernels(void);

/* x: [M, K] float32 -> q: [M, K] int8, s: [M, K/32] float32 */
void q8_quantize_rows(const float *x, int8_t *q, float *s, int64_t M, int64_t K);

/* y [M, N] = x [M, K] times packed w [N, K] transposed; xq/xs from q8_quantize_rows. 1 when
 * done; 0 when a buffer could not be allocated (y is then not written). */
int q8p_matmul(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
               float mult, float *y, int64_t M, int64_t N, int64_t K);

/* q8p_matmul, and best [M]: q8_argmax_rows' result for y, found by each thread on the columns
 * it just wrote (an output head's logits of greedy rows, not read again from memory). */
int q8p_matmul_argmax(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
                      float mult, float *y, int64_t M, int64_t N, int64_t K, int64_t *best);

/* Rows ids[r] of the packed table, as floats: out [R, K] (the embedding lookup). */
void q8p_rows(const uint8_t *wq, const uint16_t *ws, float mult, const int64_t *ids, int64_t R,
              int64_t K, float *out);

/* w [N, K] float32 -> q [N, K] int8 in -8..7, scale [N, K/32] float32: per block of 32, of a
 * few scales near GGUF Q4_0's, the one whose rounding (with its least-squares scale) leaves the
 * smallest squared error, each column's weighed by importance [K] (the mean square of that
 * input feature; NULL: all alike). For q4p_matmul's weights, once per model. */
void q4_quantize_weight(const float *w, const float *importance, int8_t *q, float *scale,
                        int64_t N, int64_t K);

/* The same three with 4-bit weights (matmul4.c's layout); activations as for q8p_matmul. */
int q4p_matmul(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
               float mult, float *y, int64_t M, int64_t N, int64_t K);
int q4p_matmul_argmax(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
                      float mult, float *y, int64_t M, int64_t N, int64_t K, int64_t *best);
void q4p_rows(const uint8_t *wq, const uint16_t *ws, float mult, const int64_t *ids, int64_t R,
              int64_t K, float *out);

/* x: [R, N] float32, in place: cap * tanh(x / cap), a final logit cap (cap > 0). tanh within a
 * few ulp of tanhf, an element's result the same whatever its row or position; a NaN stays. */
void q8_soft_cap_rows(float *x, int64_t R, int64_t N, float cap);

/* out[r] = the index of the first largest value of row r of x [R, N] (as torch.argmax), or -1
 * when the row holds a NaN or its largest value is infinite (a broken model's output). */
void q8_argmax_rows(const float *x, int64_t R, int64_t N, int64_t *out);

/* values/ids [R, k]: each row of x [R, N]'s k largest values and their indices, largest first
 * (0 < k <= N). */
void q8_top_k_rows(const float *x, int64_t R, int64_t N, int64_t k, float *values, int64_t *ids);

/* x: [B, hidden] float32, updated in place. slots/positions: [B]. cos/sin: [P, head_dim] tables.
 * k_slots/v_slots: per cache slot, the address of this layer's keys/values for that slot,
 * [kv_heads, capacities[slot], head_dim] float16, position p at p % capacity (a ring for sliding
 * layers; capacities are multiples of 16, and hold every position a row of the call reads).
 * 1 when done; 0 when a buffer could not be allocated (x is then as it was; the rows' keys and
 * values may be written to the cache, as they would be again). */
int gemma_decode_block(const gemma_block *blk, float *x, int64_t B, const int64_t *slots,
                       const int64_t *positions, const float *cos_table, const float *sin_table,
                       const int64_t *k_slots, const int64_t *v_slots, const int64_t *capacities);
/* cffi:end */

#endif
