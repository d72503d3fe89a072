/* Allocations that fail on demand, for test_decoder_block_allocations.py: decoder_block.c built
 * with -Dmalloc=counted_malloc -Dcalloc=counted_calloc allocates through these; the allocation
 * numbered fail_at (from 1, counted since allocations_reset) gets NULL. */
#include <stdatomic.h>
#include <stddef.h>

void *malloc(size_t size);
void *calloc(size_t count, size_t size);

static atomic_long made, fail_at;

void allocations_reset(long fail) {
    atomic_store(&made, 0);
    atomic_store(&fail_at, fail);
}

long allocations_made(void) { return atomic_load(&made); }

void *counted_malloc(size_t size) {
    return atomic_fetch_add(&made, 1) + 1 == atomic_load(&fail_at) ? NULL : malloc(size);
}

void *counted_calloc(size_t count, size_t size) {
    return atomic_fetch_add(&made, 1) + 1 == atomic_load(&fail_at) ? NULL : calloc(count, size);
}
