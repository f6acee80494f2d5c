#!/usr/bin/python3
# Crash states, not just kills: the VHD writer's power-loss ordering,
# tested.  Each workload runs with every write and sync the writer makes
# recorded (tests/crash/crashtrace.so) beside what the disk was asked
# (tests/crash/nbdkit-crashlog-filter.so); tests/crash/crashexplore.py
# builds from the trace the states a power loss may leave (the durable
# prefix plus any subset of the later writes, each torn at 512 bytes) and
# every state must open, check not corrupt, and read in every sector its
# value at the last completed flush or a value written after it.
#
# Workloads: dynamic and differencing images, allocation-heavy and
# overwrite-heavy, and a fixed image (zeroes punch holes), through the
# plugin; sxm-vhd resize (BAT relocated) and
# coalesce (and coalesce run again from each state must complete it).
#
#   CRASH_STATES=N   states per workload (make check: 40; make
#                    crash-explore: 2000)
#   CRASH_OPS=N      NBD requests per workload (make check: 40)
#   CRASH_SEED=N     replays a run (printed as a comment)
import os
import random
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "crash"))
from sxmtest import (tap, run_test, start_nbdkit, stop_nbdkit, nbd_connect,  # noqa: E402
                     nbdkit, nbdkit_env, sh, ROOT, MiB)
import crashexplore as cx  # noqa: E402
from mirrortest import (FILTER as MIRROR_FILTER, SXM_COPY, Guest, ctl,  # noqa: E402
                        live_copy)

SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")
BUDGET = int(os.environ.get("CRASH_STATES", "40"))
NOPS = int(os.environ.get("CRASH_OPS", "40"))
SEED = int(os.environ.get("CRASH_SEED", str(random.randrange(1 << 30))))
SIZE = 8 * MiB
# The states are written and read here: memory, where there is /dev/shm.
SHM = "/dev/shm" if os.path.isdir("/dev/shm") else os.environ.get("TMPDIR", "/var/tmp")
TOTALS = {"states": 0, "violations": 0, "refused": 0}


def fill(d, leaf, rng, regions):
    """Write random data into REGIONS [(offset, length)] of LEAF through
    the plugin (untraced: the workload's starting point)."""
    with nbdkit(d, leaf) as uri:
        h = nbd_connect(uri)
        for off, n in regions:
            h.pwrite(rng.randbytes(n), off)
        h.flush()
        h.shutdown()


def read_now(d, leaf):
    status, info, data = cx.read_state(leaf, d)
    assert status == "ok", f"{leaf}: {status} {info}"
    return data


def section_dir(d, name):
    """Each section's own scratch directory (run_test gives all one)."""
    sub = os.path.join(d, name)
    os.makedirs(sub)
    return sub


def make_images(d, kind, rng):
    """The images of workload KIND in d/img; returns (img, the leaf)."""
    img = os.path.join(d, "img")
    os.makedirs(img)
    if kind.startswith("dyn") or kind == "fixed":
        leaf = os.path.join(img, "disk.vhd")
        sh(SXM_VHD, "create", "--block-size=512K",
           "--type=" + ("fixed" if kind == "fixed" else "dynamic"), leaf, str(SIZE))
    else:
        base = os.path.join(img, "base.vhd")
        leaf = os.path.join(img, "leaf.vhd")
        sh(SXM_VHD, "create", "--block-size=512K", base, str(SIZE))
        fill(d, base, rng, [(i, 300 * 1024) for i in range(0, SIZE, MiB)])
        sh(SXM_VHD, "snapshot", base, leaf)
    if kind.endswith("overwrite"):
        fill(d, leaf, rng, [(i, 256 * 1024) for i in range(0, SIZE, 256 * 1024)])
    return img, leaf


def nbd_ops(h, rng, nops):
    """The guest's requests: writes of any size and alignment (many
    allocate a block on a sparse image), some zeroes, a flush every few."""
    for i in range(nops):
        r = rng.random()
        if r < 0.12:
            h.flush()
            continue
        if r < 0.2:
            off = rng.randrange(0, SIZE // 512) * 512
            n = min(rng.choice([512, 4096, 65536]), SIZE - off)
            h.zero(n, off)
            continue
        n = rng.choice([1, 100, 512, 700, 4096, 5000, 65536, 200000])
        off = rng.randrange(0, SIZE - n)
        if rng.random() < 0.5:
            off -= off % 512
        h.pwrite(rng.randbytes(n), off)
    h.flush()


def explore(d, name, ft, leaf_of, check, rng, control=False, points=None,
            budget=None):
    """Build the states of FileTrace FT and run CHECK(state, data, state
    dir, {original path: state path}) on each; one test: no violation
    (CONTROL: some violation, not counted in the totals)."""
    states = cx.states(ft, rng, budget or BUDGET, points=points)
    bad, refused = [], 0
    sdir = os.path.join(SHM, f"state-{os.getpid()}")
    for st in states:
        where = cx.materialise(ft, st, sdir)
        leaf = where.get(leaf_of)
        if leaf is None:
            bad.append(f"{st.label}: the image is gone")
            continue
        status, info, data = cx.read_state(leaf, sdir)
        if status == "refused":
            refused += 1
            bad.append(f"{st.label}: refused at open: {info['error']}")
            continue
        if status != "ok":
            bad.append(f"{st.label}: crash-read {status}: {info['error']}")
            continue
        if any(not layer.startswith(sdir) for layer in info["layers"]):
            bad.append(f"{st.label}: chain resolved outside the state: "
                       f"{info['layers']}")
            continue
        if info.get("check") == "corrupt":
            bad.append(f"{st.label}: sxm-vhd check says corrupt: "
                       f"{info['error']}")
            continue
        why = check(st, data, sdir, where)
        if why:
            bad.append(f"{st.label}: {why}")
    shutil.rmtree(sdir, ignore_errors=True)
    if control:
        tap.ok(bad, f"{name}: {len(bad)} of {len(states)} states violate "
               f"the model (the explorer can fail)", "")
        for kind in ("refused", "neither", "differs"):
            eg = [b for b in bad if kind in b]
            if eg:
                tap.diag(f"e.g. {eg[0][:300]}")
        return
    TOTALS["states"] += len(states)
    TOTALS["violations"] += len(bad)
    TOTALS["refused"] += refused
    tap.ok(not bad and len(states) >= min(budget or BUDGET, 10),
           f"{name}: {len(states)} crash states from {len(ft.recs)} records: "
           f"each opens, checks not corrupt, reads what the model allows",
           "\n".join(bad[:10]))


def nbd_workload(kind):
    def run(d):
        d = section_dir(d, kind)
        rng = random.Random(f"{SEED}-{kind}")
        img, leaf = make_images(d, kind, rng)
        initial = read_now(d, leaf)
        snap = cx.snapshot_dir(img)
        trace = os.path.join(d, "trace")
        sock = os.path.join(d, "s.sock")
        p = start_nbdkit(sock, leaf, f"crashlog={trace}",
                         filters=[cx.LOGFILTER],
                         env=cx.tracer_env(trace, img, nbdkit_env()))
        try:
            h = nbd_connect(f"nbd+unix:///?socket={sock}")
            nbd_ops(h, rng, NOPS)
            h.shutdown()
        finally:
            stop_nbdkit(p)
        recs = cx.read_trace(trace)
        ft = cx.FileTrace(recs, snap, img)
        model = cx.NbdModel(recs, initial)
        tap.ok(any(r.type == "W" for r in recs) and
               any(r.type == "w" for r in recs) and model.flushes,
               f"{kind}: the trace holds the writer's writes and syncs and "
               f"the requests ({len(recs)} records)")

        def check(st, data, sdir, where):
            floor, later = model.allowed(st.k)
            bad = cx.check_sectors(data, floor, later, size=SIZE)
            return "; ".join(f"offset {o}: {w}" for o, w in bad)

        explore(d, kind, ft, os.path.realpath(leaf), check, rng)
        if kind == "diff-alloc":
            bad_ft = cx.FileTrace(recs, snap, img, drop_barriers=True)
            explore(d, "negative control: the same trace without the "
                    "barrier between data and metadata",
                    bad_ft, os.path.realpath(leaf), check, rng,
                    control=True, points=bad_ft.barrier_points)
    run.__name__ = kind
    return run


def traced_tool(d, img, *args):
    trace = os.path.join(d, "trace")
    subprocess.run([SXM_VHD, *args], check=True, capture_output=True,
                   env=cx.tracer_env(trace, img, nbdkit_env()))
    return cx.read_trace(trace)


def resize(d):
    """sxm-vhd resize from 8 MiB to 96 MiB: the BAT (one sector, 128
    entries of 512 KiB blocks) must move to the end of the file.  Every
    state reads the old size with the old data, or the new size with the
    old data and zeros after it."""
    d = section_dir(d, "resize")
    rng = random.Random(f"{SEED}-resize")
    img, leaf = make_images(d, "dyn", rng)
    fill(d, leaf, rng, [(rng.randrange(0, SIZE - 70000), 70000)
                        for _ in range(12)])
    old = read_now(d, leaf)
    snap = cx.snapshot_dir(img)
    new = 96 * MiB
    recs = traced_tool(d, img, "resize", leaf, str(new))
    ft = cx.FileTrace(recs, snap, img)

    def check(st, data, sdir, where):
        if len(data) not in (SIZE, new):
            return f"size {len(data)}: neither {SIZE} nor {new}"
        floor = old + bytes(len(data) - SIZE)
        bad = cx.check_sectors(data, floor, [])
        return "; ".join(f"offset {o}: {w}" for o, w in bad)

    explore(d, "resize (BAT relocated)", ft, os.path.realpath(leaf), check, rng)


def coalesce(d):
    """sxm-vhd coalesce CHILD: through the child the disk reads the same
    in every state; the parent alone reads, per sector, its old value or
    the child's; and coalesce run again from the state completes (the
    parent then reads exactly as the child)."""
    d = section_dir(d, "coalesce")
    rng = random.Random(f"{SEED}-coalesce")
    img, base = make_images(d, "dyn", rng)
    fill(d, base, rng, [(i, 200 * 1024) for i in range(0, SIZE, MiB)])
    child = os.path.join(img, "child.vhd")
    sh(SXM_VHD, "snapshot", base, child)
    fill(d, child, rng, [(rng.randrange(0, SIZE - 90000), rng.choice([700, 90000]))
                         for _ in range(20)])
    through = read_now(d, child)
    parent_old = read_now(d, base)
    snap = cx.snapshot_dir(img)
    recs = traced_tool(d, img, "coalesce", child)
    ft = cx.FileTrace(recs, snap, img)
    resumed = [0]

    def check(st, data, sdir, where):
        bad = cx.check_sectors(data, through, [], size=SIZE)
        if bad:
            return "through the child: " + "; ".join(f"offset {o}: {w}"
                                                     for o, w in bad)
        pbase = where[os.path.realpath(base)]
        status, info, pdata = cx.read_state(pbase, sdir)
        if status != "ok" or info.get("check") == "corrupt":
            return f"parent: {status} {info.get('check')} {info['error']}"
        bad = cx.check_sectors(pdata, parent_old, [(0, through, False)])
        if bad:
            return "parent: " + "; ".join(f"offset {o}: {w}" for o, w in bad)
        if st.k % 3 == 0:           # a third of the states: run it again
            c = subprocess.run([SXM_VHD, "coalesce", where[os.path.realpath(child)]],
                               capture_output=True, text=True)
            if c.returncode != 0:
                return f"coalesce again failed: {c.stderr.strip()}"
            status, info, pdata = cx.read_state(pbase, sdir)
            if status != "ok" or pdata != through:
                return "coalesce again: the parent does not read as the child"
            resumed[0] += 1
        return None

    explore(d, "coalesce", ft, os.path.realpath(child), check, rng)
    tap.ok(resumed[0] > 0, f"coalesce resumed to completion from "
           f"{resumed[0]} crash states")


def mirror_destination(d):
    """The mirror's destination loses power: a guest writes (one
    connection: writes of any alignment, zeroes, FUA writes, flushes)
    through the mirror filter while sxm-copy --live copies the disk to a
    destination nbdkit whose files are traced.  Every state of the
    destination must satisfy its own flushes (what it acknowledged to a
    flush is there); and once the copy had finished, the guest's: every
    sector reads the value the guest had flushed (or FUA-written) or one
    it wrote later."""
    d = section_dir(d, "mirror")
    rng = random.Random(f"{SEED}-mirror")
    img = os.path.join(d, "img")
    os.makedirs(img)
    src, dest = os.path.join(d, "src.vhd"), os.path.join(img, "dest.vhd")
    sh(SXM_VHD, "create", "--block-size=512K", src, str(SIZE))
    sh(SXM_VHD, "create", "--block-size=512K", dest, str(SIZE))
    fill(d, src, rng, [(i, 256 * 1024) for i in range(0, SIZE, 768 * 1024)])
    initial = read_now(d, src)
    snap = cx.snapshot_dir(img)
    trace = os.path.join(d, "trace")
    ssock, dsock = os.path.join(d, "src.sock"), os.path.join(d, "dst.sock")
    cs = os.path.join(d, "ctl.sock")
    dst = start_nbdkit(dsock, dest, f"crashlog={trace}", "crashlog-tag=2",
                       filters=[cx.LOGFILTER],
                       env=cx.tracer_env(trace, img, nbdkit_env()))
    srv = start_nbdkit(ssock, src, f"mirror-control={cs}", f"crashlog={trace}",
                       "crashlog-tag=1", "crashlog-export=",
                       filters=[cx.LOGFILTER, MIRROR_FILTER])
    uri = f"nbd+unix:///?socket={ssock}"
    try:
        g = Guest(uri, SIZE, rng.randrange(1 << 20), conns=1,
                  can_trim=False).start()
        time.sleep(0.2)
        r = ctl(cs, "start", dest=f"nbd+unix:///?socket={dsock}")
        cp = live_copy(cs, uri, "--rate=8M")
        cx.mark(trace, "copied")
        time.sleep(0.5)
        ops = g.finish()
        ctl(cs, "abort")
    finally:
        stop_nbdkit(srv)
        stop_nbdkit(dst)
    tap.ok(r.get("ok") and cp.returncode == 0 and not g.errors and ops > 20,
           f"mirror: the guest made {ops} requests during and after the "
           f"live copy", f"{r}\n{cp.stderr}\n{g.errors}")
    recs = cx.read_trace(trace)
    copied = next(q.idx for q in recs if q.type == "M")
    dest_model = cx.NbdModel(recs, bytes(SIZE), tag=2)
    guest_model = cx.NbdModel(recs, initial, tag=1)
    after, early = [0], [0]

    def check(st, data, sdir, where):
        floor, later = dest_model.allowed(st.k)
        bad = cx.check_sectors(data, floor, later, size=SIZE)
        if bad:
            return "the destination's own flushes: " + "; ".join(
                f"offset {o}: {w}" for o, w in bad)
        floor, later = guest_model.allowed(st.k)
        bad = cx.check_sectors(data, floor, later, size=SIZE)
        if st.k <= copied:
            # Before the copy finished the guest's data is not all there:
            # the control that shows this check can fail.
            early[0] += bool(bad)
            return None
        after[0] += 1
        if bad:
            return "the guest's flushes: " + "; ".join(
                f"offset {o}: {w}" for o, w in bad)
        return None

    ft = cx.FileTrace(recs, snap, img)
    explore(d, "mirror destination", ft,
            os.path.realpath(dest), check, rng)
    tap.ok(after[0] > 0 and guest_model.flushes,
           f"mirror: {after[0]} of the states are after the copy finished "
           f"(the guest's flushes checked), {len(guest_model.flushes)} guest "
           f"flushes", f"{len(ft.recs)} records")
    tap.ok(early[0] > 0, f"negative control: {early[0]} states before the "
           f"copy finished fail the guest-level check (it can fail)")


def checkpoint(d):
    """sxm-copy --checkpoint to an nbdkit vhd destination; the copier's
    host and the destination lose power at the same moment.  Every
    state: the destination opens and satisfies its flushes; sxm-copy run
    again with the checkpoint file of that state (old, new, or none)
    resumes or starts over, and the destination then equals the
    source."""
    d = section_dir(d, "checkpoint")
    rng = random.Random(f"{SEED}-checkpoint")
    img = os.path.join(d, "img")
    os.makedirs(img)
    src, dest = os.path.join(d, "src.raw"), os.path.join(img, "dest.vhd")
    data = bytearray(SIZE)
    for off in range(0, SIZE, 512 * 1024):
        if rng.random() < 0.6:
            data[off:off + 512 * 1024] = rng.randbytes(512 * 1024)
    with open(src, "wb") as f:
        f.write(data)
    sh(SXM_VHD, "create", "--block-size=512K", dest, str(SIZE))
    snap = cx.snapshot_dir(img)
    trace = os.path.join(d, "trace")
    dsock = os.path.join(d, "dst.sock")
    duri = f"nbd+unix:///?socket={dsock}"
    ckpt = os.path.join(img, "copy.ckpt")
    copy = [SXM_COPY, "--raw", "--segment-size=1M",
            "--checkpoint-interval=0.05", "-C", "1"]

    def serve(path, **kw):
        return start_nbdkit(dsock, path, **kw)

    dst = start_nbdkit(dsock, dest, f"crashlog={trace}", filters=[cx.LOGFILTER],
                       env=cx.tracer_env(trace, img, nbdkit_env()))
    try:
        cp = subprocess.run(copy + ["--rate=3M", f"--checkpoint={ckpt}",
                                    src, duri],
                            capture_output=True, text=True, timeout=120,
                            env=cx.tracer_env(trace, img, nbdkit_env()))
    finally:
        stop_nbdkit(dst)
    recs = cx.read_trace(trace)
    saves = sum(1 for q in recs if q.type == "R")
    tap.ok(cp.returncode == 0 and saves >= 3,
           f"checkpoint: the traced copy finished, {saves} checkpoints saved",
           cp.stderr)
    model = cx.NbdModel(recs, bytes(SIZE))
    resumed = [0]

    def check(st, got, sdir, where, flushes=True):
        floor, later = model.allowed(st.k)
        bad = cx.check_sectors(got, floor, later, size=SIZE) if flushes else []
        if bad:
            return "the destination's flushes: " + "; ".join(
                f"offset {o}: {w}" for o, w in bad)
        state_ckpt = os.path.join(sdir, "copy.ckpt")
        srv = serve(where[os.path.realpath(dest)])
        try:
            r = subprocess.run(copy + [f"--checkpoint={state_ckpt}", src, duri],
                               capture_output=True, text=True, timeout=120)
        finally:
            stop_nbdkit(srv)
        if r.returncode != 0:
            return f"sxm-copy again: exit {r.returncode}: {r.stderr.strip()}"
        if "resuming" in r.stderr:
            resumed[0] += 1
        status, info, final = cx.read_state(where[os.path.realpath(dest)], sdir)
        if status != "ok" or final != bytes(data):
            return "after sxm-copy again the destination differs from the source"
        return None

    # Each state costs a server start and a copy: a quarter of the budget.
    explore(d, "checkpoint + destination", cx.FileTrace(recs, snap, img),
            os.path.realpath(dest), check, rng, budget=max(BUDGET // 4, 10))
    tap.ok(resumed[0] > 0, f"checkpoint: {resumed[0]} of the states resumed "
           f"from their checkpoint (the others started over)")
    # The control: a destination that never made anything durable (its
    # syncs forgotten) under checkpoints that trust its flushes: resumed
    # copies must come out wrong.
    explore(d, "negative control: checkpoints over a destination whose "
            "flushes did nothing",
            cx.FileTrace(recs, snap, img, drop_syncs_of=dest),
            os.path.realpath(dest),
            lambda *a: check(*a, flushes=False), rng, control=True,
            budget=max(BUDGET // 4, 10))


def summary(d):
    tap.diag(f"CRASH_SEED={SEED}: {TOTALS['states']} crash states explored, "
             f"{TOTALS['violations']} violations ({TOTALS['refused']} refused "
             f"at open)")


if __name__ == "__main__":
    for tool in (cx.CRASH_READ, cx.TRACER, cx.LOGFILTER):
        if not os.path.exists(tool):
            print(f"1..0 # SKIP {tool} not built (make)")
            sys.exit(0)
    t0 = time.time()
    tap.diag(f"CRASH_SEED={SEED} CRASH_STATES={BUDGET} CRASH_OPS={NOPS}")
    run_test(nbd_workload("dyn-alloc"), nbd_workload("dyn-overwrite"),
             nbd_workload("diff-alloc"), nbd_workload("diff-overwrite"),
             nbd_workload("fixed"),
             resize, coalesce, mirror_destination, checkpoint, summary)
    tap.diag(f"{time.time() - t0:.1f} s")
