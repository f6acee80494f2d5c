#!/usr/bin/python3
# sxm attach / list / detach: the long-lived disk service of one VM disk
# (nbdkit, vhd plugin + mirror filter, on a unix socket in the run
# directory), everything real.  One property per block: the printed line
# and the served disk; one writer per VHD (second attach of a file, or of
# a name, refused); detach flushes and stops, and is refused while a
# mirror is active unless --force; a killed server is listed DEAD and
# never restarted; --sr DIR UUID; bad input (no file, bad name, a socket
# path too long, --nbd-device without the kernel's nbd module) refused
# with a reason; hostile names (spaces, quotes, $(...)) in the SR and the
# run directory.
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from urllib.parse import unquote

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sxmtest import ROOT, MiB, GiB, run_test, tap, nbdkit_env  # noqa: E402
from mirrortest import SXM_VHD, ctl, connect  # noqa: E402

SXM = os.path.join(ROOT, "scripts", "sxm")
HOSTILE = "x $(touch pwned) 'q\" `id`"


def sxm(run, *args, timeout=120):
    env = nbdkit_env()
    env["SXM_RUNDIR"] = run
    return subprocess.run([SXM, *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def fields(line):
    """key=value fields of an attach line, percent-decoded."""
    return {k: unquote(v) for k, v in
            (f.split("=", 1) for f in line.split())}


def listing(run):
    p = sxm(run, "list", "--json")
    assert p.returncode == 0, p.stderr
    return {d["name"]: d for d in json.loads(p.stdout)}


def stop_all(run):
    """The test's own cleanup: no disk service outlives it."""
    if not os.path.isdir(run):
        return
    for d in listing(run).values():
        if d["alive"]:
            try:
                os.kill(d["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass


def vhd(path, size=1 * GiB):
    subprocess.run([SXM_VHD, "create", path, str(size)], check=True,
                   capture_output=True)
    return path


def main(scratch):
    sr = os.path.join(scratch, "sr " + HOSTILE)
    run = os.path.join(scratch, "run " + HOSTILE)
    os.makedirs(sr)
    try:
        body(scratch, sr, run)
    finally:
        stop_all(run)
    tap.ok(not any("pwned" in f for _, _, fs in os.walk(scratch) for f in fs)
           and not os.path.exists("pwned"),
           "no name reached a shell (no 'pwned' file)")


def body(scratch, sr, run):
    a = vhd(os.path.join(sr, "disk a.vhd"), 5 * GiB)

    # -- the printed line, the served disk --------------------------------
    p = sxm(run, "attach", a, "--name", "vm1")
    tap.eq(p.returncode, 0, "attach exits 0")
    line = p.stdout.strip()
    f = fields(line)
    tap.eq(sorted(f), ["control", "file", "name", "uri"],
           "one line: name= uri= control= file=")
    tap.ok(" " not in f["file"] or "%20" in line,
           "values with spaces are percent-encoded in the line", line)
    tap.eq((f["name"], f["file"]), ("vm1", os.path.realpath(a)),
           "name and absolute file")
    h = connect(f["uri"])
    data = os.urandom(4096)
    h.pwrite(data, 4 * GiB + 8192)              # past 4 GiB
    h.flush()
    tap.eq(h.pread(4096, 4 * GiB + 8192), data,
           "the uri serves the VHD read-write (offset past 4 GiB)")
    h.shutdown()
    st = ctl(f["control"], "status")
    tap.ok(st["ok"] and st["state"] == "idle" and st.get("uri") == f["uri"],
           "control= is the mirror filter's socket, idle, knowing its uri",
           st)
    d = listing(run)
    tap.ok(d.get("vm1", {}).get("alive") is True and
           d["vm1"]["mirror"] == "idle" and d["vm1"]["file"] == f["file"],
           "list --json: alive, mirror idle, the file", d)
    p2 = sxm(run, "list")
    tap.ok(p2.returncode == 0 and "vm1" in p2.stdout and "alive" in
           p2.stdout, "list (table)", p2.stdout + p2.stderr)

    # -- one writer per VHD ---------------------------------------------------
    p = sxm(run, "attach", a, "--name", "other")
    tap.ok(p.returncode == 4 and "one writer per VHD" in p.stderr,
           "a second attach of the same file is refused (exit 4)", p.stderr)
    b = vhd(os.path.join(sr, "b.vhd"))
    p = sxm(run, "attach", b, "--name", "vm1")
    tap.ok(p.returncode == 4 and "already attached" in p.stderr,
           "a name in use is refused (exit 4)", p.stderr)

    # -- detach refused while mirroring; --force ------------------------------
    pb = sxm(run, "attach", b)
    fb = fields(pb.stdout.strip())
    tap.ok(pb.returncode == 0 and fb["name"] == "b",
           "the name defaults to the file's basename without .vhd", pb.stderr)
    big = vhd(os.path.join(sr, "big.vhd"), 5 * GiB)
    fbig = fields(sxm(run, "attach", big).stdout.strip())
    r = ctl(f["control"], "start", dest=fbig["uri"])
    tap.ok(r["ok"], "a mirror from vm1 to another attached disk starts", r)
    p = sxm(run, "detach", "vm1")
    tap.ok(p.returncode == 4 and "mirroring" in p.stderr,
           "detach while the mirror is active is refused (exit 4)", p.stderr)
    tap.ok(listing(run)["vm1"]["alive"], "... and the server still runs")
    p = sxm(run, "detach", "--force", "vm1")
    tap.eq(p.returncode, 0, "detach --force aborts the mirror and stops it")
    left = listing(run)
    tap.ok("vm1" not in left and not os.path.exists(f["control"]) and
           not os.path.exists(unquote(f["uri"].split("socket=", 1)[1])),
           "its record, socket and control socket are gone", left)
    chk = subprocess.run([SXM_VHD, "check", a], capture_output=True,
                         text=True)
    tap.ok(chk.returncode == 0 and os.path.exists(a),
           "the VHD stays and checks clean", chk.stdout + chk.stderr)
    p = sxm(run, "detach", "big")
    tap.eq(p.returncode, 0, "detach of an idle disk: exit 0")

    # re-attach the detached file: allowed again, and the data is there
    p = sxm(run, "attach", a, "--name", "vm1")
    f = fields(p.stdout.strip())
    h = connect(f["uri"])
    tap.ok(p.returncode == 0 and h.pread(4096, 4 * GiB + 8192) == data,
           "re-attached after detach: the flushed data is there")
    h.shutdown()

    # -- a killed server is reported, not restarted ---------------------------
    pid = listing(run)["vm1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and listing(run)["vm1"]["alive"]:
        time.sleep(0.05)
    d = listing(run)["vm1"]
    tap.ok(d["alive"] is False and d["mirror"] is None,
           "a killed server is listed dead", d)
    p2 = sxm(run, "list")
    tap.ok("DEAD" in p2.stdout, "list (table) says DEAD", p2.stdout)
    time.sleep(0.5)
    tap.ok(listing(run)["vm1"]["pid"] == pid and
           not listing(run)["vm1"]["alive"], "... and it is not restarted")
    p = sxm(run, "attach", a)
    tap.ok(p.returncode == 4 and "already attached as vm1" in p.stderr,
           "its file cannot be attached again while the dead record stands "
           "(the default name 'disk_a' made safe from 'disk a.vhd')",
           p.stderr)
    p = sxm(run, "detach", "vm1")
    tap.ok(p.returncode == 0 and "vm1" not in listing(run),
           "detach clears a dead server's record", p.stderr)

    # -- --sr DIR UUID --------------------------------------------------------
    u = str(uuid.uuid4())
    vhd(os.path.join(sr, u + ".vhd"))
    p = sxm(run, "attach", "--sr", sr, u)
    tap.ok(p.returncode == 0 and fields(p.stdout.strip())["name"] == u and
           fields(p.stdout.strip())["file"] ==
           os.path.realpath(os.path.join(sr, u + ".vhd")),
           "--sr DIR UUID attaches DIR/UUID.vhd as UUID", p.stderr)

    # -- bad input ------------------------------------------------------------
    p = sxm(run, "attach", os.path.join(sr, "nope.vhd"))
    tap.ok(p.returncode == 4 and "no such VHD" in p.stderr,
           "a missing file: exit 4, named", p.stderr)
    p = sxm(run, "attach", b, "--name", "../x")
    tap.ok(p.returncode == 2 and "--name" in p.stderr,
           "a name that is no file name: exit 2", p.stderr)
    notvhd = os.path.join(sr, "garbage.vhd")
    with open(notvhd, "wb") as fh:
        fh.write(b"not a vhd" * 100)
    p = sxm(run, "attach", notvhd)
    tap.ok(p.returncode == 4 and "garbage" not in listing(run),
           "a file that is no VHD: exit 4, no record left", p.stderr)
    longrun = os.path.join(scratch, "r" * 120)
    p = sxm(longrun, "attach", b, "--name", "b2")
    tap.ok(p.returncode == 4 and "unix socket" in p.stderr,
           "a run directory too long for a socket path: exit 4, said",
           p.stderr)
    p = sxm(run, "detach", "nosuch")
    tap.ok(p.returncode == 4, "detach of an unknown name: exit 4", p.stderr)
    no_nbd = not os.path.isdir("/sys/module/nbd")
    if tap.requires(no_nbd, "this kernel has nbd: --nbd-device is exercised "
                    "in the Xen rig"):
        p = sxm(run, "attach", b, "--name", "b3", "--nbd-device")
        tap.ok(p.returncode == 4 and "nbd module" in p.stderr and
               "b3" not in listing(run),
               "--nbd-device without the kernel's nbd module: exit 4, the "
               "reason said, nothing attached", p.stderr)
    if tap.requires(no_nbd, "this kernel has nbd (the Xen rig runs receive "
                    "--memory xen)"):
        # A Xen destination gives the new domain phy:/dev/nbdN: without
        # the nbd module, receive --memory xen refuses before it creates
        # anything.
        sr = os.path.join(scratch, "srx")
        os.makedirs(sr, exist_ok=True)
        p = sxm(run, "receive", "--sr", sr, "--disk", "1M", "--memory", "xen")
        tap.ok(p.returncode == 4 and "nbd module" in p.stderr and
               os.listdir(sr) == [],
               "receive --memory xen without the nbd module: exit 4, said, "
               "no disk created", p.stderr)
    command_line(scratch, run, b)
    for name in list(listing(run)):
        sxm(run, "detach", "--force", name)
    tap.eq(listing(run), {}, "everything detached at the end")


COMMANDS = {"receive": "cmd_receive", "migrate": "cmd_migrate",
            "token-info": "cmd_token_info", "attach": "cmd_attach",
            "list": "cmd_list", "detach": "cmd_detach",
            "backup": "cmd_backup", "restore": "cmd_restore"}
COMMON = {"--log", "-q", "-h", "--help"}
OPT = r"(?<![\w-])(--?[a-z][a-z-]*)"


def parsed_options(src, fn):
    """The options FN's argument loop in scripts/sxm accepts."""
    body = re.search(r"^%s\(\) \{\n(.*?)^\}" % fn, src, re.S | re.M).group(1)
    loop = re.search(r"while \[ \$# -gt 0 \]; do\n(.*?)\n  done", body,
                     re.S).group(1)
    opts = set()
    for pat in re.findall(r"^ +(-[-a-z|]*[a-z])\)", loop, re.M):
        opts.update(pat.split("|"))
    return opts


def command_line(scratch, run, vhd_b):
    """The options each command's parser takes are the ones --help and
    doc/sxm.pod (SYNOPSIS and OPTIONS) give it; every command takes
    --log, -q and -h."""
    src = open(os.path.join(ROOT, "scripts", "sxm")).read()
    pod = open(os.path.join(ROOT, "doc", "sxm.pod")).read()
    usage = sxm(run, "--help").stdout
    synopsis = pod.split("=head1 SYNOPSIS")[1].split("=head1")[0]
    options = pod.split("=head1 OPTIONS")[1].split("=head1")[0]
    common_pod = set(re.findall(OPT, synopsis.split("every command takes")[1]))
    tap.eq(common_pod, COMMON, "SYNOPSIS: every command takes --log, -q, -h")
    # SYNOPSIS: each "sxm CMD" line and its continuation lines.
    syn = {}
    cur = None
    for line in synopsis.splitlines():
        m = re.match(r" sxm ([a-z-]+)", line)
        if m:
            cur = "migrate" if m.group(1) == "copy" else m.group(1)
        elif not line.startswith("     "):
            cur = None
        if cur:
            syn.setdefault(cur, set()).update(re.findall(OPT, line))
    # OPTIONS: the =item lines of each command's =head2.
    items = {}
    for sec in options.split("=head2 ")[1:]:
        title, text = sec.split("\n", 1)
        opts = set()
        for it in re.findall(r"^=item (.*)$", text, re.M):
            opts.update(re.findall(r"B<(--?[a-z][a-z-]*)>", it))
        items[title.strip()] = opts
    # --help: the option column of each command's section.
    helpsec = {"receive": usage.split("\nreceive (")[1].split("\nmigrate (")[0],
               "migrate": usage.split("\nmigrate (")[1].split("\nevery command")[0]}
    helped = {k: {o for line in v.splitlines() if line.startswith("  --")
                  for o in re.findall(OPT, re.split(r"\s{2,}", line.strip())[0])}
              for k, v in helpsec.items()}
    usage_all = set(re.findall(OPT, usage))
    every = set()
    for cmd, fn in COMMANDS.items():
        got = parsed_options(src, fn)
        every |= got
        tap.ok(COMMON <= got, f"sxm {cmd} takes --log, -q, -h", got)
        tap.eq(sorted(syn.get(cmd, set()) | COMMON), sorted(got),
               f"sxm {cmd}: the SYNOPSIS names every option it takes, "
               "and no other")
        if cmd in ("receive", "migrate", "token-info"):
            tap.eq(sorted(items.get(cmd, set()) | COMMON), sorted(got),
                   f"sxm {cmd}: OPTIONS has an item for each option")
        if cmd in helped:
            tap.eq(sorted(helped[cmd] | COMMON), sorted(got),
                   f"sxm {cmd}: --help lists each option")
    svc = set().union(*(parsed_options(src, COMMANDS[c])
                        for c in ("attach", "list", "detach"))) - COMMON
    tap.eq(sorted(items.get("attach, list, detach", set())), sorted(svc), "attach, list, detach: OPTIONS items name their options")
    bk = set().union(*(parsed_options(src, COMMANDS[c])
                       for c in ("backup", "restore"))) - COMMON
    tap.eq(sorted(items.get("backup, restore", set())), sorted(bk),
           "backup, restore: OPTIONS items name their options")
    tap.eq(items.get("Every command"), COMMON, "OPTIONS: every command's options")
    tap.eq(sorted(usage_all - every), [], "--help names no option no command takes")
    tap.eq(sorted(every - usage_all), [], "--help names every option")

    for cmd in COMMANDS:
        p = sxm(run, cmd, "-h")
        tap.ok(p.returncode == 0 and p.stdout.startswith("usage:"),
               f"sxm {cmd} -h: the usage, exit 0", p.stdout + p.stderr)
    log = os.path.join(scratch, "cli.log")
    p = sxm(run, "token-info", "-q", "--log", log, "--token", "sxm1.!!")
    tap.ok(p.returncode == 2 and "error: token: not an sxm token" in p.stderr
           and "not an sxm token" in open(log).read(),
           "token-info -q --log: the error still on stderr, and in the log",
           p.stderr)
    c = vhd(os.path.join(scratch, "cli.vhd"))
    p = sxm(run, "attach", "-q", "--log", log, c, "--name", "clilog")
    p2 = sxm(run, "list", "-q", "--log=" + log)
    p3 = sxm(run, "detach", "--log=" + log, "clilog")
    tap.ok(p.returncode == 0 and p2.returncode == 0 and "clilog" in p2.stdout
           and p3.returncode == 0 and
           re.search(r"Z sxm detach: detached clilog\n", open(log).read()),
           "attach, list, detach take -q and --log (FILE or =FILE)",
           p.stderr + p2.stderr + p3.stderr)
    for opt in (["--timeline", "t.png"], ["--summary-json", "s.json"],
                ["--keep-source"], ["--no-verify"], ["--downtime-ms", "5"],
                ["--memory-opt=--rate=1M"], ["--no-guest-priority"]):
        for sub in (["copy"], ["migrate", "--offline"]):
            p = sxm(run, *sub, "--token-file", os.path.join(scratch, "none"),
                    "--disk", vhd_b, *opt)
            tap.ok(p.returncode == 2 and
                   f"{opt[0].split('=')[0]} is for a live migration" in p.stderr,
                   f"sxm {' '.join(sub)} {opt[0].split('=')[0]}: refused "
                   "(exit 2), not ignored", p.stderr)


run_test(main)
