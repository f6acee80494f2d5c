#!/usr/bin/python3
# xenmem end to end with the uffd test guest (a real workload under the
# kernel's userfaultfd dirty tracking): over a unix socket and over
# TCP+TLS on 127.0.0.1, at dirty rates from 0 to one the link cannot keep
# up with (must stop at the round limit and still migrate correctly); the
# moved guest must keep counting with a verifying checksum and its memory
# must equal the source's at pause (sha256 in the stream).  Failures: wrong
# PSK, PSK file readable by others, plaintext to a non-loopback address,
# receiver killed mid-stream, stream bytes flipped or cut by a proxy at
# random offsets: the source guest is resumed and keeps counting, the
# receiver refuses with a message.  Seeds: XENMEM_SEED.
import json
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import ROOT, run_test, tap  # noqa: E402

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
    # A guest dirtying far faster than the (limited) link: never
    # converges; stops at the round limit, and still moves correctly.
    sj, rj = migrate("non-converging guest: stops at --max-rounds, migrated",
                     "unix:" + os.path.join(S, "m3.sock"),
                     ["--guest-mem=64M", "--dirty-rate=512M",
                      "--rate=64M", "--max-rounds=4", "--downtime-ms=1"])
    tap.ok(sj.get("stop_reason") in ("round limit",
                                     "dirty set stopped shrinking") and
           sj.get("rounds", 0) <= 5,
           "non-converging: the stop reason says why", sj)

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
    for be in ("xen", "kvm"):
        p = subprocess.run([XENMEM, "send", "--backend=" + be, "--domid=1",
                            "unix:" + os.path.join(S, "x.sock")],
                           capture_output=True, text=True, timeout=30)
        tap.ok(p.returncode == 4 and p.stderr.strip(),
               f"{be} backend here: refuses with a message", p.stderr)
    p = subprocess.run([XENMEM, "receive", "--backend=xen", "--domid=3",
                        "unix:" + os.path.join(S, "x.sock")],
                       capture_output=True, text=True, timeout=30)
    tap.ok(p.returncode == 2 and "no --domid" in p.stderr,
           "xen receive with --domid: exit 2 (libxl creates the domain)",
           p.stderr)
    p = subprocess.run([XENMEM, "send", "--backend=uffd", "--frob"],
                       capture_output=True, text=True)
    tap.eq(p.returncode, 2, "unknown option: exit 2")

    # --- receiver killed mid-stream: the source resumes -------------------
    addr = "unix:" + os.path.join(S, "k.sock")
    r = start_recv(addr)
    sp = subprocess.Popen([XENMEM, "send", "--backend=uffd", "-q", "--json",
                           "--guest-mem=256M", "--dirty-rate=8M",
                           "--rate=64M", "--check=0.3", "--timeout=20", addr],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
    time.sleep(1.0 + rng.random())
    r.kill()
    r.wait()
    out, err = sp.communicate(timeout=60)
    sj = parse(out)
    tap.ok(sp.returncode == 1 and sj.get("check", {}).get("ok") is True and
           "resumed" in err,
           "receiver killed mid-stream: source resumed and keeps counting",
           f"{sp.returncode} {sj} {err}")

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


run_test(main)
