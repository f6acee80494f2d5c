#!/usr/bin/python3
# sxm-vhd coalesce: a differencing child merged into its parent leaves the
# parent reading exactly as the child did (checked through the plugin and
# qemu-img); a coalesce killed half-way leaves both images valid and the
# child unchanged, and running it again completes it; a parent with another
# child is refused; a non-differencing image is refused.

import hashlib
import os
import random
import signal
import subprocess
import time

from sxmtest import (qemu_vhd, tap, run_test, nbdkit, nbd_connect, sh, files_equal,
                     ROOT, MiB, GiB)

TOOL = os.path.join(ROOT, "client", "sxm-vhd")


def sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def read_all(d, img, out):
    with nbdkit(d, img, "-r") as uri:
        sh("nbdcopy", uri, out)


def make_chain(d, name, size, nwrites, rng, big=False):
    base = os.path.join(d, f"{name}-base.vhd")
    child = os.path.join(d, f"{name}-child.vhd")
    sh(TOOL, "create", base, str(size))
    with nbdkit(d, base) as uri:
        h = nbd_connect(uri)
        h.pwrite(b"\x11" * 8 * MiB, 0)
        h.pwrite(b"\x22" * MiB, size - 2 * MiB)
        h.flush()
        h.shutdown()
    sh(TOOL, "snapshot", base, child)
    with nbdkit(d, child) as uri:
        h = nbd_connect(uri)
        for i in range(nwrites):
            off = rng.randrange(0, size - 1)
            n = min(rng.choice([1, 700, 4096, 100000]), size - off)
            h.pwrite(rng.randbytes(n), off)
        if big:
            for i in range(100):                     # 200 MiB of data
                h.pwrite(rng.randbytes(2 * MiB), i * 8 * MiB + 4096)
        h.flush()
        h.shutdown()
    return base, child


def main(d):
    rng = random.Random(99)
    size = 4 * GiB + 256 * MiB

    base, child = make_chain(d, "a", size, 150, rng)
    want = os.path.join(d, "want.raw")
    read_all(d, child, want)
    r = subprocess.run([TOOL, "coalesce", child], capture_output=True, text=True)
    tap.ok(r.returncode == 0 and "now redundant" in r.stdout,
           "coalesce: exit 0", r.stdout + r.stderr)
    got = os.path.join(d, "got.raw")
    read_all(d, base, got)
    same, why = files_equal(got, want)
    tap.ok(same, "coalesce: the parent alone now reads as the child did", why)
    sh("qemu-img", "compare", "-q", "-F", "raw", qemu_vhd(base), want)
    tap.ok(True, "coalesce: qemu-img compare of the parent equals it too")
    read_all(d, child, got)
    same, why = files_equal(got, want)
    tap.ok(same, "coalesce: the child still reads the same", why)
    tap.eq(subprocess.run([TOOL, "check", base], capture_output=True).returncode,
           0, "coalesce: parent checks clean")

    # Interrupted and resumed.
    base, child = make_chain(d, "b", GiB, 50, rng, big=True)
    read_all(d, child, want)
    child_sum = sha(child)
    start = os.path.getsize(base)
    p = subprocess.Popen([TOOL, "coalesce", child], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    # Kill once the parent has grown by 32 MiB (of ~200 MiB to come).
    while p.poll() is None and os.path.getsize(base) < start + 32 * MiB:
        time.sleep(0.001)
    p.send_signal(signal.SIGKILL)
    p.wait()
    tap.ok(p.returncode == -9, "coalesce killed half-way",
           f"exit {p.returncode} (finished too early?)")
    tap.eq(sha(child), child_sum, "interrupted: the child is unchanged")
    rc = subprocess.run([TOOL, "check", base], capture_output=True, text=True)
    tap.ok(rc.returncode in (0, 4), "interrupted: the parent opens and checks "
           "clean or repairable", rc.stdout + rc.stderr)
    read_all(d, child, got)
    same, why = files_equal(got, want)
    tap.ok(same, "interrupted: the chain still reads as before", why)
    r = subprocess.run([TOOL, "coalesce", child], capture_output=True, text=True)
    tap.eq(r.returncode, 0, "resumed coalesce: exit 0")
    read_all(d, base, got)
    same, why = files_equal(got, want)
    tap.ok(same, "resumed coalesce: the parent reads as the child did", why)

    # A parent with two children.
    base, child = make_chain(d, "c", 64 * MiB, 20, rng)
    sib = os.path.join(d, "c-sibling.vhd")
    sh(TOOL, "snapshot", base, sib)
    before = sha(base)
    r = subprocess.run([TOOL, "coalesce", child], capture_output=True, text=True)
    tap.ok(r.returncode == 2 and "has another child" in r.stderr and
           sib in r.stderr and sha(base) == before,
           "a parent with another child: refused, parent untouched", r.stderr)
    r = subprocess.run([TOOL, "coalesce", "--force", child], capture_output=True,
                       text=True)
    tap.eq(r.returncode, 0, "--force coalesces anyway")
    r = subprocess.run([TOOL, "coalesce", base], capture_output=True, text=True)
    tap.ok(r.returncode == 2 and "not a differencing image" in r.stderr,
           "coalescing a dynamic image is refused", r.stderr)
    for f in (want, got):
        os.unlink(f)


run_test(main)
