#include "pool.h"

#include "common.h"

typedef struct fy_pool_free {
  struct fy_pool_free *next;
} fy_pool_free;

static __thread fy_pool_free *fy_pool_head;
static __thread size_t fy_pool_count;

void *fy_pool_get(void) {
  fy_pool_free *b = fy_pool_head;
  if (b == NULL) return fy_malloc(FY_POOL_BLOCK_SIZE);
  fy_pool_head = b->next;
  fy_pool_count--;
  return b;
}

void fy_pool_put(void *block) {
  if (block == NULL) return;
  if (fy_pool_count >= FY_POOL_MAX_FREE) {
    free(block);
    return;
  }
  fy_pool_free *b = block;
  b->next = fy_pool_head;
  fy_pool_head = b;
  fy_pool_count++;
}

void fy_pool_drain(void) {
  while (fy_pool_head) {
    fy_pool_free *b = fy_pool_head;
    fy_pool_head = b->next;
    free(b);
  }
  fy_pool_count = 0;
}
