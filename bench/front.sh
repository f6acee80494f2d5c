#!/usr/bin/env bash
# Benchmark: what the destination's TLS front costs (sxm receive).
#
# Since the disk service, `sxm receive` serves each new disk with the
# service it keeps after the commit (nbdkit, vhd plugin + mirror filter,
# on a unix socket) and lets the source reach it over TCP + TLS through a
# front.  Before, the source's mirror wrote straight into `nbdkit
# --tls=require vhd sr=DIR` on TCP ("direct").  Compared here, side by
# side in one run, rotating, FRONT_BENCH_REPS rounds:
#   direct   nbdkit --tls=require vhd sr=DIR on 127.0.0.1 (the old path)
#   nbdkit   nbdkit --tls=require nbd socket=SERVICE (sxm's front) in
#            front of the disk service
#   qemu-nbd qemu-nbd with tls-creds-psk over nbd+unix://SERVICE, the
#            other real proxy here (qemu 7.2's qemu-storage-daemon cannot
#            advertise multi-conn either: the same block layer)
# Source: a 2 GiB dynamic VHD served by nbdkit vhd + mirror filter on a
# unix socket.  Per round and configuration: sxm-mirror start to a fresh
# destination VHD, sxm-copy --live (1 GiB: 64 runs of 16 MiB written
# first, timed), then fio 4 KiB random writes, iodepth 1, for
# FRONT_BENCH_RUNTIME s (default 8) through the mirror: p50/p99 of the
# guest's write latency.  Prints medians and each front's ratio to
# direct.  Nothing is asserted; the script fails only when something does
# not work.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
REPS=${FRONT_BENCH_REPS:-3}
RUNTIME=${FRONT_BENCH_RUNTIME:-8}
FILTER="$ROOT/nbdkit-plugin/nbdkit-mirror-filter.so"
SXM_VHD="$ROOT/client/sxm-vhd" SXM_COPY="$ROOT/client/sxm-copy" SXM_MIRROR="$ROOT/client/sxm-mirror"
for t in fio nbdkit qemu-nbd qemu-io ss python3; do
  command -v "$t" >/dev/null || { echo "bench/front.sh: needs $t" >&2; exit 1; }
done
W=$(mktemp -d "${TMPDIR:-/var/tmp}/bench-front.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
die() { echo "bench/front.sh: FAILED: $*" >&2; exit 1; }
mkdir -p "$W/sr" "$W/pskdir"
printf 'sxm:%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$W/psk"
chmod 600 "$W/psk"; cp "$W/psk" "$W/pskdir/keys.psk"

echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
"$SXM_VHD" create "$W/src.vhd" 2G >/dev/null
nbdkit -f -U "$W/src.sock" --exit-with-parent --filter="$FILTER" "$PLUGIN" "$W/src.vhd" \
  mirror-control="$W/src.ctl" 2>"$W/src.log" &
wait_sock "$W/src.ctl"
SRC="nbd+unix:///?socket=$W/src.sock"
for i in $(seq 0 63); do echo "write -P $((i + 1)) $((i * 32))M 16M"; done |
  sed 's/^/-c\n/' | tr '\n' '\0' | xargs -0 qemu-io -f raw "$SRC" >/dev/null

port=$((20000 + RANDOM % 20000))
run() {   # run CONFIG -> appends "copy_s p50_us p99_us" to $W/res.CONFIG
  local c=$1 u d1= d2= t0 t1
  u=$(cat /proc/sys/kernel/random/uuid); port=$((port + 1))
  "$SXM_VHD" create --uuid="$u" "$W/sr/$u.vhd" 2G >/dev/null
  rm -f "$W/d.sock" "$W/d.ctl"
  if [ "$c" = direct ]; then
    nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" --tls=require --tls-psk="$W/psk" \
      "$PLUGIN" sr="$W/sr" 2>>"$W/dst.log" & d1=$!
  else
    nbdkit -f --exit-with-parent -U "$W/d.sock" --filter="$FILTER" "$PLUGIN" "$W/sr/$u.vhd" \
      mirror-control="$W/d.ctl" 2>>"$W/dst.log" & d2=$!
    wait_sock "$W/d.ctl"
    if [ "$c" = nbdkit ]; then
      nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" --tls=require --tls-psk="$W/psk" \
        --filter=exportname nbd socket="$W/d.sock" exportname="$u" exportname-strict=true \
        default-export="$u" 2>>"$W/dst.log" & d1=$!
    else
      qemu-nbd --object tls-creds-psk,id=t0,endpoint=server,dir="$W/pskdir" --tls-creds t0 \
        -f raw -b 127.0.0.1 -p "$port" -x "$u" -e 16 --shared=16 \
        "nbd+unix:///?socket=$W/d.sock" 2>>"$W/dst.log" & d1=$!
    fi
  fi
  for _ in $(seq 200); do ss -ltn | grep -q ":$port " && break; sleep 0.05; done
  "$SXM_MIRROR" --timeout=30 "$W/src.ctl" start \
    "nbds://sxm@127.0.0.1:$port/$u?tls-psk-file=$W/psk" >/dev/null || die "$c: mirror start"
  t0=$(now)
  "$SXM_COPY" -q --live="$W/src.ctl" "$SRC" || die "$c: live copy"
  t1=$(now)
  fio --name=g --ioengine=nbd --uri="$SRC" --rw=randwrite --bs=4k --iodepth=1 \
    --size=2G --norandommap --randrepeat=0 --time_based --runtime="$RUNTIME" --ramp_time=1 \
    --output-format=json --output="$W/fio.json" >/dev/null 2>&1 || die "$c: fio"
  st=$("$SXM_MIRROR" "$W/src.ctl" status)
  jq -e '.state == "mirroring" and .mirrored_writes > 0 and .dest_errors == 0' <<<"$st" >/dev/null ||
    die "$c: the writes were not mirrored: $st"
  printf '%s %s\n' "$(echo "$t1 - $t0" | bc -l)" \
    "$(jq -r '.jobs[0].write.clat_ns.percentile | "\(.["50.000000"] / 1000) \(.["99.000000"] / 1000)"' "$W/fio.json")" \
    >>"$W/res.$c"
  "$SXM_MIRROR" "$W/src.ctl" abort >/dev/null
  kill $d1 $d2 2>/dev/null || true; wait $d1 $d2 2>/dev/null || true
  rm -f "$W/sr/$u.vhd"
}

configs=(${FRONT_BENCH_CONFIGS:-direct nbdkit qemu-nbd})
n=${#configs[@]}
for r in $(seq "$REPS"); do
  for i in $(seq 0 $((n - 1))); do
    c=${configs[$(( (i + r) % n ))]}
    printf '  [%4ds] round %d/%d: %s\n' $SECONDS "$r" "$REPS" "$c"
    run "$c"
  done
done

col() { awk -v k="$2" '{ print $k }' "$W/res.$1" | median; }
printf '\nTLS front vs direct: live copy of 1 GiB, then mirrored 4 KiB writes (iodepth 1), medians of %s\n' "$REPS"
printf '  %-9s %9s %7s %9s %7s %9s\n' dest "copy s" ratio "p50 us" ratio "p99 us"
dc=$(col direct 1) dp=$(col direct 2)
for c in "${configs[@]}"; do
  cs=$(col "$c" 1) p5=$(col "$c" 2) p9=$(col "$c" 3)
  printf '  %-9s %9.2f %7.2f %9.1f %7.2f %9.1f\n' "$c" "$cs" "$(echo "$cs / $dc" | bc -l)" \
    "$p5" "$(echo "$p5 / $dp" | bc -l)" "$p9"
done
echo "  (each run's figures:)"
for c in "${configs[@]}"; do printf '    %-9s %s\n' "$c" "$(tr '\n' ';' <"$W/res.$c")"; done
