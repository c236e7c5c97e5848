/*
 * PROXY protocol v1 and v2 header parsing (HAProxy's proxy-protocol.txt).
 *
 * When ferry sits behind an AWS Network Load Balancer, the NLB prepends one
 * PROXY header to every connection: the client's real addresses and, for a
 * PrivateLink endpoint service, the consumer's VPC endpoint id in an AWS TLV.
 * This unit turns those bytes into an fy_proxy_info and nothing more: it is
 * pure (no allocation, no I/O, no global state) so the listener can call it
 * again on the same growing buffer each time bytes arrive, and it never reads
 * past the length it is given. Deciding whether a listener expects a header
 * at all is the caller's job; the spec forbids guessing, so a listener that
 * accepts PROXY must reject connections without one. Only the first header is
 * parsed: an NLB forwards any header a client sent itself unchanged after its
 * own, so whatever follows the returned length is the client's data.
 */
#ifndef FERRY_PROXY_PROTOCOL_H
#define FERRY_PROXY_PROTOCOL_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

enum fy_proxy_protocol_error {
  FY_PP_ENOTPROXY = -31001,  /* neither a v1 nor a v2 signature */
  FY_PP_EV1SYNTAX = -31002,  /* a v1 line that does not match the grammar exactly */
  FY_PP_EV1TOOLONG = -31003, /* no CRLF within the 107 bytes a v1 line may take */
  FY_PP_EVERSION = -31004,   /* v2 signature followed by a version other than 2 */
  FY_PP_ECOMMAND = -31005,   /* v2 command neither LOCAL nor PROXY */
  FY_PP_EFAMILY = -31006,    /* v2 address family or transport byte not in the spec */
  FY_PP_EADDRLEN = -31007,   /* v2 length too short for the family's address block */
  FY_PP_ETOOBIG = -31008,    /* v2 length above FY_PP_V2_MAX_TLV bytes of TLVs */
  FY_PP_ETLV = -31009,       /* a TLV overruns the header, or a known TLV repeats */
  FY_PP_ETLVVALUE = -31010,  /* a CRC32c TLV whose value is not 4 bytes */
  FY_PP_ECRC = -31011,       /* the CRC32c TLV does not match the header */
  FY_PP_EVPCE = -31012,      /* AWS VPC endpoint id empty, too long or not printable */
};

/* A v2 header carries at most this many bytes of TLVs after the addresses. */
#define FY_PP_V2_MAX_TLV 1024
/* The longest header the parser accepts: v2, IPv6 addresses, full TLV block. */
#define FY_PP_MAX_HEADER (16 + 36 + FY_PP_V2_MAX_TLV)
/* The longest v1 line, CRLF included (spec section 2.1). */
#define FY_PP_V1_MAX 107

/* Buffer sizes, NUL included. A real endpoint id is 22 characters. */
#define FY_PP_VPCE_ID_SIZE 64
#define FY_PP_AUTHORITY_SIZE 256
#define FY_PP_ALPN_SIZE 64

typedef struct fy_proxy_info {
  uint8_t version; /* 1 or 2 */
  /*
   * A v2 LOCAL header: the sender (typically an NLB health check) made the
   * connection itself, so the socket's own addresses are the real ones.
   */
  bool local;
  /*
   * AF_INET or AF_INET6 when src and dst hold the client's addresses (port
   * included); AF_UNSPEC for LOCAL, v1 UNKNOWN and v2 families ferry does not
   * proxy (UNSPEC, UDP, UNIX), where the socket's addresses should be used.
   */
  int family;
  struct sockaddr_storage src, dst;
  /* src and dst as text and ports, when family says they hold the client's:
   * made once per connection by fy_proxy_protocol_accept, read by every
   * request's req.proxy. */
  char src_text[INET6_ADDRSTRLEN], dst_text[INET6_ADDRSTRLEN];
  int src_port, dst_port;
  /*
   * v2 TLVs, each an empty string when absent; only printable ASCII without
   * spaces is ever stored. A VPC endpoint id that would not fit or is not
   * such text fails the header (FY_PP_EVPCE): policy may rely on it. An ALPN
   * or authority TLV like that is left out instead.
   */
  char vpce_id[FY_PP_VPCE_ID_SIZE];     /* AWS 0xEA subtype 0x01, e.g. vpce-0123456789abcdef0 */
  char authority[FY_PP_AUTHORITY_SIZE]; /* PP2_TYPE_AUTHORITY (often the client's SNI) */
  char alpn[FY_PP_ALPN_SIZE];           /* PP2_TYPE_ALPN, the negotiated protocol */
  bool crc32c_verified;                 /* a CRC32c TLV was present and matched */
} fy_proxy_info;

/*
 * Parses the PROXY header at the start of buf. Returns the header's length in
 * bytes (> 0, at most FY_PP_MAX_HEADER) with out filled in; 0 when buf is
 * shorter than the header and everything seen so far is valid (for a v1 IPv6
 * address still arriving: its characters and length), so the caller should
 * read more and call again with the longer buffer; or a negative FY_PP_E*
 * code, after which the connection should be closed. FY_PP_MAX_HEADER bytes
 * always get a non-zero answer, so the caller can cap its buffer there. out
 * is only meaningful after a positive return. Never reads beyond buf[len - 1].
 *
 * v2 LOCAL headers and v2 families that fall back to AF_UNSPEC are skipped
 * whole, as the spec asks, so their TLVs (CRC32c included) are not read.
 */
int fy_proxy_protocol_parse(const uint8_t *buf, size_t len, fy_proxy_info *out);

/*
 * How a listener's connection takes the header it must start with (http
 * and tcp listeners alike): buf holds the connection's first len bytes.
 * Returns the header's length (> 0), with out filled in and, for a header
 * with addresses, the client's address in ip/port; 0 to read more; or a
 * negative FY_PP_E* code (FY_PP_ETOOBIG when FY_PP_MAX_HEADER bytes hold no
 * header), after which the connection is closed without an answer.
 */
int fy_proxy_protocol_accept(const uint8_t *buf, size_t len, fy_proxy_info *out, char *ip, size_t iplen,
                             int *port);

/*
 * Writes a PROXY protocol header (version 1 or 2) that announces a
 * connection from src to dst; a NULL src, or addresses of two families,
 * give a v2 LOCAL header or a v1 "UNKNOWN" line (the receiver then uses the
 * socket's own addresses). vpce_id (v2 only, may be NULL or "") is passed on
 * as the AWS TLV. Returns the header's length; out needs
 * FY_PP_WRITE_MAX bytes.
 */
#define FY_PP_WRITE_MAX (16 + 36 + 3 + 1 + FY_PP_VPCE_ID_SIZE)
size_t fy_proxy_protocol_write(int version, const struct sockaddr_storage *src,
                               const struct sockaddr_storage *dst, const char *vpce_id, uint8_t *out);

const char *fy_proxy_protocol_strerror(int err);

/*
 * CRC32c (Castagnoli, as in RFC 4960 appendix B), chainable: start with crc 0
 * and pass each result back in to checksum data given in pieces.
 */
uint32_t fy_proxy_protocol_crc32c(uint32_t crc, const uint8_t *data, size_t len);

#endif
