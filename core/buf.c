#include "buf.h"

#include <stdio.h>

void fy_buf_free(fy_buf *b) {
  free(b->data);
  fy_buf_init(b);
}

void fy_buf_reserve(fy_buf *b, size_t extra) {
  if (b->len + extra <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra)
    cap *= 2;
  b->data = fy_realloc(b->data, cap);
  b->cap = cap;
}

void fy_buf_append(fy_buf *b, const void *p, size_t n) {
  if (n == 0) return; /* memcpy with a NULL pointer is undefined even for 0 bytes */
  fy_buf_reserve(b, n);
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

void fy_buf_printf(fy_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n <= 0) return;
  fy_buf_reserve(b, (size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

void fy_buf_u64(fy_buf *b, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do
    tmp[sizeof tmp - ++n] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  fy_buf_append(b, tmp + sizeof tmp - n, n);
}

void fy_buf_hex(fy_buf *b, uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  char tmp[16];
  size_t n = 0;
  do
    tmp[sizeof tmp - ++n] = digits[v & 15];
  while ((v >>= 4) != 0);
  fy_buf_append(b, tmp + sizeof tmp - n, n);
}
