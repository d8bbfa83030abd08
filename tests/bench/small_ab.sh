#!/bin/bash
# tests/bench/small_ab.sh BUILD_A BUILD_B [REPS]
#
# A/B of the small-file case of run.sh (issue 21): 2,000 files of 1-16 KiB in 20 directories
# (the same generator as run.sh's bench-small:1) as a one-layer `docker save` archive, published
# once (by B), served by a private nfs-ganesha (NFSv4, 127.0.0.1). Each repetition, for each
# build in turn: a fresh mount with an empty cache, page cache dropped, the files read in
# directory order (`find | xargs cat`, as run.sh) timed; then the mount restarted on the cache
# that read filled, page cache dropped, the same read timed (block cache); and once per
# repetition the same read of the extracted files on local disk, page cache dropped (ext4 cold).
# Prints medians with their ratio to ext4 cold and each build's backend reads and prefetched
# chunks (from `extrafs stats`) for the empty-cache read. Both builds run back to back in one
# invocation, against the same store and server: the machines are shared and noisy, and only
# ratios made so mean something. Needs root, /dev/fuse, nfs-ganesha.
#
# FAR_MS=N: the store is served instead over HTTP by tests/py/badhttp.py, every request answered
# N milliseconds late: a server a network away, where what saves requests shows (on loopback a
# round trip to ganesha costs ~0.1 ms). Measured here, a request of a kept-alive connection to
# badhttp.py takes ~45 ms even with N = 0 (its header and body go out in separate writes: Nagle
# and delayed ACKs), so this is a server ~45 ms + N ms away, like a distant object store.
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BUILD_A BUILD_B [REPS]" >&2; exit 2; }
A=$(realpath "$1")/tools/extrafs B=$(realpath "$2")/tools/extrafs REPS=${3:-5}
for bin in "$A" "$B"; do [ -x "$bin" ] || { echo "$bin not found" >&2; exit 2; }; done
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/ab_lib.sh"
T=$(mktemp -d /tmp/xfs-ab.XXXXXX)
GSTATE=$T/ganesha MOUNTS=()
HTTP_PID=
cleanup() {
  set +e
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do mountpoint -q "${MOUNTS[$i]}" && umount "${MOUNTS[$i]}"; done
  [ -d "$GSTATE" ] && timeout 60 "$HERE/../nfs/ganesha.sh" stop "$GSTATE" >/dev/null 2>&1
  [ -n "$HTTP_PID" ] && kill "$HTTP_PID" && wait "$HTTP_PID" 2>/dev/null
  rm -rf "$T"
}
trap cleanup EXIT
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
readall() { find "$1" -type f -print0 | xargs -0 -r cat; }
# timed_read DIR: reads DIR's files, prints seconds; fails if fewer bytes than expected came.
timed_read() {
  local t0 t1 n
  t0=$EPOCHREALTIME
  n=$(readall "$1" | wc -c)
  t1=$EPOCHREALTIME
  [ "$n" = "$BYTES" ] || { echo "read $n bytes of $1, expected $BYTES" >&2; exit 1; }
  python3 -c "import sys; print('%.4f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$t1"
}
mkdir -p "$T/src" "$T/res" "$T/stores"
python3 "$HERE/small_tree.py" "$T/src/small"
BYTES=$(readall "$T/src/small" | wc -c)
python3 "$HERE/../integration/make_save_archive.py" "$T/img.tar" bench-small:1 "$T/src"
"$B" publish --archive "$T/img.tar" --to "$T/stores/plain" >/dev/null
CID=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["cache_id"])' "$T/stores/plain/extrafs/catalog")
if [ -n "${FAR_MS:-}" ]; then
  echo "good,delay=$FAR_MS" >"$T/http-mode"
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 "$HERE/../py/badhttp.py" "$PORT" "$T/stores" "$T/http-mode" /dev/null >"$T/http.out" 2>&1 &
  HTTP_PID=$!
  for _ in $(seq 1 50); do grep -q listening "$T/http.out" && break; sleep 0.1; done
  grep -q listening "$T/http.out" || { cat "$T/http.out" >&2; exit 1; }
  URL=http://127.0.0.1:$PORT
else
  mkdir -p "$GSTATE"
  start_ganesha 20600 20640
fi

# run BIN NAME: the empty-cache read and the block-cache read of one build; appends the times
# to res/NAME-cold and res/NAME-block and the empty-cache read's counters to res/NAME.stats.
run() {
  local bin=$1 name=$2 m=$T/m/$2
  rm -rf "$T/c/$name"; mkdir -p "$m"
  timeout 60 "$bin" mount "$URL/plain" "$m" -o "cache=$T/c/$name,log_level=warn"; MOUNTS+=("$m")
  drop
  timed_read "$m/overlay2/$CID/diff/small" >>"$T/res/$name-cold"
  timeout 30 "$bin" stats "$m" --json >"$T/stats.json"
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(j['fetch_seconds']['count'], j['prefetches'], j['chunks_fetched'])" \
    "$T/stats.json" >>"$T/res/$name.stats"
  timeout 60 "$bin" unmount "$m"
  timeout 60 "$bin" mount "$URL/plain" "$m" -o "cache=$T/c/$name,log_level=warn"
  drop
  timed_read "$m/overlay2/$CID/diff/small" >>"$T/res/$name-block"
  timeout 60 "$bin" unmount "$m"
}
for i in $(seq 1 "$REPS"); do
  for ab in A B; do
    bin=$A; [ $ab = B ] && bin=$B
    run "$bin" "$ab"
  done
  drop
  timed_read "$T/src/small" >>"$T/res/ext4"
done
python3 - "$T/res" "$1" "$2" <<'PY'
import os, statistics, sys
res, a, b = sys.argv[1:4]
def vals(name): return [float(l) for l in open(os.path.join(res, name))]
def med(name): return statistics.median(vals(name))
ext4 = med("ext4")
far = os.environ.get("FAR_MS")
print(f"store served by {'badhttp.py, every request ' + far + ' ms late' if far else 'nfs-ganesha (NFSv4)'}")
print(f"A = {a}, B = {b}; medians of {len(vals('ext4'))}; ext4 cold (page cache dropped) {ext4:.4f} s "
      f"(all: {' '.join('%.3f' % v for v in vals('ext4'))})")
print("| build | case | time (s) | vs ext4 cold | all runs (s) | backend reads | prefetched chunks | chunks fetched |")
print("|---|---|---|---|---|---|---|---|")
for ab in "AB":
    st = [list(map(int, l.split())) for l in open(os.path.join(res, f"{ab}.stats"))]
    reads, pf, fetched = (statistics.median(s[i] for s in st) for i in range(3))
    for case, label in (("cold", "empty cache"), ("block", "block cache, page cache dropped")):
        t = med(f"{ab}-{case}")
        runs = " ".join("%.3f" % v for v in vals(f"{ab}-{case}"))
        extra = f"{reads:.0f} | {pf:.0f} | {fetched:.0f}" if case == "cold" else "- | - | -"
        print(f"| {ab} | {label} | {t:.4f} | {t / ext4:.2f} | {runs} | {extra} |")
PY
