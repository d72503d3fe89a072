/* One Gemma 3 decoder block, for decode steps and prefill.
 *
 * The whole block in one call: a torch decode step spent most of its time per block in small
 * operations (norms, rotary, cache writes, attention, activation) around the matrix products.
 * Each row is one token (of any sequence, at its own position); every row is computed on its
 * own and in a fixed order, so a token's result does not depend on the rows beside it: batched
 * decoding equals decoding alone, and a prompt prefilled whole equals one prefilled in pieces.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "q8_impl.h"

/* Projection of M rows on int8 or 4-bit weights: x [M, K] float -> y [M, N]; 0 when the
 * product's buffers could not be allocated */
static int project(const q8_weight *w, const float *x, float *y, int64_t M, int8_t *xq,
                   float *xs) {
    q8_quantize_rows(x, xq, xs, M, w->k);
    return (w->bits == 4 ? q4p_matmul : q8p_matmul)(xq, xs, w->q, w->s, w->mult, y, M, w->n,
                                                    w->k);
}

static void rope(float *v, const float *cos, const float *sin, int64_t d) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* A slot's keys or values for this layer, from the address table. */
static inline uint16_t *slot_keys(const int64_t *table, int64_t slot) {
    return (uint16_t *)(uintptr_t)table[slot];
}

typedef struct {
    float *h, *y, *attn, *xs; /* attn: the attention's output, then x after attention */
    int8_t *xq;
} scratch;

static void scratch_free(scratch *m) {
    free(m->h);
    free(m->y);
    free(m->attn);
    free(m->xs);
    free(m->xq);
}

/* The rows' buffers; 0, with none held, when one cannot be allocated. */
static int scratch_for(const gemma_block *blk, int64_t B, scratch *m) {
    const int64_t E = blk->hidden, NQ = blk->heads * blk->head_dim, I = blk->intermediate;
    const int64_t NQKV = NQ + 2 * blk->kv_heads * blk->head_dim;
    const int64_t widest = NQKV > 2 * I ? NQKV : 2 * I;
    const int64_t narrow = E > NQ ? (E > I ? E : I) : (NQ > I ? NQ : I);
    *m = (scratch){malloc(sizeof(float) * B * narrow), malloc(sizeof(float) * B * widest),
                   malloc(sizeof(float) * B * (NQ > E ? NQ : E)),
                   malloc(sizeof(float) * B * (widest / QK + 1)), malloc((size_t)(B * widest))};
    if (m->h && m->y && m->attn && m->xs && m->xq) return 1;
    scratch_free(m);
    return 0;
}

/* What one block's row loops need, passed to the pool as one context. */
typedef struct {
    const gemma_block *blk;
    float *x;
    const float *attn_in;
    const int64_t *slots, *positions;
    const float *cos_table, *sin_table;
    const int64_t *k_slots, *v_slots, *capacities; /* per slot: float16 [HKV, cap, D] */
    int64_t split;
    const int64_t *runs; /* attention tasks' first rows (block_attention) */
    scratch *m;
    atomic_int *out_of_memory; /* set by an attention task that could not allocate its room */
} block_job;

enum { ROW_INPUT_NORM, ROW_QK_ROTARY, ROW_ATTENTION_RESIDUAL_FFN_NORM, ROW_GELU,
       ROW_FFN_RESIDUAL };

typedef struct {
    block_job *job;
    int stage;
} row_job;

static void row_stage(void *ctx, int64_t b) {
    const row_job *r = ctx;
    const block_job *j = r->job;
    const gemma_block *blk = j->blk;
    const int64_t E = blk->hidden, D = blk->head_dim, H = blk->heads, HKV = blk->kv_heads;
    const int64_t NQ = H * D, NKV = HKV * D, NQKV = NQ + 2 * NKV, I = blk->intermediate;
    float *h = j->m->h, *y = j->m->y, *x = j->x;
    switch (r->stage) {
    case ROW_INPUT_NORM:
        q8_rms_norm(x + b * E, blk->input_norm, h + b * E, E, blk->eps);
        break;
    case ROW_QK_ROTARY: {
        float *row = y + b * NQKV;
        const float *c = j->cos_table + j->positions[b] * D;
        const float *s = j->sin_table + j->positions[b] * D;
        for (int64_t hd = 0; hd < H; hd++) {
            q8_rms_norm(row + hd * D, blk->q_norm, row + hd * D, D, blk->eps);
            rope(row + hd * D, c, s, D);
        }
        for (int64_t hd = 0; hd < HKV; hd++) {
            float *k = row + NQ + hd * D, *v = row + NQ + NKV + hd * D;
            q8_rms_norm(k, blk->k_norm, k, D, blk->eps);
            rope(k, c, s, D);
            const int64_t slot = j->slots[b], cap = j->capacities[slot];
            const int64_t at = (hd * cap + j->positions[b] % cap) * D;
            q8_store_halves(slot_keys(j->k_slots, slot) + at, k, D);
            q8_store_halves(slot_keys(j->v_slots, slot) + at, v, D);
        }
        break;
    }
    case ROW_ATTENTION_RESIDUAL_FFN_NORM: { /* one loop: a row's norm needs only its residual */
        /* into attn (read by the output projection, before this): x stays as it was until the
         * last stage, so a feed-forward product that cannot allocate leaves it so */
        float *mid = j->m->attn + b * E;
        q8_rms_norm(y + b * E, blk->post_attention_norm, h + b * E, E, blk->eps);
        for (int64_t i = 0; i < E; i++) mid[i] = x[b * E + i] + h[b * E + i];
        q8_rms_norm(mid, blk->pre_feedforward_norm, h + b * E, E, blk->eps);
        break;
    }
    case ROW_GELU:
        q8_gelu_tanh_mul(y + b * 2 * I, y + b * 2 * I + I, h + b * I, I);
        break;
    case ROW_FFN_RESIDUAL: {
        const float *mid = j->m->attn + b * E;
        q8_rms_norm(y + b * E, blk->post_feedforward_norm, h + b * E, E, blk->eps);
        for (int64_t i = 0; i < E; i++) x[b * E + i] = mid[i] + h[b * E + i];
        break;
    }
    }
}

/* Each row on its own; in parallel from 4 rows: one to three rows cost less than a hand-over to
 * the pool. */
static void rows(block_job *job, int stage, int64_t B) {
    row_job r = {job, stage};
    const int64_t half = (B + 1) / 2;
    parallel_for(B, B < 4 ? B : half > 8 ? 8 : half, row_stage, &r);
}

/* Norm, q/k/v projection, q/k norms and rotary; keys and values written to the cache; the
 * queries left in y [B, NQKV] (first NQ columns). 0 when the product could not allocate. */
static int block_qkv(block_job *job, int64_t B) {
    scratch *m = job->m;
    rows(job, ROW_INPUT_NORM, B);
    if (!project(&job->blk->qkv, m->h, m->y, B, m->xq, m->xs)) return 0; /* [B, NQKV] */
    rows(job, ROW_QK_ROTARY, B);
    return 1;
}

/* Attention tasks: a run of up to ROWS_PER_TASK consecutive rows of one sequence (a prompt's
 * tokens; in a decode step, one row) and the query heads of one kv head, so that each cached
 * key and value is read once for all of them. Every (row, head) is computed the same way
 * whatever the task holds (dot products over the head dimension, then weights and values
 * accumulated in position order; zero weights outside the row's window add nothing), so a
 * token's result is the same prefilled whole, prefilled in pieces, or decoded. */
#define ROWS_PER_TASK 8

/* n float16 values from p on into L2: a step of 8 rows reads each row's own keys and values,
 * which the weights streamed in between have evicted; the hardware prefetchers alone left the
 * scores waiting on each 16-key block's misses */
static inline void prefetch_halves(const uint16_t *p, int64_t n) {
    for (int64_t i = 0; i < n; i += 32) __builtin_prefetch(p + i, 0, 2);
}

/* the first position a query at position p sees (0 without a window) */
static inline int64_t first_key(int64_t p, int64_t window) {
    return window > 0 && p + 1 > window ? p + 1 - window : 0;
}

static void attention_task(void *ctx, int64_t task) {
    const block_job *j = ctx;
    const gemma_block *blk = j->blk;
    const int64_t D = blk->head_dim, H = blk->heads, HKV = blk->kv_heads;
    const int64_t NQ = H * D, NQKV = NQ + 2 * HKV * D, group = H / HKV;
    const int64_t split = j->split, per_task = group / split;
    const int64_t run = task / (HKV * split), kv = (task / split) % HKV;
    const int64_t first_head = kv * group + (task % split) * per_task;
    const int64_t r0 = j->runs[run], r1 = j->runs[run + 1], slot = j->slots[r0];
    const int64_t window = blk->window;
    int64_t t0 = INT64_MAX, t1 = 0;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t p = j->positions[r], lo = first_key(p, window);
        t0 = lo < t0 ? lo : t0;
        t1 = p + 1 > t1 ? p + 1 : t1;
    }
    const int64_t T = t1 - t0, queries = (r1 - r0) * per_task, cap = j->capacities[slot];
    const uint16_t *keys = slot_keys(j->k_slots, slot) + kv * cap * D;
    const uint16_t *values = slot_keys(j->v_slots, slot) + kv * cap * D;
    float *weights = calloc((size_t)(queries * T), sizeof(float)); /* [queries, T] from t0 */
    float *key = malloc(sizeof(float) * (size_t)D);                /* dots16's room */
    /* Scores 16 keys at a time, in blocks aligned to multiples of 16 positions, so that a
     * key's score is computed the same way in every call (keys past a row's own position are
     * computed and ignored: the cache always has room up to the next multiple of 16). */
    float *block = malloc(sizeof(float) * (size_t)(16 * per_task)); /* [per_task, 16] */
    if (!weights || !key || !block) { /* a pool task cannot fail: the caller is told */
        free(weights);
        free(key);
        free(block);
        atomic_store_explicit(j->out_of_memory, 1, memory_order_relaxed);
        return;
    }
    prefetch_halves(keys + ((t0 - t0 % 16) % cap) * D, 16 * D);
    for (int64_t tb = t0 - t0 % 16; tb < t1; tb += 16) {
        if (tb + 16 < t1) prefetch_halves(keys + ((tb + 16) % cap) * D, 16 * D);
        prefetch_halves(values + (tb % cap) * D, 16 * D); /* for the sums below */
        for (int64_t r = r0; r < r1; r++) {
            const int64_t p = j->positions[r];
            const int64_t lo = first_key(p, window);
            if (tb > p || tb + 16 <= lo) continue;
            /* the row's query heads of this task against the same keys: each key read and
             * converted once for all of them, each head's scores as q8_dots16 gives them */
            const float *q = j->m->y + r * NQKV + first_head * D;
            q8_dots16_heads(q, per_task, keys + (tb % cap) * D, D, block, key); /* cap: 16s */
            for (int64_t g = 0; g < per_task; g++) {
                float *w = weights + ((r - r0) * per_task + g) * T - t0;
                for (int64_t t = tb > lo ? tb : lo; t < tb + 16 && t <= p; t++)
                    w[t] = block[g * 16 + t - tb] * blk->scaling;
            }
        }
    }
    free(block);
    for (int64_t r = r0; r < r1; r++) {
        const int64_t p = j->positions[r], lo = first_key(p, window);
        for (int64_t g = 0; g < per_task; g++) {
            float *w = weights + ((r - r0) * per_task + g) * T + (lo - t0);
            const float top = q8_max_f32(w, p + 1 - lo);
            const float total = q8_exp_shifted(w, p + 1 - lo, top);
            for (int64_t t = 0; t <= p - lo; t++) w[t] /= total;
        }
    }
    /* Positions [t0, t1) in a ring that wrapped between them: the values copied out in position
     * order, so the sums below add the same numbers in the same order as without a ring. */
    const uint16_t *span = values + (t0 % cap) * D;
    uint16_t *unwrapped = NULL;
    if (t0 % cap + T > cap) {
        const int64_t head = cap - t0 % cap;
        unwrapped = malloc(sizeof(uint16_t) * (size_t)(T * D));
        if (!unwrapped) {
            free(weights);
            free(key);
            atomic_store_explicit(j->out_of_memory, 1, memory_order_relaxed);
            return;
        }
        memcpy(unwrapped, span, sizeof(uint16_t) * (size_t)(head * D));
        memcpy(unwrapped + head * D, values, sizeof(uint16_t) * (size_t)((T - head) * D));
        span = unwrapped;
    }
    /* out[query] = sum over t of weight[query, t] * value[t], 16 queries at a time */
    for (int64_t q0 = 0; q0 < queries; q0 += 16) {
        const int64_t nq = queries - q0 < 16 ? queries - q0 : 16;
        float *outs[16];
        for (int64_t i = 0; i < nq; i++) {
            const int64_t r = r0 + (q0 + i) / per_task, g = (q0 + i) % per_task;
            outs[i] = j->m->attn + r * NQ + (first_head + g) * D;
        }
        q8_weighted_sums(weights + q0 * T, T, nq, span, D, outs);
    }
    free(unwrapped);
    free(weights);
    free(key);
}

/* Attention of each row's queries (y) over its slot's cached keys and values -> attn [B, NQ];
 * 0 when a buffer could not be allocated (attn then incomplete). */
static int block_attention(block_job *job, int64_t B) {
    const int64_t HKV = job->blk->kv_heads, group = job->blk->heads / HKV;
    int64_t *runs = malloc(sizeof(int64_t) * (B + 1)), count = 0;
    if (!runs) return 0;
    for (int64_t r = 0; r < B; r++) /* a new task at a new sequence or a full one */
        if (r == 0 || job->slots[r] != job->slots[r - 1] ||
            job->positions[r] != job->positions[r - 1] + 1 || r - runs[count - 1] == ROWS_PER_TASK)
            runs[count++] = r;
    runs[count] = B;
    job->runs = runs;
    /* fewer tasks than a few per thread: split each kv head's query heads over more tasks */
    job->split = 1;
    while (count * HKV * job->split < 4 * pool_threads() && group % (2 * job->split) == 0)
        job->split *= 2;
    atomic_int out_of_memory = 0;
    job->out_of_memory = &out_of_memory;
    parallel_for(count * HKV * job->split, 1, attention_task, job);
    free(runs);
    return !atomic_load(&out_of_memory);
}

/* Output projection, residual, feed-forward, residual: x [B, E] updated from attn [B, NQ];
 * 0, with x as it was, when a product could not allocate. */
static int block_out(block_job *job, int64_t B) {
    scratch *m = job->m;
    const gemma_block *blk = job->blk;
    if (!project(&blk->o, job->attn_in, m->y, B, m->xq, m->xs)) return 0; /* [B, E] */
    rows(job, ROW_ATTENTION_RESIDUAL_FFN_NORM, B);
    if (!project(&blk->gate_up, m->h, m->y, B, m->xq, m->xs)) return 0; /* [B, 2I] */
    rows(job, ROW_GELU, B);
    if (!project(&blk->down, m->h, m->y, B, m->xq, m->xs)) return 0; /* [B, E] */
    rows(job, ROW_FFN_RESIDUAL, B);
    return 1;
}

/* Keys and values in float16: half the memory and reads of float32, as llama.cpp's default
 * cache; perplexity unchanged. Each slot's own rows (k_slots/v_slots): one long conversation
 * grows its own memory, not every slot's. */
int gemma_decode_block(const gemma_block *blk, float *x, int64_t B, const int64_t *slots,
                       const int64_t *positions, const float *cos_table, const float *sin_table,
                       const int64_t *k_slots, const int64_t *v_slots, const int64_t *capacities) {
    scratch m;
    if (!scratch_for(blk, B, &m)) return 0;
    block_job job = {blk, x, m.attn, slots, positions, cos_table, sin_table,
                     k_slots, v_slots, capacities, 1, NULL, &m, NULL};
    /* x is left as it was when a step fails */
    const int done = block_qkv(&job, B) && block_attention(&job, B) && block_out(&job, B);
    scratch_free(&m);
    return done;
}
