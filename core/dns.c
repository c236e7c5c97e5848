#include "dns.h"

#include "log.h"

#include <ares.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/select.h>

typedef struct fy_dns_poll {
  uv_poll_t poll;
  ares_socket_t fd;
  struct fy_dns *dns;
  struct fy_dns_poll *next;
} fy_dns_poll;

struct fy_dns {
  uv_loop_t *loop;
  ares_channel channel;
  uv_timer_t timer;
  fy_dns_poll *polls;
  bool closing;
};

struct fy_dns_req {
  fy_dns_cb cb; /* NULL once cancelled */
  void *data;
};

/* c-ares is initialised once per process, whichever thread needs it first. */
static pthread_once_t fy_dns_library_once = PTHREAD_ONCE_INIT;
static int fy_dns_library_status = -1;

static void fy_dns_library_start(void) {
  fy_dns_library_status = ares_library_init(ARES_LIB_INIT_ALL) == ARES_SUCCESS ? 0 : -1;
}

static int fy_dns_library_init(void) {
  pthread_once(&fy_dns_library_once, fy_dns_library_start);
  return fy_dns_library_status;
}

static int fy_dns_channel(ares_channel *ch, struct ares_options *opts, int mask, const char *servers,
                          fy_buf *errors) {
  if (fy_dns_library_init() != 0) {
    fy_buf_printf(errors, "dns: cannot initialise c-ares\n");
    return FY_ECONFIG;
  }
  opts->timeout = 1000; /* ms per try */
  opts->tries = 2;
  int rc = ares_init_options(ch, opts, mask | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES);
  if (rc != ARES_SUCCESS) {
    fy_buf_printf(errors, "dns: %s\n", ares_strerror(rc));
    return FY_ECONFIG;
  }
  if (servers && (rc = ares_set_servers_ports_csv(*ch, servers)) != ARES_SUCCESS) {
    fy_buf_printf(errors, "dns.servers: '%s': %s\n", servers, ares_strerror(rc));
    ares_destroy(*ch);
    return FY_ECONFIG;
  }
  return 0;
}

/* ---- answers ---------------------------------------------------------------- */

static void fy_dns_collect(struct ares_addrinfo *ai, fy_dns_answer *answer) {
  answer->n = 0;
  answer->ttl = UINT32_MAX;
  for (struct ares_addrinfo_node *n = ai ? ai->nodes : NULL; n && answer->n < FY_DNS_MAX_ADDRS;
       n = n->ai_next) {
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    memcpy(&ss, n->ai_addr, n->ai_addrlen);
    bool seen = false;
    for (size_t i = 0; i < answer->n && !seen; i++)
      seen = memcmp(&answer->addrs[i], &ss, sizeof ss) == 0;
    if (seen) continue;
    answer->addrs[answer->n++] = ss;
    if (n->ai_ttl >= 0 && (unsigned)n->ai_ttl < answer->ttl) answer->ttl = (unsigned)n->ai_ttl;
  }
  if (answer->ttl == UINT32_MAX) answer->ttl = 0; /* /etc/hosts: no TTL */
}

static void fy_dns_hints(struct ares_addrinfo_hints *hints) {
  memset(hints, 0, sizeof *hints);
  hints->ai_family = AF_UNSPEC;
  hints->ai_socktype = SOCK_STREAM;
  hints->ai_flags = ARES_AI_NUMERICSERV;
}

/* ---- the channel on a uv loop ------------------------------------------------ */

static void fy_dns_process(fy_dns *d, ares_socket_t rfd, ares_socket_t wfd);

static void fy_dns_timer_cb(uv_timer_t *t) { fy_dns_process(t->data, ARES_SOCKET_BAD, ARES_SOCKET_BAD); }

static void fy_dns_rearm(fy_dns *d) {
  struct timeval tv, *next = ares_timeout(d->channel, NULL, &tv);
  if (next == NULL || d->closing) {
    uv_timer_stop(&d->timer);
    return;
  }
  uint64_t ms = (uint64_t)next->tv_sec * 1000 + (uint64_t)next->tv_usec / 1000;
  uv_timer_start(&d->timer, fy_dns_timer_cb, ms ? ms : 1, 0);
}

static void fy_dns_process(fy_dns *d, ares_socket_t rfd, ares_socket_t wfd) {
  ares_process_fd(d->channel, rfd, wfd);
  fy_dns_rearm(d);
}

static void fy_dns_poll_cb(uv_poll_t *h, int status, int events) {
  fy_dns_poll *p = h->data;
  if (status < 0) events = UV_READABLE | UV_WRITABLE; /* let c-ares see the error */
  fy_dns_process(p->dns, events & UV_READABLE ? p->fd : ARES_SOCKET_BAD,
                 events & UV_WRITABLE ? p->fd : ARES_SOCKET_BAD);
}

static void fy_dns_poll_free(uv_handle_t *h) { free(h->data); }

/* c-ares tells which of its sockets want reading or writing. */
static void fy_dns_sock_state(void *data, ares_socket_t fd, int readable, int writable) {
  fy_dns *d = data;
  fy_dns_poll **pp = &d->polls, *p;
  while ((p = *pp) != NULL && p->fd != fd)
    pp = &p->next;
  if (!readable && !writable) {
    if (p) {
      *pp = p->next;
      uv_close((uv_handle_t *)&p->poll, fy_dns_poll_free);
    }
    return;
  }
  if (p == NULL) {
    p = fy_calloc(1, sizeof *p);
    p->fd = fd;
    p->dns = d;
    if (uv_poll_init_socket(d->loop, &p->poll, fd) != 0) {
      free(p);
      return;
    }
    p->poll.data = p;
    p->next = d->polls;
    d->polls = p;
  }
  uv_poll_start(&p->poll, (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0), fy_dns_poll_cb);
}

int fy_dns_new(fy_dns **out, uv_loop_t *loop, const char *servers, fy_buf *errors) {
  fy_dns *d = fy_calloc(1, sizeof *d);
  d->loop = loop;
  struct ares_options opts;
  memset(&opts, 0, sizeof opts);
  opts.sock_state_cb = fy_dns_sock_state;
  opts.sock_state_cb_data = d;
  if (fy_dns_channel(&d->channel, &opts, ARES_OPT_SOCK_STATE_CB, servers, errors) != 0) {
    free(d);
    return FY_ECONFIG;
  }
  uv_timer_init(loop, &d->timer);
  d->timer.data = d;
  *out = d;
  return 0;
}

int fy_dns_set_servers(fy_dns *d, const char *servers, fy_buf *errors) {
  int rc = servers ? ares_set_servers_ports_csv(d->channel, servers) : ARES_SUCCESS;
  if (rc != ARES_SUCCESS) {
    fy_buf_printf(errors, "dns.servers: '%s': %s\n", servers, ares_strerror(rc));
    return FY_ECONFIG;
  }
  return 0;
}

static void fy_dns_done(void *arg, int status, int timeouts, struct ares_addrinfo *ai) {
  fy_dns_req *req = arg;
  (void)timeouts;
  if (req->cb) {
    if (status == ARES_SUCCESS) {
      fy_dns_answer answer;
      fy_dns_collect(ai, &answer);
      req->cb(req->data, 0, NULL, &answer);
    } else {
      req->cb(req->data, -1, ares_strerror(status), NULL);
    }
  }
  if (ai) ares_freeaddrinfo(ai);
  free(req);
}

fy_dns_req *fy_dns_resolve(fy_dns *d, const char *host, int port, fy_dns_cb cb, void *data) {
  fy_dns_req *req = fy_calloc(1, sizeof *req);
  req->cb = cb;
  req->data = data;
  char service[8];
  snprintf(service, sizeof service, "%d", port);
  struct ares_addrinfo_hints hints;
  fy_dns_hints(&hints);
  ares_getaddrinfo(d->channel, host, service, &hints, fy_dns_done, req);
  fy_dns_rearm(d);
  return req;
}

void fy_dns_cancel(fy_dns_req *req) {
  if (req) req->cb = NULL;
}

static void fy_dns_timer_closed(uv_handle_t *h) { free(h->data); }

void fy_dns_close(fy_dns *d) {
  if (d == NULL) return;
  d->closing = true;
  ares_destroy(d->channel); /* runs every pending callback with ARES_EDESTRUCTION */
  while (d->polls) {
    fy_dns_poll *p = d->polls;
    d->polls = p->next;
    uv_close((uv_handle_t *)&p->poll, fy_dns_poll_free);
  }
  uv_close((uv_handle_t *)&d->timer, fy_dns_timer_closed);
}

/* ---- blocking, for loading a config ------------------------------------------ */

typedef struct fy_dns_sync {
  bool done;
  int status;
  fy_dns_answer *answer;
} fy_dns_sync;

static void fy_dns_sync_done(void *arg, int status, int timeouts, struct ares_addrinfo *ai) {
  fy_dns_sync *s = arg;
  (void)timeouts;
  s->done = true;
  s->status = status;
  if (status == ARES_SUCCESS) fy_dns_collect(ai, s->answer);
  if (ai) ares_freeaddrinfo(ai);
}

int fy_dns_resolve_sync(const char *servers, const char *host, int port, uint64_t timeout_ms,
                        fy_dns_answer *answer, char *err, size_t errlen) {
  fy_buf errors;
  fy_buf_init(&errors);
  ares_channel ch;
  struct ares_options opts;
  memset(&opts, 0, sizeof opts);
  if (fy_dns_channel(&ch, &opts, 0, servers, &errors) != 0) {
    snprintf(err, errlen, "%.*s", (int)(errors.len ? errors.len - 1 : 0), errors.data ? errors.data : "");
    fy_buf_free(&errors);
    return -1;
  }
  fy_dns_sync s = {false, 0, answer};
  char service[8];
  snprintf(service, sizeof service, "%d", port);
  struct ares_addrinfo_hints hints;
  fy_dns_hints(&hints);
  ares_getaddrinfo(ch, host, service, &hints, fy_dns_sync_done, &s);
  uint64_t deadline = uv_hrtime() + timeout_ms * 1000000;
  while (!s.done && uv_hrtime() < deadline) {
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    int nfds = ares_fds(ch, &r, &w);
    struct timeval tv = {0, 100000}, *tvp = ares_timeout(ch, &tv, &tv);
    select(nfds, &r, &w, NULL, tvp);
    ares_process(ch, &r, &w);
  }
  ares_destroy(ch);
  fy_buf_free(&errors);
  if (!s.done) {
    snprintf(err, errlen, "no answer within %llu ms", (unsigned long long)timeout_ms);
    return -1;
  }
  if (s.status != ARES_SUCCESS || answer->n == 0) {
    snprintf(err, errlen, "%s", s.status != ARES_SUCCESS ? ares_strerror(s.status) : "no address");
    return -1;
  }
  return 0;
}

/* ---- one answer per name for all the generations of a reload ------------------ */

struct fy_dns_memo_entry {
  char *host;
  int port, rc;
  fy_dns_answer answer;
  char err[256];
};

int fy_dns_resolve_memo(fy_dns_memo *m, const char *servers, const char *host, int port, uint64_t timeout_ms,
                        fy_dns_answer *answer, char *err, size_t errlen) {
  if (m == NULL) return fy_dns_resolve_sync(servers, host, port, timeout_ms, answer, err, errlen);
  for (size_t i = 0; i < m->n; i++) {
    struct fy_dns_memo_entry *e = &m->v[i];
    if (e->port == port && strcmp(e->host, host) == 0) {
      *answer = e->answer;
      snprintf(err, errlen, "%s", e->err);
      return e->rc;
    }
  }
  m->v = fy_realloc(m->v, (m->n + 1) * sizeof *m->v);
  struct fy_dns_memo_entry *e = &m->v[m->n++];
  memset(e, 0, sizeof *e);
  e->host = fy_strdup(host);
  e->port = port;
  e->rc = fy_dns_resolve_sync(servers, host, port, timeout_ms, &e->answer, e->err, sizeof e->err);
  *answer = e->answer;
  snprintf(err, errlen, "%s", e->err);
  return e->rc;
}

void fy_dns_memo_free(fy_dns_memo *m) {
  for (size_t i = 0; i < m->n; i++)
    free(m->v[i].host);
  free(m->v);
  m->v = NULL;
  m->n = 0;
}
