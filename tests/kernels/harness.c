/* Calls every kernel of one build on fixed pseudo-random inputs and prints the results' bits.
 *
 * Built from the kernel sources with the test's compiler and flags (tests/integration/
 * test_arm64_kernels.py: the generic bodies and the NEON ones for ARM64 under qemu, the generic
 * ones for x86-64); the test compares the builds' outputs line by line. Each line is
 *     <name> <class> <hex words...>
 * with class "exact" (the same bits in every build: int8 sums, quantization, argmax, top-k,
 * float16 stores, weighted sums with explicit FMAs), "arch" (the same float code in every body,
 * so the same bits between the builds of one architecture, but a compiler may fuse a * b + c
 * on one architecture and not on another) or "close" (a body adds in its own order or uses its
 * own exp: compared within a tolerance). Inputs come from a fixed xorshift generator and
 * integer arithmetic only, so every build sees the same bits.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "q8_impl.h"

static uint64_t state = 0x9E3779B97F4A7C15ull;

static uint64_t next_u64(void) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

/* uniform in [lo, hi), from 24 random bits; the product is rounded on its own (volatile: a
 * compiler must not fuse it with the add on one architecture and not on another) */
static float uniform(float lo, float hi) {
    volatile float step = (hi - lo) * ((float)(next_u64() >> 40) / 16777216.0f);
    return lo + step;
}

static int failures; /* checks of one build against itself (exit status 1), beside the lines */

/* A head product's argmax must be q8_argmax_rows' result for the logits it wrote: the runs'
 * merge is shared by every build, so comparing builds alone would not see a bug in it. */
static void check_argmax(const char *name, const float *y, int64_t M, int64_t N,
                         const int64_t *best) {
    int64_t searched[17];
    q8_argmax_rows(y, M, N, searched);
    for (int64_t m = 0; m < M; m++)
        if (best[m] != searched[m]) {
            fprintf(stderr, "%s: row %" PRId64 " found %" PRId64 ", the search gives %" PRId64 "\n",
                    name, m, best[m], searched[m]);
            failures++;
        }
}

static void fill(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = uniform(lo, hi);
}

static void print_words(const char *name, const char *cls, const void *p, int64_t n, int width) {
    printf("%s %s", name, cls);
    const uint8_t *b = p;
    for (int64_t i = 0; i < n; i++) {
        if (width == 4) {
            uint32_t w;
            memcpy(&w, b + 4 * i, 4);
            printf(" %08" PRIx32, w);
        } else if (width == 8) {
            uint64_t w;
            memcpy(&w, b + 8 * i, 8);
            printf(" %016" PRIx64, w);
        } else if (width == 2) {
            uint16_t w;
            memcpy(&w, b + 2 * i, 2);
            printf(" %04x", w);
        } else {
            printf(" %02x", b[i]);
        }
    }
    printf("\n");
}

/* a packed weight [n, k] of random bytes with scales of about `scale` (float16) */
static q8_weight random_weight(int64_t n, int64_t k, float scale) {
    const int64_t tiles = (n + LANES - 1) / LANES, nb = k / QK;
    uint8_t *q = malloc((size_t)(tiles * nb * 8 * 64));
    uint16_t *s = malloc(sizeof(uint16_t) * (size_t)(tiles * nb * LANES));
    for (int64_t i = 0; i < tiles * nb * 8 * 64; i++) q[i] = (uint8_t)(next_u64() >> 56);
    for (int64_t i = 0; i < tiles * nb * LANES; i++)
        s[i] = float_to_half(uniform(0.25f * scale, 1.75f * scale));
    q8_weight w = {q, s, 0.5f, n, k, 8};
    return w;
}

/* a 4-bit packed weight [n, k] of random nibbles (matmul4.c's layout) */
static q8_weight random_weight4(int64_t n, int64_t k, float scale) {
    const int64_t tiles = (n + LANES - 1) / LANES, nb = k / QK;
    uint8_t *q = malloc((size_t)(tiles * nb * 4 * 64));
    uint16_t *s = malloc(sizeof(uint16_t) * (size_t)(tiles * nb * LANES));
    for (int64_t i = 0; i < tiles * nb * 4 * 64; i++) q[i] = (uint8_t)(next_u64() >> 56);
    for (int64_t i = 0; i < tiles * nb * LANES; i++)
        s[i] = float_to_half(uniform(0.25f * scale, 1.75f * scale));
    q8_weight w = {q, s, 0.5f, n, k, 4};
    return w;
}

static void free_weight(q8_weight *w) {
    free((void *)w->q);
    free((void *)w->s);
}

#define STRINGIFY(x) #x
#define BODY(op) printf("body %s %s\n", #op, STRINGIFY(op))

static void bodies(void) {
    printf("vector_kernels %d\n", q8_vector_kernels());
    BODY(q8_quantize_block);
    BODY(q8_store_halves);
    BODY(q8_tiles_product);
    BODY(q4_tiles_product);
    BODY(q8_dot_f32);
    BODY(q8_dots16);
    BODY(q8_max_f32);
    BODY(q8_exp_shifted);
    BODY(q8_weighted_sums);
    BODY(q8_gelu_tanh_mul);
    BODY(q8_soft_cap);
    BODY(q8_argmax_row);
    BODY(q8_top_k_scan);
    BODY(q8_rms_norm);
}

static void quantize_and_products(void) {
    char name[64];
    /* quantization: random rows, a zero block, a block of ties (x / d = k + 0.5) */
    {
        const int64_t M = 3, K = 96;
        float x[3 * 96];
        fill(x, M * K, -3.0f, 3.0f);
        for (int i = 0; i < QK; i++) x[96 + i] = 0.0f;
        for (int i = 0; i < QK; i++) x[192 + i] = (float)(i % 2 ? -(i + 0.5f) : i + 0.5f);
        x[192 + 31] = 127.0f; /* d = 1: the ties stay ties */
        int8_t q[3 * 96];
        float s[3 * 3];
        q8_quantize_rows(x, q, s, M, K);
        print_words("quantize.q", "exact", q, M * K, 1);
        print_words("quantize.s", "exact", s, M * K / QK, 4);
    }
    /* products: tails of N (not a multiple of 16), odd M, K from one block to twenty; M = 7:
     * a four-row pass, a row pair and a lone row (the i8mm bodies' three kinds) */
    const int64_t shapes[][3] = {{72, 96, 5}, {100, 64, 9}, {40, 640, 1}, {16, 32, 8},
                                 {33, 128, 3}, {250, 256, 4}, {48, 64, 17}, {24, 160, 7}};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        const int64_t N = shapes[c][0], K = shapes[c][1], M = shapes[c][2];
        q8_weight w = random_weight(N, K, 0.01f);
        float *x = malloc(sizeof(float) * M * K), *xs = malloc(sizeof(float) * M * K / QK);
        float *y = malloc(sizeof(float) * M * N);
        int8_t *xq = malloc((size_t)(M * K));
        fill(x, M * K, -2.0f, 2.0f);
        q8_quantize_rows(x, xq, xs, M, K);
        q8p_matmul(xq, xs, w.q, w.s, w.mult, y, M, N, K);
        snprintf(name, sizeof name, "matmul.%" PRId64 "x%" PRId64 "x%" PRId64, N, K, M);
        print_words(name, "exact", y, M * N, 4);
        int64_t best[17];
        q8p_matmul_argmax(xq, xs, w.q, w.s, w.mult, y, M, N, K, best);
        snprintf(name, sizeof name, "matmul_argmax.%" PRId64 "x%" PRId64 "x%" PRId64, N, K, M);
        print_words(name, "exact", best, M, 8);
        check_argmax(name, y, M, N, best);
        const int64_t ids[] = {0, N - 1, N / 2, 3};
        float *rows = malloc(sizeof(float) * 4 * K);
        q8p_rows(w.q, w.s, w.mult, ids, 4, K, rows);
        snprintf(name, sizeof name, "rows.%" PRId64 "x%" PRId64, N, K);
        print_words(name, "exact", rows, 4 * K, 4);
        /* the same shapes on 4-bit weights */
        q8_weight w4 = random_weight4(N, K, 0.05f);
        q4p_matmul(xq, xs, w4.q, w4.s, w4.mult, y, M, N, K);
        snprintf(name, sizeof name, "matmul4.%" PRId64 "x%" PRId64 "x%" PRId64, N, K, M);
        print_words(name, "exact", y, M * N, 4);
        q4p_matmul_argmax(xq, xs, w4.q, w4.s, w4.mult, y, M, N, K, best);
        snprintf(name, sizeof name, "matmul4_argmax.%" PRId64 "x%" PRId64 "x%" PRId64, N, K, M);
        print_words(name, "exact", best, M, 8);
        check_argmax(name, y, M, N, best);
        q4p_rows(w4.q, w4.s, w4.mult, ids, 4, K, rows);
        snprintf(name, sizeof name, "rows4.%" PRId64 "x%" PRId64, N, K);
        print_words(name, "exact", rows, 4 * K, 4);
        free_weight(&w4);
        /* 4-bit rounding of float weights, plain and weighed by importance */
        float *wf = malloc(sizeof(float) * N * K), *importance = malloc(sizeof(float) * K);
        int8_t *q4 = malloc((size_t)(N * K));
        float *s4 = malloc(sizeof(float) * N * K / QK);
        fill(wf, N * K, -1.0f, 1.0f);
        fill(importance, K, 0.0f, 4.0f);
        for (int pass = 0; pass < 2; pass++) {
            q4_quantize_weight(wf, pass ? importance : NULL, q4, s4, N, K);
            snprintf(name, sizeof name, "quantize4.%d.%" PRId64 "x%" PRId64 ".q", pass, N, K);
            print_words(name, "exact", q4, N * K, 1);
            snprintf(name, sizeof name, "quantize4.%d.%" PRId64 "x%" PRId64 ".s", pass, N, K);
            print_words(name, "exact", s4, N * K / QK, 4);
        }
        free(wf);
        free(importance);
        free(q4);
        free(s4);
        free(rows);
        free(x);
        free(xs);
        free(y);
        free(xq);
        free_weight(&w);
    }
}

static void selection(void) {
    char name[64];
    const int64_t widths[] = {7, 1000, 1003};
    for (int c = 0; c < 3; c++) {
        const int64_t R = 10, N = widths[c];
        float *x = malloc(sizeof(float) * R * N);
        int64_t out[10];
        fill(x, R * N, -5.0f, 5.0f);
        x[1 * N + N / 2] = x[1 * N + N - 2] = 50.0f; /* a tie: the first */
        x[2 * N + N - 1] = 60.0f;                    /* in the tail */
        for (int64_t i = 0; i < N; i++) x[3 * N + i] = 1.0f; /* all equal */
        x[4 * N + N / 3] = NAN;
        x[5 * N + N - 1] = NAN;
        for (int64_t i = 0; i < N; i++) x[6 * N + i] = -INFINITY;
        x[7 * N + 3] = INFINITY;
        x[8 * N] = -INFINITY;
        x[8 * N + N - 1] = 9.0f;
        /* ties in one lane of different 16-float blocks (an AVX-512 body's chains): the first */
        x[9 * N + (N > 100 ? 100 : 5)] = x[9 * N + (N > 100 ? 68 : 3)] = 70.0f;
        x[9 * N + (N > 100 ? 36 : 1)] = 70.0f;
        q8_argmax_rows(x, R, N, out);
        snprintf(name, sizeof name, "argmax.%" PRId64, N);
        print_words(name, "exact", out, R, 8);
        free(x);
    }
    const int64_t R = 4, N = 5000;
    float *x = malloc(sizeof(float) * R * N);
    fill(x, R * N, -4.0f, 4.0f);
    x[1 * N + N - 1] = 40.0f;
    for (int i = 10; i < 20; i++) x[2 * N + i] = 30.0f; /* ties: the lower index first */
    for (int64_t i = 0; i < N; i++) x[3 * N + i] = (float)(i % 7); /* many ties */
    const int64_t ks[] = {1, 5, 64, N};
    for (int c = 0; c < 4; c++) {
        const int64_t k = ks[c];
        float *values = malloc(sizeof(float) * R * k);
        int64_t *ids = malloc(sizeof(int64_t) * R * k);
        q8_top_k_rows(x, R, N, k, values, ids);
        snprintf(name, sizeof name, "top_k.%" PRId64 ".values", k);
        print_words(name, "exact", values, R * k, 4);
        snprintf(name, sizeof name, "top_k.%" PRId64 ".ids", k);
        print_words(name, "exact", ids, R * k, 8);
        free(values);
        free(ids);
    }
    free(x);
}

/* The operations inside the decoder block, called through this build's choice of body. */
static void block_operations(void) {
    char name[64];
    {
        float x[67];
        uint16_t h[67];
        fill(x, 67, -70000.0f, 70000.0f); /* some past float16's range */
        fill(x + 20, 20, -1e-4f, 1e-4f);  /* float16 subnormals */
        x[41] = INFINITY;
        x[42] = -0.0f;
        x[43] = 65520.0f; /* rounds to infinity */
        x[44] = 1.0f + 1.0f / 2048.0f; /* a tie: to even */
        q8_store_halves(h, x, 67);
        print_words("store_halves", "exact", h, 67, 2);
    }
    for (int64_t n = 1; n <= 37; n += 9) {
        float v[37];
        fill(v, n, -100.0f, 100.0f);
        const float top = q8_max_f32(v, n);
        snprintf(name, sizeof name, "max_f32.%" PRId64, n);
        print_words(name, "exact", &top, 1, 4);
    }
    const int64_t dims[] = {32, 40, 6, 256};
    for (int c = 0; c < 4; c++) {
        const int64_t D = dims[c];
        float *q = malloc(sizeof(float) * D), *key = malloc(sizeof(float) * D);
        uint16_t *keys = malloc(sizeof(uint16_t) * 16 * D);
        float *kf = malloc(sizeof(float) * 16 * D), out[16];
        fill(q, D, -1.0f, 1.0f);
        fill(kf, 16 * D, -2.0f, 2.0f);
        q8_store_halves_generic(keys, kf, 16 * D);
        q8_dots16(q, keys, D, out, key);
        snprintf(name, sizeof name, "dots16.%" PRId64, D);
        print_words(name, "close", out, 16, 4);
        const float dot = q8_dot_f32(q, kf, D);
        snprintf(name, sizeof name, "dot_f32.%" PRId64, D);
        print_words(name, "close", &dot, 1, 4);
        free(q);
        free(key);
        free(keys);
        free(kf);
    }
    const int64_t lengths[] = {3, 67, 1024};
    for (int c = 0; c < 3; c++) {
        const int64_t n = lengths[c];
        float *v = malloc(sizeof(float) * n);
        fill(v, n, -30.0f, 5.0f);
        v[0] = -200.0f; /* underflows to 0 */
        const float total = q8_exp_shifted(v, n, 5.0f);
        snprintf(name, sizeof name, "exp_shifted.%" PRId64, n);
        print_words(name, "close", v, n, 4);
        snprintf(name, sizeof name, "exp_shifted.%" PRId64 ".total", n);
        print_words(name, "close", &total, 1, 4);
        free(v);
    }
    {
        const int64_t n = 1003;
        float *gate = malloc(sizeof(float) * n), *up = malloc(sizeof(float) * n);
        float *out = malloc(sizeof(float) * n);
        fill(gate, n, -8.0f, 8.0f);
        fill(up, n, -2.0f, 2.0f);
        q8_gelu_tanh_mul(gate, up, out, n);
        print_words("gelu_tanh_mul", "close", out, n, 4);
        free(gate);
        free(up);
        free(out);
    }
    { /* the final logit cap: 2 rows of 1003 (a tail), past the clamp at both ends */
        const int64_t R = 2, N = 1003;
        float *x = malloc(sizeof(float) * R * N);
        fill(x, R * N, -400.0f, 400.0f);
        q8_soft_cap_rows(x, R, N, 30.0f);
        print_words("soft_cap_rows", "close", x, R * N, 4);
        free(x);
    }
    const int64_t sums[][3] = {{1, 1, 32}, {17, 3, 36}, {40, 8, 6}, {33, 16, 256}, {5, 5, 16}};
    for (int c = 0; c < 5; c++) {
        const int64_t T = sums[c][0], nq = sums[c][1], D = sums[c][2];
        float *w = malloc(sizeof(float) * nq * T), *vf = malloc(sizeof(float) * T * D);
        uint16_t *v = malloc(sizeof(uint16_t) * T * D);
        float *out = malloc(sizeof(float) * nq * D), *outs[16];
        fill(w, nq * T, 0.0f, 1.0f);
        fill(vf, T * D, -3.0f, 3.0f);
        q8_store_halves_generic(v, vf, T * D);
        for (int64_t i = 0; i < nq; i++) outs[i] = out + i * D;
        q8_weighted_sums(w, T, nq, v, D, outs);
        snprintf(name, sizeof name, "weighted_sums.%" PRId64 "x%" PRId64 "x%" PRId64, T, nq, D);
        print_words(name, "exact", out, nq * D, 4);
        free(w);
        free(vf);
        free(v);
        free(out);
    }
}

/* One decoder block: a 20-token prompt prefilled in slot 1, then a decode step of three
 * sequences; with and without a sliding window. */
static void decoder_block(void) {
    const int64_t E = 64, H = 4, HKV = 2, D = 32, I = 128, capacity = 32, slots = 3;
    const int64_t NQ = H * D, NKV = HKV * D;
    float norms[6][128];
    for (int i = 0; i < 6; i++) fill(norms[i], 128, 0.5f, 1.5f);
    float *cos_table = malloc(sizeof(float) * capacity * D);
    float *sin_table = malloc(sizeof(float) * capacity * D);
    fill(cos_table, capacity * D, -1.0f, 1.0f);
    fill(sin_table, capacity * D, -1.0f, 1.0f);
    for (int64_t window = 0; window <= 16; window += 8) {
        /* window 16: the same block on 4-bit weights (scales for values -8..7) */
        q8_weight (*make)(int64_t, int64_t, float) = window == 16 ? random_weight4 : random_weight;
        const float sc = window == 16 ? 0.06f : 0.004f;
        gemma_block blk = {make(NQ + 2 * NKV, E, sc), make(E, NQ, sc),
                           make(2 * I, E, sc), make(E, I, sc),
                           norms[0], norms[1], norms[2], norms[3], norms[4], norms[5],
                           E, H, HKV, D, I, window, 1e-6f, 0.17677669529663687f};
        const size_t cache = (size_t)(slots * HKV * capacity * D);
        uint16_t *k_cache = calloc(cache, sizeof(uint16_t)), *v_cache = calloc(cache, 2);
        int64_t k_slots[3], v_slots[3], capacities[3]; /* each slot's rows, side by side */
        for (int64_t s = 0; s < slots; s++) {
            k_slots[s] = (int64_t)(uintptr_t)(k_cache + s * HKV * capacity * D);
            v_slots[s] = (int64_t)(uintptr_t)(v_cache + s * HKV * capacity * D);
            capacities[s] = capacity;
        }
        float prompt[20 * 64];
        int64_t pslots[20], positions[20];
        fill(prompt, 20 * E, -2.0f, 2.0f);
        for (int i = 0; i < 20; i++) {
            pslots[i] = 1;
            positions[i] = i;
        }
        gemma_decode_block(&blk, prompt, 20, pslots, positions, cos_table, sin_table, k_slots,
                           v_slots, capacities);
        char name[64];
        snprintf(name, sizeof name, "block.w%" PRId64 ".prefill", window);
        print_words(name, "close", prompt, 20 * E, 4);
        float step[3 * 64];
        fill(step, 3 * E, -2.0f, 2.0f);
        const int64_t sslots[3] = {1, 0, 2}, spositions[3] = {20, 0, 0};
        gemma_decode_block(&blk, step, 3, sslots, spositions, cos_table, sin_table, k_slots,
                           v_slots, capacities);
        snprintf(name, sizeof name, "block.w%" PRId64 ".decode", window);
        print_words(name, "close", step, 3 * E, 4);
        /* keys and values come from the int8 products, the norms and rotary: no body of its own
         * but the float16 stores. Not for the 4-bit block: its products are compared above,
         * and its float16 keys (norms and rotary in float, contracted into FMAs on one
         * architecture and not on another) differ between architectures by a float16 ulp. */
        if (window != 16) {
            snprintf(name, sizeof name, "block.w%" PRId64 ".k_cache", window);
            print_words(name, "arch", k_cache, (int64_t)cache, 2);
            snprintf(name, sizeof name, "block.w%" PRId64 ".v_cache", window);
            print_words(name, "arch", v_cache, (int64_t)cache, 2);
        }
        free(k_cache);
        free(v_cache);
        free_weight(&blk.qkv);
        free_weight(&blk.o);
        free_weight(&blk.gate_up);
        free_weight(&blk.down);
    }
    free(cos_table);
    free(sin_table);
}

/* RMSNorm: the same bits in every body (lanes of double sums in a fixed tree); lengths with and
 * without a tail past the 16 lanes, values far apart in size. Last: the inputs drawn before it
 * stay those of the sections above. */
static void norms(void) {
    char name[64];
    const int64_t norm_lengths[] = {1, 15, 16, 37, 256, 640};
    for (int c = 0; c < 6; c++) {
        const int64_t n = norm_lengths[c];
        float *x = malloc(sizeof(float) * n), *scale = malloc(sizeof(float) * n);
        float *out = malloc(sizeof(float) * n);
        fill(x, n, -40.0f, 40.0f);
        fill(scale, n, 0.5f, 1.5f);
        if (n > 3) x[3] = 1e-20f, x[n - 1] = 3e4f;
        q8_rms_norm(x, scale, out, n, 1e-6f);
        snprintf(name, sizeof name, "rms_norm.%" PRId64, n);
        print_words(name, "exact", out, n, 4);
        free(x);
        free(scale);
        free(out);
    }
}

int main(void) {
    gemma_set_threads(2);
    bodies();
    quantize_and_products();
    selection();
    block_operations();
    decoder_block();
    norms();
    return failures ? 1 : 0;
}
