#!/usr/bin/python3
# xenmem end to end with the uffd test guest (a real workload under the
# kernel's userfaultfd dirty tracking): over a unix socket and over
# TCP+TLS on 127.0.0.1, at dirty rates from 0 to one the link cannot keep
# up with (auto-converge throttles the guest until the downtime target is
# met, the guest at full speed again after the move or a failed send;
# without it: stops at the round limit and still migrates correctly); the
# moved guest must keep counting with a verifying checksum and its memory
# must equal the source's at pause (sha256 in the stream).  Failures: wrong
# PSK, PSK file readable by others, plaintext to a non-loopback address,
# receiver killed mid-stream, stream bytes flipped or cut by a proxy at
# random offsets: the source guest is resumed and keeps counting, the
# receiver refuses with a message.  Disks (real nbdkit memory servers,
# shared by source and destination as shared storage would be): the moved
# guest's every record slot verifies; a receiver with the wrong disks
# refuses and the source runs on.  The VM monitor: a guest that persists
# (xenmem guest, receive --monitor) migrates A -> B -> A through
# `xenmem send --guest`, survives bad requests and failed sends, quits.
# Seeds: XENMEM_SEED.
import json
import os
import random
import secrets
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import ROOT, nbdkit, run_test, tap  # noqa: E402

XENMEM = os.path.join(ROOT, "xenmem", "xenmem")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_recv(addr, *args):
    return subprocess.Popen([XENMEM, "receive", "--backend=uffd", "-q",
                             "--json", "--timeout=20", *args, addr],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def send(addr, *args, timeout=120, hook=()):
    p = subprocess.run([XENMEM, "send", "--backend=uffd", "-q", "--json",
                        "--timeout=20", *args, addr,
                        *(("--", *hook) if hook else ())], capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, parse(p.stdout), p.stderr


def parse(out):
    try:
        return json.loads(out.strip().splitlines()[-1])
    except Exception:
        return {"unparsed": out}


def finish(r, timeout=60):
    out, err = r.communicate(timeout=timeout)
    return r.returncode, parse(out), err


def wait_socket(path, proc, timeout=30):
    """True once PATH is a socket (a monitor is up); False if PROC exited
    first."""
    deadline = time.time() + timeout
    while not (os.path.exists(path) and stat.S_ISSOCK(os.stat(path).st_mode)):
        if proc.poll() is not None or time.time() > deadline:
            return False
        time.sleep(0.02)
    return True


def monitor(sock, *words, cwd=None):
    """xenmem monitor SOCK WORDS: (exit, parsed reply, stderr)."""
    p = subprocess.run([XENMEM, "monitor", sock, *words], capture_output=True,
                       text=True, timeout=120, cwd=cwd)
    return p.returncode, parse(p.stdout), p.stderr


def vm_proc(args, log, cwd=None):
    """A long-running xenmem (guest, or receive --monitor), output to LOG."""
    f = open(log, "w")
    return subprocess.Popen([XENMEM, *args], stdout=f, stderr=subprocess.STDOUT,
                            cwd=cwd)


def ended(proc, timeout=30):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def disk_check_ok(j, records_min=1):
    c = j.get("check", j)
    return (c.get("ok") is True and c.get("records_verified", 0) >= records_min
            and c.get("records_bad") == 0 and c.get("disk_reads_bad") == 0
            and c.get("disk_seq_advanced") is True and
            c.get("disk_seq", 0) > c.get("disk_seq_at_resume", 0))


# An outside checker of the guest's disk records, from doc/xenmem.pod's
# DISK RECORDS alone (not from backend-uffd.c).
M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def splitmix(z):
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & M64
    return z ^ (z >> 31)


def fnv1a(b):
    h = 0x811C9DC5
    for x in b:
        h = ((h ^ x) * 0x01000193) & 0xFFFFFFFF
    return h


def record(q, nonce, disk, slot):
    r = bytearray(b"SXMDREC1" + struct.pack("<QQII", q, nonce, disk, slot))
    s = (nonce ^ (q * GOLDEN)) & M64
    while len(r) < 4092:
        s = (s + GOLDEN) & M64
        r += struct.pack("<Q", splitmix(s))
    del r[4092:]
    return bytes(r + struct.pack("<I", fnv1a(r)))


def slot_offset(size, slot):
    return ((slot % 4) * size // 4 & ~((2 << 20) - 1)) + slot // 4 * 4096


def check_disks(uris, slots):
    """Read every slot; the newest record found fixes disk_seq, and every
    slot must then hold exactly the newest record <= it that maps there.
    (records checked, error or None)."""
    import nbd
    n, found = len(uris), {}
    for d, uri in enumerate(uris):
        h = nbd.NBD()
        h.connect_uri(uri)
        size = h.get_size()
        for slot in range(slots):
            found[d, slot] = h.pread(4096, slot_offset(size, slot))
        h.shutdown()
    recs = [struct.unpack("<QQ", b[8:24]) for b in found.values()
            if b[:8] == b"SXMDREC1"]
    if not recs:
        return 0, "no records"
    seq, nonce = max(recs)
    checked = 0
    for (d, slot), b in found.items():
        # the newest q <= seq with (q-1) % n == d, (q-1) // n % slots == slot
        j = (seq - 1 - d) // n if seq > d else -1
        if j < slot:
            continue
        q = d + 1 + n * (slot + (j - slot) // slots * slots)
        if b != record(q, nonce, d, slot):
            return checked, f"disk {d} slot {slot}: not record {q}"
        checked += 1
    return checked, None


def migrate(tapname, addr, send_args=(), recv_args=()):
    r = start_recv(addr, "--check=0.3", *recv_args)
    rc, sj, se = send(addr, "--verify-memory", *send_args)
    rrc, rj, re_ = finish(r)
    ok = (rc == 0 and rrc == 0 and sj.get("result") == "migrated" and
          rj.get("result") == "running" and rj.get("check", {}).get("ok"))
    tap.ok(ok, tapname, f"send rc={rc} {sj} {se}\nrecv rc={rrc} {rj} {re_}")
    return sj, rj


class Proxy:
    """TCP proxy from a listening port to TARGET that flips one byte at
    offset FLIP, or closes both sides after CUT bytes, of the sender's
    stream."""

    def __init__(self, target, flip=None, cut=None):
        self.target, self.flip, self.cut = target, flip, cut
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(1)
        self.port = self.ls.getsockname()[1]
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        a, _ = self.ls.accept()
        b = socket.create_connection(self.target)

        def back():
            try:
                while True:
                    d = b.recv(65536)
                    if not d:
                        break
                    a.sendall(d)
            except OSError:
                pass
            try:
                a.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        threading.Thread(target=back, daemon=True).start()
        n = 0
        try:
            while True:
                d = bytearray(a.recv(65536))
                if not d:
                    break
                if self.flip is not None and n <= self.flip < n + len(d):
                    d[self.flip - n] ^= 0x40
                if self.cut is not None and n + len(d) >= self.cut:
                    b.sendall(d[:self.cut - n])
                    break
                n += len(d)
                b.sendall(d)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        time.sleep(0.5)
        a.close()
        b.close()


def main(scratch):
    seed = int(os.environ.get("XENMEM_SEED", random.randrange(1 << 30)))
    tap.diag(f"XENMEM_SEED={seed}")
    rng = random.Random(seed)
    S = scratch
    psk = os.path.join(S, "keys.psk")
    with open(psk, "w") as f:
        f.write("sxm:" + secrets.token_hex(32) + "\n")
    os.chmod(psk, 0o600)
    badpsk = os.path.join(S, "bad.psk")
    with open(badpsk, "w") as f:
        f.write("sxm:" + secrets.token_hex(32) + "\n")
    os.chmod(badpsk, 0o600)

    # --- happy paths --------------------------------------------------
    sj, rj = migrate("unix socket, idle guest: migrated, guest continues",
                     "unix:" + os.path.join(S, "m1.sock"),
                     ["--guest-mem=64M"])
    tap.ok(sj.get("zero_pages", 0) > 0 and
           sj.get("wire_over_ram", 9) < 1.0,
           "zero pages go as markers (wire bytes < RAM)", sj)
    sj, rj = migrate("TCP+TLS (PSK), 16 MiB/s dirtying guest",
                     f"tcp:127.0.0.1:{free_port()}",
                     ["--guest-mem=128M", "--dirty-rate=16M", "--warmup=0.2",
                      "--tls-psk=" + psk], ["--tls-psk=" + psk])
    tap.ok(sj.get("tls") is True and sj.get("rounds", 0) >= 2 and
           sj.get("stop_reason") == "predicted downtime under the target",
           "TLS on, pre-copy rounds, stopped on the downtime target", sj)
    # A guest dirtying far faster than the (limited) link, with
    # auto-converge off: never converges; stops at the round limit (or
    # when the dirty set stops shrinking), pays for it in downtime, and
    # still moves correctly.
    sj, rj = migrate("--no-auto-converge, non-converging guest: stops at "
                     "--max-rounds, migrated",
                     "unix:" + os.path.join(S, "m3.sock"),
                     ["--guest-mem=64M", "--dirty-rate=512M",
                      "--rate=64M", "--max-rounds=4", "--no-auto-converge"])
    tap.ok(sj.get("stop_reason") in ("round limit",
                                     "dirty set stopped shrinking") and
           sj.get("rounds", 0) <= 5,
           "non-converging: the stop reason says why", sj)
    tap.ok(sj.get("auto_converge") is False and sj.get("throttle_max") == 0
           and all(r.get("throttle") == 0 for r in sj.get("round_stats", []))
           and sj.get("downtime_ms", 0) > 300,
           "--no-auto-converge: never throttled, and the downtime is long "
           f"({sj.get('downtime_ms')} ms for a 30 ms target)", sj)
    auto_converge_tests(S, rng)

    # --progress=json:FD: one line per round while it runs, the same
    # rounds as the final report.
    addr = "unix:" + os.path.join(S, "m4.sock")
    r = start_recv(addr)
    rfd, wfd = os.pipe()
    p = subprocess.Popen([XENMEM, "send", "--backend=uffd", "-q", "--json",
                          "--timeout=20", "--guest-mem=64M",
                          "--dirty-rate=64M", "--rate=128M",
                          f"--progress=json:{wfd}", addr],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, pass_fds=(wfd,))
    os.close(wfd)
    with os.fdopen(rfd) as f:
        lines = f.read().splitlines()
    out, err = p.communicate(timeout=120)
    rrc, rj, re_ = finish(r)
    sj = parse(out)
    try:
        ev = [json.loads(x) for x in lines]
    except ValueError:
        ev = [{"unparsed": lines}]
    stats = sj.get("round_stats", [])
    tap.ok(p.returncode == 0 and rrc == 0 and len(ev) == len(stats) >= 2 and
           all(e.get("version") == 1 and e.get("event") == "round"
               for e in ev) and
           [e.get("round") for e in ev] == [x.get("round") for x in stats] and
           [e.get("pages") for e in ev] == [x.get("pages") for x in stats] and
           ev[-1].get("paused") is True and
           not any(e.get("paused") for e in ev[:-1]),
           "--progress=json:FD: a line per round, as the report has them, "
           "the paused one last", f"{lines}\n{stats}\n{err}")
    p = subprocess.run([XENMEM, "receive", "--backend=uffd",
                        "--progress=json", addr], capture_output=True,
                       text=True, timeout=30)
    tap.ok(p.returncode == 2 and "send only" in p.stderr,
           "--progress on receive: exit 2", p.stderr)

    # --- refusals --------------------------------------------------------
    port = free_port()
    # The receiver drops the stranger and waits on for the real sender
    # (here only until its 3-second accept deadline).
    r = start_recv(f"tcp:127.0.0.1:{port}", "--tls-psk=" + psk,
                   "--accept-timeout=3")
    rc, sj, se = send(f"tcp:127.0.0.1:{port}", "--tls-psk=" + badpsk,
                      "--check=0.2")
    rrc, rj, re_ = finish(r)
    tap.ok(rc != 0 and rrc != 0 and "TLS" in se and "TLS" in re_ and
           "still waiting" in re_,
           "wrong PSK: both sides refuse with a TLS error, the receiver "
           "only at its deadline",
           f"{rc} {se}\n{rrc} {re_}")
    os.chmod(badpsk, 0o644)
    rc, sj, se = send(f"tcp:127.0.0.1:{port}", "--tls-psk=" + badpsk)
    tap.ok(rc == 4 and "0644" in se and badpsk in se,
           "a PSK file readable by others is refused, named", se)
    rc, sj, se = send("tcp:192.0.2.1:7001", "--timeout=2")
    tap.ok(rc == 4 and "insecure" in se,
           "plaintext TCP to a non-loopback host refused", se)
    p = subprocess.run([XENMEM, "send", "--backend=xen", "--domid=1",
                        "unix:" + os.path.join(S, "x.sock")],
                       capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 4 and p.stderr.strip(),
           "xen backend here: refuses with a message", p.stderr)
    # There is no kvm backend (the stub that refused was removed).
    p = subprocess.run([XENMEM, "send", "--backend=kvm", "--domid=1",
                        "unix:" + os.path.join(S, "x.sock")],
                       capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 2 and
           "unknown backend 'kvm' (xen, uffd or none)" in p.stderr,
           "kvm backend: refused as an unknown backend, exit 2", p.stderr)
    p = subprocess.run([XENMEM, "receive", "--backend=xen", "--domid=3",
                        "unix:" + os.path.join(S, "x.sock")],
                       capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 2 and "no --domid" in p.stderr,
           "xen receive with --domid: exit 2 (libxl creates the domain)",
           p.stderr)
    p = subprocess.run([XENMEM, "send", "--backend=uffd", "--frob"],
                       capture_output=True, text=True)
    tap.eq(p.returncode, 2, "unknown option: exit 2")
    # The xen disk map and check-only: refused where they make no sense,
    # before anything is opened (the xen paths run in tests/xen.t).
    u = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    x = "unix:" + os.path.join(S, "x.sock")
    plain = os.path.join(S, "not-a-script")
    with open(plain, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(plain, 0o644)
    for argv, want, what in (
            (["send", "--backend=uffd", f"--disk-map=/dev/nbd0={u}", x],
             "for the xen backend", "--disk-map with uffd"),
            (["send", "--backend=xen", "--domid=1", "--disk-map=/dev/nbd0=x", x],
             "is not a UUID", "--disk-map to something not a UUID"),
            (["send", "--backend=xen", "--domid=1", "--disk-map=/dev/nbd0", x],
             "expected TARGET=UUID", "--disk-map without '='"),
            (["send", "--backend=xen", "--domid=1", f"--disk-map=/dev/a={u}",
              f"--disk-map=/dev/b={u}", x], "mapped twice",
             "two disks to one UUID"),
            (["receive", "--backend=xen", f"--disk-map={u}=/dev/null", x],
             "not a block device", "receive --disk-map to a character device"),
            (["receive", "--backend=xen", f"--disk-map={u}=/nonexistent", x],
             "not a block device", "receive --disk-map to a missing device"),
            (["send", "--backend=uffd", "--check-only", x],
             "--check-only is for send with the xen backend",
             "--check-only with uffd"),
            (["receive", "--backend=xen", "--check-only", x],
             "--check-only is for send", "--check-only on receive"),
            (["receive", "--backend=xen", "--disk-script=/bin/true", x],
             "--disk-script is for receive --backend=xen with --disk-map",
             "--disk-script without a disk map"),
            (["send", "--backend=xen", "--domid=1", f"--disk-map=/dev/a={u}",
              "--disk-script=/bin/true", x], "--disk-script is for receive",
             "--disk-script on send"),
            (["receive", "--backend=xen", f"--disk-map={u}=/dev/null",
              "--disk-script=block", x], "block is not an executable file",
             "--disk-script by a relative name"),
            (["receive", "--backend=xen", f"--disk-map={u}=/dev/null",
              f"--disk-script={plain}", x],
             f"{plain} is not an executable file",
             "--disk-script not executable")):
        p = subprocess.run([XENMEM] + argv, capture_output=True, text=True,
                           timeout=30)
        tap.ok(p.returncode == 2 and want in p.stderr,
               f"{what}: exit 2, said", p.stderr)

    # --- receiver killed mid-stream: the source resumes -------------------
    rc, sj, err = send_kill_receiver(
        "unix:" + os.path.join(S, "k.sock"), 1.0 + rng.random(),
        "--guest-mem=256M", "--dirty-rate=8M", "--rate=64M", "--check=0.3")
    tap.ok(rc == 1 and sj.get("check", {}).get("ok") is True and
           "resumed" in err,
           "receiver killed mid-stream: source resumed and keeps counting",
           f"{rc} {sj} {err}")

    # --- sender killed mid-stream: the receiver discards -------------------
    addr2 = "unix:" + os.path.join(S, "ks.sock")
    r = start_recv(addr2)
    sp = subprocess.Popen([XENMEM, "send", "--backend=uffd", "-q",
                           "--guest-mem=128M", "--dirty-rate=8M",
                           "--rate=32M", "--timeout=20", addr2],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.5 + rng.random())
    sp.kill()
    sp.communicate()
    rrc, rj, re_ = finish(r)
    tap.ok(rrc == 1 and rj.get("result") == "discarded",
           "sender killed mid-stream: the receiver discards, exit 1",
           f"recv {rrc} {rj} {re_}")

    # --- the hook (sxm migrate's disk flush and switchover) --------------
    # It runs twice (just before the pause, and while the guest is paused,
    # before END), as an argv (no shell: a hostile file name stays a file
    # name); its failure keeps the guest on the source and the receiver
    # discards.
    marker = os.path.join(S, "hook $(touch pwned) 'q\" x")
    addr = "unix:" + os.path.join(S, "h.sock")
    r = start_recv(addr, "--check=0.2")
    rc, sj, se = send(addr, "--guest-mem=64M", "--dirty-rate=4M",
                      hook=("touch", marker))
    rrc, rj, re_ = finish(r)
    tap.ok(rc == 0 and rrc == 0 and os.path.exists(marker) and
           not os.path.exists(os.path.join(S, "pwned")) and
           0 < sj.get("hook_ms", -1) <= sj.get("downtime_ms", 0) and
           rj.get("check", {}).get("ok"),
           "the hook's paused phase runs inside the downtime, argv not shell",
           f"send {rc} {sj} {se}\nrecv {rrc} {rj} {re_}")
    r = start_recv(addr)
    rc, sj, se = send(addr, "--guest-mem=64M", "--dirty-rate=4M",
                      "--check=0.2", hook=("sh", "-c", "exit 7"))
    rrc, rj, re_ = finish(r)
    tap.ok(rc == 1 and rrc == 1 and "exit status 7" in se and
           sj.get("check", {}).get("ok") and rj.get("result") == "discarded",
           "the hook fails: source resumed and verified, receiver "
           "discards", f"send {rc} {sj} {se}\nrecv {rrc} {rj} {re_}")
    # --- backend none: the commit handshake without memory ---------------
    r = subprocess.Popen([XENMEM, "receive", "--backend=none", "-q", "--json",
                          "--timeout=20", addr], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    p = subprocess.run([XENMEM, "send", "--backend=none", "-q", "--json",
                        "--timeout=20", addr, "--", "true"],
                       capture_output=True, text=True, timeout=60)
    rrc, rj, re_ = finish(r)
    sj = parse(p.stdout)
    tap.ok(p.returncode == 0 and rrc == 0 and sj.get("pages_sent") == 1 and
           rj.get("result") == "running",
           "backend none: one zero page, END/loaded/commit/running",
           f"send {p.returncode} {sj} {p.stderr}\nrecv {rrc} {rj} {re_}")
    r = start_recv(addr)
    p = subprocess.run([XENMEM, "send", "--backend=none", "-q", "--json",
                        "--timeout=20", addr], capture_output=True, text=True,
                       timeout=60)
    rrc, rj, re_ = finish(r)
    tap.ok(p.returncode == 1 and rrc == 1 and "backend" in re_ + str(rj),
           "a uffd receiver refuses a none stream",
           f"send {p.returncode} {p.stdout} {p.stderr}\nrecv {rrc} {rj} {re_}")

    # --- committed, but no "running": the sender is in doubt ---------------
    r = subprocess.Popen([XENMEM, "receive", "--backend=uffd", "-q", "--json",
                          "--timeout=20", addr], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, XENMEM_TEST_NO_RUNNING="1"))
    rc, sj, se = send(addr, "--guest-mem=16M", "--dirty-rate=1M")
    rrc, rj, re_ = finish(r)
    tap.ok(rc == 3 and sj.get("result") == "in-doubt" and
           "stays paused" in se and rrc == 0 and rj.get("result") == "running",
           "no 'running' after the commit: sender exits 3 (in doubt), source "
           "left paused; the receiver runs the guest",
           f"send {rc} {sj} {se}\nrecv {rrc} {rj} {re_}")

    # --- corruption and truncation at random offsets ---------------------
    for i in range(4):
        port = free_port()
        r = start_recv(f"tcp:127.0.0.1:{port}")
        size_hint = 8 * 1024 * 1024
        off = rng.randrange(0, size_hint)
        kind = "flip" if i % 2 == 0 else "cut"
        px = Proxy(("127.0.0.1", port), **{kind: off})
        rc, sj, se = send(f"tcp:127.0.0.1:{px.port}", "--guest-mem=64M",
                          "--dirty-rate=4M", "--check=0.2",
                          "--verify-memory")
        rrc, rj, re_ = finish(r)
        # A flip inside page data that a later round overwrites would
        # still be caught by the record checksum; nothing may pass.
        tap.ok(rc == 1 and rrc == 1 and sj.get("check", {}).get("ok") and
               rj.get("result") == "discarded" and rj.get("error"),
               f"stream {kind} at byte {off}: receiver refuses "
               "and discards, source resumed and verified",
               f"send {rc} {sj} {se}\nrecv {rrc} {rj} {re_}")

    disk_tests(S)
    monitor_tests(S, rng)


def send_kill_receiver(addr, after, *args):
    """A send (new test guest, ARGS) whose receiver is killed AFTER
    seconds: (exit status, report, stderr)."""
    r = start_recv(addr)
    # The kill must come mid-stream: on a busy host the receiver can take
    # longer than AFTER to listen (seen: killed before it did, the sender
    # then refused for 20 s), so the clock starts once it listens.
    if addr.startswith("unix:"):
        deadline = time.time() + 30
        while not os.path.exists(addr[5:]) and time.time() < deadline and \
                r.poll() is None:
            time.sleep(0.02)
    sp = subprocess.Popen([XENMEM, "send", "--backend=uffd", "-q", "--json",
                           "--timeout=20", *args, addr],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    time.sleep(after)
    r.kill()
    r.wait()
    out, err = sp.communicate(timeout=60)
    return sp.returncode, parse(out), err


def rate_of(check):
    """The guest's progress a second during a --check."""
    return check.get("progress_rate", 0)


def auto_converge_tests(S, rng):
    # A guest dirtying 8x what the link carries: auto-converge (the
    # default) throttles it until the predicted downtime meets the target.
    sj, rj = migrate("auto-converge: a guest dirtying 8x the link migrates",
                     "unix:" + os.path.join(S, "ac.sock"),
                     ["--guest-mem=64M", "--dirty-rate=256M", "--rate=32M",
                      "--warmup=0.5"], ["--check=1"])
    tap.ok(sj.get("stop_reason") == "predicted downtime under the target"
           and 0 < sj.get("downtime_ms", 1e9) <= 300,
           "auto-converge: stopped on the target, downtime "
           f"{sj.get('downtime_ms')} ms <= 10 x 30 ms", sj)
    rs = sj.get("round_stats", [])
    tap.ok(sj.get("auto_converge") is True and
           20 <= sj.get("throttle_max", 0) <= 99 and
           sj.get("throttled_s", 0) > 0 and rs and
           rs[-1].get("throttle") == sj.get("throttle_max"),
           f"the throttle rose to {sj.get('throttle_max')}%, reported per "
           "round and in total", sj)
    before = sj.get("guest_progress_rate_before", 0)
    live = sj.get("guest_progress_rate_live", 0)
    after = rate_of(rj.get("check", {}))
    tap.ok(before > 0 and live < 0.5 * before and after >= 0.5 * before,
           "the guest ran slower while throttled and at full speed on the "
           f"destination (a second: {before} before, {live} throttled, "
           f"{after} after)", f"{sj}\n{rj}")

    # The throttle never outlives a failed send: the receiver dies while
    # the guest is throttled; the source runs on at its own pace.
    rc, sj, err = send_kill_receiver(
        "unix:" + os.path.join(S, "ack.sock"), 2.0 + rng.random(),
        "--guest-mem=128M", "--dirty-rate=256M", "--rate=32M",
        "--warmup=0.5", "--check=1")
    before = sj.get("guest_progress_rate_before", 0)
    after = rate_of(sj.get("check", {}))
    tap.ok(rc == 1 and sj.get("throttle_max", 0) > 0 and
           sj.get("check", {}).get("ok") is True and before > 0 and
           after >= 0.5 * before,
           "receiver killed while throttled: the source resumed at full "
           f"speed ({before} a second before, {after} after; throttle was "
           f"{sj.get('throttle_max')}%)", f"{rc} {sj} {err}")

    # Options: checked before anything starts.
    for argv, want in (
            (["--max-throttle=100"], "--max-throttle: '100' is not a "
             "percentage from 1 to 99"),
            (["--throttle-step=0"], "--throttle-step: '0' is not a "
             "percentage"),
            (["--throttle-initial=60", "--max-throttle=50"],
             "--throttle-initial (60%) is over --max-throttle (50%)")):
        p = subprocess.run([XENMEM, "send", "--backend=uffd", *argv,
                            "unix:" + os.path.join(S, "none.sock")],
                           capture_output=True, text=True, timeout=30)
        tap.ok(p.returncode == 2 and want in p.stderr,
               f"{' '.join(argv)}: exit 2, said", p.stderr)
    p = subprocess.run([XENMEM, "receive", "--backend=uffd",
                        "--no-auto-converge",
                        "unix:" + os.path.join(S, "none.sock")],
                       capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 2 and "--no-auto-converge is for send only" in
           p.stderr, "receive --no-auto-converge: exit 2, said", p.stderr)


def disk_tests(S):
    addr = "unix:" + os.path.join(S, "d.sock")
    with nbdkit(S, "64M", plugin="memory") as d0, \
            nbdkit(S, "64M", plugin="memory") as d1, \
            nbdkit(S, "32M", plugin="memory") as small:
        for disks in ([d0], [d0, d1]):
            n = len(disks)
            dargs = ["--disk=" + d for d in disks]
            sj, rj = migrate(f"{n} disk(s), shared by both sides: migrated",
                             addr, ["--guest-mem=32M", "--dirty-rate=2M",
                                    "--warmup=0.3", "--disk-rate=200",
                                    *dargs], dargs)
            tap.ok(disk_check_ok(rj, records_min=60) and
                   rj["check"].get("disks") == n and
                   sj.get("disks") == n and sj.get("disk_seq", 0) > 0,
                   f"{n} disk(s): every written slot verifies on the "
                   "destination, disk_seq went on from the source's",
                   f"send {sj}\nrecv {rj}")

        # A receiver with one disk for a two-disk guest refuses it; the
        # source resumes, its records and checksum intact.
        r = start_recv(addr, "--disk=" + d0)
        rc, sj, se = send(addr, "--guest-mem=32M", "--disk=" + d0,
                          "--disk=" + d1, "--check=0.4")
        rrc, rj, re_ = finish(r)
        tap.ok(rc == 1 and rrc == 1 and rj.get("result") == "discarded" and
               "2 disk(s)" in re_ and "given 1" in re_ and
               disk_check_ok(sj) and "resumed" in se,
               "1 disk given for a 2-disk guest: refused, the source runs on "
               "and verifies", f"send {rc} {sj} {se}\nrecv {rrc} {rj} {re_}")
        # Same number, other size: refused, naming the disk and both sizes.
        r = start_recv(addr, "--disk=" + d0, "--disk=" + small)
        rc, sj, se = send(addr, "--guest-mem=32M", "--disk=" + d0,
                          "--disk=" + d1, "--check=0.3")
        rrc, rj, re_ = finish(r)
        tap.ok(rc == 1 and rrc == 1 and "disk 1 is 67108864 bytes" in re_ and
               "33554432" in re_ and disk_check_ok(sj),
               "a destination disk of another size: refused, named",
               f"send {rc} {sj} {se}\nrecv {rrc} {rj} {re_}")
        # Wrong disks behind the right sizes (swapped): the check sees it.
        r = start_recv(addr, "--check=0.3", "--disk=" + d1, "--disk=" + d0)
        rc, sj, se = send(addr, "--guest-mem=32M", "--warmup=0.3",
                          "--disk=" + d0, "--disk=" + d1)
        rrc, rj, re_ = finish(r)
        tap.ok(rrc == 1 and rj.get("check", {}).get("records_bad", 0) > 0 and
               "wrong record" in re_,
               "disks swapped on the destination: the check finds the "
               "records out of place", f"recv {rrc} {rj} {re_}")

    p = subprocess.run([XENMEM, "receive", "--backend=uffd", "--disk=nbd+unix"
                        ":///?socket=" + os.path.join(S, "none.sock"), addr],
                       capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 4 and "none.sock" in p.stderr,
           "an unreachable disk: the receiver refuses at once, exit 4",
           p.stderr)
    with nbdkit(S, "5M", plugin="memory") as tiny:
        rc, sj, se = send(addr, "--disk=" + tiny)
        tap.ok(rc == 4 and "too small" in se and "5242880" in se,
               "a disk too small for the record slots: refused, named", se)
    p = subprocess.run([XENMEM, "receive", "--backend=none", "--disk=x",
                        addr], capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 2 and "--disk" in p.stderr,
           "--disk with a backend without disks: exit 2", p.stderr)


def monitor_tests(S, rng):
    # Each VM process runs in its own directory, the clients in another:
    # a send's relative paths are the client's.
    vmdir, cdir = os.path.join(S, "vm"), os.path.join(S, "client")
    os.makedirs(vmdir)
    os.makedirs(cdir)
    vm1, vm2, vm3 = (os.path.join(S, f"vm{i}.sock") for i in (1, 2, 3))
    with nbdkit(S, "64M", plugin="memory") as disk:
        g1 = vm_proc(["guest", "--monitor=" + vm1, "--guest-mem=32M",
                      "--dirty-rate=2M", "--disk=" + disk, "--disk-rate=100"],
                     os.path.join(S, "vm1.log"), cwd=vmdir)
        up = wait_socket(vm1, g1)
        tap.ok(up and stat.S_IMODE(os.stat(vm1).st_mode) == 0o600,
               "xenmem guest: the monitor socket appears, mode 0600",
               open(os.path.join(S, "vm1.log")).read())
        rc, st, err = monitor(vm1, "status")
        tap.ok(rc == 0 and st.get("guest") == "running" and
               st.get("disks") == 1 and st.get("exit") == 0,
               "monitor status: the guest runs with its disk", f"{rc} {st} {err}")

        # A into B (receive --monitor keeps it and serves vm2).
        r2 = vm_proc(["receive", "--backend=uffd", "-q", "--timeout=20",
                      "--check=0.3", "--json=" + os.path.join(S, "r2.json"),
                      "--disk=" + disk, "--monitor=" + vm2,
                      "unix:" + os.path.join(S, "m2.sock")],
                     os.path.join(S, "vm2.log"), cwd=vmdir)
        p = subprocess.run([XENMEM, "send", "--backend=uffd", "--guest=" + vm1,
                            "-q", "--json=s1.json", "--timeout=20",
                            "unix:" + os.path.join(S, "m2.sock")],
                           capture_output=True, text=True, timeout=120,
                           cwd=cdir)
        s1 = parse(open(os.path.join(cdir, "s1.json")).read()) \
            if os.path.exists(os.path.join(cdir, "s1.json")) else {}
        g1rc = ended(g1)
        tap.ok(p.returncode == 0 and s1.get("result") == "migrated" and
               g1rc == 0 and not os.path.exists(vm1) and
               not os.path.exists(os.path.join(vmdir, "s1.json")),
               "send --guest: migrated, the report in the client's "
               "directory; the first VM process exits 0 and its socket goes",
               f"{p.returncode} {p.stderr} {s1} vm1 exit {g1rc}: "
               + open(os.path.join(S, "vm1.log")).read())
        up = wait_socket(vm2, r2)
        r2j = parse(open(os.path.join(S, "r2.json")).read()) \
            if os.path.exists(os.path.join(S, "r2.json")) else {}
        tap.ok(up and r2j.get("result") == "running" and disk_check_ok(r2j),
               "receive --monitor: report written, checked (disk records "
               "too), then its monitor serves",
               f"{r2j} " + open(os.path.join(S, "vm2.log")).read())
        rc, a, _ = monitor(vm2, "status")
        time.sleep(0.4)
        rc2, b, err = monitor(vm2, "status")
        tap.ok(rc == 0 and rc2 == 0 and b.get("counter", 0) > a.get("counter", 0)
               and b.get("disk_seq", 0) > a.get("disk_seq", 0) and
               b.get("pid") == r2.pid,
               "the received VM runs on: counter and disk_seq advance",
               f"{a}\n{b}\n{err}")

        # Bad requests do not end it.
        rc, j, err = monitor(vm2, "send", "--frob", "unix:x.sock", cwd=cdir)
        rc2, j2, err2 = monitor(vm2, "send", "--guest-mem=64M",
                                "unix:x.sock", cwd=cdir)
        rc3, st, _ = monitor(vm2, "status")
        tap.ok(rc == 2 and j.get("exit") == 2 and "frob" in err and
               rc2 == 2 and "guest-mem" in err2 and rc3 == 0 and
               r2.poll() is None,
               "bad options in a monitor send: exit 2, messages on the "
               "client's stderr, the VM answers on", f"{j} {err}\n{j2} {err2}")
        rc, j, _ = monitor(vm2, "frob")
        tap.ok(rc == 2 and j.get("exit") == 2 and "error" in j,
               "an unknown request: exit 2", j)

        # Failed sends leave it running.
        p = subprocess.run([XENMEM, "send", "--guest=" + vm2, "-q",
                            "--timeout=1", "unix:nothing.sock"],
                           capture_output=True, text=True, timeout=60,
                           cwd=cdir)
        _, a, _ = monitor(vm2, "status")
        time.sleep(0.3)
        _, b, _ = monitor(vm2, "status")
        tap.ok(p.returncode == 4 and b.get("guest") == "running" and
               b.get("counter", 0) > a.get("counter", 0),
               "send --guest to nothing listening: exit 4, the guest runs on",
               f"{p.returncode} {p.stderr} {a} {b}")
        k = start_recv("unix:" + os.path.join(S, "k2.sock"), "--disk=" + disk)
        sp = subprocess.Popen([XENMEM, "send", "--guest=" + vm2, "-q",
                               "--json", "--rate=4M", "--check=0.3",
                               "--timeout=20",
                               "unix:" + os.path.join(S, "k2.sock")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=cdir)
        time.sleep(0.3 + rng.random() * 0.5)
        k.kill()
        k.wait()
        out, err = sp.communicate(timeout=60)
        kj = parse(out)
        _, a, _ = monitor(vm2, "status")
        time.sleep(0.3)
        _, b, _ = monitor(vm2, "status")
        tap.ok(sp.returncode == 1 and disk_check_ok(kj) and
               b.get("counter", 0) > a.get("counter", 0) and
               b.get("disk_seq", 0) > a.get("disk_seq", 0),
               "receiver killed during a monitor send: exit 1, the resumed "
               "guest verifies and runs on", f"{sp.returncode} {kj} {err}\n"
               f"{a}\n{b}")

        # B back into A (a third process, itself under a monitor), quit.
        r3 = vm_proc(["receive", "--backend=uffd", "-q", "--timeout=20",
                      "--check=0.3", "--json=" + os.path.join(S, "r3.json"),
                      "--disk=" + disk, "--monitor=" + vm3,
                      "unix:" + os.path.join(S, "m3.sock")],
                     os.path.join(S, "vm3.log"), cwd=vmdir)
        p = subprocess.run([XENMEM, "send", "--backend=uffd", "--guest=" + vm2,
                            "-q", "--timeout=20",
                            "unix:" + os.path.join(S, "m3.sock")],
                           capture_output=True, text=True, timeout=120,
                           cwd=cdir)
        r2rc = ended(r2)
        up = wait_socket(vm3, r3)
        r3j = parse(open(os.path.join(S, "r3.json")).read()) \
            if os.path.exists(os.path.join(S, "r3.json")) else {}
        rc, st, _ = monitor(vm3, "check", "0.3")
        tap.ok(p.returncode == 0 and r2rc == 0 and up and
               disk_check_ok(r3j) and rc == 0 and disk_check_ok(st) and
               st.get("records_verified", 0) > r2j.get("check", {}).get(
                   "records_verified", 0),
               "migrated back (A -> B -> A): the second VM process exits 0, "
               "the third checks out, every record of the trip verifies",
               f"{p.returncode} {p.stderr} vm2 exit {r2rc}\n{r3j}\n{st}\n"
               + open(os.path.join(S, "vm3.log")).read())
        rc, j, _ = monitor(vm3, "quit")
        r3rc = ended(r3)
        tap.ok(rc == 0 and j.get("exit") == 0 and r3rc == 0 and
               not os.path.exists(vm3), "quit: the VM process exits 0, its "
               "socket goes", f"{rc} {j} exit {r3rc}")
        n, why = check_disks([disk], 1024)
        tap.ok(why is None and n >= st.get("records_verified", 1 << 30),
               "an outside checker following xenmem.pod's record format "
               f"verifies the disk after the trip ({n} records)", why)

        # SIGTERM: the guest is destroyed, the socket removed, exit 1.
        g = vm_proc(["guest", "--monitor=" + vm1, "--disk=" + disk],
                    os.path.join(S, "vm4.log"), cwd=vmdir)
        up = wait_socket(vm1, g)
        g.terminate()
        grc = ended(g)
        tap.ok(up and grc == 1 and not os.path.exists(vm1),
               "SIGTERM: the VM process removes its socket and exits 1",
               f"exit {grc}: " + open(os.path.join(S, "vm4.log")).read())
    rc, j, err = monitor(vm1, "status")
    tap.ok(rc == 4 and "cannot connect" in err,
           "monitor with no VM behind the socket: exit 4", err)


run_test(main)
