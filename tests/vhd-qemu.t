#!/usr/bin/python3
# Fixed and dynamic VHDs made by qemu-img: the plugin must serve the same
# bytes as `qemu-img convert -O raw`, the same virtual size as `qemu-img info`
# and the same allocation as `qemu-img map`, for several sizes (tiny, odd,
# > 4 GiB) and for every creator application's size rule.

import json
import os
import struct
import subprocess

from sxmtest import (tap, run_test, nbdkit, nbdkit_start_fails, sh, nbd_map,
                     files_equal, MiB, GiB)
import vhdgen


def qemu_size(path):
    return json.loads(sh("qemu-img", "info", "--output=json", "-f", "vpc",
                         path))["virtual-size"]


def qemu_map(path):
    """Allocated (data) runs as qemu sees them, adjacent runs merged."""
    runs = []
    for e in json.loads(sh("qemu-img", "map", "--output=json", "-f", "vpc",
                           path)):
        alloc = bool(e["data"])
        if runs and runs[-1][2] == alloc and runs[-1][0] + runs[-1][1] == e["start"]:
            runs[-1] = (runs[-1][0], runs[-1][1] + e["length"], alloc)
        else:
            runs.append((e["start"], e["length"], alloc))
    return runs


def nbd_size(uri):
    return int(sh("nbdinfo", "--size", uri))


def check_image(d, name, path, with_map=True):
    ref = os.path.join(d, name + ".ref")
    out = os.path.join(d, name + ".out")
    sh("qemu-img", "convert", "-f", "vpc", "-O", "raw", path, ref)
    with nbdkit(d, path) as uri:
        tap.eq(nbd_size(uri), qemu_size(path), f"{name}: size as qemu-img info")
        sh("nbdcopy", uri, out)
        same, why = files_equal(out, ref)
        tap.ok(same, f"{name}: nbdcopy bytes equal qemu-img convert", why)
        if with_map:
            tap.eq(nbd_map(uri), qemu_map(path),
                   f"{name}: block status equals qemu-img map")
    os.unlink(ref)
    os.unlink(out)


def qemu_io(path, *cmds):
    args = ["qemu-io", "-f", "vpc"]
    for c in cmds:
        args += ["-c", c]
    sh(*args, path)


def set_creator(path, creator, geometry=None):
    """Rewrite both footers' creator (and maybe geometry), fixing checksums."""
    size = os.path.getsize(path)
    offsets = [size - 512]
    with open(path, "rb") as f:
        if f.read(8) == b"conectix":
            offsets.append(0)
    for off in offsets:
        vhdgen.patch(path, off + 28, creator)
        if geometry:
            vhdgen.patch(path, off + 56, struct.pack(">HBB", *geometry))
        vhdgen.fix_checksum(path, off, 512, 64)


def main(d):
    # Sizes: tiny, odd (not a CHS multiple), ordinary, > 4 GiB.
    cases = [
        ("tiny", 64 * 1024, []),
        ("odd", 7 * MiB + 3 * 512, ["write -P 0x11 0 512", "write -P 0x22 7M 1536"]),
        ("mid", 100 * MiB, ["write -P 0xab 1M 3M", "write -P 0xcd 50M 512",
                            "write -P 0xef 99M 4096"]),
        ("big", 5 * GiB, ["write -P 0x5a 4095M 2M", "write -P 0xa5 4G 4096",
                          "write -P 0x77 5119M 1M"]),
    ]
    for sub in ("dynamic", "fixed"):
        for force in ("off", "on"):
            for name, size, writes in cases:
                if sub == "fixed" and name == "big" and force == "off":
                    continue   # same layout as force=on; keep runtime down
                p = os.path.join(d, f"{name}-{sub}-{force}.vhd")
                sh("qemu-img", "create", "-q", "-f", "vpc", "-o",
                   f"subformat={sub},force_size={force}", p, str(size))
                if writes:
                    qemu_io(p, *writes)
                check_image(d, f"{name} {sub} force_size={force}", p,
                            with_map=(sub == "dynamic"))
                os.unlink(p)

    # Fixed images are raw + footer: holes of the (sparse) file are reported
    # as holes, data as data, and every hole reads as zeros.
    p = os.path.join(d, "fixed-sparse.vhd")
    sh("qemu-img", "create", "-q", "-f", "vpc", "-o",
       "subformat=fixed,force_size=on", p, str(64 * MiB))
    qemu_io(p, "write -P 0x42 8M 1M")
    with nbdkit(d, p) as uri:
        runs = nbd_map(uri)
        tap.ok(any(a and o <= 8 * MiB and o + l >= 9 * MiB for o, l, a in runs),
               "fixed sparse: written MiB reported as data", runs)
        tap.ok(any(not a for o, l, a in runs),
               "fixed sparse: file holes reported as holes", runs)

    # Creator applications and the size rules.  force_size=on gives
    # current_size 10 MiB + 512 * 3 exactly (and the maximum geometry, which
    # we replace by the spec's CHS for that size); CHS cannot express that
    # size, so the rules give different answers.  size_from=qemu must agree
    # with qemu-img info on every creator; the default (current) is the
    # footer's current size on every creator.
    base = os.path.join(d, "creator-base.vhd")
    sz = 10 * MiB + 3 * 512
    sh("qemu-img", "create", "-q", "-f", "vpc", "-o", "force_size=on", base,
       str(sz))
    qemu_io(base, "write -P 0x31 0 1M")
    set_creator(base, b"qem2", vhdgen.chs_geometry(sz))
    creators = [b"vpc ", b"vs  ", b"qemu", b"qem2", b"win ", b"d2v ",
                b"tap\0", b"CTXS", b"xyz1", b"wa\0\0"]
    sizes = {}
    for c in creators:
        p = os.path.join(d, "creator.vhd")
        sh("cp", base, p)
        set_creator(p, c)
        label = c.decode("latin1").replace("\0", "\\0")
        with nbdkit(d, p, "size_from=qemu") as uri:
            sizes[c] = nbd_size(uri)
            tap.eq(sizes[c], qemu_size(p),
                   f"creator '{label}', size_from=qemu: size as qemu-img")
        with nbdkit(d, p) as uri:
            tap.eq(nbd_size(uri), sz,
                   f"creator '{label}', default: the footer's current size")
    tap.ok(sizes[b"vpc "] != sizes[b"win "],
           "CHS and current_size rules really differ on this image",
           sizes)

    # Maximum CHS geometry means "too big for CHS": current_size wins.
    p = os.path.join(d, "maxchs.vhd")
    sh("cp", base, p)
    set_creator(p, b"vpc ", (65535, 16, 255))
    with nbdkit(d, p, "size_from=qemu") as uri:
        tap.eq(nbd_size(uri), qemu_size(p), "max CHS geometry: size as qemu-img")

    # size_from= overrides the rule; auto is the old name of qemu.
    p = os.path.join(d, "override.vhd")
    sh("cp", base, p)
    set_creator(p, b"vpc ")
    with nbdkit(d, p, "size_from=current") as uri:
        tap.eq(nbd_size(uri), 10 * MiB + 3 * 512, "size_from=current")
    with nbdkit(d, p, "size_from=chs") as uri:
        tap.eq(nbd_size(uri), sizes[b"vpc "], "size_from=chs")
    with nbdkit(d, p, "size_from=auto") as uri:
        tap.eq(nbd_size(uri), sizes[b"vpc "], "size_from=auto is qemu's rule")

    # An unknown creator whose CHS size stops short of the current size,
    # with data in the last sectors (as FreeBSD mkimg's backup GPT header):
    # the default exports and reads them; a rule that would hide them
    # refuses to start, naming the rule, both sizes and the first offset.
    tail = os.urandom(3 * 512)
    chs = vhdgen.chs_geometry(sz)
    chs_bytes = chs[0] * chs[1] * chs[2] * 512
    for kind in ("dynamic", "fixed"):
        p = os.path.join(d, f"tail-{kind}.vhd")
        if kind == "dynamic":
            vhdgen.write_dynamic(p, sz, [(0, b"\x55" * 4096),
                                         (sz - len(tail), tail)],
                                 creator=b"xyz1", geometry=chs)
        else:
            vhdgen.write_fixed(p, sz, [(0, b"\x55" * 4096),
                                       (sz - len(tail), tail)],
                               creator=b"xyz1", geometry=chs, sparse=False)
        with nbdkit(d, p) as uri:
            out = os.path.join(d, "tail.out")
            sh("nbdcopy", uri, out)
            with open(out, "rb") as f:
                data = f.read()
            tap.ok(len(data) == sz and data[-len(tail):] == tail
                   and data[:4096] == b"\x55" * 4096,
                   f"{kind}, unknown creator, CHS < current: exported whole,"
                   " the last sectors read back", len(data))
            os.unlink(out)
        first = (sz - len(tail)) // 512 * 512
        for rule in ("chs", "qemu"):
            rc, err = nbdkit_start_fails(p, f"size_from={rule}")
            want = (f"size_from={rule} exports {chs_bytes} bytes",
                    f"current size is {sz}", f"offset {first}")
            tap.ok(rc != 0 and all(w in err for w in want),
                   f"{kind}: size_from={rule} would hide the last sectors:"
                   " nbdkit refuses, naming rule, sizes and offset", err)
        # Zeros past the CHS size are not data: a fixed image (every sector
        # allocated) or a dynamic one with nothing there is served by CHS.
        q = os.path.join(d, f"notail-{kind}.vhd")
        if kind == "dynamic":
            vhdgen.write_dynamic(q, sz, [(0, b"\x55" * 4096)],
                                 creator=b"xyz1", geometry=chs)
        else:
            vhdgen.write_fixed(q, sz, [(0, b"\x55" * 4096)],
                               creator=b"xyz1", geometry=chs, sparse=False)
        with nbdkit(d, q, "size_from=chs") as uri:
            tap.eq(nbd_size(uri), chs_bytes,
                   f"{kind}: nothing past the CHS size: size_from=chs serves it")


run_test(main)
