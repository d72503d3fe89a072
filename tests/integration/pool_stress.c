/* Many small parallel loops on the kernels' thread pool, the workers put to sleep now and then
 * (and woken late on a busy machine): every item must run exactly once in each loop. Prints
 * "ok" or the first item that did not. Usage: pool_stress THREADS LOOPS */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "q8_impl.h"

static atomic_int hits[256];

static void item(void *ctx, int64_t i) {
    (void)ctx;
    atomic_fetch_add(&hits[i], 1);
    if ((i * 7919) % 97 == 0) { /* a few longer items */
        volatile int k = 0;
        for (int z = 0; z < 2000; z++) k += z;
    }
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    const int threads = atoi(argv[1]);
    const long loops = atol(argv[2]);
    gemma_set_threads(threads);
    for (long l = 0; l < loops; l++) {
        const int count = 1 + (int)(l % 200);
        for (int i = 0; i < count; i++) atomic_store(&hits[i], 0);
        parallel_for(count, 1 + (l % 3), item, NULL);
        for (int i = 0; i < count; i++)
            if (atomic_load(&hits[i]) != 1) {
                printf("loop %ld: item %d ran %d times\n", l, i, atomic_load(&hits[i]));
                return 1;
            }
        if (l % 1000 == 0) usleep(300); /* longer than the workers spin: they go to sleep */
    }
    printf("ok\n");
    return 0;
}
