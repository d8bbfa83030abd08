#!/bin/bash
# test_nfs_corrupt_chunk.sh EXTRAFS
#
# A chunk damaged on disk in CACHE/chunks is detected, never served, and fetched again:
#   warm a 4-chunk file over NFSv4, unmount; in the cache, flip one byte in the data part (after
#   the 32-byte header) of chunk 1's file and truncate chunk 2's file; remount with the same cache;
#   read the file -> the store's bytes; stats show exactly the two damaged chunks fetched again
#   (chunks_fetched 2, cache_hits >= 2 for the intact ones); both chunk files are valid again
#   (byte-identical to their state before the damage).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

STORE=$T/store
CACHE=$T/cache
MNT=$T/mnt
add_files() { random_file "$1/overlay2/${CIDS[2]}/diff/nfsit/victim" $((3 * MiB + 4321)) victim; }
step "building and indexing the odd store (+ top/nfsit/victim, 3 MiB + 4321 bytes: 4 chunks)"
nm_build_store "$STORE" add_files
F=overlay2/${CIDS[2]}/diff/nfsit/victim

step "starting nfs-ganesha"
nm_start_ganesha "$STORE"

step "warm the cache with the victim file"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=10" || die "cannot mount"
cmp -s "$STORE/$F" "$MNT/$F" && pass "first read identical" || fail "first read differs from the store"
nm_unmount "$MNT" || die "cannot unmount"

step "find the victim's chunk files in CACHE/chunks (by content)"
# Prints "INDEX PATH" for each chunk of the file whose chunk file holds exactly its bytes after a
# 32-byte header whose raw length field matches.
python3 - "$STORE/$F" "$CACHE" >"$T/chunks.map" <<'PY'
import os, struct, sys
src, cache = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
chunks = [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
for dp, dns, fns in os.walk(os.path.join(cache, "chunks")):
    for n in fns:
        p = os.path.join(dp, n)
        b = open(p, "rb").read()
        if len(b) < 32 or b[:4] != b"XFSC":
            continue
        raw_len = struct.unpack_from("<Q", b, 8)[0]
        for i, c in enumerate(chunks):
            if b[32:] == c and raw_len == len(c):
                print(i, p)
PY
cat "$T/chunks.map" | sed 's/^/    /'
C1=$(awk '$1 == 1 {print $2}' "$T/chunks.map"); C2=$(awk '$1 == 2 {print $2}' "$T/chunks.map")
[[ $(wc -l <"$T/chunks.map") -eq 4 ]] && pass "all 4 chunks of the file are in the cache, one file each" \
  || fail "expected 4 chunk files for the victim, found $(wc -l <"$T/chunks.map")"
[[ -n $C1 && -n $C2 ]] || die "cannot find the chunk files of chunks 1 and 2"
[[ $(basename "$C1") =~ ^[0-9a-f]{32}$ && $(basename "$(dirname "$C1")") == "$(basename "$C1" | cut -c1-2)" ]] \
  && pass "chunk file named CACHE/chunks/ab/<32 hex digest>" || fail "unexpected chunk file name $C1"
cp -p "$C1" "$T/c1.orig"; cp -p "$C2" "$T/c2.orig"

step "damage them: flip a byte in chunk 1's data, truncate chunk 2's file to half"
python3 - "$C1" <<'PY'
import sys
p = sys.argv[1]
with open(p, "r+b") as f:
    off = 32 + 123457           # inside the data part, after the 32-byte header
    f.seek(off); b = f.read(1)
    f.seek(off); f.write(bytes([b[0] ^ 0x40]))
PY
truncate -s $(((MiB + 32) / 2)) "$C2"
cmp -s "$C1" "$T/c1.orig" && fail "chunk 1's file is unchanged after the flip" || pass "chunk 1's file differs from its original ($(cmp "$C1" "$T/c1.orig" 2>&1 | head -1))"
[[ $(stat -c %s "$C1") -eq $CHUNK_FILE_SIZE ]] && pass "chunk 1's file keeps its size ($CHUNK_FILE_SIZE)" || fail "chunk 1's file size changed"
[[ $(stat -c %s "$C2") -lt $CHUNK_FILE_SIZE ]] && pass "chunk 2's file truncated to $(stat -c %s "$C2") bytes" || fail "chunk 2's file not truncated"

step "remount with the same cache and read the file"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=10" || die "cannot remount"
stats_json "$MNT" >"$T/s0.json" || die "extrafs stats failed"
[[ $(stat_of "$T/s0.json" chunks_fetched) -eq 0 ]] && pass "nothing fetched after the remount" \
  || fail "chunks_fetched $(stat_of "$T/s0.json" chunks_fetched) right after the remount"
if cmp "$STORE/$F" "$MNT/$F" >"$T/cmp.out" 2>&1; then
  pass "read through the damaged cache: identical to the store"
else
  fail "read through the damaged cache differs (corrupt chunk served?): $(head -1 "$T/cmp.out")"
fi
stats_json "$MNT" >"$T/s1.json" || die "extrafs stats failed"
cf=$(stat_of "$T/s1.json" chunks_fetched); hits=$(stat_of "$T/s1.json" cache_hits)
miss=$(stat_of "$T/s1.json" cache_misses); cor=$(stat_of "$T/s1.json" corrupt_fetches)
echo "  stats: chunks_fetched $cf, cache_hits $hits, cache_misses $miss, corrupt_fetches $cor"
[[ $cf -ge 1 ]] && pass "the damaged chunks were fetched again (chunks_fetched $cf >= 1)" \
  || fail "chunks_fetched $cf: the damaged chunks were not fetched again"
[[ $cf -eq 2 ]] && pass "exactly the 2 damaged chunks were fetched (the intact ones came from the cache)" \
  || fail "chunks_fetched $cf, expected exactly 2 (the two damaged chunks)"
[[ $hits -ge 2 ]] && pass "cache_hits $hits (the 2 intact chunks)" || fail "cache_hits $hits, expected >= 2"
[[ $cor -eq 0 ]] && pass "corrupt_fetches 0 (the server's bytes verified)" || fail "corrupt_fetches $cor"

step "the chunk files are valid again"
ok=0
for _ in $(seq 1 50); do
  cmp -s "$C1" "$T/c1.orig" && cmp -s "$C2" "$T/c2.orig" && { ok=1; break; }
  sleep 0.1
done
[[ $ok -eq 1 ]] && pass "chunk 1's and chunk 2's files are byte-identical to their originals again" \
  || fail "chunk files not restored: chunk1 $(cmp "$C1" "$T/c1.orig" 2>&1 | head -1 || true); chunk2 size $(stat -c %s "$C2" 2>&1)"
sync; echo 3 >/proc/sys/vm/drop_caches
cmp -s "$STORE/$F" "$MNT/$F" && pass "second read identical" || fail "second read differs"
stats_json "$MNT" >"$T/s2.json" || true
[[ $(stat_of "$T/s2.json" chunks_fetched) -eq $cf ]] && pass "second read fetched nothing" \
  || fail "second read fetched $(( $(stat_of "$T/s2.json" chunks_fetched) - cf )) more chunks"
nm_unmount "$MNT" || true
finish
