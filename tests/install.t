#!/usr/bin/env bash
# make install honours DESTDIR/PREFIX and puts the plugin in nbdkit's plugin
# directory; the installed plugin loads; man pages are generated.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

dest="$scratch/root"
make -s -C "$ROOT" install DESTDIR="$dest" PREFIX=/opt/sxm >"$scratch/install.log" 2>&1
ok $? "make install DESTDIR=... PREFIX=/opt/sxm"
plugindir=$(pkg-config --variable=plugindir nbdkit)
[ -x "$dest$plugindir/nbdkit-vhd-plugin.so" ]; ok $? "plugin installed in nbdkit's plugindir ($plugindir)"
for t in sxm-vhd sxm-copy sxm-mirror xenmem sxm; do
  [ -x "$dest/opt/sxm/bin/$t" ]; ok $? "$t installed under PREFIX/bin"
done
"$dest/opt/sxm/bin/sxm-copy" --version | grep -q '^sxm-copy '; ok $? "installed sxm-copy runs"
"$dest/opt/sxm/bin/sxm" --help | grep -q "^usage: sxm receive"; ok $? "installed sxm runs"
"${NBDKIT[@]}" "$dest$plugindir/nbdkit-vhd-plugin.so" --dump-plugin | grep -q '^vhd_types='
ok $? "installed plugin loads in nbdkit"
for m in nbdkit-vhd-plugin nbdkit-mirror-filter sxm-vhd sxm-copy sxm-mirror xenmem sxm; do
  f="$dest/opt/sxm/share/man/man1/$m.1"
  [ -s "$f" ] && grep -q '^\.SH "\?NAME' "$f"
  ok $? "man page $m.1 installed"
done
done_testing
