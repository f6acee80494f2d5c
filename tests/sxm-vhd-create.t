#!/usr/bin/python3
# sxm-vhd create / snapshot: images we write are read identically by qemu,
# libvhdi and our plugin; qemu can write into them; snapshots chain through
# relative locators; existing files are never overwritten and failures leave
# nothing behind.

import json
import os
import shutil
import subprocess

import pyvhdi

import vhdgen
from sxmtest import (qemu_vhd, tap, run_test, nbdkit, nbd_connect, nbd_map, sh,
                     files_equal, ROOT, MiB, GiB)

TOOL = os.path.join(ROOT, "client", "sxm-vhd")


def tool(*args):
    return subprocess.run([TOOL, *args], capture_output=True, text=True,
                          timeout=120)


def qemu_size(p, plain=False):
    """qemu's virtual size: told to use the current size (qemu_vhd), or
    PLAIN, by its own rule for our creator code (the CHS geometry)."""
    args = ["-f", "vpc", p] if plain else [qemu_vhd(p)]
    return json.loads(sh("qemu-img", "info", "--output=json",
                         *args))["virtual-size"]


def main(d):
    cases = [("dynamic", "1M", MiB, []), ("dynamic", "7340544", 7340544, []),
             ("dynamic", "5G", 5 * GiB, ["--block-size=512K"]),
             ("fixed", "100M", 100 * MiB, []), ("fixed", "3000K", 3000 * 1024, [])]
    for kind, arg, size, extra in cases:
        p = os.path.join(d, f"new-{kind}-{arg}.vhd")
        r = tool("create", f"--type={kind}", *extra, p, arg)
        label = f"create {kind} {arg} {' '.join(extra)}".strip()
        if not tap.ok(r.returncode == 0, f"{label}: exit 0", r.stderr):
            continue
        tap.eq(qemu_size(p), size, f"{label}: qemu-img (force_size_calc="
               f"current_size) sees {size} bytes")
        c, h, s = vhdgen.chs_geometry(size)
        info = json.loads(tool("info", "--json", p).stdout)["chain"][0]
        tap.ok((info["cylinders"], info["heads"],
                info["sectors_per_track"]) == (c, h, s) and
               qemu_size(p, plain=True) == c * h * s * 512,
               f"{label}: the specification's geometry {c}/{h}/{s}, which "
               "plain qemu-img takes as the size", info)
        f = pyvhdi.file()
        f.open(p)
        tap.eq(f.get_media_size(), size, f"{label}: libvhdi media size")
        tap.eq(str(f.get_identifier()), r.stdout.strip(),
               f"{label}: printed UUID is the image's")
        zero = os.path.join(d, "zero.raw")
        with open(zero, "wb") as z:
            z.truncate(size)
        sh("qemu-img", "compare", "-q", "-F", "raw", qemu_vhd(p), zero)
        tap.ok(True, f"{label}: qemu-img compare: all zeros")
        with nbdkit(d, p) as uri:
            runs = nbd_map(uri)
            tap.eq(runs, [(0, size, False)] if kind == "dynamic" else runs,
                   f"{label}: plugin maps it as one hole" if kind == "dynamic"
                   else f"{label}: plugin serves it")
        os.unlink(zero)

    # qemu writes into an image we created; we read back what qemu wrote.
    p = os.path.join(d, "qemu-writes.vhd")
    tool("create", p, "6G")
    sh("qemu-io", "-c", "write -P 0x61 0 3M",
       "-c", "write -P 0x62 5G 64K", qemu_vhd(p))
    ref = os.path.join(d, "qw.ref")
    out = os.path.join(d, "qw.out")
    sh("qemu-img", "convert", "-O", "raw", qemu_vhd(p), ref)
    with nbdkit(d, p) as uri:
        sh("nbdcopy", uri, out)
    same, why = files_equal(out, ref)
    tap.ok(same, "qemu writes into our dynamic image; plugin reads them back", why)
    os.unlink(ref)
    os.unlink(out)

    # Snapshot over it, in a directory with a hostile name; the chain reads
    # as the parent; moving the whole tree keeps it working (W2ru).
    tree = os.path.join(d, "sr")
    sub = os.path.join(tree, "we'ird \"dir\" $(x) é")
    os.makedirs(sub)
    base = os.path.join(tree, "base.vhd")
    shutil.move(p, base)
    child = os.path.join(sub, "child.vhd")
    r = tool("snapshot", base, child)
    tap.ok(r.returncode == 0, "snapshot into a hostile directory name", r.stderr)
    info = json.loads(tool("info", "--json", child).stdout)
    tap.eq([c["type"] for c in info["chain"]], ["differencing", "dynamic"],
           "snapshot: chain of two")
    tap.ok(info["chain"][0]["parent_via"].startswith("W2ru ..\\base.vhd"),
           "snapshot: parent found via the relative locator",
           info["chain"][0]["parent_via"])
    moved = os.path.join(d, "moved-sr")
    shutil.move(tree, moved)
    mchild = os.path.join(moved, os.path.basename(sub), "child.vhd")
    with nbdkit(d, mchild) as uri:
        h = nbd_connect(uri)
        got = h.pread(3 * MiB, 0) + h.pread(65536, 5 * GiB)
        h.shutdown()
        tap.eq(got, b"\x61" * 3 * MiB + b"\x62" * 65536,
               "moved tree: the child reads its parent's data")
        tap.eq(nbd_map(uri)[0], (0, 4 * MiB, True),
               "moved tree: map shows the parent's blocks")
    fc, fb = pyvhdi.file(), pyvhdi.file()
    fc.open(mchild)
    fb.open(os.path.join(moved, "base.vhd"))
    fc.set_parent(fb)
    tap.eq(fc.read_buffer_at_offset(4096, 0), b"\x61" * 4096,
           "libvhdi reads the snapshot through its parent")

    # Refusals: nothing overwritten, nothing left behind.
    before = open(mchild, "rb").read()
    r = tool("create", mchild, "1G")
    tap.ok(r.returncode == 1 and "already exists" in r.stderr and
           open(mchild, "rb").read() == before,
           "create over an existing file: refused, file unchanged", r.stderr)
    r = tool("snapshot", os.path.join(moved, "base.vhd"), mchild)
    tap.ok(r.returncode == 1 and open(mchild, "rb").read() == before,
           "snapshot over an existing file: refused", r.stderr)
    bad = os.path.join(d, "bad.vhd")
    with open(bad, "wb") as f:
        f.write(b"\0" * 4096)
    r = tool("snapshot", bad, os.path.join(d, "x.vhd"))
    tap.ok(r.returncode == 1 and "field 'cookie'" in r.stderr and
           not os.path.exists(os.path.join(d, "x.vhd")),
           "snapshot of a bad parent: refused, no child created", r.stderr)
    for args, code, label in [(("create", "y.vhd", "10X"), 2, "bad size suffix"),
                              (("create", "y.vhd", "0"), 1, "size 0"),
                              (("create", "y.vhd", "1000"), 1, "size not a multiple of 512"),
                              (("create", "y.vhd", "3T"), 1, "size over 2040 GiB"),
                              (("create", "--block-size=3M", "y.vhd", "1G"), 1,
                               "block size not a power of two"),
                              (("create", "--type=sparse", "y.vhd", "1G"), 2, "bad type"),
                              (("create", "--uuid=nope", "y.vhd", "1G"), 2, "bad uuid")]:
        r = subprocess.run([TOOL, *args], capture_output=True, text=True, cwd=d)
        tap.ok(r.returncode == code and not os.path.exists(os.path.join(d, "y.vhd")),
               f"create refuses {label} (exit {code}), nothing created", r.stderr)
    leftovers = [f for root, _, fs in os.walk(d) for f in fs if ".tmp." in f]
    tap.eq(leftovers, [], "no temporary files left behind")
    r = tool("create", "--uuid=12345678-1234-1234-1234-123456789abc",
             os.path.join(d, "u.vhd"), "1M")
    tap.eq(r.stdout.strip(), "12345678-1234-1234-1234-123456789abc",
           "--uuid sets the image's UUID")

    # --sr DIR: the image is DIR/<uuid>.vhd, named by a fresh UUID that
    # its footer carries; the line printed is "UUID PATH".
    srd = os.path.join(d, "an sr $(x)")
    os.mkdir(srd)
    r = tool("create", "--sr", srd, "64M")
    u, _, path = r.stdout.rstrip("\n").partition(" ")
    tap.ok(r.returncode == 0 and path == os.path.join(srd, u + ".vhd") and
           os.listdir(srd) == [u + ".vhd"],
           "create --sr DIR SIZE: makes DIR/UUID.vhd, prints 'UUID PATH'",
           r.stdout + r.stderr)
    if os.path.exists(path):
        info = json.loads(tool("info", "--json", path).stdout)
        tap.ok(info["chain"][0]["uuid"] == u and info["virtual_size"] == 64 * MiB
               and info["chain"][0]["type"] == "dynamic",
               "create --sr: the footer carries the file's UUID, the size", info)
        f = pyvhdi.file()
        f.open(path)
        tap.eq(str(f.get_identifier()), u, "create --sr: libvhdi reads that UUID")
    else:
        tap.ok(False, "create --sr: the footer carries the file's UUID, the size")
        tap.ok(False, "create --sr: libvhdi reads that UUID")
    r2 = tool("create", "--sr", srd + "/", "1M")
    u2, _, path2 = r2.stdout.rstrip("\n").partition(" ")
    tap.ok(r2.returncode == 0 and u2 != u and
           path2 == os.path.join(srd, u2 + ".vhd") and os.path.exists(path2),
           "create --sr DIR/: another fresh UUID, no double slash", r2.stdout)
    want = "0f9ad8a2-5d0c-4b8e-9b57-1d1f3c2a6e40"
    r = tool("create", "--uuid=" + want, "--sr", srd, "--type=fixed", "1M")
    tap.eq(r.stdout, f"{want} {os.path.join(srd, want + '.vhd')}\n",
           "create --sr with --uuid (and --type=fixed): DIR/<that UUID>.vhd")
    before = open(os.path.join(srd, want + ".vhd"), "rb").read()
    r = tool("create", "--uuid=" + want, "--sr", srd, "2M")
    tap.ok(r.returncode == 1 and "already exists" in r.stderr and
           open(os.path.join(srd, want + ".vhd"), "rb").read() == before,
           "create --sr over an existing UUID: refused, file unchanged", r.stderr)
    n = len(os.listdir(srd))
    for args, code, label in [(("create", "--sr", os.path.join(d, "no-sr"), "1M"),
                               1, "a missing SR directory"),
                              (("create", "--sr", path, "1M"), 1,
                               "an SR that is a file"),
                              (("create", "--sr", srd, "x.vhd", "1M"), 2,
                               "a file name besides --sr"),
                              (("create", "--sr", srd, "10X"), 2, "a bad size"),
                              (("create", "--sr=", "1M"), 2, "an empty --sr"),
                              (("snapshot", "--sr", srd, path, "c.vhd"), 2,
                               "--sr on snapshot")]:
        r = tool(*args)
        tap.ok(r.returncode == code and len(os.listdir(srd)) == n and
               r.stderr and not r.stdout,
               f"create --sr refuses {label} (exit {code}), nothing created",
               r.stdout + r.stderr)
    r = tool("--help")
    tap.ok("--sr DIR SIZE" in r.stdout, "--help shows create --sr DIR SIZE")


run_test(main)
