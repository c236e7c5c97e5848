#include "metrics.h"

#include "common.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* From half a millisecond (a pooled upstream on the same network) to a minute (a slow upload). */
const double fy_metrics_bounds[FY_HIST_NBOUNDS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                   0.25,   0.5,   1,      2.5,   5,    10,    30,   60};

static const struct {
  const char *name, *help;
  bool hist;
} fy_families[FY_M_COUNT] = {
    [FY_M_REQUEST_DURATION] = {"ferry_request_duration_seconds",
                               "time from a request's first byte to the end of its answer, by listener, "
                               "upstream group (none: answered by ferry or the policy) and status class",
                               true},
    [FY_M_CONNECT_DURATION] = {"ferry_upstream_connect_duration_seconds",
                               "time to open a new upstream connection (TLS handshake included), by group",
                               true},
    [FY_M_HEADER_DURATION] = {"ferry_upstream_header_duration_seconds",
                              "time from sending a request upstream to its response head, by group", true},
    [FY_M_HOOK_DURATION] = {"ferry_hook_duration_seconds", "time spent in one call of a policy hook, by hook",
                            true},
    [FY_M_SERVER_RESPONSES] = {"ferry_upstream_responses_total",
                               "response heads received from upstream servers, by group, server address and "
                               "status class",
                               false},
    [FY_M_SERVER_ATTEMPTS] = {"ferry_upstream_server_attempts_total",
                              "attempts to reach an upstream server, by group and server address", false},
    [FY_M_DNS_LOOKUPS] = {"ferry_dns_lookups_total",
                          "re-resolutions of upstream server names by outcome (ok, empty: no address, "
                          "failed)",
                          false},
};

static uint64_t fy_metrics_hash(const char *s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
  return h ? h : 1; /* 0 marks an empty slot */
}

char *fy_labels(char *out, size_t cap, ...) {
  va_list ap;
  va_start(ap, cap);
  size_t n = 0;
  const char *name;
  out[0] = 0;
  while ((name = va_arg(ap, const char *)) != NULL) {
    const char *value = va_arg(ap, const char *);
    int w = snprintf(out + n, cap - n, "%s%s=\"", n ? "," : "", name);
    if (w < 0 || (size_t)w >= cap - n) break;
    n += (size_t)w;
    for (const char *p = value ? value : ""; *p && n + 3 < cap; p++) {
      if (*p == '\\' || *p == '"' || *p == '\n') out[n++] = '\\';
      out[n++] = *p == '\n' ? 'n' : *p;
    }
    if (n + 2 >= cap) break;
    out[n++] = '"';
    out[n] = 0;
  }
  va_end(ap);
  return out;
}

static void fy_family_grow(fy_family *f) {
  size_t cap = f->cap ? f->cap * 2 : 16;
  fy_series **slots = fy_calloc(cap, sizeof *slots);
  for (size_t i = 0; i < f->cap; i++) {
    if (f->slots[i] == NULL) continue;
    size_t j = f->slots[i]->hash & (cap - 1);
    while (slots[j] != NULL)
      j = (j + 1) & (cap - 1);
    slots[j] = f->slots[i];
  }
  free(f->slots);
  f->slots = slots;
  f->cap = cap;
}

static fy_series *fy_family_lookup(const fy_family *f, uint64_t h, const char *labels) {
  if (f->cap == 0) return NULL;
  for (size_t j = h & (f->cap - 1); f->slots[j] != NULL; j = (j + 1) & (f->cap - 1))
    if (f->slots[j]->hash == h && strcmp(f->slots[j]->labels, labels) == 0) return f->slots[j];
  return NULL;
}

/* The series for labels, created on first use; past the cap, the overflow series. */
static fy_series *fy_family_get(fy_family *f, bool hist, const char *labels) {
  uint64_t h = fy_metrics_hash(labels);
  fy_series *s = fy_family_lookup(f, h, labels);
  if (s) return s;
  if (f->n >= (f->max ? f->max : FY_METRICS_MAX_SERIES) && strcmp(labels, "overflow=\"true\"") != 0)
    return fy_family_get(f, hist, "overflow=\"true\"");
  if ((f->n + 1) * 4 > f->cap * 3) fy_family_grow(f);
  size_t j = h & (f->cap - 1);
  while (f->slots[j] != NULL)
    j = (j + 1) & (f->cap - 1);
  s = f->slots[j] = fy_calloc(1, sizeof *s);
  s->hash = h;
  s->labels = fy_strdup(labels);
  s->hist = hist ? fy_calloc(1, sizeof *s->hist) : NULL;
  f->n++;
  return s;
}

fy_series *fy_metrics_series(fy_metrics *m, enum fy_metric_family f, const char *labels) {
  return fy_family_get(&m->fam[f], fy_families[f].hist, labels);
}

void fy_series_observe(fy_series *s, uint64_t ns) {
  fy_hist *h = s->hist;
  double sec = (double)ns / 1e9;
  size_t i = 0;
  while (i < FY_HIST_NBOUNDS && sec > fy_metrics_bounds[i])
    i++;
  h->buckets[i]++;
  h->sum_ns += ns;
}

void fy_metrics_observe(fy_metrics *m, enum fy_metric_family f, const char *labels, uint64_t ns) {
  fy_series_observe(fy_metrics_series(m, f, labels), ns);
}

void fy_metrics_add(fy_metrics *m, enum fy_metric_family f, const char *labels, uint64_t n) {
  fy_metrics_series(m, f, labels)->value += n;
}

void fy_metrics_merge(fy_metrics *to, const fy_metrics *from) {
  for (int f = 0; f < FY_M_COUNT; f++) {
    const fy_family *src = &from->fam[f];
    for (size_t i = 0; i < src->cap; i++) {
      const fy_series *s = src->slots[i];
      if (s == NULL) continue;
      fy_series *d = fy_family_get(&to->fam[f], fy_families[f].hist, s->labels);
      d->value += s->value;
      if (s->hist && d->hist) {
        for (int b = 0; b <= FY_HIST_NBOUNDS; b++)
          d->hist->buckets[b] += s->hist->buckets[b];
        d->hist->sum_ns += s->hist->sum_ns;
      }
    }
  }
}

void fy_family_free(fy_family *f) {
  for (size_t i = 0; i < f->cap; i++) {
    if (f->slots[i] == NULL) continue;
    free(f->slots[i]->labels);
    free(f->slots[i]->hist);
    free(f->slots[i]);
  }
  free(f->slots);
  f->slots = NULL;
  f->cap = f->n = 0;
}

void fy_metrics_free(fy_metrics *m) {
  for (int f = 0; f < FY_M_COUNT; f++)
    fy_family_free(&m->fam[f]);
}

uint64_t *fy_family_counter(fy_family *f, const char *labels) {
  return &fy_family_get(f, false, labels)->value;
}

const uint64_t *fy_family_find(const fy_family *f, const char *labels) {
  const fy_series *s = fy_family_lookup(f, fy_metrics_hash(labels), labels);
  return s ? &s->value : NULL;
}

void fy_family_merge_counters(fy_family *to, const fy_family *from) {
  for (size_t i = 0; i < from->cap; i++)
    if (from->slots[i] != NULL) *fy_family_counter(to, from->slots[i]->labels) += from->slots[i]->value;
}

static int fy_series_cmp(const void *a, const void *b) {
  return strcmp((*(const fy_series *const *)a)->labels, (*(const fy_series *const *)b)->labels);
}

static void fy_hist_write(fy_buf *o, const char *name, const fy_series *s) {
  const char *sep = s->labels[0] ? "," : "";
  uint64_t cum = 0;
  for (int b = 0; b < FY_HIST_NBOUNDS; b++) {
    cum += s->hist->buckets[b];
    fy_buf_printf(o, "%s_bucket{%s%sle=\"%g\"} %llu\n", name, s->labels, sep, fy_metrics_bounds[b],
                  (unsigned long long)cum);
  }
  cum += s->hist->buckets[FY_HIST_NBOUNDS];
  fy_buf_printf(o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, s->labels, sep, (unsigned long long)cum);
  fy_buf_printf(o, "%s_sum{%s} %.9f\n", name, s->labels, (double)s->hist->sum_ns / 1e9);
  fy_buf_printf(o, "%s_count{%s} %llu\n", name, s->labels, (unsigned long long)cum);
}

/* The series of fam, sorted by label set; the caller frees the array. */
static const fy_series **fy_family_sorted(const fy_family *fam) {
  const fy_series **v = fy_calloc(fam->n ? fam->n : 1, sizeof *v);
  size_t n = 0;
  for (size_t i = 0; i < fam->cap; i++)
    if (fam->slots[i] != NULL) v[n++] = fam->slots[i];
  qsort(v, n, sizeof *v, fy_series_cmp);
  return v;
}

void fy_family_write_counters(fy_buf *o, const char *name, const fy_family *f) {
  const fy_series **v = fy_family_sorted(f);
  for (size_t i = 0; i < f->n; i++)
    fy_buf_printf(o, v[i]->labels[0] ? "%s{%s} %llu\n" : "%s%s %llu\n", name, v[i]->labels,
                  (unsigned long long)v[i]->value);
  free(v);
}

void fy_metrics_write(fy_buf *o, const fy_metrics *m) {
  for (int f = 0; f < FY_M_COUNT; f++) {
    const fy_family *fam = &m->fam[f];
    const char *name = fy_families[f].name;
    fy_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, fy_families[f].help, name,
                  fy_families[f].hist ? "histogram" : "counter");
    if (!fy_families[f].hist) {
      fy_family_write_counters(o, name, fam);
      continue;
    }
    const fy_series **v = fy_family_sorted(fam);
    for (size_t i = 0; i < fam->n; i++)
      fy_hist_write(o, name, v[i]);
    free(v);
  }
}

const char *fy_metrics_class(int status) {
  static const char *const classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  return classes[fy_metrics_class_index(status)];
}
