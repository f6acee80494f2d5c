#!/bin/sh
# Runs in the rig's dom0 (tests/xen/run-rig), TAP on stdout.  One PVH
# guest (build-guest: heartbeat, 4 MiB checked region, 2 MiB/s dirtied)
# is migrated to localhost by Xen's own `xl migrate`, then by `xenmem
# send/receive --backend=xen`; then a xenmem migration whose receiver is
# killed mid-stream.  A probe (downtime-probe) measures each blackout from
# outside, the same way for both tools; a table puts them side by side.
# Then (8-15) a guest with disks moved by sxm, and (16-18) auto-converge:
# a guest dirtying memory faster than the link (sxmdirty=N) migrated by
# xenmem, throttled through its scheduler cap, which is put back, also
# when the receiver is killed while the throttle is on.
#
# Under TCG's nested SVM a guest now and then triple-faults on its own
# (seen at boot, idle, mid-migration and just after one, with xl as with
# xenmem: the emulator, not the code under test; 3 in one 6-minute run).
# A phase that fails while Xen logged a new triple fault is therefore run
# again on a fresh guest, up to three times, and says so.  A phase that
# fails without one fails.
S=/mnt/share
[ -f $S/scenario.env ] && . $S/scenario.env      # tests/xen.t's options
X=$S/xenmem
L=/var/log/xen/console
# The newest heartbeat line of any guest console ("heartbeat N mem ok"):
# after a migration only the destination domain can still be counting.
last() { cat $L/guest-*.log 2>/dev/null | grep -a -o 'heartbeat [0-9]* mem [A-Za-z]*' | sort -k2 -n | tail -n 1; }
num() { last | cut -d' ' -f2; }
memok() { last | cut -d' ' -f4; }
counts_on() {   # counts_on LABEL: the heartbeat advances, memory intact
  a=$(num); sleep 5; b=$(num)
  echo "# $1: heartbeat ${a:-none} -> ${b:-none}, mem $(memok)"
  [ "${b:-0}" -gt "${a:-0}" ] && [ "$(memok)" = ok ]
}
ndom() { xl list | grep -c '^rigguest'; }
probe_start() { $S/downtime-probe >/tmp/probe.json & PROBE=$!; sleep 0.5; }
probe_stop() { kill $PROBE; wait $PROBE; sed -n 's/.*"max_gap_ms":\([0-9.]*\).*/\1/p' /tmp/probe.json; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
field() { sed -n "s/.*\"$1\":\([^,}]*\).*/\1/p" "$2" 2>/dev/null | head -n 1 | tr -d '"'; }
tf() { xl dmesg | grep -c 'Triple fault'; }
# Kernel panics on the guests' consoles (the same emulator, another
# symptom: "Fatal exception in interrupt" just after a restore, Xen
# logging nothing).  Consoles of guests booted afresh are gone, so the
# count can fall; a leg compares with its own start only.
panics() { cat $L/guest-*.log 2>/dev/null | grep -a -c 'Kernel panic'; }
crashed() {     # crashed DOMID: that domain triple-faulted or panicked
  xl dmesg | grep -q "d$1v[0-9]* Triple fault" ||
    xl list | awk -v d="$1" '$2 == d && $5 ~ /c/ { f = 1 } END { exit !f }'
}
# A running, counting rigguest (booted afresh if there is none).
guest() {
  s=$(xl domid rigguest 2>/dev/null)
  if [ -n "$s" ] && ! crashed "$s" && xl list rigguest | awk 'NR == 2 { exit $5 ~ /[psc]/ }'; then
    return 0
  fi
  xl destroy rigguest 2>/dev/null
  for try in 1 2 3; do
    rm -f $L/guest-*.log
    xl create ${GCFG:-$S/guest.cfg} >/tmp/create.log 2>&1
    for i in $(seq 150); do
      [ "$(num)" -ge 3 ] 2>/dev/null && return 0
      xl list rigguest >/dev/null 2>&1 || break
      sleep 1
    done
    echo "# boot $try: the guest did not come up (triple faults so far: $(xl dmesg | grep -c 'Triple fault'))"
    xl destroy rigguest 2>/dev/null
  done
  cat /tmp/create.log; return 1
}

echo "1..18"
if guest && [ "$(memok)" = ok ]; then
  echo "ok 1 - PVH guest boots and counts ($(last))"
else
  echo "not ok 1 - PVH guest boots and counts"; xl list; tail -c 1500 $L/*; exit 1
fi

# --- Xen's own: xl migrate localhost --------------------------------------
for try in 1 2 3; do
  guest || break
  src=$(xl domid rigguest); tf0=$(tf)
  probe_start
  t0=$(date +%s.%N)
  xl migrate -s "" rigguest "xl migrate-receive" >/tmp/xl.log 2>&1; xrc=$?
  t1=$(date +%s.%N)
  xl_gap=$(probe_stop)
  xl_total=$(secs "$t0" "$t1")
  xl_ok=no
  [ $xrc = 0 ] && counts_on "after xl migrate" && [ "$(ndom)" = 1 ] && xl_ok=yes
  [ $xl_ok = no ] && [ "$(tf)" -gt "$tf0" ] && { echo "# xl try $try: a guest triple-faulted (TCG); again"; xl destroy rigguest 2>/dev/null; continue; }
  break
done
sed 's/^/#   xl: /' /tmp/xl.log | tail -n 6
if [ $xl_ok = yes ]; then
  echo "ok 2 - xl migrate localhost: the guest counts on, memory intact"
else
  echo "not ok 2 - xl migrate localhost (exit $xrc)"; xl list
fi

# --- xenmem, xen backend -----------------------------------------------------
for try in 1 2 3; do
  guest || break
  src=$(xl domid rigguest); tf0=$(tf)
  rm -f /tmp/send.json /tmp/recv.json
  probe_start
  $X receive --backend=xen --json=/tmp/recv.json --timeout=120 unix:/tmp/xm.sock 2>/tmp/recv.err &
  rp=$!
  sleep 0.3
  t0=$(date +%s.%N)
  $X send --backend=xen --domid="$src" --json=/tmp/send.json --timeout=120 unix:/tmp/xm.sock 2>/tmp/send.err
  src_rc=$?
  wait $rp; recv_rc=$?
  t1=$(date +%s.%N)
  xm_gap=$(probe_stop)
  xm_total=$(secs "$t0" "$t1")
  dst=$(xl domid rigguest 2>/dev/null)
  xm_ok=no
  counts_on "after xenmem" && [ "$(ndom)" = 1 ] && [ -n "$dst" ] && [ "$dst" != "$src" ] && xm_ok=yes
  [ "$src_rc$recv_rc$xm_ok" != 00yes ] && [ "$(tf)" -gt "$tf0" ] && { echo "# xenmem try $try: a guest triple-faulted (TCG); again"; xl destroy rigguest 2>/dev/null; xl destroy rigguest--migratedaway 2>/dev/null; continue; }
  break
done
sed 's/^/#   send: /' /tmp/send.err | tail -n 12
sed 's/^/#   recv: /' /tmp/recv.err | tail -n 6
cut -c1-900 /tmp/send.json /tmp/recv.json 2>/dev/null | sed 's/^/#   /'
if [ "$src_rc" = 0 ] && [ "$recv_rc" = 0 ]; then
  echo "ok 3 - xenmem send/receive --backend=xen: exit 0 on both sides"
else
  echo "not ok 3 - xenmem send/receive --backend=xen (send $src_rc, receive $recv_rc)"
fi
if [ $xm_ok = yes ]; then
  echo "ok 4 - the guest counts on in the new domain $dst (source $src gone), memory intact"
else
  echo "not ok 4 - the guest counts on in a new domain"; xl list
  tail -c 800 $L/guest-*.log | sed 's/^/#   console: /'; xl dmesg | tail -n 15 | sed 's/^/#   /'
fi

# --- side by side ------------------------------------------------------------
echo "# tool     total_s  downtime_ms(probe)  rounds  own report"
echo "# xl       $xl_total     $xl_gap               fixed   -"
echo "# xenmem   $xm_total     $xm_gap               $(field rounds /tmp/send.json)       downtime_ms=$(field downtime_ms /tmp/send.json) (suspend $(field suspend_ms /tmp/send.json), final $(field final_ms /tmp/send.json), restore $(field restore_ms /tmp/send.json), commit $(field commit_ms /tmp/send.json)) stop=$(field stop_reason /tmp/send.json)"
echo "sxm-xen-result xl_total_s=$xl_total xl_downtime_ms=$xl_gap xenmem_total_s=$xm_total xenmem_downtime_ms=$xm_gap xenmem_rounds=$(field rounds /tmp/send.json) xenmem_own_downtime_ms=$(field downtime_ms /tmp/send.json)"

# --- failure: the receiver is killed mid-stream --------------------------------
# Then, with the killed receiver's half-built domain still there, the next
# receive must say so (not fail on libxl's name clash) and the source must
# run on.
for try in 1 2 3; do
  guest || break
  src=$(xl domid rigguest); tf0=$(tf)
  xl destroy rigguest--incoming 2>/dev/null
  $X receive --backend=xen --timeout=60 unix:/tmp/xk.sock 2>/tmp/recvk.err &
  rp=$!
  sleep 0.3
  $X send --backend=xen --domid="$src" --rate=8M --json=/tmp/sendk.json --timeout=60 unix:/tmp/xk.sock 2>/tmp/sendk.err &
  sp=$!
  sleep 5
  kill -9 $rp 2>/dev/null
  wait $sp; krc=$?
  wait $rp 2>/dev/null
  state=$(xl list rigguest 2>/dev/null | awk 'NR == 2 { print $5 }')
  k_ok=no
  [ "$krc" = 1 ] && [ "$(xl domid rigguest 2>/dev/null)" = "$src" ] && counts_on "after the failed migration" && k_ok=yes
  left=$(xl list | grep -c -- '--incoming')
  $X receive --backend=xen --timeout=60 unix:/tmp/xs.sock 2>/tmp/recvs.err &
  rp=$!
  sleep 0.3
  $X send --backend=xen --domid="$src" --timeout=60 unix:/tmp/xs.sock 2>/tmp/sends.err; src2=$?
  wait $rp; rrc2=$?
  l_ok=no
  if [ "$left" = 0 ] || { [ $src2 = 4 ] && [ $rrc2 = 4 ] && grep -q 'already exists' /tmp/recvs.err &&
                          [ "$(xl domid rigguest 2>/dev/null)" = "$src" ]; }; then
    l_ok=yes
  fi
  [ "$k_ok$l_ok" != yesyes ] && [ "$(tf)" -gt "$tf0" ] && { echo "# failure try $try: a guest triple-faulted (TCG); again"; xl destroy rigguest 2>/dev/null; continue; }
  break
done
sed 's/^/#   send: /' /tmp/sendk.err | tail -n 6
xl list | sed 's/^/#   /'
if [ $k_ok = yes ]; then
  echo "ok 5 - receiver killed mid-stream: send exits 1, source domain $src resumed and counting (state $state)"
else
  echo "not ok 5 - receiver killed mid-stream (send exit $krc, state $state)"
fi
echo "# half-restored domains left by the killed receiver: $left"
sed 's/^/#   recv: /' /tmp/recvs.err | tail -n 3
sed 's/^/#   send: /' /tmp/sends.err | tail -n 3
if [ $l_ok = yes ]; then
  echo "ok 6 - a receive after a killed one names the leftover domain and refuses; the source runs on"
else
  echo "not ok 6 - a receive after a killed one (send $src2, receive $rrc2)"; xl list | sed 's/^/#   /'
fi
xl destroy rigguest--incoming 2>/dev/null
if [ "$(ndom)" = 1 ] && counts_on "at the end"; then
  echo "ok 7 - afterwards exactly one rigguest domain, counting"
else
  echo "not ok 7 - afterwards exactly one rigguest domain, counting"; xl list
fi
xl destroy rigguest 2>/dev/null

# --- sxm: a guest with a disk moves A -> B -> A ---------------------------
# The guest's disk is a VHD in SR A served by `sxm attach --nbd-device`
# (nbdkit vhd plugin + mirror filter; /dev/nbdN in dom0), given to the
# domain as phy:/dev/nbdN.  `sxm receive --memory xen` in SR B and `sxm
# migrate --memory xen:DOMID` move disk and memory; then back to A.
xl destroy rigguest 2>/dev/null         # the diskless one, if any
ip link set lo up       # sxm's TLS fronts and memory stream: 127.0.0.1
SXM=$S/sxm/scripts/sxm
SXM_VHD=$S/sxm/client/sxm-vhd
export SXM_RUNDIR=/run/sxm SXM_KEEP_RUNDIR=1
mkdir -p /srv/srA /srv/srB
# The newest heartbeat with a disk state: "heartbeat N mem M disk R S".
dlast() { cat $L/guest-*.log 2>/dev/null | grep -a -o 'heartbeat [0-9]* mem [A-Za-z]* disk [0-9]* [A-Za-z]*' | sort -k2 -n | tail -n 1; }
drec() { dlast | cut -d' ' -f6; }
dstate() { dlast | cut -d' ' -f7; }
disk_on() {     # disk_on LABEL: heartbeat and records advance, all read back
  a=$(dlast); sleep 8; b=$(dlast)     # the guest verifies every 3rd beat
  echo "# $1: ${a:-none} -> ${b:-none}"
  [ "$(echo "$b" | cut -d' ' -f2)" -gt "$(echo "$a" | cut -d' ' -f2)" ] 2>/dev/null &&
    [ "$(echo "$b" | cut -d' ' -f6)" -gt "$(echo "$a" | cut -d' ' -f6)" ] 2>/dev/null &&
    [ "$(echo "$b" | cut -d' ' -f4)" = ok ] && [ "$(echo "$b" | cut -d' ' -f7)" = ok ]
}
kv() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" | head -n 1; }
# The device the domain's xvda is backed by (blkback's params).
vbd_dev() { xenstore-read "/local/domain/0/backend/vbd/$1/51712/params" 2>/dev/null; }
# sxm_leg LABEL SR PORT CONTROL [MIGRATE OPTIONS]: receive in SR, migrate
# the running rigguest there; sets LEG_RC (migrate), LEG_RRC (receive),
# LEG_GAP (probe), LEG_DT (sxm's own downtime), NEWCTL (the moved disk's
# control socket on the destination), LEG_SRC, LEG_DST.
sxm_leg() {
  label=$1 sr=$2 port=$3 ctl=$4; shift 4
  LEG_TF=$(tf) LEG_PANIC=$(panics)
  LEG_SRC=$(xl domid rigguest); rm -f /tmp/tok /tmp/mig.json
  $SXM receive --sr "$sr" --disk 64M --disk 8M --memory xen --listen 127.0.0.1:$port \
    --token-file /tmp/tok >/tmp/recv.out 2>/tmp/recv.err &
  RP=$!
  for i in $(seq 100); do [ -s /tmp/tok ] && break; sleep 0.1; done
  probe_start
  t0=$(date +%s.%N)
  $SXM migrate --token-file /tmp/tok --disk "$ctl" --disk "$CTL2" --memory xen:$LEG_SRC \
    --memory-opt --max-rounds=4 --summary-json /tmp/mig.json "$@" >/tmp/mig.out 2>/tmp/mig.err; LEG_RC=$?
  # A failed migrate tells the receiver to give up; it must within 30 s.
  for i in $(seq 300); do kill -0 $RP 2>/dev/null || break; sleep 0.1; done
  kill $RP 2>/dev/null
  wait $RP; LEG_RRC=$?
  LEG_S=$(secs "$t0" "$(date +%s.%N)")
  LEG_GAP=$(probe_stop)
  LEG_DT=$(jq -r '.memory.downtime_ms // "-"' /tmp/mig.json 2>/dev/null)
  LEG_HOOK=$(jq -r '.memory.hook_ms // "-"' /tmp/mig.json 2>/dev/null)
  jq -c '.memory | {rounds, stop_reason, downtime_ms, suspend_ms, final_ms, restore_ms, commit_ms, hook_ms, prepare_ms}' \
    /tmp/mig.json 2>/dev/null | sed 's/^/#   memory: /'
  LEG_DST=$(xl domid rigguest 2>/dev/null)
  NEWCTL=$(grep '^name=' /tmp/recv.out | sed -n 1p | kv control)
  NEWCTL2=$(grep '^name=' /tmp/recv.out | sed -n 2p | kv control)
  sed 's/^/#   migrate: /' /tmp/mig.err | grep -v 'phase\|mirroring' | tail -n 8
  if [ "$LEG_RC" != 0 ]; then   # what xenmem said (sxm keeps its run dir)
    m=$(ls -dt /tmp/sxm-migrate.* 2>/dev/null | head -n 1)
    grep -v 'pages dirty\|round [0-9]' "$m/xenmem.log" 2>/dev/null | tail -n 15 | sed 's/^/#   xenmem: /'
  fi
  sed 's/^/#   receive: /' /tmp/recv.err | tail -n 3
}

# A leg that fails while Xen logged a new triple fault, or the guest's
# console a new kernel panic (the emulator: see the top of this file; the
# disk guest, busier, is hit more often, also with no migration under
# way) is reported as TODO, not as a failure: it says nothing about sxm
# either way (its records, checked every third heartbeat, would say BAD
# if the disk had been wrong).  One without either fails.
verdict() {     # verdict OK N TEXT
  [ "$1" = yes ] ||     # what the guest said besides its heartbeats
    cat $L/guest-*.log 2>/dev/null | grep -a -v '^heartbeat' | tail -n 12 | sed 's/^/#   console: /'
  if [ "$1" = yes ]; then echo "ok $2 - $3"
  elif [ "$(tf)" -gt "${LEG_TF:-0}" ]; then echo "not ok $2 - $3 # TODO the guest triple-faulted under TCG (Xen logged it)"
  elif [ "$(panics)" -gt "${LEG_PANIC:-0}" ]; then echo "not ok $2 - $3 # TODO the guest's kernel panicked under TCG (its console, above)"
  elif [ "${DISK_GUEST_LOST:-}" = yes ]; then echo "not ok $2 - $3 # TODO not run: the disk guest (test 8) was lost to triple faults under TCG"
  else echo "not ok $2 - $3"; fi
}
alive() { [ -n "$(xl domid rigguest 2>/dev/null)" ] && ! crashed "$(xl domid rigguest)"; }

# Two disks: xvda (the records) and xvdb (a second disk, moved too).
UA=$(cat /proc/sys/kernel/random/uuid); UB=$(cat /proc/sys/kernel/random/uuid)
$SXM_VHD create --uuid=$UA /srv/srA/$UA.vhd 64M >/dev/null &&
  $SXM_VHD create --uuid=$UB /srv/srA/$UB.vhd 8M >/dev/null
A1=$($SXM attach --nbd-device /srv/srA/$UA.vhd 2>/tmp/att.err)
A2=$($SXM attach --nbd-device /srv/srA/$UB.vhd 2>>/tmp/att.err)
DEV=$(echo "$A1" | kv device); CTL=$(echo "$A1" | kv control)
DEV2=$(echo "$A2" | kv device); CTL2=$(echo "$A2" | kv control)
# 32 MiB of data beyond the records, so that the copy has work to do.
dd if=/dev/urandom of="$DEV" bs=1M count=32 seek=16 oflag=direct 2>/dev/null
sed -e 's/^extra = "\(.*\)"/extra = "\1 sxmdisk=1"/' $S/guest.cfg >/tmp/gdisk.cfg
# The recipe (sxm(1)): the /dev/nbdN of sxm attach, with sxm's hotplug
# script (Xen's `block` takes seconds a disk under TCG).
BS=$S/sxm/scripts/block-sxm
echo "disk = [ 'vdev=xvda,access=w,format=raw,script=$BS,target=$DEV'," \
  "'vdev=xvdb,access=w,format=raw,script=$BS,target=$DEV2' ]" >>/tmp/gdisk.cfg
export GCFG=/tmp/gdisk.cfg
d_ok=no LEG_TF=$(tf) LEG_PANIC=$(panics)
# A guest lost to a triple fault boots again (a new boot writes records
# of its own, from 1, with a new seed): legs 9-15 all need it.
for try in 1 2 3; do
  tf0=$(tf)
  if [ -n "$DEV" ] && [ -n "$DEV2" ] && guest; then
    for i in $(seq 20); do [ "$(drec)" -gt 8 ] 2>/dev/null && break; sleep 1; done
    disk_on "the guest on A" && d_ok=yes
  fi
  { [ $d_ok = yes ] || [ "$(tf)" -le "$tf0" ]; } && break
  echo "# disk guest try $try: a guest triple-faulted (TCG); again"
  xl destroy rigguest 2>/dev/null
done
cat /tmp/att.err | sed 's/^/#   attach: /'
verdict $d_ok 8 "a PVH guest with two disks on SR A (sxm attach --nbd-device, phy:$DEV, block-sxm): records written and read back ($(dlast))"
# Legs 9-15 need that guest: lost to the emulator, they are TODO, not
# failures (they could not test sxm).
[ $d_ok = yes ] || [ "$(tf)" -le "$LEG_TF" ] || DISK_GUEST_LOST=yes

# block-sxm refuses a device another domain's backend already has (as
# Xen's block script does): xvda's device attached again as xvdc.
okba=no LEG_TF=$(tf) LEG_PANIC=$(panics)
# (A guest lost to a triple fault in an earlier leg is started again, as
# the later legs do: a leg tests sxm, not the emulator's luck.)
if [ $d_ok = yes ] && ! alive; then guest; fi
if alive; then
  xl block-attach rigguest "vdev=xvdc,access=w,format=raw,script=$BS,target=$DEV" >/tmp/ba.log 2>&1; brc=$?
  sed 's/^/#   block-attach: /' /tmp/ba.log | tail -n 3
  he=$(xenstore-ls -f /local/domain/0/backend/vbd 2>/dev/null | grep -o 'hotplug-error = .*' | head -n 1)
  echo "# ${he:-no hotplug-error}"
  xl block-detach rigguest xvdc >/dev/null 2>&1
  [ $brc != 0 ] && echo "$he" | grep -q "already the disk of vbd" && disk_on "after the refused attach" && okba=yes
fi
verdict $okba 9 "block-sxm refuses a second vbd on a device a domain already has (hotplug-error names the vbd), the guest runs on"
[ $d_ok = yes ] || { echo "#   $A1"; tail -c 600 $L/guest-*.log | sed 's/^/#   console: /'; }

# The anchor: Xen's own `xl migrate` of this guest to this host, its disks
# staying where they are (block-sxm lets the new domain of the same VM
# have them): memory only, but libxl builds the new domain with its vbds,
# as on the destination of an sxm migration.
okxl=no LEG_TF=$(tf) LEG_PANIC=$(panics)
if [ $d_ok = yes ] && ! alive; then guest; fi
if alive; then
  probe_start
  xl migrate -s "" rigguest "xl migrate-receive" >/tmp/xld.log 2>&1; xrc=$?
  xld_gap=$(probe_stop)
  sed 's/^/#   xl: /' /tmp/xld.log | tail -n 3
  [ $xrc = 0 ] && [ "$(ndom)" = 1 ] && disk_on "after xl migrate" && okxl=yes
fi
verdict $okxl 10 "xl migrate localhost of the guest with its disks (memory only; blackout ${xld_gap:-?} ms): it runs on, records intact"

# Refused before anything moves: a disk of the domain not in the disk map
# (B offers one disk, migrate maps xvda only; the domain also has xvdb).
ok5=no LEG_TF=$(tf) LEG_PANIC=$(panics)
if [ $d_ok = yes ] && ! alive; then guest; fi
if [ $d_ok = yes ] && alive; then
  src=$(xl domid rigguest); LEG_TF=$(tf) LEG_PANIC=$(panics); rm -f /tmp/tok
  $SXM receive --sr /srv/srB --disk 64M --memory xen --listen 127.0.0.1:10849 \
    --token-file /tmp/tok >/tmp/recv.out 2>/tmp/recv.err &
  RP=$!
  for i in $(seq 100); do [ -s /tmp/tok ] && break; sleep 0.1; done
  $SXM migrate --token-file /tmp/tok --disk "$CTL" --memory xen:$src >/tmp/mig.out 2>/tmp/mig.err; LEG_RC=$?
  # Nothing moved: the receiver still waits (the token stays usable);
  # stopped, it removes what it created.
  sleep 0.5; waiting=no; kill -0 $RP 2>/dev/null && waiting=yes
  kill $RP 2>/dev/null; wait $RP
  grep -o 'not in the disk map[^:]*' /tmp/mig.err | head -n 1 | sed 's/^/# unmapped: /'
  [ "$LEG_RC" = 4 ] && grep -q "disk xvdb ($DEV2) is not in the disk map" /tmp/mig.err &&
    [ $waiting = yes ] && grep -q "the token stays usable" /tmp/mig.err &&
    [ "$(xl domid rigguest)" = "$src" ] && [ -z "$(ls /srv/srB 2>/dev/null)" ] &&
    [ "$($S/sxm/client/sxm-mirror "$CTL" status | jq -r .state)" = idle ] &&
    disk_on "after the refusal" && ok5=yes
fi
verdict $ok5 11 "a disk of the domain not in the map: migrate refuses before anything moves (exit 4, names xvdb), the guest runs on, B still waiting (token usable), empty once stopped"
[ $ok5 = yes ] || sed 's/^/#   /' /tmp/mig.err | tail -n 4

# The destination's disk service killed mid-copy: the guest runs on at A.
# (A guest the emulator killed meanwhile is booted afresh on A's disks.)
ok3=no
if [ $d_ok = yes ] && ! alive; then guest; fi
if [ $d_ok = yes ] && alive; then
  nb=$(ls /srv/srB/*.vhd | wc -l)
  src=$(xl domid rigguest)
  ( for i in $(seq 100); do
      f=$(ls -t /run/sxm/*.pid 2>/dev/null | head -n 1)
      st=$($S/sxm/client/sxm-mirror "$CTL" status 2>/dev/null | jq -r .state)
      [ "$st" = mirroring ] && [ -n "$f" ] && { sleep 1; kill -9 "$(cat "$f")"; exit; }
      sleep 0.2
    done ) &
  KP=$!
  sxm_leg "killed" /srv/srB 10829 "$CTL" --copy-rate 4M
  wait $KP
  echo "# killed leg: migrate $LEG_RC, receive $LEG_RRC, domain $LEG_SRC -> ${LEG_DST:-none}"
  [ "$LEG_RC" = 1 ] && [ "$LEG_RRC" != 0 ] && [ "$(xl domid rigguest)" = "$src" ] &&
    disk_on "after the failed migration" && [ "$(ls /srv/srB/*.vhd | wc -l)" = "$nb" ] &&
    [ "$($SXM list --json | jq length)" = 2 ] && ok3=yes
  sleep 2               # the killed receive's last cleanup
fi
verdict $ok3 12 "destination disk service killed mid-copy: migrate exits 1, the guest runs on at A with its disks, records intact, B left as it was"
[ $ok3 = yes ] || { $SXM list | sed 's/^/#   /'; ls /srv/srB | sed 's/^/#   /'; }

# Leg 1: A -> B.
ok1=no
if [ $d_ok = yes ] && ! alive; then guest; fi
if [ $d_ok = yes ] && alive; then
sxm_leg "A -> B" /srv/srB 10809 "$CTL"
l1="$LEG_S s, probe $LEG_GAP ms, sxm $LEG_DT ms (switchover $LEG_HOOK ms)"
if [ $LEG_RC = 0 ] && [ $LEG_RRC = 0 ] && [ -n "$LEG_DST" ] && [ "$LEG_DST" != "$LEG_SRC" ]; then
  dev_now=$(vbd_dev $LEG_DST)
  echo "# A -> B: domain $LEG_SRC -> $LEG_DST, xvda now on $dev_now (was $DEV)"
  disk_on "after A -> B" && [ -n "$dev_now" ] && [ "$dev_now" != "$DEV" ] &&
    [ "$(ls /srv/srB/*.vhd | wc -l)" = 2 ] && [ ! -e "$SXM_RUNDIR/$UA.info" ] &&
    [ "$(ndom)" = 1 ] && ok1=yes
fi
fi
verdict $ok1 13 "sxm migrate A -> B: the guest runs on B's disks, every record reads back, A's disk services detached (${l1:-not run})"
[ $ok1 = yes ] || { echo "#   migrate ${LEG_RC:-}, receive ${LEG_RRC:-}, domain ${LEG_SRC:-} -> ${LEG_DST:-none}"
  xl list | sed 's/^/#   /'; $SXM list | sed 's/^/#   /'; }

# Leg 2: B -> A (a new disk in SR A).
ok2=no
if [ $ok1 = yes ] && alive; then
  CTL2=$NEWCTL2
  sxm_leg "B -> A" /srv/srA 10819 "$NEWCTL"
  l2="$LEG_S s, probe $LEG_GAP ms, sxm $LEG_DT ms (switchover $LEG_HOOK ms)"
  if [ $LEG_RC = 0 ] && [ $LEG_RRC = 0 ] && [ -n "$LEG_DST" ] && [ "$LEG_DST" != "$LEG_SRC" ]; then
    echo "# B -> A: domain $LEG_SRC -> $LEG_DST, xvda now on $(vbd_dev $LEG_DST)"
    disk_on "after B -> A" && [ "$(ls /srv/srA/*.vhd | wc -l)" = 4 ] && [ "$(ndom)" = 1 ] && ok2=yes
  fi
fi
verdict $ok2 14 "sxm migrate B -> A: back on A, every record reads back (${l2:-not run})"
[ $ok2 = yes ] || { echo "#   migrate ${LEG_RC:-}, receive ${LEG_RRC:-}"; xl list | sed 's/^/#   /'; }
[ $ok2 = yes ] && CTL=$NEWCTL CTL2=$NEWCTL2     # the guest's disks now

# Refused before anything moves: the destination lacks the memory (a
# paused ballast domain holds all but 64 MiB of the free memory).  Last:
# under the emulator, building and destroying the ballast has twice taken
# the disk guest down with it.
ok4=no
# Only on A's first disks (still attached here: nothing moved them, or the
# moves failed), or on A's new ones after a round trip; a fresh guest boots
# on the first ones if the emulator took it down.
if [ -e "$SXM_RUNDIR/$UA.info" ] && [ $d_ok = yes ] && ! alive; then guest; fi
if [ $d_ok = yes ] && { [ -e "$SXM_RUNDIR/$UA.info" ] || [ $ok2 = yes ]; } && alive; then
  free=$(xl info | awk '$1 == "free_memory" { print $3 }')
  printf 'name = "ballast"\ntype = "pvh"\nkernel = "/rig/vmlinuz"\nmemory = %s\nvcpus = 1\n' \
    $((free - 64)) >/tmp/ballast.cfg
  xl create -p /tmp/ballast.cfg >/tmp/ballast.log 2>&1
  src=$(xl domid rigguest)
  sxm_leg "no memory" /srv/srB 10839 "$CTL"
  xl destroy ballast 2>/dev/null
  echo "# no-memory leg: migrate $LEG_RC, receive $LEG_RRC; $(grep -o 'not enough memory[^"]*' /tmp/mig.err | head -n 1)"
  [ "$LEG_RC" = 4 ] && grep -q 'not enough memory' /tmp/mig.err && [ "$(xl domid rigguest)" = "$src" ] &&
    [ "$($S/sxm/client/sxm-mirror "$CTL" status | jq -r .state)" = idle ] &&
    disk_on "after the refusal" && ok4=yes
fi
if [ ! -e "$SXM_RUNDIR/$UA.info" ] && [ $ok2 != yes ]; then
  echo "ok 15 # SKIP the guest's disks moved to B and the guest is gone there (test 13/14)"
else
  verdict $ok4 15 "a destination without the memory refuses before anything moves (exit 4, says so), the guest runs on"
fi
[ $ok4 = yes ] || cat /tmp/ballast.log 2>/dev/null | sed 's/^/#   /'
DISK_GUEST_LOST=
echo "# blackout (probe, ms): xl migrate (memory only) $xl_gap, the disk guest ${xld_gap:-?}; xenmem (memory only) $xm_gap; sxm disk+memory A->B ${l1:-}; B->A ${l2:-}"
echo "sxm-xen-disk-result xl_downtime_ms=$xl_gap xl_disk_guest_downtime_ms=${xld_gap:-} sxm_ab=\"${l1:-}\" sxm_ba=\"${l2:-}\""
# --- auto-converge: a guest dirtying memory faster than the link ------------
# A guest that rewrites HOT MiB of tmpfs as fast as its vCPU lets it
# (guest-init's sxmdirty=N; a config of its own, GCFG), moved by xenmem
# over a link limited by --rate to a quarter of its dirty rate (4 to 8
# MiB/s: TCG's own link is about that).  xenmem's policy throttles it
# through its credit2 cap (backend-xen.c, xen_throttle) until the
# predicted downtime meets the target, and puts the original cap back
# before it asks the guest to suspend (or, if the save fails first, after
# xc_domain_save): on every path; the destination's domain has its
# own cap, never the throttle's.  Then the same with the receiver killed
# while the throttle is on.  SXM_XEN_AC_COMPARE=1 (tests/xen.t passes it
# on) adds the same migration with --no-auto-converge, for the table.
xl destroy rigguest 2>/dev/null
HOT=8 HOTMEM=96         # (under ~76 MiB the kernel does not even load)
sed -e "s/^extra = \"\(.*\)\"/extra = \"\1 sxmdirty=$HOT\"/" -e "s/^memory = .*/memory = $HOTMEM/" \
  $S/guest.cfg >/tmp/ghot.cfg
export GCFG=/tmp/ghot.cfg
SCHED=$(xl info | awk '$1 == "xen_scheduler" { print $3 }')
cap_of() { xl sched-$SCHED -d "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
# "heartbeat N mem M hot MIB UPTIME" lines (guest-init): the MiB/s the
# guest rewrote, by its own clock, from its first heartbeat to its last.
hot_rate() {
  cat $L/guest-*.log 2>/dev/null | grep -a -o 'heartbeat [0-9]* mem [A-Za-z]* hot [0-9]* [0-9.]*' |
    sort -k2 -n | awk 'NR == 1 { m = $6; t = $7 } END { if ($7 > t) printf "%.1f", ($6 - m) / ($7 - t); else print 0 }'
}
# ac_send JSON [SEND OPTIONS]: xenmem moves the running rigguest over
# --rate=$RATE; sets AC_RC, AC_RRC, AC_S, AC_GAP (probe), AC_SRC, AC_DST.
ac_send() {
  j=$1; shift
  AC_SRC=$(xl domid rigguest); rm -f "$j" /tmp/acr.json
  probe_start
  $X receive --backend=xen --json=/tmp/acr.json --timeout=120 unix:/tmp/xa.sock 2>/tmp/acr.err &
  rp=$!
  sleep 0.3
  t0=$(date +%s.%N)
  $X send --backend=xen --domid="$AC_SRC" --rate=$RATE --json="$j" --timeout=120 "$@" \
    unix:/tmp/xa.sock 2>/tmp/acs.err
  AC_RC=$?
  wait $rp; AC_RRC=$?
  AC_S=$(secs "$t0" "$(date +%s.%N)")
  AC_GAP=$(probe_stop)
  AC_DST=$(xl domid rigguest 2>/dev/null)
}
# The fastest the guest dirtied memory during a migration, in KiB/s, from
# xenmem's round_stats: what round k+1 sent was dirtied during round k.
# Under TCG the log-dirty faults of a save can slow the guest's rewriting
# loop far below the rate it reached before (hot_rate), most of all when
# the host is busy; the throttle then rightly has nothing to do.
ac_dirty_kib_s() {
  grep -o '"pages":[0-9]*,"seconds":[0-9.]*' "$1" 2>/dev/null | tr -c '0-9.\n' ' ' |
    awk '{ p[NR] = $1; s[NR] = $2 }
         END { m = 0; for (i = 2; i <= NR; i++) if (s[i-1] > 0 && p[i] * 4 / s[i-1] > m) m = p[i] * 4 / s[i-1]; printf "%d", m }'
}
ac_row() {      # ac_row LABEL JSON TOTAL_S PROBE_MS: a line of the table
  printf '# %-18s %6s %8s %8s %9s %9s %11s %8s  %s\n' "$1" "$(field rounds $2)" \
    "$(field throttle_max $2)" "$3" "$4" "$(field downtime_ms $2)" "$(field wire_bytes $2)" \
    "$(field wire_over_ram $2)" "$(field stop_reason $2)"
}
T_AC=$(date +%s)
for try in 1 2 3; do
  ac_ok=no cap_ok=no ac_idle=no
  guest || break
  HOT_RATE=$(hot_rate)
  RATE=$(awk -v r="$HOT_RATE" 'BEGIN { k = int(r * 1024 / 4); if (k < 4096) k = 4096; if (k > 8192) k = 8192; print k "k" }')
  cap0=$(cap_of rigguest); tf0=$(tf)
  ac_send /tmp/ac.json
  [ "$AC_RC$AC_RRC" = 00 ] && [ "$(field stop_reason /tmp/ac.json)" = "predicted downtime under the target" ] &&
    [ "$(field throttle_max /tmp/ac.json)" -gt 0 ] 2>/dev/null && [ "$(field cap_restored /tmp/ac.json)" = true ] &&
    ac_ok=yes
  cap1=$(cap_of rigguest)
  [ -n "$AC_DST" ] && [ "$AC_DST" != "$AC_SRC" ] && [ -n "$cap1" ] && [ "$cap1" = "$cap0" ] && [ "$(ndom)" = 1 ] &&
    counts_on "after the throttled migration" && cap_ok=yes
  [ "$ac_ok$cap_ok" != yesyes ] && [ "$(tf)" -gt "$tf0" ] && { echo "# auto-converge try $try: a guest triple-faulted (TCG); again"; xl destroy rigguest 2>/dev/null; xl destroy rigguest--migratedaway 2>/dev/null; continue; }
  # Converged unthrottled, correctly, because the guest never dirtied
  # faster than the link during the migration: this try did not test the
  # throttle (the precondition, measured, not met); again.
  if [ $ac_ok = no ] && [ $cap_ok = yes ] && [ "$AC_RC$AC_RRC" = 00 ] &&
     [ "$(field throttle_max /tmp/ac.json)" = 0 ] &&
     [ "$(ac_dirty_kib_s /tmp/ac.json)" -lt "${RATE%k}" ]; then
    ac_idle=yes
    echo "# auto-converge try $try: the guest dirtied at most $(ac_dirty_kib_s /tmp/ac.json) KiB/s during the migration (${HOT_RATE} MiB/s before it), under the link's ${RATE}/s: it converged unthrottled, the throttle untested; again"
    continue
  fi
  break
done
echo "# $SCHED scheduler; the guest rewrites $HOT MiB at ${HOT_RATE:-?} MiB/s (of $HOTMEM MiB); link --rate=${RATE:-?}"
grep -v 'pages dirty' /tmp/acs.err | sed 's/^/#   send: /' | tail -n 24
sed 's/^/#   recv: /' /tmp/acr.err | tail -n 3
cut -c1-600 /tmp/ac.json 2>/dev/null | sed 's/^/#   /'
if [ $ac_idle = yes ]; then
  echo "ok 16 # SKIP in 3 tries the guest never dirtied faster than the link during the migration (TCG log-dirty faults, host load): the throttle was not exercised (it converged unthrottled, exit 0, as it should)"
elif [ $ac_ok = yes ]; then
  echo "ok 16 - auto-converge on Xen: a guest dirtying ${HOT_RATE} MiB/s over --rate=$RATE migrates (exit 0 both sides), stop: predicted downtime under the target, throttle up to $(field throttle_max /tmp/ac.json)%, cap_restored"
else
  echo "not ok 16 - auto-converge on Xen (send ${AC_RC:-?}, receive ${AC_RRC:-?}, stop $(field stop_reason /tmp/ac.json), throttle_max $(field throttle_max /tmp/ac.json), cap_restored $(field cap_restored /tmp/ac.json))"
fi
if [ $cap_ok = yes ]; then
  echo "ok 17 - the guest counts on in the new domain $AC_DST, memory intact, its $SCHED cap its own ($cap1, was $cap0), not the throttle's"
else
  echo "not ok 17 - after the throttled migration (domain ${AC_SRC:-?} -> ${AC_DST:-none}, cap ${cap1:-?}, was ${cap0:-?})"; xl list | sed 's/^/#   /'
fi
AC_ON_S=$AC_S AC_ON_GAP=$AC_GAP
rm -f /tmp/acn.json
if [ -n "${SXM_XEN_AC_COMPARE:-}" ] && guest; then
  ac_send /tmp/acn.json --no-auto-converge
  echo "# --no-auto-converge: send $AC_RC, receive $AC_RRC"
fi

# The receiver killed while the throttle is on: the source domain runs
# on, with its own cap back (90 here, so that "no cap" would show).  A
# tiny --downtime-ms keeps pre-copy going until the kill.
for try in 1 2 3; do
  t_ok=no
  guest || break
  src=$(xl domid rigguest); tf0=$(tf)
  xl sched-$SCHED -d rigguest -c 90; capk0=$(cap_of rigguest)
  xl destroy rigguest--incoming 2>/dev/null
  $X receive --backend=xen --timeout=60 unix:/tmp/xt.sock 2>/tmp/recvt.err &
  rp=$!
  sleep 0.3
  $X send --backend=xen --domid="$src" --rate=$RATE --downtime-ms=0.001 --json=/tmp/sendt.json \
    --timeout=60 unix:/tmp/xt.sock 2>/tmp/sendt.err &
  sp=$!
  for i in $(seq 1800); do
    grep -q '^xenmem: throttle' /tmp/sendt.err && break
    kill -0 $sp 2>/dev/null || break
    sleep 0.05
  done
  kill -9 $rp 2>/dev/null
  wait $sp; trc=$?
  wait $rp 2>/dev/null
  capt=$(sed -n "s/^xenmem: throttle [0-9]*%: domain [0-9]*'s cap \([0-9]*\)$/\1/p" /tmp/sendt.err | head -n 1)
  capk=$(cap_of rigguest)
  [ -n "$capt" ] && [ "$trc" = 1 ] && [ "$(xl domid rigguest 2>/dev/null)" = "$src" ] &&
    [ -n "$capk" ] && [ "$capk" = "$capk0" ] && counts_on "after the failed throttled migration" && t_ok=yes
  xl destroy rigguest--incoming 2>/dev/null
  [ $t_ok = no ] && [ "$(tf)" -gt "$tf0" ] && { echo "# throttled-failure try $try: a guest triple-faulted (TCG); again"; xl destroy rigguest 2>/dev/null; continue; }
  break
done
grep -v 'pages dirty' /tmp/sendt.err | sed 's/^/#   send: /' | tail -n 9
echo "#   report: auto_converge $(field auto_converge /tmp/sendt.json), throttle_max $(field throttle_max /tmp/sendt.json), cap $(field cap /tmp/sendt.json), cap_restored $(field cap_restored /tmp/sendt.json)"
if [ $t_ok = yes ]; then
  echo "ok 18 - receiver killed while the throttle is on (cap $capk0 -> $capt): send exits 1, source domain $src runs on, its cap back to $capk"
else
  echo "not ok 18 - receiver killed while throttled (send exit ${trc:-?}, domain $(xl domid rigguest 2>/dev/null) (was ${src:-?}), cap ${capk:-?} (throttled ${capt:-never}), want ${capk0:-?})"
fi
xl destroy rigguest 2>/dev/null
echo "# auto-converge, guest dirtying ${HOT_RATE:-?} MiB/s over --rate=${RATE:-?} (leg $(( $(date +%s) - T_AC )) s):"
printf '# %-18s %6s %8s %8s %9s %9s %11s %8s  %s\n' "" rounds throttle total_s probe_ms own_ms wire_bytes wire/RAM stop
ac_row "auto-converge" /tmp/ac.json "$AC_ON_S" "$AC_ON_GAP"
[ -f /tmp/acn.json ] && ac_row "no-auto-converge" /tmp/acn.json "$AC_S" "$AC_GAP"
echo "sxm-xen-ac-result dirty_mib_s=${HOT_RATE:-} rate=${RATE:-} rounds=$(field rounds /tmp/ac.json) throttle_max=$(field throttle_max /tmp/ac.json) downtime_ms=$(field downtime_ms /tmp/ac.json) wire_over_ram=$(field wire_over_ram /tmp/ac.json) leg_s=$(( $(date +%s) - T_AC ))"
echo "# triple faults in this run (TCG): $(xl dmesg | grep -c 'Triple fault')"
# Where each one happened (Xen dumps the vCPU's state after the line):
# the material for telling the emulator's faults from a guest's bug.
xl dmesg | grep -a -A24 'Triple fault' | sed 's/^/# tf: /' | head -n 150
xl destroy rigguest 2>/dev/null
for f in $SXM_RUNDIR/*.info; do [ -e "$f" ] && $SXM detach --force "$(basename "$f" .info)"; done
exit 0
