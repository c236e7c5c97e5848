/*
 * Unit tests for core/metrics.c: label escaping, histogram buckets at their
 * bounds, summing two workers' series with fy_metrics_merge, the cap on
 * series per family, and the text it writes.
 */
#include "check.h"
#include "metrics.h"
#include "policy_metrics.h"

#include <stdlib.h>

static unsigned long long sample(const fy_buf *b, const char *line_start) {
  char *text = strndup(b->data, b->len);
  char *p = strstr(text, line_start);
  unsigned long long v = p ? strtoull(p + strlen(line_start), NULL, 10) : ~0ull;
  free(text);
  return v;
}

static void test_labels(void) {
  char out[FY_LABELS_MAX];
  fy_labels(out, sizeof out, "group", "a\"b\\c\nd", "class", "2xx", NULL);
  CHECK(strcmp(out, "group=\"a\\\"b\\\\c\\nd\",class=\"2xx\"") == 0);
  char small[16];
  fy_labels(small, sizeof small, "group", "a-very-long-group-name", NULL);
  CHECK(strlen(small) < sizeof small);
}

static void test_buckets_and_merge(void) {
  fy_metrics a = {0}, b = {0}, sum = {0};
  fy_metrics_observe(&a, FY_M_HOOK_DURATION, "hook=\"route\"", 500000);  /* exactly 0.5 ms: first bucket */
  fy_metrics_observe(&a, FY_M_HOOK_DURATION, "hook=\"route\"", 2000000); /* 2 ms: le 0.0025 */
  fy_metrics_observe(&b, FY_M_HOOK_DURATION, "hook=\"route\"", 120000000000ull); /* 120 s: +Inf only */
  fy_metrics_observe(&b, FY_M_HOOK_DURATION, "hook=\"log\"", 1000);
  fy_metrics_add(&a, FY_M_DNS_LOOKUPS, "outcome=\"ok\"", 2);
  fy_metrics_add(&b, FY_M_DNS_LOOKUPS, "outcome=\"ok\"", 3);
  fy_metrics_merge(&sum, &a);
  fy_metrics_merge(&sum, &b);
  fy_buf o;
  fy_buf_init(&o);
  fy_metrics_write(&o, &sum);
  CHECK(sample(&o, "ferry_hook_duration_seconds_bucket{hook=\"route\",le=\"0.0005\"} ") == 1);
  CHECK(sample(&o, "ferry_hook_duration_seconds_bucket{hook=\"route\",le=\"0.001\"} ") == 1);
  CHECK(sample(&o, "ferry_hook_duration_seconds_bucket{hook=\"route\",le=\"0.0025\"} ") == 2);
  CHECK(sample(&o, "ferry_hook_duration_seconds_bucket{hook=\"route\",le=\"60\"} ") == 2);
  CHECK(sample(&o, "ferry_hook_duration_seconds_bucket{hook=\"route\",le=\"+Inf\"} ") == 3);
  CHECK(sample(&o, "ferry_hook_duration_seconds_count{hook=\"route\"} ") == 3);
  CHECK(sample(&o, "ferry_hook_duration_seconds_count{hook=\"log\"} ") == 1);
  CHECK(sample(&o, "ferry_dns_lookups_total{outcome=\"ok\"} ") == 5);
  CHECK(strstr(o.data, "# TYPE ferry_hook_duration_seconds histogram\n") != NULL);
  CHECK(strstr(o.data, "# TYPE ferry_upstream_responses_total counter\n") != NULL);
  /* Label sets are written sorted: log before route. */
  CHECK(strstr(o.data, "hook=\"log\"") < strstr(o.data, "hook=\"route\""));
  fy_buf_free(&o);
  fy_metrics_free(&a);
  fy_metrics_free(&b);
  fy_metrics_free(&sum);
}

static void test_cap(void) {
  fy_metrics m = {0};
  char labels[64];
  for (int i = 0; i < FY_METRICS_MAX_SERIES + 50; i++) {
    snprintf(labels, sizeof labels, "server=\"10.0.%d.%d:80\"", i / 256, i % 256);
    fy_metrics_add(&m, FY_M_SERVER_ATTEMPTS, labels, 1);
  }
  CHECK(m.fam[FY_M_SERVER_ATTEMPTS].n == FY_METRICS_MAX_SERIES + 1);
  fy_buf o;
  fy_buf_init(&o);
  fy_metrics_write(&o, &m);
  CHECK(sample(&o, "ferry_upstream_server_attempts_total{overflow=\"true\"} ") == 50);
  fy_buf_free(&o);
  fy_metrics_free(&m);
}

/* A series found once keeps its address while the family grows, so hot paths may keep it. */
static void test_series_stay_put(void) {
  fy_metrics m = {0};
  fy_series *first = fy_metrics_series(&m, FY_M_HEADER_DURATION, "group=\"a\"");
  fy_series *count = fy_metrics_series(&m, FY_M_SERVER_ATTEMPTS, "server=\"first\"");
  char labels[64];
  for (int i = 0; i < 500; i++) {
    snprintf(labels, sizeof labels, "group=\"g%d\"", i);
    fy_metrics_observe(&m, FY_M_HEADER_DURATION, labels, 1000);
    snprintf(labels, sizeof labels, "server=\"s%d\"", i);
    fy_metrics_add(&m, FY_M_SERVER_ATTEMPTS, labels, 1);
  }
  CHECK(fy_metrics_series(&m, FY_M_HEADER_DURATION, "group=\"a\"") == first);
  CHECK(fy_metrics_series(&m, FY_M_SERVER_ATTEMPTS, "server=\"first\"") == count);
  fy_series_observe(first, 2000000); /* 2 ms */
  fy_series_add(count, 7);
  fy_buf o;
  fy_buf_init(&o);
  fy_metrics_write(&o, &m);
  CHECK(sample(&o, "ferry_upstream_header_duration_seconds_bucket{group=\"a\",le=\"0.001\"} ") == 0);
  CHECK(sample(&o, "ferry_upstream_header_duration_seconds_bucket{group=\"a\",le=\"0.0025\"} ") == 1);
  CHECK(sample(&o, "ferry_upstream_server_attempts_total{server=\"first\"} ") == 7);
  fy_buf_free(&o);
  fy_metrics_free(&m);
}

/* Two workers' policy counters summed by name and labels; only live ones written. */
static void test_policy_merge(void) {
  fy_policy_metrics a = {0}, b = {0}, sum = {0};
  char msg[128];
  int ia = fy_policy_metrics_declare(&a, "decisions", "help\\x", "decision", msg, sizeof msg);
  int gone = fy_policy_metrics_declare(&b, "old", "no longer declared", "", msg, sizeof msg);
  int ib = fy_policy_metrics_declare(&b, "decisions", "help\\x", "decision", msg, sizeof msg);
  CHECK(ia == 0 && gone == 0 && ib == 1);
  CHECK(fy_policy_metrics_declare(&a, "Bad", "", "", msg, sizeof msg) < 0);
  CHECK(fy_policy_metrics_declare(&a, "x", "", "a,a", msg, sizeof msg) < 0);
  const char *v[] = {"admitted"};
  size_t lens[] = {8};
  CHECK(fy_policy_metrics_inc(&a, ia, v, lens, 1, 2) == FY_OK);
  CHECK(fy_policy_metrics_inc(&b, ib, v, lens, 1, 3) == FY_OK);
  CHECK(fy_policy_metrics_inc(&b, ib, v, lens, 0, 1) != FY_OK); /* wrong number of values */
  int live_a[] = {ia}, live_b[] = {ib};
  fy_policy_metrics_mark_live(&a, live_a, 1);
  fy_policy_metrics_mark_live(&b, live_b, 1);
  fy_policy_metrics_merge(&sum, &a);
  fy_policy_metrics_merge(&sum, &b);
  fy_buf o;
  fy_buf_init(&o);
  fy_policy_metrics_write(&o, &sum);
  CHECK(sample(&o, "ferry_policy_decisions_total{decision=\"admitted\"} ") == 5);
  CHECK(strstr(o.data, "# HELP ferry_policy_decisions_total help\\\\x\n") != NULL);
  CHECK(strstr(o.data, "ferry_policy_old") == NULL);
  fy_buf_free(&o);
  fy_policy_metrics_free(&a);
  fy_policy_metrics_free(&b);
  fy_policy_metrics_free(&sum);
}

int main(void) {
  test_labels();
  test_buckets_and_merge();
  test_cap();
  test_series_stay_put();
  test_policy_merge();
  return check_done("test_metrics");
}
