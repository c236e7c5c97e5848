/*
 * A peek at the TLS ClientHello a client sends first, for `tcp` listeners
 * that pass TLS through without terminating it: the server name (SNI) picks
 * the upstream group in route_stream(), and the offered ALPN protocols are
 * there for policy and logs.
 *
 * Like proxy_protocol.h this unit is pure: no allocation, no I/O, no global
 * state, never a read past the length given. The caller keeps the bytes it
 * has read, calls fy_sni_peek() again each time more arrive, and forwards
 * all of them unchanged to the upstream once it has an answer; nothing here
 * consumes input. A ClientHello split across several TLS records is
 * reassembled in place (RFC 8446 5.1 allows it; large post-quantum key shares
 * make it real), within FY_SNI_MAX_HELLO bytes and FY_SNI_MAX_RECORDS records
 * so that a client cannot make the caller buffer without bound.
 */
#ifndef FERRY_SNI_H
#define FERRY_SNI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum fy_sni_result {
  FY_SNI_ENONE = -31101,      /* a complete, valid ClientHello with no server_name */
  FY_SNI_ENOTTLS = -31102,    /* the first bytes are not a TLS handshake record */
  FY_SNI_ENOTHELLO = -31103,  /* a TLS handshake message other than ClientHello */
  FY_SNI_EMALFORMED = -31104, /* a length, field or record of the ClientHello is wrong */
  FY_SNI_EBADNAME = -31105,   /* server_name is not a valid host name */
  FY_SNI_ETOOBIG = -31106,    /* beyond FY_SNI_MAX_HELLO bytes or FY_SNI_MAX_RECORDS records */
};

/* The largest ClientHello handshake message accepted, header included. */
#define FY_SNI_MAX_HELLO 32768
#define FY_SNI_MAX_RECORDS 32
/* The most bytes a caller ever needs to hold before fy_sni_peek() decides. */
#define FY_SNI_MAX_PEEK (FY_SNI_MAX_HELLO + 5 * FY_SNI_MAX_RECORDS)

#define FY_SNI_NAME_SIZE 254 /* a 253-byte DNS name and its NUL */
#define FY_SNI_ALPN_MAX 4    /* protocols kept, in the client's order of preference */
#define FY_SNI_ALPN_SIZE 32  /* each protocol name and its NUL */

typedef struct fy_sni_info {
  char sni[FY_SNI_NAME_SIZE]; /* lower-case host name; "" when there is none */
  size_t sni_len;
  /*
   * ALPN protocols offered, at most FY_SNI_ALPN_MAX; names that are longer
   * than FY_SNI_ALPN_SIZE - 1 or not printable ASCII are left out, and
   * alpn_truncated says that something was.
   */
  char alpn[FY_SNI_ALPN_MAX][FY_SNI_ALPN_SIZE];
  unsigned alpn_count;
  bool alpn_truncated;
  uint16_t client_version; /* legacy_version of the ClientHello, e.g. 0x0303 */
  size_t hello_bytes;      /* bytes the ClientHello's records take from the start */
  unsigned records;        /* TLS records the ClientHello spans */
} fy_sni_info;

/*
 * Looks at the first len bytes a client sent. Returns hello_bytes (> 0) when
 * they start with a complete ClientHello carrying a valid server_name; 0 when
 * more bytes are needed and those present are valid so far; FY_SNI_ENONE for
 * a complete ClientHello without server_name; another negative FY_SNI_E* code
 * otherwise. out is filled after a positive return and after FY_SNI_ENONE
 * (then sni is ""); after anything else its content is meaningless.
 */
int fy_sni_peek(const uint8_t *buf, size_t len, fy_sni_info *out);

const char *fy_sni_strerror(int err);

#endif
