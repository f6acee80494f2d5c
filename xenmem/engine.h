/* The pre-copy engine: backend-independent send and receive loops.
 *
 * send: round 0 sends every page, each later round the pages dirtied
 * during the previous one, until the predicted downtime (dirty bytes left
 * / measured bandwidth) is under the target, the dirty set stops
 * shrinking, or the round limit is hit; then pause, last pages, context,
 * END, and the commit handshake (doc/xenmem-stream.md "Ending").
 * receive: the mirror image, checking everything before acting on it. */
#ifndef XENMEM_ENGINE_H
#define XENMEM_ENGINE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"
#include "jsonline.h"
#include "transport.h"

/* Exit codes shared by the engine and the command line. */
enum xm_exit {
  XM_OK = 0,            /* migrated (send) / guest running here (receive) */
  XM_FAILED = 1,        /* failed; the source guest runs on, unchanged */
  XM_USAGE = 2,
  XM_IN_DOUBT = 3,      /* send: committed but no word the destination runs */
  XM_CANNOT = 4,        /* nothing started: backend, address, TLS, peer */
};

struct xm_send_opts {
  double downtime_ms;           /* target; default 30 */
  unsigned max_rounds;          /* pre-copy rounds before stop-and-copy */
  uint64_t rate;                /* bytes/s on the wire, 0 = unlimited */
  bool verify_memory;           /* sha256 of all memory at pause, in END */
  bool quiet;                   /* no per-round lines on stderr */
  /* NULL, or a command (argv, NULL-terminated) started when the guest is
   * paused and waited for before END; its failure resumes the source. */
  char *const *paused_hook;
};

struct xm_recv_opts {
  double check_seconds;         /* after start: backend check, 0 = none */
  bool test_no_running;         /* testing: never send "running" (the
                                 * sender is left in doubt) */
  bool quiet;
};

/* Both fill REPORT with ",\"key\":value" JSON members (rounds, bytes,
 * downtime...) and return an enum xm_exit. */
int xm_send (const struct xm_backend_ops *b, struct xm_source *s,
             struct xm_conn *c, const struct xm_send_opts *o,
             struct jbuf *report);
int xm_receive (const struct xm_backend_ops *b, const char *id,
                struct xm_conn *c, const struct xm_recv_opts *o,
                struct jbuf *report);

double xm_now (void);

#endif
