/* A small thread pool, which every parallel loop of the kernels runs on.
 *
 * Instead of OpenMP: libgomp, shared with torch, stops spinning between parallel regions as soon
 * as more of its threads exist (in any thread's team) than there are CPUs, which is the case in
 * a server that has run torch on more than one thread; every region then waits for sleeping
 * threads to wake, and a decode step (~90 regions) took twice as long. Our workers spin for a
 * short while after each region, then sleep until the next. The caller waits only for the
 * workers that joined a region: one not yet awake when every item is taken is not waited for
 * (between steps the workers sleep; on a busy machine one may not get a core for a while).
 */
#define _GNU_SOURCE /* sched_getaffinity */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "q8_impl.h"

#define MAX_THREADS 64
#define SPIN_ROUNDS 20000 /* ~100 us of pause instructions before a worker sleeps */

static struct {
    pthread_mutex_t lock, run;
    pthread_cond_t wake;
    atomic_uint_fast64_t generation;
    atomic_int sleepers, active; /* active: workers inside a loop's items (or checking in) */
    atomic_int_fast64_t next;
    int workers, started;
    int64_t count, grain;
    item_fn fn;
    void *ctx;
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .run = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER};

static int wanted_threads = 0; /* 0: one per CPU this process may use */

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

/* The generation is even while a loop's fields hold, odd while the caller rewrites them. */
static inline int no_new_loop(uint_fast64_t now, uint_fast64_t seen) {
    return now == seen || (now & 1);
}

static void *worker(void *unused) {
    (void)unused;
    uint_fast64_t seen = 0;
    for (;;) {
        uint_fast64_t now;
        int spins = 0;
        while (no_new_loop(now = atomic_load(&pool.generation), seen)) {
            if (++spins < SPIN_ROUNDS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool.lock);
            atomic_fetch_add(&pool.sleepers, 1);
            while (no_new_loop(atomic_load(&pool.generation), seen))
                pthread_cond_wait(&pool.wake, &pool.lock);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.lock);
        }
        seen = now;
        /* Check in, then make sure the loop is still the one seen: a worker that woke late,
         * after its loop ended (the caller does not wait for workers that took no item), must
         * not read the next loop's fields while the caller writes them. */
        atomic_fetch_add(&pool.active, 1);
        if (atomic_load(&pool.generation) == now) run_items();
        atomic_fetch_sub(&pool.active, 1);
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
    atomic_store(&pool.active, 0);
    /* forked while a loop was being set up in the parent: even again, the fields' state */
    atomic_store(&pool.generation, (atomic_load(&pool.generation) + 1) & ~(uint_fast64_t)1);
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

int pool_threads(void) { return pool.started ? pool.workers + 1 : 1; }

void parallel_for(int64_t count, int64_t grain, item_fn fn, void *ctx) {
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
    /* Odd: the fields are being rewritten. A worker still checked in (it woke after the last
     * loop's items were all taken) leaves before they change; one checking in from now on sees
     * the generation moved and stays out. */
    atomic_fetch_add(&pool.generation, 1);
    while (atomic_load(&pool.active) > 0) cpu_relax();
    pool.fn = fn;
    pool.ctx = ctx;
    pool.count = count;
    pool.grain = grain;
    atomic_store(&pool.next, 0);
    atomic_fetch_add(&pool.generation, 1); /* even: a new loop */
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    run_items();
    /* Every item is taken; wait for those a worker still runs. A worker that has not woken
     * up took none and is not waited for: it finds the items gone when it does. */
    while (atomic_load(&pool.active) > 0) cpu_relax();
    pthread_mutex_unlock(&pool.run);
}
