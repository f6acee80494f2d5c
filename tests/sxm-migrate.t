#!/usr/bin/python3
# sxm receive + sxm migrate end to end on loopback, everything real: the
# source disk is a 5 GiB dynamic VHD (data past 4 GiB) served by nbdkit
# with the vhd plugin and the mirror filter; a guest writer keeps writing
# through it; the destination is `sxm receive` (nbdkit vhd sr=DIR with
# TLS and a fresh PSK, xenmem receive); memory is the uffd test guest or
# none.  Success: the destination VHD is byte-identical to the source,
# every write the guest got a reply for is in it, the moved guest checks.
# Failures injected at each step (destination NBD server killed mid-copy,
# xenmem receiver killed mid-stream, token garbage / expired / wrong key,
# SR full before and during the copy, sxm receive killed): sxm migrate
# exits 1 (or 2/4 when it refused before starting), the source mirror is
# back to idle with the guest writing on unharmed, and the destination SR
# holds nothing new.  Hostile names (spaces, quotes, $(...)) in the SR,
# the control socket and TMPDIR.  Seeds: SXM_MIGRATE_SEED.  Under make
# check-asan sxm runs with the sanitizer runtime preloaded (nbdkit_env),
# because the nbdkit it starts is not instrumented but loads our plugin.
import base64
import json
import os
import random
import re
import signal
import shutil
import subprocess
import sys
import threading
import time
from urllib.parse import quote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (qemu_vhd, ROOT, MiB, run_test, tap, nbdkit, nbdkit_env,  # noqa: E402
                     start_nbdkit, stop_nbdkit, tmpfs, free_ports, wait_log,
                     communicate_or_kill)
from mirrortest import FILTER, SXM_VHD, ctl, connect  # noqa: E402

SXM = os.path.join(ROOT, "scripts", "sxm")
GiB = 1 << 30
SIZE = 5 * GiB
HOSTILE = "x $(touch pwned) 'q\" `id`"


class Writer:
    """The guest's disk I/O: one NBD connection writing 4 KiB blocks with
    a sequence number at random offsets over a few regions (one past
    4 GiB).  MODEL holds what every acknowledged write left there; a write
    that failed (the source refuses writes after 'complete', or its server
    was killed) is not in it.  The failed write's block may hold either
    its old or its new contents: an NBD write that got no reply may or may
    not have reached the disk (a kill -9 can land while the server is
    writing it), so CHECK accepts both there and nowhere else."""

    REGIONS = [(0, 16 * MiB), (2 * GiB, 2 * GiB + 8 * MiB),
               (4 * GiB + 512 * MiB, 4 * GiB + 520 * MiB)]

    def __init__(self, uri, seed):
        self.uri, self.rng = uri, random.Random(seed)
        self.model, self.acked, self.failed = {}, 0, None
        self.unacked = None        # (offset, data) of the failed write
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        h = connect(self.uri)
        seq = 0
        while not self.stop.is_set():
            lo, hi = self.rng.choice(self.REGIONS)
            off = self.rng.randrange(lo // 4096, hi // 4096) * 4096
            seq += 1
            data = (b"%016d" % seq) * 256
            try:
                h.pwrite(data, off)
            except Exception as e:
                self.failed, self.unacked = str(e), (off, data)
                break
            self.model[off] = data
            self.acked += 1
            time.sleep(0.002)
        try:
            h.shutdown()
        except Exception:
            pass

    def start(self):
        self.t.start()
        return self

    def finish(self):
        self.stop.set()
        self.t.join(timeout=60)
        return self.acked

    def check(self, uri):
        """Offsets whose acknowledged data URI does not hold."""
        h = connect(uri)
        bad = []
        for o, d in self.model.items():
            got = h.pread(4096, o)
            if got != d and not (self.unacked and self.unacked == (o, got)):
                bad.append(o)
        h.shutdown()
        return bad


class Source:
    """The VM's disk: nbdkit vhd + mirror filter on a unix socket."""

    def __init__(self, d, seed, name="vm"):
        os.makedirs(d, exist_ok=True)
        self.vhd = os.path.join(d, "disk.vhd")
        subprocess.run([SXM_VHD, "create", self.vhd, str(SIZE)], check=True,
                       capture_output=True)
        self.sock = os.path.join(d, name + ".sock")
        self.ctl = os.path.join(d, name + ".ctl")
        self.uri = "nbd+unix:///?socket=" + quote(self.sock, safe="/")
        self.proc = start_nbdkit(
            self.sock, self.vhd, "mirror-control=" + self.ctl,
            "mirror-uri=" + self.uri, filters=[FILTER],
            log=os.path.join(d, name + ".log"))
        deadline = time.time() + 30
        while not os.path.exists(self.ctl):
            assert self.proc.poll() is None, "source nbdkit exited"
            assert time.time() < deadline, "source nbdkit did not start"
            time.sleep(0.02)
        # Allocated data: 24 MiB at the start, 8 MiB at 2 GiB, 8 MiB past
        # 4 GiB, the rest holes.
        rng = random.Random(seed)
        h = connect(self.uri)
        for base, n in ((0, 24), (2 * GiB, 8), (4 * GiB + 512 * MiB, 8)):
            for i in range(n):
                h.pwrite(rng.randbytes(MiB), base + i * MiB)
        h.flush()
        h.shutdown()

    def state(self):
        return ctl(self.ctl, "status").get("state")

    def stop(self):
        stop_nbdkit(self.proc, timeout=10)


class Receiver:
    def __init__(self, sr, ndisks=1, memory="none", expires=120, env=None,
                 extra=(), pass_fds=()):
        self.sr = sr
        os.makedirs(sr, exist_ok=True)
        self.before = set(os.listdir(sr))
        self.port = free_ports()
        self.token_file = os.path.join(os.path.dirname(sr.rstrip("/")),
                                       f"token.{self.port}")
        args = [SXM, "receive", "--sr", sr, "--listen",
                f"127.0.0.1:{self.port}", "--memory", memory,
                "--expires", str(expires), "--token-file", self.token_file,
                *extra]
        for _ in range(ndisks):
            args += ["--disk", str(SIZE)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=env or nbdkit_env(),
                                     pass_fds=pass_fds)
        self.token = self.proc.stdout.readline().strip()
        self.out = self.err = ""

    def children(self, name):
        r = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-x", name],
                           capture_output=True, text=True)
        return [int(p) for p in r.stdout.split()]

    def finish(self, timeout=120):
        rc, self.out, self.err = communicate_or_kill(self.proc, timeout,
                                                     "sxm receive")
        return rc

    def new_files(self):
        return sorted(set(os.listdir(self.sr)) - self.before)


def migrate(token_file, ctls, *extra, env=None, timeout=300, wait=True,
            sub="migrate", pass_fds=()):
    args = [SXM, sub, "--token-file", token_file]
    for c in ctls:
        args += ["--disk", c]
    args += list(extra)
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env or nbdkit_env(), pass_fds=pass_fds)
    if not wait:
        return p
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


class Faulted:
    """A migration of a fresh source disk with a guest writing, held at the
    first line of migrate's log matching PATTERN, then DELAY seconds, for
    the caller to inject a fault (kill a process)."""

    def __init__(self, S, tag, seed, pattern, delay, *extra, memory="none",
                 expires=120):
        self.src = Source(os.path.join(S, "src" + tag), seed)
        self.w = Writer(self.src.uri, seed).start()
        self.rcv = Receiver(os.path.join(S, "sr" + tag), memory=memory,
                            expires=expires)
        if memory != "none":
            extra = ("--memory", memory) + extra
        self.p = migrate(self.rcv.token_file, [self.src.ctl], *extra,
                         wait=False)
        self.lines = []
        wait_log(self.p, pattern, self.lines)
        time.sleep(delay)

    def finish(self):
        """migrate's exit status and its whole stderr; receive's status."""
        out, err = self.p.communicate(timeout=120)
        return self.p.returncode, "".join(self.lines) + err, self.rcv.finish()


def writes_go_on(w):
    """The guest writer still gets replies (0.3 s more of them)."""
    n0 = w.acked
    time.sleep(0.3)
    return w.acked > n0 and not w.failed


def kill_children(pid, name):
    r = subprocess.run(["pgrep", "-P", str(pid), "-x", name],
                       capture_output=True, text=True)
    pids = [int(x) for x in r.stdout.split()]
    for x in pids:
        os.kill(x, signal.SIGKILL)
    return bool(pids)


def retoken(token, **fields):
    body = base64.b64decode(token[5:]).decode()
    out = []
    for line in body.splitlines():
        k = line.split("=", 1)[0]
        out.append(f"{k}={fields[k]}" if k in fields else line)
    return "sxm1." + base64.b64encode(("\n".join(out) + "\n").encode()).decode()


def vhd_equal(a, b):
    return subprocess.run(["qemu-img", "compare", "-q", qemu_vhd(a),
                           qemu_vhd(b)]).returncode == 0


def vhd_check(f):
    """Clean for us and accepted by XenServer's rules (the destination of
    a migration is a Xen SR)."""
    return subprocess.run([SXM_VHD, "check", "--xen", f],
                          capture_output=True).returncode == 0


def events(f):
    """Every line of a --progress file, parsed (ValueError if one is not
    JSON)."""
    f.seek(0)
    return [json.loads(line) for line in f.read().splitlines()]


def progress_checks(mprog, rprog, summary):
    """--progress json: every line parses, version 1, time never goes
    back; migrate's phases in order, each disk's copied bytes only grow up
    to its total, rounds numbered from 0 with the paused one last, a
    switchover, and an end with exit 0 carrying the summary; receive's
    phases and end."""
    try:
        me, re_ = events(mprog), events(rprog)
    except ValueError as e:
        tap.ok(False, "--progress: every line is JSON", str(e))
        return
    allev = me + re_
    # In the order they happened, except "paused": stamped when the guest
    # was paused, told when the memory phase ends.
    timed = [e for e in me if e.get("phase") != "paused"]
    tap.ok(allev and all(e.get("version") == 1 and "event" in e
                         for e in allev) and
           all(a["t_ms"] <= b["t_ms"] for a, b in zip(timed, timed[1:])),
           f"--progress: {len(me)} + {len(re_)} JSON lines, version 1, "
           "in time order", allev[:3])
    phases = [e["phase"] for e in me if e["event"] == "phase"]
    tap.eq([p for p in phases if p != "paused"],
           ["start", "check", "mirror", "copy", "memory", "complete"],
           "migrate --progress: the phases in order")
    disk = [e for e in me if e["event"] == "disk"]
    done = [e["done_bytes"] for e in disk]
    tap.ok(len(disk) >= 3 and done == sorted(done) and
           done[-1] == disk[-1]["total_bytes"] > 0,
           f"disk events: the copy's done bytes only grow, {len(disk)} "
           f"samples, up to the total ({done[-1] if done else None})",
           [(e["done_bytes"], e["total_bytes"]) for e in disk])
    rounds = [e for e in me if e["event"] == "round"]
    tap.ok(rounds and [e["round"] for e in rounds] ==
           list(range(len(rounds))) and rounds[-1]["paused"] is True and
           len(rounds) == summary.get("memory", {}).get("rounds"),
           f"round events: {len(rounds)}, numbered, the paused one last, "
           "as many as the summary's rounds", rounds)
    thr = [e.get("throttle") for e in rounds]
    tap.ok(thr and all(isinstance(t, int) for t in thr) and
           max(thr) == summary.get("memory", {}).get("throttle_max") and
           20 <= max(thr) <= 90,
           f"round events carry the auto-converge throttle ({thr}), up to "
           "the summary's throttle_max, within --max-throttle=90", rounds)
    end = me[-1] if me else {}
    tap.ok(any(e["event"] == "switchover" and e.get("verified") is True
               for e in me) and end.get("event") == "end" and
           end.get("exit") == 0 and end.get("result") == "migrated" and
           end.get("summary", {}).get("memory", {}).get("rounds") ==
           summary.get("memory", {}).get("rounds"),
           "a verified switchover event; the last event is the end: exit 0, "
           "migrated, with the summary", end)
    rend = re_[-1] if re_ else {}
    tap.ok([e["phase"] for e in re_ if e["event"] == "phase"] ==
           ["start", "waiting", "committed"] and
           rend.get("event") == "end" and rend.get("exit") == 0 and
           rend.get("result") == "received" and
           rend.get("summary", {}).get("rounds") ==
           summary.get("memory", {}).get("rounds"),
           "receive --progress: start, waiting, committed, then the end "
           "(exit 0, received, the memory report)", re_)


def main(scratch):
    seed = int(os.environ.get("SXM_MIGRATE_SEED", random.randrange(1 << 30)))
    tap.diag(f"SXM_MIGRATE_SEED={seed}")
    S = scratch

    # --- 1. the whole migration: disk + uffd memory, a guest writing ------
    src = Source(os.path.join(S, "src1"), seed)
    w = Writer(src.uri, seed).start()
    # Both sides' --progress events go to files, through the descriptors
    # they are open on here.
    rprog = open(os.path.join(S, "recv-progress.json"), "w+")
    mprog = open(os.path.join(S, "migrate-progress.json"), "w+")
    rcv = Receiver(os.path.join(S, "sr1"), memory="uffd",
                   extra=("--check", "0.3", "--progress",
                          f"json:{rprog.fileno()}"),
                   pass_fds=(rprog.fileno(),))
    sj = os.path.join(S, "summary1.json")
    png = os.path.join(S, "timeline1.png")
    rc, out, err = migrate(rcv.token_file, [src.ctl], "--memory", "uffd",
                           "--memory-opt=--guest-mem=64M",
                           # dirtying twice what the memory link carries:
                           # auto-converge must throttle it
                           "--memory-opt=--dirty-rate=64M",
                           "--memory-opt=--rate=32M",
                           "--memory-opt=--max-throttle=90",
                           "--copy-rate=64M", "--verify", "--summary-json", sj,
                           "--timeline", png,
                           f"--progress=json:{mprog.fileno()}",
                           pass_fds=(mprog.fileno(),))
    acked_before = w.acked
    w.finish()
    rrc = rcv.finish()
    new = rcv.new_files()
    dst = os.path.join(rcv.sr, new[0]) if len(new) == 1 else None
    summary = json.load(open(sj)) if os.path.exists(sj) else {}
    tap.ok(rc == 0 and rrc == 0 and dst and vhd_check(dst),
           "migrate exit 0, receive exit 0, one new VHD that checks clean "
           "and passes XenServer's rules",
           f"migrate {rc}\n{err}\nreceive {rrc}\n{rcv.err}")
    tap.ok(w.failed and acked_before > 50,
           f"the guest wrote during the migration ({acked_before} writes "
           "acknowledged) and the source refused writes after it",
           f"failed={w.failed} acked={acked_before}")
    src.stop()
    tap.ok(dst and vhd_equal(src.vhd, dst),
           "destination VHD byte-identical to the source (qemu-img compare)")
    # Read the destination back through our own plugin, read-only.
    bad = ["no destination"]
    if dst:
        with nbdkit(S, "-r", dst) as uri:
            bad = w.check(uri)
    tap.ok(not bad, f"all {len(w.model)} acknowledged blocks are on the "
           "destination", f"missing at {bad[:5]}")
    mem = summary.get("memory", {})
    tap.ok(mem.get("result") == "migrated" and
           (summary.get("switchover") or [{}])[0].get("verified") is True
           and '"check":{' in rcv.err and '"ok":true' in rcv.err,
           f"memory moved in {mem.get('rounds')} rounds, downtime "
           f"{mem.get('downtime_ms')} ms (switchover {mem.get('hook_ms')} "
           "ms, verified); the guest checks on the destination",
           f"{summary}\n{rcv.err}")
    tap.ok(mem.get("prepare_ms", 0) > 0 and
           (summary.get("switchover") or [{}])[0].get("flush_ms") is not None,
           f"disks flushed before the pause ({mem.get('prepare_ms')} ms), "
           "then flushed again in it "
           f"({(summary.get('switchover') or [{}])[0].get('flush_ms')} ms)")
    tap.ok(os.path.exists(png) and open(png, "rb").read(4) == b"\x89PNG",
           "timeline plot written", err)
    if os.environ.get("SXM_ARTIFACTS") and os.path.exists(png):
        # (for looking at the picture: SXM_ARTIFACTS=DIR keeps a copy)
        shutil.copy(png, os.environ["SXM_ARTIFACTS"])
    progress_checks(mprog, rprog, summary)
    p = subprocess.run([SXM, "migrate", "--progress", "json:1", "--token",
                        "sxm1.bm90IGEgdG9rZW4K", "--disk", src.ctl],
                       capture_output=True, text=True, timeout=60)
    try:
        last = json.loads(p.stdout.splitlines()[-1])
    except (ValueError, IndexError):
        last = {"unparsed": p.stdout}
    tap.ok(p.returncode == 2 and last.get("event") == "end" and
           last.get("exit") == 2 and last.get("result") == "usage-error" and
           last.get("error") and last["error"] in p.stderr,
           "a refused migrate still ends its events: exit 2, usage-error, "
           "the message", f"{p.stdout}\n{p.stderr}")
    tap.ok(re.search(r"\n  memory: backend uffd, \d+ rounds, \d+ bytes of RAM", err)
           and re.search(r"\n  downtime: [\d.]+ ms \(guest paused to running on "
                         r"the destination\), of which disk switchover", err)
           and "writes held" not in err,
           "summary with a guest: memory rounds and RAM, downtime", err)

    # --- 1b. two disks: one migration; the hook is all or none ------------
    srcs = [Source(os.path.join(S, f"src1b{i}"), seed + 20 + i) for i in (0, 1)]
    ws = [Writer(x.uri, seed + 30 + i).start() for i, x in enumerate(srcs)]
    rcv = Receiver(os.path.join(S, "sr1b"), ndisks=2)
    # A disk that is not idle (a mirror already running): refused before
    # anything moves, nothing told to the destination, and the same token
    # then carries the real migration.
    busy = Source(os.path.join(S, "src1busy"), seed + 25)
    with nbdkit(S, f"size={SIZE}", plugin="memory") as spare:
        st = ctl(busy.ctl, "start", dest=spare)
        rc0, _, err0 = migrate(rcv.token_file, [srcs[0].ctl, busy.ctl])
        ctl(busy.ctl, "abort")
    busy.stop()
    tap.ok(st.get("ok") and rc0 == 4 and "not idle" in err0 and
           "nothing moved and nothing changed on either host" in err0 and
           "the token stays usable until" in err0 and
           "told the destination" not in err0 and
           srcs[0].state() == "idle",
           "a disk already mirroring: refused (exit 4) before anything "
           "moves, says the token stays usable", err0)
    png2 = os.path.join(S, "timeline-disks.png")
    rc, out, err = migrate(rcv.token_file, [x.ctl for x in srcs],
                           "--timeline", png2)
    for w_ in ws:
        w_.finish()
    rrc = rcv.finish()
    new = rcv.new_files()
    # The token lists the exports in --disk order; so must the copies go.
    order = [line.split("=", 1)[1].split(":")[0] for line in
             base64.b64decode(rcv.token[5:]).decode().splitlines()
             if line.startswith("export=")]
    for x in srcs:
        x.stop()
    same = len(new) == 2 and all(
        vhd_equal(x.vhd, os.path.join(rcv.sr, u + ".vhd"))
        for x, u in zip(srcs, order))
    tap.ok(rc == 0 and rrc == 0 and same,
           "two disks in one migration (with the token a refusal left "
           "usable): each destination byte-identical to its own source", f"rc={rc} rrc={rrc} {new}\n{err}\n{rcv.err}")
    tap.ok(re.search(r"\n  memory: none \(disks only: no guest was paused", err)
           and re.search(r"\n  writes held: [\d.]+ ms \(from the switchover to "
                         r"the commit; since then the source refuses writes\), "
                         r"of which disk switchover [\d.]+ ms", err)
           and "bytes of RAM" not in err and "guest paused" not in err
           and "downtime" not in err,
           "disk-only summary (--memory none): writes held and switchover, "
           "no RAM, no guest downtime", err)
    tap.ok(os.path.exists(png2) and open(png2, "rb").read(4) == b"\x89PNG",
           "disk-only timeline plot written (one panel: no memory moved)",
           err)
    if os.environ.get("SXM_ARTIFACTS") and os.path.exists(png2):
        shutil.copy(png2, os.environ["SXM_ARTIFACTS"])
    for line in err.splitlines():
        if line.startswith(("  memory: ", "  writes held: ")):
            tap.diag(line)

    mirror = os.path.join(ROOT, "client", "sxm-mirror")
    srcs = [Source(os.path.join(S, f"src1c{i}"), seed + 40 + i) for i in (0, 1)]
    hook_out = os.path.join(S, "hook.json")
    with nbdkit(S, "size=5G", plugin="memory") as d0, \
            nbdkit(S, "size=5G", plugin="memory") as d1:
        for x, d in zip(srcs, (d0, d1)):
            subprocess.run([mirror, x.ctl, "start", d], check=True,
                           capture_output=True)
            subprocess.run([os.path.join(ROOT, "client", "sxm-copy"), "-q",
                            "--live=" + x.ctl, x.uri], check=True)
        # A planted difference on disk 1: the complement of the source's
        # byte (a fixed value equals the random source byte 1 time in 256).
        hs = connect(srcs[1].uri)
        b = hs.pread(1, 2 * GiB + 12345)
        hs.shutdown()
        h = connect(d1)
        h.pwrite(bytes([b[0] ^ 0xff]), 2 * GiB + 12345)
        h.shutdown()

        def hook(phase, *extra):
            return subprocess.run(
                [mirror, srcs[0].ctl, "hook", "--output=" + hook_out, *extra,
                 srcs[1].ctl], capture_output=True, text=True,
                env=dict(os.environ, XENMEM_HOOK_PHASE=phase))
        p = hook("prepare")
        lines = open(hook_out + ".prepare").read().splitlines()
        tap.ok(p.returncode == 0 and len(lines) == 2 and
               all(json.loads(x).get("flush_ms") is not None for x in lines),
               "sxm-mirror hook, prepare phase: both disks flushed",
               p.stderr + str(lines))
        p = hook("paused")
        lines = open(hook_out).read().splitlines()
        states = [x.state() for x in srcs]
        tap.ok(p.returncode == 1 and states == ["mirroring", "mirroring"] and
               json.loads(lines[0]).get("ok") is True and
               "2147495993" in lines[1],
               "paused phase, disk 1 differs: the hook fails and both disks "
               "are mirroring again (all or none)",
               f"{p.returncode} {states} {lines} {p.stderr}")
        p = hook("paused", "--no-verify")
        states = [x.state() for x in srcs]
        tap.ok(p.returncode == 0 and states == ["ready", "ready"],
               "paused phase without verify: both ready", f"{states} {p.stderr}")
        for x in srcs:
            ctl(x.ctl, "abort")
            x.stop()

    # --- 2. destination NBD server killed mid-copy -------------------------
    f = Faulted(S, "2", seed + 1, r"== copy", 0.5 + random.Random(seed).random(),
                "--copy-rate=4M")
    src, w, rcv = f.src, f.w, f.rcv
    for pid in rcv.children("nbdkit"):
        os.kill(pid, signal.SIGKILL)
    rc, err, rrc = f.finish()
    time.sleep(0.3)
    st = src.state()
    writes_went_on = writes_go_on(w)
    w.finish()
    tap.ok(rc == 1 and "rolled back" in err and st == "idle" and
           writes_went_on,
           "destination server killed mid-copy: exit 1, mirror idle, the "
           "guest keeps writing", f"rc={rc} state={st} {w.failed}\n{err}")
    tap.ok(rrc == 1 and rcv.new_files() == [],
           "... and the destination removed its new VHD", f"{rrc} {rcv.new_files()}\n{rcv.err}")
    bad = w.check(src.uri)
    src.stop()
    tap.ok(not bad and vhd_check(src.vhd),
           "... the source holds every acknowledged write and checks clean",
           f"{bad[:5]}")

    # --- 3. xenmem receiver killed mid-stream ---------------------------------
    f = Faulted(S, "3", seed + 2, r"== memory", 1.0,
                "--memory-opt=--guest-mem=64M", "--memory-opt=--rate=4M",
                "--memory-opt=--check=0.3", memory="uffd")
    src, w, rcv = f.src, f.w, f.rcv
    for pid in rcv.children("xenmem"):
        os.kill(pid, signal.SIGKILL)
    rc, err, rrc = f.finish()
    st = src.state()
    went_on = writes_go_on(w)
    w.finish()
    bad = w.check(src.uri)
    src.stop()
    tap.ok(rc == 1 and st == "idle" and went_on and not bad and
           rrc == 1 and rcv.new_files() == [],
           "memory receiver killed mid-stream: exit 1, source guest resumed, "
           "mirror idle, writes go on, destination clean",
           f"rc={rc} st={st} went_on={went_on} bad={bad[:3]} "
           f"rrc={rrc} new={rcv.new_files()}\n{err}\n{rcv.err}")

    # --- 3b. kill -9 of each source-side process mid-copy ------------------
    # sxm-copy --live killed: migrate sees it fail and rolls back.
    f = Faulted(S, "3b", seed + 10, r"== copy", 0.5, "--copy-rate=4M")
    src, w, rcv = f.src, f.w, f.rcv
    killed = kill_children(f.p.pid, "sxm-copy")
    rc, err, rrc = f.finish()
    st = src.state()
    went_on = writes_go_on(w)
    w.finish()
    bad = w.check(src.uri)
    src.stop()
    tap.ok(killed and rc == 1 and st == "idle" and went_on and
           not bad and rrc == 1 and rcv.new_files() == [],
           "sxm-copy --live killed (-9) mid-copy: exit 1, mirror idle, "
           "writes go on, destination clean",
           f"killed={killed} rc={rc} st={st} {w.failed} {bad[:3]} "
           f"rrc={rrc}\n{err}\n{rcv.err}")

    # The VM's own nbdkit (source, with the filter) killed: the guest loses
    # its disk server, as with any crash; migrate rolls back, the
    # destination is cleaned, and the source VHD is consistent with every
    # acknowledged write (they all went to allocated blocks).
    f = Faulted(S, "3c", seed + 11, r"== copy", 0.5, "--copy-rate=4M")
    src, w, rcv = f.src, f.w, f.rcv
    src.proc.kill()
    src.proc.wait()
    rc, err, rrc = f.finish()
    w.finish()
    with nbdkit(S, "-r", src.vhd) as uri:
        bad = w.check(uri)
    tap.ok(rc == 1 and rrc == 1 and rcv.new_files() == [] and
           vhd_check(src.vhd) and not bad,
           "the VM's nbdkit killed (-9) mid-copy: exit 1, destination clean, "
           f"source VHD checks clean with all {len(w.model)} acknowledged "
           "blocks", f"rc={rc} rrc={rrc} bad={bad[:3]}\n{err}\n{rcv.err}")

    # sxm migrate itself killed: nobody is left to roll back on the
    # source.  The destination gives up at its deadline (--expires) and
    # deletes its VHDs; the mirror then breaks and the guest writes on; no
    # process of the dead migrate is left behind.
    f = Faulted(S, "3d", seed + 12, r"== copy", 0.5, "--copy-rate=4M",
                expires=6)
    src, w, rcv = f.src, f.w, f.rcv
    f.p.kill()
    f.p.wait()
    rrc = rcv.finish(timeout=60)
    time.sleep(1.0)
    st = src.state()
    went_on = writes_go_on(w)
    left = subprocess.run(["pgrep", "-af", src.ctl], capture_output=True,
                          text=True).stdout.splitlines()
    left = [x for x in left if "nbdkit" not in x]
    subprocess.run([os.path.join(ROOT, "client", "sxm-mirror"), src.ctl,
                    "abort"], capture_output=True)
    w.finish()
    bad = w.check(src.uri)
    src.stop()
    tap.ok(rrc == 1 and rcv.new_files() == [] and st == "broken" and
           went_on and not bad and not left,
           "sxm migrate killed (-9): the destination cleans up at its "
           "deadline, the mirror breaks, the guest writes on, no process "
           "left", f"rrc={rrc} new={rcv.new_files()} st={st} "
           f"went_on={went_on} left={left}\n{rcv.err}")

    # --- 3e. committed, but the destination never confirms: in doubt -------
    src = Source(os.path.join(S, "src3e"), seed + 13)
    rcv = Receiver(os.path.join(S, "sr3e"), memory="uffd",
                   env=dict(nbdkit_env(), XENMEM_TEST_NO_RUNNING="1"))
    rc, out, err = migrate(rcv.token_file, [src.ctl], "--memory", "uffd",
                           "--memory-opt=--guest-mem=16M")
    rrc = rcv.finish()
    st = src.state()
    p = subprocess.run([os.path.join(ROOT, "client", "sxm-mirror"), src.ctl,
                        "complete"], capture_output=True, text=True)
    src.stop()
    tap.ok(rc == 3 and "IN DOUBT" in err and st == "ready" and rrc == 0 and
           len(rcv.new_files()) == 1 and p.returncode == 0,
           "no 'running' after the commit: exit 3, says IN DOUBT, disks left "
           "ready (writes held) for the admin, who completes",
           f"rc={rc} st={st} rrc={rrc} {p.stdout}\n{err}\n{rcv.err}")

    # --- 4. tokens: garbage, expired, wrong key ---------------------------
    src = Source(os.path.join(S, "src4"), seed + 3)
    rcv = Receiver(os.path.join(S, "sr4"), expires=60)
    tf = os.path.join(S, "bad.token")
    cases = [("garbage", "sxm1.!!!$(touch pwned)", 2, "not an sxm token"),
             ("bad base64 body", "sxm1." + base64.b64encode(b"host=a b\n").decode(), 2, "bad host"),
             ("expired", retoken(rcv.token, expires=int(time.time()) - 5), 2, "expired"),
             ("unknown field", retoken(rcv.token, v="1\nevil=1"), 2, "unknown field")]
    for name, tok, want, msg in cases:
        open(tf, "w").write(tok + "\n")
        rc, out, err = migrate(tf, [src.ctl])
        tap.ok(rc == want and msg in err and src.state() == "idle",
               f"token {name}: exit {want}, says '{msg}', nothing started",
               f"rc={rc}\n{err}")
    # --memory xen: the source names its domain, the destination does not
    # (libxl creates it there from the sender's configuration).
    open(tf, "w").write(rcv.token + "\n")
    rc, out, err = migrate(tf, [src.ctl], "--memory", "xen")
    tap.ok(rc == 2 and "xen:DOMID" in err and src.state() == "idle",
           "migrate --memory xen without a domid: exit 2, nothing started",
           f"rc={rc}\n{err}")
    p = subprocess.run([SXM, "receive", "--sr", os.path.join(S, "sr4"),
                        "--disk", "1M", "--memory", "xen:7"],
                       capture_output=True, text=True, timeout=60)
    tap.ok(p.returncode == 2 and "no DOMID" in p.stderr,
           "receive --memory xen:DOMID: exit 2 (the domain is created there)",
           p.stderr)
    p = subprocess.run([os.path.join(ROOT, "client", "sxm-mirror"), src.ctl,
                        "flush"], capture_output=True, text=True)
    tap.ok(p.returncode == 0 and '"state":"idle"' in p.stdout,
           "sxm-mirror flush on an idle mirror flushes the disk alone",
           p.stdout + p.stderr)
    open(tf, "w").write(retoken(rcv.token, key="ab" * 32) + "\n")
    rc, out, err = migrate(tf, [src.ctl])
    tap.ok(rc == 1 and src.state() == "idle" and "rolled back" in err,
           "token with a wrong key: the mirror cannot start, exit 1, idle",
           f"rc={rc}\n{err}")
    # The receiver was not told (the key is wrong): it gives up when
    # stopped, and removes what it created.
    rcv.proc.send_signal(signal.SIGTERM)
    rrc = rcv.finish()
    tap.ok(rrc != 0 and rcv.new_files() == [],
           "sxm receive stopped by SIGTERM: its new VHD is removed",
           f"{rrc} {rcv.new_files()}\n{rcv.err}")
    tap.ok(not os.path.exists(os.path.join(os.getcwd(), "pwned")) and
           not os.path.exists(os.path.join(S, "pwned")),
           "no token text was ever run as a command")

    # --- 5. SR full: refused before starting, and ENOSPC during the copy ---
    mnt = os.path.join(S, "small")
    with tmpfs(mnt, "24M") as mounted:
        if tap.requires(mounted, "SR full: cannot mount a small tmpfs here",
                        count=2):
            # 40 MiB of data for an SR with 24 MiB: refused up front.
            rcv = Receiver(os.path.join(mnt, "sr"))
            rc, out, err = migrate(rcv.token_file, [src.ctl])
            # Refused before anything moved: the receiver is left waiting
            # (the token stays usable), and cleans up when stopped.
            waiting = rcv.proc.poll() is None
            rcv.proc.send_signal(signal.SIGTERM)
            rrc = rcv.finish()
            tap.ok(rc == 4 and "SR is full" in err and src.state() == "idle"
                   and "the token stays usable" in err and waiting
                   and rrc != 0 and rcv.new_files() == [],
                   "SR full: refused before starting (exit 4), the "
                   "destination still waiting (token usable); stopped, it "
                   "removes its VHD", f"rc={rc} rrc={rrc}\n{err}\n{rcv.err}")
            # The token said there was room; then something else took it.
            subprocess.run(["umount", mnt], check=True)
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64M", "tmpfs",
                            mnt], check=True)
            rcv = Receiver(os.path.join(mnt, "sr"))
            with open(os.path.join(mnt, "filler"), "wb") as f:
                f.write(b"\1" * (40 * MiB))
            w = Writer(src.uri, seed + 4).start()
            rc, out, err = migrate(rcv.token_file, [src.ctl])
            rrc = rcv.finish()
            st = src.state()
            w.finish()
            bad = w.check(src.uri)
            tap.ok(rc == 1 and st == "idle" and not w.failed and not bad and
                   rrc == 1 and rcv.new_files() == [],
                   "SR fills up during the copy: exit 1, rolled back, the "
                   "guest's writes unharmed, destination clean",
                   f"rc={rc} st={st} {w.failed} {bad[:3]} rrc={rrc}\n{err}\n{rcv.err}")
    src.stop()

    # --- 6. hostile names everywhere, offline too ----------------------------
    hd = os.path.join(S, HOSTILE)
    tmp = os.path.join(hd, "tmp " + HOSTILE)
    os.makedirs(tmp)
    env = dict(nbdkit_env(), TMPDIR=tmp)
    src = Source(os.path.join(hd, "src"), seed + 5, name="vm " + HOSTILE)
    w = Writer(src.uri, seed + 5).start()
    rcv = Receiver(os.path.join(hd, "sr " + HOSTILE), env=env)
    rc, out, err = migrate(rcv.token_file, [src.ctl], env=env)
    w.finish()
    rrc = rcv.finish()
    new = rcv.new_files()
    src.stop()
    tap.ok(rc == 0 and rrc == 0 and len(new) == 1 and
           vhd_equal(src.vhd, os.path.join(rcv.sr, new[0])),
           "hostile SR, socket and TMPDIR names: migrated, byte-identical",
           f"rc={rc} rrc={rrc} {new}\n{err}\n{rcv.err}")
    rcv = Receiver(os.path.join(hd, "sr2 " + HOSTILE), env=env)
    rc, out, err = migrate(rcv.token_file, [src.vhd], env=env, sub="copy")
    rrc = rcv.finish()
    new = rcv.new_files()
    tap.ok(rc == 0 and rrc == 0 and len(new) == 1 and
           vhd_equal(src.vhd, os.path.join(rcv.sr, new[0])),
           "sxm copy (--offline): a stopped VHD copied, verified, committed",
           f"rc={rc} rrc={rrc} {new}\n{err}\n{rcv.err}")
    found = subprocess.run(["find", S, "-name", "pwned"], capture_output=True,
                           text=True).stdout
    tap.ok(not found and not os.path.exists("pwned"),
           "no hostile name was ever run as a command", found)


run_test(main)
