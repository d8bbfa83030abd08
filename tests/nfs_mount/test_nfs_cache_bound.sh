#!/bin/bash
# test_nfs_cache_bound.sh EXTRAFS
#
# A small cache holds its bound: mount over NFSv4 with -o cache_size=8M and read 40 MiB of distinct
# random data (5 files of 8 MiB). A sampler scans CACHE every ~20 ms while the reads run: the sum of
# the chunk files' sizes in CACHE/chunks, and that plus CACHE/tmp, never exceed
# 8 MiB + one chunk file (1 MiB + 32 bytes); nor at the end, nor `du -sb CACHE/chunks`, nor the
# daemon's cache_bytes. Every file read is byte-identical to the store, also when read a second
# time after the page cache is dropped (the chunks were evicted: they are fetched again).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

STORE=$T/store
CACHE=$T/cache
MNT=$T/mnt
CAP=$((8 * MiB))
BOUND=$((CAP + CHUNK_FILE_SIZE))
NFILES=5
add_files() {
  local i
  for i in $(seq 1 $NFILES); do random_file "$1/overlay2/${CIDS[2]}/diff/nfsit/bulk$i" $((8 * MiB)) "bulk$i"; done
}
step "building and indexing the odd store (+ top/nfsit/bulk1..$NFILES, 8 MiB each)"
nm_build_store "$STORE" add_files
D=overlay2/${CIDS[2]}/diff/nfsit

step "starting nfs-ganesha"
nm_start_ganesha "$STORE"

step "mount with -o cache_size=8M"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=8M,timeout=10" || die "cannot mount"

DAEMON=$(daemon_pids "$MNT" | head -1)
[[ -n $DAEMON ]] || die "cannot find the daemon serving $MNT"

# The sampler: until STOP exists (at most 180 s), every ~20 ms freezes the daemon (SIGSTOP, and
# waits until every thread is stopped, so the cache directory is an exact snapshot, not a walk
# racing evictions and renames), sums the sizes of CACHE/chunks/*/* and CACHE/tmp/*, and lets the
# daemon go on (SIGCONT, always). Writes "samples max_chunks max_chunks_plus_tmp max_files
# max_raw" to OUT at the end, where max_raw is the largest sum of (size - 32 header bytes).
python3 - "$CACHE" "$T/sampler.stop" "$T/sampler.out" "$DAEMON" <<'PY' &
import glob, os, signal, sys, time
cache, stop, out, pid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def files(d):
    r = []
    try:
        for dp, dns, fns in os.walk(d):
            for n in fns:
                try:
                    r.append(os.lstat(os.path.join(dp, n)).st_size)
                except FileNotFoundError:
                    pass
    except FileNotFoundError:
        pass
    return r
def all_stopped():
    for t in glob.glob("/proc/%d/task/*/stat" % pid):
        try:
            st = open(t).read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if st not in ("T", "t"):
            return False
    return True
n = m1 = m2 = mf = mraw = 0
end = time.monotonic() + 180
while not os.path.exists(stop) and time.monotonic() < end:
    try:
        os.kill(pid, signal.SIGSTOP)
        for _ in range(500):
            if all_stopped():
                break
            time.sleep(0.001)
        c = files(os.path.join(cache, "chunks"))
        t = files(os.path.join(cache, "tmp"))
    finally:
        os.kill(pid, signal.SIGCONT)
    n += 1
    m1 = max(m1, sum(c))
    m2 = max(m2, sum(c) + sum(t))
    mf = max(mf, len(c) + len(t))
    mraw = max(mraw, sum(max(0, x - 32) for x in c + t))
    time.sleep(0.02)
open(out, "w").write("%d %d %d %d %d\n" % (n, m1, m2, mf, mraw))
PY
SAMPLER=$!
track_pid "$SAMPLER"

step "read 2 x 40 MiB through the mount while sampling the cache size"
max_sync=0
for round in 1 2; do
  for i in $(seq 1 $NFILES); do
    if cmp -s "$STORE/$D/bulk$i" "$MNT/$D/bulk$i"; then pass "round $round: bulk$i identical"
    else fail "round $round: bulk$i differs from the store"; fi
    s=$(sum_chunk_bytes "$CACHE")
    (( s > max_sync )) && max_sync=$s
  done
  sync; echo 3 >/proc/sys/vm/drop_caches   # round 2 goes to the daemon again
done
touch "$T/sampler.stop"
wait_until 10 pid_gone "$SAMPLER" || fail "sampler did not stop"
read -r samples max_c max_ct max_files max_raw <"$T/sampler.out" || die "no sampler output"
echo "  $samples samples; max CACHE/chunks $max_c bytes, max chunks+tmp $max_ct bytes ($max_files files, $max_raw bytes without headers), bound $BOUND"
(( samples >= 10 )) && pass "$samples samples taken while reading" || fail "only $samples samples taken"
(( max_c <= BOUND )) && pass "CACHE/chunks never above the bound (max $max_c <= $BOUND)" \
  || fail "CACHE/chunks reached $max_c bytes > 8 MiB + one chunk file ($BOUND)"
(( max_ct <= BOUND )) && pass "CACHE/chunks + CACHE/tmp never above the bound (max $max_ct)" \
  || fail "CACHE/chunks + tmp reached $max_ct bytes > $BOUND"
(( max_raw <= CAP )) && pass "chunk data in chunks + tmp never above cache_size (max $max_raw <= $CAP, as block_cache.cc promises)" \
  || fail "chunk data in CACHE/chunks + CACHE/tmp reached $max_raw bytes > cache_size $CAP (block_cache.cc: 'the sum of chunk files plus temporaries being written never exceeds capacity (not counting the headers)')"
(( max_sync <= BOUND )) && pass "after each file: max $max_sync <= $BOUND" || fail "after a file: $max_sync > $BOUND"
(( max_c >= 6 * MiB )) && pass "the cache was actually filled (max $max_c >= 6 MiB)" \
  || fail "the cache never held 6 MiB (max $max_c): was anything cached?"

step "at the end"
end=$(sum_chunk_bytes "$CACHE")
du_b=$(du -sb "$CACHE/chunks" | cut -f1)
nfiles=$(find "$CACHE/chunks" -type f | wc -l)
(( end <= BOUND )) && pass "sum of chunk files $end <= $BOUND ($nfiles files)" || fail "sum of chunk files $end > $BOUND ($nfiles files)"
(( du_b <= BOUND + 256 * 1024 )) && pass "du -sb CACHE/chunks $du_b (incl. directories)" || fail "du -sb CACHE/chunks $du_b > bound"
stats_json "$MNT" >"$T/s.json" || die "extrafs stats failed"
cb=$(stat_of "$T/s.json" cache_bytes); cf=$(stat_of "$T/s.json" chunks_fetched)
(( cb <= CAP + MiB )) && pass "daemon cache_bytes $cb <= 8 MiB + 1 MiB" || fail "daemon cache_bytes $cb > 8 MiB + 1 MiB"
(( cf >= NFILES * 8 )) && pass "chunks_fetched $cf >= $((NFILES * 8)) (every chunk came over NFS)" \
  || fail "chunks_fetched $cf < $((NFILES * 8)) distinct chunks read"

step "remount (fresh memory cache): the last file read is on disk, the first was evicted"
nm_unmount "$MNT" || die "cannot unmount"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=8M,timeout=10" || die "cannot remount"
(( $(sum_chunk_bytes "$CACHE") <= BOUND )) && pass "cache still within the bound after the remount" || fail "cache above the bound after the remount"
cmp -s "$STORE/$D/bulk$NFILES" "$MNT/$D/bulk$NFILES" && pass "bulk$NFILES identical" || fail "bulk$NFILES differs"
stats_json "$MNT" >"$T/r1.json" || die "extrafs stats failed"
c1=$(stat_of "$T/r1.json" chunks_fetched)
(( c1 <= 1 )) && pass "bulk$NFILES (the most recent 8 MiB) came from the disk cache ($c1 chunks fetched)" \
  || fail "bulk$NFILES needed $c1 chunks fetched: the most recently used chunks were not kept"
cmp -s "$STORE/$D/bulk1" "$MNT/$D/bulk1" && pass "bulk1 identical" || fail "bulk1 differs"
stats_json "$MNT" >"$T/r2.json" || die "extrafs stats failed"
c2=$(( $(stat_of "$T/r2.json" chunks_fetched) - c1 ))
[[ $c2 -eq 8 ]] && pass "bulk1 (evicted) was fetched again: 8 chunks" || fail "bulk1 fetched $c2 chunks, expected 8 (it was evicted)"
(( $(sum_chunk_bytes "$CACHE") <= BOUND )) && pass "cache within the bound at the end ($(sum_chunk_bytes "$CACHE") bytes)" \
  || fail "cache above the bound at the end: $(sum_chunk_bytes "$CACHE")"
nm_unmount "$MNT" || true
finish
