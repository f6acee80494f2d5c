#!/usr/bin/python3
# sxm-vhd resize: growing keeps every byte, the new space reads as zeros and
# is writable, qemu and the plugin agree on the new size; the BAT is
# relocated when it is too small; shrinking, fixed images and bad sizes are
# refused with nothing changed.

import hashlib
import json
import os
import subprocess

from sxmtest import qemu_vhd, tap, run_test, nbdkit, nbd_connect, sh, ROOT, MiB, GiB
import vhdgen

TOOL = os.path.join(ROOT, "client", "sxm-vhd")


def qsize(p):
    return json.loads(sh("qemu-img", "info", "--output=json",
                         qemu_vhd(p)))["virtual-size"]


def main(d):
    # BAT too small (our images have an exact BAT): relocated.
    p = os.path.join(d, "grow.vhd")
    sh(TOOL, "create", "--block-size=1M", p, "10M")
    with nbdkit(d, p) as uri:
        h = nbd_connect(uri)
        h.pwrite(b"\x44" * 3000, 9 * MiB + 100)
        h.flush()
        h.shutdown()
    r = subprocess.run([TOOL, "resize", p, "5G"], capture_output=True, text=True)
    tap.eq(r.returncode, 0, "grow 10M -> 5G (BAT relocated): exit 0")
    tap.eq(qsize(p), 5 * GiB, "qemu-img sees 5 GiB")
    info = json.loads(sh(TOOL, "info", "--json", p))["chain"][0]
    tap.eq(info["blocks"], 5120, "the BAT now covers 5120 blocks")
    with nbdkit(d, p) as uri:
        h = nbd_connect(uri)
        tap.eq(h.get_size(), 5 * GiB, "plugin serves 5 GiB")
        tap.eq(h.pread(3000, 9 * MiB + 100), b"\x44" * 3000, "old data kept")
        tap.eq(h.pread(65536, 4 * GiB), bytes(65536), "new space reads zeros")
        h.pwrite(b"\x55" * 4096, 5 * GiB - 4096)
        h.flush()
        h.shutdown()
    sh("qemu-io", "-c", f"read -P 0x55 {5 * GiB - 4096} 4096",
       "-c", f"read -P 0x44 {9 * MiB + 100} 3000", qemu_vhd(p))
    tap.ok(True, "qemu reads old data and data written past the old end")
    tap.eq(subprocess.run([TOOL, "check", p], capture_output=True).returncode, 0,
           "grown image checks clean")

    # BAT with room: only the footers change.
    q = os.path.join(d, "room.vhd")
    vhdgen.write_dynamic(q, 4 * MiB, [(0, b"\x66" * 4096)],
                         max_table_entries=16)
    bat_before = open(q, "rb").read()[1536:1536 + 64]
    r = subprocess.run([TOOL, "resize", q, "32M"], capture_output=True, text=True)
    tap.eq(r.returncode, 0, "grow within BAT room: exit 0")
    tap.eq(qsize(q), 32 * MiB, "qemu-img sees 32 MiB")
    tap.eq(open(q, "rb").read()[1536:1536 + 64], bat_before,
           "BAT left in place")

    # Differencing child grown past its parent: the tail reads zeros.
    base = os.path.join(d, "base.vhd")
    sh(TOOL, "create", base, "8M")
    with nbdkit(d, base) as uri:
        h = nbd_connect(uri)
        h.pwrite(b"\x77" * MiB, 7 * MiB)
        h.flush()
        h.shutdown()
    child = os.path.join(d, "child.vhd")
    sh(TOOL, "snapshot", base, child)
    tap.eq(subprocess.run([TOOL, "resize", child, "64M"]).returncode, 0,
           "grow a differencing child")
    with nbdkit(d, child) as uri:
        h = nbd_connect(uri)
        tap.eq(h.pread(2 * MiB, 7 * MiB), b"\x77" * MiB + bytes(MiB),
               "child: parent data, then zeros past the parent's end")
        h.shutdown()

    # Refusals, nothing changed.
    f = os.path.join(d, "fixed.vhd")
    sh(TOOL, "create", "--type=fixed", f, "1M")
    for path, size, label in [(p, "1G", "shrinking"), (f, "2M", "a fixed image"),
                              (p, "3T", "more than 2040 GiB"),
                              (p, "6442451000", "not a multiple of 512")]:
        before = hashlib.sha256(open(path, "rb").read()).hexdigest()
        r = subprocess.run([TOOL, "resize", path, size], capture_output=True,
                           text=True)
        after = hashlib.sha256(open(path, "rb").read()).hexdigest()
        tap.ok(r.returncode != 0 and r.stderr and before == after,
               f"resize refuses {label}, file unchanged", r.stderr)


run_test(main)
