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
        self.skipped_all = None
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

    def requires(self, cond, why, count=1):
        """Whether COND holds; if not, COUNT tests are skipped saying WHY
        (lib.sh's requires does the same for a whole bash test).  COND: a
        truth value, a program's name or path (installed: shutil.which),
        or a command line as a list (runs and exits 0).  The caller runs
        the case only when this is true:

            with tmpfs(mnt, "4m") as mounted:
                if tap.requires(mounted, "cannot mount a tmpfs"):
                    ...the ENOSPC case..."""
        if isinstance(cond, str):
            cond = shutil.which(cond) is not None
        elif isinstance(cond, (list, tuple)):
            cond = subprocess.run(cond, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode == 0
        if not cond:
            for _ in range(count):
                self.skip(why)
        return bool(cond)

    def skip_all(self, why):
        """The whole file is not run here: TAP's "1..0 # SKIP why", before
        any test.  Exits (run_test still cleans up)."""
        assert self.n == 0, "skip_all after tests ran"
        self.skipped_all = why
        sys.exit(0)

    def diag(self, msg):
        for line in str(msg).splitlines():
            print(f"# {line}", flush=True)

    def _finish(self):
        if self.skipped_all is not None:
            print(f"1..0 # SKIP {self.skipped_all}", flush=True)
            return
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


def run_test(*parts):
    """Run each PART(scratch_dir) in turn; an exception is a failed test,
    not a crash, and the parts after it still run (a file split into one
    function a section: one failure hides none of the rest).  sxm's run
    directory (SXM_RUNDIR, inherited by every sxm the test starts) is
    scratch/run, never the host's /run/sxm; disk services left there are
    stopped at the end."""
    scratch = tempfile.mkdtemp(prefix=os.path.basename(sys.argv[0]) + ".",
                               dir=os.environ.get("TMPDIR", "/var/tmp"))
    os.environ["SXM_RUNDIR"] = os.path.join(scratch, "run")
    try:
        for part in parts:
            try:
                part(scratch)
            except Exception:
                what = (f"section {part.__name__}" if len(parts) > 1
                        else "test script")
                tap.ok(False, f"{what} raised", traceback.format_exc())
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


def start_nbdkit(sock, *args, plugin=PLUGIN, filters=(), log=None,
                 pidfile=None, env=None, **popen):
    """Start nbdkit in the foreground serving PLUGIN ARGS through FILTERS
    on the unix socket SOCK, and return its Popen once it accepts
    connections (its pidfile written: nbdkit_ready).  Every test starts
    its nbdkit servers here.

    SOCK None: ARGS say where it listens (-i, -p) and PIDFILE must be
    given; otherwise the pidfile is SOCK.pid.  nbdkit's output is appended
    to LOG (SOCK.log, or PIDFILE.log), so a server restarted on the same
    socket keeps one log; the Popen's .logpath names it.  A socket or
    pidfile left by an earlier server (killed -9) is removed first.  ENV:
    variables set on top of nbdkit_env(); POPEN: more Popen arguments.
    The caller stops it: stop_nbdkit, or kill() for a crash."""
    pidfile = pidfile or sock + ".pid"
    log = log or (sock or pidfile) + ".log"
    for f in (sock, pidfile):
        if f and os.path.lexists(f):
            os.unlink(f)
    cmd = ["nbdkit", "-f", "-P", pidfile, "--exit-with-parent"]
    if sock:
        cmd += ["-U", sock]
    cmd += ["--filter=" + f for f in filters] + [plugin, *args]
    with open(log, "a") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                             env=dict(nbdkit_env(), **(env or {})), **popen)
    p.logpath = log
    try:
        ready = nbdkit_ready(pidfile, p)
    except RuntimeError:
        p.kill()
        p.wait()
        raise
    if not ready:
        raise RuntimeError(f"nbdkit exited {p.returncode}: {' '.join(cmd)}\n"
                           f"{nbdkit_logtext(p)}")
    return p


def nbdkit_logtext(p):
    """What an nbdkit start_nbdkit started has written so far."""
    with open(p.logpath, errors="replace") as f:
        return f.read()


def stop_nbdkit(p, timeout=30):
    """Stop an nbdkit start_nbdkit started and return its log.  SIGCONT
    first (a test may have stopped it), SIGTERM, then SIGKILL after
    TIMEOUT s (with the ASan runtime preloaded nbdkit can hang in exit(),
    after the plugin closed its images).  A server that had exited before
    is said in the log returned; a sanitizer report in the log is a
    failed test."""
    early = p.poll()
    if early is None:
        p.send_signal(signal.SIGCONT)
        p.terminate()
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    out = nbdkit_logtext(p)
    if early is not None:
        out += (f"\nsxmtest: error: this nbdkit had exited "
                f"({early}) before the test stopped it\n")
    if "ERROR: AddressSanitizer" in out or "runtime error:" in out:
        tap.ok(False, "sanitizer report from nbdkit", out)
    return out


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
    uri = f"nbd+unix:///?socket={sock}"
    p = start_nbdkit(sock, *args, plugin=plugin, filters=filters)
    try:
        yield uri
    finally:
        NBDKIT_LOGS[uri] = stop_nbdkit(p)


def nbdkit_run(*args, run, plugin=PLUGIN, **kw):
    """nbdkit -U - PLUGIN ARGS --run RUN (a private socket, $uri in RUN),
    with nbdkit_env(): the CompletedProcess, output captured as text.  KW:
    more subprocess.run arguments (timeout)."""
    return subprocess.run(["nbdkit", "-U", "-", plugin, *args, "--run", run],
                          capture_output=True, text=True, env=nbdkit_env(),
                          **kw)


def nbdkit_start_fails(*args, plugin=PLUGIN):
    """Run nbdkit expecting it to refuse to start.  Returns (rc, stderr).

    With the ASan runtime preloaded, nbdkit can hang in exit() after an
    error message that went through strerror() (a glibc locale lock meets
    p11-kit's destructor; nbdkit's own file plugin hangs the same way with a
    missing file).  Under SXM_ASAN only, an error printed followed by that
    hang counts as a refusal."""
    asan = bool(os.environ.get("SXM_ASAN"))
    try:
        p = nbdkit_run(*args, run="true", plugin=plugin,
                       timeout=10 if asan else 60)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        if asan and "error:" in err:
            return 1, err
        raise
    return p.returncode, p.stderr


@contextlib.contextmanager
def tmpfs(path, size):
    """A tmpfs of SIZE ("24m") mounted at PATH (made if missing) for the
    block, for a full-file-system case; yields whether it could be mounted
    (not as a non-root user, nor where tmpfs mounts are refused: the case
    is then skipped, tap.requires).  Unmounted (lazily) at the end."""
    os.makedirs(path, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                              "tmpfs", path],
                             capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", path], capture_output=True)


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


def make_raw(path, size, pieces):
    """A sparse raw file with PIECES = [(offset, bytes)] written."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces:
            f.seek(off)
            f.write(data)


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
