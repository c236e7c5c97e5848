/*
 * Unit tests for core/sni.c: real ClientHellos captured from
 * `openssl s_client` (OpenSSL 3.0) against a python3 socket server that
 * saved the first bytes it received, hand-built ClientHellos for the edge
 * cases, every truncation, corrupted lengths and records split every way.
 *
 * The suite runs twice, the second time on malloc'ed copies of exactly the
 * input's length, so that an ASan build (-DFERRY_ASAN=ON) catches any read
 * past len.
 */
#include "check.h"
#include "sni.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

/* A length field of a captured ClientHello: offset from the record's start, width in bytes. */
typedef struct field {
  size_t off;
  int width;
  const char *what;
} field;

/* clang-format off */
/* openssl s_client -servername Metrics.Observability.Internal (TLS 1.3, one record) */
static const uint8_t hello_sni[336] = {
    0x16, 0x03, 0x01, 0x01, 0x4b, 0x01, 0x00, 0x01, 0x47, 0x03, 0x03, 0x42, 0x3a, 0xea, 0xdc, 0x5e,
    0x9c, 0x3b, 0xe2, 0x73, 0x74, 0x52, 0x66, 0x5e, 0xbe, 0x1d, 0xd4, 0x87, 0x40, 0xac, 0x11, 0x92,
    0xbb, 0xaa, 0x11, 0x37, 0x66, 0xc1, 0x73, 0xea, 0x65, 0xe2, 0x00, 0x20, 0x2b, 0x05, 0xbe, 0x5e,
    0x35, 0x3b, 0xd4, 0x55, 0x66, 0x67, 0xb4, 0x8d, 0x47, 0x84, 0xaf, 0x32, 0xdf, 0x6a, 0xa5, 0x14,
    0x9a, 0xfc, 0x52, 0x60, 0x7e, 0xf4, 0xc9, 0xfd, 0x15, 0xba, 0x94, 0x35, 0x00, 0x3e, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa,
    0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27,
    0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d,
    0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xc0,
    0x00, 0x00, 0x00, 0x23, 0x00, 0x21, 0x00, 0x00, 0x1e, 0x4d, 0x65, 0x74, 0x72, 0x69, 0x63, 0x73,
    0x2e, 0x4f, 0x62, 0x73, 0x65, 0x72, 0x76, 0x61, 0x62, 0x69, 0x6c, 0x69, 0x74, 0x79, 0x2e, 0x49,
    0x6e, 0x74, 0x65, 0x72, 0x6e, 0x61, 0x6c, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00,
    0x0a, 0x00, 0x16, 0x00, 0x14, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01,
    0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00,
    0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06,
    0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08,
    0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05,
    0x02, 0x06, 0x02, 0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01,
    0x00, 0x2d, 0x00, 0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20,
    0x1d, 0x8d, 0x8a, 0x14, 0xeb, 0x4b, 0x0a, 0x7b, 0x55, 0x2e, 0xdb, 0x84, 0xa2, 0xfe, 0x7e, 0xf8,
    0x82, 0x4c, 0x2e, 0x13, 0x8c, 0x28, 0x17, 0x3e, 0xe4, 0x9c, 0xce, 0x8e, 0xa2, 0x47, 0xcd, 0x1c,
};

static const field hello_sni_fields[] = {
    {3, 2, "record length"},
    {6, 3, "handshake length"},
    {43, 1, "session_id length"},
    {76, 2, "cipher_suites length"},
    {140, 1, "compression_methods length"},
    {142, 2, "extensions length"},
    {146, 2, "server_name extension length"},
    {148, 2, "server_name list length"},
    {151, 2, "host_name length"},
    {185, 2, "extension 0x000b length"},
    {193, 2, "extension 0x000a length"},
    {219, 2, "extension 0x0023 length"},
    {223, 2, "extension 0x0016 length"},
    {227, 2, "extension 0x0017 length"},
    {231, 2, "extension 0x000d length"},
    {277, 2, "extension 0x002b length"},
    {290, 2, "extension 0x002d length"},
    {296, 2, "extension 0x0033 length"},
};

/* openssl s_client -noservername */
static const uint8_t hello_nosni[297] = {
    0x16, 0x03, 0x01, 0x01, 0x24, 0x01, 0x00, 0x01, 0x20, 0x03, 0x03, 0x2c, 0x70, 0x1a, 0x98, 0xf7,
    0x9e, 0x2e, 0xc3, 0x2e, 0xb7, 0xef, 0xc6, 0x1b, 0x5d, 0x33, 0xab, 0x04, 0x6c, 0x99, 0x97, 0x22,
    0x94, 0xf4, 0xab, 0xfc, 0x78, 0x8e, 0x78, 0x26, 0x4c, 0x73, 0x86, 0x20, 0x00, 0x22, 0xca, 0xbf,
    0x1a, 0x91, 0x25, 0x13, 0x63, 0x05, 0xb3, 0x54, 0xe8, 0xd8, 0x91, 0x3a, 0x68, 0x15, 0x55, 0x3b,
    0x35, 0xc1, 0x0e, 0xcc, 0x3e, 0x56, 0x1c, 0xd9, 0xf8, 0x0a, 0x07, 0xbd, 0x00, 0x3e, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa,
    0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27,
    0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d,
    0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0x99,
    0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16, 0x00, 0x14, 0x00, 0x1d,
    0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01, 0x01, 0x02, 0x01, 0x03,
    0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x0d,
    0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03, 0x08, 0x07, 0x08, 0x08, 0x08, 0x09,
    0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06, 0x04, 0x01, 0x05, 0x01, 0x06, 0x01,
    0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02, 0x06, 0x02, 0x00, 0x2b, 0x00, 0x09,
    0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00, 0x2d, 0x00, 0x02, 0x01, 0x01, 0x00,
    0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0x29, 0xab, 0xf3, 0x62, 0xaa, 0x09, 0xae,
    0xec, 0x1f, 0x9c, 0x9e, 0x54, 0x29, 0xa5, 0x2f, 0x5a, 0xa8, 0x58, 0x26, 0x32, 0xee, 0x4c, 0x1a,
    0xff, 0x41, 0x6d, 0x5e, 0x89, 0x10, 0x3a, 0xf6, 0x4f,
};

static const field hello_nosni_fields[] = {
    {3, 2, "record length"},
    {6, 3, "handshake length"},
    {43, 1, "session_id length"},
    {76, 2, "cipher_suites length"},
    {140, 1, "compression_methods length"},
    {142, 2, "extensions length"},
    {146, 2, "extension 0x000b length"},
    {154, 2, "extension 0x000a length"},
    {180, 2, "extension 0x0023 length"},
    {184, 2, "extension 0x0016 length"},
    {188, 2, "extension 0x0017 length"},
    {192, 2, "extension 0x000d length"},
    {238, 2, "extension 0x002b length"},
    {251, 2, "extension 0x002d length"},
    {257, 2, "extension 0x0033 length"},
};

/* openssl s_client -servername logs.observability.internal -alpn h2,http/1.1 */
static const uint8_t hello_alpn[351] = {
    0x16, 0x03, 0x01, 0x01, 0x5a, 0x01, 0x00, 0x01, 0x56, 0x03, 0x03, 0x91, 0x2a, 0xd1, 0xd9, 0x1e,
    0x35, 0x76, 0xf9, 0xe5, 0x4d, 0x2d, 0x75, 0xef, 0x17, 0x33, 0xa2, 0x8c, 0x29, 0xf7, 0x39, 0x15,
    0xbf, 0xef, 0xf9, 0xea, 0x16, 0x78, 0x87, 0x9e, 0x0c, 0x0d, 0x60, 0x20, 0x08, 0x22, 0x0e, 0x0f,
    0xe7, 0x30, 0x25, 0x84, 0x87, 0x1e, 0x2d, 0x98, 0xbd, 0x80, 0x4f, 0x23, 0x84, 0x24, 0x3f, 0x4a,
    0x86, 0x11, 0xf8, 0xe1, 0xee, 0x4c, 0xeb, 0xcb, 0xdb, 0x94, 0x91, 0x0c, 0x00, 0x3e, 0x13, 0x02,
    0x13, 0x03, 0x13, 0x01, 0xc0, 0x2c, 0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa,
    0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e, 0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27,
    0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14, 0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d,
    0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c, 0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0xcf,
    0x00, 0x00, 0x00, 0x20, 0x00, 0x1e, 0x00, 0x00, 0x1b, 0x6c, 0x6f, 0x67, 0x73, 0x2e, 0x6f, 0x62,
    0x73, 0x65, 0x72, 0x76, 0x61, 0x62, 0x69, 0x6c, 0x69, 0x74, 0x79, 0x2e, 0x69, 0x6e, 0x74, 0x65,
    0x72, 0x6e, 0x61, 0x6c, 0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x16,
    0x00, 0x14, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x01, 0x00, 0x01, 0x01,
    0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0x00, 0x23, 0x00, 0x00, 0x00, 0x10, 0x00, 0x0e, 0x00, 0x0c,
    0x02, 0x68, 0x32, 0x08, 0x68, 0x74, 0x74, 0x70, 0x2f, 0x31, 0x2e, 0x31, 0x00, 0x16, 0x00, 0x00,
    0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03,
    0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06,
    0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02,
    0x06, 0x02, 0x00, 0x2b, 0x00, 0x09, 0x08, 0x03, 0x04, 0x03, 0x03, 0x03, 0x02, 0x03, 0x01, 0x00,
    0x2d, 0x00, 0x02, 0x01, 0x01, 0x00, 0x33, 0x00, 0x26, 0x00, 0x24, 0x00, 0x1d, 0x00, 0x20, 0x6f,
    0x9b, 0xc4, 0x1d, 0x3f, 0x2f, 0xac, 0x5e, 0x05, 0x0b, 0x33, 0x36, 0xde, 0x98, 0xad, 0x1c, 0x9e,
    0x51, 0x91, 0x0d, 0x1c, 0xd1, 0xc0, 0x0d, 0x93, 0xdb, 0x93, 0x98, 0x94, 0xcb, 0xfb, 0x31,
};

static const field hello_alpn_fields[] = {
    {3, 2, "record length"},
    {6, 3, "handshake length"},
    {43, 1, "session_id length"},
    {76, 2, "cipher_suites length"},
    {140, 1, "compression_methods length"},
    {142, 2, "extensions length"},
    {146, 2, "server_name extension length"},
    {148, 2, "server_name list length"},
    {151, 2, "host_name length"},
    {182, 2, "extension 0x000b length"},
    {190, 2, "extension 0x000a length"},
    {216, 2, "extension 0x0023 length"},
    {220, 2, "ALPN extension length"},
    {222, 2, "ALPN list length"},
    {224, 1, "ALPN protocol length"},
    {227, 1, "ALPN protocol length"},
    {238, 2, "extension 0x0016 length"},
    {242, 2, "extension 0x0017 length"},
    {246, 2, "extension 0x000d length"},
    {292, 2, "extension 0x002b length"},
    {305, 2, "extension 0x002d length"},
    {311, 2, "extension 0x0033 length"},
};

/* openssl s_client -servername traces.observability.internal -tls1_2 */
static const uint8_t hello_tls12[226] = {
    0x16, 0x03, 0x01, 0x00, 0xdd, 0x01, 0x00, 0x00, 0xd9, 0x03, 0x03, 0xe2, 0x2b, 0xf7, 0x60, 0x36,
    0x0c, 0x0c, 0x88, 0xb6, 0xc8, 0x68, 0xc0, 0x1c, 0xe9, 0x6c, 0x76, 0x3f, 0x5c, 0x3c, 0x66, 0xe6,
    0x2d, 0xc6, 0x18, 0x86, 0x1d, 0x19, 0x5b, 0xc8, 0xa0, 0x3a, 0x01, 0x00, 0x00, 0x38, 0xc0, 0x2c,
    0xc0, 0x30, 0x00, 0x9f, 0xcc, 0xa9, 0xcc, 0xa8, 0xcc, 0xaa, 0xc0, 0x2b, 0xc0, 0x2f, 0x00, 0x9e,
    0xc0, 0x24, 0xc0, 0x28, 0x00, 0x6b, 0xc0, 0x23, 0xc0, 0x27, 0x00, 0x67, 0xc0, 0x0a, 0xc0, 0x14,
    0x00, 0x39, 0xc0, 0x09, 0xc0, 0x13, 0x00, 0x33, 0x00, 0x9d, 0x00, 0x9c, 0x00, 0x3d, 0x00, 0x3c,
    0x00, 0x35, 0x00, 0x2f, 0x00, 0xff, 0x01, 0x00, 0x00, 0x78, 0x00, 0x00, 0x00, 0x22, 0x00, 0x20,
    0x00, 0x00, 0x1d, 0x74, 0x72, 0x61, 0x63, 0x65, 0x73, 0x2e, 0x6f, 0x62, 0x73, 0x65, 0x72, 0x76,
    0x61, 0x62, 0x69, 0x6c, 0x69, 0x74, 0x79, 0x2e, 0x69, 0x6e, 0x74, 0x65, 0x72, 0x6e, 0x61, 0x6c,
    0x00, 0x0b, 0x00, 0x04, 0x03, 0x00, 0x01, 0x02, 0x00, 0x0a, 0x00, 0x0c, 0x00, 0x0a, 0x00, 0x1d,
    0x00, 0x17, 0x00, 0x1e, 0x00, 0x19, 0x00, 0x18, 0x00, 0x23, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00,
    0x00, 0x17, 0x00, 0x00, 0x00, 0x0d, 0x00, 0x2a, 0x00, 0x28, 0x04, 0x03, 0x05, 0x03, 0x06, 0x03,
    0x08, 0x07, 0x08, 0x08, 0x08, 0x09, 0x08, 0x0a, 0x08, 0x0b, 0x08, 0x04, 0x08, 0x05, 0x08, 0x06,
    0x04, 0x01, 0x05, 0x01, 0x06, 0x01, 0x03, 0x03, 0x03, 0x01, 0x03, 0x02, 0x04, 0x02, 0x05, 0x02,
    0x06, 0x02,
};

static const field hello_tls12_fields[] = {
    {3, 2, "record length"},
    {6, 3, "handshake length"},
    {43, 1, "session_id length"},
    {44, 2, "cipher_suites length"},
    {102, 1, "compression_methods length"},
    {104, 2, "extensions length"},
    {108, 2, "server_name extension length"},
    {110, 2, "server_name list length"},
    {113, 2, "host_name length"},
    {146, 2, "extension 0x000b length"},
    {154, 2, "extension 0x000a length"},
    {170, 2, "extension 0x0023 length"},
    {174, 2, "extension 0x0016 length"},
    {178, 2, "extension 0x0017 length"},
    {182, 2, "extension 0x000d length"},
};

/* clang-format on */

static bool exact_copies;

static int peek(const void *data, size_t len, fy_sni_info *out) {
  if (!exact_copies) return fy_sni_peek(data, len, out);
  uint8_t *copy = malloc(len);
  if (len > 0) memcpy(copy, data, len);
  int rc = fy_sni_peek(copy, len, out);
  free(copy);
  return rc;
}

/* Every proper prefix asks for more bytes; bytes after the hello change nothing. */
static bool prefixes_need_more(const uint8_t *b, size_t n, int want) {
  fy_sni_info info;
  for (size_t k = 0; k < n; k++)
    if (peek(b, k, &info) != 0) return false;
  uint8_t *more = malloc(n + 6);
  memcpy(more, b, n);
  memcpy(more + n, "\x17\x03\x03\x00\x01\x00", 6); /* an application data record */
  int rc = peek(more, n + 6, &info);
  free(more);
  return rc == want;
}

/* ---- building ClientHellos ----------------------------------------------- */

typedef struct bytes {
  uint8_t b[40000];
  size_t n;
} bytes;

static void put(bytes *m, const void *p, size_t n) {
  memcpy(m->b + m->n, p, n);
  m->n += n;
}

static void put_uint(bytes *m, size_t v, int width) {
  for (int i = width - 1; i >= 0; i--)
    m->b[m->n++] = (uint8_t)(v >> (8 * i));
}

static void ext_raw(bytes *e, uint16_t type, const void *v, size_t n) {
  put_uint(e, type, 2);
  put_uint(e, n, 2);
  put(e, v, n);
}

static void ext_sni_bytes(bytes *e, const void *name, size_t n) {
  put_uint(e, 0, 2);     /* server_name */
  put_uint(e, n + 5, 2); /* extension length */
  put_uint(e, n + 3, 2); /* list length */
  put_uint(e, 0, 1);     /* host_name */
  put_uint(e, n, 2);
  put(e, name, n);
}

static void ext_sni(bytes *e, const char *name) { ext_sni_bytes(e, name, strlen(name)); }

static void ext_alpn(bytes *e, const char *const *protos, size_t count) {
  size_t list = 0;
  for (size_t i = 0; i < count; i++)
    list += 1 + strlen(protos[i]);
  put_uint(e, 16, 2);
  put_uint(e, list + 2, 2);
  put_uint(e, list, 2);
  for (size_t i = 0; i < count; i++) {
    put_uint(e, strlen(protos[i]), 1);
    put(e, protos[i], strlen(protos[i]));
  }
}

/* A ClientHello handshake message around an extensions block, or with none when exts is NULL. */
static void client_hello(bytes *hs, const bytes *exts) {
  static const uint8_t random[32] = {0x5a};
  static const uint8_t suites[] = {0x00, 0x04, 0x13, 0x01, 0x13, 0x02};
  size_t body = 2 + 32 + 1 + sizeof suites + 2 + (exts ? 2 + exts->n : 0);
  hs->n = 0;
  put_uint(hs, 1, 1);
  put_uint(hs, body, 3);
  put_uint(hs, 0x0303, 2);
  put(hs, random, sizeof random);
  put_uint(hs, 0, 1); /* session id */
  put(hs, suites, sizeof suites);
  put(hs, "\x01\x00", 2); /* compression: null */
  if (exts != NULL) {
    put_uint(hs, exts->n, 2);
    put(hs, exts->b, exts->n);
  }
}

/* Wraps a handshake message in TLS records of at most chunk bytes each. */
static void records(bytes *out, const uint8_t *hs, size_t n, size_t chunk) {
  out->n = 0;
  for (size_t off = 0; off < n; off += chunk) {
    size_t len = n - off < chunk ? n - off : chunk;
    put(out, "\x16\x03\x01", 3);
    put_uint(out, len, 2);
    put(out, hs + off, len);
  }
}

static int peek_hello(const bytes *exts, fy_sni_info *out) {
  static bytes hs, rec;
  client_hello(&hs, exts);
  records(&rec, hs.b, hs.n, 16384);
  return peek(rec.b, rec.n, out);
}

static int peek_name(const char *name, fy_sni_info *out) {
  bytes e = {.n = 0};
  ext_sni(&e, name);
  return peek_hello(&e, out);
}

/* ---- captured hellos ----------------------------------------------------- */

static void test_captured(void) {
  fy_sni_info info;
  CHECK(peek(hello_sni, sizeof hello_sni, &info) == (int)sizeof hello_sni);
  CHECK(strcmp(info.sni, "metrics.observability.internal") == 0 && info.sni_len == 30);
  CHECK(info.alpn_count == 0 && !info.alpn_truncated);
  CHECK(info.client_version == 0x0303 && info.records == 1 && info.hello_bytes == sizeof hello_sni);
  CHECK(prefixes_need_more(hello_sni, sizeof hello_sni, sizeof hello_sni));

  CHECK(peek(hello_nosni, sizeof hello_nosni, &info) == FY_SNI_ENONE);
  CHECK(info.sni[0] == '\0' && info.sni_len == 0 && info.hello_bytes == sizeof hello_nosni);
  CHECK(prefixes_need_more(hello_nosni, sizeof hello_nosni, FY_SNI_ENONE));

  CHECK(peek(hello_alpn, sizeof hello_alpn, &info) == (int)sizeof hello_alpn);
  CHECK(strcmp(info.sni, "logs.observability.internal") == 0);
  CHECK(info.alpn_count == 2 && !info.alpn_truncated);
  CHECK(strcmp(info.alpn[0], "h2") == 0 && strcmp(info.alpn[1], "http/1.1") == 0);
  CHECK(prefixes_need_more(hello_alpn, sizeof hello_alpn, sizeof hello_alpn));

  CHECK(peek(hello_tls12, sizeof hello_tls12, &info) == (int)sizeof hello_tls12);
  CHECK(strcmp(info.sni, "traces.observability.internal") == 0);
  CHECK(prefixes_need_more(hello_tls12, sizeof hello_tls12, sizeof hello_tls12));
}

/* ---- records -------------------------------------------------------------- */

static void test_fragmented(void) {
  const uint8_t *hs = hello_sni + 5;
  size_t n = sizeof hello_sni - 5;
  static bytes rec;
  fy_sni_info info;
  /* split in two at every point, the handshake header itself included */
  bool all_ok = true;
  for (size_t at = 1; at < n; at++) {
    rec.n = 0;
    put(&rec, "\x16\x03\x01", 3);
    put_uint(&rec, at, 2);
    put(&rec, hs, at);
    put(&rec, "\x16\x03\x03", 3); /* later records may carry another version */
    put_uint(&rec, n - at, 2);
    put(&rec, hs + at, n - at);
    int rc = peek(rec.b, rec.n, &info);
    all_ok = all_ok && rc == (int)rec.n && info.records == 2 &&
             strcmp(info.sni, "metrics.observability.internal") == 0;
    if (at % 37 == 1) CHECK(prefixes_need_more(rec.b, rec.n, (int)rec.n));
  }
  CHECK(all_ok);
  /* any record size, up to FY_SNI_MAX_RECORDS records */
  all_ok = true;
  for (size_t chunk = 1; chunk <= n; chunk++) {
    records(&rec, hs, n, chunk);
    size_t count = (n + chunk - 1) / chunk;
    int rc = peek(rec.b, rec.n, &info);
    all_ok = all_ok &&
             (count <= FY_SNI_MAX_RECORDS ? rc == (int)rec.n && info.records == count : rc == FY_SNI_ETOOBIG);
  }
  CHECK(all_ok);
  /* a record of another type, or a bad version, inside the hello */
  records(&rec, hs, n, 200);
  rec.b[5 + 200] = 21; /* alert */
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  CHECK(peek(rec.b, 5 + 200 + 1, &info) == FY_SNI_EMALFORMED);
  records(&rec, hs, n, 200);
  rec.b[5 + 200 + 2] = 4;
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  /* the hello must end where a record ends */
  records(&rec, hs, n, 16384);
  put(&rec, "\x00", 1);
  rec.b[4]++;
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  /* a hello longer than the record waits for the next one */
  CHECK(peek(hello_sni, sizeof hello_sni - 1, &info) == 0);
}

static void test_records(void) {
  fy_sni_info info;
  uint8_t b[sizeof hello_sni];
  memcpy(b, hello_sni, sizeof b);
  b[3] = 0, b[4] = 0; /* empty record */
  CHECK(peek(b, sizeof b, &info) == FY_SNI_EMALFORMED);
  b[3] = 0x40, b[4] = 0x01; /* 16385 bytes */
  CHECK(peek(b, 5, &info) == FY_SNI_EMALFORMED);
  memcpy(b, hello_sni, sizeof b);
  b[5] = 2; /* a ServerHello */
  CHECK(peek(b, 6, &info) == FY_SNI_ENOTHELLO);
  CHECK(peek(b, sizeof b, &info) == FY_SNI_ENOTHELLO);
  /* a handshake length beyond FY_SNI_MAX_HELLO is refused from its header */
  memcpy(b, hello_sni, sizeof b);
  b[6] = 0x00, b[7] = 0x80, b[8] = 0x00;
  CHECK(peek(b, 9, &info) == FY_SNI_ETOOBIG);
  b[7] = 0x7f, b[8] = 0xfc;
  CHECK(peek(b, sizeof b, &info) == 0); /* exactly the limit: wait for it */
}

/* The largest hello in the most records fits FY_SNI_MAX_PEEK exactly; anything more is refused. */
static void test_limits(void) {
  static bytes e, hs, rec;
  static uint8_t pad[FY_SNI_MAX_HELLO];
  fy_sni_info info;
  e.n = 0;
  ext_sni(&e, "a.test");
  ext_raw(&e, 0x0015, pad, FY_SNI_MAX_HELLO - 49 - e.n - 4);
  client_hello(&hs, &e);
  CHECK(hs.n == FY_SNI_MAX_HELLO);
  records(&rec, hs.b, hs.n, FY_SNI_MAX_HELLO / FY_SNI_MAX_RECORDS);
  CHECK(rec.n == FY_SNI_MAX_PEEK);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_MAX_PEEK && info.records == FY_SNI_MAX_RECORDS);
  CHECK(strcmp(info.sni, "a.test") == 0);
  CHECK(prefixes_need_more(rec.b, rec.n, FY_SNI_MAX_PEEK));
  /* one byte more: refused from the handshake header */
  e.n = 0;
  ext_sni(&e, "a.test");
  ext_raw(&e, 0x0015, pad, FY_SNI_MAX_HELLO - 49 - e.n - 4 + 1);
  client_hello(&hs, &e);
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, 9, &info) == FY_SNI_ETOOBIG);
  /*
   * Records so small that the hello is unfinished after FY_SNI_MAX_RECORDS:
   * refused as soon as the last allowed record is complete, so a caller
   * holding FY_SNI_MAX_PEEK bytes never hears "need more".
   */
  records(&rec, hello_sni + 5, sizeof hello_sni - 5, 10);
  size_t last = (size_t)FY_SNI_MAX_RECORDS * 15;
  CHECK(peek(rec.b, last - 1, &info) == 0);
  CHECK(peek(rec.b, last, &info) == FY_SNI_ETOOBIG);
}

static void test_not_tls(void) {
  fy_sni_info info;
  CHECK(peek("", 0, &info) == 0);
  CHECK(peek("\x16", 1, &info) == 0);
  CHECK(peek("\x16\x03", 2, &info) == 0);
  CHECK(peek("GET / HTTP/1.1\r\n", 16, &info) == FY_SNI_ENOTTLS);
  CHECK(peek("G", 1, &info) == FY_SNI_ENOTTLS);
  CHECK(peek("PROXY TCP4 ", 11, &info) == FY_SNI_ENOTTLS);
  CHECK(peek("\x80\x2e\x01\x03\x01", 5, &info) == FY_SNI_ENOTTLS); /* SSLv2-style hello */
  CHECK(peek("\x17\x03\x03\x00\x10", 5, &info) == FY_SNI_ENOTTLS); /* application data */
  CHECK(peek("\x16\x02\x00", 3, &info) == FY_SNI_ENOTTLS);
  CHECK(peek("\x16\x03\x00", 3, &info) == FY_SNI_ENOTTLS); /* SSL 3.0 */
  CHECK(peek("\x16\x03\x04", 3, &info) == FY_SNI_ENOTTLS); /* no record says 1.3 */
  CHECK(peek("\x16\x03\x02\x00", 4, &info) == 0);
}

/* ---- corrupted lengths ---------------------------------------------------- */

static size_t get_field(const uint8_t *b, const field *f) {
  size_t v = 0;
  for (int i = 0; i < f->width; i++)
    v = v << 8 | b[f->off + i];
  return v;
}

static void set_field(uint8_t *b, const field *f, size_t v) {
  for (int i = f->width - 1, k = 0; i >= 0; i--, k++)
    b[f->off + k] = (uint8_t)(v >> (8 * i));
}

/*
 * Each length off by one either way, zero, or all ones. Inner lengths must
 * be refused outright; the record and handshake lengths may instead make the
 * hello look unfinished, but never valid.
 */
static void corrupt_lengths(const uint8_t *hello, size_t n, const field *fields, size_t nfields) {
  uint8_t *b = malloc(n);
  fy_sni_info info;
  for (size_t i = 0; i < nfields; i++) {
    const field *f = &fields[i];
    size_t orig = get_field(hello, f), max = ((size_t)1 << (8 * f->width)) - 1;
    size_t values[] = {orig + 1, orig - 1, 0, max};
    bool outer = f->off < 9;
    for (size_t v = 0; v < sizeof values / sizeof values[0]; v++) {
      if (values[v] > max || values[v] == orig) continue;
      memcpy(b, hello, n);
      set_field(b, f, values[v]);
      int rc = peek(b, n, &info);
      bool ok = outer ? rc <= 0 && rc != FY_SNI_ENONE : rc < 0 && rc != FY_SNI_ENONE;
      if (!ok) fprintf(stderr, "%s = %zu: got %d\n", f->what, values[v], rc);
      CHECK(ok);
      for (size_t k = 0; k < n; k++)
        peek(b, k, &info); /* under ASan: no read past k */
    }
  }
  free(b);
}

static void test_corrupted(void) {
  corrupt_lengths(hello_sni, sizeof hello_sni, hello_sni_fields, sizeof hello_sni_fields / sizeof(field));
  corrupt_lengths(hello_nosni, sizeof hello_nosni, hello_nosni_fields,
                  sizeof hello_nosni_fields / sizeof(field));
  corrupt_lengths(hello_alpn, sizeof hello_alpn, hello_alpn_fields, sizeof hello_alpn_fields / sizeof(field));
  corrupt_lengths(hello_tls12, sizeof hello_tls12, hello_tls12_fields,
                  sizeof hello_tls12_fields / sizeof(field));
  /* any byte inverted: the answer may be anything but must stay within len */
  uint8_t b[sizeof hello_alpn];
  fy_sni_info info;
  bool bounded = true;
  for (size_t i = 0; i < sizeof b; i++) {
    memcpy(b, hello_alpn, sizeof b);
    b[i] ^= 0xff;
    bounded = bounded && peek(b, sizeof b, &info) <= (int)sizeof b;
  }
  CHECK(bounded);
}

/* ---- ClientHello fields --------------------------------------------------- */

static void test_structure(void) {
  fy_sni_info info;
  static bytes hs, rec;
  bytes e = {.n = 0};
  /* no extensions block at all, and an empty one */
  client_hello(&hs, NULL);
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_ENONE && info.hello_bytes == rec.n);
  CHECK(peek_hello(&e, &info) == FY_SNI_ENONE);
  /* extensions that do not fill their block exactly */
  ext_sni(&e, "a.test");
  client_hello(&hs, &e);
  hs.b[hs.n - e.n - 1] -= 1; /* the block claims one byte less */
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  /* session id longer than 32, odd or empty cipher suites, no compression */
  client_hello(&hs, &e);
  hs.b[38] = 33;
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  client_hello(&hs, &e);
  hs.b[40] = 3;
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  client_hello(&hs, &e);
  hs.b[40] = 0;
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  client_hello(&hs, &e);
  hs.b[45] = 0;
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  /* a version that is not 3.x */
  client_hello(&hs, &e);
  hs.b[4] = 2;
  records(&rec, hs.b, hs.n, 16384);
  CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  /* cut inside the fixed fields */
  client_hello(&hs, NULL);
  for (size_t body = 0; body < 42; body++) {
    hs.b[1] = 0, hs.b[2] = 0, hs.b[3] = (uint8_t)body;
    records(&rec, hs.b, 4 + body, 16384);
    CHECK(peek(rec.b, rec.n, &info) == FY_SNI_EMALFORMED);
  }
}

static void test_server_name(void) {
  fy_sni_info info;
  bytes e = {.n = 0};
  CHECK(peek_name("Metrics.Observability.INTERNAL", &info) > 0);
  CHECK(strcmp(info.sni, "metrics.observability.internal") == 0);
  CHECK(peek_name("a", &info) > 0 && strcmp(info.sni, "a") == 0);
  CHECK(peek_name("_svc.x-1.test", &info) > 0);
  CHECK(peek_name("10.0.0.1", &info) > 0); /* the characters of a name, so let it through */
  char name[300];
  memset(name, 'a', sizeof name);
  for (size_t i = 63; i < 253; i += 64)
    name[i] = '.';
  name[253] = '\0';
  CHECK(peek_name(name, &info) > 0 && info.sni_len == 253); /* the longest DNS name */
  name[253] = 'a', name[254] = '\0';
  CHECK(peek_name(name, &info) == FY_SNI_EBADNAME);
  memset(name, 'a', 64);
  name[64] = '\0';
  CHECK(peek_name(name, &info) == FY_SNI_EBADNAME); /* a 64-byte label */
  name[63] = '\0';
  CHECK(peek_name(name, &info) > 0);
  static const char *const bad[] = {"a..b", ".a",    "a.",   "-a.test", "a-.test", "a.-b", "a b",
                                    "a/b",  "a:443", "a\\b", "[::1]",   "\x7f",    "a%b",  "*.test"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    CHECK(peek_name(bad[i], &info) == FY_SNI_EBADNAME);
  ext_sni_bytes(&e, "a\0b", 3);
  CHECK(peek_hello(&e, &info) == FY_SNI_EBADNAME);
  e.n = 0;
  ext_sni_bytes(&e, "caf\xc3\xa9.test", 10);
  CHECK(peek_hello(&e, &info) == FY_SNI_EBADNAME);
  /* an empty name, and an empty extension */
  e.n = 0;
  ext_sni(&e, "");
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_raw(&e, 0, "", 0);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  /* a name type other than host_name, two names, two extensions */
  e.n = 0;
  ext_raw(&e, 0, "\x00\x04\x01\x00\x01x", 6);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_raw(&e, 0, "\x00\x08\x00\x00\x01x\x00\x00\x01y", 10);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_sni(&e, "a.test");
  ext_sni(&e, "b.test");
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  /* the list length and the extension length disagree */
  e.n = 0;
  ext_raw(&e, 0, "\x00\x05\x00\x00\x01x", 6);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_raw(&e, 0, "\x00\x04\x00\x00\x02x", 6);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  /* other extensions around it are skipped */
  e.n = 0;
  ext_raw(&e, 0x0a0a, "", 0); /* GREASE */
  ext_raw(&e, 0x002b, "\x04\x03\x04\x03\x03", 5);
  ext_sni(&e, "z.test");
  ext_raw(&e, 0x0015, "\0\0\0\0\0\0\0\0", 8); /* padding */
  CHECK(peek_hello(&e, &info) > 0 && strcmp(info.sni, "z.test") == 0);
  /* an extension whose length runs past the block */
  e.n = 0;
  ext_raw(&e, 0x0015, "\0\0\0\0", 4);
  e.b[3] = 5;
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  put(&e, "\x00\x15\x00", 3); /* an extension header cut short */
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
}

static void test_alpn(void) {
  fy_sni_info info;
  bytes e = {.n = 0};
  static const char *const five[] = {"h2", "http/1.1", "spdy/3", "h3", "acme-tls/1"};
  ext_alpn(&e, five, 5);
  ext_sni(&e, "a.test");
  CHECK(peek_hello(&e, &info) > 0);
  CHECK(info.alpn_count == FY_SNI_ALPN_MAX && info.alpn_truncated);
  CHECK(strcmp(info.alpn[0], "h2") == 0 && strcmp(info.alpn[3], "h3") == 0);
  /* a name too long to keep is left out; the others stay in order */
  char longp[40];
  memset(longp, 'p', sizeof longp - 1);
  longp[sizeof longp - 1] = '\0';
  const char *const mixed[] = {longp, "h2", "\x01\x02"};
  e.n = 0;
  ext_alpn(&e, mixed, 3);
  CHECK(peek_hello(&e, &info) == FY_SNI_ENONE);
  CHECK(info.alpn_count == 1 && info.alpn_truncated && strcmp(info.alpn[0], "h2") == 0);
  /* empty names, an empty list, a list cut short, two ALPN extensions */
  e.n = 0;
  ext_raw(&e, 16, "\x00\x03\x02h2\x00", 6);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_raw(&e, 16, "\x00\x04\x02h2\x00", 6);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_raw(&e, 16, "\x00\x00", 2);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_raw(&e, 16, "\x00\x04\x05h2", 5);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
  e.n = 0;
  ext_alpn(&e, five, 1);
  ext_alpn(&e, five, 1);
  CHECK(peek_hello(&e, &info) == FY_SNI_EMALFORMED);
}

static void test_strerror(void) {
  for (int e = FY_SNI_ENONE; e >= FY_SNI_ETOOBIG; e--) {
    const char *s = fy_sni_strerror(e);
    CHECK(s != NULL && (strstr(s, "TLS") != NULL || strstr(s, "ClientHello") != NULL));
    for (int o = FY_SNI_ENONE; o > e; o--)
      CHECK(strcmp(s, fy_sni_strerror(o)) != 0);
  }
}

static void run_suite(void) {
  test_captured();
  test_fragmented();
  test_records();
  test_limits();
  test_not_tls();
  test_corrupted();
  test_structure();
  test_server_name();
  test_alpn();
  test_strerror();
}

int main(void) {
  run_suite();
  exact_copies = true;
  run_suite();
  return check_done("test_sni");
}
