#include "proxy_protocol.h"

#include "common.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static const uint8_t fy_pp_v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                         0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

/* ---- CRC32c -------------------------------------------------------------- */

/*
 * A 16-entry table, one nibble at a time: headers are at most about a
 * kilobyte and come once per connection, so the 1 KiB byte-wise table would
 * buy nothing, and a const table needs no initialisation across threads.
 */
static const uint32_t fy_pp_crc32c_nibble[16] = {
    0x00000000, 0x105ec76f, 0x20bd8ede, 0x30e349b1, 0x417b1dbc, 0x5125dad3, 0x61c69362, 0x7198540d,
    0x82f63b78, 0x92a8fc17, 0xa24bb5a6, 0xb21572c9, 0xc38d26c4, 0xd3d3e1ab, 0xe330a81a, 0xf36e6f75,
};

uint32_t fy_proxy_protocol_crc32c(uint32_t crc, const uint8_t *data, size_t len) {
  crc = ~crc;
  for (size_t i = 0; i < len; i++) {
    crc = (crc >> 4) ^ fy_pp_crc32c_nibble[(crc ^ data[i]) & 0xf];
    crc = (crc >> 4) ^ fy_pp_crc32c_nibble[(crc ^ (data[i] >> 4)) & 0xf];
  }
  return ~crc;
}

/* ---- v1: one line of text ------------------------------------------------ */

/*
 * Checks one v1 field. With complete false the field may still grow, so the
 * check is only whether what is there can begin a valid field; with complete
 * true the field is final and its value is stored in dst. Returns 0 or -1.
 */
typedef int (*fy_pp_v1_check)(const char *t, size_t n, bool complete, void *dst);

typedef struct fy_pp_scan {
  const uint8_t *p;
  size_t len; /* never more than FY_PP_V1_MAX */
  size_t pos;
} fy_pp_scan;

static int fy_pp_v1_proto(const char *t, size_t n, bool complete, void *dst) {
  static const struct {
    const char *name;
    int family;
  } protos[] = {{"TCP4", AF_INET}, {"TCP6", AF_INET6}, {"UNKNOWN", AF_UNSPEC}};
  for (size_t i = 0; i < FY_ARRAY_SIZE(protos); i++) {
    size_t plen = strlen(protos[i].name);
    if (n > plen || memcmp(t, protos[i].name, n) != 0) continue;
    if (!complete) return 0;
    if (n == plen) {
      *(int *)dst = protos[i].family;
      return 0;
    }
  }
  return -1;
}

/* Dotted quad, each part 0-255 without a leading zero, as the spec demands. */
static int fy_pp_v1_ipv4(const char *t, size_t n, bool complete, void *dst) {
  uint32_t addr = 0;
  unsigned part = 0, digits = 0, dots = 0;
  for (size_t i = 0; i < n; i++) {
    if (t[i] == '.') {
      if (digits == 0 || dots == 3) return -1;
      addr = addr << 8 | part;
      part = digits = 0;
      dots++;
    } else if (t[i] >= '0' && t[i] <= '9') {
      if (digits == 1 && part == 0) return -1;
      part = part * 10 + (unsigned)(t[i] - '0');
      if (part > 255) return -1;
      digits++;
    } else {
      return -1;
    }
  }
  if (!complete) return 0;
  if (dots != 3 || digits == 0) return -1;
  struct sockaddr_in *sin = dst;
  sin->sin_family = AF_INET;
  sin->sin_addr.s_addr = htonl(addr << 8 | part);
  return 0;
}

/*
 * IPv6 in any form inet_pton accepts, which includes the dotted tail senders
 * produce for IPv4-mapped addresses. A field still growing is only checked
 * for its characters and length.
 */
static int fy_pp_v1_ipv6(const char *t, size_t n, bool complete, void *dst) {
  char text[INET6_ADDRSTRLEN];
  if (n >= sizeof text) return -1;
  for (size_t i = 0; i < n; i++) {
    char c = t[i];
    bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!hex && c != ':' && c != '.') return -1;
  }
  if (!complete) return 0;
  memcpy(text, t, n);
  text[n] = '\0';
  struct sockaddr_in6 *sin6 = dst;
  if (inet_pton(AF_INET6, text, &sin6->sin6_addr) != 1) return -1;
  sin6->sin6_family = AF_INET6;
  return 0;
}

static int fy_pp_v1_port(const char *t, size_t n, bool complete, void *dst) {
  uint32_t port = 0;
  for (size_t i = 0; i < n; i++) {
    if (t[i] < '0' || t[i] > '9') return -1;
    if (i == 1 && port == 0) return -1; /* a leading zero */
    port = port * 10 + (uint32_t)(t[i] - '0');
    if (port > 65535) return -1;
  }
  if (!complete) return 0;
  if (n == 0) return -1;
  *(uint16_t *)dst = htons((uint16_t)port);
  return 0;
}

/*
 * Reads one field up to the next space or CR, checks it and steps over the
 * delimiter, which must be one of delims. Returns the delimiter when done, 0
 * when the input ends inside a field that can still become valid, or
 * FY_PP_EV1SYNTAX.
 */
static int fy_pp_v1_field(fy_pp_scan *s, fy_pp_v1_check check, void *dst, const char *delims) {
  size_t start = s->pos;
  while (s->pos < s->len && s->p[s->pos] != ' ' && s->p[s->pos] != '\r')
    s->pos++;
  const char *t = (const char *)s->p + start;
  size_t n = s->pos - start;
  if (s->pos == s->len) return check(t, n, false, dst) == 0 ? 0 : FY_PP_EV1SYNTAX;
  uint8_t delim = s->p[s->pos++];
  if (strchr(delims, delim) == NULL || check(t, n, true, dst) != 0) return FY_PP_EV1SYNTAX;
  return delim;
}

/* Steps over the LF that must follow a CR. Returns the line length, 0 or an error. */
static int fy_pp_v1_lf(const fy_pp_scan *s) {
  if (s->pos == s->len) return 0;
  return s->p[s->pos] == '\n' ? (int)s->pos + 1 : FY_PP_EV1SYNTAX;
}

/*
 * After "UNKNOWN" the spec tells the receiver to ignore everything up to the
 * CRLF, but a lone CR or LF still ends nothing and is refused. delim is the
 * byte that ended "UNKNOWN", already stepped over.
 */
static int fy_pp_v1_unknown(fy_pp_scan *s, int delim) {
  if (delim == '\r') return fy_pp_v1_lf(s);
  for (; s->pos < s->len; s->pos++) {
    if (s->p[s->pos] == '\n') return FY_PP_EV1SYNTAX;
    if (s->p[s->pos] == '\r') {
      s->pos++;
      return fy_pp_v1_lf(s);
    }
  }
  return 0;
}

static void fy_pp_v1_set_ports(fy_proxy_info *out, uint16_t sport, uint16_t dport) {
  if (out->family == AF_INET) {
    ((struct sockaddr_in *)&out->src)->sin_port = sport;
    ((struct sockaddr_in *)&out->dst)->sin_port = dport;
  } else {
    ((struct sockaddr_in6 *)&out->src)->sin6_port = sport;
    ((struct sockaddr_in6 *)&out->dst)->sin6_port = dport;
  }
}

/* "PROXY" SP proto SP src SP dst SP sport SP dport CRLF, within s->len bytes. */
static int fy_pp_v1_line(fy_pp_scan *s, fy_proxy_info *out) {
  static const char magic[] = "PROXY ";
  if (memcmp(s->p, magic, FY_MIN(s->len, sizeof magic - 1)) != 0) return FY_PP_ENOTPROXY;
  if (s->len < sizeof magic - 1) return 0;
  s->pos = sizeof magic - 1;
  out->version = 1;

  int family = -1;
  int rc = fy_pp_v1_field(s, fy_pp_v1_proto, &family, " \r");
  if (rc <= 0) return rc;
  out->family = family;
  if (family == AF_UNSPEC) return fy_pp_v1_unknown(s, rc);
  if (rc != ' ') return FY_PP_EV1SYNTAX;

  fy_pp_v1_check addr = family == AF_INET ? fy_pp_v1_ipv4 : fy_pp_v1_ipv6;
  uint16_t sport = 0, dport = 0;
  if ((rc = fy_pp_v1_field(s, addr, &out->src, " ")) <= 0) return rc;
  if ((rc = fy_pp_v1_field(s, addr, &out->dst, " ")) <= 0) return rc;
  if ((rc = fy_pp_v1_field(s, fy_pp_v1_port, &sport, " ")) <= 0) return rc;
  if ((rc = fy_pp_v1_field(s, fy_pp_v1_port, &dport, "\r")) <= 0) return rc;
  fy_pp_v1_set_ports(out, sport, dport);
  return fy_pp_v1_lf(s);
}

static int fy_pp_v1_parse(const uint8_t *buf, size_t len, fy_proxy_info *out) {
  fy_pp_scan s = {buf, FY_MIN(len, FY_PP_V1_MAX), 0};
  int rc = fy_pp_v1_line(&s, out);
  if (rc == 0 && len >= FY_PP_V1_MAX) return FY_PP_EV1TOOLONG;
  return rc;
}

/* ---- v2: binary header and TLVs ------------------------------------------ */

enum {
  FY_PP2_TYPE_ALPN = 0x01,
  FY_PP2_TYPE_AUTHORITY = 0x02,
  FY_PP2_TYPE_CRC32C = 0x03,
  FY_PP2_TYPE_AWS = 0xea,
  FY_PP2_SUBTYPE_AWS_VPCE_ID = 0x01,
};

/* What a TLV walk has met so far; a known TLV may appear once. */
typedef struct fy_pp_tlv_walk {
  unsigned seen; /* bit (1 << type) for types 1-3, bit 4 for the VPC endpoint id */
  size_t crc_at; /* offset of the CRC32c value in the header, 0 when absent */
} fy_pp_tlv_walk;

/*
 * Sizes the address block of a v2 family and transport byte and says which
 * family ferry reports. Bytes the spec defines but a TCP proxy cannot use
 * (UNSPEC, UDP, UNIX) fall back to AF_UNSPEC, as the spec asks of receivers.
 * Returns -1 for bytes the spec does not define.
 */
static int fy_pp_v2_addr_len(uint8_t fam, int *family) {
  *family = AF_UNSPEC;
  switch (fam) {
  case 0x00: return 0;
  case 0x11: *family = AF_INET; return 12;
  case 0x21: *family = AF_INET6; return 36;
  case 0x12: return 12;
  case 0x22: return 36;
  case 0x31:
  case 0x32: return 216;
  default: return -1;
  }
}

static void fy_pp_v2_addrs(const uint8_t *a, fy_proxy_info *out) {
  if (out->family == AF_INET) {
    struct sockaddr_in *src = (struct sockaddr_in *)&out->src, *dst = (struct sockaddr_in *)&out->dst;
    src->sin_family = dst->sin_family = AF_INET;
    memcpy(&src->sin_addr, a, 4);
    memcpy(&dst->sin_addr, a + 4, 4);
    memcpy(&src->sin_port, a + 8, 2);
    memcpy(&dst->sin_port, a + 10, 2);
  } else {
    struct sockaddr_in6 *src = (struct sockaddr_in6 *)&out->src, *dst = (struct sockaddr_in6 *)&out->dst;
    src->sin6_family = dst->sin6_family = AF_INET6;
    memcpy(&src->sin6_addr, a, 16);
    memcpy(&dst->sin6_addr, a + 16, 16);
    memcpy(&src->sin6_port, a + 32, 2);
    memcpy(&dst->sin6_port, a + 34, 2);
  }
}

/* Copies 1 to size-1 printable, non-space ASCII bytes and a NUL. Returns 0 or -1. */
static int fy_pp_copy_text(char *dst, size_t size, const uint8_t *v, size_t n) {
  if (n == 0 || n >= size) return -1;
  for (size_t i = 0; i < n; i++)
    if (v[i] <= 0x20 || v[i] >= 0x7f) return -1;
  memcpy(dst, v, n);
  dst[n] = '\0';
  return 0;
}

/* The AWS TLV starts with a subtype; only the VPC endpoint id is read. */
static int fy_pp_v2_aws(fy_pp_tlv_walk *w, const uint8_t *v, size_t n, fy_proxy_info *out) {
  if (n == 0) return FY_PP_EVPCE;
  if (v[0] != FY_PP2_SUBTYPE_AWS_VPCE_ID) return 0;
  if (w->seen & (1u << 4)) return FY_PP_ETLV;
  w->seen |= 1u << 4;
  return fy_pp_copy_text(out->vpce_id, sizeof out->vpce_id, v + 1, n - 1) == 0 ? 0 : FY_PP_EVPCE;
}

/*
 * Handles one TLV whose value is v[0..n) at offset off of the header. ALPN
 * and authority are informational (the spec even allows ALPN to be a binary
 * copy of the TLS extension), so one that is not short printable text is
 * left out rather than failing the connection.
 */
static int fy_pp_v2_tlv(fy_pp_tlv_walk *w, uint8_t type, const uint8_t *v, size_t n, size_t off,
                        fy_proxy_info *out) {
  if (type == FY_PP2_TYPE_AWS) return fy_pp_v2_aws(w, v, n, out);
  if (type < FY_PP2_TYPE_ALPN || type > FY_PP2_TYPE_CRC32C) return 0; /* NOOP, SSL, NETNS, custom */
  if (w->seen & (1u << type)) return FY_PP_ETLV;
  w->seen |= 1u << type;
  switch (type) {
  case FY_PP2_TYPE_ALPN: fy_pp_copy_text(out->alpn, sizeof out->alpn, v, n); break;
  case FY_PP2_TYPE_AUTHORITY: fy_pp_copy_text(out->authority, sizeof out->authority, v, n); break;
  case FY_PP2_TYPE_CRC32C:
    if (n != 4) return FY_PP_ETLVVALUE;
    w->crc_at = off;
    break;
  }
  return 0;
}

/* The CRC covers the whole header with its own value read as zeros. */
static int fy_pp_v2_check_crc(const uint8_t *hdr, size_t total, size_t at) {
  static const uint8_t zeros[4];
  uint32_t want =
      (uint32_t)hdr[at] << 24 | (uint32_t)hdr[at + 1] << 16 | (uint32_t)hdr[at + 2] << 8 | hdr[at + 3];
  uint32_t crc = fy_proxy_protocol_crc32c(0, hdr, at);
  crc = fy_proxy_protocol_crc32c(crc, zeros, 4);
  crc = fy_proxy_protocol_crc32c(crc, hdr + at + 4, total - at - 4);
  return crc == want ? 0 : FY_PP_ECRC;
}

/* Walks the TLVs in hdr[off..total): each must fit entirely inside. */
static int fy_pp_v2_tlvs(const uint8_t *hdr, size_t off, size_t total, fy_proxy_info *out) {
  fy_pp_tlv_walk w = {0, 0};
  while (off < total) {
    if (total - off < 3) return FY_PP_ETLV;
    size_t n = (size_t)hdr[off + 1] << 8 | hdr[off + 2];
    if (n > total - off - 3) return FY_PP_ETLV;
    int rc = fy_pp_v2_tlv(&w, hdr[off], hdr + off + 3, n, off + 3, out);
    if (rc < 0) return rc;
    off += 3 + n;
  }
  if (w.crc_at == 0) return 0;
  int rc = fy_pp_v2_check_crc(hdr, total, w.crc_at);
  out->crc32c_verified = rc == 0;
  return rc;
}

/*
 * Checks the fixed 16 bytes as far as they are present, so that a bad
 * header is refused as early as its first wrong byte. Returns 0 when what
 * is there is valid, with *addr_len set once the family byte is known.
 */
static int fy_pp_v2_fixed(const uint8_t *buf, size_t len, fy_proxy_info *out, int *addr_len) {
  if (memcmp(buf, fy_pp_v2_sig, FY_MIN(len, sizeof fy_pp_v2_sig)) != 0) return FY_PP_ENOTPROXY;
  if (len <= 12) return 0;
  if (buf[12] >> 4 != 2) return FY_PP_EVERSION;
  if ((buf[12] & 0xf) > 1) return FY_PP_ECOMMAND;
  out->version = 2;
  out->local = (buf[12] & 0xf) == 0;
  out->family = AF_UNSPEC;
  *addr_len = 0;
  /* LOCAL ignores the family byte, as the spec says; the length still counts. */
  if (len <= 13 || out->local) return 0;
  *addr_len = fy_pp_v2_addr_len(buf[13], &out->family);
  return *addr_len < 0 ? FY_PP_EFAMILY : 0;
}

static int fy_pp_v2_parse(const uint8_t *buf, size_t len, fy_proxy_info *out) {
  int addr_len = 0;
  int rc = fy_pp_v2_fixed(buf, len, out, &addr_len);
  if (rc < 0 || len < 16) return rc;
  size_t body = (size_t)buf[14] << 8 | buf[15];
  if (body < (size_t)addr_len) return FY_PP_EADDRLEN;
  if (body > FY_PP_MAX_HEADER - 16 || body - (size_t)addr_len > FY_PP_V2_MAX_TLV) return FY_PP_ETOOBIG;
  size_t total = 16 + body;
  if (len < total) return 0;
  if (out->family == AF_INET || out->family == AF_INET6) {
    fy_pp_v2_addrs(buf + 16, out);
    if ((rc = fy_pp_v2_tlvs(buf, 16 + (size_t)addr_len, total, out)) < 0) return rc;
  }
  return (int)total;
}

/* ---- entry points -------------------------------------------------------- */

int fy_proxy_protocol_parse(const uint8_t *buf, size_t len, fy_proxy_info *out) {
  memset(out, 0, sizeof *out);
  if (len == 0) return 0;
  if (buf[0] == 'P') return fy_pp_v1_parse(buf, len, out);
  if (buf[0] == fy_pp_v2_sig[0]) return fy_pp_v2_parse(buf, len, out);
  return FY_PP_ENOTPROXY;
}

const char *fy_proxy_protocol_strerror(int err) {
  switch (err) {
  case FY_PP_ENOTPROXY: return "not a PROXY protocol header";
  case FY_PP_EV1SYNTAX: return "malformed PROXY v1 line";
  case FY_PP_EV1TOOLONG: return "PROXY v1 line longer than 107 bytes";
  case FY_PP_EVERSION: return "unsupported PROXY v2 version";
  case FY_PP_ECOMMAND: return "unknown PROXY v2 command";
  case FY_PP_EFAMILY: return "unknown PROXY v2 address family or transport";
  case FY_PP_EADDRLEN: return "PROXY v2 length shorter than its address block";
  case FY_PP_ETOOBIG: return "PROXY v2 header too long";
  case FY_PP_ETLV: return "malformed or repeated PROXY v2 TLV";
  case FY_PP_ETLVVALUE: return "PROXY v2 CRC32c TLV is not 4 bytes";
  case FY_PP_ECRC: return "PROXY v2 CRC32c mismatch";
  case FY_PP_EVPCE: return "invalid AWS VPC endpoint id";
  default: return fy_strerror(err);
  }
}

/* ---- writing ---------------------------------------------------------------- */

static size_t fy_pp_write_v1(const struct sockaddr_storage *src, const struct sockaddr_storage *dst,
                             uint8_t *out) {
  char sip[INET6_ADDRSTRLEN], dip[INET6_ADDRSTRLEN];
  int sport = 0, dport = 0;
  if (src == NULL || src->ss_family != dst->ss_family ||
      (src->ss_family != AF_INET && src->ss_family != AF_INET6)) {
    memcpy(out, "PROXY UNKNOWN\r\n", 15);
    return 15;
  }
  fy_addr_name(src, sip, sizeof sip, &sport);
  fy_addr_name(dst, dip, sizeof dip, &dport);
  int n = snprintf((char *)out, FY_PP_WRITE_MAX, "PROXY %s %s %s %d %d\r\n",
                   src->ss_family == AF_INET ? "TCP4" : "TCP6", sip, dip, sport, dport);
  return n > 0 ? (size_t)n : 0;
}

size_t fy_proxy_protocol_write(int version, const struct sockaddr_storage *src,
                               const struct sockaddr_storage *dst, const char *vpce_id, uint8_t *out) {
  if (version == 1) return fy_pp_write_v1(src, dst, out);
  static const uint8_t sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
  memcpy(out, sig, sizeof sig);
  size_t n = 16;
  bool proxied = src && dst && src->ss_family == dst->ss_family &&
                 (src->ss_family == AF_INET || src->ss_family == AF_INET6);
  out[12] = proxied ? 0x21 : 0x20; /* version 2, PROXY or LOCAL */
  out[13] = 0x00;                  /* AF_UNSPEC */
  if (proxied && src->ss_family == AF_INET) {
    const struct sockaddr_in *s4 = (const void *)src, *d4 = (const void *)dst;
    out[13] = 0x11; /* TCP over IPv4 */
    memcpy(out + n, &s4->sin_addr, 4);
    memcpy(out + n + 4, &d4->sin_addr, 4);
    memcpy(out + n + 8, &s4->sin_port, 2);
    memcpy(out + n + 10, &d4->sin_port, 2);
    n += 12;
  } else if (proxied) {
    const struct sockaddr_in6 *s6 = (const void *)src, *d6 = (const void *)dst;
    out[13] = 0x21; /* TCP over IPv6 */
    memcpy(out + n, &s6->sin6_addr, 16);
    memcpy(out + n + 16, &d6->sin6_addr, 16);
    memcpy(out + n + 32, &s6->sin6_port, 2);
    memcpy(out + n + 34, &d6->sin6_port, 2);
    n += 36;
  }
  size_t vlen = vpce_id ? strlen(vpce_id) : 0;
  if (proxied && vlen > 0 && vlen < FY_PP_VPCE_ID_SIZE) {
    out[n] = 0xEA; /* PP2_TYPE_AWS */
    out[n + 1] = (uint8_t)((vlen + 1) >> 8);
    out[n + 2] = (uint8_t)(vlen + 1);
    out[n + 3] = 0x01; /* PP2_SUBTYPE_AWS_VPCE_ID */
    memcpy(out + n + 4, vpce_id, vlen);
    n += 4 + vlen;
  }
  out[14] = (uint8_t)((n - 16) >> 8);
  out[15] = (uint8_t)(n - 16);
  return n;
}

int fy_proxy_protocol_accept(const uint8_t *buf, size_t len, fy_proxy_info *out, char *ip, size_t iplen,
                             int *port) {
  int n = fy_proxy_protocol_parse(buf, len, out);
  if (n == 0) return len < FY_PP_MAX_HEADER ? 0 : FY_PP_ETOOBIG;
  if (n < 0) return n;
  if (!out->local && (out->family == AF_INET || out->family == AF_INET6)) {
    fy_addr_name(&out->src, out->src_text, sizeof out->src_text, &out->src_port);
    fy_addr_name(&out->dst, out->dst_text, sizeof out->dst_text, &out->dst_port);
    snprintf(ip, iplen, "%s", out->src_text);
    *port = out->src_port;
  }
  return n;
}
