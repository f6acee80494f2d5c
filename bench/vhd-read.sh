#!/usr/bin/env bash
# Benchmark: reading a VHD through nbdkit-vhd-plugin vs qemu-nbd -f vpc.
#
# 1. Read throughput: an 8 GiB dynamic VHD with 1 GiB allocated (64 x 16 MiB,
#    evenly spread) copied by nbdcopy to null: from each server, runs
#    interleaved; medians and the ratio ours/qemu-nbd (goal <= 0.9).
# 2. A 2040 GiB (VHD maximum, "2 TiB") dynamic VHD with 1% of its blocks
#    allocated: nbdkit's peak RSS (goal < 64 MiB) and the full-disk map time
#    (goal < 10 ms), beside qemu-nbd's.
# Nothing is asserted: this prints numbers.  RUNS=N changes the run count.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-7}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/sxm-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT


echo "== setup: 8 GiB dynamic VHD, 64 x 16 MiB allocated"
vhd="$work/8g.vhd"
sample_vhd "$vhd" "$work/src.raw"
ls -ls "$vhd"

ours_sock="$work/ours.sock"; qemu_sock="$work/qemu.sock"
nbdkit -f -U "$ours_sock" --exit-with-parent "$PLUGIN" "$vhd" & pids+=($!)
qemu-nbd -f vpc -r -t -e 8 -k "$qemu_sock" "$vhd" & pids+=($!)
wait_sock "$ours_sock"; wait_sock "$qemu_sock"

: >"$work/ours.t"; : >"$work/qemu.t"
for r in $(seq "$RUNS"); do
  for who in ours qemu; do
    sock="$work/$who.sock"
    t0=$(now); nbdcopy "nbd+unix:///?socket=$sock" null:; t1=$(now)
    echo "$t1 - $t0" | bc -l >>"$work/$who.t"
  done
done
mo=$(median <"$work/ours.t"); mq=$(median <"$work/qemu.t")
printf '%-34s %10s %10s %8s\n' "read 1 GiB allocated of 8 GiB" "sxm vhd" "qemu-nbd" "ratio"
printf '%-34s %9.3fs %9.3fs %8.3f   (goal <= 0.9; %d runs, medians)\n' \
  "nbdcopy -> null: wall time" "$mo" "$mq" "$(echo "$mo / $mq" | bc -l)" "$RUNS"
printf '%-34s %8.0f %10.0f   MiB/s\n' "throughput" \
  "$(echo "1024 / $mo" | bc -l)" "$(echo "1024 / $mq" | bc -l)"
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=()

echo "== setup: 2040 GiB dynamic VHD, 1% of blocks allocated"
big="$work/2t.vhd"
ROOTDIR="$ROOT" /usr/bin/python3 -c '
import os, sys
sys.path.insert(0, os.path.join(os.environ["ROOTDIR"], "tests"))
import vhdgen
size = 2040 << 30
nblocks = size // (2 << 20)
vhdgen.write_dynamic(sys.argv[1], size, alloc_only=range(0, nblocks, 100))
' "$big"
ls -ls "$big"

ours_sock="$work/ours2.sock"; qemu_sock="$work/qemu2.sock"
nbdkit -f -U "$ours_sock" --exit-with-parent "$PLUGIN" "$big" & ours_pid=$!; pids+=($ours_pid)
qemu-nbd -f vpc -r -t -e 8 -k "$qemu_sock" "$big" & qemu_pid=$!; pids+=($qemu_pid)
wait_sock "$ours_sock"; wait_sock "$qemu_sock"

# Wire time: nbdinfo --map (a C libnbd client) walking the whole disk,
# ~510 block status requests; median of 5, connection set-up included.
maptime() {
  for _ in 1 2 3 4 5; do
    t0=$(now); nbdinfo --map "$1" >"$work/map.out"; t1=$(now)
    echo "($t1 - $t0) * 1000" | bc -l
  done | median
}
mo_ms=$(maptime "nbd+unix:///?socket=$ours_sock"); mo_n=$(wc -l <"$work/map.out")
mq_ms=$(maptime "nbd+unix:///?socket=$qemu_sock"); mq_n=$(wc -l <"$work/map.out")
# Floor: nbdkit's null plugin answers each request with one extent.
null_sock="$work/null.sock"
nbdkit -f -U "$null_sock" --exit-with-parent null 2040G & pids+=($!)
wait_sock "$null_sock"
floor_ms=$(maptime "nbd+unix:///?socket=$null_sock")
read -r inproc_ms inproc_n open_ms < <("$ROOT/bench/map-time" "$big")
rss() { awk '/VmHWM/ {print $2/1024}' "/proc/$1/status"; }
printf '%-34s %10s %10s %8s\n' "2040 GiB, 1% allocated" "sxm vhd" "qemu-nbd" "ratio"
printf '%-34s %8.2fms %8.2fms %8.3f   (%s / %s extents)\n' \
  "full map over NBD (nbdinfo --map)" "$mo_ms" "$mq_ms" "$(echo "$mo_ms / $mq_ms" | bc -l)" "$mo_n" "$mq_n"
printf '%-34s %8.2fms %10s %8s   (nbdkit per-request floor: 1 extent a reply)\n' \
  "same walk, nbdkit null plugin" "$floor_ms" "-" "-"
printf '%-34s %8.2fms %10s %8s   (goal < 10 ms; %s runs; open took %s ms)\n' \
  "full map in the plugin (vhd_map)" "$inproc_ms" "-" "-" "$inproc_n" "$open_ms"
printf '%-34s %7.1fMiB %7.1fMiB %8.3f   (goal < 64 MiB)\n' \
  "server peak RSS (VmHWM)" "$(rss $ours_pid)" "$(rss $qemu_pid)" \
  "$(echo "$(rss $ours_pid) / $(rss $qemu_pid)" | bc -l)"
