#!/usr/bin/env bash
# Benchmark: sxm-copy reading and writing VHD files itself (no nbdkit),
# against qemu-img convert (the tool admins use for this) and against
# nbdkit's vhd plugin + nbdcopy, on the same images in one run:
#   vhd->raw   sxm-copy a.vhd out.raw
#              qemu-img convert -f vpc -O raw a.vhd out.raw
#              nbdkit vhd a.vhd + nbdcopy --flush
#   vhd->vhd   sxm-copy a.vhd out.vhd            (a new dynamic VHD)
#              qemu-img convert -f vpc -O vpc -o subformat=dynamic
# Every run ends with its output durable: sxm-copy and nbdcopy --flush
# flush the destination, qemu-img's runs are followed by `sync -f OUT`
# inside the timing (sxm-copy's and nbdcopy's get the same, nearly free,
# sync).  Runs are interleaved, tool order rotating every round.  Sources:
# the 8 GiB sample (1 GiB in 64 x 16 MiB runs) and a fragmented 8 GiB image
# (50%: alternating 2 MiB blocks).  Prints median wall time, MiB/s of
# allocated data, peak RSS and the ratio to qemu-img convert of the same
# direction (issue 19's goal: sxm-copy <= 0.7 x qemu-img convert).
# RUNS=N (default 5); FRAG=0 skips the fragmented image.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-5}
FRAG=${FRAG:-1}
SXM_COPY="$ROOT/client/sxm-copy"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/sxm-vbench.XXXXXX")
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# run NAME OUT CMD...: one timed run writing OUT (deleted first), made
# durable inside the timing; appends "wall rss_kib" to $work/NAME.t
run() {
  local name=$1 out=$2; shift 2
  rm -f "$out"; sync
  /usr/bin/time -f "%e %M" -o "$work/time.1" \
    bash -c '"$@" && sync -f "$0"' "$out" "$@" >/dev/null 2>"$work/err.1" || {
    echo "$name failed:" >&2; cat "$work/err.1" >&2; exit 1; }
  cat "$work/time.1" >>"$work/$name.t"
}

bench_image() {   # bench_image LABEL VHD ALLOCATED_BYTES
  local label=$1 vhd=$2 alloc=$3 sock="$work/src.sock"
  local tools=(sxm_raw qemu_raw nbdcopy_raw sxm_vhd qemu_vhd) n=5
  rm -f "$sock" "$work"/*.t
  nbdkit -f -U "$sock" --exit-with-parent -r "$PLUGIN" "$vhd" & srv=$!
  wait_sock "$sock"
  local uri="nbd+unix:///?socket=$sock"
  # Correctness first: both of sxm-copy's outputs read as qemu reads the
  # source.
  "$SXM_COPY" -q "$vhd" "$work/check.raw"
  "$SXM_COPY" -q "$vhd" "$work/check.vhd"
  qemu-img compare -q -f vpc -F raw "$vhd" "$work/check.raw" &&
    qemu-img compare -q -f vpc -F vpc "$vhd" "$work/check.vhd" ||
    { echo "sxm-copy's output differs from the source as qemu reads it" >&2; exit 1; }
  rm -f "$work/check.raw" "$work/check.vhd"
  for r in $(seq "$RUNS"); do
    for i in $(seq 0 $((n - 1))); do
      case ${tools[$(( (i + r) % n ))]} in
        sxm_raw) run sxm_raw "$work/out.raw" "$SXM_COPY" -q "$vhd" "$work/out.raw" ;;
        qemu_raw) run qemu_raw "$work/out.raw" qemu-img convert -f vpc -O raw "$vhd" "$work/out.raw" ;;
        nbdcopy_raw) run nbdcopy_raw "$work/out.raw" nbdcopy --flush "$uri" "$work/out.raw" ;;
        sxm_vhd) run sxm_vhd "$work/out.vhd" "$SXM_COPY" -q "$vhd" "$work/out.vhd" ;;
        qemu_vhd) run qemu_vhd "$work/out.vhd" qemu-img convert -f vpc -O vpc \
                    -o subformat=dynamic,force_size=on "$vhd" "$work/out.vhd" ;;
      esac
    done
  done
  kill "$srv"; wait "$srv" 2>/dev/null || true; srv=

  local qraw qvhd
  qraw=$(cut -d' ' -f1 "$work/qemu_raw.t" | median)
  qvhd=$(cut -d' ' -f1 "$work/qemu_vhd.t" | median)
  echo
  printf '%s (%s MiB allocated), %d runs, medians\n' "$label" $((alloc >> 20)) "$RUNS"
  printf '  %-14s %9s %10s %10s %16s   %s\n' tool wall MiB/s "peak RSS" "vs qemu-img" "all runs (s)"
  for t in "${tools[@]}"; do
    local w m b=$qraw
    case $t in *_vhd) b=$qvhd ;; esac
    w=$(cut -d' ' -f1 "$work/$t.t" | median)
    m=$(cut -d' ' -f2 "$work/$t.t" | median)
    printf '  %-14s %8.3fs %10.0f %7.1fMiB %16.3f   %s\n' "$t" "$w" \
      "$(echo "$alloc / 1048576 / $w" | bc -l)" "$(echo "$m / 1024" | bc -l)" \
      "$(echo "$w / $b" | bc -l)" "$(cut -d' ' -f1 "$work/$t.t" | tr '\n' ' ')"
  done
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
echo "vs qemu-img: against qemu-img convert of the same direction (raw or vhd)."
