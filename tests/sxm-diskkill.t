#!/usr/bin/python3
# The VM's own disk server dies during its migration: kill -9 of the
# SOURCE's disk service (the nbdkit, vhd plugin + mirror filter, that
# `sxm attach` started and the guest reads and writes) (a) during the live
# copy and (b) inside the switchover window (the guest paused, the disks
# about to switch over).
#
# Two "hosts" on this machine as in tests/sxm-roundtrip.t (an SR and a run
# directory each); the VM is xenmem's uffd test guest (`xenmem guest
# --monitor`) writing checksummed records to a disk attached with `sxm
# attach`; B is `sxm receive --memory uffd --monitor`.
#
# How each window is hit: (a) migrate's "== copy" line, + 0.4 s, the copy
# rate-limited (48 MiB at 24 MiB/s: 2 s); (b) xenmem send's test hook
# XENMEM_TEST_HOLD=paused:MS (doc/xenmem.pod): the guest paused, the
# hook's paused phase (sxm-mirror switchover) not yet run, held 1.5 s
# after the line saying so lands in migrate's xenmem.log.
#
# SXM_DISKKILL_CASES=copy or =switchover runs only that case.
#
# What must hold (doc/design.md, "Rollback"):
#  * sxm migrate exits 1 and says the source disk service is gone (not
#    "left running and unchanged"); sxm receive exits non-zero; B keeps
#    no VHD, no disk service, no process; migrate leaves no run directory
#    and no process of its own on A; the guest process still runs on A.
#  * The admin's restart (doc/sxm.pod, "The disk service"): `sxm list`
#    shows the disk DEAD; `sxm-vhd check` of the VHD is clean; `sxm detach
#    NAME` + `sxm attach FILE` serve it again at the same uri and control
#    socket, mirror idle.
#  * Nothing acknowledged is lost: the guest issues no flush of its own, so
#    the test flushes once (`sxm-mirror CTL flush`, as a guest's barrier
#    would) after the guest's first records allocated every block it
#    writes; every later record is an in-place overwrite, which a process
#    kill cannot lose.  A NEW migration A -> B of the same disk (from the
#    restarted service) succeeds and the moved guest's own check on B reads
#    back EVERY record it ever got an acknowledgement for (disk_io_errors
#    is not 0 here: its requests failed while the service was dead; the
#    test guest, like a Xen guest over a dead tapdisk, does not reconnect).
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (run_test, tap, Host, VM, Receive, monitor,  # noqa: E402
                     guest_check, vm_migrate, wait_file, wait_log,
                     procs_mentioning, fields, kill_left)
from mirrortest import SXM_MIRROR, SXM_VHD  # noqa: E402

HOLD_MS = 1500


def case(S, when):
    tag = f"kill-{when}"
    a = Host(os.path.join(S, tag, "A"), "A")
    b = Host(os.path.join(S, tag, "B"), "B")
    # migrate's run directory (MRUNDIR) goes under TMPDIR: xenmem send's
    # messages land there, and it must be gone afterwards.
    a.env["TMPDIR"] = os.path.join(a.d, "tmp")
    os.makedirs(a.env["TMPDIR"])
    env = {"XENMEM_TEST_HOLD": f"paused:{HOLD_MS}"} \
        if when == "switchover" else None
    vm = VM(a, 1, prefill_mib=48 if when == "copy" else 4, guest_mem="32M",
            env=env)
    ctl = vm.ctls[0]
    svc = a.services()[0]
    name, vhd, uri = svc["name"], svc["file"], svc["uri"]
    # Every block the guest's records go to is allocated by now (its first
    # 4 records, one per slot group): make that durable, as a guest's own
    # flush would.  From here on every acknowledged record is an in-place
    # overwrite.
    fl = subprocess.run([SXM_MIRROR, ctl, "flush"], capture_output=True,
                        text=True)
    assert fl.returncode == 0, fl.stderr

    rcv = Receive(b, 1, "vm-b.mon", expires=60)
    extra = ["--copy-rate=24M"] if when == "copy" else []
    p = vm_migrate(a, rcv.token_file, vm.ctls, vm.mon, *extra, wait=False)
    lines = []
    if when == "copy":
        hit = wait_log(p, r"== copy", lines)
        time.sleep(0.4)
        hit = hit and p.poll() is None
    else:
        hit = wait_file(os.path.join(a.env["TMPDIR"], "sxm-migrate.*",
                                     "xenmem.log"),
                        r"XENMEM_TEST_HOLD: paused", 60)
    # Kill first: inside the pause the guest's monitor is busy with the
    # send (a status request would wait for the migration's end).
    os.kill(svc["pid"], signal.SIGKILL)
    t_kill = time.time()
    st0 = monitor(vm.mon, "status") if when == "copy" else {}
    try:
        out, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += "\n(test: sxm migrate did not end; killed)"
    took = time.time() - t_kill
    err = "".join(lines) + err
    rc = p.returncode
    rrc = rcv.finish(timeout=120)
    what = {"copy": "during the live copy",
            "switchover": "inside the switchover (guest paused)"}[when]
    tap.diag(f"{when}: sxm migrate after the kill:\n{err}")
    tap.ok(hit, f"{when}: the window was hit ({what})", err)
    tap.ok(rc == 1 and rrc not in (0, None) and took < 60,
           f"{when}: source disk service killed -9 {what}: migrate exits 1 "
           f"(in {took:.1f} s), receive fails",
           f"rc={rc} rrc={rrc}\n{err}\n{rcv.err}")
    tap.ok("disk service" in err and "left running and unchanged" not in err,
           f"{when}: migrate says the source disk service is gone (not "
           "'left running and unchanged')", err)
    time.sleep(0.5)     # B's fronts and services exit as receive ends
    leftb = procs_mentioning(b.d)
    tap.ok(b.vhds() == [] and b.services() == [] and not leftb and
           not [f for f in os.listdir(b.run) if not f.startswith(".")],
           f"{when}: B keeps no VHD, no disk service, no process",
           f"{b.vhds()}\n{b.services()}\n{leftb}\n{os.listdir(b.run)}")
    lefta = {k: v for k, v in procs_mentioning(a.d).items()
             if k != vm.proc.pid}
    tap.ok(vm.proc.poll() is None and not lefta and
           os.listdir(a.env["TMPDIR"]) == [],
           f"{when}: on A only the guest runs (nothing of migrate's left: "
           "no process, no run directory)",
           f"guest={vm.proc.poll()}\n{lefta}\n{os.listdir(a.env['TMPDIR'])}")
    st1 = monitor(vm.mon, "status")
    time.sleep(0.3)
    st2 = monitor(vm.mon, "status")
    tap.ok(st2.get("counter", 0) > st1.get("counter", 0) and
           st1.get("disk_seq", -1) >= st0.get("disk_seq", 0) and
           st2.get("disk_io_errors", 0) > 0,
           f"{when}: the guest was resumed on A and runs on (its disk "
           "requests fail: no server)", f"{st0}\n{st1}\n{st2}")

    # ---- the admin's restart ------------------------------------------
    lst = a.services()
    tap.ok(len(lst) == 1 and lst[0]["alive"] is False,
           f"{when}: sxm list shows the disk service DEAD", lst)
    chk = subprocess.run([SXM_VHD, "check", vhd], capture_output=True,
                         text=True)
    tap.ok(chk.returncode == 0, f"{when}: sxm-vhd check of the VHD the "
           "killed server wrote: clean", chk.stdout + chk.stderr)
    d = a.sxm("detach", name)
    at = a.sxm("attach", vhd)
    kv = fields(at.stdout.strip()) if at.returncode == 0 else {}
    lst = a.services()
    tap.ok(d.returncode == 0 and at.returncode == 0 and
           kv.get("control") == ctl and kv.get("uri") == uri and
           len(lst) == 1 and lst[0]["alive"] and lst[0]["mirror"] == "idle",
           f"{when}: restart: sxm detach {name} + sxm attach FILE serve it "
           "again at the same uri and control socket, mirror idle",
           f"{d.stderr}\n{at.stdout}{at.stderr}\n{lst}")

    # ---- a new migration of the same disk ---------------------------------
    seq_dead = monitor(vm.mon, "status").get("disk_seq", 0)
    rcv2 = Receive(b, 1, "vm-b2.mon")
    rc2, out2, err2 = vm_migrate(a, rcv2.token_file, vm.ctls, vm.mon)
    rrc2 = rcv2.finish()
    try:
        vrc = vm.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        vrc = None
    tap.ok(rc2 == 0 and rrc2 == 0 and vrc == 0,
           f"{when}: a new migration of the same disk succeeds (the VM "
           "process on A exits 0)",
           f"rc={rc2} rrc={rrc2} vm={vrc}\n{err2}\n{rcv2.err}")
    ok, j = guest_check(rcv2.mon, 1.0, io_errors_ok=True)
    tap.ok(ok and j.get("disk_seq_at_resume", 0) >= seq_dead >=
           st0.get("disk_seq", 1),
           f"{when}: on B the guest runs on and every record it got an "
           f"acknowledgement for (up to {seq_dead}"
           + (f"; {st0['disk_seq']} at the kill" if "disk_seq" in st0
              else "") + ") reads back", json.dumps(j))
    sa, sb = a.services(), b.services()
    tap.ok(sa == [] and len(sb) == 1 and sb[0]["alive"] and
           sb[0]["mirror"] == "idle" and len(b.vhds()) == 1 and
           os.listdir(a.env["TMPDIR"]) == [],
           f"{when}: afterwards A serves nothing, B one disk, idle; "
           "no run directory left", f"{sa}\n{sb}\n{b.vhds()}")
    monitor(rcv2.mon, "quit")


def main(S):
    cases = os.environ.get("SXM_DISKKILL_CASES", "copy,switchover")
    for when in cases.split(","):
        try:
            case(S, when)
        except Exception:
            import traceback
            tap.ok(False, f"{when}: raised", traceback.format_exc())
        finally:
            kill_left(os.path.join(S, f"kill-{when}"))


run_test(main)
