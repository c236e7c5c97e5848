/*
 * fy_deadline: a timeout that is cheap to move.
 *
 * A connection's timeout changes several times per request (idle, header,
 * send, read...), and each uv_timer_start/stop is a heap operation. A
 * deadline only records when it is due; the uv timer underneath is re-armed
 * only when the new time is earlier than the one it is armed for. When it
 * fires early (the deadline moved later) it re-arms itself for the rest;
 * when the deadline was cleared it does nothing. On a busy connection the
 * timer then fires about once per deadline length instead of being touched
 * on every request.
 */
#ifndef FERRY_DEADLINE_H
#define FERRY_DEADLINE_H

#include <stdint.h>
#include <uv.h>

struct fy_deadline;
typedef void (*fy_deadline_cb)(struct fy_deadline *d);

typedef struct fy_deadline {
  uv_timer_t timer; /* first: close it with uv_close((uv_handle_t *)d, ...); data is the owner's */
  uint64_t due;     /* loop time (ms) it is due; 0: none */
  uint64_t armed;   /* loop time the uv timer fires; 0: not armed */
  fy_deadline_cb cb;
} fy_deadline;

void fy_deadline_init(uv_loop_t *loop, fy_deadline *d, fy_deadline_cb cb, void *data);
/* Due in ms from now; 0 clears it. */
void fy_deadline_set(fy_deadline *d, uint64_t ms);

#endif
