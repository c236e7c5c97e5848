#define _GNU_SOURCE /* pthread_timedjoin_np */
#include "access_log.h"

#include "conn.h"
#include "ffi.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the writer ---------------------------------------------------------- */

/*
 * Each worker thread formats its lines into a batch of its own and hands
 * the batch to the writer's buffer once per turn of its loop (a deferred
 * run in the check phase), or sooner when it grows past FY_AL_BATCH: the
 * writer's lock is taken once per batch, never per request.
 */
#define FY_AL_BATCH (32 * 1024)
static __thread struct {
  fy_buf buf;
  size_t lines;
  fy_worker *w; /* whose loop runs the flush, and counts what is dropped */
  fy_deferred flush;
  bool queued;
} fy_al_batch;

/*
 * Two halves of the configured buffer: workers append to buf[active] while
 * the writer writes the other. Everything below is guarded by mu except
 * what only the writer thread touches (fd).
 */
static struct {
  pthread_mutex_t mu;
  pthread_cond_t wake;
  pthread_t thread;
  bool started, stop, reopen;
  char *buf[2];
  size_t len, cap; /* of buf[active]; cap is half the configured buffer */
  int active;
  char *path; /* NULL: stderr */
  int fd;     /* the writer's */
  atomic_uint_fast64_t write_errors;
} fy_al = {.mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .fd = -1};

/*
 * O_NONBLOCK only for the open itself (a FIFO without a reader would block
 * it, and fails with ENXIO instead); the writer's writes then block, which
 * is what its thread is for.
 */
static int fy_al_open(const char *path) {
  if (path == NULL) return dup(STDERR_FILENO);
  int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0644);
  if (fd < 0) return -errno;
  int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  return fd;
}

static void fy_al_write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      /* A full disk or a dead file: the batch's lines are lost; count them. */
      uint64_t lines = 0;
      for (size_t i = 0; i < n; i++)
        lines += p[i] == '\n';
      atomic_fetch_add(&fy_al.write_errors, lines);
      return;
    }
    p += w;
    n -= (size_t)w;
  }
}

static void *fy_al_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&fy_al.mu);
  for (;;) {
    while (fy_al.len == 0 && !fy_al.reopen && !fy_al.stop)
      pthread_cond_wait(&fy_al.wake, &fy_al.mu);
    if (fy_al.reopen) {
      fy_al.reopen = false;
      char *path = fy_al.path ? fy_strdup(fy_al.path) : NULL;
      pthread_mutex_unlock(&fy_al.mu);
      int fd = fy_al_open(path);
      if (fd >= 0) {
        if (fy_al.fd >= 0) close(fy_al.fd);
        fy_al.fd = fd;
      } else {
        fy_log_error("access log: cannot open %s again: %s; still writing to the old file",
                     path ? path : "stderr", strerror(-fd));
      }
      free(path);
      pthread_mutex_lock(&fy_al.mu);
      continue;
    }
    if (fy_al.len == 0 && fy_al.stop) break;
    char *batch = fy_al.buf[fy_al.active];
    size_t n = fy_al.len;
    fy_al.active ^= 1;
    fy_al.len = 0;
    pthread_mutex_unlock(&fy_al.mu);
    fy_al_write_all(fy_al.fd, batch, n);
    pthread_mutex_lock(&fy_al.mu);
  }
  pthread_mutex_unlock(&fy_al.mu);
  return NULL;
}

static bool fy_access_log_append(const char *line, size_t len) {
  pthread_mutex_lock(&fy_al.mu);
  bool ok = fy_al.started && fy_al.len + len <= fy_al.cap;
  if (ok) {
    memcpy(fy_al.buf[fy_al.active] + fy_al.len, line, len);
    if (fy_al.len == 0) pthread_cond_signal(&fy_al.wake);
    fy_al.len += len;
  }
  pthread_mutex_unlock(&fy_al.mu);
  return ok;
}

int fy_access_log_configure(const fy_config *cfg, fy_buf *errors) {
  if (!cfg->access_log) return FY_OK;
  size_t cap = (cfg->access_buffer ? cfg->access_buffer : 1u << 20) / 2;
  pthread_mutex_lock(&fy_al.mu);
  bool moved = fy_al.started && !fy_str_eq(fy_al.path, cfg->access_file);
  pthread_mutex_unlock(&fy_al.mu);
  if (!fy_al.started || moved) {
    int fd = fy_al_open(cfg->access_file); /* a check now, so a bad path is refused with the config */
    if (fd < 0) {
      fy_buf_printf(errors, "%s: log.access.file: cannot open %s: %s\n", cfg->path, cfg->access_file,
                    strerror(-fd));
      return FY_ECONFIG;
    }
    if (!fy_al.started)
      fy_al.fd = fd;
    else
      close(fd);
  }
  pthread_mutex_lock(&fy_al.mu);
  if (!fy_al.started) { /* the buffer is sized once: a batch being written is one of its halves */
    fy_al.buf[0] = fy_malloc(cap);
    fy_al.buf[1] = fy_malloc(cap);
    fy_al.cap = cap;
  }
  if (moved || !fy_al.started) {
    free(fy_al.path);
    fy_al.path = cfg->access_file ? fy_strdup(cfg->access_file) : NULL;
    fy_al.reopen = moved;
  }
  if (!fy_al.started) {
    fy_al.stop = false;
    fy_al.started = pthread_create(&fy_al.thread, NULL, fy_al_main, NULL) == 0;
  }
  pthread_cond_signal(&fy_al.wake);
  pthread_mutex_unlock(&fy_al.mu);
  return FY_OK;
}

void fy_access_log_reopen(void) {
  pthread_mutex_lock(&fy_al.mu);
  fy_al.reopen = fy_al.started;
  pthread_cond_signal(&fy_al.wake);
  pthread_mutex_unlock(&fy_al.mu);
}

/* Hands this thread's batch to the writer; its lines are dropped and counted when the writer's buffer is
 * full. */
static void fy_al_flush(void) {
  if (fy_al_batch.buf.len && !fy_access_log_append(fy_al_batch.buf.data, fy_al_batch.buf.len) &&
      fy_al_batch.w)
    fy_al_batch.w->access_dropped += fy_al_batch.lines;
  fy_buf_reset(&fy_al_batch.buf);
  fy_al_batch.lines = 0;
  if (fy_al_batch.buf.cap > 4 * FY_AL_BATCH) fy_buf_free(&fy_al_batch.buf); /* one huge line does not stay */
}

static void fy_al_flush_deferred(fy_deferred *d) {
  (void)d;
  fy_al_batch.queued = false;
  fy_al_flush();
}

void fy_access_log_thread_end(void) {
  if (fy_al_batch.queued) fy_worker_undefer(&fy_al_batch.flush);
  fy_al_batch.queued = false;
  fy_al_flush();
  fy_buf_free(&fy_al_batch.buf);
  fy_al_batch.w = NULL;
}

#define FY_AL_CLOSE_WAIT_S 2

void fy_access_log_close(void) {
  pthread_mutex_lock(&fy_al.mu);
  bool started = fy_al.started;
  fy_al.stop = true;
  pthread_cond_signal(&fy_al.wake);
  pthread_mutex_unlock(&fy_al.mu);
  fy_access_log_thread_end();
  if (!started) return;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += FY_AL_CLOSE_WAIT_S;
  if (pthread_timedjoin_np(fy_al.thread, NULL, &until) != 0) {
    /* The file does not take writes (a FIFO nobody reads): exiting matters more. */
    fy_log_warn("access log: the file took no writes for %d s; exiting without the last lines",
                FY_AL_CLOSE_WAIT_S);
    return;
  }
  pthread_mutex_lock(&fy_al.mu);
  fy_al.started = false;
  for (int i = 0; i < 2; i++) {
    free(fy_al.buf[i]);
    fy_al.buf[i] = NULL;
  }
  fy_al.cap = fy_al.len = 0;
  free(fy_al.path);
  fy_al.path = NULL;
  pthread_mutex_unlock(&fy_al.mu);
  if (fy_al.fd >= 0) close(fy_al.fd);
  fy_al.fd = -1;
}

uint64_t fy_access_log_write_errors(void) { return atomic_load(&fy_al.write_errors); }

/* ---- lines ---------------------------------------------------------------- */

static void fy_json_str(fy_buf *o, const char *s, size_t len) {
  static const char hex[] = "0123456789abcdef";
  fy_buf_reserve(o, len + 2);
  fy_buf_append(o, "\"", 1);
  for (size_t i = 0; i < len; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch == '"' || ch == '\\') {
      char e[2] = {'\\', (char)ch};
      fy_buf_append(o, e, 2);
    } else if (ch < 0x20 || ch >= 0x7f) { /* bytes, not text: each its own code point, always valid JSON */
      char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
      fy_buf_append(o, e, 6);
    } else {
      fy_buf_append(o, s + i, 1);
    }
  }
  fy_buf_append(o, "\"", 1);
}

static void fy_json_key_str(fy_buf *o, const char *key, const char *s) {
  fy_buf_printf(o, ",\"%s\":", key);
  if (s)
    fy_json_str(o, s, strlen(s));
  else
    fy_buf_puts(o, "null");
}

static void fy_json_key_ms(fy_buf *o, const char *key, uint64_t ns, bool present) {
  if (present)
    fy_buf_printf(o, ",\"%s\":%.3f", key, (double)ns / 1e6);
  else
    fy_buf_printf(o, ",\"%s\":null", key);
}

static void fy_al_time(fy_buf *o) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  char t[40];
  size_t n = strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(t + n, sizeof t - n, ".%03ldZ", ts.tv_nsec / 1000000);
  fy_buf_puts(o, t);
}

static const char *fy_al_group(const fy_req *r) {
  return r->group >= 0 && r->gen ? r->gen->cfg->groups[r->group].name : NULL;
}

/* The client as ferry saw the connection: the TCP peer, a load balancer when PROXY came first. */
static void fy_al_peer(fy_conn *c, char *out, size_t len) {
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  char ip[INET6_ADDRSTRLEN] = "-";
  int port = 0;
  if (uv_tcp_getpeername(&c->sock.tcp, (struct sockaddr *)&ss, &sl) == 0)
    fy_addr_name(&ss, ip, sizeof ip, &port);
  snprintf(out, len, strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
}

static void fy_al_fields(fy_buf *o, const fy_req *r) {
  fy_buf_puts(o, "{");
  const char *p = r->log_fields.data, *end = p + r->log_fields.len;
  for (bool first = true; p < end; first = false) {
    size_t nlen = strlen(p);
    const char *json = p + nlen + 1;
    size_t jlen = strlen(json);
    fy_buf_printf(o, "%s\"%s\":%s", first ? "" : ",", p, json);
    p = json + jlen + 1;
  }
  fy_buf_puts(o, "}");
}

static void fy_al_json(fy_buf *o, fy_conn *c) {
  const fy_req *r = &c->req;
  fy_buf_puts(o, "{\"time\":\"");
  fy_al_time(o);
  fy_buf_printf(o, "\",\"request_id\":%llu", (unsigned long long)r->id);
  fy_json_key_str(o, "listener", c->listener->name);
  fy_json_key_str(o, "client_addr", c->client_ip);
  fy_buf_printf(o, ",\"client_port\":%d", c->client_port);
  const fy_proxy_info *pp = c->pp;
  bool proxied = pp && !pp->local && pp->family != AF_UNSPEC;
  char peer[INET6_ADDRSTRLEN + 10], src[INET6_ADDRSTRLEN + 10];
  if (proxied) {
    fy_al_peer(c, peer, sizeof peer);
    snprintf(src, sizeof src, strchr(c->client_ip, ':') ? "[%s]:%d" : "%s:%d", c->client_ip, c->client_port);
  }
  fy_json_key_str(o, "peer_addr", proxied ? peer : NULL);
  fy_json_key_str(o, "proxy_source", proxied ? src : NULL);
  fy_json_key_str(o, "vpce_id", pp && pp->vpce_id[0] ? pp->vpce_id : NULL);
  fy_tls_info tls = {0};
  bool has_tls = c->sock.tls && fy_tls_get_info(c->sock.tls, &tls);
  fy_json_key_str(o, "tls_sni", has_tls && tls.sni && tls.sni[0] ? tls.sni : NULL);
  fy_json_key_str(o, "tls_version", has_tls ? tls.version : NULL);
  fy_json_key_str(o, "method", r->method);
  fy_buf_puts(o, ",\"host\":");
  fy_json_str(o, r->host, r->host_len);
  fy_target t = r->method ? r->target : (fy_target){0};
  fy_buf_puts(o, ",\"path\":");
  fy_json_str(o, t.path ? t.path : "", FY_MIN(t.path_len, 2048));
  fy_buf_puts(o, ",\"query\":");
  if (t.query)
    fy_json_str(o, t.query, FY_MIN(t.query_len, 2048));
  else
    fy_buf_puts(o, "null");
  fy_buf_printf(o, ",\"status\":%d,\"bytes_in\":%llu,\"bytes_out\":%llu", r->status,
                (unsigned long long)r->bytes_in, (unsigned long long)r->bytes_out);
  fy_json_key_str(o, "group", fy_al_group(r));
  fy_json_key_str(o, "server", r->server);
  fy_buf_printf(o, ",\"attempts\":%u,\"failures\":[", r->group >= 0 ? c->ex.attempt : 0);
  for (unsigned i = 0; i < FY_MIN(r->nfailures, FY_ARRAY_SIZE(r->failures)); i++)
    fy_buf_printf(o, "%s\"%s\"", i ? "," : "", fy_failure_name((enum fy_failure)r->failures[i]));
  fy_buf_puts(o, "]");
  uint64_t now = uv_hrtime();
  fy_json_key_ms(o, "upstream_connect_ms", r->connect_ns, r->connect_ns != 0);
  fy_json_key_ms(o, "upstream_header_ms", r->header_ns, r->header_ns != 0);
  fy_json_key_ms(o, "duration_ms", r->started_ns && now > r->started_ns ? now - r->started_ns : 0, true);
  fy_json_key_ms(o, "policy_ms", r->policy_ns, true);
  fy_json_key_str(o, "termination", r->termination ? r->termination : "ok");
  fy_buf_puts(o, ",\"fields\":");
  fy_al_fields(o, r);
  fy_buf_puts(o, "}\n");
}

/* The text line, as ferry has always written it, then the termination and the policy's fields. */
static void fy_al_text(fy_buf *o, fy_conn *c) {
  const fy_req *r = &c->req;
  fy_target t = r->method ? r->target : (fy_target){0};
  const char *group = fy_al_group(r);
  fy_al_time(o);
  fy_buf_printf(o, " [info] access %s \"%s %s://%.*s%.*s%s%.*s\" %d %llu %s %s %llums id=%llu end=%s",
                c->client_ip, r->method ? r->method : "-", c->sock.tls ? "https" : "http", (int)r->host_len,
                r->host, (int)FY_MIN(t.path_len, 512), t.path ? t.path : "", t.query ? "?" : "",
                (int)FY_MIN(t.query_len, 512), t.query ? t.query : "", r->status,
                (unsigned long long)r->bytes_out, group ? group : "-", r->server ? r->server : "-",
                (unsigned long long)(fy_now_ms(c) - r->started_ms), (unsigned long long)r->id,
                r->termination ? r->termination : "ok");
  if (r->log_fields.len) {
    fy_buf_puts(o, " fields=");
    fy_al_fields(o, r);
  }
  fy_buf_puts(o, "\n");
}

void fy_access_log_write(fy_conn *c) {
  if (!c->gen->cfg->access_log) return;
  fy_buf *o = &fy_al_batch.buf;
  if (c->gen->cfg->access_json)
    fy_al_json(o, c);
  else
    fy_al_text(o, c);
  fy_al_batch.lines++;
  fy_al_batch.w = c->w;
  if (o->len >= FY_AL_BATCH) {
    fy_al_flush();
  } else if (!fy_al_batch.queued) {
    fy_al_batch.flush.run = fy_al_flush_deferred;
    fy_al_batch.queued = true;
    fy_worker_defer(c->w, &fy_al_batch.flush);
  }
}

/* ---- fields from the policy --------------------------------------------- */

#define FY_AL_MAX_FIELDS_BYTES 4096

/* Sets name to json (replacing an earlier value); the list is name\0json\0... */
int fy_access_log_field(fy_req *r, const char *name, size_t nlen, const char *json, size_t jlen) {
  fy_buf next;
  fy_buf_init(&next);
  const char *p = r->log_fields.data, *end = p + r->log_fields.len;
  while (p < end) {
    size_t n = strlen(p), j = strlen(p + n + 1);
    if (n != nlen || memcmp(p, name, nlen) != 0) fy_buf_append(&next, p, n + j + 2);
    p += n + j + 2;
  }
  if (next.len + nlen + jlen + 2 > FY_AL_MAX_FIELDS_BYTES) {
    fy_buf_free(&next);
    return FY_ETOOBIG;
  }
  fy_buf_append(&next, name, nlen);
  fy_buf_append(&next, "", 1);
  fy_buf_append(&next, json, jlen);
  fy_buf_append(&next, "", 1);
  fy_buf_free(&r->log_fields);
  r->log_fields = next;
  return FY_OK;
}

/*
 * req:log_field(name, value) from any hook that has the request. kind: 0 a
 * string (escaped here), 1 a number already formatted by Lua (finite), 2
 * true, 3 false. Returns 0, -1 (request gone), -3 (too many bytes).
 */
int fy_ffi_req_log_field(double id, const char *name, size_t nlen, int kind, const char *val, size_t vlen) {
  fy_req *r = fy_hook_current.req;
  if (r == NULL || (double)r->id != id) return -1;
  fy_buf json;
  fy_buf_init(&json);
  if (kind == 0)
    fy_json_str(&json, val, vlen);
  else if (kind == 1)
    fy_buf_append(&json, val, vlen);
  else
    fy_buf_puts(&json, kind == 2 ? "true" : "false");
  int rc = fy_access_log_field(r, name, nlen, json.data, json.len);
  fy_buf_free(&json);
  return rc == FY_OK ? 0 : -3;
}
