#!/bin/sh
# Runs in the rig's dom0: xenmem's xen backend against the running PVH
# guest, to a domain xl created paused from the same configuration.  TAP.
# Tests 2 and 3 are TODO (issue 9): the first run on a hypervisor
# (2026-11-27) showed the backend treats pfns 0..max as RAM (a PVH guest's
# special pages sit just under 4 GiB, so 4 GiB of mostly absent frames)
# and populates frames the toolstack already populated (over max_mem:
# "Over-allocation for d3: 49409 > 49408", EBUSY).
log() { grep -o 'heartbeat [0-9]*' "/var/log/xen/console/guest-$1.log" 2>/dev/null | tail -n 1 | cut -d' ' -f2; }
echo "1..3"
xl create /rig/guest.cfg
for i in $(seq 120); do [ "$(log rigguest)" -ge 3 ] 2>/dev/null && break; sleep 1; done
b1=$(log rigguest)
[ "${b1:-0}" -ge 3 ] && echo "ok 1 - source PVH guest counts ($b1)" || { echo "not ok 1 - source guest"; exit 1; }
src=$(xl domid rigguest)
xl create -p /rig/guest.cfg 'name="rigdest"'
dst=$(xl domid rigdest)
echo "# source domid $src, destination domid $dst (paused)"
/mnt/share/xenmem receive --backend=xen --domid="$dst" --json=/tmp/recv.json --timeout=120 unix:/tmp/xm.sock 2>/tmp/recv.err &
rp=$!
t0=$(date +%s.%N)
/mnt/share/xenmem send --backend=xen --domid="$src" --json=/tmp/send.json --timeout=120 unix:/tmp/xm.sock 2>/tmp/send.err
src_rc=$?
wait $rp; recv_rc=$?
t1=$(date +%s.%N)
sed 's/^/#   send: /' /tmp/send.err | tail -12
sed 's/^/#   recv: /' /tmp/recv.err | tail -8
cat /tmp/send.json /tmp/recv.json 2>/dev/null | cut -c1-600 | sed 's/^/#   /'
echo "# xenmem send exit $src_rc, receive exit $recv_rc, $(echo "$t1 $t0" | awk '{printf "%.1f", $1 - $2}') s"
[ "$src_rc" = 0 ] && [ "$recv_rc" = 0 ] && echo "ok 2 - xenmem send/receive with the xen backend # TODO issue 9" || echo "not ok 2 - xenmem send/receive with the xen backend # TODO issue 9"
sleep 8
b2=$(log rigdest)
xl list
tail -c 600 /var/log/xen/console/guest-rigdest.log 2>/dev/null | sed 's/^/#   dest console: /'
[ "${b2:-0}" -gt 0 ] && echo "ok 3 - the moved guest counts on ($b1 -> $b2) # TODO issue 9" || echo "not ok 3 - the moved guest counts on (heartbeat ${b2:-none}) # TODO issue 9"
xl dmesg | tail -15 | sed 's/^/#   /'
