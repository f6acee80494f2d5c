"""Crash-state exploration (doc/testing.md, "Crash states").

A workload runs with tests/crash/crashtrace.so preloaded (every write,
sync and rename of the files under one directory, with its data) and,
where a server receives NBD requests, nbdkit-crashlog-filter.so (what
was asked of the disk, and when flushes completed), all appended to one
trace (crashtrace.h).  From the trace this module builds the states a
power loss may leave, in the model of ALICE and CrashMonkey:

  * a crash happens between two records: everything before it happened;
  * a file's writes before the start of its last *completed* sync are
    durable; its later writes (the pending ones) may each be there or
    not, and one that is there may be torn at 512-byte granularity
    (sectors of the file, each old or new); the ones that are there are
    applied in their order, or (a quarter of the sampled states) in a
    random order: the disk may reorder, overlapping writes included;
  * a truncation is one pending operation like a write;
  * names (create, rename, unlink) are durable once a sync of their
    directory completed; the pending ones happen as a prefix, in order
    (journalled metadata is not reordered).

Every state must open (crash-read), be checked not corrupt, and read, in
every sector, a value the model allows: for NBD workloads its value at
the last completed flush (or FUA write) or a value written after it;
for offline operations (resize, coalesce) what the operation's contract
says.  Exploration is exhaustive where a crash point has few pending
sectors and sampled (seeded, reproducible) where it has many."""

import itertools
import os
import random
import shutil
import struct
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
CRASH_READ = os.path.join(HERE, "crash-read")
TRACER = os.path.join(HERE, "crashtrace.so")
LOGFILTER = os.path.join(HERE, "nbdkit-crashlog-filter.so")
SECTOR = 512
HDR = struct.Struct("<BBHIQQQQ")
F_DIR, F_NEW, F_ZERO, F_DATA, F_FUA, F_FAILED = 1, 2, 4, 8, 16, 32


class Rec:
    __slots__ = ("idx", "type", "flags", "tid", "ino", "off", "len", "data",
                 "fid")

    def __init__(self, idx, t, flags, tid, ino, off, length, data):
        self.idx, self.type, self.flags, self.tid = idx, t, flags, tid
        self.ino, self.off, self.len, self.data = ino, off, length, data
        self.fid = None          # FileTrace: (inode, generation)

    def payload(self):
        """A write's bytes (zeros for a punched hole)."""
        return bytes(self.len) if self.flags & F_ZERO else self.data


def read_trace(path):
    """The records of a trace, in order; a torn last record is an error
    (the tracer writes each with one append)."""
    recs = []
    with open(path, "rb") as f:
        buf = f.read()
    pos = 0
    while pos < len(buf):
        if pos + HDR.size > len(buf):
            raise ValueError(f"{path}: torn record header at {pos}")
        t, flags, _, tid, ino, off, length, plen = HDR.unpack_from(buf, pos)
        pos += HDR.size
        if pos + plen > len(buf):
            raise ValueError(f"{path}: torn record payload at {pos}")
        recs.append(Rec(len(recs), chr(t), flags, tid, ino, off, length,
                        buf[pos:pos + plen]))
        pos += plen
    return recs


def tracer_env(trace, tdir, base=None):
    """Environment that traces the files under TDIR into TRACE (the
    sanitizer runtime, if the base environment preloads one, first)."""
    env = dict(base if base is not None else os.environ)
    pre = env.get("LD_PRELOAD")
    env["LD_PRELOAD"] = f"{pre}:{TRACER}" if pre else TRACER
    env["SXM_CRASHTRACE"] = trace
    env["SXM_CRASHTRACE_DIR"] = tdir
    return env


def snapshot_dir(tdir):
    """The starting point of a trace: TDIR's files (path -> (ino, bytes))."""
    snap = {}
    for name in sorted(os.listdir(tdir)):
        p = os.path.join(os.path.realpath(tdir), name)
        if os.path.isfile(p):
            with open(p, "rb") as f:
                snap[p] = (os.stat(p).st_ino, f.read())
    return snap


# ---------------------------------------------------------------- files

class FileTrace:
    """The file-level side of a trace: per inode its writes and
    truncations and its completed syncs; the namespace operations."""

    def __init__(self, recs, snap, tdir, drop_barriers=False,
                 drop_syncs_of=None):
        """Negative controls, writers whose states must fail:
        DROP_BARRIERS forgets every sync that is followed at once by a
        write of the same file (in a flush, the barrier between the data
        and the metadata that points at it); DROP_SYNCS_OF (a path)
        forgets every sync of that file."""
        self.recs, self.tdir = recs, os.path.realpath(tdir)
        dropped = set()
        self.initial = {(ino, 0): data for _, (ino, data) in snap.items()}
        self.names0 = {p: (ino, 0) for p, (ino, _) in snap.items()}
        # A file is its inode number and a generation: a file system reuses
        # the number of a deleted file (a checkpoint renamed over the old
        # one frees it), and the new file must not inherit the old one's
        # writes and syncs.
        gen = {ino: 0 for ino, _ in self.initial}
        for r in recs:
            if r.type == "O" and r.flags & F_NEW and r.ino in gen:
                gen[r.ino] += 1
            if r.type in "OWTSE":
                gen.setdefault(r.ino, 0)
                r.fid = (r.ino, gen[r.ino])
        if drop_syncs_of:
            fid = self.names0[os.path.realpath(drop_syncs_of)]
            dropped = {r.idx for r in recs if r.type == "E" and r.fid == fid}
        # With DROP_BARRIERS, the crash points where it matters: just
        # before the sync that follows a dropped one.
        self.barrier_points = []
        if drop_barriers:
            for i, r in enumerate(recs[:-1]):
                if r.type == "E" and recs[i + 1].type == "W" and \
                        recs[i + 1].ino == r.ino:
                    dropped.add(i)
                    nxt = next((q.idx for q in recs[i + 1:]
                                if q.type == "S" and q.ino == r.ino), None)
                    if nxt is not None:
                        self.barrier_points.append(nxt)
        self.ops = {}            # file -> [rec W/T]
        self.syncs = {}          # file -> [(start idx, end idx)]
        self.dirs = {}           # directory's file -> path
        self.ns = []             # [(idx, kind, a, b)]
        started = {}
        for r in recs:
            if r.type == "O":
                path = r.data.decode()
                if r.flags & F_DIR:
                    self.dirs[r.fid] = path
                elif r.flags & F_NEW:
                    self.ns.append((r.idx, "create", path, r.fid))
                    self.initial.setdefault(r.fid, b"")
                else:
                    self.initial.setdefault(r.fid, b"")
            elif r.type in "WT":
                self.ops.setdefault(r.fid, []).append(r)
            elif r.type == "S":
                started[(r.tid, r.fid)] = r.idx
            elif r.type == "E":
                s = started.pop((r.tid, r.fid))
                if r.idx not in dropped:
                    self.syncs.setdefault(r.fid, []).append((s, r.idx))
            elif r.type == "R":
                a, b = r.data.split(b"\0")
                self.ns.append((r.idx, "rename", a.decode(), b.decode()))
            elif r.type == "U":
                self.ns.append((r.idx, "unlink", r.data.decode(), None))
        self.file_points = [r.idx + 1 for r in recs if r.type in "WTRUOE"]

    def durable_from(self, syncs, k):
        """Index of the start of the last sync completed before K (-1)."""
        best = -1
        for s, e in syncs:
            if e < k and s > best:
                best = s
        return best

    def pending(self, ino, k):
        """(durable ops, pending ops) of inode INO for a crash before K."""
        d = self.durable_from(self.syncs.get(ino, ()), k)
        ops = [r for r in self.ops.get(ino, ()) if r.idx < k]
        return [r for r in ops if r.idx < d], [r for r in ops if r.idx > d]

    def units(self, ino, k):
        """The pending pieces of INO before K: (op, piece offset, length),
        a write cut at the file's 512-byte sector boundaries, a
        truncation whole."""
        out = []
        for r in self.pending(ino, k)[1]:
            if r.type == "T":
                out.append((r, 0, 0))
                continue
            pos, end = r.off, r.off + r.len
            while pos < end:
                nxt = min(end, (pos // SECTOR + 1) * SECTOR)
                out.append((r, pos - r.off, nxt - pos))
                pos = nxt
        return out

    def content(self, ino, k, chosen, order=None):
        """The contents of inode INO after a crash before K in which the
        pending pieces CHOSEN (a set of unit indexes) reached the disk, in
        the trace's order or, with ORDER (a seed), shuffled."""
        data = bytearray(self.initial.get(ino, b""))
        durable, _ = self.pending(ino, k)
        for r in durable:
            apply(data, r, 0, r.len)
        units = [u for i, u in enumerate(self.units(ino, k)) if i in chosen]
        if order is not None:
            random.Random(order).shuffle(units)
        for r, rel, n in units:
            apply(data, r, rel, n)
        return bytes(data)

    def names(self, k, prefix):
        """Path -> inode after a crash before K: the namespace operations
        made durable by a completed directory sync, then the first PREFIX
        of the pending ones."""
        dsync = {}
        for ino, path in self.dirs.items():
            dsync[path] = self.durable_from(self.syncs.get(ino, ()), k)
        names = dict(self.names0)
        pend = []
        for idx, kind, a, b in self.ns:
            if idx >= k:
                break
            paths = [a] + ([b] if kind == "rename" else [])
            if all(idx < dsync.get(os.path.dirname(p), -1) for p in paths):
                ns_apply(names, kind, a, b)
            else:
                pend.append((kind, a, b))
        for kind, a, b in pend[:prefix]:
            ns_apply(names, kind, a, b)
        return names, len(pend)


def apply(data, r, rel, n):
    if r.type == "T":
        if r.off < len(data):
            del data[r.off:]
        else:
            data.extend(bytes(r.off - len(data)))
        return
    at = r.off + rel
    if len(data) < at + n:
        data.extend(bytes(at + n - len(data)))
    data[at:at + n] = r.payload()[rel:rel + n]


def ns_apply(names, kind, a, b):
    if kind == "create":
        names[a] = b
    elif kind == "rename":
        if a in names:
            names[b] = names.pop(a)
    elif kind == "unlink":
        names.pop(a, None)


# ---------------------------------------------------------------- states

class State:
    """A crash before record K; CHOSEN: per inode the pending pieces that
    reached the disk; PREFIX: how many pending names did; ORDER: None to
    apply the pieces in the trace's order, else a seed to shuffle them
    (the disk reordered writes, overlapping ones included)."""
    __slots__ = ("k", "chosen", "prefix", "label", "order")

    def __init__(self, k, chosen, prefix, label, order=None):
        self.k, self.chosen, self.prefix, self.label = k, chosen, prefix, label
        self.order = order


def states(ft, rng, budget, exhaustive_units=8, points=None):
    """About BUDGET crash states of FileTrace FT.  Crash points are the
    moments after each file operation (evenly sampled if there are more
    than BUDGET).  At a point whose pending pieces (all files) are few
    enough, every subset of them; otherwise the two corners (none, all)
    and random subsets: each pending operation there with probability
    1/2, torn with probability 1/4 (then each of its pieces 1/2).
    POINTS: these crash points instead."""
    points = sorted(set(points or ft.file_points))
    if len(points) > budget:
        points = sorted(rng.sample(points, budget))
    inos = sorted(ft.initial)
    out = []
    for i, k in enumerate(points):
        # What is left, shared evenly by the points still to come.
        share = max(1, (budget - len(out)) // (len(points) - i))
        units = {ino: ft.units(ino, k) for ino in inos}
        nunits = sum(len(u) for u in units.values())
        _, npend = ft.names(k, 0)
        if nunits <= exhaustive_units and (2 ** nunits) * (npend + 1) <= share:
            out += exhaustive(k, inos, units, nunits, npend)
        elif share < 3:
            out.append(sample(k, inos, units, npend, rng))
        else:
            out += corners(k, inos, units, npend)
            out += [sample(k, inos, units, npend, rng)
                    for _ in range(share - 2)]
    return out


def exhaustive(k, inos, units, nunits, npend):
    flat = [(ino, j) for ino in inos for j in range(len(units[ino]))]
    out = []
    for bits in range(2 ** nunits):
        chosen = {ino: set() for ino in inos}
        for b, (ino, j) in enumerate(flat):
            if bits >> b & 1:
                chosen[ino].add(j)
        for p in range(npend + 1):
            out.append(State(k, chosen, p, f"k={k} subset {bits:b}, names {p}"))
    return out


def corners(k, inos, units, npend):
    return [State(k, {ino: set() for ino in inos}, 0, f"k={k} none"),
            State(k, {ino: set(range(len(units[ino]))) for ino in inos},
                  npend, f"k={k} all")]


def sample(k, inos, units, npend, rng):
    chosen = {}
    for ino in inos:
        sel, byop = set(), {}
        for j, (r, _, _) in enumerate(units[ino]):
            byop.setdefault(r.idx, []).append(j)
        for js in byop.values():
            if rng.random() < 0.5:
                continue
            torn = rng.random() < 0.25
            sel.update(j for j in js if not torn or rng.random() < 0.5)
        chosen[ino] = sel
    # A quarter of the samples: the pieces land in any order.
    order = rng.randrange(1 << 30) if rng.random() < 0.25 else None
    return State(k, chosen, rng.randint(0, npend),
                 f"k={k} sample{' reordered' if order is not None else ''}",
                 order)


def materialise(ft, st, outdir):
    """Write state ST's files under OUTDIR (the traced directory's
    relative names).  Returns {original path: new path}."""
    if os.path.isdir(outdir):
        shutil.rmtree(outdir)
    os.makedirs(outdir)
    names, _ = ft.names(st.k, st.prefix)
    where = {}
    for path, ino in names.items():
        rel = os.path.relpath(path, ft.tdir)
        if rel.startswith(".."):
            continue
        new = os.path.join(outdir, rel)
        with open(new, "wb") as f:
            f.write(ft.content(ino, st.k, st.chosen.get(ino, set()), st.order))
        where[path] = new
    return where


def read_state(leaf, outdir):
    """Run crash-read on LEAF: (status, info, data).  STATUS: 'ok',
    'refused' (exit 5, the reason in info['error']) or 'crashed'/'error'
    (anything else: a violation)."""
    out = os.path.join(outdir, ".read")
    p = subprocess.run([CRASH_READ, leaf, out], capture_output=True,
                       text=True, timeout=120)
    info = {"layers": [], "error": p.stderr.strip()}
    for line in p.stdout.splitlines():
        key, _, val = line.partition(" ")
        if key == "layer":
            info["layers"].append(val)
        else:
            info[key] = val
    if p.returncode == 5:
        return "refused", info, None
    if p.returncode != 0:
        return ("crashed" if p.returncode < 0 else "error"), info, None
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return "ok", info, data


# ---------------------------------------------------------------- NBD model

class NbdModel:
    """What each sector of the disk may read after a crash before record
    k, from the NBD-level records (nbdkit-crashlog-filter): its value at
    its last durable point (the start of the last completed flush, or the
    completion of a FUA write covering it) or the data of a write that
    had been received before the crash and had not completed before that
    point."""

    def __init__(self, recs, initial, tag=0):
        """RECS: the trace; INITIAL: the disk's bytes when it started; TAG:
        the server whose records these are (crashlog-tag=)."""
        self.initial = initial
        self.reqs = []                       # [start rec, done idx, ok, fua]
        self.flushes = []                    # [(start idx, end idx)]
        open_reqs, fstart = {}, {}
        for r in recs:
            if r.type not in "wztxfg" or r.ino != tag:
                continue
            if r.type in "wzt":
                open_reqs.setdefault((r.tid, r.off, r.len), []).append(r)
            elif r.type == "x":
                s = open_reqs[(r.tid, r.off, r.len)].pop(0)
                self.reqs.append((s, r.idx, not (r.flags & F_FAILED),
                                  bool(r.flags & F_FUA)))
            elif r.type == "f":
                fstart[r.tid] = r.idx
            elif r.type == "g" and not (r.flags & F_FAILED):
                self.flushes.append((fstart.pop(r.tid), r.idx))
        for lst in open_reqs.values():
            for s in lst:                    # received, never completed
                self.reqs.append((s, None, False, False))
        self.reqs.sort(key=lambda q: q[0].idx)

    def allowed(self, k):
        """(floor, later): floor the bytes every sector held at its last
        durable point; later a list of (offset, bytes) written since."""
        fs = -1
        for s, e in self.flushes:
            if e < k and s > fs:
                fs = s
        floor = bytearray(self.initial)
        done = [q for q in self.reqs if q[1] is not None and q[1] < fs and q[2]]
        for s, d, ok, fua in sorted(done, key=lambda q: q[1]):
            floor[s.off:s.off + s.len] = value(s)
        # FUA writes that completed after the flush start but before k
        # raise the floor of their own sectors.
        fua_floor = []
        for s, d, ok, fua in self.reqs:
            if fua and ok and d is not None and fs < d < k:
                fua_floor.append((d, s))
        for d, s in sorted(fua_floor, key=lambda t: t[0]):
            floor[s.off:s.off + s.len] = value(s)
        later = []
        for s, d, ok, fua in self.reqs:
            if s.idx >= k or (d is not None and d < fs and ok):
                continue
            later.append((s.off, value(s), s.type == "t"))
        return bytes(floor), later


def mark(trace, label):
    """Append a marker record (the test driver's: 'the copy finished')
    and return nothing; read_trace gives it type 'M'."""
    data = label.encode()
    with open(trace, "ab") as f:
        f.write(HDR.pack(ord("M"), 0, 0, os.getpid(), 0, 0, 0, len(data)) + data)


def value(s):
    return s.data if s.type == "w" else bytes(s.len)


def check_sectors(data, floor, later, size=None):
    """Sectors of DATA that read neither FLOOR's value nor one of the
    LATER writes' (a trim allows zeros too, and the old value).  Returns
    a list of (offset, why)."""
    bad = []
    if size is not None and len(data) != size:
        return [(0, f"size {len(data)}, expected {size}")]
    n = len(data)
    step = 65536
    for c in range(0, n, step):
        if data[c:c + step] == floor[c:c + step]:
            continue
        for s in range(c, min(n, c + step), SECTOR):
            got = data[s:s + SECTOR]
            if got == floor[s:s + SECTOR]:
                continue
            if not sector_from_later(got, s, later, floor[s:s + SECTOR]):
                bad.append((s, "neither its flushed value nor a later write"))
                if len(bad) >= 8:
                    return bad
    return bad


def sector_from_later(got, s, later, old):
    """Whether sector S's bytes GOT can be explained: each byte range of
    it covered by the writes (a partial-sector write leaves the rest of
    the sector as it was) holds one of their values or its floor."""
    for off, data, trim in later:
        if off <= s and s + SECTOR <= off + len(data):
            if got == data[s - off:s - off + SECTOR]:
                return True
            if trim and got == bytes(SECTOR):
                return True
    # Partial writes: every byte must come from the floor or a write
    # covering it (checked byte by byte; rare).
    return partial_ok(got, s, later, old)


def partial_ok(got, s, later, old):
    for i in range(SECTOR):
        b = got[i]
        pos = s + i
        ok = b == old[i]
        for off, data, trim in later:
            if ok:
                break
            ok = off <= pos < off + len(data) and (data[pos - off] == b or
                                                   (trim and b == 0))
        if not ok:
            return False
    return True
