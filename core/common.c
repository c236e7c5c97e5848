#include "common.h"

#include <stdio.h>
#include <uv.h>

static void fy_oom(size_t n) {
  fprintf(stderr, "ferry: out of memory allocating %zu bytes\n", n);
  abort();
}

void *fy_malloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (p == NULL) fy_oom(n);
  return p;
}

void *fy_calloc(size_t n, size_t size) {
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (p == NULL) fy_oom(n * size);
  return p;
}

void *fy_realloc(void *p, size_t n) {
  void *q = realloc(p, n ? n : 1);
  if (q == NULL) fy_oom(n);
  return q;
}

char *fy_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  return memcpy(fy_malloc(n), s, n);
}

const char *fy_strerror(int err) {
  switch (err) {
  case FY_OK: return "success";
  case FY_ECONFIG: return "invalid configuration";
  case FY_ESCRIPT: return "policy script failed to load";
  case FY_ENOGROUP: return "unknown upstream group";
  case FY_EHOOK: return "policy hook failed";
  case FY_EUPSTREAM: return "invalid response from upstream";
  case FY_ETIMEDOUT: return "timed out";
  case FY_ETOOBIG: return "limit exceeded";
  default: return uv_strerror(err);
  }
}
