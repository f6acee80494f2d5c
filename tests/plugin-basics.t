#!/usr/bin/env bash
# The plugin as an nbdkit operator meets it: --dump-plugin, --help, the
# magic file= key, -r giving a read-only export that refuses writes and
# leaves the file untouched, multi-conn, and concurrent readers over several
# connections getting the right bytes.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

vhd="$scratch/disk.vhd"
set -e
qemu-img create -q -f vpc "$vhd" 64M
qemu-io -f vpc -c 'write -P 0x33 0 8M' -c 'write -P 0x44 40M 3M' "$vhd" >/dev/null
qemu-img convert -f vpc -O raw "$vhd" "$scratch/ref.raw"
set +e

dump=$("${NBDKIT[@]}" "$PLUGIN" --dump-plugin)
for key in vhd_version vhd_types vhd_block_status vhd_max_chain vhd_write; do
  grep -q "^$key=" <<<"$dump"; ok $? "--dump-plugin prints $key"
done
grep -q '^vhd_types=fixed,dynamic,differencing$' <<<"$dump"; ok $? "dump lists the three types"
grep -q '^thread_model=parallel$' <<<"$dump"; ok $? "thread model is parallel"

help=$("${NBDKIT[@]}" "$PLUGIN" --help)
grep -q 'size_from=current|chs|qemu' <<<"$help"; ok $? "--help documents size_from"

sum_before=$(sha256sum "$vhd")
start_nbdkit -r "$PLUGIN" "file=$vhd"
info=$(nbdinfo "$uri")
grep -q 'is_read_only: true' <<<"$info"; ok $? "with -r the export is read-only"
grep -q 'can_multi_conn: true' <<<"$info"; ok $? "multi-conn advertised"
want=$(qemu-img info --output=json -f vpc "$vhd" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
grep -q "export-size: $want\b" <<<"$info"; ok $? "file= key form works, size $want as qemu-img"

if nbdsh -u "$uri" -c 'h.pwrite(b"x" * 512, 0)' 2>"$scratch/w.err"; then
  ok 1 "with -r a write is refused"
else
  grep -q -i 'read-only\|EPERM\|Operation not permitted' "$scratch/w.err"
  ok $? "with -r a write is refused as read-only"
fi

# Concurrent readers: 4 connections, many requests in flight each.
nbdcopy --connections=4 --requests=16 --request-size=65536 "$uri" "$scratch/out.raw"
cmp -s "$scratch/out.raw" "$scratch/ref.raw"; ok $? "4-connection parallel copy is byte-exact"
stop_nbdkit
[ "$(sha256sum "$vhd")" = "$sum_before" ]; ok $? "with -r the file is not modified at all"

start_nbdkit "$PLUGIN" "$vhd"
grep -q 'is_read_only: false' <<<"$(nbdinfo "$uri")"; ok $? "without -r the export is writable"
stop_nbdkit

done_testing
