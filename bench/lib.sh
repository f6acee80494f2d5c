# Shared by the bench/*.sh scripts: sourced, not run.
export PATH="/usr/bin:$PATH"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLUGIN="$ROOT/nbdkit-plugin/nbdkit-vhd-plugin.so"

wait_sock() { for _ in $(seq 1000); do [ -S "$1" ] && return 0; sleep 0.01; done; echo "no socket $1" >&2; return 1; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# sample_vhd OUT.vhd RAW_SCRATCH: the benchmark source of record, an 8 GiB
# dynamic VHD (qemu-img made) with 1 GiB allocated as 64 x 16 MiB runs of
# random data spread evenly.
sample_vhd() {
  local out=$1 raw=$2
  truncate -s 8G "$raw"
  for i in $(seq 0 63); do
    dd if=/dev/urandom of="$raw" bs=16M count=1 seek=$((i * 8)) conv=notrunc status=none
  done
  qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$raw" "$out"
  rm -f "$raw"
}
