/* xenmem's command line, shared by main (xenmem.c) and the VM monitor
 * (monitor.c): a monitor's `send` request is exactly the argv of a local
 * `xenmem send` after the word "send", parsed by the same function and
 * run through the same send path, so the two cannot drift apart.
 *
 * Nothing here calls exit(): a bad option in a monitor request must not
 * take the running VM down with it.  Messages go to stderr (in the
 * monitor, the client's stderr for the time of the request). */
#ifndef XENMEM_CLI_H
#define XENMEM_CLI_H

#include <stdbool.h>
#include <stdio.h>

#include "backend.h"
#include "engine.h"
#include "transport.h"
#include "vbd.h"

struct xm_cli {
  const char *mode;             /* "send", "receive" or "guest" */
  const struct xm_backend_ops *b;       /* NULL if not given */
  const char *addr;             /* send, receive: the one ADDR */
  const char *domid, *json_file;
  const char *monitor;          /* --monitor=SOCKET (receive, guest) */
  const char *guest;            /* --guest=SOCKET (send: a monitor's VM) */
  const char *guest_opt;        /* the first guest-creation option seen */
  const char *converge_opt;     /* the last auto-converge option seen */
  struct xm_tls_opts tls;
  struct xm_send_opts so;
  struct xm_recv_opts ro;
  struct xm_guest_opts g;
  const char *disk_uris[XM_DISKS_MAX];
  unsigned ndisks;
  char *disk_map_args[XM_DISK_MAP_MAX];      /* --disk-map: our copies, */
  unsigned ndisk_map;                        /* split in place */
  double timeout, warmup, check, accept_timeout;
  double progress_rate_before;  /* send: the guest's progress a second
                                 * during --warmup, 0: not measured */
  bool json, quiet, abort_, help;
  char **argv;                  /* our copy: getopt permutes it and the
                                 * hook (so.paused_hook) points into it */
};

/* The argv is a monitor's send request: the guest exists, so options
 * that would create one are refused, and the backend is the monitor's. */
#define XM_CLI_MONITOR 1u

/* Parse MODE's options ARGV[0..argc) (ARGV[0] is the first option, not
 * the program or the mode; the strings must outlive CLI).  0, or XM_USAGE
 * after a message on stderr.  -h/--help: usage on stdout, CLI->help set,
 * 0.  Free with xm_cli_free in both cases. */
int xm_cli_parse (struct xm_cli *cli, const char *mode, int argc,
                  char *const *argv, unsigned flags);
void xm_cli_free (struct xm_cli *cli);
void xm_cli_usage (FILE *f);

/* Open CLI's --disk URIs into DISKS (XM_DISKS_MAX entries): 0, or -1
 * with nothing left open. */
int xm_cli_open_disks (const struct xm_cli *cli, struct xm_vbd **disks);
void xm_cli_close_disks (struct xm_vbd **disks, unsigned n);

/* The send path of `xenmem send`: connect, migrate, on failure the
 * optional --check of the resumed source, the report (--json) or the
 * one-line result.  A page-level backend B moves its running source S
 * with the engine (xm_send); S stays open (the caller closes it:
 * migrated, or kept).  A whole-migration backend (B->migrate_send) moves
 * the guest CLI's --domid names itself; S is NULL.  *MIGRATED says
 * whether the guest moved, whatever the exit code (the report may fail
 * after a move).  Returns an enum xm_exit. */
int xm_cli_send (const struct xm_cli *cli, const struct xm_backend_ops *b,
                 struct xm_source *s, bool *migrated);

/* send --abort: connect, authenticate and hang up (the receiver gives up
 * at once).  An enum xm_exit. */
int xm_cli_abort (const struct xm_cli *cli);

/* End REP (begun with "{\"cmd\":...") with "exit":RET and print it as
 * --json asks, or say the result on stderr.  RET, or XM_FAILED if the
 * report file could not be written. */
int xm_cli_report (const struct xm_cli *cli, struct jbuf *rep, int ret);

#endif
