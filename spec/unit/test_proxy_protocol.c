/*
 * Unit tests for core/proxy_protocol.c: v1 lines, v2 headers and TLVs (the
 * AWS VPC endpoint id as an NLB sends it), CRC32c, every truncation.
 *
 * The whole suite runs twice: once parsing the test's own arrays in place and
 * once parsing copies in malloc'ed buffers of exactly the input's length, so
 * that an ASan build (-DFERRY_ASAN=ON) catches any read past len.
 */
#include "check.h"
#include "proxy_protocol.h"
#include "common.h"

#include <uv.h>

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdlib.h>

static bool exact_copies;

static int parse(const void *data, size_t len, fy_proxy_info *out) {
  if (!exact_copies) return fy_proxy_protocol_parse(data, len, out);
  uint8_t *copy = malloc(len);
  if (len > 0) memcpy(copy, data, len);
  int rc = fy_proxy_protocol_parse(copy, len, out);
  free(copy);
  return rc;
}

/*
 * Every proper prefix of a header must ask for more bytes, and bytes after
 * it must not change the answer: the listener calls again as data arrives.
 */
static bool prefixes_need_more(const uint8_t *h, size_t n) {
  fy_proxy_info info;
  for (size_t k = 0; k < n; k++)
    if (parse(h, k, &info) != 0) return false;
  uint8_t more[2048];
  memcpy(more, h, n);
  memcpy(more + n, "GET / HTTP/1.1\r\n\r\n", 18);
  return parse(more, n + 18, &info) == (int)n;
}

/*
 * For a bad header, a prefix either asks for more or already fails with the
 * final error, and once it fails every longer prefix does too.
 */
static bool prefixes_fail_as(const uint8_t *h, size_t n, int err) {
  fy_proxy_info info;
  bool failed = false;
  for (size_t k = 0; k <= n; k++) {
    int rc = parse(h, k, &info);
    if (rc == err)
      failed = true;
    else if (rc != 0 || failed)
      return false;
  }
  return failed;
}

/* "addr:port" of a parsed address, IPv6 in brackets. */
static const char *addr_str(const struct sockaddr_storage *ss) {
  static char s[80];
  char a[INET6_ADDRSTRLEN];
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;
    inet_ntop(AF_INET, &sin->sin_addr, a, sizeof a);
    snprintf(s, sizeof s, "%s:%u", a, ntohs(sin->sin_port));
  } else if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;
    inet_ntop(AF_INET6, &sin6->sin6_addr, a, sizeof a);
    snprintf(s, sizeof s, "[%s]:%u", a, ntohs(sin6->sin6_port));
  } else {
    snprintf(s, sizeof s, "none");
  }
  return s;
}

/* ---- v1 ------------------------------------------------------------------ */

static int v1(const char *line, fy_proxy_info *out) { return parse(line, strlen(line), out); }

static void v1_ok(const char *line, int family, const char *src, const char *dst) {
  fy_proxy_info info;
  size_t n = strlen(line);
  CHECK(v1(line, &info) == (int)n);
  CHECK(info.version == 1 && !info.local && info.family == family);
  if (src != NULL) {
    CHECK(strcmp(addr_str(&info.src), src) == 0);
    CHECK(strcmp(addr_str(&info.dst), dst) == 0);
  }
  CHECK(info.vpce_id[0] == '\0' && info.authority[0] == '\0');
  CHECK(prefixes_need_more((const uint8_t *)line, n));
}

static void v1_bad(const char *line, int err) {
  CHECK(prefixes_fail_as((const uint8_t *)line, strlen(line), err));
}

static void test_v1_valid(void) {
  v1_ok("PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", AF_INET, "192.168.0.1:56324",
        "192.168.0.11:443");
  v1_ok("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", AF_INET, "0.0.0.0:0", "255.255.255.255:65535");
  v1_ok("PROXY TCP6 2001:db8::1 2001:DB8::2 1 65535\r\n", AF_INET6, "[2001:db8::1]:1", "[2001:db8::2]:65535");
  v1_ok("PROXY TCP6 ::ffff:10.0.0.1 ::1 8080 80\r\n", AF_INET6, "[::ffff:10.0.0.1]:8080", "[::1]:80");
  /* the longest TCP6 line, 104 bytes */
  v1_ok("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        "65535 65535\r\n",
        AF_INET6, "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535",
        "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
  v1_ok("PROXY UNKNOWN\r\n", AF_UNSPEC, "none", "none");
  v1_ok("PROXY UNKNOWN 10.0.0.1 10.0.0.2 1 2\r\n", AF_UNSPEC, "none", "none");
  /* the spec's worst case, 107 bytes: anything after UNKNOWN is ignored */
  const char *worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                      "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
  CHECK(strlen(worst) == FY_PP_V1_MAX);
  v1_ok(worst, AF_UNSPEC, NULL, NULL);
}

static void test_v1_malformed(void) {
  /* spacing */
  v1_bad("PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8  1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1  2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4\t1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_ENOTPROXY);
  /* ports */
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 00 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 0x10\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n", FY_PP_EV1SYNTAX);
  /* fields missing or extra */
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY \r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY\r\n", FY_PP_ENOTPROXY);
  /* line ends */
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", FY_PP_EV1SYNTAX);
  v1_bad("PROXY UNKNOWN\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY UNKNOWN\r\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY UNKNOWN x\ny\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY UNKNOWN x\ry\r\n", FY_PP_EV1SYNTAX);
  /* IPv4 */
  v1_bad("PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1..2.3 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4. 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 .1.2.3 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP4 1.2.3.4 localhost 1 2\r\n", FY_PP_EV1SYNTAX);
  /* family and address disagree, bad IPv6 */
  v1_bad("PROXY TCP4 ::1 ::1 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP6 2001:db8:::1 ::1 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP6 12345::1 ::1 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP6 1::2::3 ::1 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP6 [::1] ::1 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", FY_PP_EV1SYNTAX);
  /* protocol names */
  v1_bad("PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY UNKNOWNX\r\n", FY_PP_EV1SYNTAX);
  v1_bad("PROXY UNKNOW\r\n", FY_PP_EV1SYNTAX);
  /* a NUL in the line */
  static const char nul[] = "PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n";
  CHECK(prefixes_fail_as((const uint8_t *)nul, sizeof nul - 1, FY_PP_EV1SYNTAX));
  /* not PROXY at all */
  v1_bad("PROXX TCP4 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_ENOTPROXY);
  v1_bad("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", FY_PP_ENOTPROXY);
  v1_bad("GET / HTTP/1.1\r\n", FY_PP_ENOTPROXY);
  v1_bad("\x16\x03\x01\x00\x10", FY_PP_ENOTPROXY);
}

static void test_v1_too_long(void) {
  char line[200];
  /* 108 bytes with the CRLF: one more than the spec allows */
  snprintf(line, sizeof line, "PROXY UNKNOWN %092d\r\n", 0);
  CHECK(strlen(line) == FY_PP_V1_MAX + 1);
  v1_bad(line, FY_PP_EV1TOOLONG);
  /* 107 bytes and still no CR: refused exactly at the limit, not before */
  memset(line, 'a', sizeof line);
  memcpy(line, "PROXY UNKNOWN ", 14);
  fy_proxy_info info;
  CHECK(parse(line, FY_PP_V1_MAX - 1, &info) == 0);
  CHECK(parse(line, FY_PP_V1_MAX, &info) == FY_PP_EV1TOOLONG);
  CHECK(parse(line, sizeof line, &info) == FY_PP_EV1TOOLONG);
  /* a line that is merely long in the wrong place */
  v1_bad("PROXY TCP6 0000:0000:0000:0000:0000:0000:0000:00001 ::1 1 2\r\n", FY_PP_EV1SYNTAX);
}

/* ---- v2 ------------------------------------------------------------------ */

typedef struct hdr {
  uint8_t b[2048];
  size_t n;
} hdr;

static const uint8_t sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static void put(hdr *h, const void *p, size_t n) {
  memcpy(h->b + h->n, p, n);
  h->n += n;
}

/* Rewrites the length field to cover everything after the 16 fixed bytes. */
static void v2_len(hdr *h) {
  h->b[14] = (uint8_t)((h->n - 16) >> 8);
  h->b[15] = (uint8_t)(h->n - 16);
}

static void v2_start(hdr *h, uint8_t ver_cmd, uint8_t fam) {
  h->n = 0;
  put(h, sig, sizeof sig);
  uint8_t rest[4] = {ver_cmd, fam, 0, 0};
  put(h, rest, 4);
}

static void v2_ipv4(hdr *h, uint8_t cmd) {
  static const uint8_t a[12] = {10, 0, 1, 23, 10, 0, 2, 45, 0xd4, 0x31, 0x01, 0xbb};
  v2_start(h, 0x20 | cmd, 0x11);
  put(h, a, sizeof a);
  v2_len(h);
}

static void v2_ipv6(hdr *h) {
  uint8_t a[36] = {0x20, 0x01, 0x0d,     0xb8, [15] = 1, 0x20, 0x01,
                   0x0d, 0xb8, [31] = 2, 0x1f, 0x90,     0x00, 0x50};
  v2_start(h, 0x21, 0x21);
  put(h, a, sizeof a);
  v2_len(h);
}

static void tlv(hdr *h, uint8_t type, const void *v, size_t n) {
  uint8_t t[3] = {type, (uint8_t)(n >> 8), (uint8_t)n};
  put(h, t, 3);
  put(h, v, n);
  v2_len(h);
}

static void tlv_str(hdr *h, uint8_t type, const char *s) { tlv(h, type, s, strlen(s)); }

static void tlv_vpce(hdr *h, const char *id) {
  uint8_t v[256];
  v[0] = 0x01;
  memcpy(v + 1, id, strlen(id));
  tlv(h, 0xea, v, 1 + strlen(id));
}

/* Appends a CRC32c TLV computed over the finished header. */
static void tlv_crc(hdr *h) {
  static const uint8_t zero[4];
  tlv(h, 0x03, zero, 4);
  uint32_t crc = fy_proxy_protocol_crc32c(0, h->b, h->n);
  h->b[h->n - 4] = (uint8_t)(crc >> 24);
  h->b[h->n - 3] = (uint8_t)(crc >> 16);
  h->b[h->n - 2] = (uint8_t)(crc >> 8);
  h->b[h->n - 1] = (uint8_t)crc;
}

static int v2(const hdr *h, fy_proxy_info *out) { return parse(h->b, h->n, out); }

static void v2_bad(const hdr *h, int err) { CHECK(prefixes_fail_as(h->b, h->n, err)); }

static void test_v2_addresses(void) {
  hdr h;
  fy_proxy_info info;
  v2_ipv4(&h, 1);
  CHECK(v2(&h, &info) == 28);
  CHECK(info.version == 2 && !info.local && info.family == AF_INET);
  CHECK(strcmp(addr_str(&info.src), "10.0.1.23:54321") == 0);
  CHECK(strcmp(addr_str(&info.dst), "10.0.2.45:443") == 0);
  CHECK(info.vpce_id[0] == '\0' && info.alpn[0] == '\0' && !info.crc32c_verified);
  CHECK(prefixes_need_more(h.b, h.n));

  v2_ipv6(&h);
  CHECK(v2(&h, &info) == 52);
  CHECK(info.family == AF_INET6);
  CHECK(strcmp(addr_str(&info.src), "[2001:db8::1]:8080") == 0);
  CHECK(strcmp(addr_str(&info.dst), "[2001:db8::2]:80") == 0);
  CHECK(prefixes_need_more(h.b, h.n));
}

static void test_v2_tlvs(void) {
  hdr h;
  fy_proxy_info info;
  static const uint8_t ssl[] = {0x01, 0, 0, 0, 0, 0x21, 0x00, 0x07, 'T', 'L', 'S', 'v', '1', '.', '3'};
  v2_ipv4(&h, 1);
  tlv_str(&h, 0x01, "h2");
  tlv(&h, 0x04, "\0\0\0\0", 4); /* NOOP */
  tlv_str(&h, 0x02, "metrics.observability.internal");
  tlv(&h, 0x20, ssl, sizeof ssl); /* SSL, skipped */
  tlv_str(&h, 0xe0, "custom");    /* application range, skipped */
  tlv(&h, 0x04, "", 0);           /* an empty TLV is legal */
  CHECK(v2(&h, &info) == (int)h.n);
  CHECK(strcmp(info.alpn, "h2") == 0);
  CHECK(strcmp(info.authority, "metrics.observability.internal") == 0);
  CHECK(info.vpce_id[0] == '\0');
  CHECK(prefixes_need_more(h.b, h.n));

  v2_ipv6(&h);
  tlv_vpce(&h, "vpce-0a1b2c3d4e5f60718");
  CHECK(v2(&h, &info) == (int)h.n && info.family == AF_INET6);
  CHECK(strcmp(info.vpce_id, "vpce-0a1b2c3d4e5f60718") == 0);
  CHECK(prefixes_need_more(h.b, h.n));

  /* AWS subtypes other than the endpoint id are skipped */
  v2_ipv4(&h, 1);
  tlv(&h, 0xea, "\x02xyz", 4);
  tlv_vpce(&h, "vpce-1");
  CHECK(v2(&h, &info) == (int)h.n && strcmp(info.vpce_id, "vpce-1") == 0);

  /* the largest TLV block accepted */
  static uint8_t pad[FY_PP_V2_MAX_TLV];
  v2_ipv6(&h);
  tlv(&h, 0x04, pad, FY_PP_V2_MAX_TLV - 3);
  CHECK(h.n == FY_PP_MAX_HEADER);
  CHECK(v2(&h, &info) == FY_PP_MAX_HEADER);
}

/*
 * The bytes an AWS Network Load Balancer puts in front of a connection that
 * came through a PrivateLink endpoint: PROXY over TCP/IPv4, then one AWS TLV
 * (type 0xEA) whose value is subtype 0x01 and the endpoint id in ASCII.
 */
static void test_v2_nlb(void) {
  /* clang-format off */
  static const uint8_t nlb[] = {
      0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, /* signature */
      0x21,                   /* v2, PROXY */
      0x11,                   /* TCP over IPv4 */
      0x00, 0x26,             /* 12 + 3 + 23 bytes */
      0xac, 0x1f, 0x08, 0x10, /* 172.31.8.16 */
      0x0a, 0x00, 0x00, 0x63, /* 10.0.0.99 */
      0xc3, 0x50,             /* 50000 */
      0x01, 0xbb,             /* 443 */
      0xea, 0x00, 0x17,       /* AWS TLV, 23 bytes */
      0x01,                   /* subtype: VPC endpoint id */
      'v', 'p', 'c', 'e', '-', '0', '1', '2', '3', '4', '5',
      '6', '7', '8', '9', 'a', 'b', 'c', 'd', 'e', 'f', '0',
      /* what the agent sent follows the header */
      'P', 'O', 'S', 'T', ' ', '/'};
  /* clang-format on */
  fy_proxy_info info;
  CHECK(parse(nlb, sizeof nlb, &info) == 54);
  CHECK(info.version == 2 && !info.local && info.family == AF_INET);
  CHECK(strcmp(addr_str(&info.src), "172.31.8.16:50000") == 0);
  CHECK(strcmp(addr_str(&info.dst), "10.0.0.99:443") == 0);
  CHECK(strcmp(info.vpce_id, "vpce-0123456789abcdef0") == 0);
  CHECK(prefixes_need_more(nlb, 54));
}

static void test_v2_local_and_fallbacks(void) {
  hdr h;
  fy_proxy_info info;
  /* an NLB health check: LOCAL, UNSPEC, nothing else */
  v2_start(&h, 0x20, 0x00);
  CHECK(v2(&h, &info) == 16);
  CHECK(info.version == 2 && info.local && info.family == AF_UNSPEC);
  CHECK(info.src.ss_family == 0 && info.dst.ss_family == 0);
  CHECK(prefixes_need_more(h.b, h.n));
  /* LOCAL with addresses and TLVs: skipped whole, family byte ignored */
  v2_ipv4(&h, 0);
  tlv_vpce(&h, "vpce-0123456789abcdef0");
  CHECK(v2(&h, &info) == (int)h.n && info.local && info.family == AF_UNSPEC && info.vpce_id[0] == '\0');
  h.b[13] = 0xff;
  CHECK(v2(&h, &info) == (int)h.n && info.local);
  /* PROXY over UNSPEC, UDP or UNIX: valid, but the socket's addresses apply */
  static const struct {
    uint8_t fam;
    size_t addr_len;
  } fallback[] = {{0x00, 0}, {0x00, 7}, {0x12, 12}, {0x22, 36}, {0x31, 216}, {0x32, 216}};
  for (size_t i = 0; i < sizeof fallback / sizeof fallback[0]; i++) {
    static const uint8_t zeros[216];
    v2_start(&h, 0x21, fallback[i].fam);
    put(&h, zeros, fallback[i].addr_len);
    v2_len(&h);
    CHECK(v2(&h, &info) == (int)h.n && !info.local && info.family == AF_UNSPEC);
    CHECK(prefixes_need_more(h.b, h.n));
  }
}

static void test_v2_crc(void) {
  hdr h;
  fy_proxy_info info;
  /* the check value from RFC 3720 B.4 / the CRC catalogue */
  CHECK(fy_proxy_protocol_crc32c(0, (const uint8_t *)"123456789", 9) == 0xe3069283);
  CHECK(fy_proxy_protocol_crc32c(fy_proxy_protocol_crc32c(0, (const uint8_t *)"1234", 4),
                                 (const uint8_t *)"56789", 5) == 0xe3069283);

  v2_ipv4(&h, 1);
  tlv_vpce(&h, "vpce-0123456789abcdef0");
  tlv_crc(&h);
  CHECK(v2(&h, &info) == (int)h.n && info.crc32c_verified);
  CHECK(strcmp(info.vpce_id, "vpce-0123456789abcdef0") == 0);
  CHECK(prefixes_need_more(h.b, h.n));

  /* CRC in the middle of the TLVs */
  v2_ipv6(&h);
  tlv_crc(&h);
  tlv_str(&h, 0x02, "logs.observability.internal");
  /* recompute: the CRC TLV sits at offset 52 + 3 */
  memset(h.b + 55, 0, 4);
  uint32_t crc = fy_proxy_protocol_crc32c(0, h.b, h.n);
  for (int i = 0; i < 4; i++)
    h.b[55 + i] = (uint8_t)(crc >> (24 - 8 * i));
  CHECK(v2(&h, &info) == (int)h.n && info.crc32c_verified);

  /*
   * Any flipped bit after the fixed part is caught, except in the CRC TLV's
   * own type byte, which turns it into a TLV nobody checks.
   */
  v2_ipv4(&h, 1);
  tlv_crc(&h);
  bool all_caught = true;
  for (size_t i = 16; i < h.n; i++) {
    if (i == h.n - 7) continue;
    for (int bit = 0; bit < 8; bit++) {
      h.b[i] ^= (uint8_t)(1 << bit);
      int rc = v2(&h, &info);
      /* flipping a length or TLV type may fail earlier, but never succeeds */
      all_caught = all_caught && rc < 0;
      h.b[i] ^= (uint8_t)(1 << bit);
    }
  }
  CHECK(all_caught);
  h.b[17] ^= 1; /* a source address byte */
  v2_bad(&h, FY_PP_ECRC);
  h.b[17] ^= 1;
  h.b[h.n - 1] ^= 0x80; /* the CRC itself */
  v2_bad(&h, FY_PP_ECRC);

  /* a CRC32c TLV must hold 4 bytes */
  v2_ipv4(&h, 1);
  tlv(&h, 0x03, "\0\0\0", 3);
  v2_bad(&h, FY_PP_ETLVVALUE);
  /* and appear once */
  v2_ipv4(&h, 1);
  tlv_crc(&h);
  tlv_crc(&h);
  v2_bad(&h, FY_PP_ETLV);
}

static void test_v2_malformed(void) {
  hdr h;
  /* signature */
  v2_ipv4(&h, 1);
  h.b[7] = 'q';
  v2_bad(&h, FY_PP_ENOTPROXY);
  v2_ipv4(&h, 1);
  h.b[4] = 0x20;
  v2_bad(&h, FY_PP_ENOTPROXY);
  /* version: the signature followed by anything but 2 */
  static const uint8_t versions[] = {0x01, 0x11, 0x31, 0xf1, 0x00 | 0x10};
  for (size_t i = 0; i < sizeof versions; i++) {
    v2_ipv4(&h, 1);
    h.b[12] = versions[i];
    v2_bad(&h, FY_PP_EVERSION);
  }
  /* command */
  v2_ipv4(&h, 2);
  v2_bad(&h, FY_PP_ECOMMAND);
  v2_ipv4(&h, 0xf);
  v2_bad(&h, FY_PP_ECOMMAND);
  /* family and transport bytes outside the spec */
  static const uint8_t fams[] = {0x01, 0x10, 0x13, 0x20, 0x30, 0x41, 0xff};
  for (size_t i = 0; i < sizeof fams; i++) {
    v2_ipv4(&h, 1);
    h.b[13] = fams[i];
    v2_bad(&h, FY_PP_EFAMILY);
  }
  /* lengths against the address block */
  v2_ipv4(&h, 1);
  h.n--;
  v2_len(&h);
  v2_bad(&h, FY_PP_EADDRLEN);
  v2_ipv4(&h, 1);
  h.b[13] = 0x21; /* claims IPv6 with only 12 address bytes */
  v2_bad(&h, FY_PP_EADDRLEN);
  /* oversized: refused from the 16 fixed bytes, before any body arrives */
  static uint8_t pad[FY_PP_V2_MAX_TLV];
  v2_ipv4(&h, 1);
  tlv(&h, 0x04, pad, FY_PP_V2_MAX_TLV - 2);
  v2_bad(&h, FY_PP_ETOOBIG);
  fy_proxy_info info;
  CHECK(parse(h.b, 16, &info) == FY_PP_ETOOBIG);
  v2_start(&h, 0x21, 0x11);
  h.b[14] = h.b[15] = 0xff;
  CHECK(parse(h.b, 16, &info) == FY_PP_ETOOBIG);
  v2_start(&h, 0x21, 0x31); /* UNIX addresses leave less room for TLVs */
  put(&h, pad, 216);
  tlv(&h, 0x04, pad, FY_PP_MAX_HEADER - 16 - 216);
  v2_bad(&h, FY_PP_ETOOBIG);
  v2_start(&h, 0x20, 0x00); /* LOCAL gets the same cap */
  h.b[14] = h.b[15] = 0xff;
  CHECK(parse(h.b, 16, &info) == FY_PP_ETOOBIG);
}

static void test_v2_tlv_malformed(void) {
  hdr h;
  /* a TLV whose length runs past the header */
  v2_ipv4(&h, 1);
  tlv_str(&h, 0x02, "a.test");
  h.b[h.n - 6 - 1] = 7;
  v2_bad(&h, FY_PP_ETLV);
  v2_ipv4(&h, 1);
  tlv_str(&h, 0x04, "x");
  h.b[h.n - 3] = 0xff;
  v2_bad(&h, FY_PP_ETLV);
  /* one or two stray bytes: a TLV header cut short */
  v2_ipv4(&h, 1);
  put(&h, "\x04", 1);
  v2_len(&h);
  v2_bad(&h, FY_PP_ETLV);
  v2_ipv4(&h, 1);
  put(&h, "\x04\x00", 2);
  v2_len(&h);
  v2_bad(&h, FY_PP_ETLV);
  /* known TLVs repeated */
  v2_ipv4(&h, 1);
  tlv_vpce(&h, "vpce-1");
  tlv_vpce(&h, "vpce-2");
  v2_bad(&h, FY_PP_ETLV);
  v2_ipv4(&h, 1);
  tlv_str(&h, 0x02, "a.test");
  tlv_str(&h, 0x02, "b.test");
  v2_bad(&h, FY_PP_ETLV);
  /* VPC endpoint ids: empty, too long, not printable, no subtype */
  char id[80];
  memset(id, 'a', sizeof id);
  id[FY_PP_VPCE_ID_SIZE - 1] = '\0';
  fy_proxy_info info;
  v2_ipv4(&h, 1);
  tlv_vpce(&h, id); /* 63 bytes fit */
  CHECK(v2(&h, &info) == (int)h.n && strlen(info.vpce_id) == FY_PP_VPCE_ID_SIZE - 1);
  id[FY_PP_VPCE_ID_SIZE - 1] = 'a';
  id[FY_PP_VPCE_ID_SIZE] = '\0';
  v2_ipv4(&h, 1);
  tlv_vpce(&h, id);
  v2_bad(&h, FY_PP_EVPCE);
  v2_ipv4(&h, 1);
  tlv_vpce(&h, "");
  v2_bad(&h, FY_PP_EVPCE);
  v2_ipv4(&h, 1);
  tlv_vpce(&h, "vpce-01\n");
  v2_bad(&h, FY_PP_EVPCE);
  v2_ipv4(&h, 1);
  tlv_vpce(&h, "vpce 01");
  v2_bad(&h, FY_PP_EVPCE);
  v2_ipv4(&h, 1);
  tlv(&h, 0xea, "\x01vpce-\x80", 7);
  v2_bad(&h, FY_PP_EVPCE);
  v2_ipv4(&h, 1);
  tlv(&h, 0xea, "", 0);
  v2_bad(&h, FY_PP_EVPCE);
  /* ALPN and authority that would not fit, are empty or binary: left out */
  char big[300];
  memset(big, 'a', sizeof big);
  big[FY_PP_AUTHORITY_SIZE] = '\0';
  v2_ipv4(&h, 1);
  tlv_str(&h, 0x02, big);
  tlv_vpce(&h, "vpce-1");
  CHECK(v2(&h, &info) == (int)h.n && info.authority[0] == '\0' && strcmp(info.vpce_id, "vpce-1") == 0);
  big[FY_PP_AUTHORITY_SIZE - 1] = '\0';
  v2_ipv4(&h, 1);
  tlv_str(&h, 0x02, big);
  CHECK(v2(&h, &info) == (int)h.n && strlen(info.authority) == FY_PP_AUTHORITY_SIZE - 1);
  big[FY_PP_ALPN_SIZE] = '\0';
  v2_ipv4(&h, 1);
  tlv_str(&h, 0x01, big);
  CHECK(v2(&h, &info) == (int)h.n && info.alpn[0] == '\0');
  v2_ipv4(&h, 1);
  tlv(&h, 0x01, "", 0);
  CHECK(v2(&h, &info) == (int)h.n && info.alpn[0] == '\0');
  v2_ipv4(&h, 1);
  tlv(&h, 0x01, "\x00\x03\x02h2", 5); /* a copy of the TLS extension */
  tlv_str(&h, 0x02, "a b");
  CHECK(v2(&h, &info) == (int)h.n && info.alpn[0] == '\0' && info.authority[0] == '\0');
}

static void test_strerror(void) {
  for (int e = FY_PP_ENOTPROXY; e >= FY_PP_EVPCE; e--) {
    const char *s = fy_proxy_protocol_strerror(e);
    CHECK(s != NULL && (strstr(s, "PROXY") != NULL || strstr(s, "VPC") != NULL));
    for (int o = FY_PP_ENOTPROXY; o > e; o--)
      CHECK(strcmp(s, fy_proxy_protocol_strerror(o)) != 0);
  }
  CHECK(strcmp(fy_proxy_protocol_strerror(0), "success") == 0);
}

static void run_suite(void) {
  test_v1_valid();
  test_v1_malformed();
  test_v1_too_long();
  test_v2_addresses();
  test_v2_tlvs();
  test_v2_nlb();
  test_v2_local_and_fallbacks();
  test_v2_crc();
  test_v2_malformed();
  test_v2_tlv_malformed();
  test_strerror();
}

/* What ferry writes toward an upstream, read back by ferry's own parser. */
static void test_write_round_trip(void) {
  struct sockaddr_storage src, dst, src6, dst6;
  uv_ip4_addr("10.1.2.3", 40000, (struct sockaddr_in *)&src);
  uv_ip4_addr("10.9.8.7", 443, (struct sockaddr_in *)&dst);
  uv_ip6_addr("2001:db8::1", 40001, (struct sockaddr_in6 *)&src6);
  uv_ip6_addr("2001:db8::2", 8443, (struct sockaddr_in6 *)&dst6);
  uint8_t buf[FY_PP_WRITE_MAX];
  fy_proxy_info info;
  char ip[INET6_ADDRSTRLEN];
  int port;
  for (int version = 1; version <= 2; version++) {
    size_t n = fy_proxy_protocol_write(version, &src, &dst, "vpce-0123456789abcdef0", buf);
    CHECK(n > 0 && n <= FY_PP_WRITE_MAX);
    CHECK(fy_proxy_protocol_parse(buf, n, &info) == (int)n);
    CHECK(info.version == version && !info.local && info.family == AF_INET);
    fy_addr_name(&info.src, ip, sizeof ip, &port);
    CHECK(strcmp(ip, "10.1.2.3") == 0 && port == 40000);
    fy_addr_name(&info.dst, ip, sizeof ip, &port);
    CHECK(strcmp(ip, "10.9.8.7") == 0 && port == 443);
    CHECK(strcmp(info.vpce_id, version == 2 ? "vpce-0123456789abcdef0" : "") == 0);
    n = fy_proxy_protocol_write(version, &src6, &dst6, NULL, buf);
    CHECK(fy_proxy_protocol_parse(buf, n, &info) == (int)n);
    CHECK(info.family == AF_INET6 && info.vpce_id[0] == '\0');
    fy_addr_name(&info.src, ip, sizeof ip, &port);
    CHECK(strcmp(ip, "2001:db8::1") == 0 && port == 40001);
    /* no source, or mixed families: LOCAL (v2) or UNKNOWN (v1) */
    n = fy_proxy_protocol_write(version, NULL, &dst, NULL, buf);
    CHECK(fy_proxy_protocol_parse(buf, n, &info) == (int)n && info.family == AF_UNSPEC);
    CHECK(info.local == (version == 2));
    n = fy_proxy_protocol_write(version, &src, &dst6, NULL, buf);
    CHECK(fy_proxy_protocol_parse(buf, n, &info) == (int)n && info.family == AF_UNSPEC);
  }
}

/* fy_proxy_protocol_accept: what conn.c and stream.c do with a connection's first bytes. */
static void test_accept(void) {
  fy_proxy_info info;
  char ip[64] = "127.0.0.1";
  int port = 1000;
  const char line[] = "PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\nGET / HTTP/1.1\r\n";
  CHECK(fy_proxy_protocol_accept((const uint8_t *)line, 10, &info, ip, sizeof ip, &port) == 0);
  CHECK(strcmp(ip, "127.0.0.1") == 0 && port == 1000); /* nothing taken from a partial header */
  int n = fy_proxy_protocol_accept((const uint8_t *)line, sizeof line - 1, &info, ip, sizeof ip, &port);
  CHECK(n == (int)strlen("PROXY TCP4 10.1.2.3 10.0.0.1 5555 80\r\n"));
  CHECK(strcmp(ip, "10.1.2.3") == 0 && port == 5555);
  const char unknown[] = "PROXY UNKNOWN\r\n";
  strcpy(ip, "127.0.0.1");
  CHECK(fy_proxy_protocol_accept((const uint8_t *)unknown, sizeof unknown - 1, &info, ip, sizeof ip, &port) >
        0);
  CHECK(strcmp(ip, "127.0.0.1") == 0); /* no addresses: the socket's stay */
  uint8_t junk[FY_PP_MAX_HEADER];
  memcpy(junk, "PROXY TCP4 ", 11);
  memset(junk + 11, '1', sizeof junk - 11);
  CHECK(fy_proxy_protocol_accept(junk, sizeof junk, &info, ip, sizeof ip, &port) < 0);
  CHECK(fy_proxy_protocol_accept((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &info, ip, sizeof ip, &port) < 0);
}

/* fy_addr_name: the text req.proxy and X-Forwarded-For carry, against inet_ntop. */
static void test_addr_name(void) {
  const char *ips[] = {"0.0.0.0",   "255.255.255.255", "10.0.0.5",      "192.168.100.9",
                       "1.20.3.40", "127.0.0.1",       "99.100.101.199"};
  for (size_t i = 0; i < sizeof ips / sizeof ips[0]; i++) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons(8080);
    CHECK(inet_pton(AF_INET, ips[i], &sin->sin_addr) == 1);
    char text[INET6_ADDRSTRLEN];
    int port = 0;
    fy_addr_name(&ss, text, sizeof text, &port);
    CHECK(strcmp(text, ips[i]) == 0);
    CHECK(port == 8080);
    char small[8];
    fy_addr_name(&ss, small, sizeof small, &port); /* cut, still terminated */
    CHECK(strlen(small) < sizeof small && strncmp(small, ips[i], strlen(small)) == 0);
  }
}

int main(void) {
  fy_proxy_info info;
  test_addr_name();
  CHECK(fy_proxy_protocol_parse(NULL, 0, &info) == 0);
  run_suite();
  exact_copies = true;
  run_suite();
  test_write_round_trip();
  test_accept();
  return check_done("test_proxy_protocol");
}
