#!/usr/bin/python3
# A running VM that writes its disk moves A -> B -> A and keeps its disk:
# everything real, two "hosts" on this machine (each an SR directory and
# an sxm run directory), TCP + TLS on 127.0.0.1 between them.
#
# The VM is xenmem's uffd test guest run as a VM process (`xenmem guest
# --monitor`), its disks attached with `sxm attach`; it writes
# sequence-numbered, checksummed records to them all along and re-reads
# earlier ones.  B is `sxm receive --memory uffd --monitor` (the new
# disks served by B's own disk services, which stay after the commit, the
# guest going on there with them); A is `sxm migrate --memory
# uffd:MONITOR`.  After each leg: the guest's check on the new host
# (counter advancing, memory checksum, EVERY record it ever wrote read
# back from the new disks, new records landing), the old host's disk
# services detached and the new host's attached and idle; then back with
# the same commands.  One disk and two disks.
#
# Failures on both legs (destination disk service killed mid-copy, memory
# receiver killed mid-stream, sxm migrate killed, destination SR filling
# up): the guest keeps running where it was, with its disk and every
# record intact; the other side keeps no VHD and no disk service.
# Seeds: none needed (the guest's records are self-describing).
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from urllib.parse import unquote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (ROOT, MiB, run_test, tap, tmpfs, wait_log,  # noqa: E402
                     Host, VM, Receive, monitor, guest_check as check,
                     vm_migrate as migrate)


def leg(src, dst, ctls, mon, ndisks, tag, vm_proc=None):
    """One successful move; returns the new (ctls, monitor)."""
    st0 = monitor(mon, "status")
    rcv = Receive(dst, ndisks, f"vm-{tag}.mon")
    rc, out, err = migrate(src, rcv.token_file, ctls, mon)
    rrc = rcv.finish()
    lines = rcv.lines()
    mons = [unquote(x[len("monitor="):]) for x in rcv.out.splitlines()
            if x.startswith("monitor=")]
    tap.ok(rc == 0 and rrc == 0 and len(lines) == ndisks and
           mons == [rcv.mon],
           f"{tag}: migrate and receive exit 0; receive prints {ndisks} "
           "disk line(s) and the monitor", f"rc={rc} rrc={rrc}\n{err}\n"
           f"{rcv.out}\n{rcv.err}")
    if vm_proc is not None:
        try:
            vrc = vm_proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vrc = None
        tap.eq(vrc, 0, f"{tag}: the VM process on {src.name} exits 0 "
               "(the guest left)")
    else:
        tap.ok(not os.path.exists(mon), f"{tag}: the old monitor is gone")
    ok, j = check(rcv.mon, 1.0)
    tap.ok(ok and j["disk_seq_at_resume"] >= st0.get("disk_seq", 1),
           f"{tag}: on {dst.name} the guest runs on: counter and memory "
           "check, every record it ever wrote reads back from the new "
           "disk(s), new records land", json.dumps(j) + "\n" +
           json.dumps(st0))
    svc_src = src.services()
    svc_dst = dst.services()
    tap.ok(svc_src == [] and len(svc_dst) == ndisks and
           all(d["alive"] and d["mirror"] == "idle" for d in svc_dst) and
           sorted(d["control"] for d in svc_dst) ==
           sorted(x["control"] for x in lines),
           f"{tag}: {src.name}'s disk services detached (VHDs kept), "
           f"{dst.name}'s attached, alive, idle", f"{svc_src}\n{svc_dst}")
    return [x["control"] for x in lines], rcv.mon


def roundtrip(S, ndisks):
    a = Host(os.path.join(S, f"A{ndisks}"), "A")
    b = Host(os.path.join(S, f"B{ndisks}"), "B")
    vm = VM(a, ndisks)
    nvhd = len(a.vhds())
    ctls, mon = leg(a, b, vm.ctls, vm.mon, ndisks, f"{ndisks} disk(s) A->B",
                    vm_proc=vm.proc)
    tap.eq(len(a.vhds()), nvhd, f"{ndisks} disk(s): A's VHDs stay on disk")
    ctls, mon = leg(b, a, ctls, mon, ndisks, f"{ndisks} disk(s) B->A")
    tap.eq(len(a.vhds()), 2 * nvhd,
           f"{ndisks} disk(s): back on A in new VHDs beside the old ones")
    monitor(mon, "quit")


# ---- failures -------------------------------------------------------------

def fault_case(S, tag, direction, fault):
    """Move a VM whose disk holds 48 MiB (the copy is rate-limited so that
    it lasts) and inject FAULT; DIRECTION "A->B" starts on A, "B->A"
    first moves it A -> B (successfully) and injects on the way back."""
    a = Host(os.path.join(S, tag, "A"), "A")
    b = Host(os.path.join(S, tag, "B"), "B")
    vm = VM(a, 1, prefill_mib=48)
    src, dst, ctls, mon = a, b, vm.ctls, vm.mon
    if direction == "B->A":
        rcv = Receive(b, 1, "vm-b.mon")
        rc, _, err = migrate(a, rcv.token_file, ctls, mon)
        assert rcv.finish() == 0 and rc == 0, err
        ctls, mon = [rcv.lines()[0]["control"]], rcv.mon
        src, dst = b, a
    before_vhds = dst.vhds()
    before_svc = sorted(d["name"] for d in dst.services())
    mounts = contextlib.ExitStack()
    if fault == "sr-full":
        mnt = os.path.join(dst.d, "small")
        if not tap.requires(mounts.enter_context(tmpfs(mnt, "40M")),
                            f"{tag}: cannot mount a small tmpfs here",
                            count=2):
            monitor(mon, "quit")
            return
        dst.sr = os.path.join(mnt, "sr")
        os.makedirs(dst.sr)
        before_vhds = []
    try:
        rcv = Receive(dst, 1, f"vm-{tag}.mon", expires=15)
        if fault == "sr-full":          # the token said there was room
            with open(os.path.join(mnt, "filler"), "wb") as f:
                f.write(b"\1" * (36 * MiB))
        # The memory fault needs a memory phase long enough to be hit in:
        # 64 MiB at 16 MiB/s is 4 s (unlimited, 0.3 s: over before the kill).
        extra = ["--memory-opt", "--rate=16M"] if fault == "memory" else []
        p = migrate(src, rcv.token_file, ctls, mon, "--copy-rate=24M",
                    *extra, wait=False)
        lines = []
        pattern = {"service": r"== copy", "memory": r"== memory",
                   "migrate": r"== copy", "sr-full": r"== copy"}[fault]
        wait_log(p, pattern, lines)
        time.sleep(0.4)
        if fault == "service":
            svc = dst.services()
            for d in svc:
                os.kill(d["pid"], signal.SIGKILL)
            what = "destination disk service killed mid-copy"
        elif fault == "memory":
            r = subprocess.run(["pgrep", "-P", str(rcv.proc.pid), "-x",
                                "xenmem"], capture_output=True, text=True)
            for x in r.stdout.split():
                os.kill(int(x), signal.SIGKILL)
            what = "memory receiver killed mid-stream"
        elif fault == "migrate":
            # Only sxm itself dies; its children (the live copy) hold its
            # pipes and finish or fail on their own.
            p.kill()
            what = "sxm migrate killed -9"
        else:
            what = "destination SR fills up during the copy"
        if fault == "migrate":
            rc = p.wait(timeout=30)
            err = ""
            p.stdout.close()
            p.stderr.close()
        else:
            out, err = p.communicate(timeout=180)
            rc = p.returncode
        if fault == "migrate":
            # The admin's part (sxm(1)): the killed migrate's mirror is
            # aborted by hand; the destination gives up at its deadline.
            subprocess.run([os.path.join(ROOT, "client", "sxm-mirror"),
                            ctls[0], "abort"], capture_output=True)
        rrc = rcv.finish()
        ok, j = check(mon, 1.0)
        svc = src.services()
        tap.ok(rc != 0 and rrc != 0 and ok and len(svc) == 1 and
               svc[0]["alive"] and svc[0]["mirror"] == "idle",
               f"{tag}: {what} ({direction}): migrate fails, the guest runs "
               f"on at {src.name} with its disk, every record intact",
               f"rc={rc} rrc={rrc}\n{''.join(lines)}{err}\n{rcv.err}\n"
               f"{json.dumps(j)}\n{svc}")
        after_svc = sorted(d["name"] for d in dst.services())
        tap.ok(dst.vhds() == before_vhds and after_svc == before_svc,
               f"{tag}: {dst.name} keeps no new VHD and no new disk service",
               f"{dst.vhds()} vs {before_vhds}\n{after_svc} vs {before_svc}")
    finally:
        monitor(mon, "quit")
        mounts.close()


def main(S):
    for n in (1, 2):
        roundtrip(S, n)
    for direction in ("A->B", "B->A"):
        for fault in ("service", "memory", "migrate", "sr-full"):
            fault_case(S, f"{fault}-{direction[0]}", direction, fault)


run_test(main)
