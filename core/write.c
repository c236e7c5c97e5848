#include "write.h"

#include "worker.h"

static void fy_write_done(uv_write_t *uv, int status) {
  fy_write_req *req = FY_CONTAINER_OF(uv, fy_write_req, uv);
  req->cb(req, status);
}

static void fy_write_deferred(fy_deferred *d) {
  fy_write_req *req = FY_CONTAINER_OF(d, fy_write_req, deferred);
  req->cb(req, 0);
}

int fy_write(fy_write_req *req, uv_stream_t *s, uv_buf_t *bufs, unsigned n, fy_write_cb cb) {
  req->cb = cb;
  size_t total = 0;
  for (unsigned i = 0; i < n; i++)
    total += bufs[i].len;
  int rc = uv_try_write(s, bufs, n);
  if (rc >= 0 && (size_t)rc == total) {
    req->deferred.run = fy_write_deferred;
    fy_worker_defer(fy_worker_of(s->loop), &req->deferred);
    return 0;
  }
  if (rc < 0 && rc != UV_EAGAIN) return rc;
  size_t skip = rc > 0 ? (size_t)rc : 0;
  unsigned first = 0;
  while (skip >= bufs[first].len)
    skip -= bufs[first++].len;
  bufs[first].base += skip;
  bufs[first].len -= skip;
  return uv_write(&req->uv, s, bufs + first, n - first, fy_write_done);
}

void fy_write_forget(fy_write_req *req) { fy_worker_undefer(&req->deferred); }
