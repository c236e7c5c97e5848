#include "deadline.h"

static void fy_deadline_fire(uv_timer_t *t) {
  fy_deadline *d = (fy_deadline *)t;
  d->armed = 0;
  if (d->due == 0) return; /* cleared since it was armed */
  uint64_t now = uv_now(t->loop);
  if (now < d->due) { /* moved later since it was armed */
    d->armed = d->due;
    uv_timer_start(t, fy_deadline_fire, d->due - now, 0);
    return;
  }
  d->due = 0;
  d->cb(d);
}

void fy_deadline_init(uv_loop_t *loop, fy_deadline *d, fy_deadline_cb cb, void *data) {
  uv_timer_init(loop, &d->timer);
  d->timer.data = data;
  d->due = d->armed = 0;
  d->cb = cb;
}

void fy_deadline_set(fy_deadline *d, uint64_t ms) {
  if (ms == 0) {
    d->due = 0; /* an armed timer fires and finds nothing to do */
    return;
  }
  uint64_t due = uv_now(d->timer.loop) + ms;
  d->due = due;
  if (d->armed && d->armed <= due) return;
  d->armed = due;
  uv_timer_start(&d->timer, fy_deadline_fire, ms, 0);
}
