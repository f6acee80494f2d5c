#!/usr/bin/python3
# sxm backup / sxm restore of a running VM's disk (doc/sxm.pod "Backup
# and restore", doc/design.md "Backup").
#
# The VM is xenmem's uffd test guest writing checksummed records to a
# 5 GiB disk attached with `sxm attach`; between backup runs the test also
# writes random data, zeros over earlier data and a write-zeroes, in
# regions the guest's records do not use, some past 4 GiB.  Each run is
# held just after its snapshot (SXM_TEST_HOLD=frozen:FILE): the test then
# reads the frozen snapshot into a raw reference, while the guest keeps
# writing into the disk's new leaf.
#
# What must hold:
#  * every point, restored (`sxm restore`, a standalone dynamic VHD read
#    by qemu's vpc driver), equals the reference of its run;
#  * an increment reads from the source no more than the frozen layer's
#    own data + 1 % (counted by nbdkit's stats filter on the server sxm
#    backup starts, not by sxm's own figures);
#  * after every run the disk's chain is two deep (file + base) and
#    checks clean, its file name never changes, and the guest never saw
#    a failed request and reads back every record (its own check);
#  * a backup killed -9 in each phase (after the snapshot, the point
#    written but not recorded, recorded but the source not merged) leaves
#    every recorded point restorable as before, and the next run
#    completes: the point it makes reads as the killed run's snapshot
#    when that snapshot had not been archived;
#  * --keep 2 leaves 2 points, each still restoring to its reference;
#  * refusals: an archive of another disk, --keep not a number, a dead
#    disk service.
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (ROOT, MiB, GiB, run_test, tap, Host, VM,  # noqa: E402
                     guest_check, qemu_vhd, nbdkit, nbd_map)
from mirrortest import SXM_VHD, connect  # noqa: E402

SXM = os.path.join(ROOT, "scripts", "sxm")
# Test writes go here: clear of the guest's record groups (each quarter
# of the disk's first MiB, tests/sxmtest.py VM, xenmem.pod DISK RECORDS).
REGIONS = [64 * MiB, 2 * GiB + 16 * MiB, 4 * GiB + 64 * MiB]


def raw_copy(S, vhd, ref):
    """VHD (its chain, read-only through the plugin) into the sparse raw
    file REF, read by qemu-img (outside nbdkit's environment: under
    SXM_ASAN that preloads the sanitizer, which qemu-img must not get)."""
    with nbdkit(S, vhd, "-r") as uri:
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "raw",
                        "-S", "4k", uri, ref], check=True,
                       capture_output=True)


def parse_stats(path):
    """Bytes read, from every nbdkit stats filter report in PATH."""
    units = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    total = 0
    if not os.path.exists(path):
        return None
    for m in re.finditer(r"^read: \d+ ops, [\d.]+ s, ([\d.]+) (bytes|KiB|MiB|GiB)",
                         open(path).read(), re.M):
        total += float(m.group(1)) * units[m.group(2)]
    return total


class Backups:
    def __init__(self, S, host, disk):
        self.S, self.a, self.disk = S, host, disk
        self.arch = os.path.join(S, "archive")
        os.makedirs(self.arch)
        self.refs = {}          # point n -> reference raw
        self.runs = 0
        # An nbdkit first in sxm backup's PATH that adds the stats filter.
        self.wrap = os.path.join(S, "wrap")
        os.makedirs(self.wrap)
        w = os.path.join(self.wrap, "nbdkit")
        with open(w, "w") as f:
            f.write("#!/bin/sh\nexec %s --filter=stats \"$@\" "
                    "statsfile=\"$SXM_TEST_STATS\" statsappend=true\n"
                    % shutil.which("nbdkit"))
        os.chmod(w, 0o755)

    def start(self, *extra, hold="frozen"):
        self.runs += 1
        self.hold = os.path.join(self.S, f"hold-{self.runs}")
        self.stats = os.path.join(self.S, f"stats-{self.runs}")
        env = dict(self.a.env, SXM_TEST_HOLD=f"{hold}:{self.hold}",
                   SXM_TEST_STATS=self.stats,
                   PATH=self.wrap + ":" + os.environ["PATH"])
        return subprocess.Popen([SXM, "backup", "--to", self.arch, *extra,
                                 self.disk], env=env, text=True,
                                stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)

    def wait_hold(self, p, timeout=120):
        """The frozen layer's path once the run holds, or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if os.path.exists(self.hold):
                return open(self.hold).read().strip()
            if p.poll() is not None:
                return None
            time.sleep(0.05)
        return None

    def reference(self, frozen, tag):
        """The frozen snapshot, read whole into a sparse raw file, and the
        bytes of its own (layer=top) data."""
        ref = os.path.join(self.S, f"ref-{tag}.raw")
        raw_copy(self.S, frozen, ref)
        with nbdkit(self.S, frozen, "layer=top") as uri:
            own = sum(n for _, n, alloc in nbd_map(uri) if alloc)
        return ref, own

    def release(self):
        os.unlink(self.hold)

    def manifest(self):
        return json.load(open(os.path.join(self.arch, "vm-disk0.backup.json")))

    def restore_equals(self, point, ref):
        out = os.path.join(self.S, f"restored-{point['n']}-{time.time()}.vhd")
        r = self.a.sxm("restore", os.path.join(self.arch, point["file"]), out)
        if r.returncode != 0:
            return False, r.stderr
        c = subprocess.run(["qemu-img", "compare", "-F", "raw", qemu_vhd(out),
                            ref], capture_output=True, text=True)
        os.unlink(out)
        return c.returncode == 0, c.stdout + c.stderr


def scribble(uri, rng, round_):
    """Random writes, zeros over earlier data and a write-zeroes, in the
    regions the guest leaves alone."""
    h = connect(uri)
    for i in range(12):
        base = rng.choice(REGIONS)
        off = base + rng.randrange(0, 6 * MiB) // 512 * 512
        n = rng.choice([512, 4096, 65536, 300 * 1024, 1 * MiB])
        h.pwrite(rng.randbytes(n), off)
    # Zeros written as data over what an earlier round wrote, and a
    # write-zeroes: an increment must carry both (the point below holds
    # data there).
    h.pwrite(bytes(64 * 1024), REGIONS[0] + round_ * 64 * 1024)
    h.zero(128 * 1024, REGIONS[2] + round_ * 128 * 1024)
    h.flush()
    h.shutdown()


def chain_of(path):
    j = json.loads(subprocess.run([SXM_VHD, "info", "--json", path],
                                  capture_output=True, text=True,
                                  check=True).stdout)
    return [c["file"] for c in j["chain"]]


def main(S):
    a = Host(os.path.join(S, "A"), "A")
    vm = VM(a, 1, prefill_mib=8, guest_mem="32M")
    try:
        rounds(S, a, vm)
    finally:
        vm.proc.kill()


def rounds(S, a, vm):
    import random
    rng = random.Random(24)
    svc = a.services()[0]
    disk, uri, vhd = svc["name"], svc["uri"], svc["file"]
    bk = Backups(S, a, disk)
    for region in REGIONS:               # data for later rounds to change
        h = connect(uri)
        h.pwrite(rng.randbytes(6 * MiB), region)
        h.flush()
        h.shutdown()

    def one_run(n, *extra, verify=False):
        """A whole run (N: an int, the scribble round), held at its
        snapshot for the reference; returns (manifest point, own bytes of
        the frozen layer, stats read, the frozen layer's path)."""
        p = bk.start(*extra, *(["--verify"] if verify else []))
        frozen = bk.wait_hold(p)
        if frozen is None:
            out, err = p.communicate()
            raise AssertionError(f"run {n}: no hold: {err}")
        ref, own = bk.reference(frozen, str(n))
        scribble(uri, rng, n)           # the guest's disk goes on changing
        bk.release()
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"run {n}: exit {p.returncode}: {err}"
        point = json.loads(out.strip().splitlines()[-1])
        bk.refs[point["n"]] = ref
        return point, own, parse_stats(bk.stats), frozen

    # ---- rounds under a writing guest ---------------------------------
    for n in range(1, 5):
        if n > 1:
            scribble(uri, rng, n)
        point, own, read, frozen = one_run(n, verify=(n == 3))
        chain = chain_of(vhd)
        if n == 1:
            tap.ok(point["kind"] == "full" and point["n"] == 1,
                   "run 1: a full point", point)
        else:
            tap.ok(point["kind"] == "increment" and point["n"] == n and
                   read is not None and 0 < read <= own * 1.01 + 8192,
                   f"run {n}: an increment; the source served {read:.0f} "
                   f"bytes for a frozen layer of {own} own bytes (<= +1 %)",
                   f"{point}\nstats: {read}")
        chk = subprocess.run([SXM_VHD, "check", vhd], capture_output=True,
                             text=True)
        tap.ok(len(chain) == 2 and os.path.basename(chain[0]) ==
               os.path.basename(vhd) and chk.returncode == 0 and
               not os.path.exists(frozen if n > 1 else "/nonexistent"),
               f"run {n}: the disk's file is the same name, two deep "
               "(file + base), clean; the frozen layer merged away",
               f"{chain}\n{chk.stdout}{chk.stderr}")
    ok, j = guest_check(vm.mon)
    tap.ok(ok, "the guest ran on through 4 live backups: no failed request, "
           "every record reads back", j)
    m = bk.manifest()
    for point in m["points"]:
        eq, why = bk.restore_equals(point, bk.refs[point["n"]])
        tap.ok(eq, f"point {point['n']} ({point['kind']}) restored equals "
               "the disk at its snapshot", why)

    # ---- a backup killed in each phase ---------------------------------
    for phase in ("frozen", "copied", "merging"):
        before = bk.manifest()["points"]
        scribble(uri, rng, 10)
        p = bk.start(hold=phase)
        frozen = bk.wait_hold(p)
        if frozen:
            os.kill(p.pid, signal.SIGKILL)
        p.communicate()
        os.unlink(bk.hold) if os.path.exists(bk.hold) else None
        after = bk.manifest()["points"]
        intact = all(bk.restore_equals(pt, bk.refs[pt["n"]])[0]
                     for pt in after if pt["n"] in bk.refs)
        expect = len(before) + (1 if phase == "merging" else 0)
        tap.ok(frozen is not None and intact and len(after) == expect,
               f"killed -9 at {phase}: the recorded points are intact and "
               f"restore as before ({len(after)} points)",
               f"{before}\n{after}")
        if phase == "merging":
            bk.refs[after[-1]["n"]] = bk.refs.get(after[-1]["n"]) or \
                bk.reference(frozen, "killed-merging")[0]
        # The next run completes (finishing or redoing the killed one).
        scribble(uri, rng, 11)
        point, own, read, frozen2 = one_run(12 + ("frozen", "copied",
                                                  "merging").index(phase))
        if phase != "merging":
            tap.ok(frozen2 == frozen, f"killed at {phase}: the next run "
                   "archives the killed run's snapshot (no second one)",
                   f"{frozen} {frozen2}")
        m = bk.manifest()
        chain = chain_of(vhd)
        good = len(chain) == 2 and not any(
            f.endswith(".part.vhd") for f in os.listdir(bk.arch)) and \
            m["pending"] is None
        eq, why = bk.restore_equals(point, bk.refs[point["n"]])
        tap.ok(good and eq, f"killed at {phase}: the next run completes, "
               "its point restores equal to its snapshot, the source two "
               "deep, nothing pending", f"{chain}\n{m}\n{why}")
    ok, j = guest_check(vm.mon)
    tap.ok(ok, "the guest ran on through the killed backups", j)

    # ---- retention --------------------------------------------------------
    scribble(uri, rng, 20)
    point, _, _, _ = one_run(21, "--keep", "2")
    m = bk.manifest()
    tap.eq(len(m["points"]), 2, "--keep 2: two points left")
    for pt in m["points"]:
        eq, why = bk.restore_equals(pt, bk.refs[pt["n"]])
        tap.ok(eq, f"--keep 2: point {pt['n']} still restores equal to its "
               "snapshot", why)
    left = sorted(f for f in os.listdir(bk.arch) if f.endswith(".vhd"))
    tap.eq(left, sorted(pt["file"] for pt in m["points"]),
           "--keep 2: the archive holds exactly the points' files")

    # ---- refusals ---------------------------------------------------------
    other = os.path.join(S, "other.vhd")
    subprocess.run([SXM_VHD, "create", other, "64M"], check=True,
                   capture_output=True)
    r = a.sxm("backup", "--to", bk.arch, "--name", "vm-disk0", other)
    tap.ok(r.returncode == 4 and "give another --name" in r.stderr,
           "an archive of another disk: refused (exit 4)", r.stderr)
    r = a.sxm("backup", "--to", bk.arch, "--keep", "two", disk)
    tap.ok(r.returncode == 2 and "--keep" in r.stderr,
           "--keep two: usage error", r.stderr)
    os.kill(svc["pid"], signal.SIGKILL)
    time.sleep(0.3)
    r = a.sxm("backup", "--to", bk.arch, disk)
    tap.ok(r.returncode == 4 and "dead" in r.stderr,
           "a dead disk service: refused, said", r.stderr)


def offline(S):
    """A VHD file nothing serves: the same rounds on the file itself
    (sxm-vhd snapshot --in-place, relink), a differencing disk included."""
    import random
    rng = random.Random(5)
    a = Host(os.path.join(S, "off"), "off")
    arch = os.path.join(S, "off-archive")
    os.makedirs(arch)
    base = os.path.join(a.sr, "template.vhd")
    disk = os.path.join(a.sr, "vm.vhd")
    subprocess.run([SXM_VHD, "create", base, str(5 * GiB)], check=True,
                   capture_output=True)
    refs = {}
    for n in range(1, 4):
        # Change the disk (through the plugin, then stopped), keep what it
        # reads as the reference, back it up.
        target = base if n == 1 else disk
        with nbdkit(S, target) as uri:
            h = connect(uri)
            for _ in range(6):
                h.pwrite(rng.randbytes(rng.choice([4096, 300 * 1024])),
                         rng.choice(REGIONS) + rng.randrange(0, 4 * MiB))
            h.zero(64 * 1024, REGIONS[1])
            h.flush()
            h.shutdown()
        if n == 1:
            subprocess.run([SXM_VHD, "snapshot", base, disk], check=True,
                           capture_output=True)
        ref = os.path.join(S, f"off-ref-{n}.raw")
        raw_copy(S, disk, ref)
        b = a.sxm("backup", "--to", arch, disk)
        ok = b.returncode == 0
        if ok:
            refs[json.loads(b.stdout.strip().splitlines()[-1])["n"]] = ref
        chain = chain_of(disk)
        tap.ok(ok and len(chain) == 3,
               f"offline round {n}: exit 0; the file over its base over the "
               "template it was made from", b.stderr + str(chain))
    m = json.load(open(os.path.join(arch, "vm.backup.json")))
    for pt in m["points"]:
        out = os.path.join(S, f"off-restored-{pt['n']}.vhd")
        r = a.sxm("restore", "--verify", os.path.join(arch, pt["file"]), out)
        c = subprocess.run(["qemu-img", "compare", "-F", "raw", qemu_vhd(out),
                            refs[pt["n"]]], capture_output=True, text=True)
        tap.ok(r.returncode == 0 and c.returncode == 0,
               f"offline point {pt['n']} restored (--verify) equals the file "
               "as it was", r.stderr + c.stdout + c.stderr)


if __name__ == "__main__":
    run_test(main, offline)
