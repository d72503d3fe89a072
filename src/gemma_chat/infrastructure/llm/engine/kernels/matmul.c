/* Matrix products on packed weights, and the lookup of a packed table's rows.
 *
 * Weights are stored for VNNI's dpbusd: as unsigned bytes w + 128, 16 output rows side by side
 * four k at a time: [N/16][K/32][8][16][4], with one float16 scale per row and block of 32:
 * [N/16][K/32][16]. One dpbusd then adds 4 products to each of 16 outputs, with the 4 int8
 * activations broadcast, and the float work (one conversion, one multiply and one FMA) is per
 * 16 outputs and block, not per output and block as a dot product per output would have it.
 * The +128 comes back out as 128 * sum(x) per row and block.
 *
 * Every output is reduced in the same order whatever M is (blocks in order, one FMA each), so a
 * row's result does not depend on the rows computed beside it. The generic body is here; the
 * instruction-set ones are in matmul_avx512.c (VNNI), matmul_avxvnni.c (AVX-VNNI),
 * matmul_avx2.c and matmul_neon.c (sdot, and usmmla with i8mm).
 */
#include <stdlib.h>

#include "q8_impl.h"

/* offset * the sum of each row's int8 block: the correction for weights stored plus offset;
 * NULL when it cannot be allocated */
static int32_t *block_sums(const int8_t *xq, int64_t M, int64_t K, int32_t offset) {
    const int64_t nb = K / QK;
    int32_t *c = malloc(sizeof(int32_t) * M * nb);
    if (!c) return NULL;
    for (int64_t r = 0; r < M * nb; r++) {
        int32_t sum = 0;
        for (int i = 0; i < QK; i++) sum += xq[r * QK + i];
        c[r] = offset * sum;
    }
    return c;
}

/* The same arithmetic, one output at a time (scalar FMAs give the same bits as the lanes). */
void q8_tiles_product_generic(const int8_t *xq, const float *xs, const int32_t *xc,
                               const uint8_t *wq, const uint16_t *ws, float mult, float *y,
                               int64_t M, int64_t t, int two, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    for (int64_t tt = t; tt <= t + two; tt++)
        for (int lane = 0; lane < LANES && tt * LANES + lane < N; lane++)
            for (int64_t m = 0; m < M; m++) {
                float f = 0.0f;
                for (int64_t b = 0; b < nb; b++) {
                    const uint8_t *w = wq + (tt * nb + b) * (8 * 64) + lane * 4;
                    const int8_t *x = xq + m * K + b * QK;
                    int32_t acc = 0;
                    for (int kq = 0; kq < 8; kq++)
                        for (int j = 0; j < 4; j++) acc += (int32_t)w[kq * 64 + j] * x[kq * 4 + j];
                    const float d =
                        xs[m * nb + b] * half_to_float(ws[(tt * nb + b) * LANES + lane]);
                    f = fmaf((float)(acc - xc[m * nb + b]), d, f);
                }
                y[m * N + tt * LANES + lane] = f * mult;
            }
}

/* Products with at least this many outputs per row go through octets_product: the packing
 * below runs on one thread before the product, which the blocks' products (N <= 4,096 on
 * Gemma 3 270M) lost more to than the octets gave back; an output head gains (DEVELOPMENT.md). */
#define OCTETS_FROM_N 16384

/* Rows 8g..8g+8 of x as octet records (q8_impl.h's OCTET_BYTES layout), for octets_product;
 * NULL when they cannot be allocated. */
static uint8_t *pack_octets(const int8_t *xq, const float *xs, const int32_t *xc, int64_t octets,
                            int64_t K) {
    const int64_t nb = K / QK;
    uint8_t *x8 = malloc(OCTET_BYTES * octets * nb);
    if (!x8) return NULL;
    for (int64_t g = 0; g < octets; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *rec = x8 + (g * nb + b) * OCTET_BYTES;
            for (int m = 0; m < 8; m++) {
                const int64_t row = 8 * g + m;
                for (int kq = 0; kq < 8; kq++)
                    memcpy(rec + kq * 32 + m * 4, xq + row * K + b * QK + kq * 4, 4);
                const int32_t minus_c = xc ? -xc[row * nb + b] : 0;
                memcpy(rec + 256 + m * 4, xs + row * nb + b, 4);
                memcpy(rec + 288 + m * 4, &minus_c, 4);
            }
        }
    return x8;
}

typedef struct {
    tiles_product_fn *product;
    octets_product_fn *octets;
    const uint8_t *x8; /* rows [0, 8 * octets_of_rows) packed for octets */
    int64_t octets_of_rows;
    const int8_t *xq;
    const float *xs;
    const int32_t *xc;
    const uint8_t *wq;
    const uint16_t *ws;
    float mult;
    float *y;
    int64_t M, N, K, tiles;
} matmul_job;

static void matmul_tile_pair(void *ctx, int64_t pair) {
    const matmul_job *j = ctx;
    const int64_t t = 2 * pair, nb = j->K / QK, packed = 8 * j->octets_of_rows;
    const int two = t + 1 < j->tiles;
    if (packed) /* the first rows, in octet records */
        j->octets(j->x8, j->octets_of_rows, j->wq, j->ws, j->mult, j->y, t, two, j->N, j->K);
    if (packed < j->M) /* the rest, as they are */
        j->product(j->xq + packed * j->K, j->xs + packed * nb, j->xc ? j->xc + packed * nb : NULL,
                   j->wq, j->ws, j->mult, j->y + packed * j->N, j->M - packed, t, two, j->N, j->K);
}

typedef struct {
    const matmul_job *job;
    int64_t grain, pairs;
    int64_t *found; /* [runs, M]: each run's first largest column of each row, -1 (see below) */
} argmax_job;

/* A run of grain tile pairs, then each row's argmax over the columns it wrote, while they are
 * in this thread's cache (a second pass over a head's [M, 262,144] floats reads them from
 * memory). -1 for a run whose columns hold a NaN or an infinite top: the row is then searched
 * whole. */
static void matmul_run_argmax(void *ctx, int64_t run) {
    const argmax_job *a = ctx;
    const matmul_job *j = a->job;
    const int64_t first = run * a->grain;
    const int64_t last = first + a->grain < a->pairs ? first + a->grain : a->pairs;
    for (int64_t pair = first; pair < last; pair++) matmul_tile_pair((void *)j, pair);
    const int64_t n0 = first * 2 * LANES, n1 = last * 2 * LANES < j->N ? last * 2 * LANES : j->N;
    for (int64_t r = 0; r < j->M; r++) {
        const int64_t at = q8_argmax_row(j->y + r * j->N + n0, n1 - n0);
        a->found[run * j->M + r] = at < 0 ? -1 : n0 + at;
    }
}

/* best[r]: q8_argmax_rows' result for row r of y, from the runs' own argmaxes: the first run
 * holding the largest value (a later run's equal value is not larger), as one pass finds it. */
static void merge_runs(const float *y, const int64_t *found, int64_t runs, int64_t M, int64_t N,
                       int64_t *best) {
    for (int64_t r = 0; r < M; r++) {
        int64_t at = found[r];
        for (int64_t run = 1; run < runs && at >= 0; run++) {
            const int64_t here = found[run * M + r];
            if (here < 0)
                at = -1;
            else if (y[r * N + here] > y[r * N + at])
                at = here;
        }
        best[r] = at >= 0 ? at : q8_argmax_row(y + r * N, N);
    }
}

int q8_tiled_matmul(tiles_product_fn *product, octets_product_fn *octets, int32_t offset,
                    const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
                    float mult, float *y, int64_t M, int64_t N, int64_t K, int64_t *best) {
    int32_t *xc = offset ? block_sums(xq, M, K, offset) : NULL;
    if (offset && !xc) return 0;
    const int64_t tiles = (N + LANES - 1) / LANES, pairs = (tiles + 1) / 2;
    const int64_t octets_of_rows = octets && N >= OCTETS_FROM_N ? M / 8 : 0;
    uint8_t *x8 = octets_of_rows ? pack_octets(xq, xs, xc, octets_of_rows, K) : NULL;
    if (octets_of_rows && !x8) {
        free(xc);
        return 0;
    }
    matmul_job job = {product, octets, x8, octets_of_rows, xq, xs, xc, wq, ws, mult, y, M, N, K,
                      tiles};
    /* ~8 runs of neighbouring tiles per thread: long runs keep each thread's reads sequential
     * (prefetched), and several per thread still even out a thread that falls behind */
    const int64_t grain = pairs / (8 * pool_threads()) + 1;
    int done = 1;
    if (!best) {
        parallel_for(pairs, grain, matmul_tile_pair, &job);
    } else {
        const int64_t runs = (pairs + grain - 1) / grain;
        argmax_job a = {&job, grain, pairs, malloc(sizeof(int64_t) * (size_t)(runs * M + 1))}; /* + 1: never malloc(0) */
        if (a.found) {
            parallel_for(runs, 1, matmul_run_argmax, &a);
            merge_runs(y, a.found, runs, M, N, best);
            free(a.found);
        }
        done = a.found != NULL;
    }
    free(x8);
    free(xc);
    return done;
}

int q8p_matmul(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
               float mult, float *y, int64_t M, int64_t N, int64_t K) {
    return q8_tiled_matmul(q8_tiles_product, q8_octets_product, Q8_USES_BLOCK_SUMS ? 128 : 0, xq,
                           xs, wq, ws, mult, y, M, N, K, NULL);
}

int q8p_matmul_argmax(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
                      float mult, float *y, int64_t M, int64_t N, int64_t K, int64_t *best) {
    return q8_tiled_matmul(q8_tiles_product, q8_octets_product, Q8_USES_BLOCK_SUMS ? 128 : 0, xq,
                           xs, wq, ws, mult, y, M, N, K, best);
}

void q8p_rows(const uint8_t *wq, const uint16_t *ws, float mult, const int64_t *ids, int64_t R,
              int64_t K, float *out) {
    const int64_t nb = K / QK;
    for (int64_t r = 0; r < R; r++) {
        const int64_t t = ids[r] / LANES, lane = ids[r] % LANES;
        for (int64_t b = 0; b < nb; b++) {
            const float d = half_to_float(ws[(t * nb + b) * LANES + lane]) * mult;
            const uint8_t *w = wq + (t * nb + b) * (8 * 64) + lane * 4;
            for (int kq = 0; kq < 8; kq++)
                for (int j = 0; j < 4; j++)
                    out[r * K + b * QK + kq * 4 + j] = (float)((int32_t)w[kq * 64 + j] - 128) * d;
        }
    }
}


int q8_vector_kernels(void) {
#if defined(Q8_AVX512_VNNI)
    return 1;
#elif defined(Q8_AVXVNNI)
    return 5;
#elif defined(Q8_AVX2_INT8)
    return 2;
#elif defined(Q8_NEON_I8MM)
    return 4;
#elif defined(Q8_NEON_DOTPROD)
    return 3;
#else
    return 0;
#endif
}
