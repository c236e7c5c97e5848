#include "sni.h"

#include "common.h"

#include <string.h>

enum {
  FY_TLS_RECORD_HANDSHAKE = 22,
  FY_TLS_HANDSHAKE_CLIENT_HELLO = 1,
  FY_TLS_RECORD_MAX = 16384, /* plaintext records carry at most 2^14 bytes */
  FY_TLS_EXT_SERVER_NAME = 0,
  FY_TLS_EXT_ALPN = 16,
  FY_TLS_NAME_TYPE_HOST = 0,
};

/* ---- framing: records holding one handshake message --------------------- */

/*
 * Checks the record header at p as far as it is present. Returns the record's
 * payload length, 0 when the header is incomplete, or an error: ENOTTLS for
 * the first record, where it means "this is not TLS at all", and EMALFORMED
 * for a later one, where it means the ClientHello was cut short.
 */
static int fy_sni_record_header(const uint8_t *p, size_t avail, bool first) {
  int bad = first ? FY_SNI_ENOTTLS : FY_SNI_EMALFORMED;
  if (avail >= 1 && p[0] != FY_TLS_RECORD_HANDSHAKE) return bad;
  if (avail >= 2 && p[1] != 3) return bad;
  if (avail >= 3 && (p[2] < 1 || p[2] > 3)) return bad;
  if (avail < 5) return 0;
  size_t n = (size_t)p[3] << 8 | p[4];
  /* RFC 8446 5.1 forbids empty handshake fragments. */
  if (n == 0 || n > FY_TLS_RECORD_MAX) return FY_SNI_EMALFORMED;
  return (int)n;
}

typedef struct fy_sni_frame {
  uint8_t head[4]; /* the handshake header, which may itself straddle records */
  size_t head_len;
  size_t need; /* handshake message length once the header is known, else 0 */
  size_t got;  /* handshake bytes in the complete records so far */
  size_t off;  /* where the next record starts in buf */
  unsigned records;
} fy_sni_frame;

/* Takes what it needs of a record's payload p[0..n) for the handshake header. */
static int fy_sni_frame_head(fy_sni_frame *f, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n && f->head_len < 4; i++)
    f->head[f->head_len++] = p[i];
  if (f->head_len >= 1 && f->head[0] != FY_TLS_HANDSHAKE_CLIENT_HELLO) return FY_SNI_ENOTHELLO;
  if (f->head_len < 4 || f->need != 0) return 0;
  size_t body = (size_t)f->head[1] << 16 | (size_t)f->head[2] << 8 | f->head[3];
  if (body > FY_SNI_MAX_HELLO - 4) return FY_SNI_ETOOBIG;
  f->need = 4 + body;
  return 0;
}

/*
 * Walks records until they hold the whole ClientHello. Returns 1 when they
 * do, with f->off at the end of the last one, 0 when bytes are missing, or an
 * error. The message must end exactly where a record ends: a client has
 * nothing else to send in the same flight before the server answers.
 */
static int fy_sni_frame_walk(const uint8_t *buf, size_t len, fy_sni_frame *f) {
  for (;;) {
    int n = fy_sni_record_header(buf + f->off, len - f->off, f->records == 0);
    if (n <= 0) return n;
    f->records++;
    size_t present = FY_MIN((size_t)n, len - f->off - 5);
    int rc = fy_sni_frame_head(f, buf + f->off + 5, present);
    if (rc < 0) return rc;
    if (present < (size_t)n) return 0;
    f->off += 5 + (size_t)n;
    f->got += (size_t)n;
    if (f->need != 0 && f->got >= f->need) return f->got == f->need ? 1 : FY_SNI_EMALFORMED;
    /* Refused now, not at the next header, so FY_SNI_MAX_PEEK bytes always get an answer. */
    if (f->records == FY_SNI_MAX_RECORDS) return FY_SNI_ETOOBIG;
  }
}

/* ---- reading the message across record boundaries ----------------------- */

/*
 * A cursor over the handshake message that steps over record headers. at
 * counts message bytes read; every read names the end of the vector it is
 * in, so no length can reach past its parent.
 */
typedef struct fy_sni_reader {
  const uint8_t *buf;
  size_t pos;     /* next byte in buf */
  size_t rec_end; /* end of the current record's payload in buf */
  size_t at;      /* message bytes read so far */
} fy_sni_reader;

/* Reads n bytes into dst (or skips them when dst is NULL). Returns 0 or -1. */
static int fy_sni_read(fy_sni_reader *r, uint8_t *dst, size_t n, size_t end) {
  if (n > end - r->at) return -1;
  r->at += n;
  while (n > 0) {
    if (r->pos == r->rec_end) {
      /* The framing walk checked every header up to the message's end. */
      r->pos += 5;
      r->rec_end = r->pos + ((size_t)r->buf[r->pos - 2] << 8 | r->buf[r->pos - 1]);
    }
    size_t chunk = FY_MIN(n, r->rec_end - r->pos);
    if (dst != NULL) {
      memcpy(dst, r->buf + r->pos, chunk);
      dst += chunk;
    }
    r->pos += chunk;
    n -= chunk;
  }
  return 0;
}

/* Reads a big-endian integer of 1 to 3 bytes. Returns 0 or -1. */
static int fy_sni_read_uint(fy_sni_reader *r, size_t bytes, size_t end, size_t *v) {
  uint8_t b[3];
  if (fy_sni_read(r, b, bytes, end) != 0) return -1;
  *v = 0;
  for (size_t i = 0; i < bytes; i++)
    *v = *v << 8 | b[i];
  return 0;
}

/*
 * Reads the length prefix of a vector and checks it lies within end and
 * between min and max. Returns the vector's end, or 0 when it is malformed
 * (a vector never ends at message offset 0).
 */
static size_t fy_sni_vector(fy_sni_reader *r, size_t bytes, size_t min, size_t max, size_t end) {
  size_t n;
  if (fy_sni_read_uint(r, bytes, end, &n) != 0 || n < min || n > max || n > end - r->at) return 0;
  return r->at + n;
}

/* ---- the ClientHello ----------------------------------------------------- */

/*
 * A host name as RFC 6066 wants it in server_name: ASCII labels of letters,
 * digits, '-' (and '_', common in internal zones), 1-63 bytes, none starting
 * or ending with '-', no trailing dot. Stored lower-cased.
 */
static int fy_sni_name(const uint8_t *name, size_t n, fy_sni_info *out) {
  if (n == 0 || n >= sizeof out->sni) return FY_SNI_EBADNAME;
  size_t label = 0;
  for (size_t i = 0; i <= n; i++) {
    uint8_t c = i < n ? name[i] : '.';
    if (c == '.') {
      if (label == 0 || name[i - 1] == '-') return FY_SNI_EBADNAME;
      if (i < n) out->sni[i] = '.';
      label = 0;
      continue;
    }
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!alnum && c != '_' && !(c == '-' && label > 0)) return FY_SNI_EBADNAME;
    if (++label > 63) return FY_SNI_EBADNAME;
    out->sni[i] = (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
  }
  out->sni[n] = '\0';
  out->sni_len = n;
  return 0;
}

/* server_name: a list holding exactly one host_name entry (RFC 6066 3). */
static int fy_sni_ext_server_name(fy_sni_reader *r, size_t end, fy_sni_info *out) {
  uint8_t name[FY_SNI_NAME_SIZE];
  size_t type, list_end = fy_sni_vector(r, 2, 1, 0xffff, end);
  if (list_end != end || fy_sni_read_uint(r, 1, end, &type) != 0) return FY_SNI_EMALFORMED;
  if (type != FY_TLS_NAME_TYPE_HOST) return FY_SNI_EMALFORMED;
  size_t name_end = fy_sni_vector(r, 2, 1, 0xffff, end);
  if (name_end != end) return FY_SNI_EMALFORMED;
  size_t n = name_end - r->at;
  if (n >= sizeof name) return FY_SNI_EBADNAME;
  fy_sni_read(r, name, n, end);
  return fy_sni_name(name, n, out);
}

static void fy_sni_keep_alpn(const uint8_t *p, size_t n, fy_sni_info *out) {
  bool printable = true;
  for (size_t i = 0; i < n; i++)
    printable = printable && p[i] > 0x20 && p[i] < 0x7f;
  if (!printable || n >= FY_SNI_ALPN_SIZE || out->alpn_count == FY_SNI_ALPN_MAX) {
    out->alpn_truncated = true;
    return;
  }
  memcpy(out->alpn[out->alpn_count], p, n);
  out->alpn[out->alpn_count++][n] = '\0';
}

/* ALPN: a non-empty list of non-empty protocol names (RFC 7301 3.1). */
static int fy_sni_ext_alpn(fy_sni_reader *r, size_t end, fy_sni_info *out) {
  size_t list_end = fy_sni_vector(r, 2, 2, 0xffff, end);
  if (list_end != end) return FY_SNI_EMALFORMED;
  while (r->at < end) {
    uint8_t proto[255];
    size_t name_end = fy_sni_vector(r, 1, 1, 0xff, end);
    if (name_end == 0) return FY_SNI_EMALFORMED;
    size_t n = name_end - r->at;
    fy_sni_read(r, proto, n, end);
    fy_sni_keep_alpn(proto, n, out);
  }
  return 0;
}

/* Each extension exactly fills its length; server_name and ALPN appear once. */
static int fy_sni_extensions(fy_sni_reader *r, size_t end, fy_sni_info *out) {
  bool seen_sni = false, seen_alpn = false;
  while (r->at < end) {
    size_t type;
    if (fy_sni_read_uint(r, 2, end, &type) != 0) return FY_SNI_EMALFORMED;
    size_t ext_end = fy_sni_vector(r, 2, 0, 0xffff, end);
    if (ext_end == 0) return FY_SNI_EMALFORMED;
    int rc = 0;
    if (type == FY_TLS_EXT_SERVER_NAME) {
      if (seen_sni) return FY_SNI_EMALFORMED;
      seen_sni = true;
      rc = fy_sni_ext_server_name(r, ext_end, out);
    } else if (type == FY_TLS_EXT_ALPN) {
      if (seen_alpn) return FY_SNI_EMALFORMED;
      seen_alpn = true;
      rc = fy_sni_ext_alpn(r, ext_end, out);
    } else {
      fy_sni_read(r, NULL, ext_end - r->at, ext_end);
    }
    if (rc < 0) return rc;
    if (r->at != ext_end) return FY_SNI_EMALFORMED;
  }
  return 0;
}

/*
 * legacy_version, random, session_id <0..32>, cipher_suites <2..2^16-2> (pairs),
 * compression_methods <1..2^8-1>, then the extensions block, which TLS 1.2
 * allows to be empty and very old clients leave out entirely.
 */
static int fy_sni_client_hello(fy_sni_reader *r, size_t end, fy_sni_info *out) {
  size_t version, v_end;
  if (fy_sni_read(r, NULL, 4, end) != 0 || fy_sni_read_uint(r, 2, end, &version) != 0)
    return FY_SNI_EMALFORMED;
  out->client_version = (uint16_t)version;
  if (version >> 8 != 3 || fy_sni_read(r, NULL, 32, end) != 0) return FY_SNI_EMALFORMED;
  if ((v_end = fy_sni_vector(r, 1, 0, 32, end)) == 0 || fy_sni_read(r, NULL, v_end - r->at, end) != 0)
    return FY_SNI_EMALFORMED;
  if ((v_end = fy_sni_vector(r, 2, 2, 0xfffe, end)) == 0 || (v_end - r->at) % 2 != 0)
    return FY_SNI_EMALFORMED;
  fy_sni_read(r, NULL, v_end - r->at, end);
  if ((v_end = fy_sni_vector(r, 1, 1, 0xff, end)) == 0) return FY_SNI_EMALFORMED;
  fy_sni_read(r, NULL, v_end - r->at, end);
  if (r->at == end) return 0;
  if (fy_sni_vector(r, 2, 0, 0xffff, end) != end) return FY_SNI_EMALFORMED;
  return fy_sni_extensions(r, end, out);
}

/* ---- entry points -------------------------------------------------------- */

int fy_sni_peek(const uint8_t *buf, size_t len, fy_sni_info *out) {
  memset(out, 0, sizeof *out);
  if (len == 0) return 0;
  fy_sni_frame f = {{0}, 0, 0, 0, 0, 0};
  int rc = fy_sni_frame_walk(buf, len, &f);
  if (rc <= 0) return rc;
  fy_sni_reader r = {buf, 5, 5 + ((size_t)buf[3] << 8 | buf[4]), 0};
  if ((rc = fy_sni_client_hello(&r, f.need, out)) < 0) return rc;
  out->hello_bytes = f.off;
  out->records = f.records;
  return out->sni_len > 0 ? (int)f.off : FY_SNI_ENONE;
}

const char *fy_sni_strerror(int err) {
  switch (err) {
  case FY_SNI_ENONE: return "ClientHello without server_name";
  case FY_SNI_ENOTTLS: return "not a TLS handshake";
  case FY_SNI_ENOTHELLO: return "TLS handshake message is not a ClientHello";
  case FY_SNI_EMALFORMED: return "malformed TLS ClientHello";
  case FY_SNI_EBADNAME: return "TLS server_name is not a valid host name";
  case FY_SNI_ETOOBIG: return "TLS ClientHello too large";
  default: return fy_strerror(err);
  }
}
