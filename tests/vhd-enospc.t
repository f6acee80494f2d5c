#!/usr/bin/python3
# A full file system under a writable VHD: writes fail with ENOSPC (or EIO)
# to the client, earlier flushed writes survive, and the image still opens
# and reads consistently after a restart; on a read-only file system the
# export is read-only.  Needs root to mount a 24 MiB tmpfs; skipped
# otherwise.

import os
import subprocess

import nbd

from sxmtest import tap, run_test, nbdkit, nbd_connect, sh, tmpfs, ROOT, MiB

TOOL = os.path.join(ROOT, "client", "sxm-vhd")


def main(d):
    mnt = os.path.join(d, "small")
    with tmpfs(mnt, "24m") as mounted:
        if not mounted:
            tap.skip_all("cannot mount a tmpfs (needs root)")
        for kind in ("dynamic", "differencing"):
            img = os.path.join(mnt, f"{kind}.vhd")
            if kind == "dynamic":
                sh(TOOL, "create", "--block-size=512K", img, "1G")
            else:
                base = os.path.join(mnt, "base.vhd")
                sh(TOOL, "create", "--block-size=512K", base, "1G")
                sh(TOOL, "snapshot", base, img)
            good = []
            err = None
            with nbdkit(d, img) as uri:
                h = nbd_connect(uri)
                for i in range(200):           # 200 x 256 KiB >> 24 MiB
                    data = bytes([i % 251 + 1]) * (256 * 1024)
                    off = i * MiB
                    try:
                        h.pwrite(data, off)
                        h.flush()
                        good.append((off, data))
                    except nbd.Error as e:
                        err = e.errno
                        break
                tap.ok(err in ("ENOSPC", "EIO"),
                       f"{kind}: a full file system fails the write with "
                       f"{err}", f"after {len(good)} writes")
                # The server still answers, and what was flushed is there.
                tap.ok(all(h.pread(len(dd), o) == dd for o, dd in good),
                       f"{kind}: {len(good)} flushed writes still read back "
                       "on the live server")
                h.shutdown()
            with nbdkit(d, img, "-r") as uri:
                h = nbd_connect(uri)
                tap.ok(all(h.pread(len(dd), o) == dd for o, dd in good),
                       f"{kind}: after restart the image opens and every "
                       "flushed write is there")
                h.shutdown()
            os.unlink(img)

        # A read-only file system: the export is read-only, reads work.
        img = os.path.join(mnt, "ro.vhd")
        sh(TOOL, "create", img, "64M")
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        with nbdkit(d, img) as uri:
            h = nbd_connect(uri)
            tap.ok(h.is_read_only(), "read-only file system: read-only export")
            tap.eq(h.pread(4096, 0), bytes(4096), "read-only file system: reads work")
            try:
                h.pwrite(b"x" * 512, 0)
                tap.ok(False, "read-only file system: writes refused")
            except nbd.Error as e:
                tap.ok(True, f"read-only file system: writes refused ({e.errno})")
            h.shutdown()


run_test(main)
