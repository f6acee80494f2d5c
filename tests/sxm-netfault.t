#!/usr/bin/python3
# Network faults between the hosts, in every phase of `sxm migrate`.
#
# Two "hosts" on this machine as in tests/sxm-roundtrip.t (an SR and a run
# directory each); a running VM on A (xenmem's uffd test guest under its
# monitor, writing checksummed records to a disk attached with `sxm
# attach`) moved to B by `sxm receive --monitor` + `sxm migrate`.  Every
# byte from A to B (the disk's TLS front and the memory stream) goes
# through a user-space TCP relay standing for the network: the token's
# ports are rewritten to the relay's (relay_token; sxm checks that token
# like any other).  In each phase the link STALLS (nothing moves, nothing
# is closed) for STALL s and is then CUT for good (both sides reset, new
# connections refused); in some phases a stall instead HEALS after STALL s;
# in one (every phase with SXM_NETFAULT_CASES=all) it never ends, and
# migrate must exit on its own timeouts within STALL_BOUND s.
#
# Phases and how each is hit: check (the link is stalled before migrate
# starts: with uffd memory the check itself sends nothing, the first bytes
# are the mirror's), mirror start (the relay stalls as the mirror's second
# connection comes, its first one already through), live copy (the copy
# event + 1 s, copy limited), memory rounds (once the relay has
# carried 1 MiB of the stream, limited to 8 MiB/s), inside the pause
# (xenmem send's XENMEM_TEST_HOLD=paused test hook: the guest is paused,
# the switchover and the last round not yet sent) and between the commit
# and `running` (xenmem receive's XENMEM_TEST_HOLD=committed).
#
# Outcomes (doc/design.md, "Rollback"): before the commit, migrate exits 1
# within BOUND s of the cut, the source guest runs on and passes its own
# check (memory checksum, counter, every record it ever wrote reads back,
# no disk error), its disk service idle; B removes its VHD and its disk
# service and its receive exits 1 (at once once the memory stream had
# started, else at the token's deadline: a cut link cannot carry the
# abort).  After the commit: migrate exits 3 (in doubt), the source guest
# is paused with its disk `ready`, the guest runs on B with every record.
# A stall that heals: the migration succeeds.  Table and measurements:
# doc/testing.md, "Network fault matrix".
#
# SXM_NETFAULT_CASES=phase:fault,... runs only those (e.g. copy:cut,
# memory:stall), =all every case.
import json
import os
import subprocess
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (run_test, tap, Host, VM, Receive, Relay,  # noqa: E402
                     monitor, guest_check, vm_migrate, relay_token,
                     token_ports, token_fields, wait_file, MiB)
from mirrortest import SXM_MIRROR  # noqa: E402

STALL = 3.0       # seconds the link is stalled before the cut (or heal)
BOUND = 20.0      # migrate must exit within this after the cut
# ... and after a stall that never ends: the timeouts (the mirror's 30 s,
# xenmem's 60 s without progress, which a peer's kernel taking a few bytes
# now and then can stretch to twice that; doc/design.md, "Rollback")
STALL_BOUND = 130.0
EXPIRES = 30      # the token's lifetime: B gives up then if never told
                  # (cases that need B's stream to start: LONG_EXPIRES)
LONG_EXPIRES = 90
HOLD_MS = 1500    # the XENMEM_TEST_HOLD windows

PHASES = ["check", "mirror", "copy", "memory", "paused", "committed"]
# The longest first (three run at a time): a stall that never ends, at the
# mirror's start, waits for the mirror's connect timeout (30 s).
CASES = [("check", "stall")] + [(p, "cut") for p in PHASES] + \
    [(p, "heal") for p in ("memory", "paused")]
# Not run by default (make check's time): a stall that never ends in the
# other phases (each waits 30-130 s for a timeout) and one that heals in
# the copy; SXM_NETFAULT_CASES=copy:stall etc., or =all for every case.
MORE = [(p, "stall") for p in PHASES if p != "check"] + [("copy", "heal")]


class Events:
    """migrate's --progress json events, read from a pipe as they come."""

    def __init__(self):
        self.r, self.w = os.pipe()
        self.phases = {}
        self.cond = threading.Condition()
        self.t = threading.Thread(target=self.read, daemon=True)
        self.t.start()

    def read(self):
        with os.fdopen(self.r) as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("event") == "phase":
                    with self.cond:
                        self.phases.setdefault(e["phase"], time.time())
                        self.cond.notify_all()

    def wait(self, phase, timeout=60):
        with self.cond:
            return self.cond.wait_for(lambda: phase in self.phases, timeout)


def case(S, phase, fault):
    """One migration with the link faulted in PHASE; returns the list of
    (ok, description, diagnosis) and a result line for the table."""
    tag = f"{phase}-{fault}"
    what = {"cut": f"{phase}, stall {STALL:g} s then cut",
            "heal": f"{phase}, stall {STALL:g} s then heal",
            "stall": f"{phase}, stall for good"}[fault]
    res = []
    a = Host(os.path.join(S, tag, "A"), "A")
    # migrate's run directory, where xenmem send's messages go (a guest
    # under a monitor sends with its client's standard error)
    a.env["TMPDIR"] = os.path.join(a.d, "tmp")
    os.makedirs(a.env["TMPDIR"])
    b = Host(os.path.join(S, tag, "B"), "B")
    vm_env = {"XENMEM_TEST_HOLD": f"paused:{HOLD_MS}"} \
        if phase == "paused" else None
    vm = VM(a, 1, prefill_mib=16 if phase == "copy" else 4, guest_mem="32M",
            env=vm_env)
    rcv_env = {"XENMEM_TEST_HOLD": f"committed:{HOLD_MS}"} \
        if phase == "committed" else None
    # A fault before the memory stream cannot tell B (the link is gone):
    # it gives up at the token's deadline, kept short for those cases.
    short = fault != "heal" and phase in ("check", "mirror", "copy")
    rcv = Receive(b, 1, "vm-b.mon", expires=EXPIRES if short else
                  LONG_EXPIRES, env=rcv_env)
    t_token = time.time()
    relay = Relay(token_ports(rcv.token))
    tf = os.path.join(S, tag, "token.relay")
    with open(tf, "w") as f:
        f.write(relay_token(rcv.token, relay) + "\n")
    extra = []
    if phase == "copy":
        extra.append("--copy-rate=4M")          # 16 MiB: about 4 s
    if phase == "memory":
        extra.append("--memory-opt=--rate=8M")  # 32 MiB: round 0 4 s
    if phase == "check":
        relay.stall()
    elif phase == "mirror":
        relay.stall_at = 2
    ev = Events()
    mlog = os.path.join(S, tag, "migrate.log")
    p = vm_migrate(a, tf, vm.ctls, vm.mon, *extra,
                   f"--progress=json:{ev.w}", "--log", mlog, wait=False,
                   pass_fds=(ev.w,))
    os.close(ev.w)
    # B's receive is waited for alongside (when it exits is measured).
    rstate = {}

    def rwait():
        rstate["rc"] = rcv.finish(timeout=LONG_EXPIRES + 60)
        rstate["t"] = time.time()
    rthread = threading.Thread(target=rwait, daemon=True)
    rthread.start()
    # Hit the phase.
    if phase == "check":
        # Stalled from the start; the stall's seconds count from the
        # mirror's start, the first bytes sent (the check itself, local,
        # can take seconds on a loaded machine).
        hit = ev.wait("check") and ev.wait("mirror")
    elif phase == "mirror":
        deadline = time.time() + 60
        while relay.flowing.is_set() and time.time() < deadline and \
                p.poll() is None:
            time.sleep(0.01)
        hit = not relay.flowing.is_set() and ev.wait("mirror", 1) and \
            "copy" not in ev.phases
    elif phase in ("copy", "memory"):
        hit = ev.wait(phase)
        if phase == "memory":
            # the stream under way: a MiB of it through (round 0)
            mport = dict(token_fields(rcv.token))["mport"]
            deadline = time.time() + 60
            while relay.forwarded.get(int(mport), 0) < MiB and \
                    time.time() < deadline and p.poll() is None:
                time.sleep(0.01)
        else:
            time.sleep(1.0)
        hit = hit and p.poll() is None and \
            not [x for x in PHASES[PHASES.index(phase) + 1:]
                 if x in ev.phases]
    elif phase == "paused":
        hit = wait_file(os.path.join(a.env["TMPDIR"], "sxm-migrate.*",
                                     "xenmem.log"),
                        r"XENMEM_TEST_HOLD: paused", 60)
    else:
        hit = wait_file(rcv.mon + ".log", r"XENMEM_TEST_HOLD: committed", 60)
    if phase not in ("check", "mirror"):
        relay.stall()
    t_stall = time.time()
    time.sleep(STALL)
    early = p.poll()
    t_fault = time.time()
    if fault == "cut":
        relay.cut()
    elif fault == "heal":
        relay.heal()
    try:
        out, err = p.communicate(timeout=BOUND if fault == "cut"
                                 else STALL_BOUND)
        t_exit = time.time()
    except subprocess.TimeoutExpired:
        t_exit = None
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
    rc = p.returncode
    took = (t_exit - t_fault) if t_exit else None
    rthread.join(LONG_EXPIRES + 90)
    rrc = rstate.get("rc")
    t_rexit = rstate.get("t", time.time())
    if fault != "cut":
        relay.cut()
    diag = (f"rc={rc} early={early} took={took} rrc={rrc}\n"
            f"relay: {relay.log}\nphases: {ev.phases}\n{err}\n"
            f"--- receive\n{getattr(rcv, 'err', '(running)')}")
    res.append((hit, f"{what}: the link faulted in that phase", diag))

    in_doubt = phase == "committed" and fault != "heal"
    if fault == "heal":
        want = 0
    elif in_doubt:
        want = 3
    else:
        want = 1
    res.append((early is None, f"{what}: migrate still waiting during the "
                f"{STALL:g} s stall", diag))
    if fault == "cut":
        res.append((took is not None and rc == want,
                    f"{what}: migrate exits {want} within {BOUND:g} s of the "
                    "cut" + (" (in doubt)" if in_doubt else ""), diag))
    elif fault == "stall":
        res.append((took is not None and rc == want,
                    f"{what}: migrate exits {want} within {STALL_BOUND:g} s "
                    "of the stall" + (" (in doubt)" if in_doubt else ""),
                    diag))
    else:
        res.append((rc == 0, f"{what}: migrate exits 0 (migrated)", diag))

    where = "?"
    if want == 1:
        # Rolled back: the guest runs on at A with its disk.
        ok, j = guest_check(vm.mon, 1.0)
        res.append((ok, f"{what}: the guest runs on at A: memory checksum, "
                    "counter, every record it wrote reads back, no disk "
                    "error", json.dumps(j) + "\n" + diag))
        svc = a.services()
        res.append((len(svc) == 1 and svc[0]["alive"] and
                    svc[0]["mirror"] == "idle",
                    f"{what}: A's disk service alive, mirror idle",
                    f"{svc}\n{diag}"))
        res.append((rrc == 1 and b.vhds() == [] and b.services() == [],
                    f"{what}: B's receive exits 1 and keeps no VHD and no "
                    "disk service", f"{b.vhds()} {b.services()}\n{diag}"))
        if fault == "cut" and phase in ("memory", "paused"):
            res.append(("t" in rstate and rstate["t"] - t_fault < BOUND,
                        f"{what}: B's receive exits within {BOUND:g} s of "
                        "the cut (its stream broke)", diag))
        where = "A"
    else:
        # The guest runs at B.
        ok, j = guest_check(rcv.mon, 1.0)
        res.append((ok and rrc == 0,
                    f"{what}: B's receive exits 0; the guest runs at B: "
                    "memory checksum, counter, every record it ever wrote "
                    "reads back, no disk error",
                    json.dumps(j) + "\n" + diag))
        where = "B"
        if in_doubt:
            st = subprocess.run([SXM_MIRROR, vm.ctls[0], "status"],
                                capture_output=True, text=True).stdout
            paused = monitor(vm.mon, "status")
            res.append(('"state":"ready"' in st and "IN DOUBT" in err and
                        paused.get("in_doubt") is True,
                        f"{what}: says IN DOUBT; A's guest left paused, its "
                        "disk ready (writes held)",
                        f"{st}\n{json.dumps(paused)}\n{diag}"))
            # The admin's decision: the guest runs at B.
            c = subprocess.run([SXM_MIRROR, vm.ctls[0], "complete"],
                               capture_output=True, text=True)
            res.append((c.returncode == 0,
                        f"{what}: the admin completes A's mirror", c.stderr))
        else:
            svc = a.services()
            res.append((svc == [], f"{what}: A's disk service detached",
                        f"{svc}\n{diag}"))
    row = (phase, fault, where, rc, None if took is None else round(took, 1),
           None if t_exit is None else round(t_exit - t_stall, 1),
           rrc, round(t_rexit - t_token, 1))
    for m in (vm.mon, rcv.mon):
        if os.path.exists(m):
            monitor(m, "quit")
    relay.cut()
    return res, row


def main(S):
    only = os.environ.get("SXM_NETFAULT_CASES")
    cases = CASES
    if only == "all":
        cases = CASES + MORE
    elif only:
        want = [tuple(x.split(":")) for x in only.split(",")]
        cases = [c for c in CASES + MORE if c in want]
    # The cases wait most of the time (stalls, B's deadline): three at a
    # time; their assertions are printed in order once all are done.
    results = [None] * len(cases)

    def run(i):
        phase, fault = cases[i]
        try:
            results[i] = case(S, phase, fault)
        except Exception:
            results[i] = ([(False, f"{phase}, {fault}: the case raised",
                            traceback.format_exc())], None)

    t0 = time.time()
    todo = list(range(len(cases)))
    running = []
    while todo or running:
        running = [t for t in running if t.is_alive()]
        while todo and len(running) < 3:
            t = threading.Thread(target=run, args=(todo.pop(0),))
            t.start()
            running.append(t)
            time.sleep(0.5)
        time.sleep(0.1)
    for res, row in results:
        for ok, desc, diag in res:
            tap.ok(ok, desc, diag)
    tap.diag(f"{len(cases)} cases in {time.time() - t0:.0f} s")
    tap.diag("phase fault guest-at migrate-exit s-after-cut/heal "
             "s-after-stall receive-exit s-after-token")
    for res, row in results:
        if row:
            tap.diag(" ".join(str(x) for x in row))


run_test(main)
