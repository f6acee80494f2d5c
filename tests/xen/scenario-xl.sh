#!/bin/sh
# Runs in the rig's dom0: the baseline, Xen's own toolstack.  Start the
# PVH guest, let it count, `xl migrate` it to localhost, check it counts on
# in the new domain.  TAP on stdout.
log=/var/log/xen/console/guest-rigguest.log
beat() { grep -o 'heartbeat [0-9]*' "$log" 2>/dev/null | tail -n 1 | cut -d' ' -f2; }
echo "1..2"
ls -la /var/log/xen/ 2>&1 | sed 's/^/# /'
pgrep -a xenconsoled | sed 's/^/# /'
t0=$(date +%s)
xl create /rig/guest.cfg
for i in $(seq 120); do [ "$(beat)" -ge 3 ] 2>/dev/null && break; sleep 1; done
b1=$(beat)
echo "# guest up after $(( $(date +%s) - t0 )) s, heartbeat ${b1:-none}"
[ "${b1:-0}" -ge 3 ] && echo "ok 1 - PVH guest boots and counts" || { echo "not ok 1 - PVH guest boots and counts"; xl list; ls -la /var/log/xen/console; tail -c 2000 /var/log/xen/console/* ; xl dmesg | tail -20; exit 1; }
m0=$(date +%s.%N)
xl migrate -s "" rigguest "xl migrate-receive" >/tmp/migrate.log 2>&1
mrc=$?
m1=$(date +%s.%N)
sed 's/^/#   /' /tmp/migrate.log | tail -8
b2=$b1
for i in $(seq 30); do b2=$(beat); [ "${b2:-0}" -gt "$((b1 + 2))" ] && break; sleep 1; done
echo "# xl migrate localhost: exit $mrc, $(echo "$m1 $m0" | awk '{printf "%.1f", $1 - $2}') s; heartbeat $b1 -> $b2"
[ "$mrc" = 0 ] && [ "${b2:-0}" -gt "$((b1 + 2))" ] && echo "ok 2 - xl migrate localhost: the guest counts on" || echo "not ok 2 - xl migrate localhost: the guest counts on"
xl list
xl destroy rigguest 2>/dev/null
