#!/usr/bin/env bash
# Benchmark: the mirror filter (nbdkit-mirror-filter.so) with nbdkit's file
# plugin over raw files, every server on a unix socket.
#
# 1. Guest 4 KiB random-write latency, fio's nbd engine, iodepth 1,
#    time-based (MIRROR_BENCH_RUNTIME s, default 10, after 1 s of ramp),
#    into a 1 GiB raw file prefilled with random data (so every run
#    overwrites allocated blocks, whatever ran before it).  Source servers:
#      absent     nbdkit file FILE
#      idle       nbdkit --filter=mirror file FILE mirror-control=CTL
#      mirroring  the same, after sxm-mirror start (destination: nbdkit
#                 file on a new sparse file) and a finished sxm-copy --live
#                 (copy "done"): steady-state mirroring
#      qemu-nbd   qemu-nbd -f raw -t (its defaults), a second anchor
#      qsd        qemu-storage-daemon exporting the file over NBD
#      qsd-mirror the same with QEMU's active mirror running to the same
#                 kind of destination (nbdkit file on a new sparse file):
#                 blockdev-mirror sync=full copy-mode=write-blocking,
#                 measured after BLOCK_JOB_READY; afterwards the job is
#                 cancelled (completing in sync) and the destination must
#                 equal the source, or the script fails
#    Each run starts its own servers; configurations rotate every round.
#    Prints clat p50/p99 (µs), IOPS and the ratios to "absent" (goals:
#    idle p50 <= 1.05x, mirroring p50 <= 1.3x), and ours against QEMU's
#    active mirror (goals: p50 <= 0.5x, p99 <= 1x).
# 2. Live copy under a guest write load vs the offline copy.  Source: a
#    4 GiB raw file with 1 GiB allocated (64 x 16 MiB runs of random data,
#    one every 64 MiB), served by nbdkit file with the filter for the whole
#    part; destination: nbdkit file on a new sparse 4 GiB file each run.
#      offline  sxm-copy -q SRC DST, filter idle
#      live     fio writes 4 KiB at random at 2000 IOPS (iodepth 1) into the
#               allocated runs only (so the allocated data, and what both
#               copies copy, stays the same 1 GiB); sxm-mirror start;
#               sxm-copy -q --live=CTL SRC; fio stopped; switchover (with
#               verify: the reply must say "ready" or the script fails);
#               resume; switchover --no-verify (must be "ready"); abort.
#      live-nogp  the same with sxm-mirror start --no-guest-priority (the
#               copy does not yield to the guest)
#      live-norelay  the same as live with sxm-copy --no-relay (the data
#               read through the copy export and written back to it)
#    Prints copy wall time and MiB/s of allocated data, ratio live/offline
#    (goal >= 0.8), what the guest got meanwhile (goal: >= 95 % of its
#    2000 IOPS, p99 <= 5 ms), switchover hold_ms and compared bytes, the
#    --no-verify hold_ms, and the total time from start to ready.
# MIRROR_BENCH_PARTS: which parts to run (default "latency live").
# Medians over MIRROR_BENCH_REPS runs (default 3).  Nothing about timing is
# asserted; the script fails only when something does not work.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
REPS=${MIRROR_BENCH_REPS:-3}
PARTS=${MIRROR_BENCH_PARTS:-latency live}
part() { [[ " $PARTS " == *" $1 "* ]]; }
RUNTIME=${MIRROR_BENCH_RUNTIME:-10}
FILTER="$ROOT/nbdkit-plugin/nbdkit-mirror-filter.so"
SXM_COPY="$ROOT/client/sxm-copy"
SXM_MIRROR="$ROOT/client/sxm-mirror"
LIVE_IOPS=2000
for t in fio nbdkit qemu-nbd qemu-img qemu-storage-daemon python3 bc; do
  command -v "$t" >/dev/null || { echo "bench/mirror.sh: needs $t" >&2; exit 1; }
done
for f in "$FILTER" "$SXM_COPY" "$SXM_MIRROR"; do
  [ -x "$f" ] || [ -f "$f" ] || { echo "bench/mirror.sh: $f missing (make first)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/sxm-mbench.XXXXXX")
CTL="$work/ctl"
fio_pid='' src_pid='' dst_pid=''

# stop_pid PID: SIGTERM (fio then writes its report), wait up to 10 s,
# then SIGKILL.  (Not SIGINT: background jobs of a script ignore it.)
stop_pid() {
  local p=$1
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || true
  for _ in $(seq 1000); do kill -0 "$p" 2>/dev/null || break; sleep 0.01; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  # A mirror left "ready" holds writes: release them before stopping fio.
  if [ -S "$CTL" ]; then "$SXM_MIRROR" --timeout=5 "$CTL" abort >/dev/null 2>&1 || true; fi
  stop_pid "$fio_pid"         # clients first: nbdkit waits for them
  stop_pid "$src_pid"
  stop_pid "$dst_pid"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() { echo; echo "bench/mirror.sh: FAILED: $*" >&2; exit 1; }

# json FILE-OR-STRING EXPR: print a field of a JSON reply (python, no jq).
jget() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(eval(sys.argv[2], {"j": v}))' "$1" "$2"; }

mirror() {   # mirror CMD...: run sxm-mirror, print its reply; fail loudly
  local out
  out=$("$SXM_MIRROR" --timeout=120 "$CTL" "$@") || die "sxm-mirror $*: $out"
  echo "$out"
}

serve_src() {  # serve_src absent|filter|qemu FILE -> $src_pid, $src_uri
  local sock="$work/src.sock"; rm -f "$sock" "$CTL"
  case $1 in
    absent) nbdkit -f -U "$sock" --exit-with-parent file "$2" & src_pid=$! ;;
    filter) nbdkit -f -U "$sock" --exit-with-parent --filter="$FILTER" \
              file "$2" mirror-control="$CTL" & src_pid=$! ;;
    qemu) qemu-nbd -f raw -t -k "$sock" "$2" & src_pid=$! ;;
  esac
  wait_sock "$sock"
  if [ "$1" = filter ]; then wait_sock "$CTL"; fi
  src_uri="nbd+unix:///?socket=$sock"
}
serve_dst() {  # serve_dst SIZE: a new sparse file -> $dst_pid, $dst_uri
  local sock="$work/dst.sock"; rm -f "$sock" "$work/dst.raw"; sync
  truncate -s "$1" "$work/dst.raw"
  nbdkit -f -U "$sock" --exit-with-parent file "$work/dst.raw" & dst_pid=$!
  wait_sock "$sock"
  dst_uri="nbd+unix:///?socket=$sock"
}
stop_servers() { stop_pid "$src_pid"; src_pid=; stop_pid "$dst_pid"; dst_pid=; }

# serve_qsd FILE [DEST_SOCKET]: qemu-storage-daemon exporting FILE (node
# "src", export "src") -> $src_pid, $src_uri; with DEST_SOCKET also an NBD
# client node "dst" to it, for blockdev-mirror; QMP on $work/qmp.sock.
serve_qsd() {
  local sock="$work/src.sock"; rm -f "$sock" "$work/qmp.sock"
  qemu-storage-daemon \
    --blockdev driver=file,node-name=src-file,filename="$1",cache.direct=off \
    --blockdev driver=raw,node-name=src,file=src-file \
    ${2:+--blockdev driver=nbd,node-name=dst,server.type=unix,server.path="$2"} \
    --nbd-server addr.type=unix,addr.path="$sock" \
    --export type=nbd,id=exp,node-name=src,name=src,writable=on \
    --chardev socket,id=qmp,path="$work/qmp.sock",server=on,wait=off \
    --monitor chardev=qmp >"$work/qsd.log" 2>&1 & src_pid=$!
  wait_sock "$sock"; wait_sock "$work/qmp.sock"
  src_uri="nbd+unix:///src?socket=$sock"
}
# qmp mirror|cancel: QEMU's active mirror from "src" to "dst" (returns at
# BLOCK_JOB_READY), or its cancel (returns at BLOCK_JOB_COMPLETED: a
# ready mirror cancelled completes with the target in sync).
qmp() {
  python3 - "$work/qmp.sock" "$1" <<'PY' || die "QMP $1: see $work/qsd.log"
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
events = []
def recv(deadline):
    s.settimeout(max(0.1, deadline - time.time()))
    line = f.readline()
    if not line:
        sys.exit("QMP closed")
    return json.loads(line)
def cmd(name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
    f.flush()
    while True:
        r = recv(time.time() + 30)
        if "error" in r:
            sys.exit(f"{name}: {r['error']}")
        if "return" in r:
            return r["return"]
        events.append(r)
def wait_event(name, secs=600):
    deadline = time.time() + secs
    while not any(e.get("event") == name for e in events):
        if time.time() > deadline:
            sys.exit(f"no {name} within {secs} s")
        events.append(recv(deadline))
recv(time.time() + 30)                          # the greeting
cmd("qmp_capabilities")
if sys.argv[2] == "mirror":
    cmd("blockdev-mirror", **{"job-id": "m", "device": "src", "target": "dst",
                              "sync": "full", "copy-mode": "write-blocking"})
    wait_event("BLOCK_JOB_READY")
else:
    jobs = cmd("query-block-jobs")
    if not (jobs and jobs[0].get("ready") and jobs[0].get("status") == "ready"):
        sys.exit(f"the mirror job is not ready: {jobs}")
    cmd("block-job-cancel", device="m")
    wait_event("BLOCK_JOB_COMPLETED")
    done = [e for e in events if e.get("event") == "BLOCK_JOB_COMPLETED"][0]
    if done["data"].get("error"):
        sys.exit(f"the mirror job failed: {done}")
PY
}

# fio_guest URI JSON-OUT ARGS...: fio's nbd engine, 4 KiB random writes,
# iodepth 1, no verify; extra ARGS decide size, time and rate.  A function
# that ends in exec, so "fio_guest ... &" gives fio's own pid.
fio_guest() {
  local uri=$1 out=$2; shift 2
  exec fio --name=guest --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
    --iodepth=1 --numjobs=1 --norandommap --randrepeat=0 --time_based \
    --output-format=json --output="$out" "$@" >"$out.log" 2>&1
}
# fio_stats JSON -> "p50_us p99_us iops samples"
fio_stats() {
  python3 - "$1" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]
if j["error"]:
    sys.exit("fio error %d" % j["error"])
w = j["write"]; c = w["clat_ns"]; p = c["percentile"]
print(p["50.000000"] / 1000, p["99.000000"] / 1000, w["iops"], c["N"])
PY
}

# ---- part 1: latency ----------------------------------------------------
if part latency; then

echo "== load average: $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine skews every figure)"
echo "== setup: 1 GiB raw file of random data (latency), $REPS rounds x ${RUNTIME} s"
lat_img="$work/lat.raw"
dd if=/dev/urandom of="$lat_img" bs=16M count=64 status=none
sync

lat_run() {   # lat_run CONFIG -> appends "p50 p99 iops N" to $work/lat.CONFIG
  local c=$1 j="$work/fio.json" st
  case $c in
    absent) serve_src absent "$lat_img" ;;
    idle) serve_src filter "$lat_img" ;;
    qemu) serve_src qemu "$lat_img" ;;
    qsd) serve_qsd "$lat_img" ;;
    qsd-mirror)
      serve_dst 1G
      serve_qsd "$lat_img" "$work/dst.sock"
      qmp mirror ;;
    mirroring)
      serve_src filter "$lat_img"
      serve_dst 1G
      mirror start "$dst_uri" >/dev/null
      "$SXM_COPY" -q --live="$CTL" "$src_uri" || die "sxm-copy --live failed"
      st=$(mirror status)
      [ "$(jget "$st" 'j["state"] + "/" + j["copy"]')" = mirroring/done ] ||
        die "mirror not in steady state after the live copy: $st" ;;
  esac
  sync   # no dirty pages left by the previous run or the copy
  (fio_guest "$src_uri" "$j" --size=1G --ramp_time=1 --runtime="$RUNTIME") ||
    die "fio ($c) failed: $(cat "$j.log")"
  fio_stats "$j" >>"$work/lat.$c" || die "fio ($c): no stats"
  if [ "$c" = mirroring ]; then
    # Soundness: the guest's writes really went through the mirror.
    st=$(mirror status)
    [ "$(jget "$st" 'j["state"]')" = mirroring ] || die "mirror left mirroring: $st"
    [ "$(jget "$st" 'j["mirrored_writes"] > 0 and j["dest_errors"] == 0')" = True ] ||
      die "no mirrored writes, or destination errors: $st"
    mirror abort >/dev/null
  fi
  if [ "$c" = qsd-mirror ]; then
    # Soundness: QEMU's mirror really mirrored the guest's writes.
    qmp cancel
    stop_servers
    qemu-img compare -q -f raw -F raw "$lat_img" "$work/dst.raw" ||
      die "QEMU's active mirror: the destination differs from the source"
  fi
  stop_servers
}

configs=(absent idle mirroring qemu qsd qsd-mirror)
for r in $(seq "$REPS"); do
  for i in 0 1 2 3 4 5; do
    c=${configs[$(( (i + r) % 6 ))]}
    printf '  [%4ds] round %d/%d: %s\n' $SECONDS "$r" "$REPS" "$c"
    lat_run "$c"
  done
done
rm -f "$lat_img"
fi

# ---- part 2: live copy vs offline copy ------------------------------------
if part live; then

echo "== setup: 4 GiB raw file, 1 GiB allocated in 64 x 16 MiB runs of random data"
src_img="$work/src.raw"
truncate -s 4G "$src_img"
for i in $(seq 0 63); do
  dd if=/dev/urandom of="$src_img" bs=16M count=1 seek=$((i * 4)) conv=notrunc status=none
done
sync
ALLOC=$((1 << 30))
serve_src filter "$src_img"

offline_run() {
  local t0 t1
  serve_dst 4G
  t0=$(now)
  "$SXM_COPY" -q "$src_uri" "$dst_uri" || die "offline sxm-copy failed"
  t1=$(now)
  echo "$t1 - $t0" | bc -l >>"$work/offline.t"
  if [ ! -s "$work/offline.checked" ]; then   # once: the copy is right
    qemu-img compare -q -f raw -F raw "$src_img" "$work/dst.raw" ||
      die "offline copy differs from the source"
    echo ok >"$work/offline.checked"
  fi
  stop_pid "$dst_pid"; dst_pid=
}

live_run() {   # live_run [KIND START-OPTION COPY-OPTION] -> $work/KIND.t
  local j="$work/live-fio.json" t0 t1 t2 t3 st sw nv k=${1:-live}
  local sopt=() copt=()
  [ -z "${2:-}" ] || sopt=("$2")
  [ -z "${3:-}" ] || copt=("$3")
  serve_dst 4G
  # The guest: already writing when the mirror starts, into the allocated
  # runs only (strided zones: 16 MiB of every 64 MiB), rate-limited.
  fio_guest "$src_uri" "$j" --size=4G --zonemode=strided --zonerange=16M --zonesize=16M \
    --zoneskip=48M --rate_iops="$LIVE_IOPS" --ramp_time=1 --runtime=600 &
  fio_pid=$!
  sleep 1.5   # past fio's 1 s ramp: its latency figures cover the mirror only
  kill -0 "$fio_pid" 2>/dev/null || die "fio (live load) exited: $(cat "$j.log")"
  t0=$(now)
  mirror start "$dst_uri" "${sopt[@]}" >/dev/null
  t1=$(now)
  "$SXM_COPY" -q "${copt[@]}" --live="$CTL" "$src_uri" || die "sxm-copy --live failed"
  t2=$(now)
  kill -0 "$fio_pid" 2>/dev/null || die "fio (live load) ended before the copy did"
  stop_pid "$fio_pid"; fio_pid=
  fio_stats "$j" >>"$work/$k.fio" || die "fio (live load): no stats"
  sw=$("$SXM_MIRROR" --timeout=300 "$CTL" switchover) || true
  t3=$(now)
  if [ "$(jget "${sw:-null}" 'j is not None and j.get("ok") is True and j.get("state")')" != ready ]; then
    echo >&2
    echo "!!!!!! SWITCHOVER DID NOT REACH READY: the destination is NOT a copy of the source" >&2
    echo "!!!!!! reply: ${sw:-<none>}" >&2
    echo "!!!!!! status: $("$SXM_MIRROR" --timeout=5 "$CTL" status 2>&1)" >&2
    die "verified switchover failed"
  fi
  st=$(mirror status)
  mirror resume >/dev/null
  nv=$(mirror switchover --no-verify)
  [ "$(jget "$nv" 'j["state"]')" = ready ] || die "no-verify switchover: $nv"
  mirror abort >/dev/null
  stop_pid "$dst_pid"; dst_pid=
  # wall of copy, start->ready, hold, compared, no-verify hold, copy bytes
  # (copied + skipped), start's own time
  echo "$(echo "$t2 - $t1" | bc -l) $(echo "$t3 - $t0" | bc -l)" \
    "$(jget "$sw" 'j["hold_ms"]') $(jget "$sw" 'j["compared_bytes"]')" \
    "$(jget "$nv" 'j["hold_ms"]')" \
    "$(jget "$st" 'j["copied_bytes"] + j["copy_skipped_bytes"]')" \
    "$(jget "$st" 'j["mirrored_writes"]')" \
    "$(echo "$t1 - $t0" | bc -l)" \
    "$(jget "$st" 'j["copy_yields"]') $(jget "$st" 'j["copy_yield_ms"]')" \
    >>"$work/$k.t"
}
live-nogp_run() { live_run live-nogp --no-guest-priority ""; }
live-norelay_run() { live_run live-norelay "" --no-relay; }

lcases=(offline live live-nogp live-norelay)
for r in $(seq "$REPS"); do
  for i in 0 1 2 3; do
    k=${lcases[$(( (i + r) % 4 ))]}
    printf '  [%4ds] round %d/%d: %s copy\n' $SECONDS "$r" "$REPS" "$k"
    "${k}_run"
  done
done
stop_servers
fi

# ---- report -----------------------------------------------------------------

col() { cut -d' ' -f"$2" "$1" | median; }
range() { cut -d' ' -f"$2" "$1" | sort -g | awk -v s="${3:-1}" -v f="${4:-%.1f}" \
  'NR==1{a=$1} {b=$1} END {printf "[" f "-" f "]", a*s, b*s}'; }
ratio() { echo "$1 / $2" | bc -l; }
if part latency; then
echo
printf 'Guest 4 KiB random writes, fio nbd engine, iodepth 1, 1 GiB raw file,\n'
printf '%d runs x %d s each, medians (µs)\n' "$REPS" "$RUNTIME"
printf '  %-20s %7s %15s %7s %15s %6s %8s %8s %8s\n' source p50 "(range)" p99 "(range)" IOPS samples \
  "p50/abs" "p99/abs"
a50=$(col "$work/lat.absent" 1); a99=$(col "$work/lat.absent" 2)
for c in absent idle mirroring qemu qsd qsd-mirror; do
  f="$work/lat.$c"
  p50=$(col "$f" 1); p99=$(col "$f" 2); iops=$(col "$f" 3); n=$(col "$f" 4)
  case $c in
    absent) label="filter absent" ;; idle) label="filter idle" ;;
    mirroring) label="mirroring (steady)" ;; qemu) label="qemu-nbd -f raw" ;;
    qsd) label="qemu-storage-daemon" ;; qsd-mirror) label="qsd active mirror" ;;
  esac
  printf '  %-20s %7.1f %15s %7.1f %15s %6.0f %8.0f %8.3f %8.3f\n' "$label" "$p50" "$(range "$f" 1)" \
    "$p99" "$(range "$f" 2)" "$iops" "$n" "$(ratio "$p50" "$a50")" "$(ratio "$p99" "$a99")"
done
printf '  goals: idle p50 <= 1.05 x absent (is %.3f), mirroring p50 <= 1.3 x absent (is %.3f)\n' \
  "$(ratio "$(col "$work/lat.idle" 1)" "$a50")" "$(ratio "$(col "$work/lat.mirroring" 1)" "$a50")"
m50=$(col "$work/lat.mirroring" 1); m99=$(col "$work/lat.mirroring" 2)
q50=$(col "$work/lat.qsd-mirror" 1); q99=$(col "$work/lat.qsd-mirror" 2)
printf '  QEMU'"'"'s active mirror costs %.2f x its own unmirrored export (p50), ours %.2f x ours\n' \
  "$(ratio "$q50" "$(col "$work/lat.qsd" 1)")" "$(ratio "$m50" "$a50")"
printf '  ours against QEMU'"'"'s active mirror: p50 %.3f x (goal <= 0.5), p99 %.3f x (goal <= 1)\n' \
  "$(ratio "$m50" "$q50")" "$(ratio "$m99" "$q99")"

fi

if part live; then
off=$(col "$work/offline.t" 1)
echo
printf 'Copy of a 4 GiB raw disk with 1 GiB allocated (64 x 16 MiB), %d runs, medians\n' "$REPS"
printf '  %-44s %8s %15s %7s %9s\n' copy wall "(range)" "MiB/s" "vs offl."
printf '  %-44s %7.3fs %15s %7.0f %9.3f\n' "offline: sxm-copy SRC DST (filter idle)" "$off" \
  "$(range "$work/offline.t" 1 1 %.2f)" "$(echo "$ALLOC / 1048576 / $off" | bc -l)" 1
for k in live live-nogp live-norelay; do
  live=$(col "$work/$k.t" 1)
  case $k in
    live) label="live: sxm-copy --live, guest writing" ;;
    live-nogp) label="live, --no-guest-priority" ;;
    live-norelay) label="live, sxm-copy --no-relay" ;;
  esac
  printf '  %-44s %7.3fs %15s %7.0f %9.3f\n' "$label" "$live" \
    "$(range "$work/$k.t" 1 1 %.2f)" "$(echo "$ALLOC / 1048576 / $live" | bc -l)" "$(echo "$off / $live" | bc -l)"
done
echo
printf 'The guest during the live copy (%d IOPS asked; goals: >= 95 %%, p99 <= 5 ms;\n' "$LIVE_IOPS"
printf 'copy >= 0.8 x offline), medians [ranges]\n'
printf '  %-26s %16s %20s %22s %9s %16s\n' case IOPS "p50 µs" "p99 µs" "copy/offl" "copy yields (ms)"
for k in live live-nogp live-norelay; do
  printf '  %-26s %5.0f %10s %7.1f %12s %8.1f %13s %9.3f %6.0f (%.0f)\n' "$k" \
    "$(col "$work/$k.fio" 3)" "$(range "$work/$k.fio" 3 1 %.0f)" \
    "$(col "$work/$k.fio" 1)" "$(range "$work/$k.fio" 1)" \
    "$(col "$work/$k.fio" 2)" "$(range "$work/$k.fio" 2 1 %.0f)" \
    "$(echo "$off / $(col "$work/$k.t" 1)" | bc -l)" \
    "$(col "$work/$k.t" 9)" "$(col "$work/$k.t" 10)"
done
printf '  live copy moved %.1f MiB (copied + skipped as dirty); guest wrote %.0f requests meanwhile\n' \
  "$(echo "$(col "$work/live.t" 6) / 1048576" | bc -l)" "$(col "$work/live.t" 7)"
echo
echo "Switchover (guest stopped writing first), medians over the live cases"
cat "$work/live.t" "$work/live-nogp.t" "$work/live-norelay.t" >"$work/sw.t"
printf '  %-46s %9.1f ms %s, compared %.1f MiB\n' "switchover with verify: hold_ms" \
  "$(col "$work/sw.t" 3)" "$(range "$work/sw.t" 3)" "$(echo "$(col "$work/sw.t" 4) / 1048576" | bc -l)"
printf '  %-46s %9.1f ms %s\n' "switchover --no-verify (after resume): hold_ms" \
  "$(col "$work/sw.t" 5)" "$(range "$work/sw.t" 5)"
printf '  %-46s %9.3f s  %s, start itself %.3f s\n' "start -> ready (start + live copy + verify)" \
  "$(col "$work/sw.t" 2)" "$(range "$work/sw.t" 2 1 %.2f)" "$(col "$work/sw.t" 8)"
fi
echo "  (ranges: [min-max] over the runs; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
