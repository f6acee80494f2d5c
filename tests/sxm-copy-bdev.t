#!/usr/bin/env bash
# sxm-copy with block devices (loop devices over sparse files) as the
# destination and as the source: holes in the source must be zeroed on a
# device full of garbage (FALLOC_FL_ZERO_RANGE / BLKZEROOUT), and a device
# source is read whole (no allocation map), zero blocks not written.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] && losetup -f >/dev/null 2>&1 ||
  skip_all "needs root and a free loop device"
loops=()
cleanup_loops() { for l in "${loops[@]}"; do losetup -d "$l" 2>/dev/null; done; }
trap 'cleanup_loops; cleanup' EXIT

SXM_COPY="$ROOT/client/sxm-copy"
src="$scratch/src.raw"
truncate -s 256M "$src"
for o in 0 37 130 255; do
  dd if=/dev/urandom of="$src" bs=1M count=1 seek=$o conv=notrunc status=none
done
# the destination device starts full of 0xff
back="$scratch/dev.raw"
/usr/bin/python3 -c 'import sys; open(sys.argv[1], "wb").write(b"\xff" * (256 << 20))' "$back"
dev=$(losetup -f --show "$back"); loops+=("$dev")

"$SXM_COPY" -q "$src" "$dev"; ok $? "raw file -> block device $dev"
cmp -s "$src" "$dev"; ok $? "device is byte-identical (garbage in the holes zeroed)"

"$SXM_COPY" -q --verify-only "$src" "$dev"; ok $? "--verify-only against the device: identical"

sdev=$(losetup -f --show -r "$src"); loops+=("$sdev")
"$SXM_COPY" -q --json "$sdev" "$scratch/out.raw" >"$scratch/sum.json"; ok $? "block device -> new file"
cmp -s "$src" "$scratch/out.raw"; ok $? "copy of the device is identical"
alloc=$(stat -c %b "$scratch/out.raw")
[ "$alloc" -le $(( (8 << 20) / 512 )) ]; ok $? "zero blocks read from the device were not written ($alloc sectors)"

small="$scratch/small.raw"; truncate -s 128M "$small"
sm=$(losetup -f --show "$small"); loops+=("$sm")
"$SXM_COPY" -q "$src" "$sm" 2>"$scratch/err"; rc=$?
[ $rc -eq 4 ] && grep -q smaller "$scratch/err"; ok $? "smaller device refused (exit 4)"

# A block device holding a VHD (as an LVM-based SR's volumes do): read as
# the disk it holds, said; never written as a VHD (it cannot grow).
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$src" "$scratch/v.vhd"
vdev=$(losetup -f --show "$scratch/v.vhd"); loops+=("$vdev")
"$SXM_COPY" -q "$vdev" "$scratch/vout.raw" 2>"$scratch/err"; rc=$?
[ $rc -eq 0 ] && cmp -s "$src" "$scratch/vout.raw" && grep -q "holds a VHD" "$scratch/err"
ok $? "a device holding a VHD is read as its disk, and that is said"
cp "$scratch/v.vhd" "$scratch/v.before"
"$SXM_COPY" -q "$src" "$vdev" 2>"$scratch/err"; rc=$?
[ $rc -eq 4 ] && grep -q -- "--raw" "$scratch/err" && cmp -s "$scratch/v.vhd" "$scratch/v.before"
ok $? "writing a device holding a VHD as one: refused (exit 4), untouched"
done_testing
