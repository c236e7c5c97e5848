/*
 * Name resolution with c-ares, which gives the TTL of each answer (the
 * system resolver does not).
 *
 * fy_dns runs a c-ares channel on a libuv loop: c-ares reports the sockets
 * it wants watched, uv_poll handles watch them and a timer drives c-ares'
 * own timeouts. A request's callback runs exactly once, unless the request
 * is cancelled first. fy_dns_resolve_sync() is for loading a config, before
 * any loop runs. `servers` is c-ares' "host:port,host:port" list, or NULL
 * for the system's resolv.conf; /etc/hosts is consulted first either way.
 */
#ifndef FERRY_DNS_H
#define FERRY_DNS_H

#include "buf.h"

#include <stdbool.h>
#include <sys/socket.h>
#include <uv.h>

#define FY_DNS_MAX_ADDRS 16

typedef struct fy_dns_answer {
  struct sockaddr_storage addrs[FY_DNS_MAX_ADDRS];
  size_t n;
  unsigned ttl; /* seconds, the smallest of the answer's records */
} fy_dns_answer;

typedef struct fy_dns fy_dns;
typedef struct fy_dns_req fy_dns_req;
/* status 0 and an answer, or a negative error (the answer is then NULL) and its text. */
typedef void (*fy_dns_cb)(void *data, int status, const char *error, const fy_dns_answer *answer);

int fy_dns_new(fy_dns **out, uv_loop_t *loop, const char *servers, fy_buf *errors);
int fy_dns_set_servers(fy_dns *d, const char *servers, fy_buf *errors);
fy_dns_req *fy_dns_resolve(fy_dns *d, const char *host, int port, fy_dns_cb cb, void *data);
void fy_dns_cancel(fy_dns_req *req);
void fy_dns_close(fy_dns *d);

/* Resolves host now, blocking for at most timeout_ms. Returns 0 or -1 with err set. */
int fy_dns_resolve_sync(const char *servers, const char *host, int port, uint64_t timeout_ms,
                        fy_dns_answer *answer, char *err, size_t errlen);

/*
 * The answers of one config load, so that building a generation for each
 * worker asks the DNS once per name: the first build resolves, the others
 * reuse its answer (or its error).
 */
typedef struct fy_dns_memo {
  struct fy_dns_memo_entry *v;
  size_t n;
} fy_dns_memo;

int fy_dns_resolve_memo(fy_dns_memo *m, const char *servers, const char *host, int port, uint64_t timeout_ms,
                        fy_dns_answer *answer, char *err, size_t errlen);
void fy_dns_memo_free(fy_dns_memo *m);

#endif
