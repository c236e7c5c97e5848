/*
 * Counters that policies declare: `ferry.metrics.counter(name, help,
 * labels)` at load time, `:inc(values...)` from hooks (lua/ferry/metrics.lua),
 * exposed as ferry_policy_<name>_total in /metrics.
 *
 * Values live here, in C, per worker, not in a generation's Lua state: a
 * reload builds a new state, and a counter it declares again (same name,
 * same labels) keeps counting where the old one was. Each generation's Lua
 * state lists the counters it declared (fy_lua.counters); /metrics shows
 * those of the live generation, so a counter a new policy no longer
 * declares disappears with the old generation. Registries of several
 * workers are summed by name and label set with fy_policy_metrics_merge.
 *
 * Bounds: FY_POLICY_COUNTERS counters per worker, FY_POLICY_LABELS labels
 * per counter, and FY_POLICY_SERIES label sets per counter, after which
 * increments go to the counter's overflow="true" series.
 */
#ifndef FERRY_POLICY_METRICS_H
#define FERRY_POLICY_METRICS_H

#include "metrics.h"

#include <stdbool.h>

#define FY_POLICY_COUNTERS 64
#define FY_POLICY_LABELS 8
#define FY_POLICY_SERIES 200
#define FY_POLICY_VALUE_MAX 128 /* bytes of one label value */

typedef struct fy_policy_counter {
  char *name; /* as declared, e.g. "decisions" */
  char *help;
  char *labels[FY_POLICY_LABELS];
  unsigned nlabels;
  bool live; /* declared by the generation being written out (fy_policy_metrics_mark_live) */
  fy_family series;
} fy_policy_counter;

typedef struct fy_policy_metrics {
  fy_policy_counter *v;
  size_t n, cap;
} fy_policy_metrics;

/*
 * Finds or adds the counter (name, help, labels: names joined by ','). An
 * existing counter of that name with other labels is left to the
 * generations that use it and a new one is added. Returns its index, or a
 * negative error with msg filled in.
 */
int fy_policy_metrics_declare(fy_policy_metrics *m, const char *name, const char *help, const char *labels,
                              char *msg, size_t msglen);
/* Adds n to the series of counter id for values (nlabels strings, lengths in lens). */
int fy_policy_metrics_inc(fy_policy_metrics *m, int id, const char *const *values, const size_t *lens,
                          unsigned nvalues, uint64_t n);
/* Marks live exactly the counters listed in ids (those of the live generation). */
void fy_policy_metrics_mark_live(fy_policy_metrics *m, const int *ids, size_t n);
/* Adds from's counters and series into to, matching name and labels; live is or-ed. */
void fy_policy_metrics_merge(fy_policy_metrics *to, const fy_policy_metrics *from);
/* HELP, TYPE and samples of the live counters. */
void fy_policy_metrics_write(fy_buf *out, const fy_policy_metrics *m);
void fy_policy_metrics_reset(fy_policy_metrics *m); /* drops every series (ferry test) */
void fy_policy_metrics_free(fy_policy_metrics *m);

/* `ferry test`'s registry, which counters declared outside a generation use (NULL where ferry serves). */
extern __thread fy_policy_metrics *fy_policy_metrics_direct;

struct fy_lua;
/*
 * Gives each counter lua's policies declared its id in the registry of
 * lua's worker (lua->counters), on that worker's loop; already bound ones
 * are left as they are.
 */
void fy_lua_counters_bind(struct fy_lua *lua);

#endif
