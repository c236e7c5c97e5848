/*
 * HTTP/1.1 codec helpers shared by the client and upstream sides.
 *
 * llhttp does the parsing; this unit owns what ferry does with a parsed
 * message: the header list (names and values stored as offsets into one
 * buffer, so it can grow and be reused between requests), hop-by-hop
 * filtering, Host normalisation, request-target splitting, and writing the
 * heads that ferry sends on. Bodies are always re-framed by ferry
 * (Content-Length kept, anything else sent chunked), so what one side
 * receives is never the other side's framing passed through blindly.
 */
#ifndef FERRY_HTTP_H
#define FERRY_HTTP_H

#include "buf.h"

#include <stdbool.h>

enum fy_hdr_flags {
  FY_HDR_REMOVED = 1, /* dropped by policy, hop-by-hop rules or Connection */
};

typedef struct fy_hdr {
  uint32_t name_off, name_len;
  uint32_t val_off, val_len;
  uint32_t flags;
} fy_hdr;

typedef struct fy_headers {
  fy_buf buf; /* names and values, back to back */
  fy_hdr *v;
  size_t n, cap;
} fy_headers;

void fy_headers_init(fy_headers *h);
void fy_headers_reset(fy_headers *h);
void fy_headers_free(fy_headers *h);
/* Appends a header, copying name and value. */
void fy_headers_add(fy_headers *h, const char *name, size_t nlen, const char *val, size_t vlen);
/* Index of the first live header called name (case-insensitive), from start, or -1. */
ssize_t fy_headers_find(const fy_headers *h, const char *name, size_t nlen, size_t start);
/* Marks every live header called name as removed; returns how many. */
size_t fy_headers_remove(fy_headers *h, const char *name, size_t nlen);
static inline const char *fy_hdr_name(const fy_headers *h, const fy_hdr *e) {
  return h->buf.data + e->name_off;
}
static inline const char *fy_hdr_val(const fy_headers *h, const fy_hdr *e) {
  return h->buf.data + e->val_off;
}

/*
 * Collecting a header list from a parser's spans, for requests, their
 * trailers and responses alike: llhttp reports a name, then its value, each
 * possibly in several pieces (a head can arrive in many reads). Limits on
 * bytes are the caller's.
 */
/* A piece of a name; the first opens a new entry, refused (false) when it would be entry max + 1. */
bool fy_headers_collect_name(fy_headers *h, const char *at, size_t len, size_t max);
/* The name is complete; false when it is empty (llhttp lets ": x" through). */
bool fy_headers_collect_name_end(fy_headers *h);
/* A piece of the value of the entry whose name just ended. */
void fy_headers_collect_value(fy_headers *h, const char *at, size_t len);

bool fy_http_token_eq(const char *a, size_t alen, const char *b, size_t blen);
/* True for header names that only apply to one connection (RFC 9110 7.6.1). */
bool fy_http_is_hop_by_hop(const char *name, size_t len);
/*
 * Marks hop-by-hop headers and the headers that Connection names as removed.
 * Returns true when Connection named Host, which a request may not do: the
 * request would reach the upstream under another Host than it was routed by.
 */
bool fy_http_strip_hop_by_hop(fy_headers *h);
/* What the Transfer-Encoding headers of a request ask for (RFC 9112 6.1). */
enum fy_http_te {
  FY_TE_NONE,        /* no Transfer-Encoding header */
  FY_TE_CHUNKED,     /* chunked, once, and nothing else: the only framing ferry forwards */
  FY_TE_BAD,         /* no coding, chunked not last or twice: the body length is unknown (400) */
  FY_TE_UNSUPPORTED, /* another coding under chunked, which ferry would drop on the way (501) */
};
/* Reads every Transfer-Encoding header as one comma-separated list. */
enum fy_http_te fy_http_transfer_encoding(const fy_headers *h);

/* True when a header value is safe to send on (no CR, LF or NUL, no other controls but tab). */
bool fy_http_value_ok(const char *v, size_t len);
bool fy_http_name_ok(const char *v, size_t len);

/*
 * Rules for the raw bytes of a request head that llhttp's strict mode lets
 * through, checked as the bytes arrive (a head may come in many reads, so
 * the scan keeps the byte before and where it is): every LF is preceded by
 * CR; no line starts with a space or tab (obs-fold, or whitespace before the
 * first field, which llhttp takes as part of a value when it is empty or a
 * Content-Length); the request line has single spaces between its parts.
 */
typedef struct fy_http_head_scan {
  unsigned char prev; /* the byte before, 0 at the start of a head */
  bool line_started;  /* the request line has begun (empty lines before it are allowed) */
  bool line_done;     /* ... and ended */
} fy_http_head_scan;

static inline void fy_http_head_scan_init(fy_http_head_scan *s) { *s = (fy_http_head_scan){0}; }
/* Trailer lines (after the last chunk's line) follow the same rules but have no request line. */
static inline void fy_http_head_scan_trailers(fy_http_head_scan *s) {
  *s = (fy_http_head_scan){.prev = '\n', .line_started = true, .line_done = true};
}
/* False when the bytes break one of the rules. */
bool fy_http_head_check(fy_http_head_scan *s, const char *p, size_t len);

/*
 * Normalises a Host header or URI authority: lower-case, port removed, IPv6
 * brackets kept. Writes at most outcap-1 bytes plus NUL. Returns the length or
 * -1 when the host is malformed.
 */
ssize_t fy_http_host_normalize(const char *in, size_t len, char *out, size_t outcap);

/* The parts of a request target; pointers into the original string. */
typedef struct fy_target {
  const char *authority;
  size_t authority_len; /* absolute-form only */
  const char *path;
  size_t path_len;
  const char *query;
  size_t query_len; /* without '?'; NULL when absent */
} fy_target;

/* Splits origin-form, absolute-form (http/https) or '*'. Returns 0 or -1. */
int fy_http_target_parse(const char *t, size_t len, fy_target *out);

const char *fy_http_reason(int status);
/* "HTTP/1.1 <status> <reason>\r\n" */
void fy_http_status_line(fy_buf *out, int status);

/*
 * Writes a complete ferry-generated response (error pages, policy responses)
 * with Content-Length framing. extra is a block of ready header lines (may be
 * NULL). When head_only the body is counted in Content-Length but not sent.
 */
void fy_http_write_simple(fy_buf *out, int status, const char *extra, size_t extra_len, const char *body,
                          size_t body_len, bool head_only, bool close);

/* Chunked framing of one body span and of the end of a body. */
void fy_http_chunk(fy_buf *out, const char *data, size_t len);
void fy_http_chunk_end(fy_buf *out);

#endif
