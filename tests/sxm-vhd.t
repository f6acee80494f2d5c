#!/usr/bin/python3
# sxm-vhd info/map: the admin's view of an image, from the same parser as
# the plugin; JSON output is valid and agrees with what NBD clients see.

import json
import os
import subprocess

from sxmtest import tap, run_test, nbdkit, nbd_map, ROOT, MiB, GiB
import vhdgen

TOOL = os.path.join(ROOT, "client", "sxm-vhd")


def run(*args):
    return subprocess.run([TOOL, *args], capture_output=True, text=True,
                          timeout=60)


def main(d):
    # A chain in a directory whose name would break naive JSON or shells.
    sub = os.path.join(d, 'we"ird $(x) dir')
    os.mkdir(sub)
    base = os.path.join(sub, "base.vhd")
    ub = vhdgen.write_dynamic(base, 5 * GiB, [(0, b"a" * MiB),
                                              (4 * GiB, b"b" * 4096)])
    top = os.path.join(sub, "top.vhd")
    vhdgen.write_dynamic(top, 5 * GiB, [(3 * MiB, b"c" * 512)],
                         parent=(base, ub))

    r = run("info", "--json", top)
    tap.eq(r.returncode, 0, "info --json exits 0")
    try:
        info = json.loads(r.stdout)
    except ValueError as e:
        info = None
        tap.ok(False, "info --json is valid JSON", f"{e}\n{r.stdout}")
    if info:
        tap.eq(info["virtual_size"], 5 * GiB, "info: virtual size")
        tap.eq([c["type"] for c in info["chain"]], ["differencing", "dynamic"],
               "info: chain types, top first")
        tap.eq(info["chain"][0]["file"], top, "info: file name survives quoting")
        tap.ok(info["chain"][0]["parent_via"].startswith("W2ru "),
               "info: parent found via the relative locator",
               info["chain"][0]["parent_via"])
        tap.eq(info["chain"][1]["blocks_allocated"], 2, "info: base blocks allocated")

    r = run("info", top)
    tap.ok(r.returncode == 0 and "parent: " + base in r.stdout and
           "differencing" in r.stdout, "info (human) shows the chain", r.stdout)

    r = run("map", "--json", top)
    runs = [(e["offset"], e["length"], e["data"]) for e in json.loads(r.stdout)]
    with nbdkit(d, top) as uri:
        tap.eq(runs, nbd_map(uri), "map --json equals NBD block status")
    r = run("map", top)
    tap.eq(len(r.stdout.splitlines()), len(runs), "map (text): one line a run")

    # Errors and exit codes.
    bad = os.path.join(d, "bad.vhd")
    with open(bad, "wb") as f:
        f.write(b"\0" * 4096)
    r = run("info", bad)
    tap.ok(r.returncode == 5 and bad in r.stderr and "field 'cookie'" in r.stderr,
           "bad image: exit 5, error names file and field", r.stderr)
    r = run("info", os.path.join(d, "missing.vhd"))
    tap.eq(r.returncode, 1, "missing file: exit 1 (system error)")

    # A missing parent is a missing file too (exit 1), for every command
    # that opens the chain; so is a parent of the wrong UUID: exit 6, never
    # "corrupt" (an admin told corrupt may delete a sound disk).
    pdir = os.path.join(d, "orphan")
    os.mkdir(pdir)
    par = os.path.join(pdir, "parent.vhd")
    pu = vhdgen.write_dynamic(par, 8 * MiB, [(0, b"p" * 4096)])
    kid = os.path.join(pdir, "kid.vhd")
    vhdgen.write_dynamic(kid, 8 * MiB, [(MiB, b"k" * 512)], parent=(par, pu))
    os.rename(par, par + ".moved")
    for cmd in (["info"], ["info", "--json"], ["map"], ["check"],
                ["coalesce"], ["resize"], ["repair"]):
        r = run(*cmd, kid, *(["16M"] if cmd == ["resize"] else []))
        tap.ok(r.returncode == 6 and "not found; locators tried" in r.stderr
               and "corrupt" not in r.stdout and
               (cmd != ["check"] or "parent not found" in r.stdout),
               f"missing parent: {' '.join(cmd)} exits 6 (a parent problem, "
               "not corruption), naming the parent and the locators tried",
               f"{r.returncode}\n{r.stdout}{r.stderr}")
    vhdgen.write_dynamic(par, 8 * MiB, [])          # same name, new UUID
    r = run("check", kid)
    tap.ok(r.returncode == 6 and "but the child expects parent UUID" in
           r.stderr and "parent not found" in r.stdout and
           "corrupt" not in r.stdout,
           "parent of another UUID: exit 6, not called corrupt",
           r.stdout + r.stderr)

    # check: clean / repairable / corrupt, with distinct exit codes.
    r = run("check", top)
    tap.ok(r.returncode == 0 and r.stdout.splitlines()[0].endswith("clean"),
           "check of a good chain: clean, exit 0", r.stdout + r.stderr)
    cut = os.path.join(d, "cut.vhd")
    vhdgen.write_dynamic(cut, 8 * MiB, [(0, b"q" * 4096)])
    os.truncate(cut, os.path.getsize(cut) - 512)
    r = run("check", cut)
    tap.ok(r.returncode == 4 and "no footer at the end" in r.stdout,
           "check, end footer missing: repairable, exit 4", r.stdout)
    r = run("info", cut)
    tap.ok(r.returncode == 0 and
           "\n  end footer:     MISSING (the copy at offset 0 is used" in r.stdout,
           "info, end footer missing: says so", r.stdout + r.stderr)
    r = run("info", "--json", cut)
    tap.ok(r.returncode == 0 and
           json.loads(r.stdout)["chain"][0].get("end_footer_missing") is True,
           "info --json, end footer missing: end_footer_missing true",
           r.stdout + r.stderr)
    r = run("info", "--json", top)
    tap.eq([c.get("end_footer_missing") for c in json.loads(r.stdout)["chain"]],
           [False, False], "info --json, both footers there: false for each layer")
    tap.ok("end footer" not in run("info", top).stdout,
           "info, both footers there: no end-footer line")
    diff = os.path.join(d, "diff.vhd")
    vhdgen.write_dynamic(diff, 8 * MiB, [(0, b"q" * 4096)])
    vhdgen.patch(diff, 0 + 24, b"\x00\x00\x00\x01")      # head copy time stamp
    vhdgen.fix_checksum(diff, 0, 512, 64)
    r = run("check", diff)
    tap.ok(r.returncode == 4 and "differs from the footer" in r.stdout,
           "check, footer copies differ: repairable, exit 4", r.stdout)
    r = run("check", bad)
    tap.ok(r.returncode == 5 and "corrupt" in r.stdout and "field 'cookie'" in r.stderr,
           "check of a corrupt image: exit 5, reason on stderr", r.stdout + r.stderr)
    # repair: what check called repairable, then clean; nothing twice.
    for img, what in ((cut, "end footer missing"),
                      (diff, "footer copies differ")):
        r = run("repair", img)
        r2 = run("check", img)
        r3 = run("repair", img)
        tap.ok(r.returncode == 0 and "repaired:" in r.stdout and
               r2.returncode == 0 and "clean" in r2.stdout and
               r3.returncode == 0 and "nothing to repair" in r3.stdout,
               f"repair, {what}: repaired, then check is clean and a second "
               "repair has nothing to do", r.stdout + r2.stdout + r3.stdout)
    r = run("repair", bad)
    tap.ok(r.returncode == 5 and "corrupt" in r.stdout,
           "repair refuses a corrupt image (exit 5), touching nothing",
           r.stdout + r.stderr)
    r = run("frobnicate")
    tap.eq(r.returncode, 2, "unknown subcommand: exit 2")
    r = run("info")
    tap.eq(r.returncode, 2, "missing file: exit 2")
    r = run("--help")
    tap.ok(r.returncode == 0 and "usage:" in r.stdout, "--help")


run_test(main)
