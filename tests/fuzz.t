#!/usr/bin/env bash
# Smoke run of each libFuzzer harness (make fuzz runs them for longer):
# the generated seeds plus a bounded number of mutations must run without a
# crash, leak, hang or sanitizer report.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

f="$ROOT/tests/fuzz/fuzz-vhd-open"
if [ ! -x "$f" ]; then
  echo "1..0 # SKIP $f not built (needs clang)"; exit 0
fi
/usr/bin/python3 "$ROOT/tests/fuzz/make-seeds.py" "$scratch/seeds" >/dev/null
mkdir -p "$scratch/corpus"
"$f" -runs=30000 -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  "$scratch/corpus" "$scratch/seeds" >"$scratch/log" 2>&1
rc=$?
ok $rc "fuzz-vhd-open: 30000 runs from the seeds, no crash"
[ $rc -eq 0 ] || tail -30 "$scratch/log" | sed 's/^/# /'
grep -E '^(#[0-9]+|Done)' "$scratch/log" | tail -1 | sed 's/^/# /'

f="$ROOT/tests/fuzz/fuzz-jsonline"
mkdir -p "$scratch/jcorpus"
"$f" -runs=200000 -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
  -dict="$ROOT/tests/fuzz/jsonline.dict" \
  "$scratch/jcorpus" "$ROOT/tests/fuzz/jsonline-seeds" >"$scratch/jlog" 2>&1
rc=$?
ok $rc "fuzz-jsonline: 200000 runs from the seeds, no crash"
[ $rc -eq 0 ] || tail -30 "$scratch/jlog" | sed 's/^/# /'
grep -E '^(#[0-9]+|Done)' "$scratch/jlog" | tail -1 | sed 's/^/# /'

f="$ROOT/tests/fuzz/fuzz-xmstream"
/usr/bin/python3 "$ROOT/tests/fuzz/make-xmstream-seeds.py" "$scratch/xseeds" >/dev/null
mkdir -p "$scratch/xcorpus"
"$f" -runs=100000 -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
  "$scratch/xcorpus" "$scratch/xseeds" >"$scratch/xlog" 2>&1
rc=$?
ok $rc "fuzz-xmstream: 100000 runs from the seeds, no crash"
[ $rc -eq 0 ] || tail -30 "$scratch/xlog" | sed 's/^/# /'
grep -E '^(#[0-9]+|Done)' "$scratch/xlog" | tail -1 | sed 's/^/# /'
done_testing
