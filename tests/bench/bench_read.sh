#!/bin/bash
# bench_read.sh EXTRAFS [SIZE_MIB]: read-path benchmarks, each a ratio against a reference run
# in the same invocation (the machines are shared and noisy; absolute numbers drift):
#   1. cold sequential read of one file through extrafs over NFSv4  vs  nfs-cat of that file
#   2. warm read (block cache, fresh mount)                          vs  native ext4 read (page cache dropped)
#   3. hot read (kernel page cache of the mount)                     vs  native ext4 read (page cache hot)
#   4. metadata: stat of every entry of a 10,000-entry directory     vs  the same on ext4
# Prints a Markdown table (for BENCHMARKS.md). Needs root, FUSE, nfs-ganesha. Median of 3 runs.
set -euo pipefail
EXTRAFS=$(realpath "$1")
SIZE_MIB=${2:-512}
HERE=$(cd "$(dirname "$0")" && pwd)
GANESHA="$HERE/../nfs/ganesha.sh"
T=$(mktemp -d /tmp/extrafs-bench.XXXXXX)
MNT=$T/mnt
cleanup() {
  "$EXTRAFS" unmount "$MNT" 2>/dev/null || true
  "$GANESHA" stop "$T/ganesha" >/dev/null 2>&1 || true
  rm -rf "$T"
}
trap cleanup EXIT

now() { date +%s.%N; }
# time3 SETUP CMD...: median wall time of 3 runs of CMD, each after SETUP (not timed)
time3() {
  local setup=$1 ts=() t0
  shift
  for _ in 1 2 3; do
    $setup
    t0=$(now); "$@" >/dev/null; ts+=("$(python3 -c "print($(now) - $t0)")")
  done
  python3 -c "import statistics,sys; print('%.4f' % statistics.median(map(float, sys.argv[1:])))" "${ts[@]}"
}
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

id=$(printf 'bench' | sha256sum | cut -c1-64)
D=$T/store/overlay2/$id/diff
mkdir -p "$D/many" "$T/store/overlay2/l" "$MNT"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$D/big"
for i in $(seq 1 10000); do : >"$D/many/f$i"; done
printf 'BENCHBENCHBENCHBENCHBENCH0' >"$T/store/overlay2/$id/link"
"$EXTRAFS" index "$T/store" >/dev/null
mkdir -p "$T/ganesha"
port=
for _ in 1 2 3 4 5; do
  p=$((30000 + RANDOM % 20000))
  if GANESHA_PROTOCOLS=4 "$GANESHA" start "$T/ganesha" "$T/store" "$p" >"$T/urls" 2>"$T/g.err"; then port=$p; break; fi
done
[ -n "$port" ] || { echo "bench: cannot start nfs-ganesha: $(tail -3 "$T/g.err")" >&2; exit 1; }
url=$(sed -n 's/^NFS4_URL=//p' "$T/urls")

remount() {  # remount MODE: fresh kernel caches; MODE cold also empties the block cache
  "$EXTRAFS" unmount "$MNT" 2>/dev/null || true
  [ "$1" = cold ] && rm -rf "$T/cache"
  drop
  "$EXTRAFS" mount "$url" "$MNT" -o "cache=$T/cache,cache_size=4G"
}
fresh_cold() { remount cold; }
fresh_warm() { remount warm; }
none() { :; }
read_mnt() { cat "$MNT/overlay2/$id/diff/big"; }
read_native() { cat "$D/big"; }
# nfs-cat takes the port as a URL option, not as host:port
nfs_cat() { nfs-cat "nfs://127.0.0.1/export/overlay2/$id/diff/big?version=4&nfsport=$port"; }
stat_many() { find "$1" -maxdepth 1 -printf '%m %s %u\n'; }

r_cold=$(time3 fresh_cold read_mnt); r_nfscat=$(time3 none nfs_cat)
r_warm=$(time3 fresh_warm read_mnt); r_native_cold=$(time3 drop read_native)
read_mnt >/dev/null; read_native >/dev/null
r_hot=$(time3 none read_mnt); r_native_hot=$(time3 none read_native)
r_meta=$(time3 fresh_warm stat_many "$MNT/overlay2/$id/diff/many"); r_meta_native=$(time3 drop stat_many "$D/many")

ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }
rate() { python3 -c "print('%.0f' % ($SIZE_MIB / $1))"; }
echo "| case | extrafs | reference | ratio (extrafs / reference) |"
echo "|---|---|---|---|"
echo "| cold sequential read, ${SIZE_MIB} MiB over NFSv4 | ${r_cold} s ($(rate "$r_cold") MiB/s) | nfs-cat ${r_nfscat} s ($(rate "$r_nfscat") MiB/s) | $(ratio "$r_cold" "$r_nfscat") |"
echo "| warm read from the block cache, fresh mount | ${r_warm} s ($(rate "$r_warm") MiB/s) | ext4, page cache dropped ${r_native_cold} s | $(ratio "$r_warm" "$r_native_cold") |"
echo "| hot read (kernel page cache) | ${r_hot} s ($(rate "$r_hot") MiB/s) | ext4, hot ${r_native_hot} s | $(ratio "$r_hot" "$r_native_hot") |"
echo "| stat 10,000 entries, fresh mount | ${r_meta} s | ext4, page cache dropped ${r_meta_native} s | $(ratio "$r_meta" "$r_meta_native") |"
