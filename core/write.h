/*
 * fy_write: a stream write that costs one syscall when the kernel takes
 * every byte at once, which on a proxy's small responses is nearly always.
 *
 * uv_write() on libuv 1.44 re-registers the socket with epoll after every
 * write, done or not (one epoll_ctl per write). fy_write() first tries
 * uv_try_write(); when all is written, the completion runs on the next turn
 * of the loop through the worker's deferred queue, so callers see the same
 * asynchronous contract as uv_write: the callback runs exactly once, never
 * before fy_write() returns, and not at all if fy_write() fails. Only the
 * remainder of a partial write goes through uv_write().
 */
#ifndef FERRY_WRITE_H
#define FERRY_WRITE_H

#include "common.h"

#include <uv.h>

struct fy_write_req;
typedef void (*fy_write_cb)(struct fy_write_req *req, int status);

typedef struct fy_write_req {
  uv_write_t uv;
  fy_deferred deferred;
  fy_write_cb cb;
} fy_write_req;

int fy_write(fy_write_req *req, uv_stream_t *s, uv_buf_t *bufs, unsigned n, fy_write_cb cb);
/* Forgets a completion not yet run; for a stream being closed. */
void fy_write_forget(fy_write_req *req);

#endif
