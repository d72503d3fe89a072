/* int8 x int8 matrix products in blocks of 32 along K, as llama.cpp's Q8_0, and the Gemma 3
 * decoder block built on them.
 *
 * Weights and activations are quantized per block of 32 values with one scale each. Every
 * output element is reduced in the same order whatever M is, so a row's result does not depend
 * on how many rows are computed together (batched decoding stays equal to unbatched).
 * Built at first use by q8.py with the system's C compiler, for the CPU it runs on (AVX-512
 * VNNI where available; portable C otherwise).
 */
#define _GNU_SOURCE /* sched_getaffinity */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define QK 32

/* ---- A small thread pool --------------------------------------------------------------------
 *
 * Instead of OpenMP: libgomp, shared with torch, stops spinning between parallel regions as soon
 * as more of its threads exist (in any thread's team) than there are CPUs, which is the case in
 * a server that has run torch on more than one thread; every region then waits for sleeping
 * threads to wake, and a decode step (~90 regions) took twice as long. Our workers spin for a
 * short while after each region, then sleep until the next.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

typedef void (*item_fn)(void *ctx, int64_t item);

#define MAX_THREADS 64
#define SPIN_ROUNDS 20000 /* ~100 us of pause instructions before a worker sleeps */

static struct {
    pthread_mutex_t lock, run;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation;
    atomic_int sleepers, finished;
    atomic_int_fast64_t next;
    int workers, started;
    int64_t count, grain;
    item_fn fn;
    void *ctx;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .run = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER};

static int wanted_threads = 0; /* 0: one per CPU this process may use */

/* Threads to use (the caller's own included), before the first product; 0: one per CPU. */
void gemma_set_threads(int n) { wanted_threads = n; }

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_items(void) {
    for (;;) {
        const int64_t first = atomic_fetch_add(&pool.next, pool.grain);
        if (first >= pool.count) return;
        const int64_t last = first + pool.grain < pool.count ? first + pool.grain : pool.count;
        for (int64_t i = first; i < last; i++) pool.fn(pool.ctx, i);
    }
}

static void *worker(void *unused) {
    (void)unused;
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t now;
        int spins = 0;
        while ((now = atomic_load(&pool.generation)) == seen) {
            if (++spins < SPIN_ROUNDS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.generation) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = now;
        run_items();
        atomic_fetch_add(&pool.finished, 1);
    }
    return NULL;
}

/* A forked child has none of the parent's workers: start afresh there on first use (else the
 * first parallel loop would wait for workers that do not exist). */
static void pool_forget_after_fork(void) {
    pthread_mutex_init(&pool.lock, NULL);
    pthread_mutex_init(&pool.run, NULL);
    pthread_cond_init(&pool.wake, NULL);
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.finished, 0);
    pool.workers = 0;
    pool.started = 0;
}

static void start_pool(void) {
    static int fork_handler = 0;
    if (!fork_handler) {
        pthread_atfork(NULL, NULL, pool_forget_after_fork);
        fork_handler = 1;
    }
    int n = wanted_threads;
#ifdef CPU_COUNT
    if (n <= 0) {
        cpu_set_t cpus;
        n = sched_getaffinity(0, sizeof cpus, &cpus) == 0 ? CPU_COUNT(&cpus) : 1;
    }
#endif
    if (n <= 0) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    pool.started = 1;
    for (int i = 0; i < n - 1; i++) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&thread, &attr, worker, NULL) == 0) pool.workers++;
        pthread_attr_destroy(&attr);
    }
}

static int pool_threads(void) { return pool.started ? pool.workers + 1 : 1; }

/* fn(ctx, i) for i in [0, count), in chunks of grain items, on every thread. One caller at a
 * time: another thread calling meanwhile runs its loop alone. */
static void parallel_for(int64_t count, int64_t grain, item_fn fn, void *ctx) {
    if (count <= 0) return;
    if (grain < 1) grain = 1;
    if (count <= grain || pthread_mutex_trylock(&pool.run) != 0) {
        for (int64_t i = 0; i < count; i++) fn(ctx, i);
        return;
    }
    if (!pool.started) start_pool();
    if (pool.workers == 0) {
        pthread_mutex_unlock(&pool.run);
        for (int64_t i = 0; i < count; i++) fn(ctx, i);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    pool.count = count;
    pool.grain = grain;
    atomic_store(&pool.next, 0);
    atomic_store(&pool.finished, 0);
    atomic_fetch_add(&pool.generation, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    run_items();
    while (atomic_load(&pool.finished) < pool.workers) cpu_relax();
    pthread_mutex_unlock(&pool.run);
}


typedef struct {
    const float *x;
    int8_t *q;
    float *s;
} quantize_job;

static void quantize_block(void *ctx, int64_t r) {
    const quantize_job *job = ctx;
    const float *xb = job->x + r * QK;
#if defined(__AVX512F__)
    /* the same values as the loop below: max |x|, then x / d rounded to nearest even */
    const __m512 lo = _mm512_loadu_ps(xb), hi = _mm512_loadu_ps(xb + 16);
    const float amax16 = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
    const float d16 = amax16 / 127.0f, id16 = d16 != 0.0f ? 1.0f / d16 : 0.0f;
    job->s[r] = d16;
    const __m512 inv = _mm512_set1_ps(id16);
    _mm_storeu_si128((__m128i *)(job->q + r * QK),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(lo, inv))));
    _mm_storeu_si128((__m128i *)(job->q + r * QK + 16),
                     _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(hi, inv))));
    return;
#endif
    float amax = 0.0f;
    for (int i = 0; i < QK; i++) {
        float a = fabsf(xb[i]);
        if (a > amax) amax = a;
    }
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    job->s[r] = d;
    for (int i = 0; i < QK; i++) job->q[r * QK + i] = (int8_t)lrintf(xb[i] * id);
}

/* x: [M, K] float32 -> q: [M, K] int8, s: [M, K/QK] float32 */
void q8_quantize_rows(const float *x, int8_t *q, float *s, int64_t M, int64_t K) {
    quantize_job job = {x, q, s};
    const int64_t blocks = M * (K / QK);
    parallel_for(blocks, M * K > 65536 ? 64 : blocks, quantize_block, &job);
}

/* ---- Matrix products on packed weights ------------------------------------------------------
 *
 * Weights are stored for VNNI's dpbusd: as unsigned bytes w + 128, 16 output rows side by side
 * four k at a time: [N/16][K/32][8][16][4], with one float16 scale per row and block of 32:
 * [N/16][K/32][16]. One dpbusd then adds 4 products to each of 16 outputs, with the 4 int8
 * activations broadcast, and the float work (one conversion, one multiply and one FMA) is per
 * 16 outputs and block, not per output and block: ~4x fewer instructions than a dot product
 * per output. The +128 comes back out as 128 * sum(x) per row and block.
 *
 * Every output is reduced in the same order whatever M is (blocks in order, one FMA each), so a
 * row's result does not depend on the rows computed beside it.
 */
#define LANES 16
#define MR 4 /* activation rows per register tile */
#define PREFETCH_AHEAD 8192 /* bytes of packed weights */

/* PREFETCH_AHEAD bytes past p, computed as an integer: near the end of the weights the address
 * is past their end, which a prefetch may name (it never faults) but pointer arithmetic may not */
static inline const char *ahead(const uint8_t *p) {
    return (const char *)((uintptr_t)p + PREFETCH_AHEAD);
}

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

/* 128 * sum of each row's int8 block: the correction for the weights' +128 */
static int32_t *block_sums(const int8_t *xq, int64_t M, int64_t K) {
    const int64_t nb = K / QK;
    int32_t *c = malloc(sizeof(int32_t) * M * nb);
    for (int64_t r = 0; r < M * nb; r++) {
        int32_t sum = 0;
        for (int i = 0; i < QK; i++) sum += xq[r * QK + i];
        c[r] = 128 * sum;
    }
    return c;
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define USES_BLOCK_SUMS 1
/* Rows m0..m0+mr of x against the 16 output rows of tile t (and t+1 when two): up to MR rows
 * with two tiles, or 8 rows with one. */
static inline __attribute__((always_inline)) void tile_product(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int two, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    __m512 f[8][2]; /* up to MR rows x 2 tiles, or 8 rows x 1 tile */
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m512i acc[8][2]; /* start at -128 sum(x): the weights' +128 taken back out */
        for (int m = 0; m < mr; m++)
            acc[m][0] = acc[m][1] = _mm512_set1_epi32(-xc[(m0 + m) * nb + b]);
        const uint8_t *w0 = wq + (t * nb + b) * (8 * 64), *w1 = w0 + nb * 8 * 64;
        for (int kq = 0; kq < 8; kq++) {
            const __m512i a0 = _mm512_loadu_si512((const void *)(w0 + kq * 64));
            const __m512i a1 = two ? _mm512_loadu_si512((const void *)(w1 + kq * 64)) : a0;
            /* into L2, 8 KB ahead: with the hardware prefetchers alone, the products with 8
             * rows waited for memory instead of overlapping it (prefetching made the batch-8
             * output projection ~20 % faster, measured) */
            _mm_prefetch(ahead(w0 + kq * 64), _MM_HINT_T1);
            if (two) _mm_prefetch(ahead(w1 + kq * 64), _MM_HINT_T1);
            for (int m = 0; m < mr; m++) {
                int32_t quad;
                memcpy(&quad, xq + (m0 + m) * K + b * QK + kq * 4, 4);
                const __m512i xb = _mm512_set1_epi32(quad);
                acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], a0, xb);
                if (two) acc[m][1] = _mm512_dpbusd_epi32(acc[m][1], a1, xb);
            }
        }
        const __m512 s0 =
            _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(ws + (t * nb + b) * LANES)));
        const __m512 s1 = two ? _mm512_cvtph_ps(_mm256_loadu_si256(
                                    (const __m256i *)(ws + ((t + 1) * nb + b) * LANES)))
                              : s0;
        for (int m = 0; m < mr; m++) {
            const __m512 dx = _mm512_set1_ps(xs[(m0 + m) * nb + b]);
            f[m][0] =
                _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][0]), _mm512_mul_ps(dx, s0), f[m][0]);
            if (two)
                f[m][1] =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][1]), _mm512_mul_ps(dx, s1), f[m][1]);
        }
    }
    const __m512 scale = _mm512_set1_ps(mult);
    for (int m = 0; m < mr; m++)
        for (int j = 0; j <= two; j++) {
            const int64_t n0 = (t + j) * LANES;
            const __mmask16 keep = N - n0 >= LANES ? 0xFFFF : (__mmask16)((1u << (N - n0)) - 1);
            _mm512_mask_storeu_ps(y + (m0 + m) * N + n0, keep, _mm512_mul_ps(f[m][j], scale));
        }
}

static void tiles_product(const int8_t *xq, const float *xs, const int32_t *xc,
                          const uint8_t *wq, const uint16_t *ws, float mult, float *y, int64_t M,
                          int64_t t, int two, int64_t N, int64_t K) {
    int64_t m0 = 0;
    for (; M - m0 >= 8; m0 += 8) {
        /* eight rows against one tile: each weight byte fetched from memory serves eight rows
         * in one pass (two passes of four fetched it twice) */
        tile_product(xq, xs, xc, wq, ws, mult, y, m0, 8, t, 0, N, K);
        if (two) tile_product(xq, xs, xc, wq, ws, mult, y, m0, 8, t + 1, 0, N, K);
    }
    for (; m0 < M; m0 += MR) {
        switch (M - m0 < MR ? M - m0 : MR) { /* constant row counts: fully unrolled tiles */
        case 1: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 1, t, two, N, K); break;
        case 2: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 2, t, two, N, K); break;
        case 3: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 3, t, two, N, K); break;
        default: tile_product(xq, xs, xc, wq, ws, mult, y, m0, 4, t, two, N, K); break;
        }
    }
}
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define USES_BLOCK_SUMS 0 /* signed weights: no +128 to take back out */
/* AVX2 (256-bit registers): each 64-byte group of the packed layout is two halves of 8 outputs.
 * maddubs multiplies |x| (unsigned) by the weights carrying x's signs; its 16-bit pair sums stay
 * within 2 * 127 * 127, so nothing saturates, and madd widens them to 32 bits: the same int32
 * sums as dpbusd, then the same float work per output and block, so the same bits as the other
 * paths. Two rows share each weight load. */
#define MR2 2
static inline __attribute__((always_inline)) void tile_product8(
    const int8_t *xq, const float *xs, const int32_t *xc, const uint8_t *wq, const uint16_t *ws,
    float mult, float *y, int64_t m0, int mr, int64_t t, int64_t N, int64_t K) {
    const int64_t nb = K / QK;
    __m256 f[MR2][2];
    for (int m = 0; m < mr; m++) f[m][0] = f[m][1] = _mm256_setzero_ps();
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    (void)xc; /* the +128 correction is for dpbusd's unsigned weights */
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *w = wq + (t * nb + b) * (8 * 64);
        __m256i acc[MR2][2];
        for (int m = 0; m < mr; m++) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
        for (int kq = 0; kq < 8; kq++) {
            const __m256i lo = _mm256_loadu_si256((const __m256i *)(w + kq * 64));
            const __m256i hi = _mm256_loadu_si256((const __m256i *)(w + kq * 64 + 32));
            _mm_prefetch(ahead(w + kq * 64), _MM_HINT_T1);
            for (int m = 0; m < mr; m++) {
                int32_t quad;
                memcpy(&quad, xq + (m0 + m) * K + b * QK + kq * 4, 4);
                const __m256i x = _mm256_set1_epi32(quad);
                const __m256i ax = _mm256_abs_epi8(x);
                const __m256i slo = _mm256_sign_epi8(_mm256_xor_si256(lo, flip), x);
                const __m256i shi = _mm256_sign_epi8(_mm256_xor_si256(hi, flip), x);
                const __m256i plo = _mm256_maddubs_epi16(ax, slo);
                const __m256i phi = _mm256_maddubs_epi16(ax, shi);
                acc[m][0] = _mm256_add_epi32(acc[m][0], _mm256_madd_epi16(plo, ones));
                acc[m][1] = _mm256_add_epi32(acc[m][1], _mm256_madd_epi16(phi, ones));
            }
        }
        const uint16_t *sc = ws + (t * nb + b) * LANES;
        const __m256 s0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)sc));
        const __m256 s1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + 8)));
        for (int m = 0; m < mr; m++) {
            const __m256 dx = _mm256_set1_ps(xs[(m0 + m) * nb + b]);
            const __m256 d0 = _mm256_mul_ps(dx, s0), d1 = _mm256_mul_ps(dx, s1);
            f[m][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][0]), d0, f[m][0]);
            f[m][1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[m][1]), d1, f[m][1]);
        }
    }
    const __m256 scale = _mm256_set1_ps(mult);
    for (int m = 0; m < mr; m++)
        for (int h = 0; h < 2; h++) {
            const int64_t n0 = t * LANES + h * 8;
            if (n0 >= N) break;
            const __m256 out = _mm256_mul_ps(f[m][h], scale);
            if (N - n0 >= 8) {
                _mm256_storeu_ps(y + (m0 + m) * N + n0, out);
            } else {
                const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(N - n0)),
                                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
                _mm256_maskstore_ps(y + (m0 + m) * N + n0, keep, out);
            }
        }
}

static void tiles_product(const int8_t *xq, const float *xs, const int32_t *xc,
                          const uint8_t *wq, const uint16_t *ws, float mult, float *y, int64_t M,
                          int64_t t, int two, int64_t N, int64_t K) {
    for (int64_t tt = t; tt <= t + two; tt++) {
        int64_t m0 = 0;
        for (; M - m0 >= MR2; m0 += MR2)
            tile_product8(xq, xs, xc, wq, ws, mult, y, m0, 2, tt, N, K);
        if (m0 < M) tile_product8(xq, xs, xc, wq, ws, mult, y, m0, 1, tt, N, K);
    }
}
#else
#define USES_BLOCK_SUMS 1
/* The same arithmetic, one output at a time (scalar FMAs give the same bits as the lanes). */
static void tiles_product(const int8_t *xq, const float *xs, const int32_t *xc,
                          const uint8_t *wq, const uint16_t *ws, float mult, float *y, int64_t M,
                          int64_t t, int two, int64_t N, int64_t K) {
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
#endif

typedef struct {
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
    const int64_t t = 2 * pair;
    tiles_product(j->xq, j->xs, j->xc, j->wq, j->ws, j->mult, j->y, j->M, t, t + 1 < j->tiles,
                  j->N, j->K);
}

/* y [M, N] = x [M, K] times packed w [N, K] transposed; xq/xs from q8_quantize_rows. */
void q8p_matmul(const int8_t *xq, const float *xs, const uint8_t *wq, const uint16_t *ws,
                float mult, float *y, int64_t M, int64_t N, int64_t K) {
    int32_t *xc = USES_BLOCK_SUMS ? block_sums(xq, M, K) : NULL;
    const int64_t tiles = (N + LANES - 1) / LANES, pairs = (tiles + 1) / 2;
    matmul_job job = {xq, xs, xc, wq, ws, mult, y, M, N, K, tiles};
    /* ~8 runs of neighbouring tiles per thread: long runs keep each thread's reads sequential
     * (prefetched), and several per thread still even out a thread that falls behind */
    parallel_for(pairs, pairs / (8 * pool_threads()) + 1, matmul_tile_pair, &job);
    free(xc);
}

/* Rows ids[r] of the packed table, as floats: out [R, K] (the embedding lookup). */
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

/* ---- One Gemma 3 decoder block, for decode steps and prefill --------------------------------
 *
 * The whole block in one call: a torch decode step of 18 blocks costs ~0.45 ms a block in small
 * operations (norms, rotary, cache writes, attention, activation) around the matrix products.
 * Each row is one token (of any sequence, at its own position); every row is computed on its
 * own and in a fixed order, so a token's result does not depend on the rows beside it: batched
 * decoding equals decoding alone, and a prompt prefilled whole equals one prefilled in pieces.
 */
typedef struct {
    const uint8_t *q;  /* packed: [N/16][K/32][8][16][4] */
    const uint16_t *s; /* float16: [N/16][K/32][16] */
    float mult;        /* scales are stored times 1 / mult (float16 range) */
    int64_t n, k;
} q8_weight;

typedef struct {
    q8_weight qkv, o, gate_up, down;
    /* RMSNorm scales, already (1 + w) */
    const float *input_norm, *q_norm, *k_norm, *post_attention_norm, *pre_feedforward_norm,
        *post_feedforward_norm;
    int64_t hidden, heads, kv_heads, head_dim, intermediate;
    int64_t window; /* keys a query may see (sliding layers); 0: all before it */
    float eps, scaling;
} gemma_block;

static void rms_norm(const float *x, const float *scale, float *out, int64_t n, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float r = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * r * scale[i];
}

/* q8 projection of M rows: x [M, K] float -> y [M, N] */
static void project(const q8_weight *w, const float *x, float *y, int64_t M, int8_t *xq,
                    float *xs) {
    q8_quantize_rows(x, xq, xs, M, w->k);
    q8p_matmul(xq, xs, w->q, w->s, w->mult, y, M, w->n, w->k);
}

static void rope(float *v, const float *cos, const float *sin, int64_t d) {
    const int64_t half = d / 2;
    for (int64_t i = 0; i < half; i++) {
        const float a = v[i], b = v[i + half];
        v[i] = a * cos[i] - b * sin[i];
        v[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* out[0..n) = x[0..n) as float16 (the same bits on every path) */
static void store_halves(uint16_t *out, const float *x, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; i < n; i++) out[i] = float_to_half(x[i]);
}

/* a fixed-order float dot product (the same result for a row whatever the batch) */
static inline float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    float sum = 0.0f;
#if defined(__AVX512F__)
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(__AVX2__)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(acc0, acc1));
    for (int l = 0; l < 8; l++) sum += lanes[l];
#endif
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

#if defined(__AVX512F__)
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

#if defined(__AVX512F__)
/* Lane i of the result: the sum of the lanes of a[i] (a fixed tree of adds). */
static inline __m512 sum_lanes16(const __m512 *a) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; i++)
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {
        const __m512d x = _mm512_castps_pd(b[2 * i]), y = _mm512_castps_pd(b[2 * i + 1]);
        c[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    for (int i = 0; i < 2; i++)
        d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88),
                         _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}
#endif

/* out[i] = q . keys[i] for 16 consecutive float16 keys [16, D] (D a multiple of 16 on
 * AVX-512): one reduction tree for 16 dot products instead of one per product. ``key`` [D] is
 * the caller's room for one key as floats (the portable path). */
static inline void dots16(const float *q, const uint16_t *keys, int64_t D, float *out,
                          float *key) {
#if defined(__AVX512F__)
    if (D % 16 == 0) {
        __m512 acc[16];
        for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t c = 0; c < D; c += 16) {
            const __m512 qc = _mm512_loadu_ps(q + c);
            for (int i = 0; i < 16; i++)
                acc[i] = _mm512_fmadd_ps(
                    qc, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(keys + i * D + c))),
                    acc[i]);
        }
        _mm512_storeu_ps(out, sum_lanes16(acc));
        return;
    }
#endif
    for (int i = 0; i < 16; i++) {
        for (int64_t c = 0; c < D; c++) key[c] = half_to_float(keys[i * D + c]);
        out[i] = dot_f32(q, key, D);
    }
}

/* the largest of v[0..n) (exact, whatever the order) */
static inline float max_f32(const float *v, int64_t n) {
    int64_t i = 0;
    float top = -INFINITY;
#if defined(__AVX512F__)
    if (n >= 16) {
        __m512 m = _mm512_loadu_ps(v);
        for (i = 16; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(v + i));
        top = _mm512_reduce_max_ps(m);
    }
#endif
    for (; i < n; i++) top = v[i] > top ? v[i] : top;
    return top;
}

/* v[i] = exp(v[i] - shift); returns the sum, added in a fixed order */
static float exp_shifted(float *v, int64_t n, float shift) {
    int64_t i = 0;
    float total = 0.0f;
#if defined(__AVX512F__)
    const __m512 s = _mm512_set1_ps(shift);
    __m512 acc = _mm512_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(v + i), s));
        _mm512_storeu_ps(v + i, e);
        acc = _mm512_add_ps(acc, e);
    }
    total = _mm512_reduce_add_ps(acc);
#endif
    for (; i < n; i++) {
        v[i] = expf(v[i] - shift);
        total += v[i];
    }
    return total;
}

/* outs[i][d] = sum over t of w[i * T + t] * v[t * D + d], for nq <= 16 rows of weights. Each
 * output is accumulated in t order, one FMA per t, whatever nq is. */
#if defined(__AVX512F__)
static inline __attribute__((always_inline)) void weighted_sums_n(
    const float *w, int64_t T, int nq, const uint16_t *v, int64_t D, float **outs) {
    for (int64_t d = 0; d + 16 <= D; d += 16) {
        __m512 acc[16];
        for (int i = 0; i < nq; i++) acc[i] = _mm512_setzero_ps();
        for (int64_t t = 0; t < T; t++) {
            const __m512 value =
                _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + t * D + d)));
            for (int i = 0; i < nq; i++)
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(w[i * T + t]), value, acc[i]);
        }
        for (int i = 0; i < nq; i++) _mm512_storeu_ps(outs[i] + d, acc[i]);
    }
}
#endif

static void weighted_sums(const float *w, int64_t T, int64_t nq, const uint16_t *v, int64_t D,
                          float **outs) {
    int64_t done = 0;
#if defined(__AVX512F__)
    switch (nq) { /* constant counts keep the accumulators in registers */
    case 1: weighted_sums_n(w, T, 1, v, D, outs); break;
    case 2: weighted_sums_n(w, T, 2, v, D, outs); break;
    case 4: weighted_sums_n(w, T, 4, v, D, outs); break;
    case 8: weighted_sums_n(w, T, 8, v, D, outs); break;
    case 16: weighted_sums_n(w, T, 16, v, D, outs); break;
    default: weighted_sums_n(w, T, (int)nq, v, D, outs); break;
    }
    done = D - D % 16;
#endif
    for (int64_t i = 0; i < nq; i++)
        for (int64_t d = done; d < D; d++) {
            float acc = 0.0f;
            for (int64_t t = 0; t < T; t++)
                acc = fmaf(w[i * T + t], half_to_float(v[t * D + d]), acc);
            outs[i][d] = acc;
        }
}

/* out[i] = gelu_tanh(gate[i]) * up[i], with 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)): scalar
 * tanhf was 6 ms of a batch-8 decode step. */
static void gelu_tanh_mul(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 c = _mm512_set1_ps(-2.0f * 0.7978845608028654f), a = _mm512_set1_ps(0.044715f);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (; i + 16 <= n; i += 16) {
        const __m512 x = _mm512_loadu_ps(gate + i);
        const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(a, x), _mm512_mul_ps(x, x), x);
        const __m512 e = exp16(_mm512_mul_ps(c, inner));
        const __m512 g = _mm512_div_ps(x, _mm512_add_ps(one, e));
        _mm512_storeu_ps(out + i, _mm512_mul_ps(g, _mm512_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) {
        const float x = gate[i];
        const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
        out[i] = x / (1.0f + expf(-2.0f * u)) * up[i];
    }
}

typedef struct {
    float *h, *y, *attn, *xs;
    int8_t *xq;
} scratch;

static scratch scratch_for(const gemma_block *blk, int64_t B) {
    const int64_t E = blk->hidden, NQ = blk->heads * blk->head_dim, I = blk->intermediate;
    const int64_t NQKV = NQ + 2 * blk->kv_heads * blk->head_dim;
    const int64_t widest = NQKV > 2 * I ? NQKV : 2 * I;
    const int64_t narrow = E > NQ ? (E > I ? E : I) : (NQ > I ? NQ : I);
    scratch m = {malloc(sizeof(float) * B * narrow), malloc(sizeof(float) * B * widest),
                 malloc(sizeof(float) * B * NQ), malloc(sizeof(float) * B * (widest / QK + 1)),
                 malloc((size_t)(B * widest))};
    return m;
}

static void scratch_free(scratch *m) {
    free(m->h);
    free(m->y);
    free(m->attn);
    free(m->xs);
    free(m->xq);
}

/* What one block's row loops need, passed to the pool as one context. */
typedef struct {
    const gemma_block *blk;
    float *x;
    const float *attn_in;
    const int64_t *slots, *positions;
    const float *cos_table, *sin_table;
    uint16_t *k_cache, *v_cache; /* float16 */
    int64_t capacity, split;
    const int64_t *runs; /* attention tasks' first rows (block_attention) */
    scratch *m;
} block_job;

enum { ROW_INPUT_NORM, ROW_QK_ROTARY, ROW_ATTENTION_RESIDUAL, ROW_FFN_NORM, ROW_GELU,
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
        rms_norm(x + b * E, blk->input_norm, h + b * E, E, blk->eps);
        break;
    case ROW_QK_ROTARY: {
        float *row = y + b * NQKV;
        const float *c = j->cos_table + j->positions[b] * D;
        const float *s = j->sin_table + j->positions[b] * D;
        for (int64_t hd = 0; hd < H; hd++) {
            rms_norm(row + hd * D, blk->q_norm, row + hd * D, D, blk->eps);
            rope(row + hd * D, c, s, D);
        }
        for (int64_t hd = 0; hd < HKV; hd++) {
            float *k = row + NQ + hd * D, *v = row + NQ + NKV + hd * D;
            rms_norm(k, blk->k_norm, k, D, blk->eps);
            rope(k, c, s, D);
            const int64_t at = ((j->slots[b] * HKV + hd) * j->capacity + j->positions[b]) * D;
            store_halves(j->k_cache + at, k, D);
            store_halves(j->v_cache + at, v, D);
        }
        break;
    }
    case ROW_ATTENTION_RESIDUAL:
        rms_norm(y + b * E, blk->post_attention_norm, h + b * E, E, blk->eps);
        for (int64_t i = 0; i < E; i++) x[b * E + i] += h[b * E + i];
        break;
    case ROW_FFN_NORM:
        rms_norm(x + b * E, blk->pre_feedforward_norm, h + b * E, E, blk->eps);
        break;
    case ROW_GELU:
        gelu_tanh_mul(y + b * 2 * I, y + b * 2 * I + I, h + b * I, I);
        break;
    case ROW_FFN_RESIDUAL:
        rms_norm(y + b * E, blk->post_feedforward_norm, h + b * E, E, blk->eps);
        for (int64_t i = 0; i < E; i++) x[b * E + i] += h[b * E + i];
        break;
    }
}

/* Each row on its own; in parallel from 4 rows (at 8, ~0.3 ms of a decode step's ~12): one
 * to three rows cost less than a hand-over to the pool. */
static void rows(block_job *job, int stage, int64_t B) {
    row_job r = {job, stage};
    const int64_t half = (B + 1) / 2;
    parallel_for(B, B < 4 ? B : half > 8 ? 8 : half, row_stage, &r);
}

/* Norm, q/k/v projection, q/k norms and rotary; keys and values written to the cache; the
 * queries left in y [B, NQKV] (first NQ columns). */
static void block_qkv(block_job *job, int64_t B) {
    scratch *m = job->m;
    rows(job, ROW_INPUT_NORM, B);
    project(&job->blk->qkv, m->h, m->y, B, m->xq, m->xs); /* [B, NQKV] */
    rows(job, ROW_QK_ROTARY, B);
}

/* Attention tasks: a run of up to ROWS_PER_TASK consecutive rows of one sequence (a prompt's
 * tokens; in a decode step, one row) and the query heads of one kv head, so that each cached
 * key and value is read once for all of them. Every (row, head) is computed the same way
 * whatever the task holds (dot products over the head dimension, then weights and values
 * accumulated in position order; zero weights outside the row's window add nothing), so a
 * token's result is the same prefilled whole, prefilled in pieces, or decoded. */
#define ROWS_PER_TASK 8

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
    const int64_t T = t1 - t0, queries = (r1 - r0) * per_task;
    const uint16_t *keys = j->k_cache + ((slot * HKV + kv) * j->capacity) * D;
    const uint16_t *values = j->v_cache + ((slot * HKV + kv) * j->capacity) * D;
    float *weights = calloc((size_t)(queries * T), sizeof(float)); /* [queries, T] from t0 */
    float *key = malloc(sizeof(float) * (size_t)D);                /* dots16's room */
    /* Scores 16 keys at a time, in blocks aligned to multiples of 16 positions, so that a
     * key's score is computed the same way in every call (keys past a row's own position are
     * computed and ignored: the cache always has room up to the next multiple of 16). */
    float block[16];
    for (int64_t tb = t0 - t0 % 16; tb < t1; tb += 16)
        for (int64_t r = r0; r < r1; r++) {
            const int64_t p = j->positions[r];
            const int64_t lo = first_key(p, window);
            if (tb > p || tb + 16 <= lo) continue;
            for (int64_t g = 0; g < per_task; g++) {
                const float *q = j->m->y + r * NQKV + (first_head + g) * D;
                float *w = weights + ((r - r0) * per_task + g) * T - t0;
                dots16(q, keys + tb * D, D, block, key);
                for (int64_t t = tb > lo ? tb : lo; t < tb + 16 && t <= p; t++)
                    w[t] = block[t - tb] * blk->scaling;
            }
        }
    for (int64_t r = r0; r < r1; r++) {
        const int64_t p = j->positions[r], lo = first_key(p, window);
        for (int64_t g = 0; g < per_task; g++) {
            float *w = weights + ((r - r0) * per_task + g) * T + (lo - t0);
            const float top = max_f32(w, p + 1 - lo);
            const float total = exp_shifted(w, p + 1 - lo, top);
            for (int64_t t = 0; t <= p - lo; t++) w[t] /= total;
        }
    }
    /* out[query] = sum over t of weight[query, t] * value[t], 16 queries at a time */
    for (int64_t q0 = 0; q0 < queries; q0 += 16) {
        const int64_t nq = queries - q0 < 16 ? queries - q0 : 16;
        float *outs[16];
        for (int64_t i = 0; i < nq; i++) {
            const int64_t r = r0 + (q0 + i) / per_task, g = (q0 + i) % per_task;
            outs[i] = j->m->attn + r * NQ + (first_head + g) * D;
        }
        weighted_sums(weights + q0 * T, T, nq, values + t0 * D, D, outs);
    }
    free(weights);
    free(key);
}

/* Attention of each row's queries (y) over its slot's cached keys and values -> attn [B, NQ] */
static void block_attention(block_job *job, int64_t B) {
    const int64_t HKV = job->blk->kv_heads, group = job->blk->heads / HKV;
    int64_t *runs = malloc(sizeof(int64_t) * (B + 1)), count = 0;
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
    parallel_for(count * HKV * job->split, 1, attention_task, job);
    free(runs);
}

/* Output projection, residual, feed-forward, residual: x [B, E] updated from attn [B, NQ]. */
static void block_out(block_job *job, int64_t B) {
    scratch *m = job->m;
    const gemma_block *blk = job->blk;
    project(&blk->o, job->attn_in, m->y, B, m->xq, m->xs); /* [B, E] */
    rows(job, ROW_ATTENTION_RESIDUAL, B);
    rows(job, ROW_FFN_NORM, B);
    project(&blk->gate_up, m->h, m->y, B, m->xq, m->xs); /* [B, 2I] */
    rows(job, ROW_GELU, B);
    project(&blk->down, m->h, m->y, B, m->xq, m->xs); /* [B, E] */
    rows(job, ROW_FFN_RESIDUAL, B);
}

/* x: [B, hidden] float32, updated in place. slots/positions: [B]. cos/sin: [P, head_dim] tables.
 * k_cache/v_cache: this layer's [slots, kv_heads, capacity, head_dim] float16 (half the
 * memory and reads of float32, as llama.cpp's default cache; perplexity unchanged). */
void gemma_decode_block(const gemma_block *blk, float *x, int64_t B, const int64_t *slots,
                        const int64_t *positions, const float *cos_table, const float *sin_table,
                        uint16_t *k_cache, uint16_t *v_cache, int64_t capacity) {
    scratch m = scratch_for(blk, B);
    block_job job = {blk, x, m.attn, slots, positions, cos_table, sin_table,
                     k_cache, v_cache, capacity, 1, NULL, &m};
    block_qkv(&job, B);
    block_attention(&job, B);
    block_out(&job, B);
    scratch_free(&m);
}

/* ---- Greedy decoding: each row's first largest value ------------------------------------ */
typedef struct {
    const float *x;
    int64_t N;
    int64_t *out;
} argmax_job;

static void argmax_row(void *ctx, int64_t r) {
    const argmax_job *j = ctx;
    const float *x = j->x + r * j->N;
    int64_t i = 0, best_i = 0;
    float best = -INFINITY;
    int broken = 0; /* a NaN seen */
#if defined(__AVX512F__)
    if (j->N >= 16) {
        __m512 top = _mm512_loadu_ps(x);
        __mmask16 nan = _mm512_cmp_ps_mask(top, top, _CMP_UNORD_Q);
        __m512i at = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        const __m512i step = _mm512_set1_epi32(16);
        __m512i index = at;
        for (i = 16; i + 16 <= j->N && i < INT32_MAX - 16; i += 16) {
            index = _mm512_add_epi32(index, step);
            const __m512 v = _mm512_loadu_ps(x + i);
            nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            const __mmask16 higher = _mm512_cmp_ps_mask(v, top, _CMP_GT_OQ); /* first wins */
            top = _mm512_mask_blend_ps(higher, top, v);
            at = _mm512_mask_blend_epi32(higher, at, index);
        }
        broken = nan != 0;
        float values[16];
        int32_t where[16];
        _mm512_storeu_ps(values, top);
        _mm512_storeu_si512((void *)where, at);
        best = values[0];
        best_i = where[0];
        for (int l = 1; l < 16; l++)
            if (values[l] > best || (values[l] == best && where[l] < best_i)) {
                best = values[l];
                best_i = where[l];
            }
    }
#endif
    for (; i < j->N; i++) {
        if (x[i] != x[i]) broken = 1;
        if (x[i] > best || (i == 0 && best == -INFINITY)) {
            best = x[i];
            best_i = i;
        }
    }
    j->out[r] = broken || isinf(best) ? -1 : best_i;
}

/* out[r] = the index of the first largest value of row r of x [R, N] (as torch.argmax), or -1
 * when the row holds a NaN or its largest value is infinite (a broken model's output). */
void q8_argmax_rows(const float *x, int64_t R, int64_t N, int64_t *out) {
    argmax_job job = {x, N, out};
    parallel_for(R, 1, argmax_row, &job);
}

/* ---- Sampling: each row's k largest values -------------------------------------------------
 *
 * Sorting a 262,144-token row to sample from its top k took torch ~20 ms a token; one pass with
 * a heap of k takes ~0.1 ms. Ranks: a larger value first, and of equal values the lower index. */
typedef struct {
    const float *x;
    int64_t N, k;
    float *values;
    int64_t *ids;
} top_k_job;

static inline int ranks_below(float va, int64_t ia, float vb, int64_t ib) {
    return va < vb || (va == vb && ia > ib);
}

/* min-heap on rank: the lowest-ranked candidate at the root */
static void sift_down(float *v, int64_t *id, int64_t n, int64_t i) {
    for (;;) {
        int64_t low = i;
        const int64_t l = 2 * i + 1, r = l + 1;
        if (l < n && ranks_below(v[l], id[l], v[low], id[low])) low = l;
        if (r < n && ranks_below(v[r], id[r], v[low], id[low])) low = r;
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

static void offer(float *v, int64_t *id, int64_t k, float x, int64_t i) {
    if (x > v[0]) { /* a later index of an equal value ranks below: only a larger value enters */
        v[0] = x;
        id[0] = i;
        sift_down(v, id, k, 0);
    }
}

static void top_k_row(void *ctx, int64_t r) {
    const top_k_job *j = ctx;
    const float *x = j->x + r * j->N;
    float *v = j->values + r * j->k;
    int64_t *id = j->ids + r * j->k, i = j->k;
    for (int64_t t = 0; t < j->k; t++) {
        v[t] = x[t];
        id[t] = t;
    }
    for (int64_t t = j->k / 2 - 1; t >= 0; t--) sift_down(v, id, j->k, t);
#if defined(__AVX512F__)
    for (; i + 16 <= j->N; i += 16) { /* most blocks hold nothing larger than the heap's least */
        __mmask16 above = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), _mm512_set1_ps(v[0]),
                                             _CMP_GT_OQ);
        while (above) {
            const int lane = __builtin_ctz(above);
            offer(v, id, j->k, x[i + lane], i + lane);
            above &= above - 1;
        }
    }
#endif
    for (; i < j->N; i++) offer(v, id, j->k, x[i], i);
    for (int64_t n = j->k - 1; n > 0; n--) { /* heap order -> descending rank */
        const float tv = v[0];
        const int64_t ti = id[0];
        v[0] = v[n];
        id[0] = id[n];
        v[n] = tv;
        id[n] = ti;
        sift_down(v, id, n, 0);
    }
}

/* values/ids [R, k]: each row of x [R, N]'s k largest values and their indices, largest first
 * (0 < k <= N). */
void q8_top_k_rows(const float *x, int64_t R, int64_t N, int64_t k, float *values, int64_t *ids) {
    top_k_job job = {x, N, k, values, ids};
    parallel_for(R, 1, top_k_row, &job);
}

/* Which int8 products run here: 1 AVX-512 VNNI, 2 AVX2, 0 the portable loops (correct, but
 * slower than bfloat16: the engine then uses int8 only when asked to). */
int q8_vector_kernels(void) {
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
    return 1;
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
    return 2;
#else
    return 0;
#endif
}
