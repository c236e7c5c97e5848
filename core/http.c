#include "http.h"

#include <ctype.h>
#include <stdio.h>
#include <sys/types.h>

void fy_headers_init(fy_headers *h) {
  fy_buf_init(&h->buf);
  h->v = NULL;
  h->n = h->cap = 0;
}

void fy_headers_reset(fy_headers *h) {
  fy_buf_reset(&h->buf);
  h->n = 0;
}

_Static_assert(32 * sizeof(fy_hdr) == FY_SPARE_HEADERS_BYTES, "first header arrays are spare blocks");

void fy_headers_free(fy_headers *h) {
  fy_buf_free(&h->buf);
  if (!fy_spare_put(h->v, h->cap * sizeof *h->v)) free(h->v);
  fy_headers_init(h);
}

void fy_headers_add(fy_headers *h, const char *name, size_t nlen, const char *val, size_t vlen) {
  if (h->n == h->cap) {
    void *spare = h->cap == 0 ? fy_spare_get(FY_SPARE_HEADERS_BYTES) : NULL;
    h->cap = h->cap ? h->cap * 2 : 32;
    h->v = spare ? spare : fy_realloc(h->v, h->cap * sizeof *h->v);
  }
  if (h->buf.data == NULL) fy_buf_reserve(&h->buf, 256); /* names and values always point into memory */
  fy_hdr *e = &h->v[h->n++];
  e->name_off = (uint32_t)h->buf.len;
  e->name_len = (uint32_t)nlen;
  fy_buf_append(&h->buf, name, nlen);
  e->val_off = (uint32_t)h->buf.len;
  e->val_len = (uint32_t)vlen;
  fy_buf_append(&h->buf, val, vlen);
  e->flags = 0;
}

/* An entry whose value offset is this is still receiving its name. */
#define FY_HDR_NAME_OPEN (UINT32_MAX - 1)

bool fy_headers_collect_name(fy_headers *h, const char *at, size_t len, size_t max) {
  if (h->n == 0 || h->v[h->n - 1].val_off != FY_HDR_NAME_OPEN) {
    if (h->n >= max) return false;
    fy_headers_add(h, at, 0, NULL, 0);
    h->v[h->n - 1].val_off = FY_HDR_NAME_OPEN;
  }
  fy_buf_append(&h->buf, at, len);
  h->v[h->n - 1].name_len += (uint32_t)len;
  return true;
}

bool fy_headers_collect_name_end(fy_headers *h) {
  if (h->n == 0 || h->v[h->n - 1].val_off != FY_HDR_NAME_OPEN || h->v[h->n - 1].name_len == 0) return false;
  h->v[h->n - 1].val_off = (uint32_t)h->buf.len;
  return true;
}

void fy_headers_collect_value(fy_headers *h, const char *at, size_t len) {
  fy_buf_append(&h->buf, at, len);
  h->v[h->n - 1].val_len += (uint32_t)len;
}

bool fy_http_token_eq(const char *a, size_t alen, const char *b, size_t blen) {
  return alen == blen && strncasecmp(a, b, alen) == 0;
}

ssize_t fy_headers_find(const fy_headers *h, const char *name, size_t nlen, size_t start) {
  for (size_t i = start; i < h->n; i++) {
    const fy_hdr *e = &h->v[i];
    if (!(e->flags & FY_HDR_REMOVED) && fy_http_token_eq(fy_hdr_name(h, e), e->name_len, name, nlen))
      return (ssize_t)i;
  }
  return -1;
}

size_t fy_headers_remove(fy_headers *h, const char *name, size_t nlen) {
  size_t count = 0;
  for (ssize_t i = fy_headers_find(h, name, nlen, 0); i >= 0;
       i = fy_headers_find(h, name, nlen, (size_t)i + 1)) {
    h->v[i].flags |= FY_HDR_REMOVED;
    count++;
  }
  return count;
}

/*
 * The hop-by-hop headers (RFC 9110 7.6.1), plus Content-Length because ferry
 * always writes its own framing. By length first: every header of every
 * message is checked, and most names have a length no hop-by-hop name has.
 */
bool fy_http_is_hop_by_hop(const char *name, size_t len) {
#define FY_HOP(s) fy_http_token_eq(name, len, s, sizeof(s) - 1)
  switch (len) {
  case 2: return FY_HOP("te");
  case 7: return FY_HOP("trailer") || FY_HOP("upgrade");
  case 10: return FY_HOP("connection") || FY_HOP("keep-alive");
  case 14: return FY_HOP("content-length");
  case 16: return FY_HOP("proxy-connection");
  case 17: return FY_HOP("transfer-encoding");
  case 18: return FY_HOP("proxy-authenticate");
  case 19: return FY_HOP("proxy-authorization");
  default: return false;
  }
#undef FY_HOP
}

/* Each comma-separated token of every Connection header names a header to drop. */
/* The next token of a comma-separated list at *p (before end): its length, 0 at the end. */
static size_t fy_http_next_token(const char **p, const char *end, const char **tok) {
  const char *s = *p;
  while (s < end && (*s == ',' || *s == ' ' || *s == '\t'))
    s++;
  *tok = s;
  while (s < end && *s != ',' && *s != ' ' && *s != '\t')
    s++;
  *p = s;
  return (size_t)(s - *tok);
}

/* Removes the headers that Connection headers name; true if one of them named Host. */
static bool fy_http_strip_connection_tokens(fy_headers *h) {
  bool host = false;
  for (ssize_t i = fy_headers_find(h, "connection", 10, 0); i >= 0;
       i = fy_headers_find(h, "connection", 10, (size_t)i + 1)) {
    const char *p = fy_hdr_val(h, &h->v[i]), *end = p + h->v[i].val_len, *tok;
    size_t n;
    /* Removal only flags entries, so the token can stay where it is in h->buf,
     * whatever its length (a copy into a fixed buffer once cut long names). */
    while ((n = fy_http_next_token(&p, end, &tok)) > 0) {
      host = host || fy_http_token_eq(tok, n, "host", 4);
      fy_headers_remove(h, tok, n);
    }
  }
  return host;
}

bool fy_http_strip_hop_by_hop(fy_headers *h) {
  bool host = fy_http_strip_connection_tokens(h);
  for (size_t i = 0; i < h->n; i++) {
    fy_hdr *e = &h->v[i];
    if (fy_http_is_hop_by_hop(fy_hdr_name(h, e), e->name_len)) e->flags |= FY_HDR_REMOVED;
  }
  return host;
}

enum fy_http_te fy_http_transfer_encoding(const fy_headers *h) {
  size_t codings = 0, chunked = 0;
  bool last_chunked = false;
  for (ssize_t i = fy_headers_find(h, "transfer-encoding", 17, 0); i >= 0;
       i = fy_headers_find(h, "transfer-encoding", 17, (size_t)i + 1)) {
    const char *p = fy_hdr_val(h, &h->v[i]), *end = p + h->v[i].val_len, *tok;
    size_t n;
    while ((n = fy_http_next_token(&p, end, &tok)) > 0) {
      last_chunked = fy_http_token_eq(tok, n, "chunked", 7);
      codings++;
      chunked += last_chunked;
    }
  }
  if (codings == 0) return fy_headers_find(h, "transfer-encoding", 17, 0) < 0 ? FY_TE_NONE : FY_TE_BAD;
  if (!last_chunked || chunked > 1) return FY_TE_BAD;
  return codings == 1 ? FY_TE_CHUNKED : FY_TE_UNSUPPORTED;
}

bool fy_http_value_ok(const char *v, size_t len) {
  size_t i = 0;
  /* Eight bytes at a time while none is below 0x20 or 0x7f; a word with one
   * (a tab, say) and the tail go byte by byte. */
  const uint64_t ones = 0x0101010101010101u, highs = 0x8080808080808080u;
  for (; i + 8 <= len; i += 8) {
    uint64_t x, del;
    memcpy(&x, v + i, 8);
    del = x ^ (ones * 0x7f);
    if ((((x - ones * 0x20) & ~x) | ((del - ones) & ~del)) & highs) break;
  }
  for (; i < len; i++) {
    unsigned char c = (unsigned char)v[i];
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

bool fy_http_name_ok(const char *v, size_t len) {
  static const char tchar[] = "!#$%&'*+-.^_`|~";
  if (len == 0) return false;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = (unsigned char)v[i];
    if (!isalnum(c) && (c == 0 || strchr(tchar, c) == NULL)) return false;
  }
  return true;
}

bool fy_http_head_check(fy_http_head_scan *s, const char *p, size_t len) {
  unsigned char prev = s->prev;
  size_t i = 0;
  /* Empty lines and the request line, byte by byte. */
  for (; i < len && !s->line_done; prev = (unsigned char)p[i++]) {
    unsigned char ch = (unsigned char)p[i];
    if (ch == '\n' && prev != '\r') return false;
    if (prev == '\n' && (ch == ' ' || ch == '\t')) return false;
    if (ch == '\n')
      s->line_done = s->line_started;
    else if (ch != '\r')
      s->line_started = true;
    if (ch == ' ' && prev == ' ') return false;
  }
  /* Field lines: only the bytes on either side of each LF matter. */
  while (i < len) {
    if (prev == '\n' && (p[i] == ' ' || p[i] == '\t')) return false;
    const char *lf = memchr(p + i, '\n', len - i);
    if (lf == NULL) {
      prev = (unsigned char)p[len - 1];
      break;
    }
    size_t j = (size_t)(lf - p);
    if ((j > i ? (unsigned char)p[j - 1] : prev) != '\r') return false;
    prev = '\n';
    i = j + 1;
  }
  s->prev = prev;
  return true;
}

ssize_t fy_http_host_normalize(const char *in, size_t len, char *out, size_t outcap) {
  size_t end = len;
  if (len > 0 && in[0] == '[') {
    const char *close = memchr(in, ']', len);
    if (close == NULL) return -1;
    end = (size_t)(close - in) + 1;
    if (end < len && in[end] != ':') return -1;
  } else {
    const char *colon = memchr(in, ':', len);
    if (colon) end = (size_t)(colon - in);
  }
  if (end < len) { /* the port must be digits */
    for (size_t i = end + 1; i < len; i++)
      if (!isdigit((unsigned char)in[i])) return -1;
  }
  if (end + 1 > outcap) return -1;
  /* ASCII only, without the C library's per-byte calls: this runs on every request's Host. */
  for (size_t i = 0; i < end; i++) {
    unsigned c = (unsigned char)in[i], lc = c + ((c - 'A' < 26u) << 5);
    if (!(lc - 'a' < 26u || c - '0' < 10u || c == '-' || c == '.' || c == '_' || c == '[' || c == ']' ||
          c == ':'))
      return -1;
    out[i] = (char)lc;
  }
  out[end] = '\0';
  return (ssize_t)end;
}

int fy_http_target_parse(const char *t, size_t len, fy_target *out) {
  memset(out, 0, sizeof *out);
  /* RFC 9112 3.2: no fragment. Passed on, "/admin#.png" could be routed as one
   * path and served as another (HAProxy's CVE-2023-45539). */
  if (memchr(t, '#', len)) return -1;
  if (len == 1 && t[0] == '*') {
    out->path = t;
    out->path_len = 1;
    return 0;
  }
  const char *p = t, *end = t + len;
  if (len > 0 && t[0] != '/') {
    size_t skip;
    if (len >= 7 && strncasecmp(t, "http://", 7) == 0)
      skip = 7;
    else if (len >= 8 && strncasecmp(t, "https://", 8) == 0)
      skip = 8;
    else
      return -1;
    p = t + skip;
    const char *a = p;
    while (p < end && *p != '/' && *p != '?')
      p++;
    if (p == a || memchr(a, '@', (size_t)(p - a))) return -1; /* no userinfo */
    out->authority = a;
    out->authority_len = (size_t)(p - a);
  }
  if (p == end) { /* absolute-form without a path means "/" */
    out->path = "/";
    out->path_len = 1;
    return 0;
  }
  if (*p == '?' && out->authority) { /* "http://host?q": the path is "/" */
    out->path = "/";
    out->path_len = 1;
    out->query = p + 1;
    out->query_len = (size_t)(end - p - 1);
    return 0;
  }
  if (*p != '/') return -1;
  const char *q = memchr(p, '?', (size_t)(end - p));
  out->path = p;
  out->path_len = (size_t)((q ? q : end) - p);
  if (q) {
    out->query = q + 1;
    out->query_len = (size_t)(end - q - 1);
  }
  return 0;
}

const char *fy_http_reason(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 411: return "Length Required";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 417: return "Expectation Failed";
  case 421: return "Misdirected Request";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default:
    return status < 200   ? "Informational"
           : status < 300 ? "OK"
           : status < 400 ? "Redirect"
           : status < 500 ? "Client Error"
                          : "Server Error";
  }
}

void fy_http_status_line(fy_buf *out, int status) {
  fy_buf_puts(out, "HTTP/1.1 ");
  fy_buf_u64(out, (uint64_t)status);
  fy_buf_append(out, " ", 1);
  fy_buf_puts(out, fy_http_reason(status));
  fy_buf_append(out, "\r\n", 2);
}

void fy_http_write_simple(fy_buf *out, int status, const char *extra, size_t extra_len, const char *body,
                          size_t body_len, bool head_only, bool close) {
  fy_http_status_line(out, status);
  fy_buf_puts(out, "Server: ferry\r\n");
  if (extra_len) fy_buf_append(out, extra, extra_len);
  if (status >= 200 && status != 204 && status != 304) {
    fy_buf_puts(out, "Content-Length: ");
    fy_buf_u64(out, body_len);
    fy_buf_append(out, "\r\n", 2);
  }
  if (close) fy_buf_puts(out, "Connection: close\r\n");
  fy_buf_append(out, "\r\n", 2);
  if (!head_only && body_len) fy_buf_append(out, body, body_len);
}

void fy_http_chunk(fy_buf *out, const char *data, size_t len) {
  if (len == 0) return;
  fy_buf_hex(out, len);
  fy_buf_append(out, "\r\n", 2);
  fy_buf_append(out, data, len);
  fy_buf_append(out, "\r\n", 2);
}

void fy_http_chunk_end(fy_buf *out) { fy_buf_append(out, "0\r\n\r\n", 5); }
