/*
 * Choosing a server of a group: the four balancers, and passive health.
 *
 * Every balancer works on the servers that are eligible for this attempt:
 * in service (not ejected) and not tried already by this request. When that
 * leaves nobody, earlier attempts' servers come back first, then ejected
 * ones: failing open beats refusing every request when all look sick.
 */
#include "upstream.h"

#include "log.h"

#include <math.h>

/* 64-bit FNV-1a with a final avalanche (splitmix64), good enough for a ring. */
uint64_t fy_hash_bytes(const void *data, size_t len) {
  const unsigned char *p = data;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (size_t i = 0; i < len; i++)
    h = (h ^ p[i]) * 0x100000001b3ULL;
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  return h ^ (h >> 31);
}

#define FY_P2C_STALE_MS 5000 /* a latency older than this is forgotten */
#define FY_P2C_SAME_MS 2.0   /* costs closer than this are equal (a new connection's setup is noise) */

static __thread uint64_t fy_rand_state = 0x9e3779b97f4a7c15ULL;

static uint64_t fy_rand(void) {
  uint64_t x = fy_rand_state; /* xorshift64 */
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return fy_rand_state = x;
}

/* ---- passive health ------------------------------------------------------ */

/*
 * The health is shared by every worker: reads are relaxed loads, and a
 * success writes only when there is something to clear, so the cache line
 * stays shared while servers are healthy.
 */
bool fy_server_in_service(const fy_server *s, uint64_t now_ms) {
  const fy_server_health *h = s->health;
  return !atomic_load_explicit(&h->down, memory_order_relaxed) &&
         atomic_load_explicit(&h->ejected_until, memory_order_relaxed) <= now_ms;
}

void fy_server_succeeded(fy_server *s, double latency_ms, uint64_t now_ms) {
  fy_server_health *h = s->health;
  if (atomic_load_explicit(&h->fails, memory_order_relaxed)) atomic_store(&h->fails, 0);
  if (atomic_load_explicit(&h->ejections, memory_order_relaxed)) atomic_store(&h->ejections, 0);
  bool fresh = s->ewma_ms == 0 || now_ms - s->ewma_at > FY_P2C_STALE_MS;
  s->ewma_ms = fresh ? latency_ms : 0.8 * s->ewma_ms + 0.2 * latency_ms;
  s->ewma_at = now_ms;
}

static size_t fy_group_ejected(const fy_group *g, uint64_t now_ms) {
  size_t n = 0;
  for (size_t i = 0; i < g->nservers; i++)
    n += !fy_server_in_service(g->servers[i], now_ms);
  return n;
}

/*
 * After max_fails consecutive failures a server is ejected for `eject`,
 * doubling on each ejection in a row up to max_eject, unless that would put
 * more than max_ejected of the group out of service.
 */
void fy_server_failed(fy_server *s, uint64_t now_ms) {
  const fy_cfg_group *cfg = s->group->cfg;
  fy_server_health *h = s->health;
  unsigned fails = atomic_fetch_add(&h->fails, 1) + 1;
  if (cfg->max_fails == 0 || fails < cfg->max_fails || !fy_server_in_service(s, now_ms)) return;
  size_t ejected = fy_group_ejected(s->group, now_ms);
  if ((double)(ejected + 1) > cfg->max_ejected * (double)s->group->nservers) {
    fy_log_warn("upstream %s: %s failed %u times in a row but stays in service (max_ejected)", cfg->name,
                s->addr_text, fails);
    return;
  }
  uint64_t ms = cfg->eject;
  unsigned ejections = atomic_fetch_add(&h->ejections, 1);
  for (unsigned i = 0; i < ejections && ms < cfg->max_eject; i++)
    ms *= 2;
  ms = FY_MIN(ms, cfg->max_eject);
  atomic_store(&h->fails, 0);
  atomic_store(&h->ejected_until, now_ms + ms);
  fy_log_warn("upstream %s: %s ejected for %.1f s after %u failures in a row", cfg->name, s->addr_text,
              (double)ms / 1000.0, cfg->max_fails);
}

/* ---- eligibility ---------------------------------------------------------- */

typedef struct fy_pick {
  fy_server *const *avoid;
  size_t navoid;
  uint64_t now_ms;
  int level; /* 0: strict, 1: tried servers allowed, 2: ejected allowed too */
} fy_pick;

static bool fy_pick_ok(const fy_pick *p, const fy_server *s) {
  if (p->level < 2 && !fy_server_in_service(s, p->now_ms)) return false;
  if (p->level < 1)
    for (size_t i = 0; i < p->navoid; i++)
      if (p->avoid[i] == s) return false;
  return true;
}

/* ---- balancers ------------------------------------------------------------ */

/* Smooth weighted round robin: spreads a server's share evenly over time. */
static fy_server *fy_pick_round_robin(fy_group *g, const fy_pick *p) {
  fy_server *best = NULL;
  int total = 0;
  for (size_t i = 0; i < g->nservers; i++) {
    fy_server *s = g->servers[i];
    if (!fy_pick_ok(p, s)) continue;
    s->current_weight += (int)s->weight;
    total += (int)s->weight;
    if (best == NULL || s->current_weight > best->current_weight) best = s;
  }
  if (best) best->current_weight -= total;
  return best;
}

/* Fewest connections in use per unit of weight; ties go round. */
static fy_server *fy_pick_least_conn(fy_group *g, const fy_pick *p) {
  fy_server *best = NULL;
  double best_load = 0;
  size_t start = g->next++;
  for (size_t k = 0; k < g->nservers; k++) {
    fy_server *s = g->servers[(start + k) % g->nservers];
    if (!fy_pick_ok(p, s)) continue;
    double load = (double)(s->active + 1) / s->weight;
    if (best == NULL || load < best_load) best = s, best_load = load;
  }
  return best;
}

/*
 * Power of two choices on latency: two random candidates, the one with the
 * lower cost wins. Costs within 20% or 2 ms of each other count as equal
 * (the choice is then random), so noise in small latencies does not pin all
 * traffic on one server, and a latency not refreshed for FY_P2C_STALE_MS is
 * forgotten, so a server once slow gets probed again.
 */
static double fy_p2c_cost(const fy_server *s, uint64_t now_ms) {
  double ewma = now_ms - s->ewma_at > FY_P2C_STALE_MS ? 0 : s->ewma_ms;
  return (ewma + 1.0) * (s->active + 1) / s->weight;
}

static fy_server *fy_pick_p2c(fy_group *g, const fy_pick *p) {
  fy_server *eligible[64];
  size_t n = 0;
  for (size_t i = 0; i < g->nservers && n < FY_ARRAY_SIZE(eligible); i++)
    if (fy_pick_ok(p, g->servers[i])) eligible[n++] = g->servers[i];
  if (n == 0) return NULL;
  if (n == 1) return eligible[0];
  size_t a = fy_rand() % n, b = fy_rand() % (n - 1);
  if (b >= a) b++;
  double ca = fy_p2c_cost(eligible[a], p->now_ms), cb = fy_p2c_cost(eligible[b], p->now_ms);
  if (ca < cb * 0.8 && cb - ca > FY_P2C_SAME_MS) return eligible[a];
  if (cb < ca * 0.8 && ca - cb > FY_P2C_SAME_MS) return eligible[b];
  return fy_rand() & 1 ? eligible[a] : eligible[b];
}

/* Consistent hashing: the first eligible point at or after the key's hash. */
static fy_server *fy_pick_hash(fy_group *g, const fy_pick *p, uint64_t key) {
  size_t lo = 0, hi = g->nring;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (g->ring[mid].hash < key)
      lo = mid + 1;
    else
      hi = mid;
  }
  for (size_t k = 0; k < g->nring; k++) {
    fy_server *s = g->ring[(lo + k) % g->nring].server;
    if (fy_pick_ok(p, s)) return s;
  }
  return NULL;
}

fy_server *fy_group_pick(fy_group *g, uint64_t key, bool has_key, fy_server *const *avoid, size_t navoid,
                         uint64_t now_ms) {
  fy_pick p = {avoid, navoid, now_ms, 0};
  for (; p.level <= 2; p.level++) {
    fy_server *s = NULL;
    switch (g->cfg->balance) {
    case FY_BALANCE_HASH: s = has_key ? fy_pick_hash(g, &p, key) : fy_pick_round_robin(g, &p); break;
    case FY_BALANCE_LEAST_CONN: s = fy_pick_least_conn(g, &p); break;
    case FY_BALANCE_P2C: s = fy_pick_p2c(g, &p); break;
    case FY_BALANCE_ROUND_ROBIN: s = fy_pick_round_robin(g, &p); break;
    }
    if (s) return s;
  }
  return g->servers[0]; /* unreachable: level 2 accepts every server */
}
