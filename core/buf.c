#include "buf.h"

#include <stdio.h>

#define FY_BUF_FIRST 256 /* the first block of every buffer */
#define FY_SPARE_MAX 64  /* blocks kept per size and thread: 16 KiB of heads, 40 KiB of header arrays */

#if defined(__SANITIZE_ADDRESS__) /* gcc */
#define FY_SPARE_NONE 1
#elif defined(__has_feature) /* clang */
#if __has_feature(address_sanitizer)
#define FY_SPARE_NONE 1
#endif
#endif

typedef struct fy_spare_stack {
  size_t size;
  unsigned n;
  void *v[FY_SPARE_MAX];
} fy_spare_stack;

#ifdef FY_SPARE_NONE
static fy_spare_stack *fy_spare_of(size_t size) {
  (void)size;
  return NULL;
}
#else
static __thread fy_spare_stack fy_spares[2] = {{.size = FY_BUF_FIRST}, {.size = FY_SPARE_HEADERS_BYTES}};

static fy_spare_stack *fy_spare_of(size_t size) {
  for (size_t i = 0; i < FY_ARRAY_SIZE(fy_spares); i++)
    if (fy_spares[i].size == size) return &fy_spares[i];
  return NULL;
}
#endif

void *fy_spare_get(size_t size) {
  fy_spare_stack *s = fy_spare_of(size);
  return s && s->n ? s->v[--s->n] : NULL;
}

bool fy_spare_put(void *p, size_t size) {
  fy_spare_stack *s = fy_spare_of(size);
  if (p == NULL || s == NULL || s->n == FY_SPARE_MAX) return false;
  s->v[s->n++] = p;
  return true;
}

void fy_buf_free(fy_buf *b) {
  if (!fy_spare_put(b->data, b->cap)) free(b->data);
  fy_buf_init(b);
}

void fy_buf_grow(fy_buf *b, size_t extra) {
  size_t cap = b->cap ? b->cap : FY_BUF_FIRST;
  while (cap < b->len + extra)
    cap *= 2;
  void *spare = b->data == NULL ? fy_spare_get(cap) : NULL;
  b->data = spare ? spare : fy_realloc(b->data, cap);
  b->cap = cap;
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
