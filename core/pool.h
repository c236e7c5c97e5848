/*
 * Read buffers: fixed-size blocks recycled through a per-thread free list.
 *
 * Every connection, client or upstream, reads into one block while it has
 * unparsed or unsent bytes and gives it back when it goes idle, so an idle
 * keep-alive connection holds no read buffer and a busy worker does not
 * call malloc per request. The free list is per thread (each worker is one
 * thread) and capped, so memory held by idle blocks stays bounded.
 */
#ifndef FERRY_POOL_H
#define FERRY_POOL_H

#include <stddef.h>

#define FY_POOL_BLOCK_SIZE (64 * 1024)
/*
 * One turn of a busy loop can take a block for every ready socket (both
 * sides of 50 exchanges: 100 blocks) and give them all back later in the
 * turn, so the free list must absorb such a swing: a smaller cap frees and
 * re-mallocs blocks every turn, and glibc trims and regrows its heap with
 * brk() each time (measured: one brk per 12 requests at 64). 256 blocks
 * (16 MiB) is the most an idle worker keeps.
 */
#define FY_POOL_MAX_FREE 256

void *fy_pool_get(void);
void fy_pool_put(void *block);
/* Frees this thread's free blocks: a worker thread that ends calls it last. */
void fy_pool_drain(void);

#endif
