#include "common.h"

#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
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

/*
 * Dotted quad without snprintf: uv_ip4_name goes through vsnprintf, about
 * 1,800 instructions an address, and req.proxy formats two per request.
 */
static void fy_ip4_text(const struct in_addr *a, char *ip, size_t iplen) {
  const uint8_t *b = (const uint8_t *)&a->s_addr;
  char out[16], *o = out;
  for (int i = 0; i < 4; i++) {
    unsigned v = b[i];
    if (v >= 100) *o++ = (char)('0' + v / 100);
    if (v >= 10) *o++ = (char)('0' + v / 10 % 10);
    *o++ = (char)('0' + v % 10);
    *o++ = i < 3 ? '.' : '\0';
  }
  size_t n = (size_t)(o - out);
  if (iplen == 0) return;
  if (n > iplen) n = iplen, out[iplen - 1] = '\0';
  memcpy(ip, out, n);
}

void fy_addr_name(const struct sockaddr_storage *ss, char *ip, size_t iplen, int *port) {
  if (ss->ss_family == AF_INET6) {
    uv_ip6_name((const struct sockaddr_in6 *)ss, ip, iplen);
    *port = ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  } else if (ss->ss_family == AF_INET) {
    fy_ip4_text(&((const struct sockaddr_in *)ss)->sin_addr, ip, iplen);
    *port = ntohs(((const struct sockaddr_in *)ss)->sin_port);
  }
}
