/* xenmem's pre-copy policy (engine.h: xm_policy_round, xm_policy_sample),
 * the one both the engine and the xen backend's precopy_policy ask:
 * every stop reason, the "stopped shrinking" rule's two-in-a-row, and
 * auto-converge's throttle: started by two hot observations, raised by
 * each further one, capped, never lowered, raised instead of stopping on
 * a stuck dirty set until it is at its maximum, and never moved with
 * auto-converge off. */
#include <stdio.h>
#include <string.h>

#include "engine.h"
#include "tap.h"

#define MIB 1048576.0

static struct xm_send_opts
opts (bool converge)
{
  struct xm_send_opts o;

  memset (&o, 0, sizeof o);
  o.downtime_ms = 30;
  o.max_rounds = 30;
  o.converge.on = converge;
  o.converge.initial_pct = 20;
  o.converge.step_pct = 10;
  o.converge.max_pct = 99;
  return o;
}

/* A round's end: DIRTY pages left at 32 MiB/s, dirtying at RATE MiB/s. */
static const char *
round_end (struct xm_policy *p, const struct xm_send_opts *o, unsigned rounds,
           uint64_t dirty, double rate)
{
  struct xm_round_stats r = { rounds, dirty, 32 * MIB, rate * MIB };
  return xm_policy_round (p, &r, o);
}

/* WHY is the stop reason WANT (NULL: go on). */
static bool
says (const char *why, const char *want)
{
  return want ? why && strcmp (why, want) == 0 : why == NULL;
}

int
main (void)
{
  struct xm_send_opts o = opts (false), c = opts (true);
  struct xm_policy p;
  const char *why;

  /* ---- the stop rule ------------------------------------------------- */
  memset (&p, 0, sizeof p);
  /* 200 pages at 32 MiB/s: 24.4 ms, under 30. */
  why = round_end (&p, &o, 1, 200, 0);
  ok (says (why, "predicted downtime under the target"),
      "under the target: stop (%s)", why ? why : "go on");
  {
    struct xm_round_stats r = { 1, 245, 32 * MIB, -1 };
    ok (xm_predicted_ms (&r) > 29.9 && xm_predicted_ms (&r) < 29.92,
        "predicted ms = pages x 4096 / bandwidth (%.3f)",
        xm_predicted_ms (&r));
    r.bandwidth = 0;
    ok (xm_predicted_ms (&r) >= 1e9, "unknown bandwidth: never on target");
  }
  memset (&p, 0, sizeof p);
  ok (round_end (&p, &o, 1, 10000, 0) == NULL, "over the target: go on");
  ok (round_end (&p, &o, 2, 5000, 0) == NULL, "shrinking: go on");
  ok (round_end (&p, &o, 3, 4600, 0) == NULL,
      "not under 90%% of the previous once: go on");
  why = round_end (&p, &o, 4, 4500, 0);
  ok (says (why, "dirty set stopped shrinking"), "twice in a row: stop (%s)",
      why ? why : "go on");
  memset (&p, 0, sizeof p);
  round_end (&p, &o, 1, 10000, 0);
  round_end (&p, &o, 2, 9500, 0);
  ok (round_end (&p, &o, 3, 5000, 0) == NULL &&
      round_end (&p, &o, 4, 4900, 0) == NULL,
      "a shrinking round in between starts the count again");
  memset (&p, 0, sizeof p);
  why = round_end (&p, &o, 30, 10000, 0);
  ok (says (why, "round limit"), "round limit (%s)", why ? why : "go on");
  ok (p.throttle == 0, "auto-converge off: never a throttle");

  /* ---- auto-converge off: hot observations change nothing ----------- */
  memset (&p, 0, sizeof p);
  for (int i = 0; i < 10; i++)
    xm_policy_sample (&p, 256 * MIB, 32 * MIB, &o);
  ok (p.throttle == 0, "off: ten hot samples, throttle still 0");

  /* ---- auto-converge on ---------------------------------------------- */
  memset (&p, 0, sizeof p);
  xm_policy_sample (&p, 256 * MIB, 32 * MIB, &c);
  ok (p.throttle == 0, "one hot sample: not yet");
  xm_policy_sample (&p, 10 * MIB, 32 * MIB, &c);
  xm_policy_sample (&p, 256 * MIB, 32 * MIB, &c);
  ok (p.throttle == 0, "hot, cool, hot: not in a row, not yet");
  xm_policy_sample (&p, 256 * MIB, 32 * MIB, &c);
  ok (p.throttle == 20, "two hot in a row: the initial throttle (%u)",
      p.throttle);
  xm_policy_sample (&p, 100 * MIB, 32 * MIB, &c);
  ok (p.throttle == 30, "each further hot one: + step (%u)", p.throttle);
  xm_policy_sample (&p, 16 * MIB, 32 * MIB, &c);
  ok (p.throttle == 30, "exactly half the bandwidth is not hot (%u)",
      p.throttle);
  xm_policy_sample (&p, 1 * MIB, 32 * MIB, &c);
  ok (p.throttle == 30, "a cool sample never lowers it (%u)", p.throttle);
  xm_policy_sample (&p, -1, 32 * MIB, &c);
  xm_policy_sample (&p, 256 * MIB, 0, &c);
  ok (p.throttle == 30, "unknown rate or bandwidth: not hot (%u)",
      p.throttle);
  for (int i = 0; i < 20; i++)
    xm_policy_sample (&p, 256 * MIB, 32 * MIB, &c);
  ok (p.throttle == 99, "capped at --max-throttle (%u)", p.throttle);

  /* A round's end decides the same way, and a stuck dirty set raises the
   * throttle instead of stopping, until it is at its maximum. */
  memset (&p, 0, sizeof p);
  ok (round_end (&p, &c, 1, 60000, 256) == NULL && p.throttle == 0,
      "round end, hot once: go on, no throttle yet");
  ok (round_end (&p, &c, 2, 60000, 256) == NULL && p.throttle == 20,
      "hot twice (and not shrinking): throttle 20 (%u)", p.throttle);
  ok (round_end (&p, &c, 3, 59000, 10) == NULL && p.throttle == 30,
      "stuck twice with auto-converge: go on, raised to 30 (%u)",
      p.throttle);
  memset (&p, 0, sizeof p);
  struct xm_send_opts m = c;
  m.converge.max_pct = 50;
  m.converge.initial_pct = 50;
  round_end (&p, &m, 1, 60000, 256);
  round_end (&p, &m, 2, 60000, 256);
  ok (p.throttle == 50, "initial = max: 50 (%u)", p.throttle);
  round_end (&p, &m, 3, 60000, 1);
  why = round_end (&p, &m, 4, 60000, 1);
  ok (says (why, "dirty set stopped shrinking"),
      "stuck at the maximum throttle: stop (%s)", why ? why : "go on");
  memset (&p, 0, sizeof p);
  round_end (&p, &c, 1, 60000, 256);
  round_end (&p, &c, 2, 60000, 256);
  why = round_end (&p, &c, 3, 100, 256);
  ok (says (why, "predicted downtime under the target") && p.throttle == 20, "on target: stop, the throttle left as it was "
      "(%s, %u)", why ? why : "go on", p.throttle);

  return tap_done ();
}
