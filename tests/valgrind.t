#!/usr/bin/env bash
# valgrind over the shared VHD code (the same code the plugin runs): open,
# map and read a differencing chain and a corrupt image with sxm-vhd and the
# unit tests; and over sxm-copy (threads, libnbd callbacks, checkpoint,
# verify) copying from a real nbdkit; over xenmem (TLS, stream, hook) and
# sxm-mirror.  Any invalid access or leak fails.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

requires valgrind
[ -z "${SXM_ASAN:-}" ] || skip_all "binaries are ASan-instrumented (valgrind cannot run them)"
vg() { valgrind -q --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect "$@"; }

/usr/bin/python3 - "$scratch" <<'PY'
import os, sys
sys.path.insert(0, os.path.join(os.environ["ROOT"], "tests"))
import vhdgen
d = sys.argv[1]
b = os.path.join(d, "base.vhd")
u = vhdgen.write_dynamic(b, 64 << 20, [(0, b"x" * 4096), (9 << 20, b"y" * 1536)])
vhdgen.write_dynamic(os.path.join(d, "top.vhd"), 64 << 20,
                     [(512, b"z" * 512), (40 << 20, b"w" * 8192)], parent=(b, u))
with open(os.path.join(d, "bad.vhd"), "wb") as f:
    f.write(b"\0" * 8192)
PY

vg "$ROOT/client/sxm-vhd" info --json "$scratch/top.vhd" >/dev/null; ok $? "valgrind: sxm-vhd info on a chain"
vg "$ROOT/client/sxm-vhd" map "$scratch/top.vhd" >/dev/null; ok $? "valgrind: sxm-vhd map on a chain"
vg "$ROOT/client/sxm-vhd" info "$scratch/bad.vhd" 2>/dev/null; [ $? -eq 5 ]; ok $? "valgrind: refusal of a bad image is clean (exit 5)"
vg "$ROOT/client/sxm-vhd" check "$scratch/top.vhd" >/dev/null; ok $? "valgrind: sxm-vhd check on a chain"
for t in "$ROOT"/tests/unit/test-bitmap "$ROOT"/tests/unit/test-vhd; do
  vg "$t" >/dev/null 2>&1; ok $? "valgrind: $(basename "$t")"
done
# sxm-copy: the chain served by the plugin -> a new file, with a checkpoint
# and --verify; then a verify-only that finds a planted difference (exit 3).
start_nbdkit "$PLUGIN" -r "$scratch/top.vhd"
vg "$ROOT/client/sxm-copy" -q --verify --checkpoint="$scratch/ck" "$uri" "$scratch/copy.raw"
ok $? "valgrind: sxm-copy nbd -> file with --checkpoint --verify"
printf 'Q' | dd of="$scratch/copy.raw" bs=1 seek=$((40 << 20)) conv=notrunc status=none
vg "$ROOT/client/sxm-copy" -q --verify-only "$uri" "$scratch/copy.raw" 2>/dev/null
[ $? -eq 3 ]; ok $? "valgrind: sxm-copy --verify-only finding a difference (exit 3)"
stop_nbdkit
# xenmem: engine, stream, TLS transport and the two-phase hook, with the
# memory-less backend (the uffd guest's userfaultfd ioctls are not
# something valgrind models).
(umask 077; printf 'xenmem:%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$scratch/k.psk")
vg "$ROOT/xenmem/xenmem" receive -q --backend=none --tls-psk="$scratch/k.psk" \
  --timeout=60 "unix:$scratch/xm.sock" &
rpid=$!
vg "$ROOT/xenmem/xenmem" send -q --backend=none --tls-psk="$scratch/k.psk" \
  --timeout=60 "unix:$scratch/xm.sock" -- true
ok $? "valgrind: xenmem send (TLS, hook, commit handshake)"
wait $rpid; ok $? "valgrind: xenmem receive"
vg "$ROOT/client/sxm-mirror" "$scratch/nothing.ctl" status 2>/dev/null
[ $? -eq 4 ]; ok $? "valgrind: sxm-mirror with no filter there (exit 4)"
done_testing
