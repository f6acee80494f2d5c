#!/usr/bin/python3
# A full file system under a writable VHD: writes fail with ENOSPC (or EIO)
# to the client, earlier flushed writes survive, and the image still opens
# and reads consistently after a restart.  Needs root to mount a 24 MiB
# tmpfs; skipped otherwise.

import os
import subprocess

import nbd

from sxmtest import tap, run_test, nbdkit, nbd_connect, sh, ROOT, MiB

TOOL = os.path.join(ROOT, "client", "sxm-vhd")


def main(d):
    mnt = os.path.join(d, "small")
    os.mkdir(mnt)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt],
                       capture_output=True, text=True)
    if r.returncode != 0:
        print(f"1..0 # SKIP cannot mount a tmpfs: {r.stderr.strip()}")
        os._exit(0)
    try:
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
    finally:
        subprocess.run(["umount", "-l", mnt])


run_test(main)
