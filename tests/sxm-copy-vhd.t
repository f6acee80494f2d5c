#!/usr/bin/python3
# sxm-copy with VHD files at either end, no nbdkit in between: a .vhd (or
# any file whose footer says VHD) is the disk it holds, chains included; a
# new .vhd destination is created dynamic (or --create=fixed) and written
# sparse.  Sources made by qemu-img (vpc) and by tests/vhdgen.py (written
# from the specification, chains qemu cannot make); every result checked
# against qemu-img's reading or vhdgen's expected raw image, and every
# VHD written checked by `sxm-vhd check` and by qemu-img.  Also: --raw
# copies the container's bytes, a VHD footer in a file named otherwise is
# said and honoured, refusals (exit codes, nothing written), odd sizes,
# offsets past 4 GiB, verify, and a copy killed mid-way resumed from its
# checkpoint into a valid VHD.

import json
import os
import signal
import subprocess
import time

from sxmtest import (qemu_vhd, tap, run_test, nbdkit, sh, files_equal, ROOT, MiB, GiB)
import vhdgen

SXM_COPY = os.path.join(ROOT, "client", "sxm-copy")
SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")


def copy(*args, timeout=120, cwd=None):
    p = subprocess.run([SXM_COPY, *args], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def qemu_same(a, fa, b, fb):
    """qemu-img compare, each side read by qemu with the format given (a
    VHD at its current size: qemu_vhd)."""
    a, fa = (qemu_vhd(a), None) if fa == "vpc" else (a, fa)
    b, fb = (qemu_vhd(b), None) if fb == "vpc" else (b, fb)
    p = subprocess.run(["qemu-img", "compare", "-q",
                        *(["-f", fa] if fa else []),
                        *(["-F", fb] if fb else []), a, b],
                       capture_output=True, text=True)
    return p.returncode == 0, p.stdout + p.stderr


def vhd_check(path, xen=True):
    """sxm-vhd check (--xen: and XenServer's rules accept it)."""
    p = subprocess.run([SXM_VHD, "check", *(["--xen"] if xen else []), path],
                       capture_output=True,
                       text=True)
    return p.returncode, p.stdout + p.stderr


def vhd_info(path):
    """sxm-vhd info --json's record of the top image."""
    return json.loads(sh(SXM_VHD, "info", "--json", path))["chain"][0]


def random_raw(path, size, seed, pieces=40):
    """A sparse raw image: pieces of random data, one in the last sector."""
    import random
    r = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for _ in range(pieces):
            off = r.randrange(0, size - 70000)
            f.seek(off)
            f.write(r.randbytes(r.randrange(1, 65536)))
        f.seek(size - 512)
        f.write(b"last sector" * 40)


def main(S):
    def p(name):
        return os.path.join(S, name)

    # --- a dynamic VHD made by qemu-img, both ways ---------------------------
    random_raw(p("a.raw"), 100 * MiB, 1)
    sh("qemu-img", "convert", "-O", "vpc", "-o",
       "subformat=dynamic,force_size=on", p("a.raw"), p("q.vhd"))
    rc, _, err = copy("-q", p("q.vhd"), p("q-out.raw"))
    tap.ok(rc == 0 and files_equal(p("a.raw"), p("q-out.raw")),
           "qemu's dynamic VHD -> raw: the disk, byte for byte", err)
    rc, _, err = copy("-q", p("q.vhd"), p("q-out.vhd"))
    same, why = qemu_same(p("a.raw"), "raw", p("q-out.vhd"), "vpc")
    tap.ok(rc == 0 and same, "VHD -> new .vhd: qemu reads the same disk",
           err + why)
    rc, out = vhd_check(p("q-out.vhd"))
    tap.ok(rc == 0 and "clean" in out, "the new VHD checks clean", out)
    info = vhd_info(p("q-out.vhd"))
    tap.ok(info.get("type") == "dynamic" and
           info.get("virtual_size") == 100 * MiB,
           "created dynamic, the source's size", info)
    # Sparse: the copy allocates where the data is, not the whole disk.
    used = os.stat(p("q-out.vhd")).st_blocks * 512
    src_blocks = vhd_info(p("q.vhd"))["blocks_allocated"]
    tap.ok(used < 20 * MiB and info.get("blocks_allocated", 99) <= src_blocks,
           f"written sparse ({used} bytes on disk for 100 MiB with ~1.5 MiB "
           f"of data; {info.get('blocks_allocated')} blocks allocated, the "
           f"source {src_blocks})", used)

    # --- raw -> fixed VHD (--create=fixed) -----------------------------------
    rc, _, err = copy("-q", "--create=fixed", p("a.raw"), p("fixed.vhd"))
    same, why = qemu_same(p("a.raw"), "raw", p("fixed.vhd"), "vpc")
    info = vhd_info(p("fixed.vhd")) if rc == 0 else {}
    tap.ok(rc == 0 and same and info.get("type") == "fixed",
           "raw -> --create=fixed: a fixed VHD qemu reads as the source",
           err + why + str(info))

    # --- a differencing chain (vhdgen: partial bitmaps, 64 KiB blocks) -------
    size = 8 * MiB
    base_w = [(0, b"\x11" * 4096), (3 * MiB, b"\x22" * (512 * 3)),
              (size - 512, b"\x33" * 512)]
    mid_w = [(512, b"\x44" * 512), (3 * MiB + 512, b"\x55" * 512)]
    top_w = [(0, b"\x66" * 512), (5 * MiB, b"\x77" * 65536)]
    bu = vhdgen.write_dynamic(p("base.vhd"), size, base_w, block_size=65536)
    mu = vhdgen.write_dynamic(p("mid.vhd"), size, mid_w, block_size=65536,
                              parent=(p("base.vhd"), bu))
    vhdgen.write_dynamic(p("top.vhd"), size, top_w, block_size=65536,
                         parent=(p("mid.vhd"), mu))
    vhdgen.expected_raw(p("chain.raw"), size, [base_w, mid_w, top_w])
    rc, _, err = copy("-q", p("top.vhd"), p("chain-out.raw"))
    tap.ok(rc == 0 and files_equal(p("chain.raw"), p("chain-out.raw")),
           "a 3-deep differencing chain -> raw: what the chain reads", err)
    rc, _, err = copy("-q", p("top.vhd"), p("flat.vhd"))
    same, why = qemu_same(p("chain.raw"), "raw", p("flat.vhd"), "vpc")
    tap.ok(rc == 0 and same and vhd_info(p("flat.vhd")).get("type") ==
           "dynamic", "chain -> new .vhd: one flat dynamic image", err + why)

    # --- into an existing differencing VHD (its parent stays untouched) ------
    before = open(p("base.vhd"), "rb").read()
    sh(SXM_VHD, "snapshot", p("base.vhd"), p("child.vhd"))
    rc, _, err = copy("-q", p("chain.raw"), p("child.vhd"))
    rc2, _, _ = copy("-q", p("child.vhd"), p("child-out.raw"))
    tap.ok(rc == 0 and rc2 == 0 and
           files_equal(p("chain.raw"), p("child-out.raw")) and
           open(p("base.vhd"), "rb").read() == before,
           "raw -> existing differencing VHD: the child reads the source, "
           "the parent is unchanged", err)

    # --- --verify and a difference found -------------------------------------
    rc, _, err = copy("--verify", p("q.vhd"), p("v.vhd"))
    tap.ok(rc == 0 and "identical" in err, "--verify VHD -> VHD: identical",
           err)
    # The line says what it counted, and the three counts cover the disk.
    import re
    m = re.search(r"identical: (\d+) bytes of data read on both sides and "
                  r"compared, (\d+) bytes of the source's holes read as "
                  r"zeros on the destination, (\d+) bytes zero on both", err)
    src = vhd_info(p("q.vhd"))
    tap.ok(m is not None and
           sum(int(x) for x in m.groups()) == 100 * MiB and
           int(m.group(1)) == src["blocks_allocated"] * src["block_size"],
           "--verify counts: compared = the source's allocated blocks, "
           "and compared + zero-checked + skipped = the disk", (err, src))
    rc, _, err = copy("-q", "--verify-only", p("q.vhd"), p("q-out.raw"))
    tap.eq(rc, 0, "--verify-only VHD against raw: equal")
    with open(p("q-out.raw"), "r+b") as f:
        f.seek(77 * MiB + 1024)
        f.write(b"X")
    rc, _, err = copy("--verify-only", p("q.vhd"), p("q-out.raw"))
    tap.ok(rc == 3 and str(77 * MiB + 1024) in err,
           "--verify-only finds the changed byte (exit 3, its offset)", err)

    # --- --raw: the container's bytes; a footer under another name ----------
    rc, _, err = copy("-q", "--raw", p("q.vhd"), p("container.bin"))
    tap.ok(rc == 0 and files_equal(p("q.vhd"), p("container.bin")),
           "--raw copies the VHD file's bytes", err)
    os.link(p("q.vhd"), p("disk.img"))
    rc, _, err = copy("-q", p("disk.img"), p("img-out.raw"))
    tap.ok(rc == 0 and "holds a VHD" in err and "--raw" in err and
           files_equal(p("a.raw"), p("img-out.raw")),
           "a VHD named disk.img: said on stderr, read as the disk", err)

    # --- refusals: exit code, message, nothing created or changed ------------
    with open(p("fake.vhd"), "wb") as f:
        f.write(b"\0" * 4096)
    rc, _, err = copy(p("fake.vhd"), p("fake-out.raw"))
    tap.ok(rc == 4 and "no VHD footer" in err and
           not os.path.exists(p("fake-out.raw")),
           "a .vhd with no footer: refused (exit 4), nothing written", err)
    sz = os.path.getsize(p("fixed.vhd"))
    rc, _, err = copy("--create", p("a.raw"), p("fixed.vhd"))
    tap.ok(rc == 4 and "exists" in err and
           os.path.getsize(p("fixed.vhd")) == sz,
           "--create onto an existing file: refused (exit 4), untouched", err)
    rc, _, err = copy("--raw", "--create=fixed", p("a.raw"), p("n.vhd"))
    tap.ok(rc == 2 and not os.path.exists(p("n.vhd")),
           "--raw with --create=fixed: usage error (exit 2)", err)
    rc, _, err = copy("--create=sparse", p("a.raw"), p("n.vhd"))
    tap.ok(rc == 2 and not os.path.exists(p("n.vhd")),
           "--create=sparse: usage error (exit 2)", err)
    small = p("small.vhd")
    sh(SXM_VHD, "create", small, "1M")
    rc, _, err = copy(p("q.vhd"), small)
    tap.ok(rc == 4 and "smaller" in err,
           "into a smaller existing VHD: refused (exit 4)", err)

    # --- an odd-sized NBD source into a new VHD: whole sectors, said ---------
    odd = 3 * MiB + 100
    with nbdkit(S, f"size={odd}", "--filter=noextents", plugin="pattern") \
            as uri:
        rc, _, err = copy("-q", uri, p("odd.vhd"))
        sh("nbdcopy", uri, p("odd.raw"))
    info = vhd_info(p("odd.vhd")) if rc == 0 else {}
    with open(p("odd.raw"), "r+b") as f:
        f.truncate(info.get("virtual_size", 0))
    same, why = qemu_same(p("odd.raw"), "raw", p("odd.vhd"), "vpc")
    tap.ok(rc == 0 and info.get("virtual_size") == 3 * MiB + 512 and same and
           "whole 512-byte sectors" in err,
           "an odd-sized source: the VHD rounds up to a sector, says so, "
           "and the extra bytes read zeros", err + why + str(info))

    # --- past 4 GiB, both ways -----------------------------------------------
    big = 6 * GiB
    far = [(5 * GiB + 7 * MiB, b"\xa5" * 8192), (big - 512, b"\x5a" * 512)]
    vhdgen.write_dynamic(p("big.vhd"), big, far)
    rc, _, err = copy("-q", p("big.vhd"), p("big.raw"))
    ok = rc == 0 and os.path.getsize(p("big.raw")) == big
    if ok:
        with open(p("big.raw"), "rb") as f:
            for off, data in far:
                f.seek(off)
                ok = ok and f.read(len(data)) == data
    tap.ok(ok, "a 6 GiB VHD -> raw: data past 4 GiB where it belongs", err)
    rc, _, err = copy("-q", p("big.raw"), p("big2.vhd"))
    rc2, _, err2 = copy("-q", "--verify-only", p("big.raw"), p("big2.vhd"))
    tap.ok(rc == 0 and rc2 == 0 and vhd_check(p("big2.vhd"))[0] == 0,
           "raw -> 6 GiB VHD: verified equal, checks clean", err + err2)

    # --- a destination that reads like a mistyped sink or URI ---------------
    # (as typed: a name with a directory in it is plainly a path)
    for name in ("null", "nbd:localhost", "nbds+unix:sock"):
        rc, _, err = copy("-q", "a.raw", name, cwd=S)
        tap.ok(rc == 4 and "did you mean" in err and
               not os.path.exists(p(name)),
               f"destination '{name}' is refused (exit 4, did you mean), "
               "nothing created", err)
    rc, _, err = copy("-q", "--create", "a.raw", "null", cwd=S)
    rc2, _, err2 = copy("-q", "a.raw", "./nbd:x", cwd=S)
    tap.ok(rc == 0 and files_equal(p("a.raw"), p("null")) and rc2 == 0 and
           files_equal(p("a.raw"), p("nbd:x")),
           "--create makes a file named 'null', and ./nbd:x is a path",
           err + err2)

    # --- killed mid-copy, resumed from the checkpoint ------------------------
    random_raw(p("r.raw"), 64 * MiB, 2, pieces=400)
    ck = p("ck.json")
    proc = subprocess.Popen([SXM_COPY, "-q", "--rate=2M", "-C1",
                             "--segment-size=1M", "--checkpoint=" + ck,
                             "--checkpoint-interval=0.2", p("r.raw"),
                             p("r.vhd")], stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rc0, out0 = vhd_check(p("r.vhd"), xen=False)
    rc, _, err = copy("--checkpoint=" + ck, "-C1", "--segment-size=1M",
                      p("r.raw"), p("r.vhd"))
    rc2, out = vhd_check(p("r.vhd"))
    same, why = qemu_same(p("r.raw"), "raw", p("r.vhd"), "vpc")
    tap.ok(proc.returncode == -9 and rc0 in (0, 1) and rc == 0 and
           "resuming" in err and rc2 == 0 and same,
           "SIGKILL mid-copy into a VHD: it opens (check exit "
           f"{rc0}), the resumed copy completes it, clean and equal",
           f"{out0}\n{err}\n{out}\n{why}")


run_test(main)
