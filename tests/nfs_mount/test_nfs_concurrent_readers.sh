#!/bin/bash
# test_nfs_concurrent_readers.sh EXTRAFS
#
# Concurrent misses on one chunk are merged: 32 reader processes, released at once, read the same
# never-read 24 MiB random file (24 chunks) over NFSv4 - half from the start, half starting at
# staggered chunks and wrapping around, half through the page cache and half with O_DIRECT, so
# many readers miss on the same chunk in the daemon at the same time (the server is paused for the
# first 1.5 s, so the first misses pile up).
# Every reader must get the store's bytes, and the daemon must have fetched each chunk exactly once:
# chunks_fetched == 24 and bytes_fetched == 24 MiB (nothing else is read during the test).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

STORE=$T/store
CACHE=$T/cache
MNT=$T/mnt
NREADERS=32
SIZE=$((24 * MiB))
add_files() { random_file "$1/overlay2/${CIDS[2]}/diff/nfsit/big24" $SIZE big24; }
step "building and indexing the odd store (+ top/nfsit/big24, 24 MiB random)"
nm_build_store "$STORE" add_files
F=overlay2/${CIDS[2]}/diff/nfsit/big24
WANT=$(sha256sum <"$STORE/$F" | cut -d' ' -f1)

step "starting nfs-ganesha"
nm_start_ganesha "$STORE"

step "mount (threads=16)"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=30,threads=16" || die "cannot mount"
stat "$MNT/$F" >/dev/null || die "cannot stat the file"
stats_json "$MNT" >"$T/s0.json" || die "extrafs stats failed"
cf0=$(stat_of "$T/s0.json" chunks_fetched); bf0=$(stat_of "$T/s0.json" bytes_fetched)
[[ $cf0 -eq 0 ]] && pass "nothing fetched before the readers start" || fail "chunks_fetched $cf0 before any read"

step "$NREADERS concurrent readers"
# Each reader waits for GO, reads the file in 1 MiB pieces starting at chunk START (wrapping), and
# prints the sha256 of the bytes put back in file order. Readers with DIRECT=1 open with O_DIRECT
# (the page cache would otherwise serialise most of them on its page locks, and only a few misses
# would ever reach the daemon at the same time).
cat >"$T/reader.py" <<'PY'
import hashlib, mmap, os, sys, time
path, start, go, out, direct = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5] == "1"
end = time.monotonic() + 60
while not os.path.exists(go) and time.monotonic() < end:
    time.sleep(0.001)
MiB = 1 << 20
fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
size = os.fstat(fd).st_size
n = (size + MiB - 1) // MiB
parts = [None] * n
buf = mmap.mmap(-1, MiB)   # page-aligned, as O_DIRECT needs
try:
    for k in range(n):
        i = (start + k) % n
        got = os.preadv(fd, [buf], i * MiB)
        parts[i] = bytes(buf[:got])
    data = b"".join(parts)
    res = hashlib.sha256(data).hexdigest() if len(data) == size else "short read %d" % len(data)
except OSError as e:
    res = "error %s" % e
open(out, "w").write(res + "\n")
PY
pids=()
for i in $(seq 0 $((NREADERS - 1))); do
  start=0; (( i % 2 )) && start=$(( (i * 3) % 24 ))
  direct=0; (( i % 4 >= 2 )) && direct=1
  timeout 120 python3 "$T/reader.py" "$MNT/$F" "$start" "$T/go" "$T/r.$i" "$direct" &
  pids+=($!)
done
sleep 0.5
# Hold the server (SIGSTOP) while the readers start, so their first misses pile up in the daemon,
# then let it answer.
timeout 20 "$GANESHA" pause "$GSTATE" || fail "ganesha.sh pause failed"
t0=$(date +%s.%N)
touch "$T/go"
sleep 1.5
timeout 20 "$GANESHA" resume "$GSTATE" || fail "ganesha.sh resume failed"
bad=0
for p in "${pids[@]}"; do wait "$p" || bad=$((bad + 1)); done
t1=$(date +%s.%N)
echo "  readers finished in $(python3 -c "print('%.2f' % ($t1 - $t0))") s"
[[ $bad -eq 0 ]] && pass "all $NREADERS readers exited 0" || fail "$bad readers failed or timed out"
ok=0
for i in $(seq 0 $((NREADERS - 1))); do
  got=$(cat "$T/r.$i" 2>/dev/null || echo missing)
  if [[ $got == "$WANT" ]]; then ok=$((ok + 1)); else fail "reader $i: $got (expected sha256 $WANT)"; fi
done
[[ $ok -eq $NREADERS ]] && pass "all $NREADERS readers got the store's bytes"

step "each chunk was fetched once"
stats_json "$MNT" >"$T/s1.json" || die "extrafs stats failed"
cf=$(( $(stat_of "$T/s1.json" chunks_fetched) - cf0 )); bf=$(( $(stat_of "$T/s1.json" bytes_fetched) - bf0 ))
mw=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("merged_waits", "n/a"))' "$T/s1.json")
echo "  chunks_fetched $cf, bytes_fetched $bf, cache_misses $(stat_of "$T/s1.json" cache_misses), cache_hits $(stat_of "$T/s1.json" cache_hits), merged_waits $mw, prefetches $(stat_of "$T/s1.json" prefetches)"
[[ $mw =~ ^[0-9]+$ ]] && (( mw > 0 )) && pass "merged_waits $mw: concurrent misses were merged" \
  || fail "merged_waits $mw: no reader ever waited on another's fetch although $NREADERS started together"
[[ $cf -eq 24 ]] && pass "chunks_fetched 24 = the file's chunks" || fail "chunks_fetched $cf, expected 24 (one fetch per chunk)"
[[ $bf -eq $SIZE ]] && pass "bytes_fetched $bf = the file's size" || fail "bytes_fetched $bf, expected $SIZE"
[[ $(stat_of "$T/s1.json" backend_errors) -eq 0 ]] && pass "no backend errors" || fail "backend_errors $(stat_of "$T/s1.json" backend_errors)"
cached=$(python3 - "$T/s1.json" "${CIDS[2]}" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(sum(l["bytes_cached"] for l in j["layers"] if l["cache_id"] == sys.argv[2]))
PY
)
(( cached >= SIZE )) && pass "top layer bytes_cached $cached >= 24 MiB" || fail "top layer bytes_cached $cached < $SIZE"
n=$(find "$CACHE/chunks" -type f | wc -l)
[[ $n -eq 24 ]] && pass "24 chunk files on disk" || fail "$n chunk files on disk, expected 24"
nm_unmount "$MNT" || true
finish
