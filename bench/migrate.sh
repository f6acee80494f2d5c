#!/usr/bin/env bash
# Benchmark: a whole `sxm migrate` against the anchors that move the same
# disk without a running guest.
#
# Source disk: bench/lib.sh's sample (8 GiB dynamic VHD, 1 GiB allocated
# in 64 runs of 16 MiB), served by nbdkit with the vhd plugin and the
# mirror filter on a unix socket.  Destination: what `sxm receive` serves
# (a fresh dynamic VHD each run, served by the destination's disk service
# - nbdkit vhd + mirror filter on a unix socket - behind a TLS front on TCP
# loopback: nbdkit's nbd plugin with TLS-PSK).  Cases, each run fresh,
# rotating, MIGRATE_BENCH_REPS times:
#   nbdcopy       nbdcopy from the source (filter idle) to nbdkit vhd
#                 sr=DIR with TLS on TCP: the bare cost of moving the data
#                 (anchor; also what sxm receive served before the disk
#                 service)
#   nbdcopy-front the same data through the TLS front into a disk service:
#                 what the front costs the bulk path
#   qemu-img      qemu-img convert -O vpc of the source file to a local
#                 file: no network, no TLS (second anchor)
#   sxm idle      sxm migrate --memory none, nothing writing
#   sxm fio       the same while fio writes 4 KiB at random at 200 IOPS
#                 into the allocated runs
#   sxm fio-nogp  the same with sxm migrate --no-guest-priority
#   sxm fio+mem   the same plus memory: the uffd test guest, 256 MiB,
#                 dirtying 16 MiB/s
# MIGRATE_BENCH_CASES picks cases (default: all, in the order above).
# Prints medians of the whole time, the time sxm spends checking before
# it starts (token, mirror state, sizes, allocation map), the live copy's
# time, the downtime (guest paused to running on the destination) and the
# disks' write hold at switchover, and the ratio of each case's whole
# time to nbdcopy's.  Nothing is asserted about
# timing; the script fails only when something does not work.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
REPS=${MIGRATE_BENCH_REPS:-3}
FILTER="$ROOT/nbdkit-plugin/nbdkit-mirror-filter.so"
SXM="$ROOT/scripts/sxm"
W=$(mktemp -d "${TMPDIR:-/var/tmp}/bench-migrate.XXXXXX")
export SXM_RUNDIR=$W/run      # sxm's disk services, detached after each run
SRC_PID= FIO_PID=
# Every child is killed on the way out (a bare wait would wait for ever on
# a server nobody stopped).
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT

echo "bench/migrate.sh: building the 8 GiB sample (1 GiB allocated)..." >&2
sample_vhd "$W/src.vhd" "$W/raw"

free_port() {
  /usr/bin/python3 -c 'import socket
for _ in range(50):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close()
    t = socket.socket()
    try:
        t.bind(("127.0.0.1", p + 1)); t.close(); print(p); break
    except OSError:
        t.close()'
}

# start_source: a private copy of the sample served with the mirror filter.
start_source() {
  cp --sparse=always "$W/src.vhd" "$W/run.vhd"
  rm -f "$W/vm.sock" "$W/vm.ctl"
  nbdkit -f -U "$W/vm.sock" --exit-with-parent --filter="$FILTER" "$PLUGIN" "$W/run.vhd" \
    mirror-control="$W/vm.ctl" mirror-uri="nbd+unix:///?socket=$W/vm.sock" 2>>"$W/src.log" &
  SRC_PID=$!
  for _ in $(seq 500); do [ -S "$W/vm.ctl" ] && break; sleep 0.02; done
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

fio_start() {
  # The allocated runs: 16 MiB at every 128 MiB.
  fio --name=guest --ioengine=nbd --uri="nbd+unix:///?socket=$W/vm.sock" \
    --rw=randwrite --bs=4k --rate_iops=200 --time_based --runtime=600 \
    --size=16M --offset_increment=128M --numjobs=1 --norandommap \
    --output="$W/fio.log" >/dev/null 2>&1 &
  FIO_PID=$!
  sleep 0.5
}

run_nbdcopy() {
  local port d=$W/sr
  rm -rf "$d"; mkdir -p "$d"
  port=$(free_port)
  local uuid; uuid=$(cat /proc/sys/kernel/random/uuid)
  "$ROOT/client/sxm-vhd" create --uuid="$uuid" "$d/$uuid.vhd" 8G >/dev/null
  (umask 077; printf 'sxm:%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$W/k.psk")
  nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" -P "$W/d.pid" --tls=require \
    --tls-psk="$W/k.psk" "$PLUGIN" sr="$d" 2>>"$W/dst.log" &
  local dp=$!
  for _ in $(seq 500); do [ -s "$W/d.pid" ] && break; sleep 0.02; done
  start_source
  local t0 t1
  t0=$(now)
  nbdcopy --destination-is-zero "nbd+unix:///?socket=$W/vm.sock" \
    "nbds://sxm@127.0.0.1:$port/$uuid?tls-psk-file=$W/k.psk"
  t1=$(now)
  stop_pid "$SRC_PID"; stop_pid "$dp"; rm -f "$W/d.pid"
  echo "nbdcopy $(echo "$t1 - $t0" | bc) - - - -"
}

# The destination as sxm receive serves it, by hand: a disk service and
# its TLS front.
run_nbdcopy_front() {
  local port d=$W/sr uuid fp t0 t1
  rm -rf "$d"; mkdir -p "$d"
  port=$(free_port)
  uuid=$(cat /proc/sys/kernel/random/uuid)
  "$ROOT/client/sxm-vhd" create --uuid="$uuid" "$d/$uuid.vhd" 8G >/dev/null
  "$SXM" attach -q "$d/$uuid.vhd" >/dev/null
  (umask 077; printf 'sxm:%s\n' "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$W/k.psk")
  nbdkit -f --exit-with-parent -i 127.0.0.1 -p "$port" -P "$W/d.pid" --tls=require \
    --tls-psk="$W/k.psk" --filter=exportname nbd socket="$SXM_RUNDIR/$uuid.sock" \
    exportname="$uuid" exportname-strict=true default-export="$uuid" 2>>"$W/dst.log" &
  fp=$!
  for _ in $(seq 500); do [ -s "$W/d.pid" ] && break; sleep 0.02; done
  start_source
  t0=$(now)
  nbdcopy --destination-is-zero "nbd+unix:///?socket=$W/vm.sock" \
    "nbds://sxm@127.0.0.1:$port/$uuid?tls-psk-file=$W/k.psk"
  t1=$(now)
  stop_pid "$SRC_PID"; stop_pid "$fp"; rm -f "$W/d.pid"
  detach_all
  echo "nbdcopy-front $(echo "$t1 - $t0" | bc) - - - -"
}
detach_all() {
  local n
  for n in $("$SXM" list --json | jq -r '.[].name'); do "$SXM" detach -q --force "$n"; done
}

run_qemu_img() {
  local t0 t1
  rm -f "$W/q.vhd"
  t0=$(now)
  qemu-img convert -f vpc -O vpc -o subformat=dynamic,force_size=on "$W/src.vhd" "$W/q.vhd"
  sync -f "$W/q.vhd"
  t1=$(now)
  rm -f "$W/q.vhd"
  echo "qemu-img $(echo "$t1 - $t0" | bc) - - - -"
}

run_sxm() {  # NAME WITH_FIO WITH_MEM [MIGRATE-OPTION...]
  local name=$1 fio=$2 mem=$3 port memargs=() rmem=none d=$W/sr
  shift 3
  rm -rf "$d"; mkdir -p "$d"
  port=$(free_port)
  [ "$mem" = 0 ] || { rmem=uffd; memargs=(--memory uffd --memory-opt=--guest-mem=256M --memory-opt=--dirty-rate=16M); }
  rm -f "$W/token"
  "$SXM" receive -q --sr "$d" --disk 8G --memory "$rmem" --listen "127.0.0.1:$port" \
    --token-file "$W/token" >/dev/null 2>>"$W/recv.log" &
  local rp=$!
  for _ in $(seq 500); do [ -s "$W/token" ] && break; sleep 0.02; done
  start_source
  [ "$fio" = 0 ] || fio_start
  "$SXM" migrate -q --token-file "$W/token" --disk "$W/vm.ctl" "${memargs[@]}" "$@" \
    --summary-json "$W/sum.json" 2>>"$W/migrate.log" ||
    { echo "bench/migrate.sh: sxm migrate failed: $(tail -n 3 "$W/migrate.log")" >&2; exit 1; }
  wait "$rp" || { echo "bench/migrate.sh: sxm receive failed" >&2; exit 1; }
  [ "$fio" = 0 ] || stop_pid "$FIO_PID"
  stop_pid "$SRC_PID"
  detach_all
  jq -r --arg n "$name" '"\($n) \(.total_ms / 1000) \(.memory.downtime_ms) \(.switchover[0].hold_ms) \((.phase_start_ms.memory - .phase_start_ms.copy) / 1000) \(.phase_start_ms.mirror / 1000)"' "$W/sum.json"
}

ALL_CASES="nbdcopy nbdcopy-front qemu-img sxm-idle sxm-fio sxm-fio-nogp sxm-fio+mem"
CASES=${MIGRATE_BENCH_CASES:-$ALL_CASES}
[[ " $CASES " == *" nbdcopy "* ]] || CASES="nbdcopy $CASES"   # the anchor
for c in $CASES; do
  [[ " $ALL_CASES " == *" $c "* ]] || { echo "bench/migrate.sh: no case '$c' (cases: $ALL_CASES)" >&2; exit 1; }
done
run_case() {
  case $1 in
    nbdcopy) run_nbdcopy ;;
    nbdcopy-front) run_nbdcopy_front ;;
    qemu-img) run_qemu_img ;;
    sxm-idle) run_sxm "sxm-idle" 0 0 ;;
    sxm-fio) run_sxm "sxm-fio" 1 0 ;;
    sxm-fio-nogp) run_sxm "sxm-fio-nogp" 1 0 --no-guest-priority ;;
    sxm-fio+mem) run_sxm "sxm-fio+mem" 1 1 ;;
  esac
}
for r in $(seq "$REPS"); do
  echo "bench/migrate.sh: round $r of $REPS" >&2
  for c in $CASES; do run_case "$c"; done
done >"$W/results"

base=$(awk '$1 == "nbdcopy" { print $2 }' "$W/results" | median)
printf '\nsxm migrate vs anchors: 8 GiB VHD, 1 GiB allocated, loopback TCP + TLS, medians of %s\n' "$REPS"
printf "%-14s %10s %10s %10s %10s %14s %12s\n" case "whole s" "vs nbdcopy" "checks s" "copy s" "downtime ms" "hold ms"
for c in $CASES; do
  t=$(awk -v c="$c" '$1 == c { print $2 }' "$W/results" | median)
  dt=- h=- cp=- ck=-
  if awk -v c="$c" '$1 == c && $3 != "-" { f = 1 } END { exit !f }' "$W/results"; then
    dt=$(awk -v c="$c" '$1 == c { print $3 }' "$W/results" | median)
    h=$(awk -v c="$c" '$1 == c { print $4 }' "$W/results" | median)
    cp=$(awk -v c="$c" '$1 == c { print $5 }' "$W/results" | median)
    ck=$(awk -v c="$c" '$1 == c { print $6 }' "$W/results" | median)
  fi
  printf '%-14s %10.2f %10.2f %10s %10s %14s %12s\n' "$c" "$t" "$(echo "$t / $base" | bc -l)" "$ck" "$cp" "$dt" "$h"
done
