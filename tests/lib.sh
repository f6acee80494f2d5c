# Shared helpers for sxm's shell tests: TAP output, a scratch directory,
# and nbdkit on a unix socket.  Sourced, not run.
# Debian's python3 has the libnbd bindings that nbdsh needs; a pyenv
# python3 earlier in PATH would not.
export PATH="/usr/bin:$PATH"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ROOT
PLUGIN="$ROOT/nbdkit-plugin/nbdkit-vhd-plugin.so"
scratch=$(mktemp -d "${TMPDIR:-/var/tmp}/$(basename "$0").XXXXXX")
_tap_n=0
_tap_failed=0
nbdkit_pid=

cleanup() {
  [ -n "$nbdkit_pid" ] && kill "$nbdkit_pid" 2>/dev/null && wait "$nbdkit_pid" 2>/dev/null
  rm -rf "$scratch"
}
trap cleanup EXIT

# ok STATUS DESCRIPTION: STATUS 0 is a pass.
ok() {
  _tap_n=$((_tap_n + 1))
  if [ "$1" -eq 0 ]; then
    echo "ok $_tap_n - $2"
  else
    _tap_failed=$((_tap_failed + 1))
    echo "not ok $_tap_n - $2"
    echo "# failed: $_tap_n - $2" >&2     # prove shows stderr in make check's log
  fi
}

done_testing() {
  echo "1..$_tap_n"
  [ "$_tap_failed" -eq 0 ]
}

# skip_all WHY...: the whole file is not run here: TAP's "1..0 # SKIP WHY"
# (sxmtest.py's tap.skip_all).  Before any test.
skip_all() {
  echo "1..0 # SKIP $*"
  exit 0
}

# requires CMD...: skip the whole file unless every CMD is installed
# (sxmtest.py's tap.requires skips single cases the same way).
requires() {
  local c
  for c in "$@"; do
    command -v "$c" >/dev/null || skip_all "$c not installed (scripts/install-deps)"
  done
}

# Every nbdkit a shell test runs is "${NBDKIT[@]}" ARGS...: under make
# check-asan the plugin is instrumented and nbdkit is not, so nbdkit runs
# with the sanitizer runtime preloaded (sxmtest.py's nbdkit_env).  A
# command, not a function, so that $! of one started with & is nbdkit.
NBDKIT=(nbdkit)
if [ -n "${SXM_ASAN:-}" ]; then
  NBDKIT=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so)"
          ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 nbdkit)
fi

# start_nbdkit [OPTIONS] PLUGIN ARGS...: nbdkit on a unix socket in the
# background, returning once it accepts connections; sets $uri and
# $nbdkit_pid.  Ready means its pidfile (-P) is written: nbdkit writes it
# only once it listens, while the socket file exists a moment before
# (sxmtest.py's nbdkit_ready).
start_nbdkit() {
  local sock="$scratch/nbd.sock" pidfile="$scratch/nbd.pid"
  rm -f "$sock" "$pidfile"
  "${NBDKIT[@]}" -f -U "$sock" -P "$pidfile" --exit-with-parent "$@" \
    >"$scratch/nbdkit.log" 2>&1 &
  nbdkit_pid=$!
  for _ in $(seq 1500); do
    [ -s "$pidfile" ] && break
    kill -0 "$nbdkit_pid" 2>/dev/null || { cat "$scratch/nbdkit.log" >&2; return 1; }
    sleep 0.02
  done
  [ -s "$pidfile" ] || { echo "nbdkit did not start in 30 s" >&2; return 1; }
  uri="nbd+unix:///?socket=$sock"
}

stop_nbdkit() {
  kill "$nbdkit_pid"; wait "$nbdkit_pid" 2>/dev/null || true
  nbdkit_pid=
  if grep -q 'AddressSanitizer\|runtime error:' "$scratch/nbdkit.log"; then
    ok 1 "sanitizer report from nbdkit"; cat "$scratch/nbdkit.log" | sed 's/^/# /'
  fi
}
