/*
 * Logging to stderr: one line per event, timestamped, with a level.
 * The access log is a separate line format written by fy_log_access().
 */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

enum fy_log_level { FY_LOG_DEBUG, FY_LOG_INFO, FY_LOG_WARN, FY_LOG_ERROR };

/* Set by a reload on the control thread, read by every worker: atomic. */
extern _Atomic int fy_log_level_current;

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
