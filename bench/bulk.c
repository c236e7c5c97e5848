/*
 * bulk: the TCP load of bench/run's S6 (stream MB/s through a tcp listener).
 * Compiled by the harness into its run directory (cc -O2), Linux only.
 *
 *   bulk sink PORT
 *       Listens on 127.0.0.1:PORT and discards everything it receives
 *       (recv with MSG_TRUNC: the kernel drops the bytes, nothing is copied
 *       to user space). Prints "ready" once listening, then for every
 *       connection that reaches EOF "eof BYTES" (flushed) *before* closing
 *       it, so a sender that sees its connection close knows the line is out.
 *
 *   bulk send PORT STREAMS BYTES SECONDS
 *       Opens STREAMS connections to 127.0.0.1:PORT at once and sends BYTES
 *       on each with sendfile(2) from a memfd (no user-space copy), stopping
 *       early once SECONDS have passed. Each stream is then shut down for
 *       writing and the sender waits (at most 10 s more) for the other side to
 *       close: through a proxy that passes the half-close on, that close
 *       comes only once the sink has read every byte. Prints one line
 *       BENCH_RESULT {json}: bytes sent, streams that sent everything,
 *       streams closed cleanly by the other side, errors, elapsed seconds
 *       (first connect to last close).
 *
 * One thread, epoll, non-blocking sockets; neither side is meant to be the
 * bottleneck (compare with bench/run's `direct` row: sender -> sink).
 */
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
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FILE_BYTES (4u << 20) /* the memfd sendfile reads from, wrapped around */
#define DRAIN_SECONDS 10.0

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static struct sockaddr_in loopback(int port) {
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

/* ---- sink ----------------------------------------------------------------- */

typedef struct {
  int fd;
  unsigned long long bytes;
} sink_conn;

static int sink(int port) {
  int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = loopback(port);
  if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) != 0 || listen(ls, 1024) != 0) {
    perror("bulk sink: listen");
    return 1;
  }
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  printf("ready\n");
  fflush(stdout);
  static char scratch[65536]; /* MSG_TRUNC does not copy into it */
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(ep, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      perror("bulk sink: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      sink_conn *c = evs[i].data.ptr;
      if (c == NULL) {
        int fd;
        while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          sink_conn *nc = calloc(1, sizeof *nc);
          nc->fd = fd;
          struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
        }
        continue;
      }
      for (;;) {
        ssize_t r = recv(c->fd, scratch, 16u << 20, MSG_TRUNC);
        if (r > 0) {
          c->bytes += (unsigned long long)r;
          continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (r == 0)
          printf("eof %llu\n", c->bytes);
        else
          printf("err %llu %s\n", c->bytes, strerror(errno));
        fflush(stdout);
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        free(c);
        break;
      }
    }
  }
}

/* ---- sender --------------------------------------------------------------- */

enum { S_CONNECTING, S_SENDING, S_DRAINING, S_DONE };

typedef struct {
  int fd, state;
  unsigned long long sent;
  off_t off;
  int full;   /* sent every byte asked for */
  int closed; /* the other side closed cleanly after our half-close */
  int error;  /* errno of a failure, 0 if none */
  double end;
} stream;

static int send_main(int port, int nstreams, unsigned long long want, double seconds) {
  int mfd = memfd_create("bulk", MFD_CLOEXEC);
  if (mfd < 0 || ftruncate(mfd, FILE_BYTES) != 0) {
    perror("bulk send: memfd");
    return 1;
  }
  char *map = mmap(NULL, FILE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
  if (map == MAP_FAILED) {
    perror("bulk send: mmap");
    return 1;
  }
  /* Printable, and never a TLS record start: a tcp listener that peeks for a
   * ClientHello sees plain bytes at once. */
  static const char line[] = "ferry-bench-bulk-0123456789abcdefghijklmnopqrstuvwxyz\n";
  for (size_t i = 0; i < FILE_BYTES; i++)
    map[i] = line[i % (sizeof line - 1)];
  munmap(map, FILE_BYTES);

  int ep = epoll_create1(EPOLL_CLOEXEC);
  stream *st = calloc((size_t)nstreams, sizeof *st);
  double t0 = now(), stop_at = t0 + seconds;
  struct sockaddr_in a = loopback(port);
  int active = nstreams;
  for (int i = 0; i < nstreams; i++) {
    stream *s = &st[i];
    s->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    s->state = S_CONNECTING;
    if (connect(s->fd, (struct sockaddr *)&a, sizeof a) != 0 && errno != EINPROGRESS) {
      s->error = errno;
      s->state = S_DONE;
      s->end = now();
      close(s->fd);
      active--;
      continue;
    }
    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = s};
    epoll_ctl(ep, EPOLL_CTL_ADD, s->fd, &ev);
  }

  struct epoll_event evs[64];
  int stopped = 0;
  while (active > 0) {
    double t = now();
    if (!stopped && t >= stop_at) {
      /* Time is up: stop sending, half-close, wait for the drain. */
      stopped = 1;
      for (int i = 0; i < nstreams; i++) {
        stream *s = &st[i];
        if (s->state == S_SENDING) {
          shutdown(s->fd, SHUT_WR);
          struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
          epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
          s->state = S_DRAINING;
        } else if (s->state == S_CONNECTING) { /* never connected in all that time */
          s->error = ETIMEDOUT;
          s->state = S_DONE;
          s->end = t;
          epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
          close(s->fd);
          active--;
        }
      }
    }
    if (t >= stop_at + DRAIN_SECONDS) break; /* streams still open count as not closed */
    double limit = (stopped ? stop_at + DRAIN_SECONDS : stop_at) - t;
    int n = epoll_wait(ep, evs, 64, (int)(limit * 1000) + 1);
    if (n < 0 && errno != EINTR) {
      perror("bulk send: epoll_wait");
      return 1;
    }
    for (int i = 0; i < n; i++) {
      stream *s = evs[i].data.ptr;
      if (s->state == S_DONE) continue;
      if (s->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          s->error = err;
          goto finish;
        }
        s->state = S_SENDING;
      }
      if (s->state == S_SENDING) {
        for (;;) {
          unsigned long long left = want - s->sent;
          if (left == 0) break;
          size_t chunk = FILE_BYTES - (size_t)s->off;
          if (chunk > left) chunk = (size_t)left;
          ssize_t w = sendfile(s->fd, mfd, &s->off, chunk);
          if (w > 0) {
            s->sent += (unsigned long long)w;
            if (s->off >= (off_t)FILE_BYTES) s->off = 0;
            continue;
          }
          if (w < 0 && errno == EAGAIN) break;
          s->error = w < 0 ? errno : EPIPE;
          goto finish;
        }
        if (s->sent == want) {
          s->full = 1;
          shutdown(s->fd, SHUT_WR);
          struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = s};
          epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
          s->state = S_DRAINING;
        } else if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
          s->error = ECONNRESET;
          goto finish;
        }
        continue;
      }
      if (s->state == S_DRAINING) {
        char buf[4096];
        ssize_t r;
        while ((r = recv(s->fd, buf, sizeof buf, 0)) > 0) {
        }
        if (r == 0) {
          s->closed = 1;
          goto finish;
        }
        if (errno == EAGAIN) continue;
        s->error = errno;
        goto finish;
      }
      continue;
    finish:
      s->state = S_DONE;
      s->end = now();
      epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
      close(s->fd);
      active--;
    }
  }

  double last = t0;
  unsigned long long total = 0;
  int full = 0, closed = 0, errors = 0, open = 0;
  char first_error[128] = "";
  for (int i = 0; i < nstreams; i++) {
    stream *s = &st[i];
    total += s->sent;
    full += s->full;
    closed += s->closed;
    if (s->error) {
      errors++;
      if (!first_error[0]) snprintf(first_error, sizeof first_error, "%s", strerror(s->error));
    }
    if (s->state != S_DONE) {
      open++;
      s->end = now();
      close(s->fd);
    }
    if (s->end > last) last = s->end;
  }
  printf("BENCH_RESULT {\"streams\": %d, \"stream_bytes\": %llu, \"seconds_max\": %.3f, "
         "\"bytes\": %llu, \"full\": %d, \"closed\": %d, \"stream_errors\": %d, \"still_open\": %d, "
         "\"elapsed_s\": %.6f, \"first_error\": \"%s\"}\n",
         nstreams, want, seconds, total, full, closed, errors, open, last - t0, first_error);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "sink") == 0) return sink(atoi(argv[2]));
  if (argc == 6 && strcmp(argv[1], "send") == 0)
    return send_main(atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], NULL, 10), atof(argv[5]));
  fprintf(stderr, "usage: bulk sink PORT | bulk send PORT STREAMS BYTES SECONDS\n");
  return 2;
}
