#!/bin/bash
# tests/bench/order_ab.sh BUILD_A BUILD_B [REPS]
#
# A/B of the lazy python start without dockerd (issue 9, `--order`): the Debian+python3 rootfs of
# run.sh (its cached tarball) as a one-layer `docker save` archive, published twice (plain, and
# with --order from a trace of one recorded start), served by a private nfs-ganesha (NFSv4,
# 127.0.0.1). Each repetition, for each build and each store: a fresh mount with an empty cache,
# a read-only overlayfs of the layer, page cache dropped, then `chroot OVERLAY python3 -c
# 'print(6*7)'` timed; plus the same chroot start from the extracted rootfs on local disk, page
# cache dropped. Prints medians, and each build's backend reads and prefetched chunks (from
# `extrafs stats`). The docker-run start of run.sh costs ~0.4 s of dockerd/runc on its own; this
# shows the part the store and the daemon decide; the plain store's rows are issue 21's python
# start without docker, empty cache. Needs root, /dev/fuse, overlayfs, nfs-ganesha.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BUILD_A BUILD_B [REPS]" >&2; exit 2; }
A=$(realpath "$1")/tools/extrafs B=$(realpath "$2")/tools/extrafs REPS=${3:-7}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/ab_lib.sh"
ROOTFS_TAR=${EXTRAFS_BENCH_CACHE:-/var/cache/extrafs-bench}/bookworm-python3.tar
[ -s "$ROOTFS_TAR" ] || { echo "$ROOTFS_TAR missing: run tests/bench/run.sh once" >&2; exit 1; }
T=$(mktemp -d /tmp/xfo.XXXXXX)
GSTATE=$T/ganesha MOUNTS=()
cleanup() {
  set +e
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do mountpoint -q "${MOUNTS[$i]}" && umount "${MOUNTS[$i]}"; done
  [ -d "$GSTATE" ] && timeout 60 "$HERE/../nfs/ganesha.sh" stop "$GSTATE" >/dev/null 2>&1
  rm -rf "$T"
}
trap cleanup EXIT
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
mkdir -p "$T/src" "$T/res" "$T/empty" "$GSTATE"
tar --numeric-owner -C "$T/src" -xf "$ROOTFS_TAR"
python3 "$HERE/../integration/make_save_archive.py" "$T/img.tar" bench:1 "$T/src"
"$B" publish --archive "$T/img.tar" --to "$T/stores/plain" >/dev/null
start_ganesha 20540 20580

# start BIN STORE NAME [EXTRA_OPTS]: fresh mount + overlay, cold chroot start; prints seconds.
start() {
  local bin=$1 store=$2 name=$3 extra=${4:-} m=$T/m/$3 o=$T/o/$3 cid t0 t1 out
  rm -rf "$T/c/$name"; mkdir -p "$m" "$o"
  "$bin" mount "$URL/$store" "$m" -o "cache=$T/c/$name,log_level=warn${extra:+,$extra}"; MOUNTS+=("$m")
  cid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["cache_id"])' "$T/stores/$store/extrafs/catalog")
  mount -t overlay overlay -o "ro,lowerdir=$m/overlay2/$cid/diff:$T/empty" "$o"; MOUNTS+=("$o")
  drop
  t0=$EPOCHREALTIME
  out=$(chroot "$o" /usr/bin/python3 -c 'print(6*7)')
  t1=$EPOCHREALTIME
  [ "$out" = 42 ] || { echo "chroot start printed '$out'" >&2; exit 1; }
  "$bin" stats "$m" --json >"$T/stats.json"
  umount "$o"; "$bin" unmount "$m"
  python3 -c "import sys; print('%.4f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$t1"
}
mkdir -p "$T/trace"
start "$B" plain rec "record=$T/trace" >/dev/null
"$B" publish --archive "$T/img.tar" --to "$T/stores/ordered" --order "$(ls "$T"/trace/trace-*.txt)"
for i in $(seq 1 "$REPS"); do
  for store in plain ordered; do
    for ab in A B; do
      bin=$A; [ $ab = B ] && bin=$B
      start "$bin" "$store" "$ab-$store" >>"$T/res/$ab-$store"
      python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['fetch_seconds']['count'], j['prefetches'], j['bytes_fetched'])" \
        "$T/stats.json" >>"$T/res/$ab-$store.stats"
    done
  done
  drop
  t0=$EPOCHREALTIME; chroot "$T/src" /usr/bin/python3 -c 'print(6*7)' >/dev/null; t1=$EPOCHREALTIME
  python3 -c "import sys; print('%.4f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$t1" >>"$T/res/ext4"
done
python3 - "$T/res" "$1" "$2" <<'PY'
import os, statistics, sys
res, a, b = sys.argv[1:4]
def vals(name): return [float(l) for l in open(os.path.join(res, name))]
def med(name): return statistics.median(vals(name))
def runs(name): return " ".join("%.3f" % v for v in vals(name))
ext4 = med("ext4")
print(f"A = {a}, B = {b}; medians of {len(vals('ext4'))}; ext4 (page cache dropped) {ext4:.4f} s (all: {runs('ext4')})")
print("| build | store | chroot start (s) | vs ext4 | all runs (s) | backend reads | prefetched chunks | bytes fetched |")
print("|---|---|---|---|---|---|---|---|")
for ab in "AB":
    for store in ("plain", "ordered"):
        t = med(f"{ab}-{store}")
        st = [list(map(int, l.split())) for l in open(os.path.join(res, f"{ab}-{store}.stats"))]
        reads, pf, fetched = (statistics.median(s[i] for s in st) for i in range(3))
        print(f"| {ab} | {store} | {t:.4f} | {t / ext4:.2f} | {runs(f'{ab}-{store}')} | {reads:.0f} | {pf:.0f} | "
              f"{fetched / 1048576:.2f} MiB |")
PY
