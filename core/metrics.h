/*
 * Labelled Prometheus series: latency histograms and counters keyed by a
 * label set, kept per worker and written out by fy_metrics_write().
 *
 * A worker owns one fy_metrics and is the only thread that touches it, so
 * recording is a hash lookup and an add, never a lock. To show several
 * workers as one process, sum them first with fy_metrics_merge() into a
 * scratch fy_metrics and write that: the exposition never reads a global.
 *
 * Label values come from the configuration (listener and group names), from
 * ferry itself (status classes, hooks, outcomes) or from DNS (server
 * addresses), never from what a client sends. A family still holds at most
 * FY_METRICS_MAX_SERIES label sets; what comes after is added to one series
 * labelled overflow="true", so a runaway label cannot grow memory.
 */
#ifndef FERRY_METRICS_H
#define FERRY_METRICS_H

#include "buf.h"

#include <stddef.h>
#include <stdint.h>

#define FY_METRICS_MAX_SERIES 2000
#define FY_HIST_NBOUNDS 16 /* upper bounds in seconds, fy_metrics_bounds; then +Inf */
#define FY_LABELS_MAX 512  /* a rendered label set, e.g. group="metrics",server="10.0.0.1:80" */

enum fy_metric_family {
  FY_M_REQUEST_DURATION, /* histogram {listener, group, class} */
  FY_M_CONNECT_DURATION, /* histogram {group}: new upstream connections, TLS handshake included */
  FY_M_HEADER_DURATION,  /* histogram {group}: request sent to response head */
  FY_M_HOOK_DURATION,    /* histogram {hook} */
  FY_M_SERVER_RESPONSES, /* counter {group, server, class} */
  FY_M_SERVER_ATTEMPTS,  /* counter {group, server} */
  FY_M_DNS_LOOKUPS,      /* counter {outcome} */
  FY_M_COUNT
};

typedef struct fy_hist {
  uint64_t buckets[FY_HIST_NBOUNDS + 1]; /* not cumulative; the last is above every bound */
  uint64_t sum_ns;
} fy_hist;

typedef struct fy_series {
  uint64_t hash;
  char *labels; /* rendered, without braces */
  uint64_t value;
  fy_hist *hist; /* histogram families only */
} fy_series;

typedef struct fy_family {
  fy_series **slots; /* open addressing, a power of two; each series is its own allocation */
  size_t cap, n;
  size_t max; /* label sets kept apart before overflow="true"; 0: FY_METRICS_MAX_SERIES */
} fy_family;

typedef struct fy_metrics {
  fy_family fam[FY_M_COUNT];
} fy_metrics;

extern const double fy_metrics_bounds[FY_HIST_NBOUNDS];

/* A zeroed fy_metrics is empty and ready; free releases its series. */
void fy_metrics_free(fy_metrics *m);

/*
 * Renders label pairs (name, value, ..., NULL) as name="value",... with
 * values escaped for the text format. Returns out.
 */
char *fy_labels(char *out, size_t cap, ...) __attribute__((sentinel));

/*
 * The series of family f for labels, created on first use. Its address stays
 * the same until fy_metrics_free, so a hot path renders its labels once and
 * keeps the pointer (see fy_group, fy_server, fy_listener and fy_lua).
 */
fy_series *fy_metrics_series(fy_metrics *m, enum fy_metric_family f, const char *labels);
void fy_series_observe(fy_series *s, uint64_t ns); /* histogram families */
static inline void fy_series_add(fy_series *s, uint64_t n) { s->value += n; }

void fy_metrics_observe(fy_metrics *m, enum fy_metric_family f, const char *labels, uint64_t ns);
void fy_metrics_add(fy_metrics *m, enum fy_metric_family f, const char *labels, uint64_t n);
/* Adds every series of from into to (summing workers). */
void fy_metrics_merge(fy_metrics *to, const fy_metrics *from);
/* The text exposition of m's families (HELP, TYPE, samples), sorted by label set. */
void fy_metrics_write(fy_buf *out, const fy_metrics *m);

/* Counter families outside fy_metrics (policy counters): a series' value, created on first use. */
uint64_t *fy_family_counter(fy_family *f, const char *labels);
const uint64_t *fy_family_find(const fy_family *f, const char *labels); /* NULL: no such series */
void fy_family_merge_counters(fy_family *to, const fy_family *from);
/* Writes the samples "name{labels} value" of f, sorted by label set (no HELP or TYPE). */
void fy_family_write_counters(fy_buf *out, const char *name, const fy_family *f);
void fy_family_free(fy_family *f);

/* The status class label of a status: "2xx", or "none" for a cut exchange. */
const char *fy_metrics_class(int status);
/* Its index, 0 (none) to 5 (5xx): FY_METRICS_NCLASSES of them. */
#define FY_METRICS_NCLASSES 6
static inline int fy_metrics_class_index(int status) {
  return status >= 100 && status < 600 ? status / 100 : 0;
}

#endif
