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
#define FY_POOL_MAX_FREE 64

void *fy_pool_get(void);
void fy_pool_put(void *block);

#endif
