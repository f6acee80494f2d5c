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


# ---- a running VM between two "hosts" (sxm-roundtrip.t, sxm-netfault.t) ----
# Each host is an SR directory and an sxm run directory on this machine;
# the VM is xenmem's uffd test guest run as a VM process (`xenmem guest
# --monitor`) writing checksummed records to disks attached with `sxm
# attach`; `sxm receive --monitor` keeps the moved guest running.

SXM = os.path.join(ROOT, "scripts", "sxm")
XENMEM = os.path.join(ROOT, "xenmem", "xenmem")
VM_DISK_SIZE = 5 * GiB            # records land past 4 GiB too


def fields(line):
    """key=value fields of an attach line, percent-decoded."""
    from urllib.parse import unquote
    return {k: unquote(v) for k, v in (f.split("=", 1) for f in line.split())}


class Host:
    """An SR and a run directory: what sxm sees of one host."""

    def __init__(self, d, name):
        self.name, self.d = name, d
        self.sr = os.path.join(d, "sr")
        self.run = os.path.join(d, "run")
        os.makedirs(self.sr, exist_ok=True)
        self.env = dict(nbdkit_env(), SXM_RUNDIR=self.run)

    def sxm(self, *args, timeout=300, **kw):
        return subprocess.run([SXM, *args], capture_output=True, text=True,
                              env=self.env, timeout=timeout, **kw)

    def services(self):
        import json
        p = self.sxm("list", "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def vhds(self):
        return sorted(f for f in os.listdir(self.sr) if f.endswith(".vhd"))


def monitor(sock, *req, timeout=120):
    """One request to a guest's monitor (xenmem monitor): its JSON reply,
    or {"exit": status, "unparsed": output}."""
    import json
    p = subprocess.run([XENMEM, "monitor", sock, *req], capture_output=True,
                       text=True, timeout=timeout)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except Exception:
        return {"exit": p.returncode, "unparsed": p.stdout + p.stderr}


def guest_check(sock, seconds=1.0, io_errors_ok=False):
    """The guest's own check: (ok, its JSON).  No disk request of the
    guest ever failed (disk_io_errors counts them over its whole life, on
    every host), so there was no moment without a disk - unless
    IO_ERRORS_OK (its disk service was killed under it: tests/
    sxm-diskkill.t); every record it was told was written must still
    read back either way."""
    j = monitor(sock, "check", str(seconds))
    ok = (j.get("exit") == 0 and j.get("checksum_ok") is True and
          j.get("counter_advanced") is True and j.get("records_bad") == 0 and
          j.get("disk_reads_bad") == 0 and
          (io_errors_ok or j.get("disk_io_errors") == 0) and
          j.get("records_verified", 0) > 0 and
          j.get("disk_seq", 0) > j.get("disk_seq_at_resume", 0))
    return ok, j


class VM:
    """The VM on HOST: NDISKS disks created and attached there (PREFILL_MIB
    MiB of data each, for a copy that takes a while), the xenmem guest
    (GUEST_MEM) writing records to them; ENV: more variables for the VM
    process (which also runs its migrations' memory sends); NAME: its
    files' prefix (NAME-diskI.vhd in the SR, NAME.mon, NAME.log), so that
    one host can run several (tests/soak/evacuate)."""

    def __init__(self, host, ndisks, prefill_mib=0, guest_mem="64M",
                 env=None, name="vm"):
        from mirrortest import SXM_VHD, connect
        self.name = name
        self.ctls, self.uris = [], []
        for i in range(ndisks):
            f = os.path.join(host.sr, f"{name}-disk{i}.vhd")
            subprocess.run([SXM_VHD, "create", f, str(VM_DISK_SIZE)],
                           check=True, capture_output=True)
            p = host.sxm("attach", f)
            assert p.returncode == 0, p.stderr
            kv = fields(p.stdout.strip())
            self.ctls.append(kv["control"])
            self.uris.append(kv["uri"])
            if prefill_mib:
                h = connect(kv["uri"])
                blk = os.urandom(1 * MiB)
                for m in range(prefill_mib):
                    h.pwrite(blk, 1 * GiB + m * MiB)
                h.flush()
                h.shutdown()
        self.mon = os.path.join(host.d, f"{name}.mon")
        self.logpath = os.path.join(host.d, f"{name}.log")
        self.log = open(self.logpath, "w")
        args = [XENMEM, "guest", "--monitor=" + self.mon,
                "--guest-mem=" + guest_mem, "--dirty-rate=4M",
                "--disk-rate=200"]
        args += ["--disk=" + u for u in self.uris]
        self.proc = subprocess.Popen(args, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     env=dict(os.environ, **(env or {})))
        deadline = time.time() + 30
        while not os.path.exists(self.mon):
            assert self.proc.poll() is None, "xenmem guest exited"
            assert time.time() < deadline, "no monitor socket"
            time.sleep(0.02)
        time.sleep(0.5)                # some records before the move


class Receive:
    """`sxm receive --memory uffd --monitor` on HOST for NDISKS disks; the
    token is in .token and .token_file.  ENV: more variables for it (and
    the xenmem receive it starts); EXTRA: more options."""

    def __init__(self, host, ndisks, mon_name, expires=120, env=None,
                 extra=()):
        self.host = host
        self.port = free_ports(4)
        self.mon = os.path.join(host.d, mon_name)
        self.token_file = os.path.join(host.d, f"token.{self.port}")
        args = [SXM, "receive", "--sr", host.sr, "--memory", "uffd",
                "--monitor", self.mon, "--check", "0.5",
                "--listen", f"127.0.0.1:{self.port}", "--expires",
                str(expires), "--token-file", self.token_file, *extra]
        for _ in range(ndisks):
            args += ["--disk", str(VM_DISK_SIZE)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     env=dict(host.env, **(env or {})))
        self.token = self.proc.stdout.readline().strip()

    def finish(self, timeout=180):
        rc, self.out, self.err = communicate_or_kill(self.proc, timeout,
                                                     "sxm receive")
        return rc

    def lines(self):
        return [fields(x) for x in self.out.splitlines()
                if x.startswith("name=")]


def vm_migrate(host, token_file, ctls, mon, *extra, wait=True, **popen):
    """`sxm migrate --memory uffd:MON` of the VM's disks CTLS on HOST:
    (returncode, stdout, stderr), or with WAIT false the Popen (stdout and
    stderr pipes).  POPEN: more Popen arguments (pass_fds)."""
    args = [SXM, "migrate", "--token-file", token_file,
            "--memory", "uffd:" + mon, *extra]
    for c in ctls:
        args += ["--disk", c]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=host.env, **popen)
    if not wait:
        return p
    out, err = p.communicate(timeout=300)
    return p.returncode, out, err


# ---- the network between two hosts -----------------------------------------

class Relay:
    """The network between two "hosts" on this machine: a user-space TCP
    relay on 127.0.0.1, one listening port per destination port (.ports
    maps destination port -> relay port).  It forwards bytes both ways
    until told otherwise:

    stall()  nothing moves any more, in either direction, and nothing is
             closed: no FIN, no RST (a link that went dead).  New
             connections complete TCP's handshake (the kernel's backlog)
             and then stall too.
    heal()   after a stall, everything flows again, nothing lost.
    cut()    every connection is reset on both sides (RST) and the
             listeners close: new connections are refused (the link is
             gone for good).

    .stall_at = N: stall() as the Nth connection is accepted (counted
    over all ports), before it carries a byte.  .forwarded: bytes sent on
    to each destination port so far.  .log: (time, event) of
    what it did, for a failure's diagnosis."""

    def __init__(self, dports, host="127.0.0.1"):
        import threading
        self.host = host
        self.flowing = threading.Event()
        self.flowing.set()
        self.gone = threading.Event()
        self.lock = threading.Lock()
        self.conns = []               # [client, server] socket pairs
        self.listeners = {}
        self.ports = {}
        self.log = []
        self.accepted = 0
        self.stall_at = None          # stall() as connection N comes
        self.forwarded = {}           # destination port -> bytes sent to it
        for dp in dports:
            ls = socket.socket()
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ls.bind((host, 0))
            ls.listen(64)
            self.listeners[dp] = ls
            self.ports[dp] = ls.getsockname()[1]
            threading.Thread(target=self._accept, args=(ls, dp),
                             daemon=True).start()

    def _note(self, what):
        self.log.append((round(time.time(), 3), what))

    def _accept(self, ls, dport):
        import select
        import threading
        while not self.gone.is_set():
            if not self.flowing.is_set():
                time.sleep(0.02)      # stalled: left in the backlog
                continue
            r, _, _ = select.select([ls], [], [], 0.05)
            if not r or self.gone.is_set() or not self.flowing.is_set():
                continue
            try:
                c, _ = ls.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted == self.stall_at:
                self.stall()          # this one and everything else
            s = socket.socket()
            try:
                s.connect((self.host, dport))
            except OSError as e:
                self._note(f"connect to {dport} failed: {e}")
                self._reset(c)
                continue
            with self.lock:
                if self.gone.is_set():
                    self._reset(c)
                    self._reset(s)
                    return
                self.conns.append((c, s))
            self._note(f"connection to {dport}")
            threading.Thread(target=self._pump, args=(c, s, dport),
                             daemon=True).start()

    @staticmethod
    def _reset(sock):
        """Close SOCK with an RST (SO_LINGER 0), not a FIN."""
        import struct
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack("ii", 1, 0))
        except OSError:
            pass
        sock.close()

    def _pump(self, a, b, dport):
        """Both directions of one connection, in one thread: read only
        what can be written on, never while stalled."""
        import select
        a.setblocking(False)
        b.setblocking(False)
        peer = {a: b, b: a}
        pending = {a: b"", b: b""}    # bytes waiting to be written TO key
        eof = {a: False, b: False}    # no more to read from key
        while not self.gone.is_set():
            if not self.flowing.is_set():
                time.sleep(0.02)
                continue
            rd = [x for x in (a, b) if not eof[x] and not pending[peer[x]]]
            wr = [x for x in (a, b) if pending[x]]
            if not rd and not wr:
                break                 # both sides finished
            try:
                r, w, _ = select.select(rd, wr, [], 0.05)
            except (OSError, ValueError):
                break
            if self.gone.is_set() or not self.flowing.is_set():
                continue
            try:
                for x in w:
                    n = x.send(pending[x][:65536])
                    pending[x] = pending[x][n:]
                    if not pending[x] and eof[peer[x]]:
                        x.shutdown(socket.SHUT_WR)
                for x in r:
                    data = x.recv(65536)
                    if data:
                        pending[peer[x]] += data
                        if x is a:
                            self.forwarded[dport] = \
                                self.forwarded.get(dport, 0) + len(data)
                    else:
                        eof[x] = True
                        if not pending[peer[x]]:
                            peer[x].shutdown(socket.SHUT_WR)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                break                 # reset by one end: reset the other
        if not self.gone.is_set():
            with self.lock:
                if (a, b) in self.conns:
                    self.conns.remove((a, b))
            self._reset(a)
            self._reset(b)

    def stall(self):
        self._note("stall")
        self.flowing.clear()

    def heal(self):
        self._note("heal")
        self.flowing.set()

    def cut(self):
        self._note("cut")
        with self.lock:
            self.gone.set()
            for ls in self.listeners.values():
                ls.close()
            for a, b in self.conns:
                self._reset(a)
                self._reset(b)
            self.conns = []

    close = cut


def token_fields(token):
    """An sxm token's key=value lines as a list of (key, value)."""
    import base64
    body = base64.b64decode(token[len("sxm1."):]).decode()
    return [tuple(line.split("=", 1)) for line in body.splitlines()]


def token_of(pairs):
    import base64
    body = "".join(f"{k}={v}\n" for k, v in pairs)
    return "sxm1." + base64.b64encode(body.encode()).decode()


def token_ports(token):
    """Every TCP port an sxm token sends the source to: port, mport and
    each export's front."""
    ports = []
    for k, v in token_fields(token):
        if k in ("port", "mport"):
            ports.append(int(v))
        elif k == "export" and v.count(":") == 2:
            ports.append(int(v.rsplit(":", 1)[1]))
    return sorted(set(ports))


def relay_token(token, relay):
    """TOKEN with its host and every port (port, mport, each export's) made
    RELAY's, so that all the source's traffic to the destination goes
    through it.  Nothing else changes (key, expiry, sizes): sxm checks the
    result as it checks any token."""
    out = []
    for k, v in token_fields(token):
        if k == "host":
            v = relay.host
        elif k in ("port", "mport"):
            v = str(relay.ports[int(v)])
        elif k == "export":
            parts = v.split(":")
            if len(parts) == 3:
                parts[2] = str(relay.ports[int(parts[2])])
            v = ":".join(parts)
        out.append((k, v))
    return token_of(out)


# ---- processes and files (sxm-diskkill.t, tests/soak/) ---------------------

def wait_file(path, pattern, timeout):
    """Until a file PATH (a glob) holds a line matching PATTERN (True), or
    TIMEOUT (False)."""
    import glob
    deadline = time.time() + timeout
    while time.time() < deadline:
        for f in glob.glob(path):
            try:
                with open(f, errors="replace") as fh:
                    if re.search(pattern, fh.read()):
                        return True
            except OSError:
                pass
        time.sleep(0.01)
    return False


def procs_mentioning(text):
    """{pid: argv} of the live processes (zombies have no command line)
    with TEXT (a path, say a host's directory) in an argument: what a
    test's "nothing left behind" looks at."""
    found = {}
    me = os.getpid()
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == me:
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace")
                        for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if any(text in a for a in argv):
            found[int(d)] = argv
    return found


def proc_stats(pid):
    """(rss KiB, open fds, threads) of PID, or None if it is gone."""
    try:
        rss = threads = None
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds, threads
    except (OSError, ValueError):
        return None


def kill_left(top):
    """SIGKILL every live process with TOP (a test's scratch directory) in
    an argument: the guests (sessions of their own) and receivers a failed
    test leaves are not run_test's to stop (it stops disk services)."""
    for pid in procs_mentioning(top):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
