#!/usr/bin/python3
# nbdkit vhd control=SOCKET (doc/nbdkit-vhd-plugin.pod): the served file's
# chain changed under a running writer, one property at a time.
#
#  * Snapshots in place and relinks (after coalescing the frozen layer into
#    the base) while fio writes random 4 KiB blocks over 5 GiB with crc32c
#    verification through the same server (nbd engine, 4 in flight), past
#    4 GiB too: fio's verify pass reads every block back through the
#    changed chains; and a second client reading a fixed pattern sees it
#    all along.  The file keeps its name, checks clean, two deep at the end.
#  * Each change holds requests: the pause the client saw (printed).
#  * Refused, with the disk served as before: relink to the file's own
#    parent, to an image not in its chain; a snapshot whose base exists or
#    is on another file system.  control= with sr= or layer=: refused.
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (tap, run_test, nbd_connect, nbdkit_start_fails,  # noqa: E402
                     start_nbdkit, stop_nbdkit, tmpfs, ROOT, MiB, GiB)

SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")
SIZE = 5 * GiB
PATTERN_AT = 4 * GiB + 640 * MiB         # the reader's; fio's ends at 4.5 GiB


def live(ctl, *args):
    p = subprocess.run([SXM_VHD, "live", ctl, *args], capture_output=True,
                       text=True)
    try:
        return p.returncode, json.loads(p.stdout.strip() or "{}"), p.stderr
    except ValueError:
        return p.returncode, {}, p.stdout + p.stderr


def chain(path):
    j = json.loads(subprocess.run([SXM_VHD, "info", "--json", path],
                                  capture_output=True, text=True,
                                  check=True).stdout)
    return [(c["uuid"], c["file"]) for c in j["chain"]]


def main(S):
    disk = os.path.join(S, "disk.vhd")
    ctl = os.path.join(S, "disk.ctl")
    sock = os.path.join(S, "disk.sock")
    subprocess.run([SXM_VHD, "create", disk, str(SIZE)], check=True,
                   capture_output=True)
    srv = start_nbdkit(sock, disk, f"control={ctl}")
    uri = f"nbd+unix:///?socket={sock}"
    try:
        h = nbd_connect(uri)
        pattern = bytes(range(256)) * 4096           # 1 MiB
        h.pwrite(pattern, PATTERN_AT)
        h.flush()

        fio = subprocess.Popen(
            ["fio", "--name=w", "--ioengine=nbd", f"--uri={uri}",
             "--rw=randwrite", "--bs=4k", "--iodepth=4", "--size=4G",
             "--offset=512M", "--number_ios=50000", "--verify=crc32c",
             "--verify_fatal=1", "--do_verify=1", "--randseed=7",
             "--verify_state_save=0", "--output-format=terse"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        bad_reads = []
        stop = threading.Event()

        def reader():
            r = nbd_connect(uri)
            while not stop.is_set():
                if r.pread(len(pattern), PATTERN_AT) != pattern:
                    bad_reads.append(time.time())
            r.shutdown()
        t = threading.Thread(target=reader)
        t.start()

        pauses, rounds, problems = [], 0, []
        while fio.poll() is None and rounds < 8:
            time.sleep(0.1)
            t0 = time.time()
            rc, snap, err = live(ctl, "snapshot")
            pauses.append(time.time() - t0)
            if rc != 0:
                problems.append(f"snapshot: {err}")
                break
            frozen, base = snap["base"], None
            c = chain(disk)
            if len(c) >= 3:
                base = c[2][1]
            if base:
                # The frozen layer into the base under the running writer,
                # then the file relinked past it (sxm backup's merge).
                co = subprocess.run([SXM_VHD, "coalesce", frozen],
                                    capture_output=True, text=True)
                t0 = time.time()
                rc, rl, err = live(ctl, "relink", os.path.join(S, base)
                                   if not base.startswith("/") else base)
                pauses.append(time.time() - t0)
                if co.returncode != 0 or rc != 0:
                    problems.append(f"coalesce/relink: {co.stderr} {err}")
                    break
                os.unlink(frozen)
            rounds += 1
        out, err = fio.communicate(timeout=600)
        stop.set()
        t.join()
        tap.ok(rounds >= 3 and not problems,
               f"{rounds} snapshots (and {rounds - 1} coalesce + relink) "
               "under fio's writes", "\n".join(problems))
        tap.ok(fio.returncode == 0 and "verify" not in err.lower(),
               "fio's crc32c verify of every block it wrote reads back "
               "through the changed chains", err[-2000:])
        tap.ok(not bad_reads, "a second client read the same 1 MiB pattern "
               f"all along ({len(bad_reads)} bad reads)")
        tap.diag("pause per change (the control command's round trip): "
                 + " ".join(f"{p * 1000:.0f}" for p in pauses) + " ms")
        c = chain(disk)
        chk = subprocess.run([SXM_VHD, "check", disk], capture_output=True,
                             text=True)
        tap.ok(len(c) == 2 and os.path.basename(c[0][1]) == "disk.vhd" and
               chk.returncode == 0,
               "the file keeps its name, two deep, checks clean",
               f"{c}\n{chk.stdout}{chk.stderr}")

        # ---- refusals: the disk served as it was -----------------------
        rc0, st0, _ = live(ctl, "status")
        parent = c[1][1] if c[1][1].startswith("/") else os.path.join(S, c[1][1])
        rc, r, err = live(ctl, "relink", parent)
        tap.ok(rc == 1 and "not an ancestor below the parent" in err,
               "relink to the file's own parent: refused, said", err)
        stranger = os.path.join(S, "stranger.vhd")
        subprocess.run([SXM_VHD, "create", stranger, str(SIZE)], check=True,
                       capture_output=True)
        rc, r, err = live(ctl, "relink", stranger)
        tap.ok(rc == 1 and "not part" in err,
               "relink to an image not in the chain: refused, said", err)
        rc, r, err = live(ctl, "snapshot", stranger)
        tap.ok(rc == 1 and "File exists" in err,
               "snapshot onto an existing base: refused, said", err)
        other_fs = os.path.join(S, "otherfs")
        with tmpfs(other_fs, "16m") as mounted:
            if tap.requires(mounted, "no tmpfs for another file system"):
                rc, r, err = live(ctl, "snapshot",
                                  os.path.join(other_fs, "b.vhd"))
                tap.ok(rc == 1 and "same file system" in err,
                       "snapshot with the base on another file system: "
                       "refused, said", err)
        rc1, st1, _ = live(ctl, "status")
        same = {k: st0.get(k) for k in ("uuid", "parent", "changes", "usable")}
        tap.ok(rc0 == 0 and rc1 == 0 and
               same == {k: st1.get(k) for k in same} and st1["usable"],
               "after the refusals the same chain is served, usable",
               f"{st0}\n{st1}")
        tap.ok(h.pread(len(pattern), PATTERN_AT) == pattern,
               "and the disk still reads as written")
        h.shutdown()
    finally:
        stop_nbdkit(srv)

    rc, err = nbdkit_start_fails(f"sr={S}", f"control={ctl}")
    tap.ok(rc != 0 and "not with sr=DIR" in err, "control= with sr=: "
           "refused", err)
    rc, err = nbdkit_start_fails(disk, "layer=top", f"control={ctl}")
    tap.ok(rc != 0 and "not with layer=" in err, "control= with layer=: "
           "refused", err)
    os.makedirs(os.path.join(S, "adir"))
    rc, err = nbdkit_start_fails(disk, f"control={os.path.join(S, 'adir')}")
    tap.ok(rc != 0 and "not a socket" in err, "control= on a directory: "
           "refused", err)


if __name__ == "__main__":
    run_test(main)
