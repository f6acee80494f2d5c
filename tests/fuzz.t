#!/usr/bin/env bash
# Smoke run of each libFuzzer harness (make fuzz runs them for longer):
# the generated seeds plus a bounded number of mutations must run without a
# crash, leak, hang or sanitizer report.
set -uo pipefail
. "$(dirname "$0")/lib.sh"

[ -x "$ROOT/tests/fuzz/fuzz-vhd-open" ] || skip_all "fuzz harnesses not built (needs clang)"

# smoke NAME RUNS SEEDS [libFuzzer options...]: NAME for RUNS executions
# from the seeds in SEEDS, with a private corpus.
smoke() {
  local name=$1 runs=$2 seeds=$3
  shift 3
  mkdir -p "$scratch/$name.corpus"
  "$ROOT/tests/fuzz/$name" -runs="$runs" -timeout=10 -rss_limit_mb=2048 "$@" \
    "$scratch/$name.corpus" "$seeds" >"$scratch/$name.log" 2>&1
  local rc=$?
  ok $rc "$name: $runs runs from the seeds, no crash"
  [ $rc -eq 0 ] || tail -30 "$scratch/$name.log" | sed 's/^/# /'
  grep -E '^(#[0-9]+|Done)' "$scratch/$name.log" | tail -1 | sed 's/^/# /'
}

/usr/bin/python3 "$ROOT/tests/fuzz/make-seeds.py" "$scratch/seeds" >/dev/null
smoke fuzz-vhd-open 30000 "$scratch/seeds" -max_len=65536
/usr/bin/python3 "$ROOT/tests/fuzz/make-write-seeds.py" "$scratch/seeds" "$scratch/wseeds"
smoke fuzz-vhd-write 20000 "$scratch/wseeds" -max_len=65536
smoke fuzz-jsonline 200000 "$ROOT/tests/fuzz/jsonline-seeds" -max_len=4096 \
  -dict="$ROOT/tests/fuzz/jsonline.dict"
/usr/bin/python3 "$ROOT/tests/fuzz/make-xmstream-seeds.py" "$scratch/xseeds" >/dev/null
smoke fuzz-xmstream 100000 "$scratch/xseeds" -max_len=65536
done_testing
