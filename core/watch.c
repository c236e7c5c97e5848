#include "watch.h"

#include "log.h"
#include "runtime.h"
#include "worker.h"

#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct fy_watch {
  fy_worker *w;
  uv_fs_event_t *dirs;
  char **names;
  size_t ndirs;
  uv_timer_t debounce;
  unsigned closing;
} fy_watch;

static void fy_watch_freed(uv_handle_t *h) {
  fy_watch *wt = h->data;
  if (--wt->closing > 0) return;
  for (size_t i = 0; i < wt->ndirs; i++)
    free(wt->names[i]);
  free(wt->names);
  free(wt->dirs);
  free(wt);
}

void fy_watch_close(fy_worker *w) {
  fy_watch *wt = w->watch;
  if (wt == NULL) return;
  w->watch = NULL;
  wt->closing = (unsigned)wt->ndirs + 1;
  for (size_t i = 0; i < wt->ndirs; i++)
    uv_close((uv_handle_t *)&wt->dirs[i], fy_watch_freed);
  uv_close((uv_handle_t *)&wt->debounce, fy_watch_freed);
}

static void fy_watch_reloaded(fy_runtime *rt, int status, unsigned number, const fy_buf *errors, void *data) {
  (void)rt;
  (void)data;
  if (status != FY_OK)
    fy_log_error("reload refused, generation %u keeps serving:\n%.*s", number, (int)errors->len,
                 errors->data);
}

static void fy_watch_fire(uv_timer_t *t) {
  fy_watch *wt = t->data;
  fy_worker *w = wt->w;
  fy_log_info("watch: files changed, reloading %s", w->config_path);
  /* The reload ends in fy_watch_update, which replaces (and frees) wt. */
  fy_runtime_reload(w->rt, w->config_path, fy_watch_reloaded, NULL);
}

static void fy_watch_event(uv_fs_event_t *h, const char *filename, int events, int status) {
  fy_watch *wt = h->data;
  (void)filename;
  (void)events;
  if (status < 0) {
    fy_log_warn("watch: %s", uv_strerror(status));
    return;
  }
  uv_timer_start(&wt->debounce, fy_watch_fire, wt->w->gen->cfg->watch_debounce, 0);
}

/* Adds the directory holding path to the set, once. */
static void fy_watch_add_dir(char ***names, size_t *n, const char *path) {
  char copy[PATH_MAX];
  snprintf(copy, sizeof copy, "%s", path);
  /* The directory as named, not resolved: a symlink swapped inside it is an event there. */
  const char *dir = dirname(copy);
  for (size_t i = 0; i < *n; i++)
    if (strcmp((*names)[i], dir) == 0) return;
  *names = fy_realloc(*names, (*n + 1) * sizeof **names);
  (*names)[(*n)++] = fy_strdup(dir);
}

void fy_watch_update(fy_worker *w) {
  fy_watch_close(w);
  const fy_config *cfg = w->gen->cfg;
  if (!cfg->watch) return;
  fy_watch *wt = fy_calloc(1, sizeof *wt);
  wt->w = w;
  fy_watch_add_dir(&wt->names, &wt->ndirs, cfg->path);
  for (size_t i = 0; i < cfg->npolicies; i++)
    fy_watch_add_dir(&wt->names, &wt->ndirs, cfg->policies[i]);
  wt->dirs = fy_calloc(wt->ndirs, sizeof *wt->dirs);
  for (size_t i = 0; i < wt->ndirs; i++) {
    uv_fs_event_init(w->loop, &wt->dirs[i]);
    wt->dirs[i].data = wt;
    int rc = uv_fs_event_start(&wt->dirs[i], fy_watch_event, wt->names[i], 0);
    if (rc < 0) fy_log_warn("watch: cannot watch %s: %s", wt->names[i], uv_strerror(rc));
  }
  uv_timer_init(w->loop, &wt->debounce);
  wt->debounce.data = wt;
  w->watch = wt;
  fy_log_info("watch: reloading on changes in %zu director%s", wt->ndirs, wt->ndirs == 1 ? "y" : "ies");
}
