/*
 * ferry.h: the embedding API of ferry, a proxy runtime whose routing
 * policies are LuaJIT scripts. This is the only installed header; libferry
 * exports nothing but the ferry_* functions declared here. The ferry
 * command is a client of this API like any other host.
 *
 * A runtime serves one configuration (a ferry config file, or the same
 * text given as a string) with its listeners, upstreams and policies. It
 * runs either on the caller's libuv loop (one serving worker there, no
 * thread) or on worker threads of its own, with its control work (admin
 * listener, reloads, DNS re-resolution, health checks) on the caller's
 * loop in both cases.
 *
 * Threads: unless said otherwise, a function taking a ferry_runtime is
 * called on the thread running that runtime's loop (the one given to
 * ferry_start), and every callback runs there too. A call that fails
 * never runs its callback.
 *
 * Errors: functions return 0 or a negative errno-style code (libuv's
 * UV_E* values, FERRY_ECONFIG or FERRY_ESCRIPT); ferry_strerror names them. Text a
 * function hands out in a char ** is the caller's, freed with ferry_free().
 *
 * Allocation failure: ferry aborts the process (after a line on stderr)
 * when malloc fails. It is the only way the library ends a process; it
 * never calls exit, installs no signal handler, writes to stderr only
 * through the log sink the host sets, and trims the heap (malloc_trim) or
 * talks to a service manager (sd_notify) only when asked to (FERRY_TRIM,
 * FERRY_NOTIFY).
 *
 * Process-wide state: the log sink and the log level (the last config a
 * runtime loaded sets it), the registry of host Lua modules, and the access
 * log writer (one file per process: give access_log to one runtime only).
 * Like any libuv program that writes to sockets, the host should ignore
 * SIGPIPE.
 */
#ifndef FERRY_H
#define FERRY_H

#include <stddef.h>
#include <uv.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FERRY_VERSION_MAJOR 0
#define FERRY_VERSION_MINOR 1
#define FERRY_VERSION_PATCH 0
#define FERRY_VERSION_STRING "0.1.0"
/* (major << 16) | (minor << 8) | patch, as ferry_version_number() returns it. */
#define FERRY_VERSION_HEX ((FERRY_VERSION_MAJOR << 16) | (FERRY_VERSION_MINOR << 8) | FERRY_VERSION_PATCH)

#if defined(__GNUC__)
#define FERRY_API __attribute__((visibility("default")))
#else
#define FERRY_API
#endif

/* The config (file or string) is invalid, or a policy failed to load: the errors say where (file:line). */
#define FERRY_ECONFIG (-30001)
#define FERRY_ESCRIPT (-30002)

/* The version of the library running (which may differ from the header's FERRY_VERSION_STRING). */
FERRY_API const char *ferry_version(void);
FERRY_API unsigned ferry_version_number(void);
/* One line per library ferry links (libuv, LuaJIT, llhttp, c-ares, mbed TLS), with their versions. Static
 * text. */
FERRY_API const char *ferry_library_versions(void);
/* A static message for a code these functions return. */
FERRY_API const char *ferry_strerror(int err);
/* Frees text this API handed out (errors, reports). NULL is fine. Any thread. */
FERRY_API void ferry_free(void *text);

/* ---- logging (process-wide) ---------------------------------------------- */

enum ferry_log_level { FERRY_LOG_DEBUG, FERRY_LOG_INFO, FERRY_LOG_WARN, FERRY_LOG_ERROR };

/*
 * Receives every log line of every runtime in the process: line is one
 * timestamped line ending in '\n', len bytes, valid only during the call.
 * It runs on whichever thread logs (worker threads too), so it must be
 * thread-safe, and it must not call back into ferry.
 */
typedef void (*ferry_log_fn)(int level, const char *line, size_t len, void *data);
/*
 * Sets the log sink; NULL (the default) drops every line. Call it before
 * starting any runtime: it is not synchronised with running workers.
 */
FERRY_API void ferry_set_log_sink(ferry_log_fn fn, void *data);
/* A sink that writes each line to stderr: what the ferry command uses. */
FERRY_API void ferry_log_stderr(int level, const char *line, size_t len, void *data);
/* Logs a line (printf format) through the sink, timestamped like ferry's own, if level passes. Any thread. */
FERRY_API void ferry_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- Lua modules the host provides (process-wide) ---------------------- */

struct lua_State;
/* The same type as Lua's lua_CFunction. */
typedef int (*ferry_lua_cfunction)(struct lua_State *L);

/*
 * Makes require(name) in policies load a module the host provides, in
 * every Lua state ferry creates from now on: every generation of every
 * runtime (so also after reloads) and `ferry test` run through
 * ferry_test_main. ferry_register_cmodule registers open as the module's
 * loader (package.preload[name]); it is called with the module name and
 * returns the module (usually a table of C functions). The functions run
 * on ferry's worker threads, in several states at once: what they share
 * must be thread-safe. The host links LuaJIT (pkg-config luajit) to write
 * them. ferry_register_lua_module registers Lua source (copied; the chunk
 * is named "=name"), run as the module's body.
 *
 * Register before starting the runtimes that should see a module; a
 * generation built later (a reload) sees everything registered by then.
 * Any thread. Returns 0, UV_EINVAL (no name, a name of ferry's own, "ferry"
 * or "ferry.*") or UV_EEXIST (registered already).
 */
FERRY_API int ferry_register_cmodule(const char *name, ferry_lua_cfunction open);
FERRY_API int ferry_register_lua_module(const char *name, const char *source, size_t len);

/* ---- a runtime ------------------------------------------------------------ */

typedef struct ferry_runtime ferry_runtime;

/* How a runtime runs (ferry_options.run). */
enum ferry_run_mode {
  /* Worker threads of its own, as many as the config's workers says ("auto": the CPUs). */
  FERRY_RUN_THREADS,
  /*
   * One serving worker on the loop given to ferry_start, beside the
   * control work, with no thread: everything ferry does runs in that
   * loop's callbacks. The config's workers setting is ignored.
   */
  FERRY_RUN_ON_LOOP,
};

/* Process-wide effects a host may allow (ferry_options.flags). */
enum ferry_flags {
  FERRY_TRIM = 1,   /* malloc_trim the heap after idle connections free their buffers */
  FERRY_NOTIFY = 2, /* READY=1, RELOADING=1, STOPPING=1 to $NOTIFY_SOCKET (systemd Type=notify-reload) */
};

typedef struct ferry_options {
  /*
   * The config file; or, with config_text, the name the errors give the
   * text (default "config"). Relative policy, certificate and log paths
   * are under the file's directory, or under base_dir for text.
   */
  const char *config_path;
  const char *config_text; /* the config itself (a Lua chunk returning a table), or NULL */
  const char *base_dir;    /* with config_text: default "." */
  enum ferry_run_mode run;
  unsigned flags; /* enum ferry_flags */
} ferry_options;

/*
 * Loads the config and every policy it names, builds the first
 * generation, binds every listener and starts serving: on loop and, with
 * FERRY_RUN_THREADS, on the worker threads it starts. Returns 0 and the
 * runtime in *out; or an error, with *out NULL, nothing created, and (when
 * errors is not NULL) the report in *errors, one "file:line: message"
 * line per problem, for the caller to ferry_free.
 *
 * Call it on loop's thread, outside that loop's callbacks when it may fail
 * after binding (a listener that cannot bind): to undo what it opened it
 * runs loop once (UV_RUN_NOWAIT). The runtime holds handles on loop until
 * ferry_stop's callback has run.
 */
FERRY_API int ferry_start(ferry_runtime **out, uv_loop_t *loop, const ferry_options *opts, char **errors);

/*
 * The end of a reload: status 0 and generation the new live number, or an
 * error (FERRY_ECONFIG), generation the one that keeps serving, and errors
 * the report (valid only during the call).
 */
typedef void (*ferry_reload_cb)(ferry_runtime *rt, int status, unsigned generation, const char *errors,
                                void *data);
/*
 * Loads the next generation off the loop (on libuv's thread pool), and if
 * it is complete and valid switches every worker to it; all switch or none
 * does. config_path NULL reloads the running config (a string config is
 * evaluated again; its policy files are read again); a path replaces it.
 * Reloads queue and run one at a time, in order; cb (may be NULL) runs once
 * for each, on the loop, also when ferry is stopping (then refused).
 */
FERRY_API void ferry_reload(ferry_runtime *rt, const char *config_path, ferry_reload_cb cb, void *data);

/* The metrics text (Prometheus text format), len bytes, valid during the call. */
typedef void (*ferry_metrics_cb)(ferry_runtime *rt, const char *text, size_t len, void *data);
/*
 * Gathers the metrics of every worker (each reports on its own loop) and
 * runs cb on the loop with the same text GET /metrics of the admin
 * listener serves, so a host can serve it on its own endpoint. Not after
 * ferry_stop.
 */
FERRY_API void ferry_metrics(ferry_runtime *rt, ferry_metrics_cb cb, void *data);

typedef void (*ferry_stop_cb)(ferry_runtime *rt, void *data);
/*
 * Drains and stops: listeners close after the config's drain.delay,
 * in-flight requests finish (up to drain.timeout), reloads under way end.
 * cb runs exactly once on the loop when everything is done: every thread
 * joined, every handle ferry had on the loop closed. A second call does
 * nothing (its cb never runs). After cb the runtime only awaits
 * ferry_runtime_free, which may be called from cb.
 */
FERRY_API void ferry_stop(ferry_runtime *rt, ferry_stop_cb cb, void *data);
/* Frees a runtime whose stop callback has run. */
FERRY_API void ferry_runtime_free(ferry_runtime *rt);

/* The live generation's number (1 for the first; each reload that goes live adds one). */
FERRY_API unsigned ferry_generation(const ferry_runtime *rt);
/* The serving workers (1 with FERRY_RUN_ON_LOOP). */
FERRY_API size_t ferry_workers(const ferry_runtime *rt);
/* The running config's path (absolute for a file), or the name of a string config. */
FERRY_API const char *ferry_config_path(const ferry_runtime *rt);
/* Reopens the access log file (after log rotation moved it). Any thread. */
FERRY_API void ferry_reopen_access_log(void);

/* ---- without a runtime: what the ferry command also does ----------------- */

/*
 * Loads config_path and every policy it names without serving (ferry
 * check). Returns 0 with a one-line summary in *report, or FERRY_ECONFIG
 * with the errors in *report; warnings, if any, come first. Blocking; any
 * thread; report may be NULL.
 */
FERRY_API int ferry_check(const char *config_path, char **report);
/*
 * The admin listener's address of config_path (what ferry reload talks to):
 * 0 with a host name or address in *host (ferry_free) and *port, 1 when it
 * has none, or FERRY_ECONFIG with the errors in *errors.
 */
FERRY_API int ferry_admin_address(const char *config_path, char **host, int *port, char **errors);
/*
 * Runs busted specs inside ferry's LuaJIT with the ferry modules and every
 * registered host module (ferry test): argv[0] and argv[1] are skipped,
 * the rest are busted's arguments. Writes its report to stdout and stderr;
 * returns the exit status. Blocking; the thread's only ferry work meanwhile.
 */
FERRY_API int ferry_test_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif
