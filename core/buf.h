/*
 * fy_buf: a growable byte buffer with an optional hard limit.
 *
 * Used for request and response heads and for re-framed chunked bodies. The
 * buffer's memory is kept between requests on a connection (reset, not
 * freed), so a keep-alive connection allocates only on its first request or
 * when a head is larger than any before it.
 */
#ifndef FERRY_BUF_H
#define FERRY_BUF_H

#include "common.h"

#include <stdarg.h>
#include <stdbool.h>

typedef struct fy_buf {
  char *data;
  size_t len, cap;
} fy_buf;

static inline void fy_buf_init(fy_buf *b) {
  b->data = NULL;
  b->len = b->cap = 0;
}
static inline void fy_buf_reset(fy_buf *b) { b->len = 0; }
void fy_buf_free(fy_buf *b);
/*
 * Spare blocks: every new connection allocates a few blocks of the same
 * first sizes (256-byte heads, the 32-entry header arrays) and frees them at
 * its close; a short per-thread stack of each size hands them to the next
 * connection without going through malloc. fy_spare_get returns NULL when
 * the stack is empty; fy_spare_put returns false when the caller must free.
 * Sanitizer builds keep none, so AddressSanitizer sees every use after free.
 */
#define FY_SPARE_HEADERS_BYTES 640 /* a first header array: 32 entries of 20 bytes (http.c checks it) */
void *fy_spare_get(size_t size);
bool fy_spare_put(void *p, size_t size);
void fy_buf_grow(fy_buf *b, size_t extra); /* the slow half of fy_buf_reserve */
static inline void fy_buf_reserve(fy_buf *b, size_t extra) {
  if (b->len + extra > b->cap) fy_buf_grow(b, extra);
}
/* Inline: a head is put together from a dozen small appends. */
static inline void fy_buf_append(fy_buf *b, const void *p, size_t n) {
  if (n == 0) return; /* memcpy with a NULL pointer is undefined even for 0 bytes */
  fy_buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}
static inline void fy_buf_puts(fy_buf *b, const char *s) { fy_buf_append(b, s, strlen(s)); }
void fy_buf_printf(fy_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Decimal (or, with fy_buf_hex, hexadecimal) digits of v: the hot paths' printf. */
void fy_buf_u64(fy_buf *b, uint64_t v);
void fy_buf_hex(fy_buf *b, uint64_t v);

#endif
