#!/usr/bin/python3
# sxm-copy when things go wrong: kill -9 at several points and resume from
# the checkpoint; a destination that fails writes for a while (nbdkit's
# error filter) or drops off and comes back (server killed and restarted);
# a source that goes away; a destination that never comes back (clean
# failure, valid checkpoint, later resume); corrupt or foreign checkpoints;
# a slow destination (delay filter); a stalled one (SIGSTOP: --timeout);
# a full one (ENOSPC on a small tmpfs: immediate, clean failure).

import functools
import json
import os
import random
import signal
import subprocess
import time

from sxmtest import make_raw, tap, run_test, sh, start_nbdkit, tmpfs, ROOT, MiB, GiB

SXM_COPY = os.path.join(ROOT, "client", "sxm-copy")


class Server:
    """An nbdkit we can kill and restart on the same socket."""

    def __init__(self, scratch, name, plugin, *args, filters=()):
        self.sock = os.path.join(scratch, name + ".sock")
        self.launch = functools.partial(
            start_nbdkit, self.sock, *args, plugin=plugin, filters=filters,
            log=os.path.join(scratch, name + ".log"))
        self.uri = f"nbd+unix:///?socket={self.sock}"
        self.p = None

    def start(self):
        self.p = self.launch()
        return self

    def kill(self):
        if self.p:
            self.p.kill()
            self.p.wait()
            self.p = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.kill()


def copy_bg(*args):
    return subprocess.Popen([SXM_COPY, "--json", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    try:
        js = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        js = None
    return p.returncode, js, err


def files_equal(a, b):
    """qemu-img compare: sparse-aware (these are 4 GiB files)."""
    p = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", a, b],
                       capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def main(scratch):
    rng = random.Random(7)
    size = 4 * GiB + 64 * MiB
    # 96 MiB of data in 24 runs, some past 4 GiB
    offs = sorted(rng.sample(range(0, size // (4 * MiB) - 1), 24))
    pieces = [(o * 4 * MiB + 512, rng.randbytes(4 * MiB - 1024)) for o in offs]
    src = os.path.join(scratch, "src.raw")
    make_raw(src, size, pieces)
    alloc = sum(len(d) for _, d in pieces)

    # --- kill -9 at several points, resume from the checkpoint -------------
    dst = os.path.join(scratch, "dst.raw")
    ck = os.path.join(scratch, "copy.ckpt")
    common = ["--checkpoint", ck, "--checkpoint-interval=0.2",
              "--segment-size=4M"]
    kills = 0
    for delay in (0.6, 0.9, 1.2):
        p = copy_bg(*common, "--rate=24M", src, dst)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate()
        tap.ok(os.path.exists(ck), f"checkpoint exists after kill -9 at {delay} s")
    tap.eq(kills, 3, "all three runs were killed mid-copy")
    rc, js, err = finish(copy_bg(*common, src, dst))
    tap.eq(rc, 0, "resumed copy: exit 0")
    tap.ok(js and js["read"] < alloc,
           f"resume skipped finished segments: read {js and js['read']} "
           f"of {alloc} allocated bytes", err)
    same, why = files_equal(src, dst)
    tap.ok(same, "after 3 kills and a resume: byte-identical", why)
    tap.ok(not os.path.exists(ck), "checkpoint removed after success")

    # --- bad checkpoints ------------------------------------------------------
    p = copy_bg(*common, "--rate=24M", src, dst + "2")
    time.sleep(0.6)
    p.send_signal(signal.SIGINT)              # clean interrupt: saves, exit 1
    rc, js, err = finish(p)
    tap.ok(rc == 1 and "interrupted" in err and os.path.exists(ck),
           "SIGINT: exit 1, checkpoint saved", err)
    good = open(ck, "rb").read()
    rc, _, err = finish(copy_bg(*common, src, dst))      # other destination
    tap.ok(rc == 2 and "not resuming" in err,
           "checkpoint of another copy refused: exit 2", err)
    rc, _, err = finish(copy_bg("--checkpoint", ck, "--segment-size=8M",
                                src, dst + "2"))
    tap.ok(rc == 2 and "segment size (offset 32)" in err,
           "different segment size refused, field and offset named", err)
    bad = bytearray(good)
    bad[len(bad) - 20] ^= 0x10
    open(ck, "wb").write(bad)
    rc, _, err = finish(copy_bg(*common, src, dst + "2"))
    tap.ok(rc == 2 and "checksum" in err, "corrupt checkpoint: exit 2", err)
    open(ck, "wb").write(good[:40])
    rc, _, err = finish(copy_bg(*common, src, dst + "2"))
    tap.ok(rc == 2 and "truncated" in err or "size" in err,
           "truncated checkpoint: exit 2", err)
    os.unlink(ck)

    # --- a destination failing writes for a while ----------------------------
    trig = os.path.join(scratch, "fail-now")
    d2 = os.path.join(scratch, "d2.raw")
    make_raw(d2, size, [])
    with Server(scratch, "err", "file", d2, "error-pwrite=EIO",
                "error-pwrite-rate=100%", "error-file=" + trig,
                filters=("error",)) as srv:
        open(trig, "w").close()
        p = copy_bg("--retries=6", src, srv.uri)
        time.sleep(1.5)
        os.unlink(trig)
        rc, js, err = finish(p)
    tap.ok(rc == 0 and js and js["retries"] > 0 and "retry" in err,
           f"EIO for 1.5 s then healthy: retried ({js and js['retries']}) "
           "and succeeded", err)
    same, why = files_equal(src, d2)
    tap.ok(same, "… and the destination is identical", why)

    # --- destination killed mid-copy, restarted -------------------------------
    d3 = os.path.join(scratch, "d3.raw")
    make_raw(d3, size, [])
    srv = Server(scratch, "flaky", "file", d3).start()
    try:
        p = copy_bg("--rate=32M", src, srv.uri)
        time.sleep(0.8)
        srv.kill()
        time.sleep(0.8)
        srv.start()
        rc, js, err = finish(p)
    finally:
        srv.kill()
    tap.ok(rc == 0 and js and js["retries"] > 0,
           "destination server killed and restarted: copy succeeded", err)
    same, why = files_equal(src, d3)
    tap.ok(same, "… byte-identical", why)

    # --- source killed mid-copy, restarted ------------------------------------
    d4 = os.path.join(scratch, "d4.raw")
    ssrv = Server(scratch, "src", "file", src, "-r").start()
    try:
        p = copy_bg("--rate=32M", ssrv.uri, d4)
        time.sleep(0.8)
        ssrv.kill()
        time.sleep(0.8)
        ssrv.start()
        rc, js, err = finish(p)
    finally:
        ssrv.kill()
    tap.ok(rc == 0 and js and js["retries"] > 0,
           "source server killed and restarted: copy succeeded", err)
    same, why = files_equal(src, d4)
    tap.ok(same, "… byte-identical", why)

    # --- destination that never comes back ------------------------------------
    d5 = os.path.join(scratch, "d5.raw")
    make_raw(d5, size, [])
    srv = Server(scratch, "gone", "file", d5).start()
    t0 = time.time()
    p = copy_bg("--rate=32M", "--retries=2", "--checkpoint", ck,
                "--checkpoint-interval=0.2", src, srv.uri)
    time.sleep(1.0)
    srv.kill()
    rc, js, err = finish(p)
    took = time.time() - t0
    final = [l for l in err.splitlines()
             if l.startswith("sxm-copy: " + srv.uri) and "retry" not in l]
    tap.ok(rc == 1 and js and js["status"] == "failed" and final,
           "destination gone for good: exit 1, a final error names it", err)
    tap.ok(took < 30, f"gave up after bounded retries ({took:.1f} s)")
    tap.ok(os.path.exists(ck), "a checkpoint was left")
    srv.start()
    try:
        rc, js, err = finish(copy_bg("--checkpoint", ck,
                                     "--checkpoint-interval=0.2", src, srv.uri))
    finally:
        srv.kill()
    tap.ok(rc == 0 and js and js["read"] < alloc,
           "server back: resume from that checkpoint finished the copy, "
           f"reading {js and js['read']} of {alloc}", err)
    same, why = files_equal(src, d5)
    tap.ok(same, "… byte-identical", why)

    more_faults(scratch, src, size, alloc)


def more_faults(scratch, src, size, alloc):
    # --- a slow destination: every write delayed 5 ms ----------------------
    d6 = os.path.join(scratch, "d6.raw")
    make_raw(d6, size, [])
    with Server(scratch, "slow", "file", d6, "delay-write=5ms",
                filters=("delay",)) as srv:
        rc, js, err = finish(copy_bg(src, srv.uri))
    same, why = files_equal(src, d6)
    tap.ok(rc == 0 and js["retries"] == 0 and same,
           "slow destination (delay filter): copied, no retries", err or why)

    # --- a stalled destination: SIGSTOP, then SIGCONT -----------------------
    d7 = os.path.join(scratch, "d7.raw")
    make_raw(d7, size, [])
    srv = Server(scratch, "stall", "file", d7).start()
    try:
        p = copy_bg("--rate=32M", "--timeout=1", "--retries=6", src, srv.uri)
        time.sleep(0.8)
        srv.p.send_signal(signal.SIGSTOP)
        time.sleep(3)
        srv.p.send_signal(signal.SIGCONT)
        rc, js, err = finish(p)
    finally:
        srv.kill()
    same, why = files_equal(src, d7)
    tap.ok(rc == 0 and js["retries"] > 0 and "no reply for 1 s" in err and same,
           "stalled destination: --timeout gave up on it, reconnected after "
           "SIGCONT, copy identical", err or why)

    # --- stalled for good: a clean failure within the timeouts -------------
    d8 = os.path.join(scratch, "d8.raw")
    make_raw(d8, size, [])
    srv = Server(scratch, "stall2", "file", d8).start()
    try:
        t0 = time.time()
        p = copy_bg("--rate=32M", "--timeout=1", "--retries=2", src, srv.uri)
        time.sleep(0.8)
        srv.p.send_signal(signal.SIGSTOP)
        rc, js, err = finish(p, timeout=60)
        took = time.time() - t0
        srv.p.send_signal(signal.SIGCONT)
    finally:
        srv.kill()
    tap.ok(rc == 1 and took < 20 and "no answer within 1 s" in err,
           f"destination stalled for good: exit 1 after {took:.1f} s, "
           "connect attempts time out too", err)

    # --- ENOSPC: a 40 MiB tmpfs for 96 MiB of data --------------------------
    mnt = os.path.join(scratch, "mnt")
    with tmpfs(mnt, "40m") as mounted:
        if tap.requires(mounted, "cannot mount a tmpfs for the ENOSPC case",
                        count=2):
            enospc(scratch, src, mnt)


def enospc(scratch, src, mnt):
    full = os.path.join(mnt, "full.raw")
    ck = os.path.join(scratch, "enospc.ckpt")
    t0 = time.time()
    rc, js, err = finish(copy_bg("--checkpoint", ck, src, full))
    took = time.time() - t0
    tap.ok(rc == 1 and "No space left on device" in err and
           js["retries"] == 0 and took < 10,
           f"destination full: exit 1 at once ({took:.1f} s, no retries), "
           "says ENOSPC", err)
    tap.ok(os.path.exists(ck), "… and the checkpoint is left for a resume")


run_test(main)
