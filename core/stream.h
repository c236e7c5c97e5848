/*
 * `tcp` listeners: connections routed by the policy's route_stream(conn)
 * hook (from the TLS SNI peeked without terminating TLS, PROXY protocol
 * information and ports) and then moved byte for byte with splice(2).
 * See stream.c.
 */
#ifndef FERRY_STREAM_H
#define FERRY_STREAM_H

#include "worker.h"

void fy_stream_accept(fy_listener *l, int fd, const struct sockaddr_storage *peer);
/* Ends every stream of w (the drain deadline). */
void fy_stream_close_all(fy_worker *w);

#endif
