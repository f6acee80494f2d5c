#!/usr/bin/python3
# Crash rounds: nbdkit is killed with SIGKILL at a random moment while a
# client writes random (often unaligned) data with a flush every few writes.
# After each kill 'sxm-vhd check' must find the image clean, and every byte
# must hold either its value as of the last completed flush or the value of
# a write issued after that flush (which may or may not have reached the
# file) - never anything else.  Dynamic and differencing images alternate;
# 24 rounds.

import os
import random
import signal
import subprocess
import threading
import time

import nbd

from sxmtest import (tap, run_test, start_nbdkit, stop_nbdkit, nbdkit_run,
                     nbd_connect, sh, ROOT, MiB)

TOOL = os.path.join(ROOT, "client", "sxm-vhd")
SIZE = 48 * MiB
ROUNDS = 24


def main(d):
    rng = random.Random(1234)
    # A parent with data for the differencing rounds.
    base = os.path.join(d, "base.vhd")
    sh(TOOL, "create", "--block-size=512K", base, str(SIZE))
    sock = os.path.join(d, "s.sock")
    p = start_nbdkit(sock, base)
    h = nbd_connect(f"nbd+unix:///?socket={sock}")
    base_data = bytearray(SIZE)
    for i in range(0, SIZE, 3 * MiB):
        chunk = rng.randbytes(MiB)
        h.pwrite(chunk, i)
        base_data[i:i + MiB] = chunk
    h.flush()
    h.shutdown()
    stop_nbdkit(p)
    os.unlink(sock)

    failures = []
    stats = {"writes": 0, "flushes": 0, "lost_unflushed": 0}
    for rnd in range(ROUNDS):
        img = os.path.join(d, f"r{rnd}.vhd")
        diff = rnd % 2 == 1
        if diff:
            sh(TOOL, "snapshot", base, img)
            model = bytearray(base_data)
        else:
            sh(TOOL, "create", "--block-size=512K", img, str(SIZE))
            model = bytearray(SIZE)
        flushed = bytes(model)
        after_flush = []            # writes issued after the last flush
        lock = threading.Lock()
        srv = start_nbdkit(sock, img)
        stop = threading.Event()

        def client():
            nonlocal flushed, after_flush
            try:
                c = nbd_connect(f"nbd+unix:///?socket={sock}")
                n = 0
                while not stop.is_set():
                    off = rng.randrange(0, SIZE - 1)
                    ln = min(rng.choice([1, 100, 512, 4096, 70000, 600000]),
                             SIZE - off)
                    data = rng.randbytes(ln)
                    with lock:
                        after_flush.append((off, data))
                    c.pwrite(data, off)
                    model[off:off + ln] = data
                    stats["writes"] += 1
                    n += 1
                    if n % 7 == 0:
                        c.flush()
                        with lock:
                            flushed = bytes(model)
                            after_flush = []
                        stats["flushes"] += 1
            except nbd.Error:
                pass                # the server was killed under us

        t = threading.Thread(target=client)
        t.start()
        time.sleep(rng.uniform(0.1, 0.9))
        srv.send_signal(signal.SIGKILL)
        srv.wait()
        stop.set()
        t.join()
        os.unlink(sock)

        # The image opens and reads back a state the rules allow.
        r = subprocess.run([TOOL, "check", img], capture_output=True, text=True)
        if r.returncode != 0:
            failures.append((rnd, f"check exit {r.returncode}", r.stdout + r.stderr))
            continue
        out = img + ".raw"
        r = nbdkit_run("-r", img, run=f"nbdcopy $uri {out}")
        if r.returncode != 0:
            failures.append((rnd, "cannot be read", r.stderr))
            continue
        got = open(out, "rb").read()
        os.unlink(out)
        bad = None
        chunk = 4096
        for c0 in range(0, SIZE, chunk):
            if got[c0:c0 + chunk] == flushed[c0:c0 + chunk]:
                continue
            for pos in range(c0, min(c0 + chunk, SIZE)):
                if got[pos] == flushed[pos]:
                    continue
                if not any(o <= pos < o + len(dd) and dd[pos - o] == got[pos]
                           for o, dd in after_flush):
                    bad = pos
                    break
            if bad is not None:
                break
        if bad is not None:
            failures.append((rnd, f"byte {bad}: {got[bad]:#x}, flushed "
                             f"{flushed[bad]:#x}, not written since", ""))
        elif got != bytes(model):
            stats["lost_unflushed"] += 1
        os.unlink(img)

    tap.ok(not failures, f"{ROUNDS} SIGKILL rounds: every image checks clean "
           "and holds only flushed or later-written bytes", failures[:3])
    tap.ok(stats["flushes"] >= ROUNDS, "the rounds really flushed",
           stats)
    tap.diag(f"{stats['writes']} writes, {stats['flushes']} flushes; "
             f"{stats['lost_unflushed']} rounds lost unflushed writes "
             "(allowed)")


run_test(main)
