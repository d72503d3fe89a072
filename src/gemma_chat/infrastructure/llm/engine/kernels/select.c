/* Greedy decoding (argmax) and sampling's candidates (top-k), row by row. Generic bodies; the
 * instruction-set ones are in select_avx512.c. */
#include <math.h>

#include "q8_impl.h"

int64_t q8_argmax_row_generic(const float *x, int64_t N) {
    int64_t i = 0, best_i = 0;
    float best = -INFINITY;
    int broken = 0; /* a NaN seen */
    for (; i < N; i++) {
        if (x[i] != x[i]) broken = 1;
        if (x[i] > best || (i == 0 && best == -INFINITY)) {
            best = x[i];
            best_i = i;
        }
    }
    return broken || isinf(best) ? -1 : best_i;
}

typedef struct {
    const float *x;
    int64_t N;
    int64_t *out;
} argmax_job;

static void argmax_row(void *ctx, int64_t r) {
    const argmax_job *j = ctx;
    j->out[r] = q8_argmax_row(j->x + r * j->N, j->N);
}

void q8_argmax_rows(const float *x, int64_t R, int64_t N, int64_t *out) {
    argmax_job job = {x, N, out};
    parallel_for(R, 1, argmax_row, &job);
}

/* Sorting a 262,144-token row to sample from its top k costs far more than one pass with a heap
 * of k (DEVELOPMENT.md). */
void q8_top_k_scan_generic(const float *x, int64_t from, int64_t N, float *v, int64_t *id,
                           int64_t k) {
    for (int64_t i = from; i < N; i++) q8_offer(v, id, k, x[i], i);
}

typedef struct {
    const float *x;
    int64_t N, k;
    float *values;
    int64_t *ids;
} top_k_job;

static void top_k_row(void *ctx, int64_t r) {
    const top_k_job *j = ctx;
    const float *x = j->x + r * j->N;
    float *v = j->values + r * j->k;
    int64_t *id = j->ids + r * j->k;
    for (int64_t t = 0; t < j->k; t++) {
        v[t] = x[t];
        id[t] = t;
    }
    for (int64_t t = j->k / 2 - 1; t >= 0; t--) q8_sift_down(v, id, j->k, t);
    q8_top_k_scan(x, j->k, j->N, v, id, j->k);
    for (int64_t n = j->k - 1; n > 0; n--) { /* heap order -> descending rank */
        const float tv = v[0];
        const int64_t ti = id[0];
        v[0] = v[n];
        id[0] = id[n];
        v[n] = tv;
        id[n] = ti;
        q8_sift_down(v, id, n, 0);
    }
}

void q8_top_k_rows(const float *x, int64_t R, int64_t N, int64_t k, float *values, int64_t *ids) {
    top_k_job job = {x, N, k, values, ids};
    parallel_for(R, 1, top_k_row, &job);
}
