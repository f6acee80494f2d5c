/* downtime-probe: how long no guest ran, seen from dom0.
 *
 * Polls the hypervisor's domain list every ~2 ms and tracks whether some
 * guest domain (domid > 0) is running: not paused, not shut down (a
 * suspended guest is shut down with reason suspend), not dying.  A
 * migration's blackout is the longest stretch with none running, from
 * the source's suspend to the destination's unpause, whatever tool did
 * it: the same yardstick for `xl migrate` and `xenmem`.  Runs until
 * SIGTERM/SIGINT, then prints one JSON line:
 *   {"max_gap_ms":N,"gaps":[ms,...],"samples":N}
 * (gaps over 5 ms only; before the first running sample nothing counts).
 * Test tool for tests/xen; needs a Xen dom0. */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <xenctrl.h>

#include "monotime.h"

static volatile sig_atomic_t stop;

static void
on_signal (int sig)
{
  (void) sig;
  stop = 1;
}

int
main (void)
{
  xc_interface *xch = xc_interface_open (NULL, NULL, 0);
  xc_domaininfo_t info[64];
  double gap_start = -1, gaps[256], max_gap = 0;
  unsigned ngaps = 0;
  unsigned long samples = 0;
  bool seen = false;
  struct timespec tick = { 0, 2000000 };

  if (!xch) {
    fprintf (stderr, "downtime-probe: no Xen here\n");
    return 1;
  }
  signal (SIGTERM, on_signal);
  signal (SIGINT, on_signal);
  while (!stop) {
    int n = xc_domain_getinfolist (xch, 1, 64, info);
    bool running = false;
    double t = sxm_now () * 1e3;    /* ms */

    for (int i = 0; i < n; i++) {
      unsigned f = info[i].flags;
      if (!(f & (XEN_DOMINF_paused | XEN_DOMINF_shutdown | XEN_DOMINF_dying)))
        running = true;
    }
    samples++;
    if (running) {
      if (gap_start >= 0) {
        double g = t - gap_start;
        if (g > max_gap)
          max_gap = g;
        if (g > 5 && ngaps < 256)
          gaps[ngaps++] = g;
        gap_start = -1;
      }
      seen = true;
    }
    else if (seen && gap_start < 0)
      gap_start = t;
    nanosleep (&tick, NULL);
  }
  printf ("{\"max_gap_ms\":%.1f,\"open_gap\":%s,\"gaps\":[", max_gap,
          gap_start >= 0 ? "true" : "false");
  for (unsigned i = 0; i < ngaps; i++)
    printf ("%s%.1f", i ? "," : "", gaps[i]);
  printf ("],\"samples\":%lu}\n", samples);
  xc_interface_close (xch);
  return 0;
}
