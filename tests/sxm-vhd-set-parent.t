#!/usr/bin/python3
# sxm-vhd set-parent: a child whose parent moved is re-pointed at it (the
# UUID checked), reads exactly as before, checks clean and passes
# XenServer's rules; the locators now lead to the new place, also after
# the child's directory moves; a parent that is not the child's, a VHD for
# a raw-parent child, and a non-differencing image are refused with the
# child untouched.

import hashlib
import os
import shutil
import subprocess

from sxmtest import tap, run_test, sh, files_equal, ROOT, MiB

SXM_VHD = os.path.join(ROOT, "client", "sxm-vhd")
SXM_COPY = os.path.join(ROOT, "client", "sxm-copy")


def run(*args):
    return subprocess.run([SXM_VHD, *args], capture_output=True, text=True)


def digest(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def main(d):
    def p(*names):
        return os.path.join(d, *names)

    os.makedirs(p("t", "a"))
    os.makedirs(p("t", "b", "deeper"))
    raw = p("data.raw")
    with open(raw, "wb") as f:
        f.truncate(40 * MiB)
        for i in range(30):
            f.seek(i * 1300021)
            f.write(os.urandom(5000 + i * 97))
    sh(SXM_COPY, "-q", raw, p("t", "a", "base.vhd"))
    sh(SXM_VHD, "snapshot", p("t", "a", "base.vhd"), p("t", "a", "kid.vhd"))
    # The child writes over part of the parent (so the chain matters).
    with open(raw, "r+b") as f:
        f.seek(7 * MiB)
        f.write(b"\x77" * 300000)
    sh(SXM_COPY, "-q", raw, p("t", "a", "kid.vhd"))
    sh(SXM_COPY, "-q", p("t", "a", "kid.vhd"), p("before.raw"))

    shutil.move(p("t", "a", "base.vhd"), p("t", "b", "deeper", "renamed.vhd"))
    r = run("check", p("t", "a", "kid.vhd"))
    tap.ok(r.returncode == 6, "parent moved away: check exits 6 (parent "
           "not found)", r.stdout + r.stderr)
    r = run("set-parent", p("t", "a", "kid.vhd"), p("t", "b", "deeper", "renamed.vhd"))
    tap.ok(r.returncode == 0 and "parent is now" in r.stdout,
           "set-parent to the moved parent: exit 0", r.stdout + r.stderr)
    r = run("check", "--xen", p("t", "a", "kid.vhd"))
    tap.ok(r.returncode == 0 and "would accept it" in r.stdout,
           "the child checks clean and passes XenServer's rules",
           r.stdout + r.stderr)
    sh(SXM_COPY, "-q", p("t", "a", "kid.vhd"), p("after.raw"))
    same, why = files_equal(p("before.raw"), p("after.raw"))
    tap.ok(same, "the chain reads exactly as before the move", why)
    info = run("info", p("t", "a", "kid.vhd")).stdout
    tap.ok("parent name:    renamed.vhd" in info and
           "W2ru ..\\b\\deeper\\renamed.vhd" in info,
           "the parent name is the new file name; found through the "
           "relative locator", info)
    # Move both together: the relative locator still leads there.
    shutil.move(p("t"), p("moved"))
    r = run("check", p("moved", "a", "kid.vhd"))
    tap.ok(r.returncode == 0, "after moving the tree that holds both, the "
           "relative locator still finds the parent", r.stdout + r.stderr)

    # Refusals leave the child as it was.
    kid = p("moved", "a", "kid.vhd")
    before = digest(kid)
    sh(SXM_VHD, "create", p("stranger.vhd"), "40M")
    r = run("set-parent", kid, p("stranger.vhd"))
    tap.ok(r.returncode == 1 and "not its parent" in r.stderr and
           digest(kid) == before,
           "a VHD of another UUID: refused (exit 1), the child untouched",
           r.stderr)
    r = run("set-parent", kid, raw)
    tap.ok(r.returncode != 0 and digest(kid) == before,
           "a raw file for a VHD parent: refused, the child untouched",
           r.stderr)
    r = run("set-parent", p("stranger.vhd"), p("moved", "b", "deeper",
                                                  "renamed.vhd"))
    tap.ok(r.returncode == 1 and "not a differencing image" in r.stderr,
           "a dynamic image has no parent to set: refused", r.stderr)
    r = run("set-parent", kid)
    tap.eq(r.returncode, 2, "one argument: usage, exit 2")

    # A fresh child holds no block: its end footer follows its metadata,
    # where the longer new locators go; it must move past them (it did
    # not: the child was left with no end footer, "repairable" and refused
    # by XenServer's rules).
    os.makedirs(p("f", "a", "much", "deeper", "than", "before"))
    sh(SXM_VHD, "create", p("f", "base.vhd"), "64M")
    sh(SXM_VHD, "snapshot", p("f", "base.vhd"), p("f", "kid.vhd"))
    moved = p("f", "a", "much", "deeper", "than", "before", "base.vhd")
    shutil.move(p("f", "base.vhd"), moved)
    r = run("set-parent", p("f", "kid.vhd"), moved)
    c = run("check", "--xen", p("f", "kid.vhd"))
    tap.ok(r.returncode == 0 and c.returncode == 0 and
           "no footer" not in c.stdout + c.stderr,
           "a child with no block re-pointed at a parent with a longer "
           "path: clean, an end footer, XenServer's rules pass",
           r.stderr + c.stdout + c.stderr)


run_test(main)
