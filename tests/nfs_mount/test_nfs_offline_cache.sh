#!/bin/bash
# test_nfs_offline_cache.sh EXTRAFS
#
# The persistent cache serves what it holds while the NFS server is down:
#   1. mount over NFSv4 with -o cache=DIR, read some files (warm the cache), unmount;
#   2. stop nfs-ganesha; mount again with the same cache=DIR and -o timeout=3: the mount must
#      succeed (the catalog, and the indexes of the layers used, come from CACHE/meta), the tree
#      is browsable, the files read before are byte-identical to the store, and a file never read
#      (or anything in a layer never used) fails with EIO within
#      the timeout (bounded, never a hang); nothing was fetched (chunks_fetched 0); the cached files,
#      with every path looked up again (drop_caches), read within 2 s in total (nothing waits for
#      the dead server).
# If the offline remount itself fails (a bug), the rest is still checked on a mount made while the
# server was up and then stopped, so the cached-read and EIO paths are still exercised.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

STORE=$T/store
CACHE=$T/cache
MNT=$T/mnt
add_files() {   # into the top layer, before indexing: distinct random content (no shared chunks)
  local d=$1/overlay2/${CIDS[2]}/diff/nfsit
  random_file "$d/warm_big" $((3 * MiB + 7)) warm_big
  random_file "$d/warm_small" 5000 warm_small
  random_file "$d/cold" $((2 * MiB + 99)) cold
  random_file "$d/cold_small" 777 cold_small
}
step "building and indexing the odd store (+ top/nfsit/{warm_big,warm_small,cold,cold_small})"
nm_build_store "$STORE" add_files
TOP=overlay2/${CIDS[2]}/diff
BASE=overlay2/${CIDS[0]}/diff
WARM=("$TOP/nfsit/warm_big" "$TOP/nfsit/warm_small" "$BASE/etc/greeting" "$BASE/data/chunk_x3_plus7"
      "$BASE/links/big_a" "image/overlay2/repositories.json")
COLD=("$TOP/nfsit/cold" "$TOP/nfsit/cold_small")

step "starting nfs-ganesha"
nm_start_ganesha "$STORE"

step "mount with the server up and warm the cache"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=3" || die "cannot mount"
for f in "${WARM[@]}"; do
  cmp -s "$STORE/$f" "$MNT/$f" && pass "read $(sp "$f") (identical)" || fail "first read of $(sp "$f") differs from the store"
done
stats_json "$MNT" >"$T/stats.warm.json"
echo "  warm-up fetched $(stat_of "$T/stats.warm.json" chunks_fetched) chunks"
nm_unmount "$MNT" || die "cannot unmount"
ls "$CACHE/meta" >"$T/meta.list" 2>&1 || true
grep -qx "catalog-[0-9a-f]\{16\}" "$T/meta.list" && pass "CACHE/meta holds the catalog of this source" || fail "no CACHE/meta/catalog-<hash of source> after a mount: $(tr '\n' ' ' <"$T/meta.list")"
# Indexes are read (and kept) on a layer's first use: base and top were used, mid was not.
for c in "${CIDS[0]}" "${CIDS[2]}"; do
  grep -qx "index-$c" "$T/meta.list" && pass "CACHE/meta/index-${c:0:12}… exists" || fail "no CACHE/meta/index-$c"
done
! grep -qx "index-${CIDS[1]}" "$T/meta.list" && pass "no CACHE/meta/index-${CIDS[1]:0:12}… (a layer never used)" \
  || fail "CACHE/meta/index-${CIDS[1]} exists although the mid layer was never used"
(( $(stat_of "$T/stats.warm.json" layer_indexes_loaded) == 2 )) && pass "2 layer indexes loaded in the warm-up" \
  || fail "layer_indexes_loaded $(stat_of "$T/stats.warm.json" layer_indexes_loaded) after the warm-up, expected 2"
n=$(find "$CACHE/chunks" -type f | wc -l)
(( n > 0 )) && pass "$n chunk files in CACHE/chunks" || fail "no chunk files in CACHE/chunks after the warm-up"

step "stop nfs-ganesha"
timeout 30 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1 || fail "ganesha.sh stop failed"
! timeout 5 nfs-ls "$NFS4_URL/" >/dev/null 2>&1 && pass "the server no longer answers" || fail "the server still answers after stop"

check_offline() {  # check_offline LABEL: the cached files read identically, the cold ones give EIO
  local label=$1 f r
  [[ -d $MNT/$TOP/nfsit ]] && pass "$label: top/nfsit browsable" || fail "$label: top/nfsit not browsable"
  ls "$MNT/$BASE/bigdir" | wc -l >"$T/n" 2>/dev/null || true
  [[ $(cat "$T/n") -eq 10000 ]] && pass "$label: bigdir lists 10000 entries from the cached index" \
    || fail "$label: bigdir lists $(cat "$T/n") entries, expected 10000"
  sync; echo 3 >/proc/sys/vm/drop_caches   # the bytes must come from the daemon, not the page cache
  sleep 1.1                                 # and past the daemon's 1 s catalog refresh interval
  local t0 t1
  t0=$(date +%s.%N)
  for f in "${WARM[@]}"; do
    if timeout 30 cmp -s "$STORE/$f" "$MNT/$f"; then pass "$label: cached $(sp "$f") byte-identical"
    else fail "$label: cached $(sp "$f") differs or cannot be read: $(timeout 30 cmp "$STORE/$f" "$MNT/$f" 2>&1 | head -1)"; fi
  done
  t1=$(date +%s.%N)
  local took
  took=$(python3 -c "print('%.2f' % ($t1 - $t0))")
  # Lookups come from the in-memory index, content from the block cache: nothing may wait for
  # the dead server (timeout=3 s per backend call).
  secs_le "$took" 2 && pass "$label: the ${#WARM[@]} cached files (paths looked up again) read in $took s" \
    || fail "$label: reading the ${#WARM[@]} cached files (paths looked up again) took $took s (> 2 s): something waited for the dead server"
  # A layer the warm-up never used has no index in the cache: EIO like a never-read file.
  for f in "${COLD[@]}" "overlay2/${CIDS[1]}/diff/etc"; do
    read_errno "$MNT/$f" 20; r=$READ_RESULT
    if [[ $r == EIO ]] && secs_le "$READ_SECS" 8; then
      pass "$label: never-read $(sp "$f") -> EIO after ${READ_SECS} s"
    else
      fail "$label: never-read $(sp "$f") -> $r after ${READ_SECS} s (expected EIO within 8 s with timeout=3)"
    fi
  done
  stats_json "$MNT" >"$T/stats.off.json" || { fail "$label: extrafs stats failed"; return; }
  local cf be
  cf=$(stat_of "$T/stats.off.json" chunks_fetched); be=$(stat_of "$T/stats.off.json" backend_errors)
  [[ $cf -eq 0 ]] && pass "$label: chunks_fetched 0 (all served from the cache)" || fail "$label: chunks_fetched $cf with the server down"
  (( be > 0 )) && pass "$label: backend_errors $be (the cold reads)" || fail "$label: backend_errors 0 although cold reads failed"
}

step "remount with the same cache while the server is down (-o timeout=3)"
rc=0
timed timeout 60 "$EXTRAFS" mount "$NFS4_URL" "$MNT" -o "cache=$CACHE,cache_size=256M,timeout=3,log_level=warn" \
  >"$T/mount.out" 2>"$T/mount.err" || rc=$?
track_mount "$MNT"
if [[ $rc -eq 0 ]] && is_mounted "$MNT"; then
  pass "offline remount succeeded in ${TIME_TAKEN} s"
  check_offline "offline remount"
  nm_unmount "$MNT" || true
  OFFLINE_OK=1
else
  fail "offline remount with a warm cache: exit $rc after ${TIME_TAKEN} s, stderr: $(head -c 500 "$T/mount.err") (expected: mount succeeds from CACHE/meta)"
  OFFLINE_OK=0
fi
is_mounted "$MNT" && fail "$MNT still mounted" || true

if [[ $OFFLINE_OK -eq 0 ]]; then
  step "fallback: mount while the server is up, then stop it (cached reads and EIO still checked)"
  nm_restart_ganesha "$STORE" || die "cannot restart the server"
  nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=3" || die "cannot mount"
  timeout 30 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1 || fail "ganesha.sh stop failed"
  check_offline "server stopped after mount"
  nm_unmount "$MNT" || true
fi
finish
