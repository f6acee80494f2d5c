#!/usr/bin/python3
# A differencing VHD over a raw parent, as XenServer's `vhd-util snapshot
# -m` makes one (parent UUID all zeros, locators naming base.img): reads
# resolve through it, writes land in the leaf only (the raw file is never
# written), block status shows the raw file's holes, sxm-vhd info/map/check
# see the chain, coalesce refuses to write the raw parent, and an all-zero
# parent UUID is refused when the parent is a VHD after all.

import hashlib
import os
import subprocess

from sxmtest import (ROOT, tap, run_test, nbdkit, nbdkit_start_fails, sh,
                     nbd_map, nbd_connect, MiB)
import vhdgen

SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")
ZERO_UUID = bytes(16)


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main(d):
    size = 16 * MiB
    base = os.path.join(d, "base.img")
    # The raw parent: data at 0 and at 9 MiB, a hole between (sparse file).
    with open(base, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"\x11" * MiB)
        f.seek(9 * MiB)
        f.write(b"\x22" * MiB)
    base_sum = sha(base)
    leaf = os.path.join(d, "leaf.vhd")
    # The leaf overrides 4 KiB at 9 MiB + 4 KiB; locators as vhd-util
    # writes them for a raw parent: a relative file:// URL (MacX) first.
    vhdgen.write_dynamic(leaf, size, [(9 * MiB + 4096, b"\x33" * 4096)],
                         parent=(base, ZERO_UUID),
                         locators=[(b"MacX", b"file://./base.img")])

    want = bytearray(size)
    want[0:MiB] = b"\x11" * MiB
    want[9 * MiB:10 * MiB] = b"\x22" * MiB
    want[9 * MiB + 4096:9 * MiB + 8192] = b"\x33" * 4096

    with nbdkit(d, leaf) as uri:
        h = nbd_connect(uri)
        tap.eq(h.get_size(), size, "export size is the leaf's")
        got = bytearray(h.pread(size, 0))
        tap.ok(got == want, "reads resolve leaf -> raw parent, sector by sector")
        runs = nbd_map(uri)
        tap.ok(any(not a and o <= 2 * MiB and o + l >= 8 * MiB
                   for o, l, a in runs) and
               any(a and o <= 9 * MiB and o + l >= 10 * MiB
                   for o, l, a in runs),
               "block status: the raw file's hole is a hole, its data data",
               runs)
        # A write into the leaf, over a part the raw parent holds.
        h.pwrite(b"\x44" * 8192, 4096)
        h.flush()
        want[4096:4096 + 8192] = b"\x44" * 8192
        tap.ok(bytearray(h.pread(size, 0)) == want,
               "a write lands in the leaf and reads back")
        h.shutdown()
    tap.eq(sha(base), base_sum, "the raw parent was not written")

    info = sh(SXM_VHD, "info", leaf)
    tap.ok("raw file" in info and base in info and "MacX" in info,
           "sxm-vhd info shows the raw parent and how it was found", info)
    js = sh(SXM_VHD, "info", "--json", leaf)
    tap.ok('"type": "raw"' in js, "sxm-vhd info --json: the parent's type is raw",
           js)
    m = [ln.split() for ln in sh(SXM_VHD, "map", leaf).splitlines()]
    tap.eq(m, [["0", str(MiB), "data"], [str(MiB), str(8 * MiB), "hole,zero"],
               [str(9 * MiB), str(MiB), "data"],
               [str(10 * MiB), str(6 * MiB), "hole,zero"]],
           "sxm-vhd map walks the chain, the raw file's hole included")
    c = sh(SXM_VHD, "check", leaf)
    tap.ok(c.splitlines()[0].endswith("clean") and "would accept it" in c,
           "sxm-vhd check: clean, and XenServer's rules accept it", c)
    p = subprocess.run([SXM_VHD, "coalesce", leaf], capture_output=True,
                       text=True)
    tap.ok(p.returncode != 0 and "is a raw file, which sxm never writes"
           in p.stderr, "coalesce into the raw parent is refused", p.stderr)
    tap.eq(sha(base), base_sum, "the raw parent is still unwritten")

    # All-zero parent UUID but the parent is a VHD: refused (its UUID can
    # be checked, and zeros are not it).
    vparent = os.path.join(d, "vbase.vhd")
    vhdgen.write_dynamic(vparent, size, [(0, b"\x55" * 4096)])
    bad = os.path.join(d, "bad.vhd")
    vhdgen.write_dynamic(bad, size, [], parent=(vparent, ZERO_UUID),
                         locators=[(b"MacX", b"file://./vbase.vhd")])
    rc, err = nbdkit_start_fails(bad)
    tap.ok(rc != 0 and "expects parent UUID 00000000-0000-0000-0000-"
           "000000000000" in err,
           "an all-zero parent UUID over a VHD parent is refused", err)
    # A raw file where a VHD parent (real UUID) is expected: refused.
    bad2 = os.path.join(d, "bad2.vhd")
    vhdgen.write_dynamic(bad2, size, [], parent=(base, os.urandom(16)),
                         locators=[(b"MacX", b"file://./base.img")])
    rc, err = nbdkit_start_fails(bad2)
    tap.ok(rc != 0 and "base.img" in err,
           "a raw file where a VHD parent is expected is refused", err)


run_test(main)
