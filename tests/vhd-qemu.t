#!/usr/bin/python3
# Fixed and dynamic VHDs made by qemu-img: the plugin must serve the same
# bytes as `qemu-img convert -O raw`, the same virtual size as `qemu-img info`
# and the same allocation as `qemu-img map`, for several sizes (tiny, odd,
# > 4 GiB) and for every creator application's size rule.

import json
import os
import struct
import subprocess

from sxmtest import tap, run_test, nbdkit, sh, nbd_map, files_equal, MiB, GiB
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

    # Creator applications and their size rule, against qemu-img info.
    # force_size=on gives current_size 10 MiB + 512 * 3 exactly (and the
    # maximum geometry, which we replace by the spec's CHS for that size);
    # CHS cannot express that size, so the two rules give different answers.
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
        with nbdkit(d, p) as uri:
            sizes[c] = nbd_size(uri)
            tap.eq(sizes[c], qemu_size(p), f"creator '{label}': size as qemu-img")
    tap.ok(sizes[b"vpc "] != sizes[b"win "],
           "CHS and current_size rules really differ on this image",
           sizes)

    # Maximum CHS geometry means "too big for CHS": current_size wins.
    p = os.path.join(d, "maxchs.vhd")
    sh("cp", base, p)
    set_creator(p, b"vpc ", (65535, 16, 255))
    with nbdkit(d, p) as uri:
        tap.eq(nbd_size(uri), qemu_size(p), "max CHS geometry: size as qemu-img")

    # size_from= overrides the rule.
    p = os.path.join(d, "override.vhd")
    sh("cp", base, p)
    set_creator(p, b"vpc ")
    with nbdkit(d, p, "size_from=current") as uri:
        tap.eq(nbd_size(uri), 10 * MiB + 3 * 512, "size_from=current")
    with nbdkit(d, p, "size_from=chs") as uri:
        tap.eq(nbd_size(uri), sizes[b"vpc "], "size_from=chs")


run_test(main)
