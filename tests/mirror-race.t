#!/usr/bin/python3
# The mirror's correctness under races: randomized live migrations of a disk
# that a guest keeps writing.  Each run draws, from its seed, the source
# plugin (our VHD plugin, nbdkit file, nbdkit memory), the destination
# (same choices), sizes (odd ones too), the dirty-map granularity, the
# copier's request size and connections, nbdkit's delay filter under the
# mirror (slow source reads widen the copier's read-to-write window) or on
# the destination (slow mirrored writes), and the guest's operations:
# several connections doing aligned, 512-byte and byte-unaligned writes,
# write_zeroes with and without NO_HOLE, trims, flushes and FUA writes,
# half of them in a small hot zone; every fourth run adds fio (nbd engine,
# verify=crc32c) on its own region.  sxm-copy --live copies while the guest
# writes, the filter relaying each data run (NBD cache requests) or, in a
# third of the runs, reading and writing back through the copy export
# (--no-relay), with the copy yielding to the guest or not; a first switchover is taken with the guest still writing (its
# writes are held, then resumed), a second after it stops.  Each must be
# ready, and an independent read of both exports must give equal digests.
#
# MIRROR_RUNS=N (default 50) runs; MIRROR_SEED=S reruns one seed (each
# run prints its seed and parameters).
#
# Negative control: the same workload with the copier writing straight to
# the destination (bypassing the tracker) must be caught, or this test
# could not fail.
import os
import random
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (MiB, PLUGIN, nbdkit, nbdkit_log_errors,  # noqa: E402
                     run_test, sh, tap)
from mirrortest import (FILTER, SXM_COPY, SXM_VHD, Guest, ctl,  # noqa: E402
                        export_digest, first_difference, live_copy, prefill)

RUNS = int(os.environ.get("MIRROR_RUNS", "50"))
ONE_SEED = os.environ.get("MIRROR_SEED")
BASE_SEED = int(os.environ.get("MIRROR_BASE_SEED", str(int(time.time()))))


def backend(scratch, kind, name, size, rng):
    """(plugin, args) for an export of at least SIZE bytes."""
    if kind == "vhd":
        path = os.path.join(scratch, name + ".vhd")
        vsize = (size + MiB - 1) // MiB * MiB
        bs = rng.choice(["64K", "2M"])
        sh(SXM_VHD, "create", f"--block-size={bs}", path, str(vsize))
        return PLUGIN, [path]
    if kind == "file":
        path = os.path.join(scratch, name + ".img")
        with open(path, "wb") as f:
            f.truncate(size)
        return "file", [path]
    return "memory", [f"size={size}"]


def fio_job(uri, size, seed):
    """fio's nbd engine writing and verifying the last quarter."""
    lo = size * 3 // 4 // 4096 * 4096
    return subprocess.Popen(
        ["fio", "--name=guest", "--ioengine=nbd", f"--uri={uri}",
         "--rw=randwrite", "--bs=4k", "--iodepth=4", f"--offset={lo}",
         f"--size={(size - lo) // 4096 * 4096}", "--verify=crc32c",
         "--verify_fatal=1", f"--randseed={seed}", "--do_verify=1",
         "--verify_state_save=0",
         "--output-format=terse"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def one_run(scratch, seed, bypass=False):
    """One randomized live migration.  Returns (ok, description); a
    failure's description ends with what the two servers logged as errors."""
    uris = []
    ok, why = one_run_logged(scratch, seed, uris, bypass)
    if not ok and not bypass:
        for name, uri in zip(("destination", "source"), uris):
            errs = nbdkit_log_errors(uri)
            if errs:
                why += f"\n{name} nbdkit:\n{errs}"
    return ok, why


def one_run_logged(scratch, seed, uris, bypass):
    rng = random.Random(seed)
    src_kind = rng.choice(["vhd", "file", "memory"])
    dst_kind = rng.choice(["vhd", "file", "memory"])
    size = rng.choice([8, 16, 24]) * MiB
    if src_kind != "vhd":
        size += rng.choice([0, 0, 512, 4096 + 512, 65536 + 1536])
    gran = rng.choice([512, 4096, 4096, 65536])
    delay = rng.choice([None, "src", "dst"])
    reqsize = rng.choice(["64K", "256K", "1M"])
    copy_conns = rng.choice([1, 2])
    dest_conns = rng.choice([1, 2, 3])
    guest_conns = rng.choice([2, 3, 4])
    relay = rng.choice([True, True, False])
    gprio = rng.choice([True, False])
    use_fio = seed % 4 == 0 and not bypass
    d = os.path.join(scratch, f"run{seed}")
    os.mkdir(d)
    desc = (f"seed={seed} src={src_kind} dst={dst_kind} size={size} "
            f"gran={gran} delay={delay} req={reqsize} copyC={copy_conns} "
            f"destC={dest_conns} guestC={guest_conns} fio={use_fio} "
            f"relay={relay} guest_priority={gprio}")
    tap.diag(desc)

    dplug, dargs = backend(d, dst_kind, "dst", size, rng)
    splug, sargs = backend(d, src_kind, "src", size, rng)
    ctl_sock = os.path.join(d, "ctl.sock")
    sfilters = [FILTER] + (["delay"] if delay == "src" else [])
    sextra = [f"mirror-control={ctl_sock}", f"mirror-granularity={gran}"]
    if delay == "src":
        sextra += ["delay-read=2ms"]
    dfilters = ["delay"] if delay == "dst" else []
    dextra = ["delay-write=1ms", "delay-zero=1ms"] if delay == "dst" else []

    with nbdkit(d, *dargs, *dextra, plugin=dplug, filters=dfilters) as duri, \
         nbdkit(d, *sargs, *sextra, plugin=splug, filters=sfilters) as suri:
        uris += [duri, suri]
        prefill(suri, size, seed, fraction=rng.choice([0.2, 0.6]))
        r = ctl(ctl_sock, "start", dest=duri, connections=dest_conns,
                guest_priority=gprio)
        if not r.get("ok"):
            return False, f"start: {r}"
        gsize = size * 3 // 4 if use_fio else size
        guest = Guest(suri, gsize, seed, conns=guest_conns).start()
        fio = fio_job(suri, size, seed) if use_fio else None
        time.sleep(rng.uniform(0, 0.2))
        if bypass:
            # Wrong on purpose: stale copies overwrite newer mirrored data.
            cp = subprocess.run([SXM_COPY, "-q", f"--request-size={reqsize}",
                                 "--target-is-zero", suri, duri],
                                capture_output=True, text=True, timeout=300)
        else:
            cp = live_copy(ctl_sock, suri, f"--request-size={reqsize}",
                           f"-C{copy_conns}",
                           *([] if relay else ["--no-relay"]))
        if cp.returncode != 0:
            guest.finish()
            return False, f"copy exited {cp.returncode}: {cp.stderr}"
        time.sleep(rng.uniform(0, 0.3))
        # First switchover with the guest still writing.
        r1 = ctl(ctl_sock, "switchover")
        if bypass:
            if r1.get("ok"):
                ctl(ctl_sock, "resume")
            guest.finish()
            r2 = ctl(ctl_sock, "switchover")
            return (not r1.get("ok") or not r2.get("ok")), f"{r1} {r2}"
        if not r1.get("ok"):
            guest.finish()
            return False, f"switchover under load: {r1}"
        held = r1.get("hold_ms")
        ctl(ctl_sock, "resume")
        time.sleep(rng.uniform(0.05, 0.3))
        ops = guest.finish()
        fio_out = ""
        if fio:
            out, err = fio.communicate(timeout=300)
            if fio.returncode != 0:
                return False, f"fio (verify) failed: {err[-2000:]}"
        if guest.errors:
            return False, f"guest errors: {guest.errors[:3]}"
        r2 = ctl(ctl_sock, "switchover")
        if not r2.get("ok"):
            return False, f"final switchover: {r2}"
        st = ctl(ctl_sock, "status")
        # Independent check: both exports read back, digests compared.
        sd, _ = export_digest(suri)
        dd = first_difference(suri, duri, size)
        if dd is not None:
            return False, f"exports differ at offset {dd}"
        ctl(ctl_sock, "complete")
        tap.diag(f"  {ops} guest ops{fio_out}, first hold {held} ms, "
                 f"dirty {st.get('dirty_bytes')} B, copied "
                 f"{st.get('copied_bytes')} B, skipped "
                 f"{st.get('copy_skipped_bytes')} B, readback "
                 f"{st.get('readback_bytes')} B; src digest {sd[:12]}")
    return True, desc


def main(scratch):
    seeds = ([int(ONE_SEED)] if ONE_SEED else
             [BASE_SEED + i for i in range(RUNS)])
    tap.diag(f"{len(seeds)} runs; rerun one with MIRROR_SEED=<seed>")
    for s in seeds:
        ok, why = one_run(scratch, s)
        tap.ok(ok, f"live migration under a writing guest, seed {s}", why)

    if ONE_SEED:
        return
    # Negative control: bypass the tracker; the switchover's comparison
    # (and ours) must notice within a few tries.
    caught = False
    tries = []
    for i in range(6):
        s = BASE_SEED + 100000 + i
        ok, why = one_run(scratch, s, bypass=True)
        tries.append(why[:300])
        if ok:
            caught = True
            break
    tap.ok(caught, "negative control: a copier bypassing the tracker "
           "leaves a difference that switchover reports", "\n".join(tries))


run_test(main)
