/*
 * Logging: one line per event, timestamped, with a level, handed to the
 * sink the process set (the CLI: stderr; a host: ferry_set_log_sink). With
 * no sink the lines go nowhere, so a library never writes to stderr unasked.
 * The access log is a separate line format (access_log.c).
 */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

#include <stddef.h>

enum fy_log_level { FY_LOG_DEBUG, FY_LOG_INFO, FY_LOG_WARN, FY_LOG_ERROR };

/* Set by a reload on the control thread, read by every worker: atomic. */
extern _Atomic int fy_log_level_current;

/* Where lines go: the whole line, ending in '\n'; called on whichever thread logs. */
typedef void (*fy_log_sink)(int level, const char *line, size_t len, void *data);
/* Process-wide: set before any runtime starts. NULL drops every line. */
void fy_log_set_sink(fy_log_sink sink, void *data);
void fy_log_stderr(int level, const char *line, size_t len, void *data);

int fy_log_level_parse(const char *name);
void fy_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define fy_log_debug(...)                                                                                    \
  do {                                                                                                       \
    if (fy_log_level_current <= FY_LOG_DEBUG) fy_log(FY_LOG_DEBUG, __VA_ARGS__);                             \
  } while (0)
#define fy_log_info(...) fy_log(FY_LOG_INFO, __VA_ARGS__)
#define fy_log_warn(...) fy_log(FY_LOG_WARN, __VA_ARGS__)
#define fy_log_error(...) fy_log(FY_LOG_ERROR, __VA_ARGS__)

#endif
