/*
 * The service manager's readiness protocol (systemd's sd_notify), spoken
 * directly: one datagram of newline-separated KEY=VALUE assignments sent
 * to the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
 * socket when it starts with '@'). Without $NOTIFY_SOCKET every call does
 * nothing, so ferry behaves the same under any other supervisor.
 *
 * Delivery is best effort, as in libsystemd: a failed send is logged once
 * at debug level and never affects serving.
 */
#ifndef FERRY_NOTIFY_H
#define FERRY_NOTIFY_H

/* Sends state (e.g. "READY=1"); returns 1 if sent, 0 without a socket, <0 on error. */
int fy_notify_send(const char *state);

/* READY=1: the listeners are bound and the live generation serves. */
void fy_notify_ready(void);
/* RELOADING=1 with MONOTONIC_USEC: a reload starts (READY=1 follows, also after a refused one). */
void fy_notify_reloading(void);
/* STOPPING=1: a drain has started. */
void fy_notify_stopping(void);

#endif
