#!/usr/bin/env bash
# Benchmark: copying a VHD's allocated data to a raw file.
#   sxm-copy  nbdkit-vhd-plugin -> raw file (flushes at the end, its default)
#   nbdcopy   nbdkit-vhd-plugin -> raw file (its defaults: no flush)
#   nbdcopy --flush               the same, flushing like sxm-copy
#   qemu-img convert -f vpc -O raw (reads the VHD file itself)
# Two sources: the 8 GiB sample (1 GiB in 64 x 16 MiB runs) and a
# fragmented 8 GiB image (50% allocated: alternating 2 MiB blocks).
# Runs are interleaved (tool order rotates every round); each run writes a
# new destination file after the previous one is deleted and synced.
# Also both copiers into null: (the read side alone), and the destination
# file system's own sequential write speed (fio, O_DIRECT, 1 MiB, iodepth
# 16): when both copiers run at that speed, the disk is what is measured.
# Prints median wall time, throughput of allocated data, peak RSS, and the
# ratios to nbdcopy (goal: sxm-copy <= 0.8 x nbdcopy, RSS <= 64 MiB).
# RUNS=N (default 7) rounds; FRAG=0 skips the fragmented image.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-7}
FRAG=${FRAG:-1}
SXM_COPY="$ROOT/client/sxm-copy"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/sxm-cbench.XXXXXX")
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# run NAME CMD...: one timed run into $work/out.raw; appends "wall rss_kib"
run() {
  local name=$1; shift
  rm -f "$work/out.raw"; sync
  /usr/bin/time -f "%e %M" -o "$work/time.1" "$@" >/dev/null 2>"$work/err.1" || {
    echo "$name failed:" >&2; cat "$work/err.1" >&2; exit 1; }
  cat "$work/time.1" >>"$work/$name.t"
}

bench_image() {   # bench_image LABEL VHD ALLOCATED_BYTES
  local label=$1 vhd=$2 alloc=$3 sock="$work/src.sock"
  rm -f "$sock" "$work"/*.t
  nbdkit -f -U "$sock" --exit-with-parent -r "$PLUGIN" "$vhd" & srv=$!
  wait_sock "$sock"
  local uri="nbd+unix:///?socket=$sock"
  local tools=(sxm nbdcopy nbdcopy_flush qemu_img sxm_null nbdcopy_null)
  # Correctness first: sxm-copy's output equals qemu-img's.
  "$SXM_COPY" -q "$uri" "$work/check.raw"
  qemu-img convert -f vpc -O raw "$vhd" "$work/ref.raw"
  qemu-img compare -q -f raw -F raw "$work/ref.raw" "$work/check.raw" ||
    { echo "sxm-copy output differs from qemu-img's" >&2; exit 1; }
  rm -f "$work/check.raw" "$work/ref.raw"
  for r in $(seq "$RUNS"); do
    for i in 0 1 2 3 4 5; do
      case ${tools[$(( (i + r) % 6 ))]} in
        sxm) run sxm "$SXM_COPY" -q "$uri" "$work/out.raw" ;;
        nbdcopy) run nbdcopy nbdcopy "$uri" "$work/out.raw" ;;
        nbdcopy_flush) run nbdcopy_flush nbdcopy --flush "$uri" "$work/out.raw" ;;
        qemu_img) run qemu_img qemu-img convert -f vpc -O raw "$vhd" "$work/out.raw" ;;
        sxm_null) run sxm_null "$SXM_COPY" -q "$uri" null: ;;
        nbdcopy_null) run nbdcopy_null nbdcopy "$uri" null: ;;
      esac
    done
  done
  kill "$srv"; wait "$srv" 2>/dev/null || true; srv=

  local base nbase
  base=$(cut -d' ' -f1 "$work/nbdcopy.t" | median)
  nbase=$(cut -d' ' -f1 "$work/nbdcopy_null.t" | median)
  echo
  printf '%s (%s MiB allocated), %d runs, medians\n' "$label" $((alloc >> 20)) "$RUNS"
  printf '  %-26s %9s %10s %10s %12s\n' tool "wall" "MiB/s" "peak RSS" "vs nbdcopy"
  for t in "${tools[@]}"; do
    local w m b=$base
    case $t in *_null) b=$nbase ;; esac
    w=$(cut -d' ' -f1 "$work/$t.t" | median)
    m=$(cut -d' ' -f2 "$work/$t.t" | median)
    printf '  %-26s %8.3fs %10.0f %7.1fMiB %12.3f\n' "$t" "$w" \
      "$(echo "$alloc / 1048576 / $w" | bc -l)" "$(echo "$m / 1024" | bc -l)" \
      "$(echo "$w / $b" | bc -l)"
  done
  echo "  (*_null rows: into null:, ratio against nbdcopy into null:)"
}

disk_speed() {
  if command -v fio >/dev/null; then
    fio --name=w --filename="$work/fio.tmp" --size=2G --bs=1M --rw=write \
      --direct=1 --ioengine=libaio --iodepth=16 --output-format=terse 2>/dev/null |
      awk -F";" "{printf \"%.0f\", \$48 / 1024}"
    rm -f "$work/fio.tmp"
  fi
}

echo "== setup: 8 GiB dynamic VHD, 64 x 16 MiB allocated"
sample_vhd "$work/sample.vhd" "$work/raw.tmp"
bench_image "sample 8 GiB, 1 GiB in 16 MiB runs" "$work/sample.vhd" $((1 << 30))
rm -f "$work/sample.vhd"

if [ "$FRAG" = 1 ]; then
  echo "== setup: 8 GiB dynamic VHD, alternating 2 MiB blocks (50%)"
  /usr/bin/python3 - "$work/frag.raw" <<'PY'
import os, sys
with open(sys.argv[1], "wb") as f:
    f.truncate(8 << 30)
    for blk in range(0, 4096, 2):
        f.seek(blk << 21)
        f.write(os.urandom(2 << 20))
PY
  qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on \
    "$work/frag.raw" "$work/frag.vhd"
  rm -f "$work/frag.raw"
  bench_image "fragmented 8 GiB, 50% in alternating 2 MiB blocks" \
    "$work/frag.vhd" $((4 << 30))
fi
echo
echo "sxm-copy flushes the destination at the end (as nbdcopy --flush does);"
echo "ratios are against plain nbdcopy, which does not."
d=$(disk_speed)
[ -n "$d" ] && echo "destination file system, fio O_DIRECT sequential 1 MiB writes, iodepth 16: $d MiB/s" \
  "(1 GiB takes >= $(echo "1024 / $d" | bc -l | cut -c1-5) s at that speed)"
