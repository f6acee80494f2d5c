"""Shared helpers for sxm's Python integration tests: TAP output, scratch
directories, and real nbdkit servers on unix sockets.

Tests run under Debian's /usr/bin/python3 because the libnbd bindings
(python3-libnbd) and libvhdi's (python3-libvhdi) are installed there."""

import atexit
import contextlib
import os
import shutil
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLUGIN = os.path.join(ROOT, "nbdkit-plugin", "nbdkit-vhd-plugin.so")
MiB = 1 << 20
GiB = 1 << 30


class TAP:
    def __init__(self):
        self.n = 0
        self.failed = 0
        atexit.register(self._finish)

    def ok(self, cond, desc, diag=None):
        self.n += 1
        if cond:
            print(f"ok {self.n} - {desc}", flush=True)
        else:
            self.failed += 1
            print(f"not ok {self.n} - {desc}", flush=True)
            # On stderr too, as Test::More's diag does: prove (and so the
            # make check log) shows stderr but not a passing test's stdout.
            print(f"# failed: {self.n} - {desc}", file=sys.stderr, flush=True)
            if diag:
                for line in str(diag).splitlines():
                    print(f"#   {line}", flush=True)
                    print(f"#   {line}", file=sys.stderr, flush=True)
        return cond

    def eq(self, got, want, desc):
        return self.ok(got == want, desc, f"got:  {got!r}\nwant: {want!r}")

    def skip(self, why):
        """One test not run here, said as TAP says it: "ok N # SKIP why"."""
        self.n += 1
        print(f"ok {self.n} # SKIP {why}", flush=True)

    def diag(self, msg):
        for line in str(msg).splitlines():
            print(f"# {line}", flush=True)

    def _finish(self):
        print(f"1..{self.n}", flush=True)
        if self.failed:
            os._exit(1)


tap = TAP()


def stop_disk_services(top):
    """Kill every disk service (sxm attach, or sxm receive's) whose
    pidfile is anywhere under TOP (each test host's run directory): they
    outlive the commands that start them by design, but not the test."""
    for d, _, files in os.walk(top):
        for f in files:
            if not f.endswith(".pid"):
                continue
            path = os.path.join(d, f)
            try:
                pid = int(open(path).read().split()[0])
                # Only the nbdkit that wrote this pidfile (-P PATH): a
                # stale pidfile's number may belong to someone else's
                # nbdkit by now, e.g. another test's running alongside.
                with open(f"/proc/{pid}/cmdline", "rb") as c:
                    argv = c.read().split(b"\0")
                mine = os.path.realpath(path)
                if os.path.basename(argv[0]) == b"nbdkit" and any(
                        a.startswith(b"/") and
                        os.path.realpath(os.fsdecode(a)) == mine
                        for a in argv):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                pass


def run_test(main):
    """Run MAIN(scratch_dir); an exception is a failed test, not a crash.
    sxm's run directory (SXM_RUNDIR, inherited by every sxm the test
    starts) is scratch/run, never the host's /run/sxm; disk services
    left there are stopped at the end."""
    scratch = tempfile.mkdtemp(prefix=os.path.basename(sys.argv[0]) + ".",
                               dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.environ["SXM_RUNDIR"] = os.path.join(scratch, "run")
    try:
        main(scratch)
    except Exception:
        tap.ok(False, "test script raised", traceback.format_exc())
    finally:
        stop_disk_services(scratch)
        if tap.failed and os.environ.get("SXM_KEEP"):
            tap.diag(f"scratch kept in {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def nbdkit_env():
    """Under make check-asan the plugin is instrumented but nbdkit is not:
    preload the sanitizer runtime into nbdkit only."""
    env = dict(os.environ)
    if os.environ.get("SXM_ASAN"):
        lib = subprocess.run(["gcc", "-print-file-name=libasan.so"],
                             capture_output=True, text=True).stdout.strip()
        env["LD_PRELOAD"] = lib
        # nbdkit's own allocations outlive exit by design; leaks in our
        # code are found by the unit tests under LeakSanitizer.
        env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=1"
    return env


def nbdkit_ready(pidfile, proc, timeout=30):
    """Wait until nbdkit (started with -P PIDFILE) accepts connections.

    nbdkit writes its pidfile only then; its socket file exists from
    bind(), a moment before listen(), and a connect in that moment is
    refused (a loaded machine hits it now and then)."""
    deadline = time.time() + timeout
    while not (os.path.exists(pidfile) and os.path.getsize(pidfile)):
        if proc.poll() is not None:
            return False
        if time.time() > deadline:
            raise RuntimeError(f"nbdkit did not start in {timeout} s")
        time.sleep(0.02)
    return True


# The log of each nbdkit that nbdkit() started, by URI, once it stopped:
# a failing test can show what the server said (nbdkit_log_errors).
NBDKIT_LOGS = {}


def nbdkit_log_errors(uri, limit=20):
    """The error lines of a stopped nbdkit's log, for a failure's diag."""
    lines = [ln for ln in NBDKIT_LOGS.get(uri, "").splitlines()
             if "error" in ln.lower()]
    return "\n".join(lines[-limit:])


@contextlib.contextmanager
def nbdkit(scratch, *args, plugin=PLUGIN, filters=()):
    """Start nbdkit on a unix socket; yield its NBD URI; stop it."""
    sock = tempfile.mktemp(prefix="nbd.", suffix=".sock", dir=scratch)
    pidfile = sock + ".pid"
    cmd = ["nbdkit", "-f", "-U", sock, "-P", pidfile, "--exit-with-parent"]
    for f in filters:
        cmd.append("--filter=" + f)
    cmd += [plugin, *args]
    log = open(sock + ".log", "w+")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                         env=nbdkit_env())
    try:
        if not nbdkit_ready(pidfile, p):
            log.seek(0)
            raise RuntimeError(f"nbdkit exited {p.returncode}: {log.read()}")
        yield f"nbd+unix:///?socket={sock}"
    finally:
        early = p.poll()
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        log.seek(0)
        out = log.read()
        log.close()
        if early is not None:
            out += (f"\nsxmtest: error: this nbdkit had exited "
                    f"({early}) before the test stopped it\n")
        NBDKIT_LOGS[f"nbd+unix:///?socket={sock}"] = out
        if "ERROR: AddressSanitizer" in out or "runtime error:" in out:
            tap.ok(False, "sanitizer report from nbdkit", out)


def nbdkit_start_fails(*args, plugin=PLUGIN):
    """Run nbdkit expecting it to refuse to start.  Returns (rc, stderr).

    With the ASan runtime preloaded, nbdkit can hang in exit() after an
    error message that went through strerror() (a glibc locale lock meets
    p11-kit's destructor; nbdkit's own file plugin hangs the same way with a
    missing file).  Under SXM_ASAN only, an error printed followed by that
    hang counts as a refusal."""
    cmd = ["nbdkit", "-U", "-", plugin, *args, "--run", "true"]
    asan = bool(os.environ.get("SXM_ASAN"))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True,
                           timeout=10 if asan else 60, env=nbdkit_env())
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        if asan and "error:" in err:
            return 1, err
        raise
    return p.returncode, p.stderr


def sh(*cmd, **kw):
    """Run a command, fail loudly on error, return stdout."""
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} exited {p.returncode}: {p.stderr}")
    return p.stdout


def run_threads(fn, n):
    """Run fn(0) .. fn(n-1) in parallel threads; return the exceptions they
    raised, as repr strings."""
    import threading
    errors = []

    def wrap(i):
        try:
            fn(i)
        except Exception as e:
            errors.append(repr(e))

    ts = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


def nbd_connect(uri):
    import nbd
    h = nbd.NBD()
    h.add_meta_context("base:allocation")
    h.connect_uri(uri)
    return h


def nbd_map(uri):
    """[(offset, length, allocated)] from base:allocation, adjacent equal
    runs merged, by walking the whole export with block status."""
    import nbd
    h = nbd_connect(uri)
    size = h.get_size()
    runs = []
    off = 0
    while off < size:
        got = []

        def cb(metacontext, offset, entries, err):
            if metacontext == "base:allocation":
                got.extend(entries)
            return 0

        h.block_status(min(size - off, 1 << 31), off, cb)
        pos = off
        for i in range(0, len(got), 2):
            length, flags = got[i], got[i + 1]
            length = min(length, size - pos)
            alloc = not (flags & nbd.STATE_HOLE)
            if flags & nbd.STATE_HOLE and not flags & nbd.STATE_ZERO:
                raise RuntimeError(f"hole without zero flag at {pos}")
            if runs and runs[-1][2] == alloc and runs[-1][0] + runs[-1][1] == pos:
                runs[-1] = (runs[-1][0], runs[-1][1] + length, alloc)
            else:
                runs.append((pos, length, alloc))
            pos += length
        off = pos
    h.shutdown()
    return runs


def files_equal(a, b):
    """(True, None), or (False, why) naming the first differing byte."""
    p = subprocess.run(["cmp", a, b], capture_output=True, text=True)
    if p.returncode == 0:
        return True, None
    return False, (p.stdout + p.stderr).strip()


def qemu_vhd(path):
    """PATH as qemu-img and qemu-io must be given a VHD sxm created: the vpc
    driver told to take the footer's current size.  sxm writes the
    specification's CHS geometry (what XenServer's tools require), and qemu
    sizes images of creators it does not know, "sxm " among them, by that
    geometry, which is smaller when CHS cannot express the size exactly
    (see sxm-vhd(1)).  A "json:" filename: pass it with no -f."""
    import json
    return "json:" + json.dumps({
        "driver": "vpc", "force_size_calc": "current_size",
        "file": {"driver": "file", "filename": os.path.abspath(path)}})


def nbdcopy_to(uri, dest):
    sh("nbdcopy", uri, dest)


def free_ports(n=2):
    """The first of N consecutive free TCP ports on 127.0.0.1 (an sxm
    receive needs its port, the memory port after it, and one more per
    extra disk)."""
    for _ in range(100):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        ok = p + n <= 65536
        for q in range(p + 1, p + n):
            t = socket.socket()
            try:
                t.bind(("127.0.0.1", q))
            except OSError:
                ok = False
            t.close()
        if ok:
            return p
    raise RuntimeError(f"no {n} consecutive free ports")


def wait_log(p, pattern, lines, timeout=60):
    """Read P's stderr until a line matches PATTERN (lines kept)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            return False
        lines.append(line)
        if re.search(pattern, line):
            return True
    return False


def communicate_or_kill(proc, timeout, what):
    """PROC's (returncode, stdout, stderr); killed (and said so in stderr)
    if it has not ended within TIMEOUT seconds."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += f"\n(test: {what} did not end; killed)"
    return proc.returncode, out, err
