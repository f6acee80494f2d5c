#!/usr/bin/python3
# nbdkit vhd FILE layer=top|N: one layer's own data (an increment) over
# NBD.  A 3-deep chain over 5 GiB (data past 4 GiB, partial sectors,
# overlaps between layers): for each layer the export's block status
# calls data exactly the sectors that layer holds, those read as the
# layer stores them (what the chain read there when the layer was
# current), everything else reads zeros; the export is read-only; a
# copy of it moves only the layer's bytes; bad values and sr= refused.
import json
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (tap, run_test, nbdkit, nbd_connect, nbd_map,  # noqa: E402
                     nbdkit_start_fails, sh, ROOT, MiB, GiB)

SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")
SXM_COPY = os.path.join(ROOT, "client", "sxm-copy")
SIZE = 5 * GiB
S = 512


def write_layer(d, path, rng, count):
    """COUNT random writes (some partial sectors, one region past 4 GiB)
    into PATH through the plugin; returns the sectors it now owns and
    what each reads (through its chain, as it is now)."""
    owned = set()
    with nbdkit(d, path) as uri:
        h = nbd_connect(uri)
        for i in range(count):
            base = rng.choice([0, 64 * MiB, 4 * GiB + 3 * MiB])
            off = base + rng.randrange(0, 8 * MiB)
            n = rng.choice([1, 700, 4096, 70000, 2 * MiB + 5])
            if rng.random() < 0.5:
                off -= off % S
            h.pwrite(rng.randbytes(n), off)
            owned.update(range(off // S, (off + n + S - 1) // S))
        h.flush()
        want = {s: h.pread(S, s * S) for s in owned}
        h.shutdown()
    return owned, want


def runs_of(sectors):
    """[(offset, length)] of the sorted sector set, merged."""
    out = []
    for s in sorted(sectors):
        if out and out[-1][0] + out[-1][1] == s * S:
            out[-1] = (out[-1][0], out[-1][1] + S)
        else:
            out.append((s * S, S))
    return out


def main(d):
    rng = random.Random(2412)
    base, mid, top = (os.path.join(d, f"{n}.vhd") for n in ("base", "mid", "top"))
    sh(SXM_VHD, "create", base, str(SIZE))
    own = {}
    own[2] = write_layer(d, base, rng, 30)
    sh(SXM_VHD, "snapshot", base, mid)
    own[1] = write_layer(d, mid, rng, 30)
    sh(SXM_VHD, "snapshot", mid, top)
    own[0] = write_layer(d, top, rng, 30)
    # A dynamic image's own data is whole blocks' sectors as its bitmaps
    # say: take base's from its own export rather than from the writes.
    with nbdkit(d, base, "-r") as uri:
        base_map = [(o, n) for o, n, a in nbd_map(uri) if a]

    for layer, arg in ((0, "layer=top"), (1, "layer=1"), (2, "layer=2")):
        sectors, want = own[layer]
        with nbdkit(d, top, arg) as uri:
            got = [(o, n) for o, n, a in nbd_map(uri) if a]
            expect = base_map if layer == 2 else runs_of(sectors)
            tap.eq(got, expect, f"{arg}: block status calls data exactly the "
                   f"layer's own sectors ({sum(n for _, n in expect)} bytes)")
            h = nbd_connect(uri)
            bad = [s for s in sorted(want) if h.pread(S, s * S) != want[s]]
            tap.ok(not bad, f"{arg}: its {len(want)} written sectors read as "
                   f"the layer stores them", f"first bad sectors: {bad[:5]}")
            holes = [s for s in (rng.randrange(0, SIZE // S) for _ in range(300))
                     if s not in sectors and not any(o <= s * S < o + n for o, n in expect)]
            holes += [max(sectors) + 1, min(sectors) - 1]
            holes = [s for s in holes if 0 <= s < SIZE // S and s not in sectors]
            nonzero = [s for s in holes if h.pread(S, s * S) != bytes(S)]
            tap.ok(not nonzero, f"{arg}: {len(holes)} sectors it does not hold "
                   f"read zeros", nonzero[:5])
            tap.ok(h.is_read_only(), f"{arg}: the export is read-only")
            try:
                h.pwrite(b"x" * S, 0)
                wrote = True
            except Exception:
                wrote = False
            tap.ok(not wrote, f"{arg}: a write is refused")
            h.shutdown()

    # The increment copied with block status alone: sxm-copy moves only
    # the layer's bytes, and the copy holds them at their offsets.
    out = os.path.join(d, "inc.vhd")
    with nbdkit(d, top, "layer=top") as uri:
        p = subprocess.run([SXM_COPY, "--json", "-q", uri, out, "--create"],
                           capture_output=True, text=True, timeout=300)
    summary = json.loads(p.stdout) if p.returncode == 0 else {}
    held = len(own[0][0]) * S
    moved = summary.get("read")
    tap.ok(p.returncode == 0 and moved is not None and moved <= held * 1.01 + 2 * MiB,
           f"sxm-copy of layer=top read {moved} bytes for the layer's {held}",
           p.stdout + p.stderr)
    with nbdkit(d, out, "-r") as uri:
        h = nbd_connect(uri)
        sectors, want = own[0]
        bad = [s for s in sorted(want) if h.pread(S, s * S) != want[s]]
        tap.ok(not bad, "the copied increment holds the layer's sectors",
               bad[:5])
        h.shutdown()

    # One image alone: layer=top is the whole disk.
    with nbdkit(d, base, "layer=top") as a, nbdkit(d, base, "-r") as b:
        tap.eq(nbd_map(a), nbd_map(b), "a single image: layer=top maps as the "
               "image itself")

    rc, err = nbdkit_start_fails(top, "layer=3")
    tap.ok(rc != 0 and "layer=3" in err and "3 layers" in err and base in err,
           "layer=3 of a 3-deep chain refused, naming its layers", err)
    rc, err = nbdkit_start_fails(top, "layer=-1")
    tap.ok(rc != 0 and "expected top or a layer number" in err,
           "layer=-1 refused", err)
    rc, err = nbdkit_start_fails(top, "layer=1x")
    tap.ok(rc != 0 and "layer=1x" in err, "layer=1x refused", err)
    rc, err = nbdkit_start_fails(f"sr={d}", "layer=top")
    tap.ok(rc != 0 and "not with sr=" in err, "layer= with sr= refused", err)


if __name__ == "__main__":
    run_test(main)
