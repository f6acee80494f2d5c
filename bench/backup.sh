#!/usr/bin/env bash
# Benchmark: an incremental sxm backup round against copying the whole
# disk, in one run, on the same disk (issue 24's bench):
#   increment   sxm backup --to ARCHIVE NAME, live, after 1 % of the disk
#               changed (the disk attached with sxm attach; the round:
#               snapshot in place, copy the frozen layer's own sectors,
#               check the point, merge the source back to two deep)
#   full copy   sxm-copy of the whole disk (through a read-only nbdkit vhd
#               of its chain) into a new dynamic VHD
#   qemu-img    qemu-img convert of the same export (raw, through NBD:
#               qemu's vpc driver cannot follow a VHD chain, and it has no
#               notion of an increment) into a new dynamic VHD
# The disk: the 8 GiB sample (bench/lib.sh: 1 GiB allocated in 64 x
# 16 MiB runs); each round first writes 1 % of it (82 MiB: 41 random
# 2 MiB pieces anywhere) through the disk service.  Bytes moved are the
# bytes each tool's source nbdkit served, counted by nbdkit's stats filter
# (for sxm backup through an nbdkit in its PATH that adds the filter).
# Every output is made durable inside its timing (sync -f).  Prints per
# round and the medians with ratios.  RUNS=N rounds (default 3);
# ALLOC_GIB=N (default 1): the disk holds N GiB (beyond the sample's 1 GiB,
# written as 64 MiB patterned runs) - the round's fixed costs (snapshot,
# check, coalesce, relink, process starts) against a full copy that grows.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
SXM="$ROOT/scripts/sxm"
SXM_COPY="$ROOT/client/sxm-copy"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/sxm-bkbench.XXXXXX")
export SXM_RUNDIR=$work/run
cleanup() {
  "$SXM" detach --force disk >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# An nbdkit that adds the stats filter, first in sxm backup's PATH.
mkdir -p "$work/wrap" "$work/archive"
cat >"$work/wrap/nbdkit" <<EOF
#!/bin/sh
exec $(command -v nbdkit) --filter=stats "\$@" statsfile="\$SXM_BENCH_STATS" statsappend=true
EOF
chmod +x "$work/wrap/nbdkit"

read_bytes() {   # STATSFILE -> bytes read (sum over its reports)
  awk '/^read:/ { v = $6; u = $7; sub(/,$/, "", u)
       m = (u == "KiB") ? 1024 : (u == "MiB") ? 1048576 : (u == "GiB") ? 1073741824 : 1
       s += v * m } END { printf "%.0f\n", s }' "$1"
}
timed() {   # OUT CMD... : seconds, the command's output made durable
  local out=$1 t0 t1; shift
  t0=$(now)
  "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  [ ! -e "$out" ] || sync -f "$out"
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}

stop_ro() {   # the read-only server, gone (its stats file then complete)
  local pid
  pid=$(cat "$work/ro.pid")
  kill "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$work/ro.pid" "$work/ro.sock"
}

echo "== setup: the 8 GiB sample disk, attached; the first (full) backup"
sample_vhd "$work/disk.vhd" "$work/raw.tmp"
"$SXM" attach --name disk "$work/disk.vhd" >/dev/null
uri="nbd+unix:///?socket=$work/run/disk.sock"
ALLOC_GIB=${ALLOC_GIB:-1}
if [ "$ALLOC_GIB" -gt 1 ]; then
  for i in $(seq 0 $(( (ALLOC_GIB - 1) * 16 - 1 ))); do
    # 64 MiB runs in the 2nd half of every 128 MiB (the sample's 16 MiB
    # runs sit at the start of each): (ALLOC_GIB - 1) GiB more.
    qemu-io -f raw -c "write -P $(( i % 250 + 1 )) $(( (i * 128 + 64) << 20 )) 64M" "$uri" >/dev/null
  done
fi
SXM_BENCH_STATS=$work/full.stats PATH="$work/wrap:$PATH" \
  "$SXM" backup -q --to "$work/archive" disk >/dev/null
echo "full backup: $(jq '.points[0].bytes_read' "$work/archive/disk.backup.json") bytes read"

printf '\n%-5s %-11s %12s %9s %10s\n' round tool "MiB read" wall "MiB/s"
for r in $(seq "$RUNS"); do
  # 1 % of the disk changes.
  /usr/bin/python3 - "$uri" "$r" <<'PY'
import random, subprocess, sys
rng = random.Random(int(sys.argv[2]))
cmds = []
for i in range(41):
    off = rng.randrange(0, (8 << 30) - (2 << 20)) // 512 * 512
    cmds += ["-c", f"write -P {rng.randrange(1, 255)} {off} 2M"]
subprocess.run(["qemu-io", "-f", "raw", *cmds, sys.argv[1]], check=True,
               stdout=subprocess.DEVNULL)
PY
  rm -f "$work"/*.stats
  w=$(SXM_BENCH_STATS=$work/inc.stats PATH="$work/wrap:$PATH" \
      timed "$work/archive" "$SXM" backup -q --to "$work/archive" disk)
  echo "$w $(read_bytes "$work/inc.stats")" >>"$work/increment.t"
  # The whole disk, as sxm-copy and qemu-img convert would move it.
  nbdkit -U "$work/ro.sock" -P "$work/ro.pid" --filter=stats --readonly \
    "$PLUGIN" "$work/disk.vhd" statsfile="$work/full-copy.stats" </dev/null
  wait_sock "$work/ro.sock"
  rm -f "$work/out.vhd"
  w=$(timed "$work/out.vhd" "$SXM_COPY" -q "nbd+unix:///?socket=$work/ro.sock" "$work/out.vhd")
  stop_ro
  echo "$w $(read_bytes "$work/full-copy.stats")" >>"$work/full-copy.t"
  nbdkit -U "$work/ro.sock" -P "$work/ro.pid" --filter=stats --readonly \
    "$PLUGIN" "$work/disk.vhd" statsfile="$work/qemu.stats" </dev/null
  wait_sock "$work/ro.sock"
  rm -f "$work/out.vhd"
  w=$(timed "$work/out.vhd" qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on \
      "nbd+unix:///?socket=$work/ro.sock" "$work/out.vhd")
  stop_ro
  echo "$w $(read_bytes "$work/qemu.stats")" >>"$work/qemu-img.t"
  rm -f "$work/out.vhd"
  for t in increment full-copy qemu-img; do
    read -r w b < <(tail -n 1 "$work/$t.t")
    printf '%-5s %-11s %12.1f %8.2fs %10.1f\n' "$r" "$t" "$(echo "$b / 1048576" | bc -l)" \
      "$w" "$(echo "$b / 1048576 / $w" | bc -l)"
  done
done

echo
echo "medians over $RUNS rounds (1 % of 8 GiB changed before each; $ALLOC_GIB GiB allocated)"
printf '  %-11s %12s %9s %18s %18s\n' tool "MiB read" wall "bytes vs increment" "time vs increment"
ib=$(cut -d' ' -f2 "$work/increment.t" | median)
iw=$(cut -d' ' -f1 "$work/increment.t" | median)
for t in increment full-copy qemu-img; do
  b=$(cut -d' ' -f2 "$work/$t.t" | median)
  w=$(cut -d' ' -f1 "$work/$t.t" | median)
  printf '  %-11s %12.1f %8.2fs %18.1f %18.1f\n' "$t" "$(echo "$b / 1048576" | bc -l)" "$w" \
    "$(echo "$b / $ib" | bc -l)" "$(echo "$w / $iw" | bc -l)"
done
# Correctness: the newest point reads as the disk does now (nothing wrote
# since the last round).
point=$(jq -r '.points[-1].file' "$work/archive/disk.backup.json")
"$SXM" restore "$work/archive/$point" "$work/restored.vhd" 2>/dev/null
"$SXM_COPY" -q --verify-only "$work/restored.vhd" "$uri" ||
  { echo "the newest point differs from the disk" >&2; exit 1; }
echo "the newest point, restored, equals the disk"
