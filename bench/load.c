/* load: the HTTP/1.1 load client of the steady measures (bench/run steady).
 *
 * wrk is closed-loop (each connection sends its next request when the last
 * answer is in), which is right for "how many per second" but makes the
 * proxy's CPU per request depend on how saturated it is. This client has two
 * modes, both bounded in count and time:
 *
 *   load count HOST PORT CONNS REQUESTS [options]
 *     closed loop: CONNS connections, REQUESTS requests in all, then exit.
 *     Used under valgrind, where only the number of requests matters.
 *   load rate HOST PORT CONNS RATE SECONDS [options]
 *     open loop: RATE requests per second, spread evenly over time and over
 *     the CONNS connections, whatever the answers do; a request whose
 *     connection is still busy waits for it (counted as "late").
 *
 * options: -m METHOD  -p PATH  -b BODY_BYTES  -H HOST_HEADER  -k (Connection:
 * close: a new connection per request)  -V VPCE_ID (a PROXY protocol v2
 * header with the AWS VPC endpoint TLV, 0xEA/0x01, at the start of every
 * connection).
 *
 * It prints one JSON line: requests sent and answered, answers not 2xx,
 * socket errors, late requests, seconds. Plain epoll + timerfd, no library:
 * the harness compiles it with cc into its run directory. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 4096
#define RBUF 65536

struct conn {
  int fd;
  int busy;   /* a request is out, its answer not complete */
  size_t out; /* bytes of the current request already written */
  size_t out_len;
  int pp_sent; /* PROXY header written on this connection */
  /* response parser */
  int state; /* 0 head, 1 body by length, 2 chunk size, 3 chunk data, 4 chunk crlf, 5 trailers */
  char head[8192];
  size_t head_len;
  long long left;
  int status;
  int closing; /* the response said Connection: close */
};

static struct conn conns[MAX_CONNS];
static int nconns, epfd;
static struct sockaddr_in addr;
static char *req;
static size_t req_len;
static unsigned char pp[128];
static size_t pp_len;
static int close_mode;
static long long sent, done, non2xx, errors, late, pending, limit;

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void ep(int op, struct conn *c, uint32_t ev) {
  struct epoll_event e = {.events = ev, .data.ptr = c};
  epoll_ctl(epfd, op, c->fd, &e);
}

static int open_conn(struct conn *c) {
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  if (c->fd < 0) return -1;
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
    close(c->fd);
    c->fd = -1;
    return -1;
  }
  c->pp_sent = pp_len == 0;
  c->busy = 0;
  c->state = 0;
  c->head_len = 0;
  c->closing = 0;
  ep(EPOLL_CTL_ADD, c, EPOLLIN);
  return 0;
}

static void reset_conn(struct conn *c) {
  if (c->fd >= 0) close(c->fd);
  c->fd = -1;
  if (open_conn(c) < 0) errors++;
}

static void flush(struct conn *c) {
  if (!c->pp_sent) {
    ssize_t n = send(c->fd, pp, pp_len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == ENOTCONN)) {
      ep(EPOLL_CTL_MOD, c, EPOLLIN | EPOLLOUT);
      return;
    }
    if (n != (ssize_t)pp_len) {
      errors++;
      c->busy = 0;
      reset_conn(c);
      return;
    }
    c->pp_sent = 1;
  }
  while (c->out < c->out_len) {
    ssize_t n = send(c->fd, req + c->out, c->out_len - c->out, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == ENOTCONN) {
        ep(EPOLL_CTL_MOD, c, EPOLLIN | EPOLLOUT);
        return;
      }
      errors++;
      c->busy = 0;
      reset_conn(c);
      return;
    }
    c->out += n;
  }
  ep(EPOLL_CTL_MOD, c, EPOLLIN);
}

static void start_request(struct conn *c) {
  c->busy = 1;
  c->out = 0;
  c->out_len = req_len;
  c->state = 0;
  c->head_len = 0;
  sent++;
  flush(c);
}

/* A complete answer on c: count it; hand the connection the next request. */
static int answered(struct conn *c);

static int parse_head(struct conn *c) {
  char *end = memmem(c->head, c->head_len, "\r\n\r\n", 4);
  if (!end) return c->head_len < sizeof c->head ? 0 : -1;
  size_t hlen = end + 4 - c->head;
  c->status = atoi(c->head + 9);
  c->left = 0;
  c->state = 1;
  c->closing = 0;
  for (char *p = c->head; p < end; p++) {
    if (*p != '\n') continue;
    char *h = p + 1;
    if (!strncasecmp(h, "content-length:", 15))
      c->left = atoll(h + 15);
    else if (!strncasecmp(h, "transfer-encoding:", 18))
      c->state = 2;
    else if (!strncasecmp(h, "connection:", 11) && strcasestr(h, "close") && strcasestr(h, "close") < end)
      c->closing = 1;
  }
  c->left = c->state == 2 ? 0 : c->left;
  return (int)hlen;
}

/* Consume body bytes; returns bytes used, sets *fin when the answer ends. */
static size_t body(struct conn *c, const char *p, size_t n, int *fin) {
  size_t used = 0;
  while (used < n && !*fin) {
    if (c->state == 1) {
      size_t k = (size_t)c->left < n - used ? (size_t)c->left : n - used;
      c->left -= k;
      used += k;
      if (c->left == 0) *fin = 1;
    } else if (c->state == 2 || c->state == 4 || c->state == 5) {
      /* line-based states: collect one line in head */
      const char *nl = memchr(p + used, '\n', n - used);
      size_t k = nl ? (size_t)(nl - (p + used)) + 1 : n - used;
      if (c->head_len + k < sizeof c->head) memcpy(c->head + c->head_len, p + used, k);
      c->head_len += k;
      used += k;
      if (!nl) break;
      c->head[c->head_len < sizeof c->head ? c->head_len : sizeof c->head - 1] = 0;
      if (c->state == 2) {
        c->left = strtoll(c->head, NULL, 16);
        c->state = c->left ? 3 : 5;
      } else if (c->state == 4) {
        c->state = 2;
      } else if (c->head_len <= 2) {
        *fin = 1;
      }
      c->head_len = 0;
    } else if (c->state == 3) {
      size_t k = (size_t)c->left < n - used ? (size_t)c->left : n - used;
      c->left -= k;
      used += k;
      if (c->left == 0) c->state = 4;
    }
  }
  return used;
}

static void on_read(struct conn *c) {
  static char buf[RBUF];
  for (;;) {
    ssize_t n = recv(c->fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EAGAIN) return;
    if (n <= 0) {
      if (c->busy) errors++;
      c->busy = 0;
      reset_conn(c);
      if (c->busy == 0 && pending > 0) {
        pending--;
        start_request(c);
      }
      return;
    }
    size_t off = 0;
    while (off < (size_t)n) {
      int fin = 0;
      if (c->state == 0) {
        size_t k = (size_t)n - off;
        if (k > sizeof c->head - c->head_len) k = sizeof c->head - c->head_len;
        memcpy(c->head + c->head_len, buf + off, k);
        size_t before = c->head_len;
        c->head_len += k;
        int h = parse_head(c);
        if (h < 0) {
          errors++;
          reset_conn(c);
          return;
        }
        if (h == 0) {
          off += k;
          continue;
        }
        off += (size_t)h - before;
        c->head_len = 0;
        if (c->state == 1 && c->left == 0) fin = 1;
      }
      if (!fin && off < (size_t)n) off += body(c, buf + off, (size_t)n - off, &fin);
      if (fin && answered(c)) return; /* a new connection: the rest of buf is not its own */
    }
  }
}

static int closed_loop;

/* Returns 1 when the connection was replaced by a new one. */
static int answered(struct conn *c) {
  int reopened = close_mode || c->closing;
  done++;
  if (c->status < 200 || c->status > 299) non2xx++;
  c->busy = 0;
  c->state = 0;
  c->head_len = 0;
  if (reopened) reset_conn(c);
  if (closed_loop) {
    if (sent < limit) start_request(c);
  } else if (pending > 0) {
    pending--;
    start_request(c);
  }
  return reopened;
}

static void usage(void) {
  fprintf(stderr,
          "usage: load count HOST PORT CONNS REQUESTS [-m M] [-p PATH] [-b BYTES] [-H HOST] [-k] [-V VPCE]\n"
          "       load rate HOST PORT CONNS RATE SECONDS [options]\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc < 6) usage();
  closed_loop = !strcmp(argv[1], "count");
  if (!closed_loop && strcmp(argv[1], "rate")) usage();
  nconns = atoi(argv[4]);
  if (nconns < 1 || nconns > MAX_CONNS) usage();
  double rate = 0, seconds = 0;
  int argi;
  if (closed_loop) {
    limit = atoll(argv[5]);
    argi = 6;
  } else {
    if (argc < 7) usage();
    rate = atof(argv[5]);
    seconds = atof(argv[6]);
    if (rate <= 0 || seconds <= 0 || seconds > 600) usage();
    argi = 7;
  }
  const char *method = "GET", *path = "/", *host = "metrics.observability.internal", *vpce = NULL;
  long body_len = 0;
  for (; argi < argc; argi++) {
    const char *o = argv[argi];
    const char *v = argi + 1 < argc ? argv[argi + 1] : NULL;
    if (!strcmp(o, "-k"))
      close_mode = 1;
    else if (!v)
      usage();
    else if (!strcmp(o, "-m"))
      method = v, argi++;
    else if (!strcmp(o, "-p"))
      path = v, argi++;
    else if (!strcmp(o, "-b"))
      body_len = atol(v), argi++;
    else if (!strcmp(o, "-H"))
      host = v, argi++;
    else if (!strcmp(o, "-V"))
      vpce = v, argi++;
    else
      usage();
  }
  addr.sin_family = AF_INET;
  addr.sin_port = htons(atoi(argv[3]));
  if (inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) usage();

  char head[1024];
  int hl = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: %s\r\n%s%s", method, path, host,
                    close_mode ? "Connection: close\r\n" : "",
                    body_len ? "Content-Type: application/octet-stream\r\n" : "");
  if (body_len) hl += snprintf(head + hl, sizeof head - hl, "Content-Length: %ld\r\n", body_len);
  hl += snprintf(head + hl, sizeof head - hl, "\r\n");
  req_len = hl + body_len;
  req = malloc(req_len);
  memcpy(req, head, hl);
  memset(req + hl, 'x', body_len);

  if (vpce) {
    /* PROXY v2: signature, PROXY|v2, TCP over IPv4, addresses, then TLV 0xEA
     * (AWS) whose first byte is the subtype 0x01 (VPC endpoint id). */
    static const unsigned char sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                          0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
    size_t vl = strlen(vpce);
    size_t tlv = 3 + 1 + vl;
    size_t len = 12 + tlv;
    memcpy(pp, sig, 12);
    pp[12] = 0x21;
    pp[13] = 0x11;
    pp[14] = len >> 8;
    pp[15] = len & 0xff;
    unsigned char *a = pp + 16;
    memcpy(a, "\x0a\x00\x00\x05", 4);     /* source 10.0.0.5 */
    memcpy(a + 4, "\x0a\x00\x00\x01", 4); /* destination 10.0.0.1 */
    a[8] = 0xc3, a[9] = 0x50;             /* source port 50000 */
    a[10] = 0x01, a[11] = 0xbb;           /* destination port 443 */
    a[12] = 0xEA;
    a[13] = (1 + vl) >> 8;
    a[14] = (1 + vl) & 0xff;
    a[15] = 0x01;
    memcpy(a + 16, vpce, vl);
    pp_len = 16 + len;
  }

  epfd = epoll_create1(0);
  for (int i = 0; i < nconns; i++)
    if (open_conn(&conns[i]) < 0) errors++;

  double t0 = now(), deadline;
  int tfd = -1;
  long long due_total = 0;
  if (closed_loop) {
    deadline = t0 + 600;
    for (int i = 0; i < nconns && sent < limit; i++)
      if (conns[i].fd >= 0) start_request(&conns[i]);
  } else {
    deadline = t0 + seconds + 5; /* the last answers get 5 s to come in */
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {.it_interval = {0, 1000000}, .it_value = {0, 1000000}}; /* 1 ms ticks */
    timerfd_settime(tfd, 0, &its, NULL);
    struct epoll_event e = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &e);
  }
  long long total = closed_loop ? limit : (long long)(rate * seconds);
  int next = 0;
  struct epoll_event evs[256];
  while (done + errors < total && now() < deadline) {
    int n = epoll_wait(epfd, evs, 256, 100);
    for (int i = 0; i < n; i++) {
      struct conn *c = evs[i].data.ptr;
      if (c == NULL) {
        uint64_t ticks;
        if (read(tfd, &ticks, sizeof ticks) < 0) continue;
        double t = now() - t0;
        long long due = (long long)(t * rate);
        if (due > total) due = total;
        for (; due_total < due; due_total++) {
          /* the next idle connection, round robin */
          int k, found = 0;
          for (k = 0; k < nconns; k++) {
            struct conn *d = &conns[(next + k) % nconns];
            if (d->fd >= 0 && !d->busy) {
              next = (next + k + 1) % nconns;
              start_request(d);
              found = 1;
              break;
            }
          }
          if (!found) {
            late++;
            pending++;
          }
        }
        continue;
      }
      if (evs[i].events & EPOLLOUT) flush(c);
      if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_read(c);
    }
  }
  double el = now() - t0;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu =
      (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  printf("{\"sent\": %lld, \"done\": %lld, \"non2xx\": %lld, \"errors\": %lld, \"late\": %lld, \"seconds\": "
         "%.3f, \"cpu_s\": %.4f}\n",
         sent, done, non2xx, errors, late, el, cpu);
  return done == total && errors == 0 && non2xx == 0 ? 0 : 1;
}
