#!/usr/bin/env bash
# make deb builds sxm_VERSION_amd64.deb with Debian's tooling; lintian finds
# no errors; what the package holds, extracted with dpkg-deb -x (not
# installed: the tests must not change the machine's nbdkit), runs from
# there: the plugin and the filter load in nbdkit, the tools run, the
# plugin serves a VHD the packaged sxm-vhd made, sxm finds its hotplug script.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

[ -z "${SXM_ASAN:-}" ] ||
  skip_all "the package is built without the sanitizer; nothing to add under check-asan"
requires dpkg-buildpackage lintian git
git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
  skip_all "not a git checkout (make deb builds from the files git knows)"

version=$(sed -n 's/^VERSION *:= *//p' "$ROOT/Makefile")
deb="$ROOT/sxm_${version}_amd64.deb"
rm -f "$deb"
make -s -C "$ROOT" deb >"$scratch/deb.log" 2>&1
ok $? "make deb"
[ -s "$deb" ]; ok $? "sxm_${version}_amd64.deb built"
[ -s "$deb" ] || { sed 's/^/# /' "$scratch/deb.log" | tail -n 30; done_testing; exit; }

lintian "$deb" >"$scratch/lintian.log" 2>&1
! grep -q '^E: ' "$scratch/lintian.log"; ok $? "lintian: no errors"
sed 's/^/# lintian: /' "$scratch/lintian.log" | grep -v 'root privileges'

dpkg-deb -f "$deb" Depends | grep -q 'libnbd0.*nbdkit.*jq'
ok $? "Depends: computed shared libraries plus the tools sxm runs ($(dpkg-deb -f "$deb" Depends | cut -c1-60)...)"

x="$scratch/x"
dpkg-deb -x "$deb" "$x"; ok $? "dpkg-deb -x"
plugindir=$(pkg-config --variable=plugindir nbdkit)
filterdir=$(pkg-config --variable=filterdir nbdkit)
pl="$x$plugindir/nbdkit-vhd-plugin.so" fl="$x$filterdir/nbdkit-mirror-filter.so"
[ -f "$pl" ] && [ -f "$fl" ]; ok $? "plugin and filter in nbdkit's own directories ($plugindir, $filterdir)"
"${NBDKIT[@]}" "$pl" --dump-plugin | grep -q "^vhd_version=$version$"
ok $? "the packaged plugin loads (vhd_version=$version)"
"${NBDKIT[@]}" --filter="$fl" null --dump-plugin >/dev/null 2>&1
ok $? "the packaged filter loads"
for t in sxm-copy sxm-vhd sxm-mirror xenmem; do
  "$x/usr/bin/$t" --version 2>&1 | grep -q "$version"; ok $? "packaged $t runs"
done
PATH="$x/usr/bin:$PATH" "$x/usr/bin/sxm" --help | grep -q '^usage: sxm receive'
ok $? "packaged sxm runs"
[ -x "$x/usr/lib/sxm/block-sxm" ]; ok $? "block-sxm where the installed sxm looks (bin/../lib/sxm)"
for m in sxm sxm-copy sxm-vhd sxm-mirror xenmem nbdkit-vhd-plugin nbdkit-mirror-filter; do
  [ -s "$x/usr/share/man/man1/$m.1.gz" ] || { ok 1 "man page $m.1.gz"; continue; }
done
ok 0 "man pages packaged"

"$x/usr/bin/sxm-vhd" create "$scratch/d.vhd" 5M >/dev/null
"${NBDKIT[@]}" -U - "$pl" "$scratch/d.vhd" --run 'nbdinfo --size "$uri"' >"$scratch/size" 2>&1
[ "$(cat "$scratch/size")" = $((5 * 1024 * 1024)) ]
ok $? "the packaged plugin serves a VHD the packaged sxm-vhd made ($(cat "$scratch/size") bytes)"
done_testing
