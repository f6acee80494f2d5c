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

# Under make check-asan the plugin is instrumented and nbdkit is not.
nbdkit_env() {
  if [ -n "${SXM_ASAN:-}" ]; then
    echo "LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0:abort_on_error=1"
  fi
}

# start_nbdkit PLUGIN ARGS...: sets $uri.
start_nbdkit() {
  local sock="$scratch/nbd.sock"
  rm -f "$sock"
  env $(nbdkit_env) nbdkit -f -U "$sock" --exit-with-parent "$@" \
    >"$scratch/nbdkit.log" 2>&1 &
  nbdkit_pid=$!
  for _ in $(seq 1500); do
    [ -S "$sock" ] && break
    kill -0 "$nbdkit_pid" 2>/dev/null || { cat "$scratch/nbdkit.log" >&2; return 1; }
    sleep 0.02
  done
  uri="nbd+unix:///?socket=$sock"
}

stop_nbdkit() {
  kill "$nbdkit_pid"; wait "$nbdkit_pid" 2>/dev/null || true
  nbdkit_pid=
  if grep -q 'AddressSanitizer\|runtime error:' "$scratch/nbdkit.log"; then
    ok 1 "sanitizer report from nbdkit"; cat "$scratch/nbdkit.log" | sed 's/^/# /'
  fi
}
