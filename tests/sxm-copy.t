#!/usr/bin/python3
# sxm-copy against real servers: VHD sources (fixed, dynamic, differencing)
# through our plugin and raw through nbdkit's file plugin, into a raw file,
# nbdkit file / memory, qemu-nbd and our plugin in write mode; every result
# checked by qemu-img compare (libvhdi-free: qemu reads the chain's raw
# expectation).  Also: the source serves no more than the allocated bytes,
# zero detection, holes zeroed on a dirty destination, verify, progress
# JSON, rate limit, TLS, refusals and their exit codes.  Kill -9 / resume,
# retries and disconnects are in sxm-copy-faults.t.

import json
import os
import random
import re
import subprocess
import time

from sxmtest import (make_raw, qemu_vhd, tap, run_test, nbdkit, start_nbdkit, stop_nbdkit,
                     sh, files_equal, ROOT, MiB, GiB)
import vhdgen

SXM_COPY = os.path.join(ROOT, "client", "sxm-copy")
SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")


def copy(*args, timeout=120, env=None):
    p = subprocess.run([SXM_COPY, *args], capture_output=True, text=True,
                       timeout=timeout, env=env)
    return p.returncode, p.stdout, p.stderr


def copy_json(*args):
    rc, out, err = copy("--json", *args)
    try:
        return rc, json.loads(out.strip().splitlines()[-1]), err
    except (ValueError, IndexError):
        return rc, None, err


def qemu_compare(a, b, fa="raw", fb="raw"):
    # (qemu_vhd: a VHD at its current size, whoever created it)
    a, fa = (qemu_vhd(a), None) if fa == "vpc" else (a, fa)
    b, fb = (qemu_vhd(b), None) if fb == "vpc" else (b, fb)
    p = subprocess.run(["qemu-img", "compare",
                        *(["-f", fa] if fa else []),
                        *(["-F", fb] if fb else []), a, b],
                       capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def allocated(path):
    return os.stat(path).st_blocks * 512


def served_read_bytes(logfile):
    """Bytes the source actually sent: the sum of Read counts in nbdkit's
    log filter output."""
    total = 0
    with open(logfile) as f:
        for line in f:
            if " Read " in line and "..." in line:
                m = re.search(r"count=(0x[0-9a-f]+|\d+)", line)
                if m:
                    total += int(m.group(1), 0)
    return total


def main(scratch):
    rng = random.Random(4)
    size = 5 * GiB + 3 * MiB            # odd size, data past 4 GiB
    pieces = [(0, rng.randbytes(3 * MiB)),
              (100 * MiB + 512, rng.randbytes(5 * MiB + 1024)),
              (4 * GiB - 1 * MiB, rng.randbytes(3 * MiB)),     # across 4 GiB
              (5 * GiB, rng.randbytes(3 * MiB))]               # the tail
    raw = os.path.join(scratch, "src.raw")
    make_raw(raw, size, pieces)
    data_bytes = sum(len(d) for _, d in pieces)

    # --- VHD sources through our plugin ---------------------------------
    dyn = os.path.join(scratch, "dyn.vhd")
    fixed = os.path.join(scratch, "fixed.vhd")
    sh("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
       "subformat=dynamic,force_size=on", raw, dyn)
    sh("qemu-img", "convert", "-f", "raw", "-O", "vpc", "-o",
       "subformat=fixed,force_size=on", raw, fixed)

    for name, img in (("dynamic", dyn), ("fixed", fixed)):
        out = os.path.join(scratch, f"out-{name}.raw")
        with nbdkit(scratch, img, "-r") as uri:
            rc, js, err = copy_json(uri, out)
        tap.eq(rc, 0, f"{name} VHD -> new raw file: exit 0")
        same, why = qemu_compare(raw, out)
        tap.ok(same, f"{name} VHD -> raw file: qemu-img compare identical", why)
        tap.ok(js and js["allocated"] <= data_bytes + 4 * MiB and
               js["read"] == js["allocated"],
               f"{name}: read only the allocated extents", js)
        tap.ok(allocated(out) <= data_bytes + 4 * MiB,
               f"{name}: destination file stays sparse "
               f"({allocated(out)} bytes allocated)")

    # Differencing: a child of dyn.vhd with its own writes (unaligned,
    # across blocks, past 4 GiB), built from the spec by vhdgen.
    child = os.path.join(scratch, "child.vhd")
    parent_uuid = bytes.fromhex(json.loads(sh(SXM_VHD, "info", "--json", dyn))
                                ["chain"][0]["uuid"].replace("-", ""))
    cwrites = [(2 * MiB - 4096, rng.randbytes(8192)),
               (4 * GiB + 512 * 3, rng.randbytes(512 * 7)),
               (200 * MiB, rng.randbytes(1 * MiB))]
    vhdgen.write_dynamic(child, size, writes=cwrites,
                         parent=(dyn, parent_uuid))
    expect = os.path.join(scratch, "child-expect.raw")
    make_raw(expect, size, pieces + cwrites)
    out = os.path.join(scratch, "out-child.raw")
    with nbdkit(scratch, child, "-r") as uri:
        rc, js, err = copy_json(uri, out)
    tap.eq(rc, 0, "differencing VHD -> raw file: exit 0")
    same, why = qemu_compare(expect, out)
    tap.ok(same, "differencing chain copied: equals the expected raw", why)

    # --- sparseness proof: what the source really served ----------------
    log = os.path.join(scratch, "src.log")
    out = os.path.join(scratch, "out-log.raw")
    with nbdkit(scratch, dyn, "-r", "logfile=" + log,
                filters=("log",)) as uri:
        rc, js, err = copy_json(uri, out)
    served = served_read_bytes(log)
    tap.ok(rc == 0 and js and served <= js["allocated"] * 1.01,
           f"source served {served} bytes for {js and js['allocated']} "
           "allocated (<= +1%)", err)
    tap.ok(served >= data_bytes, "and at least the data itself")

    # --- raw source through nbdkit's file plugin, into each destination ---
    with nbdkit(scratch, raw, "-r", plugin="file") as src:
        # nbdkit file plugin, destination pre-filled with garbage: the
        # source's holes must be zeroed there.
        dirty = os.path.join(scratch, "dirty.raw")
        make_raw(dirty, size, [(o, b"\xff" * (4 * MiB))
                               for o in (50 * MiB, 3 * GiB, 5 * GiB - 2 * MiB)])
        with nbdkit(scratch, dirty, plugin="file") as dst:
            rc, js, err = copy_json(src, dst)
        tap.eq(rc, 0, "raw -> nbdkit file (dirty): exit 0")
        same, why = qemu_compare(raw, dirty)
        tap.ok(same, "dirty destination: garbage in source holes zeroed", why)
        # 12 MiB of garbage, 2 MiB of it under source data (overwritten)
        tap.ok(js and js["zeroed"] >= 10 * MiB,
               "the garbage ranges were zeroed with write_zeroes", js)

        # nbdkit memory plugin (reports zeros: holes skipped, nothing zeroed)
        with nbdkit(scratch, f"size={size}", plugin="memory") as dst:
            rc, js, err = copy_json(src, dst)
            tap.eq(rc, 0, "raw -> nbdkit memory: exit 0")
            tap.ok(js and js["zeroed"] == 0 and
                   js["written"] <= js["allocated"],
                   "memory destination reads zeros: holes not zeroed", js)
            back = os.path.join(scratch, "mem-back.raw")
            sh("nbdcopy", dst, back)
        same, why = qemu_compare(raw, back)
        tap.ok(same, "raw -> nbdkit memory: identical", why)

        # qemu-nbd serving a raw file
        qraw = os.path.join(scratch, "qemu.raw")
        make_raw(qraw, size, [])
        qsock = os.path.join(scratch, "qemu.sock")
        qp = subprocess.Popen(["qemu-nbd", "-f", "raw", "-t", "-k", qsock,
                               qraw])
        try:
            for _ in range(500):
                if os.path.exists(qsock):
                    break
                time.sleep(0.02)
            rc, js, err = copy_json(src, f"nbd+unix:///?socket={qsock}")
        finally:
            qp.terminate()
            qp.wait()
        tap.eq(rc, 0, "raw -> qemu-nbd: exit 0", )
        same, why = qemu_compare(raw, qraw)
        tap.ok(same, "raw -> qemu-nbd: identical", why)

        # our plugin in write mode: a fresh dynamic VHD of the same size
        vdst = os.path.join(scratch, "dst.vhd")
        sh(SXM_VHD, "create", "--type=dynamic", vdst, str(size))
        with nbdkit(scratch, vdst) as dst:
            rc, js, err = copy_json("--verify", src, dst)
        tap.eq(rc, 0, "raw -> vhd plugin (write mode) with --verify: exit 0")
        same, why = qemu_compare(raw, vdst, "raw", "vpc")
        tap.ok(same, "raw -> VHD: qemu-img compare identical", why)
        tap.eq(subprocess.run([SXM_VHD, "check", vdst]).returncode, 0,
               "destination VHD checks clean")

        # a destination that cannot take the copy
        small = os.path.join(scratch, "small.raw")
        make_raw(small, size - 512, [])
        rc, _, err = copy(src, small)
        tap.ok(rc == 4 and "smaller" in err and small in err,
               "destination smaller than the source: exit 4, says so", err)
        with nbdkit(scratch, dirty, "-r", plugin="file") as ro:
            rc, _, err = copy(src, ro)
        tap.ok(rc == 4 and "read-only" in err,
               "read-only NBD destination: exit 4, says read-only", err)

        # multi-conn refused by the destination: one connection
        with nbdkit(scratch, f"size={size}", "multi-conn-mode=disable",
                    plugin="memory", filters=("multi-conn",)) as dst:
            rc, js, err = copy_json(src, dst)
        tap.ok(rc == 0 and js and js["connections"] == 1,
               "no multi-conn on one end: a single connection", js)

        # progress JSON on a chosen fd; rate limit
        out = os.path.join(scratch, "out-progress.raw")
        r, w = os.pipe()
        p = subprocess.Popen([SXM_COPY, "-q", "--progress=json:%d" % w,
                              "--rate=12M", src, out],
                             pass_fds=(w,), stderr=subprocess.PIPE)
        os.close(w)
        t0 = time.time()
        with os.fdopen(r) as f:
            lines = [json.loads(l) for l in f if l.strip()]
        p.wait()
        took = time.time() - t0
        tap.eq(p.returncode, 0, "--progress=json:FD --rate: exit 0")
        dones = [l["done"] for l in lines]
        tap.ok(len(lines) >= 2 and dones == sorted(dones) and
               lines[-1]["final"] and lines[-1]["done"] == lines[-1]["total"]
               and all(k in lines[0] for k in ("rate", "eta", "total")),
               f"{len(lines)} JSON progress lines, done monotonic, last final",
               lines[-2:])
        tap.ok(took >= data_bytes / (12 * MiB) * 0.85,
               f"--rate 12M: {data_bytes} bytes took {took:.2f} s")

    # --- zero detection ---------------------------------------------------
    zsrc = os.path.join(scratch, "zeros.raw")
    make_raw(zsrc, 64 * MiB, [(0, rng.randbytes(1 * MiB)),
                              (1 * MiB, bytes(8 * MiB)),     # allocated zeros
                              (9 * MiB, rng.randbytes(4096))])
    z1 = os.path.join(scratch, "z1.raw")
    z2 = os.path.join(scratch, "z2.raw")
    rc1, js1, _ = copy_json(zsrc, z1)
    rc2, js2, _ = copy_json("--no-zero-detect", zsrc, z2)
    tap.ok(rc1 == 0 and files_equal(zsrc, z1)[0] and
           allocated(z1) < 2 * MiB,
           f"zero detection: 8 MiB of allocated zeros not written "
           f"({allocated(z1)} bytes allocated)")
    tap.ok(rc2 == 0 and files_equal(zsrc, z2)[0] and
           allocated(z2) >= 9 * MiB,
           f"--no-zero-detect writes them ({allocated(z2)} bytes allocated)")

    # --- verify -----------------------------------------------------------
    out = os.path.join(scratch, "out-child.raw")          # == expect
    rc, _, err = copy("--verify-only", expect, out)
    tap.eq(rc, 0, "--verify-only on an identical copy: exit 0")
    plant = 4 * GiB + 512 * 5 + 17       # inside the child's data
    vhdgen.patch(out, plant, b"\x42")
    rc, _, err = copy("--verify-only", expect, out)
    tap.ok(rc == 3 and f"offset {plant} " in err,
           "planted difference in data: exit 3, exact offset", err)
    vhdgen.patch(out, plant, expect_byte(expect, plant))
    hole = 3 * GiB + 12345
    vhdgen.patch(out, hole, b"\x01")
    rc, _, err = copy("--verify-only", "-q", expect, out)
    tap.ok(rc == 3 and f"offset {hole} " in err and "not zero" in err,
           "planted byte in a source hole: exit 3, exact offset", err)

    # --- TLS --------------------------------------------------------------
    psk = os.path.join(scratch, "keys.psk")
    bad = os.path.join(scratch, "bad.psk")
    sh("psktool", "-u", "alice", "-p", psk)
    sh("psktool", "-u", "alice", "-p", bad)
    with nbdkit(scratch, zsrc, "-r", "--tls=require", "--tls-psk=" + psk,
                plugin="file") as uri:
        sock = uri.split("socket=")[1]
        good = f"nbds+unix://alice@/?socket={sock}&tls-psk-file={psk}"
        wrong = f"nbds+unix://alice@/?socket={sock}&tls-psk-file={bad}"
        out = os.path.join(scratch, "tls.raw")
        rc, _, err = copy(good, out)
        tap.ok(rc == 0 and files_equal(zsrc, out)[0],
               "TLS (PSK) source: copied", err)
        out2 = os.path.join(scratch, "tls2.raw")
        rc, _, err = copy(wrong, out2)
        tap.ok(rc == 4 and "cannot connect" in err and not os.path.exists(out2),
               "wrong TLS key: exit 4, nothing created", err)
        rc, _, err = copy(uri, out2)
        tap.ok(rc == 4 and "TLS" in err,
               "plaintext to a TLS-only server: exit 4, says TLS", err)
        # No user in the URI: the identity is the user running sxm-copy,
        # even with no login session (setsid: no controlling terminal, so
        # libnbd's getlogin_r default would fail).
        import pwd
        me = pwd.getpwuid(os.geteuid()).pw_name
        mine = os.path.join(scratch, "mine.psk")
        sh("psktool", "-u", me, "-p", mine)
        os.chmod(mine, 0o600)
        with nbdkit(scratch, zsrc, "-r", "--tls=require", "--tls-psk=" + mine,
                    plugin="file") as uri2:
            sock2 = uri2.split("socket=")[1]
            out3 = os.path.join(scratch, "tls3.raw")
            p = subprocess.run(["setsid", SXM_COPY, "-q",
                                f"nbds+unix:///?socket={sock2}&tls-psk-file="
                                f"{mine}", out3], capture_output=True,
                               text=True, stdin=subprocess.DEVNULL)
            tap.ok(p.returncode == 0 and files_equal(zsrc, out3)[0],
                   f"TLS URI with no user, no login session: the identity "
                   f"is the running user's ({me}); copied", p.stderr)
        os.chmod(psk, 0o640)
        rc, _, err = copy(good, out2)
        tap.ok(rc == 4 and "PSK file" in err and "0640" in err and
               not os.path.exists(out2),
               "PSK file readable by group: refused before connecting", err)
        os.chmod(psk, 0o600)

    # --- plaintext TCP: loopback only, unless --insecure -------------------
    port = 10809 + os.getpid() % 1000
    tcp = start_nbdkit(None, "-r", "-i", "127.0.0.1", "-p", str(port), zsrc,
                       plugin="file", pidfile=os.path.join(scratch, "tcp.pid"))
    try:
        out = os.path.join(scratch, "tcp.raw")
        rc, _, err = copy(f"nbd://127.0.0.1:{port}/", out)
        tap.ok(rc == 0 and files_equal(zsrc, out)[0],
               "plaintext nbd:// to 127.0.0.1: allowed", err)
    finally:
        stop_nbdkit(tcp)
    far = "nbd://192.0.2.7:10809/disk"
    rc, _, err = copy(far, os.path.join(scratch, "far.raw"))
    tap.ok(rc == 4 and "--insecure" in err and "not loopback" in err,
           "plaintext nbd:// to a remote host refused without --insecure", err)
    rc, _, err = copy("--insecure", "nbd://0.0.0.1/x",
                      os.path.join(scratch, "far.raw"))
    tap.ok(rc == 4 and "cannot connect" in err and "--insecure" not in err,
           "with --insecure the policy lets it through (then connect fails)",
           err)

    # --- refusals and usage -----------------------------------------------
    gone = f"nbd+unix:///?socket={scratch}/nothing.sock"
    rc, _, err = copy(gone, os.path.join(scratch, "x.raw"))
    tap.ok(rc == 4 and gone in err and "cannot connect" in err,
           "unreachable source: exit 4, names it", err)
    rc, _, err = copy(zsrc, gone)
    tap.ok(rc == 4 and gone in err, "unreachable destination: exit 4", err)
    rc, _, err = copy("--request-size=3", zsrc, z1)
    tap.ok(rc == 2 and "request-size" in err, "bad option value: exit 2", err)
    rc, _, err = copy("--segment-size=512K", zsrc, z1)
    tap.ok(rc == 2 and "--segment-size: '512K' (expected a size from 1M to 2G)"
           in err, "a bad value's message names the option and what it "
           "should be", err)
    rc, _, err = copy("-C", "0", zsrc, z1)
    tap.ok(rc == 2 and "--connections: '0' (expected a number from 1 to 64)"
           in err, "a short option's bad value is named by its long name", err)
    rc, _, err = copy(zsrc)
    tap.eq(rc, 2, "one argument: exit 2")
    rc, _, err = copy("null:", z1)
    tap.ok(rc == 4 and "destination" in err, "null: as a source refused", err)


def expect_byte(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(1)


run_test(main)
