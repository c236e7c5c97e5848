/*
 * libFuzzer target for core/proxy_protocol.c. Besides running the parser
 * under ASan and UBSan on arbitrary bytes, it checks the contract the
 * listener relies on:
 *   - a result is never more than len, nor more than FY_PP_MAX_HEADER, and
 *     FY_PP_MAX_HEADER bytes always get an answer other than "need more";
 *   - the same bytes always give the same result and the same fy_proxy_info;
 *   - a header parses the same on its own as with data after it;
 *   - a shorter prefix gives 0 (need more), the same header, or the same
 *     error, never a different verdict: calling again as bytes arrive is safe;
 *   - a parsed header has printable, NUL-terminated strings.
 */
#include "proxy_protocol.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REQUIRE(cond)                                                                                        \
  do {                                                                                                       \
    if (!(cond)) {                                                                                           \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond);                           \
      abort();                                                                                               \
    }                                                                                                        \
  } while (0)

static void check_text(const char *s, size_t size) {
  size_t n = strnlen(s, size);
  REQUIRE(n < size);
  for (size_t i = 0; i < n; i++)
    REQUIRE(s[i] > 0x20 && s[i] < 0x7f);
}

/* What parsing only the first k bytes must give, knowing the whole gave rc. */
static void check_prefix(const uint8_t *data, size_t k, int rc) {
  fy_proxy_info info;
  int p = fy_proxy_protocol_parse(data, k, &info);
  if (rc > 0)
    REQUIRE((size_t)rc <= k ? p == rc : p == 0);
  else
    REQUIRE(p == 0 || p == rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fy_proxy_info a, b;
  int rc = fy_proxy_protocol_parse(data, size, &a);
  REQUIRE(rc <= (int)size && rc <= FY_PP_MAX_HEADER);
  REQUIRE(rc != 0 || size < FY_PP_MAX_HEADER); /* a caller may cap its buffer there */
  REQUIRE(rc >= 0 || (rc <= FY_PP_ENOTPROXY && rc >= FY_PP_EVPCE));
  REQUIRE(fy_proxy_protocol_parse(data, size, &b) == rc);
  REQUIRE(rc >= 0 || fy_proxy_protocol_strerror(rc) != NULL);
  if (rc > 0) {
    REQUIRE(memcmp(&a, &b, sizeof a) == 0);
    REQUIRE(fy_proxy_protocol_parse(data, (size_t)rc, &b) == rc && memcmp(&a, &b, sizeof a) == 0);
    REQUIRE(a.version == 1 || a.version == 2);
    REQUIRE(a.family == AF_INET || a.family == AF_INET6 || a.family == AF_UNSPEC);
    REQUIRE(a.src.ss_family == (a.family == AF_UNSPEC ? 0 : a.family));
    REQUIRE(!a.local || (a.version == 2 && a.family == AF_UNSPEC));
    check_text(a.vpce_id, sizeof a.vpce_id);
    check_text(a.authority, sizeof a.authority);
    check_text(a.alpn, sizeof a.alpn);
  }
  if (size > 0) check_prefix(data, size - 1, rc);
  check_prefix(data, size / 2, rc);
  return 0;
}
