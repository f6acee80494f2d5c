#!/usr/bin/python3
# Bad input: every crafted corruption makes nbdkit refuse to start with a
# message naming the file, the field and its offset; corruption that only
# shows later (the file shrinks under a running server) fails the read with
# EIO and a log line; random metadata mutations never crash or hang.

import os
import random
import re
import signal
import struct
import subprocess

import nbd

from sxmtest import (tap, run_test, nbdkit, nbdkit_start_fails, nbdkit_run,
                     nbd_connect, sh, MiB, GiB)
import vhdgen

SECTOR = 512
HDR = 512            # dynamic header offset in vhdgen images
BAT = 512 + 1024     # BAT offset in vhdgen images


def good_dynamic(path, size=8 * MiB, **kw):
    return vhdgen.write_dynamic(path, size, [(0, b"\x41" * 4096),
                                             (4 * MiB, b"\x42" * 4096)], **kw)


def refuses(desc, path, *patterns, args=()):
    """nbdkit must refuse PATH; stderr must match every regex in PATTERNS
    and, unless the fault is in the parameters ARGS, name the file."""
    rc, err = nbdkit_start_fails(path, *args)
    missing = [p for p in patterns if not re.search(p, err)]
    names_file = args or path in err or os.path.realpath(path) in err
    ok = rc != 0 and names_file and not missing
    tap.ok(ok, f"refused: {desc}",
           f"rc={rc}\nstderr: {err}\nmissing: {missing}")
    if ok:
        tap.diag("  " + err.strip().splitlines()[0])


def field(name, offset):
    return rf"field '{re.escape(name)}' at offset {offset}\b"


def main(d):
    p = os.path.join(d, "bad.vhd")

    # Not VHDs at all.
    with open(p, "wb") as f:
        f.write(b"x" * 100)
    refuses("file smaller than a footer", p, r"100 bytes, too small")
    with open(p, "wb") as f:
        f.write(os.urandom(MiB))
    refuses("random data, no cookie", p, r"expected \"conectix\"",
            field("cookie", MiB - 512))
    os.mkdir(os.path.join(d, "dir.vhd"))
    refuses("a directory", os.path.join(d, "dir.vhd"),
            r"not a regular file")
    refuses("a missing file", os.path.join(d, "missing.vhd"),
            r"No such file")

    # Truncated dynamic image: the end footer is gone, the copy at 0 is
    # used, and the blocks that the truncation cut are caught.
    good_dynamic(p)
    size = os.path.getsize(p)
    os.truncate(p, size - 3 * 1024 * 1024)
    refuses("truncated dynamic image", p, field("BAT entry", BAT),
            r"extends past the data area ending at %d" % (size - 3 * MiB))

    # Only the end footer lost (a writer stopped after growing the file):
    # the copy at offset 0 serves, and the data is intact.
    good_dynamic(p)
    os.truncate(p, os.path.getsize(p) - 512)
    with nbdkit(d, p) as uri:
        h = nbd_connect(uri)
        tap.eq(h.pread(4096, 0) + h.pread(4096, 4 * MiB),
               b"\x41" * 4096 + b"\x42" * 4096,
               "end footer missing: served from the footer copy at 0")
        h.shutdown()

    # Footer fields.
    good_dynamic(p)
    end = os.path.getsize(p) - 512
    vhdgen.patch(p, end + 48, b"\x00\x00\x00\x01")   # current_size, no fixup
    refuses("footer checksum mismatch", p, field("checksum", end + 64),
            r"stored 0x[0-9a-f]{8}, computed 0x[0-9a-f]{8}")

    for label, ftype in (("disk type 5", 5), ("disk type 0", 0)):
        good_dynamic(p)
        vhdgen.patch(p, end + 60, struct.pack(">I", ftype))
        vhdgen.fix_checksum(p, end, 512, 64)
        refuses(label, p, field("disk_type", end + 60))

    good_dynamic(p)
    vhdgen.patch(p, end + 12, struct.pack(">I", 0x00020000))
    vhdgen.fix_checksum(p, end, 512, 64)
    refuses("footer version 2.0", p, field("file_format_version", end + 12))

    for label, sz in (("size 3 TiB (> 2040 GiB)", 3 << 40),
                      ("size 2^64-1 (overflow)", (1 << 64) - 1)):
        good_dynamic(p)
        vhdgen.patch(p, end + 48, struct.pack(">Q", sz))
        vhdgen.fix_checksum(p, end, 512, 64)
        refuses(label, p, field("current_size", end + 48), r"2040 GiB")

    # Fixed image whose footer claims more data than the file holds.
    vhdgen.write_fixed(p, 4 * MiB)
    fend = 4 * MiB
    vhdgen.patch(p, fend + 48, struct.pack(">Q", 8 * MiB))
    vhdgen.fix_checksum(p, fend, 512, 64)
    refuses("fixed image smaller than its size", p,
            field("current_size", fend + 48), r"larger than")

    # Dynamic header fields.
    def header_case(label, off, value, *patterns, size=8 * MiB):
        good_dynamic(p, size=size)
        vhdgen.patch(p, HDR + off, value)
        vhdgen.fix_checksum(p, HDR, 1024, 36)
        refuses(label, p, *patterns)

    good_dynamic(p)
    vhdgen.patch(p, HDR + 28, b"\x00\x00\x00\x09")
    refuses("header checksum mismatch", p, field("checksum", HDR + 36))
    header_case("header cookie", 0, b"cxsparsX", field("cookie", HDR))
    header_case("header data_offset not all ones", 8, struct.pack(">Q", 0),
                field("data_offset", HDR + 8))
    header_case("block size not a power of two", 32,
                struct.pack(">I", 3 * MiB), field("block_size", HDR + 32))
    header_case("block size 0", 32, struct.pack(">I", 0),
                field("block_size", HDR + 32))
    header_case("block size 1 GiB", 32, struct.pack(">I", 1 << 30),
                field("block_size", HDR + 32))
    header_case("BAT too small for the size", 28, struct.pack(">I", 2),
                field("max_table_entries", HDR + 28))
    header_case("BAT beyond EOF", 16, struct.pack(">Q", 1 << 40),
                field("table_offset", HDR + 16))
    header_case("BAT overlapping the header", 16, struct.pack(">Q", 1024),
                field("table_offset", HDR + 16))
    header_case("BAT at offset 0", 16, struct.pack(">Q", 0),
                field("table_offset", HDR + 16))
    header_case("header version 2", 24, struct.pack(">I", 0x00020000),
                field("header_version", HDR + 24))

    good_dynamic(p)
    vhdgen.patch(p, end + 16, struct.pack(">Q", end + 100))
    vhdgen.fix_checksum(p, end, 512, 64)
    refuses("header offset beyond EOF", p, field("data_offset", end + 16))

    # BAT entries.
    def bat_case(label, entry, sector, *patterns):
        good_dynamic(p)
        vhdgen.patch(p, BAT + 4 * entry, struct.pack(">I", sector))
        refuses(label, p, *patterns)

    bat_case("BAT entry into the header", 1, 1,
             field("BAT entry", BAT + 4), r"overlaps the dynamic header")
    bat_case("BAT entry into the BAT", 1, 3,
             field("BAT entry", BAT + 4), r"overlaps the BAT")
    bat_case("BAT entry into the footer copy", 1, 0,
             field("BAT entry", BAT + 4), r"overlaps the footer copy")
    bat_case("BAT entry past EOF", 1, 0x7fffffff,
             field("BAT entry", BAT + 4), r"past the data area")
    good_dynamic(p)
    with open(p, "rb") as f:
        f.seek(BAT)
        first = f.read(4)
    bat_case("two BAT entries at the same block", 1,
             struct.unpack(">I", first)[0] + 1, field("BAT entry", BAT + 4),
             r"overlaps block")

    # Differencing: parent problems.
    parent = os.path.join(d, "parent.vhd")
    pu = good_dynamic(parent)
    child = os.path.join(d, "child.vhd")
    vhdgen.write_dynamic(child, 8 * MiB, [(0, b"c" * 512)],
                         parent=(parent, pu))
    os.rename(parent, parent + ".gone")
    refuses("missing parent", child, r"parent \"parent.vhd\".*not found",
            r"W2ru", r"W2ku", r"MacX")
    good_dynamic(parent)   # same name, new UUID
    refuses("parent with the wrong UUID", child,
            r"has UUID [0-9a-f-]{36}, but the child expects parent UUID",
            field("parent_unique_id", HDR + 40))

    # A loop: a's parent is b, b's parent is a.
    a, b = os.path.join(d, "a.vhd"), os.path.join(d, "b.vhd")
    ua, ub = os.urandom(16), os.urandom(16)
    vhdgen.write_dynamic(a, MiB, [], parent=(b, ub), uid=ua)
    vhdgen.write_dynamic(b, MiB, [], parent=(a, ua), uid=ub)
    refuses("chain loop", a, r"chain loop")

    # Deeper than 256.
    prev = None
    for i in range(258):
        q = os.path.join(d, f"deep{i}.vhd")
        prev = (q, vhdgen.write_dynamic(q, 64 * 1024, [], block_size=65536,
                                        parent=prev))
    refuses("chain deeper than 256", prev[0], r"deeper than 256")

    # Locator data outside the file / absurd length.
    def locator_case(label, off, value, *patterns):
        vhdgen.write_dynamic(child, 8 * MiB, [], parent=(parent, pu),
                             locators=[(b"W2ru", vhdgen.utf16(".\\parent.vhd"))])
        vhdgen.patch(child, HDR + 576 + off, value)
        vhdgen.fix_checksum(child, HDR, 1024, 36)
        refuses(label, child, *patterns)

    locator_case("locator data beyond EOF", 16, struct.pack(">Q", 1 << 40),
                 field("parent_locator.data_offset", HDR + 576 + 16))
    locator_case("locator length 16 MiB", 8, struct.pack(">I", 16 << 20),
                 field("parent_locator.data_length", HDR + 576 + 8))

    # Bad parameters.
    good_dynamic(p)
    refuses("size_from=bogus", p, r"size_from=bogus", args=("size_from=bogus",))
    refuses("unknown parameter", p, r"unknown parameter 'frob'",
            args=("frob=1",))
    rc, err = nbdkit_start_fails()
    tap.ok(rc != 0 and "nbdkit vhd FILE.vhd" in err,
           "no file given: error says how to give one", err)

    # Corruption found lazily: the file shrinks under a running server.
    good_dynamic(p)
    with nbdkit(d, p) as uri:
        h = nbd_connect(uri)
        tap.eq(h.pread(512, 0), b"\x41" * 512, "read before truncation")
        os.truncate(p, 2 * MiB)
        try:
            h.pread(512, 4 * MiB)
            tap.ok(False, "read past the new EOF fails")
        except nbd.Error as e:
            tap.eq(e.errno, "EIO", "read past the new EOF fails with EIO")
        h.shutdown()
    log = open(uri.split("socket=")[1] + ".log").read()
    tap.ok(re.search(r"bad\.vhd: read of \d+ bytes at offset \d+ failed", log)
           is not None, "the failed read is logged naming the file", log)

    # Random mutations of metadata (checksums fixed up so parsing goes
    # deep): nbdkit either refuses cleanly or serves; it never crashes.
    rng = random.Random(42)
    crashes = []
    refused = served = 0
    for i in range(60):
        q = os.path.join(d, "mut.vhd")
        if i % 2:
            vhdgen.write_dynamic(q, 8 * MiB, [(0, b"m" * 4096)], parent=(parent + ".gone", pu))
            os.rename(parent + ".gone", parent) if not os.path.exists(parent) else None
        else:
            good_dynamic(q)
        qend = os.path.getsize(q) - 512
        region = rng.choice(["footer", "header", "bat", "locator"])
        base_off, span, csum = {"footer": (qend, 512, 64),
                                "header": (HDR, 1024, 36),
                                "bat": (BAT, 512, None),
                                "locator": (HDR + 576, 48, None)}[region]
        with open(q, "r+b") as f:
            for _ in range(rng.randrange(1, 4)):
                f.seek(base_off + rng.randrange(span))
                f.write(bytes([rng.randrange(256)]))
        if csum is not None:
            vhdgen.fix_checksum(q, base_off, span, csum)
        elif region == "locator":
            vhdgen.fix_checksum(q, HDR, 1024, 36)
        try:
            r = nbdkit_run(q, run="nbdcopy $uri null:", timeout=60)
        except subprocess.TimeoutExpired:
            crashes.append((i, region, "hang"))
            continue
        if r.returncode == 0:
            served += 1
        elif r.returncode == 1 and "error" in r.stderr:
            refused += 1
        else:
            crashes.append((i, region, r.returncode, r.stderr[-300:]))
    tap.ok(not crashes, f"60 random metadata mutations: no crash or hang "
           f"({refused} refused, {served} served)", crashes)


run_test(main)
