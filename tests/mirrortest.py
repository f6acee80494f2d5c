"""Helpers for the mirror filter's tests: the control socket, a guest that
writes through real NBD connections, and whole-export comparison."""

import hashlib
import json
import os
import random
import socket
import subprocess
import tempfile
import threading
import time

from sxmtest import ROOT, MiB, nbdkit_logtext, start_nbdkit, stop_nbdkit

FILTER = os.path.join(ROOT, "nbdkit-plugin", "nbdkit-mirror-filter.so")
SXM_COPY = os.path.join(ROOT, "client", "sxm-copy")
SXM_MIRROR = os.path.join(ROOT, "client", "sxm-mirror")
SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")


def ctl(sock, cmd, sock_timeout=120, **kw):
    """One request on the control socket; the parsed reply."""
    req = dict(cmd=cmd, **kw)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(sock_timeout)
    s.connect(sock)
    s.sendall((json.dumps(req) + "\n").encode())
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return json.loads(buf)


def ctl_raw(sock, line, timeout=30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock)
    s.sendall(line)
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf.decode()


def connect(uri):
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    return h


def export_digest(uri, chunk=4 * MiB):
    """sha256 of the whole export and its size, read through NBD."""
    h = connect(uri)
    size = h.get_size()
    d = hashlib.sha256()
    off = 0
    while off < size:
        n = min(chunk, size - off)
        d.update(h.pread(n, off))
        off += n
    h.shutdown()
    return d.hexdigest(), size


def first_difference(uri_a, uri_b, size, chunk=1 * MiB):
    """Lowest differing offset of two exports, or None."""
    a, b = connect(uri_a), connect(uri_b)
    off = 0
    try:
        while off < size:
            n = min(chunk, size - off)
            x, y = a.pread(n, off), b.pread(n, off)
            if x != y:
                i = next(i for i in range(n) if x[i] != y[i])
                return off + i
            off += n
        return None
    finally:
        a.shutdown()
        b.shutdown()


class Guest:
    """A guest writing through N NBD connections at once: aligned and
    unaligned writes, write_zeroes (with and without NO_HOLE), trims and
    flushes, over overlapping ranges (half the operations hit a small hot
    zone).  Every operation is drawn from random.Random(seed + thread), so
    a run's operation sequences are reproducible from the seed.  Errors
    are collected, never raised."""

    def __init__(self, uri, size, seed, conns=3, hot=None, can_trim=True,
                 can_zero=True):
        self.uri, self.size, self.seed = uri, size, seed
        self.conns = conns
        self.hot = hot or (size // 3, min(size // 3 + 256 * 1024, size))
        self.can_trim, self.can_zero = can_trim, can_zero
        self.stop = threading.Event()
        self.pause = threading.Event()
        self.errors = []
        self.ops = [0] * conns
        self.threads = []

    def _range(self, rng):
        kind = rng.random()
        if kind < 0.5:                          # hot zone, overlapping
            lo, hi = self.hot
        else:
            lo, hi = 0, self.size
        shape = rng.random()
        if shape < 0.4:                         # 4 KiB aligned
            n = 4096 * rng.randint(1, 16)
            off = rng.randrange(lo // 4096, max(lo // 4096 + 1, (hi - n) // 4096)) * 4096
        elif shape < 0.75:                      # 512-byte aligned
            n = 512 * rng.randint(1, 40)
            off = rng.randrange(lo // 512, max(lo // 512 + 1, (hi - n) // 512)) * 512
        else:                                   # byte-unaligned
            n = rng.randint(1, 20000)
            off = rng.randrange(lo, max(lo + 1, hi - n))
        n = min(n, self.size - off)
        return off, max(n, 1)

    def _run(self, i):
        import nbd
        rng = random.Random(self.seed * 1000 + i)
        try:
            h = connect(self.uri)
        except Exception as e:
            self.errors.append(f"conn {i}: connect: {e}")
            return
        while not self.stop.is_set():
            if self.pause.is_set():
                time.sleep(0.001)
                continue
            off, n = self._range(rng)
            if off + n > self.size:
                continue
            r = rng.random()
            try:
                if r < 0.70:
                    h.pwrite(rng.randbytes(n), off)
                elif r < 0.82 and self.can_zero:
                    flags = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.5 else 0
                    h.zero(n, off, flags)
                elif r < 0.90 and self.can_trim:
                    h.trim(n, off)
                elif r < 0.95:
                    h.flush()
                else:
                    h.pwrite(rng.randbytes(n), off, nbd.CMD_FLAG_FUA)
                self.ops[i] += 1
            except Exception as e:
                self.errors.append(f"conn {i}: op at {off}+{n}: {e}")
                break
        try:
            h.shutdown()
        except Exception:
            pass

    def start(self):
        for i in range(self.conns):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)
        return sum(self.ops)


def prefill(uri, size, seed, fraction=0.5, piece=256 * 1024):
    """Random data over about FRACTION of the export, in PIECE runs."""
    rng = random.Random(seed)
    h = connect(uri)
    for off in range(0, size - piece + 1, piece):
        if rng.random() < fraction:
            h.pwrite(rng.randbytes(piece), off)
    h.flush()
    h.shutdown()


def live_copy(ctl_sock, uri, *extra, timeout=300):
    return subprocess.run([SXM_COPY, "-q", "--json", f"--live={ctl_sock}",
                           *extra, uri], capture_output=True, text=True,
                          timeout=timeout)


class Server:
    """nbdkit on a unix socket, for tests that kill or stop it."""

    def __init__(self, scratch, *args, plugin, filters=(), name="srv"):
        self.sock = tempfile.mktemp(prefix=name + ".", suffix=".sock",
                                    dir=scratch)
        self.proc = start_nbdkit(self.sock, *args, plugin=plugin,
                                 filters=filters)
        self.uri = f"nbd+unix:///?socket={self.sock}"

    def logtext(self):
        return nbdkit_logtext(self.proc)

    def kill(self, sig=9):
        self.proc.send_signal(sig)
        if sig == 9:
            self.proc.wait()
        elif sig == 19:
            # SIGSTOP takes effect when the target is next scheduled: on a
            # loaded machine it could still answer a request or two.  Wait
            # until every thread is stopped.
            deadline = time.time() + 10
            while time.time() < deadline:
                states = []
                for t in os.listdir(f"/proc/{self.proc.pid}/task"):
                    try:
                        with open(f"/proc/{self.proc.pid}/task/{t}/stat") as f:
                            states.append(f.read().rsplit(")", 1)[1].split()[0])
                    except OSError:
                        pass
                if states and all(st == "T" for st in states):
                    break
                time.sleep(0.005)

    def stop(self):
        stop_nbdkit(self.proc)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()
