/*
 * The exchange's response state: the transitions exchange.h draws are the
 * ones fy_exchange_enter accepts; any other aborts a debug build (checked in
 * a child process) and is never made by ferry's code (the e2e suite runs on
 * a debug build too).
 */
#include "check.h"
#include "exchange.h"

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *const names[] = {"NONE", "WAIT", "BODY", "DONE"};

static bool drawn(enum fy_resp_state from, enum fy_resp_state to) {
  switch (from) {
  case FY_RS_NONE: return to == FY_RS_NONE || to == FY_RS_WAIT || to == FY_RS_DONE;
  case FY_RS_WAIT: return true;
  case FY_RS_BODY: return to == FY_RS_WAIT || to == FY_RS_DONE;
  case FY_RS_DONE: return to == FY_RS_NONE;
  }
  return false;
}

/* Whether entering `to` from `from` returns normally (in a child, so that an abort is seen). */
static bool accepted(enum fy_resp_state from, enum fy_resp_state to) {
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    fy_req r = {.id = 7};
    fy_exchange x = {.req = &r, .rs = from};
    fy_exchange_enter(&x, to);
    _exit(x.rs == to ? 0 : 1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

int main(void) {
  for (int from = FY_RS_NONE; from <= FY_RS_DONE; from++)
    for (int to = FY_RS_NONE; to <= FY_RS_DONE; to++) {
      bool ok = accepted(from, to);
#ifdef NDEBUG
      bool want = true; /* release builds do not check */
      (void)drawn;
#else
      bool want = drawn(from, to);
#endif
      if (ok != want) fprintf(stderr, "%s -> %s: %s\n", names[from], names[to], ok ? "accepted" : "refused");
      CHECK(ok == want);
    }
  return check_done("test_exchange");
}
