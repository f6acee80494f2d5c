#!/usr/bin/python3
# SR mode: nbdkit vhd sr=DIR serves every <uuid>.vhd in DIR as export <uuid>.
# Listing shows exactly those; names that are not such a UUID (path
# traversal, absolute paths, junk) are refused; no export name gets an error
# saying how to choose; several connections to one export share one writer.

import os
import uuid as uuidlib

import nbd

from sxmtest import tap, run_test, run_threads, nbdkit, nbd_connect, sh, ROOT, MiB, nbdkit_start_fails

TOOL = os.path.join(ROOT, "client", "sxm-vhd")


def connect(sock, name):
    h = nbd.NBD()
    h.set_export_name(name)
    h.connect_unix(sock)
    return h


def main(d):
    sr = os.path.join(d, "sr")
    os.mkdir(sr)
    uuids = []
    for size in ("64M", "128M"):
        u = str(uuidlib.uuid4())
        sh(TOOL, "create", f"--uuid={u}", os.path.join(sr, u + ".vhd"), size)
        uuids.append(u)
    # Things that must not be listed or served.
    open(os.path.join(sr, "junk.vhd"), "w").close()
    open(os.path.join(sr, uuids[0] + ".txt"), "w").close()
    outside = os.path.join(d, "outside.vhd")
    sh(TOOL, "create", outside, "1M")

    with nbdkit(d, f"sr={sr}") as uri:
        sock = uri.split("socket=")[1]
        out = sh("nbdinfo", "--list", "--json", uri)
        import json
        names = sorted(e["export-name"] for e in json.loads(out)["exports"])
        tap.eq(names, sorted(uuids), "nbdinfo --list shows exactly the UUID images")

        h = connect(sock, uuids[1])
        tap.eq(h.get_size(), 128 * MiB, "open by UUID: the right image")
        h.shutdown()

        for bad in ["../outside", "/etc/passwd", uuids[0] + "/../x",
                    "junk", uuids[0].upper() + "x", "", uuids[0][:-1] + "/"]:
            try:
                h = connect(sock, bad)
                h.shutdown()
                tap.ok(False, f"export name {bad!r} refused")
            except nbd.Error as e:
                tap.ok(True, f"export name {bad!r} refused ({e.errno})")
        log = open(sock + ".log").read()
        tap.ok("choose an export by its VHD UUID" in log and "nbdinfo --list" in log,
               "no export name: the error says how to choose", log[-500:])

        # Two connections to one export share the writer: racing writers of
        # the same blocks from different connections lose nothing.
        def writer(wid):
            c = connect(sock, uuids[0])
            for blk in range(16):
                c.pwrite(bytes([wid + 1]) * 4096, blk * 2 * MiB + wid * 4096)
            c.flush()
            c.shutdown()

        errs = run_threads(writer, 4)
        tap.ok(not errs, "4 connections writing one export", errs)

    with nbdkit(d, f"sr={sr}", "-r") as uri:
        c = connect(uri.split("socket=")[1], uuids[0])
        ok = all(c.pread(4096, blk * 2 * MiB + w * 4096) == bytes([w + 1]) * 4096
                 for blk in range(16) for w in range(4))
        c.shutdown()
        tap.ok(ok, "after restart every connection's writes are there")

    rc, err = nbdkit_start_fails(f"sr={outside}")
    tap.ok(rc != 0 and "not a directory" in err,
           "sr= naming a file is refused", err)


run_test(main)
