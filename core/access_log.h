/*
 * The access log: one line per exchange, as JSON or as ferry's text line,
 * to stderr or a file, written off the request path.
 *
 * A worker formats the line and copies it into a bounded buffer under a
 * mutex held only for the copy; one writer thread takes the whole buffer
 * and writes it in one batch while workers fill the other half. A disk that
 * is slow, full or blocked (a FIFO nobody reads) therefore never blocks a
 * worker: once both halves are full, lines are dropped and counted in the
 * worker's stats (ferry_access_log_dropped_total). SIGUSR1 makes the writer
 * open the path again (after logrotate moved the file): lines already
 * buffered go to the new file, lines written before to the old one, none is
 * lost.
 *
 * The writer is shared by every worker of the process; the configuration
 * of the live generation says where it writes (fy_access_log_configure).
 */
#ifndef FERRY_ACCESS_LOG_H
#define FERRY_ACCESS_LOG_H

#include "buf.h"
#include "config.h"

#include <stdbool.h>
#include <stdint.h>

struct fy_conn;

/*
 * Starts the writer, or points it at a new file or buffer size after a
 * reload (a file it cannot open is an error in errors, and the old one
 * stays). Nothing starts while cfg has no access log.
 */
int fy_access_log_configure(const fy_config *cfg, fy_buf *errors);
/* SIGUSR1: open the file again (logrotate's postrotate). */
void fy_access_log_reopen(void);
/* Writes out what is buffered and stops the writer (bounded: a blocked file is given up on). */
void fy_access_log_close(void);
/* A worker thread ends: hands its last batch to the writer and frees it. */
void fy_access_log_thread_end(void);

/*
 * Formats the line of c's exchange into this thread's batch, which goes to
 * the writer at the end of the loop turn; lines that find the writer's
 * buffer full are dropped and counted in the worker's access_dropped.
 */
void fy_access_log_write(struct fy_conn *c);
/* Lines the writer could not write (write errors), process-wide. */
uint64_t fy_access_log_write_errors(void);

/* Adds a policy's field (req:log_field) to r's line: value is JSON text already. */
struct fy_req;
int fy_access_log_field(struct fy_req *r, const char *name, size_t nlen, const char *json, size_t jlen);

#endif
