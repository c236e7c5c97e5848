/*
 * libFuzzer target for core/sni.c. Besides running the ClientHello peek
 * under ASan and UBSan on arbitrary bytes, it checks the contract a `tcp`
 * listener relies on:
 *   - a result is never more than len, nor more than FY_SNI_MAX_PEEK, and
 *     FY_SNI_MAX_PEEK bytes always get an answer other than "need more";
 *   - the same bytes always give the same result and the same fy_sni_info;
 *   - a shorter prefix gives 0 (need more), the same answer if it still
 *     holds the whole ClientHello, or the same error: calling again as
 *     bytes arrive is safe;
 *   - a server name found is a lower-case host name of sni_len bytes, and
 *     ALPN names are printable and NUL-terminated.
 */
#include "sni.h"

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

static void check_info(const fy_sni_info *in, int rc) {
  REQUIRE(in->hello_bytes > 0 && in->records >= 1 && in->records <= FY_SNI_MAX_RECORDS);
  REQUIRE(rc == FY_SNI_ENONE || (size_t)rc == in->hello_bytes);
  REQUIRE(strnlen(in->sni, sizeof in->sni) == in->sni_len && (rc > 0) == (in->sni_len > 0));
  for (size_t i = 0; i < in->sni_len; i++) {
    char c = in->sni[i];
    REQUIRE((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.');
  }
  REQUIRE(in->alpn_count <= FY_SNI_ALPN_MAX);
  for (unsigned i = 0; i < in->alpn_count; i++) {
    size_t n = strnlen(in->alpn[i], FY_SNI_ALPN_SIZE);
    REQUIRE(n > 0 && n < FY_SNI_ALPN_SIZE);
  }
}

/* What peeking at only the first k bytes must give, knowing the whole gave rc. */
static void check_prefix(const uint8_t *data, size_t k, int rc, size_t hello_bytes) {
  fy_sni_info info;
  int p = fy_sni_peek(data, k, &info);
  if (rc > 0 || rc == FY_SNI_ENONE)
    REQUIRE(hello_bytes <= k ? p == rc : p == 0);
  else
    REQUIRE(p == 0 || p == rc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fy_sni_info a, b;
  int rc = fy_sni_peek(data, size, &a);
  REQUIRE(rc <= (int)size && rc <= FY_SNI_MAX_PEEK);
  REQUIRE(rc != 0 || size < FY_SNI_MAX_PEEK); /* a caller may cap its buffer there */
  REQUIRE(rc >= 0 || (rc <= FY_SNI_ENONE && rc >= FY_SNI_ETOOBIG));
  REQUIRE(fy_sni_peek(data, size, &b) == rc);
  REQUIRE(rc >= 0 || fy_sni_strerror(rc) != NULL);
  if (rc > 0 || rc == FY_SNI_ENONE) {
    REQUIRE(memcmp(&a, &b, sizeof a) == 0);
    check_info(&a, rc);
    REQUIRE(fy_sni_peek(data, a.hello_bytes, &b) == rc && memcmp(&a, &b, sizeof a) == 0);
  }
  if (size > 0) check_prefix(data, size - 1, rc, a.hello_bytes);
  check_prefix(data, size / 2, rc, a.hello_bytes);
  return 0;
}
