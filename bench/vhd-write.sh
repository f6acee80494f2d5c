#!/usr/bin/env bash
# Benchmark: writing into a fresh dynamic VHD through nbdkit-vhd-plugin vs
# qemu-nbd -f vpc, with fio's nbd engine, runs interleaved:
#   4 KiB random writes, iodepth 16, time-based (RUNTIME seconds, default 10)
#   1 MiB sequential writes, iodepth 4
#   4 KiB random writes, iodepth 16, a flush every 64 writes (crash-safe use)
# Each run starts from a new empty image made by the same tool for both
# servers (qemu-img create -f vpc, force_size), so both allocate as they go.
# Prints medians and the ratios ours/qemu-nbd (goal >= 1.0 both).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUNS=${RUNS:-3}
RUNTIME=${RUNTIME:-10}
SIZE=${SIZE:-4G}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/sxm-wbench.XXXXXX")
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

serve() {   # serve WHO IMAGE -> sets $uri and $srv
  local sock="$work/$1.sock"; rm -f "$sock"
  if [ "$1" = ours ]; then
    nbdkit -f -U "$sock" --exit-with-parent "$PLUGIN" "$2" & srv=$!
  else
    qemu-nbd -f vpc -t -e 8 --cache=writeback -k "$sock" "$2" & srv=$!
  fi
  for _ in $(seq 1000); do [ -S "$sock" ] && break; sleep 0.01; done
  uri="nbd+unix:///?socket=$sock"
}

run_fio() {  # run_fio URI RW BS DEPTH FSYNC -> prints "iops MiB/s"
  fio --name=b --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
      --fsync="$5" \
      --size="$SIZE" --time_based --runtime="$RUNTIME" --numjobs=1 \
      --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; t=sys.stdin.read(); j=json.loads(t[t.index("{"):])["jobs"][0]["write"]; print(j["iops"], j["bw_bytes"]/1048576)'
}

for kind in "randwrite 4k 16 0" "write 1M 4 0" "randwrite 4k 16 64"; do
  set -- $kind
  : >"$work/ours"; : >"$work/qemu"
  for r in $(seq "$RUNS"); do
    for who in ours qemu; do
      img="$work/$who.vhd"; rm -f "$img"
      qemu-img create -q -f vpc -o force_size=on "$img" "$SIZE"
      serve "$who" "$img"
      run_fio "$uri" "$1" "$2" "$3" "$4" >>"$work/$who"
      kill "$srv"; wait "$srv" 2>/dev/null || true; srv=
    done
  done
  oi=$(cut -d' ' -f1 <"$work/ours" | median); qi=$(cut -d' ' -f1 <"$work/qemu" | median)
  ob=$(cut -d' ' -f2 <"$work/ours" | median); qb=$(cut -d' ' -f2 <"$work/qemu" | median)
  printf '%-28s sxm vhd %9.0f IOPS %8.1f MiB/s | qemu-nbd %9.0f IOPS %8.1f MiB/s | ratio %.2f (goal >= 1.0; %d runs x %ds)\n' \
    "$1 bs=$2 qd=$3 fsync=$4" "$oi" "$ob" "$qi" "$qb" "$(echo "$oi / $qi" | bc -l)" "$RUNS" "$RUNTIME"
done
