/*
 * Shared vocabulary of the ferry core: error codes, small intrusive lists and
 * the allocation policy.
 *
 * Errors are negative ints. libuv's UV_E* codes are reused as they are; the
 * proxy-level failures that have no errno get FY_E* codes below UV's range.
 * fy_strerror() names either kind.
 *
 * Allocation policy: ferry treats an allocation failure as fatal. fy_malloc()
 * and friends abort with a message instead of returning NULL, so no caller
 * carries an out-of-memory path that would never be tested. Lua states have
 * their own cap (see lua_host.h), which fails one hook, not the process.
 */
#ifndef FERRY_COMMON_H
#define FERRY_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define FY_OK 0
enum fy_error {
  FY_ECONFIG = -30001,   /* the configuration is invalid */
  FY_ESCRIPT = -30002,   /* a policy script failed to load */
  FY_ENOGROUP = -30003,  /* route returned an unknown upstream group */
  FY_EHOOK = -30004,     /* a hook raised or returned garbage */
  FY_EUPSTREAM = -30005, /* the upstream sent something unusable */
  FY_ETIMEDOUT = -30006, /* a proxy-level timeout (connect, read, write) */
  FY_ETOOBIG = -30007,   /* a limit was exceeded */
};

const char *fy_strerror(int err);

/* The IP address (text, at least INET6_ADDRSTRLEN bytes) and port of an AF_INET or AF_INET6 address. */
void fy_addr_name(const struct sockaddr_storage *ss, char *ip, size_t iplen, int *port);

/* Two optional strings are the same: both NULL, or equal text. */
static inline int fy_str_eq(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

#define FY_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define FY_CONTAINER_OF(ptr, type, field) ((type *)((char *)(ptr)-offsetof(type, field)))
#define FY_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FY_MAX(a, b) ((a) > (b) ? (a) : (b))

void *fy_malloc(size_t n);
void *fy_calloc(size_t n, size_t size);
void *fy_realloc(void *p, size_t n);
char *fy_strdup(const char *s);

/* A doubly linked intrusive list; an element not in a list points to itself. */
typedef struct fy_list {
  struct fy_list *prev, *next;
} fy_list;

static inline void fy_list_init(fy_list *l) { l->prev = l->next = l; }
static inline int fy_list_empty(const fy_list *l) { return l->next == l; }
static inline void fy_list_insert_head(fy_list *head, fy_list *e) {
  e->next = head->next;
  e->prev = head;
  head->next->prev = e;
  head->next = e;
}
static inline void fy_list_remove(fy_list *e) {
  e->prev->next = e->next;
  e->next->prev = e->prev;
  fy_list_init(e);
}

/* Work to run on the next turn of the loop (see fy_worker_defer). */
typedef struct fy_deferred {
  fy_list link;
  void (*run)(struct fy_deferred *d);
} fy_deferred;

#endif
