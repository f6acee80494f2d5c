#!/usr/bin/python3
# VHDs sxm writes are valid for XenServer's tools (blktap's libvhd and
# `vhd-util check`), and `sxm-vhd check --xen` says which rule an image
# would fail.
#
# Every kind of image we write -- dynamic, fixed, differencing, after
# random writes, after resize (the block table grown in place) and
# coalesce, made by sxm-copy --create and create --sr; sizes CHS-exact and
# not, and past 127 GiB where CHS saturates -- passes the Xen rules, has the
# specification's geometry, and reads at its current size through our
# plugin, libvhdi and qemu told force_size_calc=current_size.  The checker
# is tested against crafted images that break one rule each (and their
# good twins).  Where blktap's own vhd-util is on PATH (or VHD_UTIL names
# it; not packaged by Debian), every image is also checked by it and must
# get the same verdict.

import os
import shutil
import struct
import subprocess
import time

import pyvhdi

from sxmtest import (qemu_vhd, tap, run_test, nbdkit, nbd_connect, sh, ROOT,
                     MiB, GiB)
import vhdgen

SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")
SXM_COPY = os.path.join(ROOT, "client", "sxm-copy")
VHD_UTIL = os.environ.get("VHD_UTIL") or shutil.which("vhd-util")
NO_VHD_UTIL = "blktap's vhd-util not installed"
EPOCH = 946684800


def check_xen(path):
    p = subprocess.run([SXM_VHD, "check", "--xen", path], capture_output=True,
                       text=True)
    return p.returncode, p.stdout + p.stderr


def vhd_util(path):
    """blktap's verdict: (valid, output); only where it is installed
    (tap.requires(VHD_UTIL, ...))."""
    p = subprocess.run([VHD_UTIL, "check", "-n", path], capture_output=True,
                       text=True)
    return p.returncode == 0, p.stdout + p.stderr


def verdicts(path, label, want_rc, msg):
    """Our checker's exit status and message for PATH, then blktap's own
    verdict where vhd-util is installed (valid exactly when WANT_RC is
    0)."""
    rc, out = check_xen(path)
    tap.ok(rc == want_rc and msg in out,
           f"{label}: check --xen exit {want_rc}, '{msg}'", out)
    if tap.requires(VHD_UTIL, f"{label}: {NO_VHD_UTIL}"):
        v = vhd_util(path)
        tap.ok(v[0] == (want_rc == 0), f"{label}: vhd-util agrees", v[1])


def footer_of(path):
    with open(path, "rb") as f:
        f.seek(-512, 2)
        return f.read(512)


def readers_size(path):
    """The size our plugin, libvhdi and qemu (current_size) report."""
    with nbdkit(os.path.dirname(path), path, "-r") as uri:
        h = nbd_connect(uri)
        ours = h.get_size()
        h.shutdown()
    f = pyvhdi.file()
    f.open(path)
    libvhdi = f.get_media_size()
    f.close()
    import json
    qemu = json.loads(sh("qemu-img", "info", "--output=json",
                         qemu_vhd(path)))["virtual-size"]
    return ours, libvhdi, qemu


def main(d):
    def p(name):
        return os.path.join(d, name)

    # --- every kind of image we write ---------------------------------------
    exact = 1
    for x in vhdgen.chs_geometry(100 * MiB):
        exact *= x
    exact *= 512                       # 104761344: CHS-exact
    assert vhdgen.chs_geometry(exact)[0] * vhdgen.chs_geometry(exact)[1] * vhdgen.chs_geometry(exact)[2] \
        * 512 == exact
    raw = p("data.raw")
    with open(raw, "wb") as f:
        f.truncate(100 * MiB)
        for i in range(60):
            f.seek((i * 1664251) % (100 * MiB - 70000))
            f.write(os.urandom(1 + (i * 7919) % 65536))
        f.seek(100 * MiB - 512)
        f.write(b"last sector" * 46)

    images = []                        # (label, path, size)
    for size, what in ((100 * MiB, "100 MiB (not CHS-exact)"),
                       (128 * MiB, "128 MiB (not CHS-exact)"),
                       (exact, f"{exact} (CHS-exact)"),
                       (200 * GiB, "200 GiB (CHS saturates)")):
        sh(SXM_VHD, "create", p(f"dyn-{size}.vhd"), str(size))
        images.append((f"create dynamic {what}", p(f"dyn-{size}.vhd"), size))
    sh(SXM_VHD, "create", "--type=fixed", p("fixed.vhd"), str(100 * MiB))
    images.append(("create fixed 100 MiB", p("fixed.vhd"), 100 * MiB))
    sh(SXM_VHD, "create", "--block-size=512K", p("small-blocks.vhd"), "1G")
    images.append(("create dynamic, 512 KiB blocks", p("small-blocks.vhd"),
                   GiB))
    sr = p("sr")
    os.mkdir(sr)
    out = sh(SXM_VHD, "create", "--sr", sr, "64M").split()
    images.append(("create --sr", out[1], 64 * MiB))
    # Written through the crash-safe writer (sxm-copy --create).
    sh(SXM_COPY, "-q", raw, p("copied.vhd"))
    images.append(("sxm-copy into a new .vhd (random data)", p("copied.vhd"),
                   100 * MiB))
    sh(SXM_COPY, "-q", "--create=fixed", raw, p("copied-fixed.vhd"))
    images.append(("sxm-copy --create=fixed", p("copied-fixed.vhd"),
                   100 * MiB))
    # A differencing child, written into, in another directory.
    os.mkdir(p("kids"))
    sh(SXM_VHD, "snapshot", p("copied.vhd"), p("kids/child.vhd"))
    with nbdkit(d, p("kids/child.vhd")) as uri:
        h = nbd_connect(uri)
        for i in range(40):
            h.pwrite(os.urandom(4096), (i * 2500097) % (100 * MiB - 4096))
        h.flush()
        h.shutdown()
    images.append(("snapshot, then random writes through the plugin",
                   p("kids/child.vhd"), 100 * MiB))
    # Resized past the block table's capacity: the table grows in place,
    # blocks and locators move out of its way.
    shutil.copy(p("copied.vhd"), p("grown.vhd"))
    sh(SXM_VHD, "resize", p("grown.vhd"), "3G")
    images.append(("dynamic with data, resized 100 MiB -> 3 GiB",
                   p("grown.vhd"), 3 * GiB))
    sh(SXM_VHD, "snapshot", p("grown.vhd"), p("grown-kid.vhd"))
    sh(SXM_COPY, "-q", raw, p("grown-kid.vhd"))
    sh(SXM_VHD, "resize", p("grown-kid.vhd"), "5G")
    images.append(("differencing with data, resized 3 GiB -> 5 GiB",
                   p("grown-kid.vhd"), 5 * GiB))
    # Coalesced.
    os.mkdir(p("co"))
    shutil.copy(p("copied.vhd"), p("co/base.vhd"))
    sh(SXM_VHD, "snapshot", p("co/base.vhd"), p("co/top.vhd"))
    with nbdkit(d, p("co/top.vhd")) as uri:
        h = nbd_connect(uri)
        h.pwrite(b"\x5c" * 65536, 50 * MiB)
        h.flush()
        h.shutdown()
    sh(SXM_VHD, "coalesce", p("co/top.vhd"))
    images.append(("coalesced parent", p("co/base.vhd"), 100 * MiB))

    for label, path, size in images:
        rc, out = check_xen(path)
        tap.ok(rc == 0 and "would accept it" in out,
               f"{label}: check --xen accepts it", out)
        c, h, s = vhdgen.chs_geometry(size)
        f = footer_of(path)
        geo = struct.unpack(">HBB", f[56:60])
        tap.eq(geo, (c, h, s), f"{label}: the specification's geometry")
        tap.eq(readers_size(path), (size, size, size),
               f"{label}: plugin, libvhdi and qemu (force_size_calc="
               "current_size) read the current size")
        if tap.requires(VHD_UTIL, f"{label}: {NO_VHD_UTIL}"):
            v = vhd_util(path)
            tap.ok(v[0], f"{label}: blktap's vhd-util check: valid", v[1])

    # --- crafted images, one broken rule each ------------------------------
    def crafted(name, fn, both_footers=True):
        """A fresh 100 MiB dynamic image with FN(path) applied, footer
        checksums fixed (both copies if BOTH_FOOTERS)."""
        path = p(name)
        sh(SXM_VHD, "create", path, "100M")
        fn(path)
        size = os.path.getsize(path)
        for off in ((0, size - 512) if both_footers else (size - 512,)):
            vhdgen.fix_checksum(path, off, 512, 64)
        return path

    def put(off_from_end=None, off=None, data=b"", both=True):
        def fn(path):
            size = os.path.getsize(path)
            if off_from_end is not None:
                vhdgen.patch(path, size - 512 + off_from_end, data)
                if both:
                    vhdgen.patch(path, off_from_end, data)
            else:
                vhdgen.patch(path, off, data)
        return fn

    hdr = 512                          # our header's offset
    def fix_header(path):
        vhdgen.fix_checksum(path, hdr, 1024, 36)

    future = struct.pack(">I", int(time.time()) - EPOCH + 7200)
    cases = [
        ("geometry 65535/16/255 (what sxm wrote before)", 4,
         "geometry too large", put(56, data=struct.pack(">HBB", 65535, 16,
                                                         255))),
        ("time stamp 2 h in the future", 7, "creation time in future",
         put(24, data=future)),
        ("a reserved byte set", 7, "invalid 'reserved' bits",
         put(300, data=b"\x01")),
        ("'hidden' byte 2", 7, "invalid 'hidden' state", put(85, data=b"\x02")),
        ("an extra feature bit", 7, "invalid extra features",
         put(8, data=struct.pack(">I", 0x12))),
        ("a NULL UUID", 7, "invalid (NULL) uuid", put(68, data=bytes(16))),
        ("footer copies differ", 4, "primary and backup footers do not match",
         put(24, data=struct.pack(">I", 12345), both=False)),
    ]
    for n, (label, want_rc, msg, fn) in enumerate(cases):
        verdicts(crafted(f"crafted-{n}.vhd", fn), f"crafted, {label}",
                 want_rc, msg)

    # Header rules.
    path = crafted("hdr-reserved.vhd", lambda q: None)
    vhdgen.patch(path, hdr + 60, b"\x00\x00\x00\x07")
    fix_header(path)
    rc, out = check_xen(path)
    tap.ok(rc == 7 and "header is invalid: invalid reserved bits" in out,
           "crafted, header reserved bits: exit 7", out)
    sh(SXM_VHD, "create", "--block-size=4M", p("big-blocks.vhd"), "1G")
    rc, out = check_xen(p("big-blocks.vhd"))
    tap.ok(rc == 7 and "at most 2 MiB" in out,
           "4 MiB blocks: sound for us, refused by blktap's libvhd (exit 7)",
           out)

    # repair: the geometry of the old images; then blktap accepts them.
    old = crafted("old-geometry.vhd",
                  put(56, data=struct.pack(">HBB", 65535, 16, 255)))
    sh(SXM_COPY, "-q", raw, old)
    before = open(raw, "rb").read()
    r = subprocess.run([SXM_VHD, "repair", old], capture_output=True,
                       text=True)
    rc, out = check_xen(old)
    rc2, _ = subprocess.run([SXM_VHD, "check", old],
                            capture_output=True).returncode, None
    sh(SXM_COPY, "-q", old, p("old-out.raw"))
    tap.ok(r.returncode == 0 and "geometry 65535/16/255 -> 1003/12/17" in
           r.stdout and rc == 0 and rc2 == 0 and
           open(p("old-out.raw"), "rb").read() == before and
           readers_size(old) == (100 * MiB,) * 3,
           "repair rewrites the geometry (both footers): accepted, clean, "
           "the same data at the same size", r.stdout + r.stderr + out)
    if tap.requires(VHD_UTIL, f"repaired image: {NO_VHD_UTIL}"):
        v = vhd_util(old)
        tap.ok(v[0], "repaired image: blktap's vhd-util check: valid", v[1])

    # Differencing: the parent name must be each locator's file name, and
    # blktap decodes names to ASCII only.
    kid = p("kids/child.vhd")
    shutil.copy(kid, p("kids/renamed.vhd"))
    with open(p("kids/renamed.vhd"), "r+b") as f:
        f.seek(-512, 2)
        foot = f.read(512)
    hoff = struct.unpack(">Q", foot[16:24])[0]
    vhdgen.patch(p("kids/renamed.vhd"), hoff + 64,
                 vhdgen.utf16("other.vhd", big_endian=True).ljust(512, b"\0"))
    vhdgen.fix_checksum(p("kids/renamed.vhd"), hoff, 1024, 36)
    rc, out = check_xen(p("kids/renamed.vhd"))
    tap.ok(rc == 7 and "does not match header name (other.vhd)" in out,
           "crafted, parent name unlike the locators' file name: exit 7", out)
    uni = p("d\u00e9j\u00e0")
    os.mkdir(uni)
    shutil.copy(p("copied.vhd"), os.path.join(uni, "base.vhd"))
    sh(SXM_VHD, "snapshot", os.path.join(uni, "base.vhd"), p("uni-kid.vhd"))
    rc, out = check_xen(p("uni-kid.vhd"))
    tap.ok(rc == 7 and "ASCII" in out,
           "a parent path that is not ASCII: sound for us, refused by "
           "blktap (exit 7, says why)", out)
    if tap.requires(VHD_UTIL, f"non-ASCII parent: {NO_VHD_UTIL}"):
        v = vhd_util(p("uni-kid.vhd"))
        tap.ok(not v[0], "non-ASCII parent: vhd-util refuses it too", v[1])

    # A blktap-style batmap (creator "tap", version 1.3): good, bad
    # checksum, a block marked full that is not allocated.
    def with_batmap(name, bit=False, bad_sum=False):
        path = p(name)
        sh(SXM_VHD, "create", path, "100M")
        data = bytearray(open(path, "rb").read())
        foot = bytearray(data[-512:])
        foot[28:32] = b"tap\0"
        foot[32:36] = struct.pack(">I", 0x00010003)
        body = data[:-512]             # copy, header, BAT (2048 bytes)
        bmap = bytearray(512)
        if bit:
            bmap[0] = 0x80             # block 0 full: it is unallocated
        s = sum(bmap[:512]) & 0xffffffff
        bmh = bytearray(512)
        bmh[0:8] = b"tdbatmap"
        bmh[8:16] = struct.pack(">Q", len(body) + 512)
        bmh[16:20] = struct.pack(">I", 1)
        bmh[20:24] = struct.pack(">I", 0x00010002)
        bmh[24:28] = struct.pack(">I", (~s - (1 if bad_sum else 0))
                                 & 0xffffffff)
        with open(path, "wb") as f:
            f.write(body + bmh + bmap + foot)
        for off in (0, len(body) + 1024):
            vhdgen.patch(path, off, bytes(foot))
            vhdgen.fix_checksum(path, off, 512, 64)
        return path

    for name, kw, want, msg in (
            ("batmap-good.vhd", {}, 0, "would accept it"),
            ("batmap-sum.vhd", {"bad_sum": True}, 7,
             "batmap is invalid: invalid checksum"),
            ("batmap-bit.vhd", {"bit": True}, 7,
             "batmap shows unallocated block 0 full")):
        verdicts(with_batmap(name, **kw), f"batmap, {name}", want, msg)

    # Made by others: qemu-img's plain VHD passes; with force_size=on qemu
    # stores the maximum geometry, as sxm used to: refused, repairable.
    sh("qemu-img", "create", "-q", "-f", "vpc", "-o", "subformat=dynamic",
       p("qemu.vhd"), "100M")
    rc, out = check_xen(p("qemu.vhd"))
    tap.ok(rc == 0, "qemu-img's dynamic VHD: accepted", out)
    sh("qemu-img", "create", "-q", "-f", "vpc", "-o",
       "subformat=dynamic,force_size=on", p("qemu-fs.vhd"), "100M")
    rc, out = check_xen(p("qemu-fs.vhd"))
    rr = subprocess.run([SXM_VHD, "repair", p("qemu-fs.vhd")],
                        capture_output=True, text=True)
    rc2, out2 = check_xen(p("qemu-fs.vhd"))
    tap.ok(rc == 4 and "geometry too large" in out and rr.returncode == 0
           and rc2 == 0, "qemu-img's force_size VHD: refused (geometry too "
           "large, exit 4); after repair, accepted", out + rr.stdout + out2)

run_test(main)
