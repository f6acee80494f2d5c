#!/usr/bin/python3
# The mirror filter's behaviour, one property at a time, against real
# nbdkit servers: configuration refusals, idle pass-through, the control
# protocol and its refusals, each kind of mirrored request (aligned,
# unaligned, at an odd end of the disk, above 4 GiB, zero, trim, FUA,
# flush), the copy export, switchover (difference found and reported by
# offset; writes held while ready; resume; complete refuses later writes),
# abort leaving the source untouched, TLS to the destination, and the
# failure policy (destination killed or stalled: the guest carries on and
# the mirror is broken; strict mode: the guest sees the error).
# Races are tests/mirror-race.t's job.  One function a section: run_test
# runs each even when one before it failed or raised.
import contextlib
import hashlib
import os
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import (qemu_vhd, GiB, MiB, PLUGIN, nbdkit, nbdkit_start_fails,  # noqa: E402
                     run_test, sh, tap, tmpfs)
from mirrortest import (FILTER, SXM_MIRROR, SXM_VHD, Guest, Server,  # noqa: E402
                        connect, ctl, ctl_raw, first_difference, live_copy,
                        prefill)


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def mirror_cli(*args):
    p = subprocess.run([SXM_MIRROR, *args], capture_output=True, text=True,
                       timeout=60)
    return p.returncode, p.stdout, p.stderr


@contextlib.contextmanager
def mirror_pair(S, tag, size):
    """A sparse source file of SIZE bytes served with the mirror filter
    (control socket S/ctl-TAG.sock) and an empty memory destination of
    the same size: yields (source server, destination server, control)."""
    src = sparse(os.path.join(S, f"{tag}-src.img"), size)
    cs = os.path.join(S, f"ctl-{tag}.sock")
    with Server(S, f"size={size}", plugin="memory", name=f"{tag}dst") as dst, \
         Server(S, src, "mirror-control=" + cs, plugin="file",
                filters=[FILTER], name=f"{tag}src") as s:
        yield s, dst, cs


def sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def configuration(S):
    """Configuration refusals."""
    img = sparse(os.path.join(S, "cfg.img"), MiB)
    rc, err = nbdkit_start_fails("file", img, plugin="--filter=" + FILTER)
    tap.ok(rc != 0 and "mirror-control" in err,
           "no mirror-control=: nbdkit refuses to start", err)
    rc, err = nbdkit_start_fails("file", img, "mirror-control=" + S + "/c",
                                 "mirror-granularity=3000",
                                 plugin="--filter=" + FILTER)
    tap.ok(rc != 0 and "power of two" in err, "bad granularity refused", err)
    rc, err = nbdkit_start_fails("file", img, "mirror-control=" + S + "/c",
                                 "mirror-on-error=maybe",
                                 plugin="--filter=" + FILTER)
    tap.ok(rc != 0 and "mirror-on-error" in err, "bad mirror-on-error refused",
           err)
    notsock = os.path.join(S, "notsock")
    open(notsock, "w").close()
    rc, err = nbdkit_start_fails("file", img, "mirror-control=" + notsock,
                                 plugin="--filter=" + FILTER)
    tap.ok(rc != 0 and "not a socket" in err and os.path.exists(notsock),
           "a regular file at the control path is refused, not removed", err)


def idle_protocol_requests(S):
    """Idle pass-through, the control protocol and its refusals, each kind
    of mirrored request, switchover, ready, resume, complete, abort."""
    size = 12 * MiB + 512                   # odd end: a partial last granule
    src = sparse(os.path.join(S, "src.img"), size)
    cs = os.path.join(S, "ctl.sock")
    with Server(S, "size=16M", plugin="memory", name="dst") as dst, \
         Server(S, src, "mirror-control=" + cs, plugin="file",
                filters=[FILTER], name="src") as s:
        mode = stat.S_IMODE(os.stat(cs).st_mode)
        tap.eq(mode, 0o600, "control socket is mode 0600")
        r = ctl(cs, "status")
        tap.ok(r["ok"] and r["state"] == "idle", "idle at first", r)
        h = connect(s.uri)
        h.pwrite(b"idle" * 1024, 0)
        h.flush()
        with open(src, "rb") as f:
            tap.ok(f.read(4096) == b"idle" * 1024, "idle: writes reach the source")

        out = ctl_raw(cs, b'{"cmd": "status", "x": [1]}\n')
        tap.ok('"ok":false' in out and "byte" in out,
               "malformed request: error naming the byte offset", out)
        out = ctl_raw(cs, b'{"cmd":"explode"}\n')
        tap.ok('"ok":false' in out and "unknown command" in out,
               "unknown command refused", out)
        for bad in ['{"cmd":"resume"}', '{"cmd":"complete"}', '{"cmd":"abort"}',
                    '{"cmd":"switchover"}', '{"cmd":"copied"}']:
            out = ctl_raw(cs, (bad + "\n").encode())
            tap.ok('"ok":false' in out and '"state":"idle"' in out,
                   f"{bad} while idle: refused", out)
        r = ctl(cs, "start")
        tap.ok(not r["ok"] and "dest" in r["error"], "start without dest", r)
        r = ctl(cs, "start", dest=f"nbd+unix:///?socket={S}/nothing.sock")
        tap.ok(not r["ok"] and "cannot connect" in r["error"],
               "unreachable destination: refused", r)
        r = ctl(cs, "start", dest="nbd://192.0.2.1/")
        tap.ok(not r["ok"] and "not loopback" in r["error"],
               "plaintext to a non-loopback host: refused by policy", r)
        with nbdkit(S, "size=1M", plugin="memory") as small:
            r = ctl(cs, "start", dest=small)
            tap.ok(not r["ok"] and "smaller" in r["error"],
                   "destination smaller than the source: refused", r)
        with nbdkit(S, "-r", "size=16M", plugin="memory") as ro:
            r = ctl(cs, "start", dest=ro)
            tap.ok(not r["ok"] and "read-only" in r["error"],
                   "read-only destination: refused", r)
        rc, so, se = mirror_cli(cs, "status")
        tap.ok(rc == 0 and '"state":"idle"' in so, "sxm-mirror status: exit 0")
        rc, so, se = mirror_cli(cs, "resume")
        tap.ok(rc == 1 and "resume" in se, "sxm-mirror: refused command: exit 1",
               se)
        rc, so, se = mirror_cli(S + "/no.sock", "status")
        tap.eq(rc, 4, "sxm-mirror: no socket: exit 4")
        rc, so, se = mirror_cli(cs, "frobnicate")
        tap.eq(rc, 2, "sxm-mirror: unknown command: exit 2")
        p = live_copy(cs, s.uri)
        tap.ok(p.returncode == 4 and "not mirroring" in p.stderr,
               "sxm-copy --live while idle: exit 4, says why", p.stderr)

        # Mirroring: the source was zeros but for the idle write; the
        # destination is all zeros: make them equal first with the copy.
        rc, so, se = mirror_cli(cs, "start", dst.uri, "--connections=2")
        tap.ok(rc == 0 and '"state":"mirroring"' in so, "sxm-mirror start", se)
        r = ctl(cs, "start", dest=dst.uri)
        tap.ok(not r["ok"] and "already" in r["error"],
               "second start refused", r)
        p = live_copy(cs, s.uri)
        tap.ok(p.returncode == 0, "live copy", p.stderr)
        # sxm-mirror switchover's default, as sxm migrate's: after a copy
        # reported "copied", no comparison in the hold; --verify compares.
        rc, so, se = mirror_cli(cs, "switchover")
        rc2, so2, se2 = mirror_cli(cs, "resume")
        rc3, so3, se3 = mirror_cli(cs, "switchover", "--verify")
        rc4, _, _ = mirror_cli(cs, "resume")
        tap.ok(rc == 0 and '"verified":false' in so and rc2 == 0 and
               rc3 == 0 and '"verified":true' in so3 and rc4 == 0,
               "sxm-mirror switchover: unverified after a finished copy, "
               "--verify compares", so + se + so3 + se3)
        ops = [("write 4K aligned", lambda: h.pwrite(b"\x11" * 4096, 8192)),
               ("write unaligned in clean granules",
                lambda: h.pwrite(b"\x22" * 1000, 1 * MiB + 123)),
               ("write across granules, unaligned",
                lambda: h.pwrite(b"\x33" * 70000, 2 * MiB + 4000)),
               ("write at the odd end", lambda: h.pwrite(b"\x44" * 700,
                                                         size - 700)),
               ("FUA write", lambda: h.pwrite(b"\x55" * 512, 3 * MiB, 1)),
               ("zero, unaligned", lambda: h.zero(5000, 2 * MiB + 10000)),
               ("zero, aligned", lambda: h.zero(1 * MiB, 4 * MiB)),
               ("trim", lambda: h.trim(8192, 8192)),
               ("flush", lambda: h.flush())]
        for name, op in ops:
            op()
            diff = first_difference(s.uri, dst.uri, size)
            tap.ok(diff is None, f"mirrored: {name}: destination equal",
                   f"first difference at {diff}")
        st = ctl(cs, "status")
        tap.ok(st["mirrored_writes"] >= 8 and st["dirty_bytes"] > 0 and
               st["readback_bytes"] > 0 and st["copy"] == "done",
               "status counts mirrored writes, dirty and read-back bytes", st)

        # The copy export needs the running mirror's token.
        try:
            connect(s.uri.replace("///", "///sxm-mirror-copy-0000"))
            tap.ok(False, "copy export with a wrong token: refused")
        except Exception as e:
            tap.ok(True, "copy export with a wrong token: refused")
            del e

        # A planted difference is found by switchover, which then lets the
        # guest carry on.
        d = connect(dst.uri)
        d.pwrite(b"\xee", 7 * MiB + 5)
        r = ctl(cs, "switchover")
        tap.ok(not r["ok"] and f"offset {7 * MiB + 5}" in r["error"] and
               r["state"] == "mirroring",
               "switchover reports a planted difference by offset", r)
        h.pwrite(b"\x00", 7 * MiB + 5)            # the guest repairs it
        tap.ok(first_difference(s.uri, dst.uri, size) is None,
               "writes flow after a failed switchover")

        # Ready holds guest writes; resume releases them.
        r = ctl(cs, "switchover")
        tap.ok(r["ok"] and r["state"] == "ready" and r["verified"] and
               r["compared_bytes"] > 0, "switchover: ready, verified", r)
        done = threading.Event()
        h2 = connect(s.uri)

        def late_write():
            h2.pwrite(b"\x66" * 4096, 6 * MiB)
            done.set()
        t = threading.Thread(target=late_write)
        t.start()
        time.sleep(0.5)
        tap.ok(not done.is_set(), "while ready a guest write is held")
        tap.ok(h.pread(1000, 1 * MiB + 123) == b"\x22" * 1000,
               "while ready reads still flow")
        r = ctl(cs, "resume")
        t.join(10)
        tap.ok(r["ok"] and done.is_set(), "resume releases the held write", r)
        tap.ok(first_difference(s.uri, dst.uri, size) is None,
               "and it was mirrored")
        h2.shutdown()
        d.shutdown()

        # Complete: later writes are refused; reads work.
        r = ctl(cs, "switchover", verify=False)
        tap.ok(r["ok"] and r["verified"] is False, "switchover without verify",
               r)
        r = ctl(cs, "complete")
        tap.ok(r["ok"] and r["state"] == "completed", "complete", r)
        try:
            h.pwrite(b"x", 0)
            tap.ok(False, "after complete a guest write is refused")
        except Exception as e:
            tap.ok("Input/output error" in str(e),
                   "after complete a guest write is refused (EIO)", e)
        tap.ok(h.pread(1000, 1 * MiB + 123) == b"\x22" * 1000,
               "after complete reads still work")
        before = file_digest(src)
        r = ctl(cs, "abort")
        tap.ok(r["ok"] and r["state"] == "idle" and r["was"] == "completed",
               "abort from completed: idle", r)
        tap.eq(file_digest(src), before, "abort did not touch the source")
        h.pwrite(b"again", 0)
        tap.ok(True, "idle again: writes pass")

        # Abort mid-mirror leaves the source as the guest left it.
        r = ctl(cs, "start", dest=dst.uri)
        h.pwrite(b"\x77" * 4096, 0)
        h.flush()
        before = file_digest(src)
        r = ctl(cs, "abort")
        tap.ok(r["ok"] and r["was"] == "mirroring" and
               file_digest(src) == before,
               "abort while mirroring: idle, source untouched", r)
        h.shutdown()


def old_data_stale_copiers(S):
    """A destination with old data; stale copiers; a named export."""
    cs3 = os.path.join(S, "ctl3.sock")
    size3 = 16 * MiB
    with Server(S, "size=16M", plugin="memory", name="odst") as dst, \
         Server(S, "size=16M", "mirror-control=" + cs3, plugin="memory",
                filters=[FILTER], name="osrc") as s:
        g = connect(s.uri)
        g.pwrite(b"\x5a" * MiB, 2 * MiB)          # data; the rest are holes
        d = connect(dst.uri)
        d.pwrite(b"\xa5" * MiB, 8 * MiB)          # old data in a source hole
        d.pwrite(b"\xa5" * 4096, 2 * MiB + 4096)  # and under source data
        d.shutdown()
        r = ctl(cs3, "start", dest=dst.uri)
        tap.ok(r["ok"] and r["dest_zero"] is False and
               ctl(cs3, "status")["export"] is None,
               "start: a destination with data is not dest_zero; every "
               "export mirrored by default", r)
        r = ctl(cs3, "switchover", verify=False)
        tap.ok(not r["ok"] and "finished bulk copy" in r["error"] and
               r["state"] == "mirroring",
               "switchover without verify refused before 'copied'", r)
        p = live_copy(cs3, s.uri, "--verify")
        tap.ok(p.returncode == 2 and "--verify" in p.stderr,
               "sxm-copy --live --verify refused (exit 2)", p.stderr)
        p = live_copy(cs3, s.uri)
        tap.ok(p.returncode == 0, "live copy onto old data", p.stderr)
        diff = first_difference(s.uri, dst.uri, size3)
        tap.ok(diff is None, "live copy zeroed the old data in the source's "
               "holes", f"first difference at {diff}")
        # A copier left over from an aborted mirror must not write into
        # the next one's destination.
        curi = s.uri.replace("///", "///" + ctl(cs3, "status")["copy_export"])
        stale = connect(curi)
        ctl(cs3, "abort")
        r = ctl(cs3, "start", dest=dst.uri, export="other")
        try:
            stale.pwrite(b"\xff" * 4096, 12 * MiB)
            tap.ok(False, "a copy connection from an earlier mirror is "
                   "refused")
        except Exception as e:
            tap.ok("not permitted" in str(e),
                   "a copy connection from an earlier mirror is refused "
                   "(EPERM)", e)
        d = connect(dst.uri)
        tap.ok(d.pread(4096, 12 * MiB) == bytes(4096),
               "and nothing reached the new destination")
        # start named "other": the guest on "" is not mirrored, one on
        # "other" is.
        g.pwrite(b"\x01" * 4096, 0)
        o = connect(s.uri.replace("///", "///other"))
        o.pwrite(b"\x02" * 4096, 4096)
        st = ctl(cs3, "status")
        tap.ok(st["export"] == "other" and st["mirrored_writes"] == 1 and
               d.pread(4096, 0) != b"\x01" * 4096 and
               d.pread(4096, 4096) == b"\x02" * 4096,
               "a named export: only its connections are mirrored", st)
        ctl(cs3, "abort")
        for x in (stale, d, o, g):
            x.shutdown()


def above_4gib(S):
    """Writes above 4 GiB."""
    with mirror_pair(S, "big", 5 * GiB) as (s, dst, cs2):
        h = connect(s.uri)
        h.pwrite(b"\x5a" * MiB, 4 * GiB + 3 * MiB)      # before the mirror
        ctl(cs2, "start", dest=dst.uri)
        h.pwrite(b"\xa5" * 10000, 4 * GiB + 512 * MiB + 77)
        h.zero(3000, 4 * GiB + 3 * MiB + 100)
        p = live_copy(cs2, s.uri)
        r = ctl(cs2, "switchover")
        tap.ok(p.returncode == 0 and r["ok"],
               "5 GiB disk, writes above 4 GiB: copied, ready", (p.stderr, r))
        a, b = connect(s.uri), connect(dst.uri)
        same = all(a.pread(MiB, o) == b.pread(MiB, o)
                   for o in (4 * GiB + 3 * MiB, 4 * GiB + 512 * MiB))
        tap.ok(same, "regions above 4 GiB equal on both sides")
        a.shutdown()
        b.shutdown()
        ctl(cs2, "abort")
        h.shutdown()


def tls_destination(S):
    """TLS to the destination."""
    psk = os.path.join(S, "keys.psk")
    bad = os.path.join(S, "bad.psk")
    sh("psktool", "-u", "alice", "-p", psk)
    sh("psktool", "-u", "alice", "-p", bad)
    src3 = sparse(os.path.join(S, "src3.img"), 4 * MiB)
    cs3 = os.path.join(S, "ctlt.sock")
    with Server(S, "size=4M", "--tls=require", "--tls-psk=" + psk,
                plugin="memory", name="tdst") as dst, \
         Server(S, src3, "mirror-control=" + cs3, plugin="file",
                filters=[FILTER], name="tsrc") as s:
        sock = dst.sock
        good = f"nbds+unix://alice@/?socket={sock}&tls-psk-file={psk}"
        wrong = f"nbds+unix://alice@/?socket={sock}&tls-psk-file={bad}"
        r = ctl(cs3, "start", dest=wrong)
        tap.ok(not r["ok"] and "cannot connect" in r["error"],
               "TLS destination, wrong key: refused cleanly", r)
        r = ctl(cs3, "start", dest=dst.uri)
        tap.ok(not r["ok"], "plaintext to a TLS-only destination: refused", r)
        os.chmod(psk, 0o644)
        r = ctl(cs3, "start", dest=good)
        tap.ok(not r["ok"] and "0644" in r["error"],
               "world-readable PSK file: refused", r)
        os.chmod(psk, 0o600)
        r = ctl(cs3, "start", dest=good)
        tap.ok(r["ok"], "TLS destination with the right key: mirroring", r)
        h = connect(s.uri)
        h.pwrite(b"secret" * 100, 4096)
        p = live_copy(cs3, s.uri)
        r = ctl(cs3, "switchover")
        tap.ok(p.returncode == 0 and r["ok"], "over TLS: copied and ready",
               (p.stderr, r))
        ctl(cs3, "abort")
        h.shutdown()


def live_copy_summary(S):
    """A live copy's summary names the two real ends, not the copy export
    twice; status reports the destination it was started with."""
    with mirror_pair(S, "live", 16 * MiB) as (s, dst, csl):
        h = connect(s.uri)
        h.pwrite(b"\x42" * MiB, 3 * MiB)
        ctl(csl, "start", dest=dst.uri)
        st = ctl(csl, "status")
        cp = subprocess.run(
            [os.path.join(os.path.dirname(SXM_MIRROR), "sxm-copy"),
             f"--live={csl}", s.uri], capture_output=True, text=True,
            timeout=120)
        tap.ok(st.get("dest") == dst.uri and cp.returncode == 0 and
               f"sxm-copy: {s.uri} -> {dst.uri}: done" in cp.stderr,
               "--live summary: SOURCE -> the mirror's destination (status "
               "'dest')", f"{st}\n{cp.stderr}")
        ctl(csl, "abort")
        h.shutdown()


def copy_relay(S):
    """NBD cache on the copy export relays a range from the source to the
    destination: only clean granules, at most copy_relay bytes, only for
    the mirror the connection was opened for.  sxm-copy --live uses it,
    --no-relay reads and writes back."""
    with mirror_pair(S, "relay", 16 * MiB) as (s, dst, cs):
        g = connect(s.uri)
        g.pwrite(b"\x42" * MiB, 3 * MiB)
        r = ctl(cs, "start", dest=dst.uri)
        tap.ok(r.get("copy_relay") == 4 * MiB and
               ctl(cs, "status").get("copy_relay") == 4 * MiB,
               "start and status offer copy_relay (4 MiB at a time)", r)
        g.pwrite(b"\x17" * 4096, 3 * MiB + 8192)   # dirty: the guest's
        c = connect(s.uri.replace("///", "///" + r["copy_export"]))
        c.cache(MiB, 3 * MiB)
        d = connect(dst.uri)
        st = ctl(cs, "status")
        want = bytearray(b"\x42" * MiB)
        want[8192:12288] = b"\x17" * 4096
        tap.ok(c.can_cache() and d.pread(MiB, 3 * MiB) == bytes(want) and
               st["copied_bytes"] == MiB - 4096 and
               st["copy_skipped_bytes"] == 4096,
               "a relay copies the clean granules and leaves the dirty one "
               "to the guest's mirrored write", st)
        try:
            c.cache(4 * MiB + 4096, 0)
            tap.ok(False, "a relay over copy_relay bytes is refused")
        except Exception as e:
            tap.ok("Invalid argument" in str(e),
                   "a relay over copy_relay bytes is refused (EINVAL)", e)
        ctl(cs, "abort")
        g.pwrite(b"\x99" * MiB, 9 * MiB)         # not mirrored: idle
        ctl(cs, "start", dest=dst.uri)
        try:
            c.cache(MiB, 9 * MiB)
            tap.ok(False, "a relay on a copy connection from an earlier "
                   "mirror is refused")
        except Exception as e:
            tap.ok("not permitted" in str(e) and
                   d.pread(4096, 9 * MiB) == bytes(4096),
                   "a relay on a copy connection from an earlier mirror is "
                   "refused (EPERM) and copies nothing", e)
        for extra, relayed in ((), True), (("--no-relay",), False):
            p = subprocess.run(
                [os.path.join(os.path.dirname(SXM_MIRROR), "sxm-copy"),
                 f"--live={cs}", *extra, s.uri], capture_output=True,
                text=True, timeout=120)
            tap.ok(p.returncode == 0 and
                   ("relayed by the filter" in p.stderr) == relayed and
                   first_difference(s.uri, dst.uri, 16 * MiB) is None,
                   f"sxm-copy --live {' '.join(extra) or '(relaying)'}: the "
                   "destination equals the source", p.stderr)
        ctl(cs, "abort")
        p = subprocess.run(
            [os.path.join(os.path.dirname(SXM_MIRROR), "sxm-copy"),
             "--no-relay", s.uri, dst.uri], capture_output=True, text=True,
            timeout=60)
        tap.ok(p.returncode == 2 and "--no-relay is for --live" in p.stderr,
               "--no-relay without --live: refused (exit 2)", p.stderr)
        for x in (c, d, g):
            x.shutdown()


def guest_priority(S):
    """The copy yields to the guest by default ("guest_priority"): copy
    writes wait while guest writes are in flight, and status counts the
    waits; with guest_priority=false they never wait.  Either way the
    destination ends equal to the source; a bad value is refused."""
    size = 64 * MiB
    for gp in (None, False):
        tag = "gp" if gp is None else "nogp"
        with mirror_pair(S, tag, size) as (s, dst, cs):
            prefill(s.uri, size, 7, fraction=1.0, piece=MiB)
            g = Guest(s.uri, size, 11, conns=2, can_trim=False).start()
            kw = {} if gp is None else {"guest_priority": gp}
            ctl(cs, "start", dest=dst.uri, **kw)
            cp = live_copy(cs, s.uri)
            st = ctl(cs, "status")
            ops = g.finish()
            sw = ctl(cs, "switchover", verify=True)
            want_gp = gp is None
            waited = st.get("copy_yields", -1)
            tap.ok(cp.returncode == 0 and not g.errors and ops > 0 and
                   st.get("guest_priority") is want_gp and
                   (waited > 0 if want_gp else waited == 0) and
                   sw.get("state") == "ready",
                   f"guest_priority {'default (on)' if want_gp else 'false'}"
                   f": {waited} copy writes waited for the guest "
                   f"({st.get('copy_yield_ms')} ms), {ops} guest requests, "
                   "destination verified equal",
                   f"{cp.stderr}\n{g.errors[:3]}\n{st}\n{sw}")
            ctl(cs, "abort")
    with mirror_pair(S, "gpbad", MiB) as (s, dst, cs):
        r = ctl(cs, "start", dest=dst.uri, guest_priority="yes")
        tap.ok(r.get("ok") is False and
               "guest_priority" in r.get("error", ""),
               "start refuses a guest_priority that is not a boolean", r)


def destination_killed(S, strict=False):
    """The destination killed under a live copy: the guest carries on
    (or, STRICT, sees the error), the mirror is broken."""
    tag = "strict" if strict else "default"
    srcf = sparse(os.path.join(S, f"fsrc-{tag}.img"), 64 * MiB)
    csf = os.path.join(S, f"ctlf-{tag}.sock")
    extra = ["mirror-on-error=fail"] if strict else []
    with Server(S, "size=64M", plugin="memory", name="fdst") as dst, \
         Server(S, srcf, "mirror-control=" + csf, *extra, plugin="file",
                filters=[FILTER], name="fsrc") as s:
        h = connect(s.uri)
        for i in range(16):
            h.pwrite(bytes([i + 1]) * MiB, i * 4 * MiB)
        ctl(csf, "start", dest=dst.uri)
        h.pwrite(b"before" * 100, 100)
        # A slow live copy, killed under it.
        cp = subprocess.Popen(
            [os.path.join(os.path.dirname(SXM_MIRROR), "sxm-copy"), "-q",
             "--rate=4M", "--request-size=256K", f"--live={csf}", s.uri],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.7)
        dst.kill(9)
        err = None
        try:
            h.pwrite(b"after" * 100, 5 * MiB + 3)
        except Exception as e:
            err = str(e)
        st = ctl(csf, "status")
        if not strict:
            tap.ok(err is None, "destination killed: the guest's write "
                   "succeeds", err)
            with open(srcf, "rb") as f:
                f.seek(5 * MiB + 3)
                tap.ok(f.read(500) == b"after" * 100,
                       "and it is on the source")
        else:
            tap.ok(err is not None and "Input/output" in err,
                   "strict: destination killed: the guest's write fails",
                   err)
        tap.ok(st["state"] == "broken" and "destination" in st["reason"],
               f"{tag}: status says broken and why", st)
        out, cerr = cp.communicate(timeout=120)
        tap.ok(cp.returncode != 0 and "broken" in cerr,
               f"{tag}: the live copy fails and says the mirror broke",
               cerr)
        err2 = None
        try:
            h.pwrite(b"later", 0)
        except Exception as e:
            err2 = str(e)
        tap.ok((err2 is None) != strict,
               f"{tag}: later writes {'fail' if strict else 'succeed'} "
               "while broken", err2)
        r = ctl(csf, "abort")
        h.pwrite(b"fine", 0)
        tap.ok(r["ok"] and r["was"] == "broken",
               f"{tag}: abort after a break: idle, writes pass", r)
        h.shutdown()


def destination_killed_strict(S):
    destination_killed(S, strict=True)


def destination_stalled(S):
    """A destination that stops answering: bounded by the timeout."""
    srcs = sparse(os.path.join(S, "ssrc.img"), 8 * MiB)
    css = os.path.join(S, "ctls.sock")
    with Server(S, "size=8M", plugin="memory", name="sdst") as dst, \
         Server(S, srcs, "mirror-control=" + css, plugin="file",
                filters=[FILTER], name="ssrc") as s:
        ctl(css, "start", dest=dst.uri, timeout=2)
        h = connect(s.uri)
        h.pwrite(b"x" * 4096, 0)
        dst.kill(19)                                    # SIGSTOP
        t0 = time.time()
        err = None
        try:
            h.pwrite(b"y" * 4096, 4096)
        except Exception as e:
            err = str(e)
        took = time.time() - t0
        st = ctl(css, "status")
        tap.ok(err is None and 1.5 < took < 10,
               f"stalled destination: the guest's write returns after the "
               f"timeout ({took:.1f} s)", err)
        tap.ok(st["state"] == "broken" and "timed out" in st["reason"],
               "stalled destination: broken, timed out", st)
        dst.kill(18)                                    # SIGCONT
        ctl(css, "abort")
        h.shutdown()
        tap.ok("AddressSanitizer" not in s.logtext(), "no sanitizer report")


def vhd_to_vhd(S):
    """VHD source and destination, for the plugin's own paths."""
    sv = os.path.join(S, "s.vhd")
    dv = os.path.join(S, "d.vhd")
    sh(SXM_VHD, "create", sv, "64M")
    sh(SXM_VHD, "create", dv, "64M")
    csv = os.path.join(S, "ctlv.sock")
    with Server(S, dv, plugin=PLUGIN, name="vdst") as dst, \
         Server(S, sv, "mirror-control=" + csv, plugin=PLUGIN,
                filters=[FILTER], name="vsrc") as s:
        h = connect(s.uri)
        for i in range(8):
            h.pwrite(bytes([0x30 + i]) * 300000, i * 7 * MiB + 511)
        h.flush()
        ctl(csv, "start", dest=dst.uri)
        h.pwrite(b"\x99" * 5000, 3 * MiB + 1)
        p = live_copy(csv, s.uri)
        h.zero(100000, 14 * MiB)
        r = ctl(csv, "switchover")
        tap.ok(p.returncode == 0 and r["ok"], "VHD to VHD: copied, ready",
               (p.stderr, r))
        ctl(csv, "complete")
        h.shutdown()
    p = subprocess.run(["qemu-img", "compare", qemu_vhd(sv),
                        qemu_vhd(dv)], capture_output=True, text=True)
    tap.ok(p.returncode == 0, "qemu-img compare: the VHDs are identical",
           p.stdout + p.stderr)


def destination_full(S):
    """The destination's file system fills up: the guest carries on."""
    mnt = os.path.join(S, "mnt")
    with tmpfs(mnt, "4m") as mounted:
        if not tap.requires(mounted, "cannot mount a tmpfs for the ENOSPC "
                            "case", count=3):
            return
        full = sparse(os.path.join(mnt, "full.img"), 32 * MiB)
        srcf = sparse(os.path.join(S, "srcf.img"), 32 * MiB)
        csf = os.path.join(S, "ctlf.sock")
        with Server(S, full, plugin="file", name="fdst") as dst, \
             Server(S, srcf, "mirror-control=" + csf, plugin="file",
                    filters=[FILTER], name="fsrc") as s:
            ctl(csf, "start", dest=dst.uri)
            h = connect(s.uri)
            data = os.urandom(MiB)
            errors = 0
            for i in range(16):             # 16 MiB into a 4 MiB tmpfs
                try:
                    h.pwrite(data, i * MiB)
                except Exception:
                    errors += 1
            h.flush()
            st = ctl(csf, "status")
            tap.ok(errors == 0 and st["state"] == "broken" and
                   "No space" in st.get("reason", ""),
                   "destination full: the guest's writes all succeed, the "
                   "mirror is broken and says why", (errors, st))
            with open(srcf, "rb") as f:
                tap.ok(all(f.read(MiB) == data for _ in range(16)),
                       "destination full: the source has every write")
            p = live_copy(csf, s.uri)
            tap.ok(p.returncode != 0 and "broken" in p.stderr,
                   "destination full: a live copy is refused, naming it",
                   p.stderr)
            ctl(csf, "abort")
            h.shutdown()


run_test(configuration, idle_protocol_requests, old_data_stale_copiers,
         above_4gib, tls_destination, live_copy_summary, copy_relay,
         guest_priority,
         destination_killed, destination_killed_strict,
         destination_stalled, vhd_to_vhd, destination_full)
