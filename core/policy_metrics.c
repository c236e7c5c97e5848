#include "policy_metrics.h"

#include "common.h"
#include "ffi.h"
#include "log.h"
#include "lua_host.h"
#include "worker.h"

#include <stdio.h>
#include <string.h>

static bool fy_pm_name_ok(const char *s, bool upper) {
  if (!s[0] || (s[0] >= '0' && s[0] <= '9') || strlen(s) > 64) return false;
  for (const char *p = s; *p; p++) {
    bool ok = (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              (upper && *p >= 'A' && *p <= 'Z');
    if (!ok) return false;
  }
  return true;
}

/* Splits "a,b" into m's label names; 0, or -1 with msg. */
static int fy_pm_parse_labels(fy_policy_counter *c, const char *labels, char *msg, size_t msglen) {
  char *copy = fy_strdup(labels), *save = NULL;
  int rc = 0;
  for (char *l = strtok_r(copy, ",", &save); l && rc == 0; l = strtok_r(NULL, ",", &save)) {
    if (!fy_pm_name_ok(l, true) || strncmp(l, "__", 2) == 0 || strcmp(l, "overflow") == 0) {
      snprintf(msg, msglen, "'%s' is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, not __..., not overflow)", l);
      rc = -1;
    } else if (c->nlabels == FY_POLICY_LABELS) {
      snprintf(msg, msglen, "at most %d labels", FY_POLICY_LABELS);
      rc = -1;
    } else {
      for (unsigned i = 0; i < c->nlabels && rc == 0; i++)
        if (strcmp(c->labels[i], l) == 0) {
          snprintf(msg, msglen, "label '%s' is named twice", l);
          rc = -1;
        }
      if (rc == 0) c->labels[c->nlabels++] = fy_strdup(l);
    }
  }
  free(copy);
  return rc;
}

static void fy_pm_counter_free(fy_policy_counter *c) {
  free(c->name);
  free(c->help);
  for (unsigned i = 0; i < c->nlabels; i++)
    free(c->labels[i]);
  fy_family_free(&c->series);
}

static bool fy_pm_same_labels(const fy_policy_counter *a, const fy_policy_counter *b) {
  if (a->nlabels != b->nlabels) return false;
  for (unsigned i = 0; i < a->nlabels; i++)
    if (strcmp(a->labels[i], b->labels[i]) != 0) return false;
  return true;
}

static int fy_pm_find(const fy_policy_metrics *m, const fy_policy_counter *c) {
  for (size_t i = 0; i < m->n; i++)
    if (strcmp(m->v[i].name, c->name) == 0 && fy_pm_same_labels(&m->v[i], c)) return (int)i;
  return -1;
}

static int fy_pm_add(fy_policy_metrics *m, fy_policy_counter *c) {
  if (m->n == m->cap) {
    m->cap = m->cap ? m->cap * 2 : 8;
    m->v = fy_realloc(m->v, m->cap * sizeof *m->v);
  }
  c->series.max = FY_POLICY_SERIES;
  m->v[m->n] = *c;
  return (int)m->n++;
}

int fy_policy_metrics_declare(fy_policy_metrics *m, const char *name, const char *help, const char *labels,
                              char *msg, size_t msglen) {
  if (!fy_pm_name_ok(name, false)) {
    snprintf(msg, msglen, "'%s' is not a counter name ([a-z_][a-z0-9_]*, at most 64 bytes)", name);
    return FY_ECONFIG;
  }
  fy_policy_counter c = {.name = fy_strdup(name), .help = fy_strdup(help)};
  if (fy_pm_parse_labels(&c, labels, msg, msglen) != 0) {
    fy_pm_counter_free(&c);
    return FY_ECONFIG;
  }
  int id = fy_pm_find(m, &c);
  if (id >= 0) {
    free(m->v[id].help); /* the latest declaration's help text wins */
    m->v[id].help = c.help;
    c.help = NULL;
    fy_pm_counter_free(&c);
    return id;
  }
  if (m->n >= FY_POLICY_COUNTERS) {
    snprintf(msg, msglen, "too many counters (at most %d, over every generation's declarations)",
             FY_POLICY_COUNTERS);
    fy_pm_counter_free(&c);
    return FY_ETOOBIG;
  }
  id = fy_pm_add(m, &c);
  if (m->v[id].nlabels == 0) fy_family_counter(&m->v[id].series, ""); /* shown as 0 from the start */
  return id;
}

/* name="value",... of counter c for the given values, escaped; NULL if it does not fit. */
static const char *fy_pm_render(const fy_policy_counter *c, const char *const *values, const size_t *lens,
                                char *out, size_t cap) {
  size_t n = 0;
  out[0] = 0;
  for (unsigned i = 0; i < c->nlabels; i++) {
    int w = snprintf(out + n, cap - n, "%s%s=\"", i ? "," : "", c->labels[i]);
    if (w < 0 || (size_t)w >= cap - n) return NULL;
    n += (size_t)w;
    for (size_t j = 0; j < lens[i]; j++) {
      char ch = values[i][j];
      if (n + 4 >= cap) return NULL;
      if (ch == '\\' || ch == '"' || ch == '\n') out[n++] = '\\';
      out[n++] = ch == '\n' ? 'n' : ch;
    }
    out[n++] = '"';
    out[n] = 0;
  }
  return out;
}

/*
 * The value of counter id's series for values, created on first use (each
 * series is its own allocation, so it stays put: metrics.h). NULL, with the
 * reason in *rc, for a bad id or count, or values too long to render.
 */
static uint64_t *fy_pm_counter(fy_policy_metrics *m, int id, const char *const *values, const size_t *lens,
                               unsigned nvalues, int *rc) {
  *rc = FY_ECONFIG;
  if (id < 0 || (size_t)id >= m->n || nvalues != m->v[id].nlabels) return NULL;
  char labels[FY_POLICY_LABELS * (FY_POLICY_VALUE_MAX * 2 + 72)];
  *rc = FY_ETOOBIG;
  if (fy_pm_render(&m->v[id], values, lens, labels, sizeof labels) == NULL) return NULL;
  *rc = FY_OK;
  return fy_family_counter(&m->v[id].series, labels);
}

int fy_policy_metrics_inc(fy_policy_metrics *m, int id, const char *const *values, const size_t *lens,
                          unsigned nvalues, uint64_t n) {
  int rc;
  uint64_t *value = fy_pm_counter(m, id, values, lens, nvalues, &rc);
  if (value) *value += n;
  return rc;
}

void fy_policy_metrics_mark_live(fy_policy_metrics *m, const int *ids, size_t n) {
  for (size_t i = 0; i < m->n; i++)
    m->v[i].live = false;
  for (size_t i = 0; i < n; i++)
    if (ids[i] >= 0 && (size_t)ids[i] < m->n) m->v[ids[i]].live = true;
}

void fy_policy_metrics_merge(fy_policy_metrics *to, const fy_policy_metrics *from) {
  for (size_t i = 0; i < from->n; i++) {
    const fy_policy_counter *s = &from->v[i];
    int id = fy_pm_find(to, s);
    if (id < 0) {
      fy_policy_counter c = {.name = fy_strdup(s->name), .help = fy_strdup(s->help), .nlabels = s->nlabels};
      for (unsigned j = 0; j < s->nlabels; j++)
        c.labels[j] = fy_strdup(s->labels[j]);
      id = fy_pm_add(to, &c);
    }
    to->v[id].live |= s->live;
    fy_family_merge_counters(&to->v[id].series, &s->series);
  }
}

static void fy_pm_write_help(fy_buf *o, const char *help) {
  for (const char *p = help; *p; p++) {
    if (*p == '\\')
      fy_buf_puts(o, "\\\\");
    else if (*p == '\n')
      fy_buf_puts(o, "\\n");
    else
      fy_buf_append(o, p, 1);
  }
}

void fy_policy_metrics_write(fy_buf *o, const fy_policy_metrics *m) {
  for (size_t i = 0; i < m->n; i++) {
    const fy_policy_counter *c = &m->v[i];
    if (!c->live) continue;
    size_t len = strlen(c->name);
    bool total = len >= 6 && strcmp(c->name + len - 6, "_total") == 0;
    char name[96];
    snprintf(name, sizeof name, "ferry_policy_%s%s", c->name, total ? "" : "_total");
    fy_buf_printf(o, "# HELP %s ", name);
    fy_pm_write_help(o, c->help);
    fy_buf_printf(o, "\n# TYPE %s counter\n", name);
    fy_family_write_counters(o, name, &c->series);
  }
}

void fy_policy_metrics_reset(fy_policy_metrics *m) {
  for (size_t i = 0; i < m->n; i++)
    fy_family_free(&m->v[i].series);
}

void fy_policy_metrics_free(fy_policy_metrics *m) {
  for (size_t i = 0; i < m->n; i++)
    fy_pm_counter_free(&m->v[i]);
  free(m->v);
  memset(m, 0, sizeof *m);
}

/* ---- the FFI side (lua/ferry/metrics.lua) -------------------------------- */

enum { FY_PM_EPHASE = -2, FY_PM_EINVAL = -3 };

__thread fy_policy_metrics *fy_policy_metrics_direct;

/*
 * Declaring is for load time. While a generation's policies load (on the
 * thread that builds it, which need not be its worker's), the counter goes
 * to that Lua state's own list and the id is its place there; the state is
 * bound to its worker's registry on the worker's loop when it first counts
 * or is shown (fy_lua_counters_bind). Under `ferry test`, outside a hook,
 * it goes straight to the test's registry. A hook that declares is refused.
 */
int fy_ffi_metric_declare(const char *name, const char *help, const char *labels, char *msg, size_t msglen) {
  fy_lua *lua = fy_lua_loading;
  fy_policy_metrics *m = lua ? &lua->declared : fy_policy_metrics_direct;
  if (m == NULL || fy_hook_current.req != NULL || fy_hook_current.stream != NULL) {
    snprintf(msg, msglen, "counters are declared when the policy loads, not in a hook");
    return FY_PM_EPHASE;
  }
  int id = fy_policy_metrics_declare(m, name, help, labels, msg, msglen);
  return id < 0 ? FY_PM_EINVAL : id;
}

/* "a,b" from counter c's label names. */
static void fy_pm_join_labels(const fy_policy_counter *c, char *out, size_t cap) {
  size_t n = 0;
  out[0] = 0;
  for (unsigned i = 0; i < c->nlabels && n < cap; i++)
    n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? "," : "", c->labels[i]);
}

void fy_lua_counters_bind(fy_lua *lua) {
  const fy_policy_metrics *d = &lua->declared;
  if (lua->w == NULL || lua->ncounters == d->n) return;
  lua->counters = fy_realloc(lua->counters, d->n * sizeof *lua->counters);
  for (size_t i = lua->ncounters; i < d->n; i++) {
    char labels[FY_POLICY_LABELS * 66], msg[160];
    fy_pm_join_labels(&d->v[i], labels, sizeof labels);
    int id = fy_policy_metrics_declare(&lua->w->policy_metrics, d->v[i].name, d->v[i].help, labels, msg,
                                       sizeof msg);
    if (id < 0) fy_log_warn("policy counter %s is not counted: %s", d->v[i].name, msg);
    lua->counters[i] = id;
  }
  lua->ncounters = d->n;
}

/* Splits NUL-ended strings back to back into v and lens; returns how many. */
static unsigned fy_pm_split(const char *values, size_t len, const char **v, size_t *lens) {
  unsigned k = 0;
  for (size_t off = 0; off < len && k < FY_POLICY_LABELS; k++) {
    v[k] = values + off;
    lens[k] = strnlen(v[k], len - off);
    off += lens[k] + 1;
  }
  return k;
}

/*
 * In a hook of a worker's generation: that worker's registry, with *id (the
 * state's declaration) turned into its id there; -1 when it is not counted
 * (the registry was full, logged when bound), FY_PM_EINVAL when the state
 * declared no such counter. NULL elsewhere (ferry test, a hook outside a
 * worker).
 */
static fy_policy_metrics *fy_pm_hook_registry(int *id) {
  fy_lua *lua = fy_hook_current.lua;
  if (lua == NULL || lua->w == NULL) return NULL;
  fy_lua_counters_bind(lua);
  *id = *id >= 0 && (size_t)*id < lua->ncounters ? lua->counters[*id] : FY_PM_EINVAL;
  return &lua->w->policy_metrics;
}

/*
 * values: nvalues strings back to back, each ended by a NUL (Lua checked
 * there is none inside). From a hook of a generation, id is its place in
 * the state's declarations; under `ferry test`, an id of the test's registry.
 */
int fy_ffi_metric_inc(int id, const char *values, size_t len, unsigned nvalues, double n) {
  if (fy_lua_loading != NULL) return FY_PM_EPHASE; /* a refused reload must count nothing */
  fy_policy_metrics *m = fy_pm_hook_registry(&id);
  if (m == NULL)
    m = fy_policy_metrics_direct;
  else if (id == FY_PM_EINVAL)
    return FY_PM_EINVAL;
  else if (id < 0)
    return 0;
  if (m == NULL) return FY_PM_EPHASE;
  const char *v[FY_POLICY_LABELS];
  size_t lens[FY_POLICY_LABELS];
  if (fy_pm_split(values, len, v, lens) != nvalues || n < 0 || n > 1e15) return FY_PM_EINVAL;
  return fy_policy_metrics_inc(m, id, v, lens, nvalues, (uint64_t)n) == FY_OK ? 0 : FY_PM_EINVAL;
}

uint64_t *fy_ffi_metric_slot(int id, const char *values, size_t len, unsigned nvalues) {
  if (fy_lua_loading != NULL) return NULL;
  fy_policy_metrics *m = fy_pm_hook_registry(&id);
  const char *v[FY_POLICY_LABELS];
  size_t lens[FY_POLICY_LABELS];
  int rc;
  if (m == NULL || id < 0 || fy_pm_split(values, len, v, lens) != nvalues) return NULL;
  return fy_pm_counter(m, id, v, lens, nvalues, &rc);
}

/* The value of counter name's series for values (0 if it has none yet), for specs. */
int fy_ffi_metric_value(const char *name, const char *values, size_t len, unsigned nvalues, double *out) {
  const fy_policy_metrics *m = fy_policy_metrics_direct;
  *out = 0;
  if (m == NULL) return FY_PM_EPHASE;
  for (size_t i = m->n; i-- > 0;) {
    const fy_policy_counter *c = &m->v[i];
    if (strcmp(c->name, name) != 0 || c->nlabels != nvalues) continue;
    const char *v[FY_POLICY_LABELS];
    size_t lens[FY_POLICY_LABELS];
    char labels[FY_POLICY_LABELS * (FY_POLICY_VALUE_MAX * 2 + 72)];
    if (fy_pm_split(values, len, v, lens) != nvalues ||
        fy_pm_render(c, v, lens, labels, sizeof labels) == NULL)
      return FY_PM_EINVAL;
    const uint64_t *value = fy_family_find(&c->series, labels);
    *out = value ? (double)*value : 0;
    return 0;
  }
  return 0;
}

/* Drops every series (ferry test's t.reset_metrics); refused where a generation serves. */
int fy_ffi_metric_reset(void) {
  if (fy_policy_metrics_direct == NULL) return FY_PM_EPHASE;
  fy_policy_metrics_reset(fy_policy_metrics_direct);
  return 0;
}
