/*
 * wrk_fresh_tls.so: an LD_PRELOAD shim that makes wrk do a full TLS handshake
 * on every connection (bench/run's S5H), compiled by the harness into its run
 * directory (cc -shared -fPIC).
 *
 * wrk (4.1) closes a connection with SSL_shutdown() + SSL_clear() and reuses
 * the SSL object for the next one. SSL_clear() keeps the session of a cleanly
 * shut down connection, so the next ClientHello offers it and every server
 * that allows resumption (ticket or session cache) does an abbreviated
 * handshake instead. Dropping the session right after SSL_clear() makes each
 * new connection start without one: no session id, no ticket to resume.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
int SSL_set_session(SSL *s, SSL_SESSION *session);

int SSL_clear(SSL *s) {
  static int (*real)(SSL *);
  if (real == NULL) real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_clear");
  int rc = real(s);
  SSL_set_session(s, NULL);
  return rc;
}
