#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

_Atomic int fy_log_level_current = FY_LOG_INFO;

static fy_log_sink fy_log_sink_fn;
static void *fy_log_sink_data;

void fy_log_set_sink(fy_log_sink sink, void *data) {
  fy_log_sink_fn = sink;
  fy_log_sink_data = data;
}

void fy_log_stderr(int level, const char *line, size_t len, void *data) {
  (void)level;
  (void)data;
  fwrite(line, 1, len, stderr);
}

static const char *const fy_log_names[] = {"debug", "info", "warn", "error"};

int fy_log_level_parse(const char *name) {
  for (int i = 0; i < 4; i++)
    if (strcmp(name, fy_log_names[i]) == 0) return i;
  return -1;
}

void fy_log(int level, const char *fmt, ...) {
  if (level < fy_log_level_current || fy_log_sink_fn == NULL) return;
  char line[4096];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
  n +=
      snprintf(line + n, sizeof line - (size_t)n, ".%03ldZ [%s] ", ts.tv_nsec / 1000000, fy_log_names[level]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  n = m < 0 ? n : (n + m < (int)sizeof line - 2 ? n + m : (int)sizeof line - 2);
  line[n++] = '\n';
  fy_log_sink_fn(level, line, (size_t)n, fy_log_sink_data);
}
