#!/bin/bash
# test_nfs_faults.sh EXTRAFS
#
# Faults with real parts (issue 10): a real FUSE mount of a store served by a real nfs-ganesha, the
# real daemon. Each case checks no wrong byte (every successful read compared with the store, by
# tests/nfs_mount/fault_readers.py or cmp), no size change (stat before and after), no task in
# state D for long (readers and daemon), and recovery by itself (reads succeed again, without a
# remount, once the fault is gone).
#   1. the daemon SIGKILLed under load (16 readers): readers get errors, not hangs (the FUSE
#      connection aborts); the dead mount is unmounted; a new mount on the same cache serves the
#      store's bytes; `extrafs cache verify` finds nothing corrupt;
#   2. cache files of a warm file damaged while mounted (and the file pushed out of the daemon's
#      in-memory chunk LRU by reading 72 MiB of others): a byte flipped, truncated, replaced by a
#      symlink to another chunk file, to /dev/zero, to a FIFO, by an empty directory and by a
#      directory holding a file; the page cache dropped; the file still reads right (within 30 s)
#      and again after a second drop;
#   3. the same damage between mounts (unmount, damage, mount again on the same cache);
#   4. a packed store (extrafs publish --archive) over NFS: a byte flipped in a layer blob gives
#      EIO for reads touching that chunk, the size does not change, the other chunks read right;
#      with the blob restored the same mount reads the whole file right; a layer index in the
#      store corrupted: a mount with a warm cache serves right, a mount with an empty cache
#      serves and answers EIO for that layer's files (indexes are read on first use).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"
# This test damages chunk files in the cache. The 8 MiB victims read whole would also get
# whole-file copies, which later reads take instead of the chunk files (FUSE passthrough; a
# damaged copy is test_passthrough.sh's case): keep the reads on the chunks.
export EXTRAFS_PASSTHROUGH=0
READERS=(python3 "$NM_HERE/fault_readers.py")

STORE=$T/store
CACHE=$T/cache
MNT=$T/mnt
add_files() {
  local l
  for l in 0 1 2; do random_file "$1/overlay2/${CIDS[$l]}/diff/fault/f" $(( (3 + l) * MiB + 4321 )) "fault-$l"; done
  random_file "$1/overlay2/${CIDS[2]}/diff/fault/victim" $((8 * MiB)) victim
  random_file "$1/overlay2/${CIDS[2]}/diff/fault/victim2" $((8 * MiB)) victim2
  random_file "$1/overlay2/${CIDS[1]}/diff/fault/flush" $((72 * MiB)) flush
}
step "building and indexing the odd store (+ fault/* in each layer)"
nm_build_store "$STORE" add_files
for l in 0 1 2; do echo "overlay2/${CIDS[$l]}/diff/fault/f"; done >"$T/files"
V=overlay2/${CIDS[2]}/diff/fault/victim
V2=overlay2/${CIDS[2]}/diff/fault/victim2
FLUSH=overlay2/${CIDS[1]}/diff/fault/flush
nm_start_ganesha "$STORE" 4

step "1. the daemon SIGKILLed under load"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=3" || die "cannot mount"
mapfile -t DPIDS < <(daemon_pids "$MNT")
[[ ${#DPIDS[@]} -eq 1 ]] || die "expected one daemon for $MNT, found: ${DPIDS[*]}"
"${READERS[@]}" --src "$STORE" --mnt "$MNT" --files "$T/files" --readers 16 --seconds 8 \
  --allow EIO,ENOTCONN,ECONNABORTED --drop-every 0.2 --max-d-secs 10 --out "$T/kill.json" >"$T/kill.out" 2>&1 &
RPID=$!
sleep 3
kill -KILL "${DPIDS[0]}"
t_kill=$(date +%s.%N)
wait_until 10 pid_gone "${DPIDS[0]}" && pass "daemon ${DPIDS[0]} killed" || fail "daemon ${DPIDS[0]} still alive after SIGKILL"
rc=0; wait "$RPID" || rc=$?
sed 's/^/  /' "$T/kill.out"
[[ $rc -eq 0 ]] && pass "readers: no wrong byte, only EIO/ENOTCONN, none hung, no long D state" || fail "fault_readers.py exited $rc"
python3 - "$T/kill.json" "$t_kill" <<'PY' && pass "readers got errors after the kill, the first $(cat "$T/kill.first") s after it" || fail "no reader error after the kill"
import json, sys, os
s = json.load(open(sys.argv[1])); t = float(sys.argv[2])
after = [x for x in s["error_times"] if x >= t]
open(os.path.join(os.path.dirname(sys.argv[1]), "kill.first"), "w").write("%.2f" % ((after[0] - t) if after else -1))
sys.exit(0 if after and s["reads_ok"] > 0 else 1)
PY
rc=0; timeout 10 stat "$MNT/overlay2" >/dev/null 2>"$T/stat.err" || rc=$?
[[ $rc -ne 0 && $rc -ne 124 ]] && pass "the dead mount answers at once: $(head -1 "$T/stat.err")" || fail "stat on the dead mount: rc $rc"
rc=0; timeout 30 "$EXTRAFS" unmount "$MNT" >"$T/umount.out" 2>&1 || rc=$?
if [[ $rc -eq 0 ]] && not_mounted "$MNT"; then pass "extrafs unmount removes the dead mount"
else
  fail "extrafs unmount of the dead mount: rc $rc, $(head -c 300 "$T/umount.out")"
  umount -l "$MNT" 2>/dev/null || true
fi
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=3" || die "cannot mount again on the same cache"
n=0
while read -r f; do
  timeout 60 cmp -s "$STORE/$f" "$MNT/$f" && n=$((n + 1)) || fail "$(sp "$f") differs on the new mount"
done <"$T/files"
[[ $n -eq 3 ]] && pass "new mount on the same cache: all 3 files identical"
nm_unmount "$MNT" || die "cannot unmount"
rc=0; out=$(timeout 120 "$EXTRAFS" cache verify --cache "$CACHE" 2>&1) || rc=$?
[[ $rc -eq 0 ]] && pass "extrafs cache verify after the kill: $out" || fail "extrafs cache verify: rc $rc: $out"

# The victim's chunk files in CACHE/chunks (found by content), one path per chunk index, in
# $T/chunks.N; sets NCHUNK_FILES.
map_chunks() {
  local src=$1
  python3 - "$src" "$CACHE" "$T/chunks" <<'PY'
import os, sys
src, cache, out = sys.argv[1:4]
data = open(src, "rb").read()
chunks = [data[i:i + (1 << 20)] for i in range(0, len(data), 1 << 20)]
found = 0
for dp, dns, fns in os.walk(os.path.join(cache, "chunks")):
    for n in fns:
        p = os.path.join(dp, n)
        if os.path.islink(p):
            continue
        b = open(p, "rb").read()
        for i, c in enumerate(chunks):
            if b[32:] == c:
                open("%s.%d" % (out, i), "w").write(p + "\n")
                found += 1
print(found)
PY
}
mkfifo "$T/fifo"
# damage N: breaks the chunk files 0..6 of the victim in seven ways (chunk 7 stays intact).
damage() {
  local c=()
  for i in 0 1 2 3 4 5 6 7; do c[i]=$(cat "$T/chunks.$i"); done
  python3 - "${c[0]}" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(32 + 4567); b = f.read(1); f.seek(32 + 4567); f.write(bytes([b[0] ^ 1]))
PY
  truncate -s 1000 "${c[1]}"
  ln -sf "${c[7]}" "${c[2]}"             # a valid chunk file, of another chunk
  ln -sf /dev/zero "${c[3]}"
  ln -sf "$T/fifo" "${c[4]}"              # opening a FIFO blocks until a writer comes
  rm -f "${c[5]}"; mkdir "${c[5]}"
  rm -f "${c[6]}"; mkdir "${c[6]}"; echo x >"${c[6]}/inside"
}
# read_victim LABEL FILE: the whole file reads right within 30 s and its size stays.
read_victim() {
  local label=$1 f=$2 size0 rc=0
  size0=$(stat -c %s "$MNT/$f")
  python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd,0,0,os.POSIX_FADV_DONTNEED)' "$MNT/$f"
  timed timeout -s KILL 30 cmp "$STORE/$f" "$MNT/$f" >"$T/cmp.out" 2>&1 || rc=$?
  if [[ $rc -eq 0 ]]; then pass "$label: identical to the store (${TIME_TAKEN} s)"
  elif [[ $rc -eq 137 ]]; then fail "$label: the read hung (killed after 30 s)"
  else fail "$label: $(head -1 "$T/cmp.out") (rc $rc)"; fi
  [[ $(stat -c %s "$MNT/$f") -eq $size0 && $size0 -eq $(stat -c %s "$STORE/$f") ]] \
    && pass "$label: size $size0 unchanged" || fail "$label: size $size0 -> $(stat -c %s "$MNT/$f")"
}

step "2. cache files damaged while mounted"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=3" || die "cannot mount"
mapfile -t DPIDS < <(daemon_pids "$MNT")
cmp -s "$STORE/$V" "$MNT/$V" || fail "first read of the victim differs"
# 72 MiB of other chunks push the victim's out of the daemon's 64 MiB in-memory LRU, so the reads
# below go to the damaged files on disk.
cmp -s "$STORE/$FLUSH" "$MNT/$FLUSH" || fail "the flush file differs"
n=$(map_chunks "$STORE/$V")
[[ $n -eq 8 ]] && pass "8 chunk files of the victim in the cache" || die "found $n chunk files of the victim, expected 8"
stats_json "$MNT" >"$T/s2a.json" || fail "extrafs stats failed"
damage
pass "damaged: flipped, truncated, symlink to chunk 7, symlink to /dev/zero, symlink to a FIFO, empty directory, directory with a file"
read_victim "while mounted, after the damage" "$V"
stats_json "$MNT" >"$T/s2b.json" || fail "extrafs stats failed"
cf=$(( $(stat_of "$T/s2b.json" chunks_fetched) - $(stat_of "$T/s2a.json" chunks_fetched) ))
[[ $cf -eq 7 ]] && pass "the 7 damaged chunks were judged on disk and fetched again" \
  || fail "$cf chunks fetched for the damaged file, expected 7 (still served from memory, or a damaged file used?)"
read_victim "while mounted, second read" "$V"
wait_until 5 no_d_state "${DPIDS[@]}" && pass "no daemon task in state D" || fail "a daemon task is in state D"
stats_json "$MNT" >"$T/s2.json" || fail "extrafs stats failed"
echo "  stats: chunks_fetched $(stat_of "$T/s2.json" chunks_fetched), cache_write_errors $(stat_of "$T/s2.json" cache_write_errors), corrupt_fetches $(stat_of "$T/s2.json" corrupt_fetches)"
[[ $(stat_of "$T/s2.json" corrupt_fetches) -eq 0 ]] && pass "corrupt_fetches 0 (the server's bytes verified)" || fail "corrupt_fetches $(stat_of "$T/s2.json" corrupt_fetches)"
nm_unmount "$MNT" || die "cannot unmount"
n=$(map_chunks "$STORE/$V")
echo "  after the reads, $n of the victim's 8 chunks are valid files in the cache again"

step "3. cache files damaged between mounts"
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=256M,timeout=3" || die "cannot mount"
cmp -s "$STORE/$V2" "$MNT/$V2" || fail "first read of victim2 differs"
nm_unmount "$MNT" || die "cannot unmount"
n=$(map_chunks "$STORE/$V2")
[[ $n -eq 8 ]] && pass "8 chunk files of victim2 in the cache" || die "found $n chunk files of victim2, expected 8"
damage
rc=0; timed timeout -s KILL 60 "$EXTRAFS" mount "$NFS4_URL" "$MNT" -o "cache=$CACHE,cache_size=256M,timeout=3,log_level=warn" >"$T/mount.out" 2>&1 || rc=$?
track_mount "$MNT"
[[ $rc -eq 0 ]] && pass "mount on the damaged cache in ${TIME_TAKEN} s" || die "mount on the damaged cache: rc $rc: $(head -c 300 "$T/mount.out")"
mapfile -t DPIDS < <(daemon_pids "$MNT")
read_victim "after a remount on the damaged cache" "$V2"
read_victim "after a remount, second read" "$V2"
read_victim "the victim of case 2" "$V"
wait_until 5 no_d_state "${DPIDS[@]}" && pass "no daemon task in state D" || fail "a daemon task is in state D"
nm_unmount "$MNT" || die "cannot unmount"
rc=0; out=$(timeout 120 "$EXTRAFS" cache verify --cache "$CACHE" 2>&1) || rc=$?
echo "  extrafs cache verify: rc $rc: $out"
[[ $rc -le 1 ]] && pass "extrafs cache verify ends (rc $rc)" || fail "extrafs cache verify: rc $rc: $out"
rc=0; out=$(timeout 120 "$EXTRAFS" cache verify --cache "$CACHE" 2>&1) || rc=$?
[[ $rc -eq 0 ]] && pass "a second extrafs cache verify finds nothing: $out" || fail "second extrafs cache verify: rc $rc: $out"

step "4. a packed store over NFS: blob and index corrupted"
timeout 30 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1 || fail "ganesha.sh stop failed"
PSTORE=$T/pstore
mkdir -p "$T/src/data"
random_file "$T/src/data/victim" $((5 * MiB + 1234)) packed-victim
echo fine >"$T/src/data/small"
python3 "$NM_HERE/../integration/make_save_archive.py" "$T/app.tar" fault:1 "$T/src" >/dev/null
"$EXTRAFS" publish --archive "$T/app.tar" --to "$PSTORE" >"$T/publish.out" 2>&1 || die "publish failed: $(cat "$T/publish.out")"
blobs=("$PSTORE"/extrafs/layers/*.blob)
[[ ${#blobs[@]} -eq 1 && -f ${blobs[0]} ]] || die "expected one layer blob, found: ${blobs[*]}"
BLOB=${blobs[0]}
PCID=$(basename "$BLOB" .blob)
IDX=$PSTORE/extrafs/layers/$PCID.index
nm_start_ganesha "$PSTORE" 4
PC=$T/pcache
nm_mount "$NFS4_URL" "$MNT" "$PC" "cache_size=256M,timeout=3" || die "cannot mount the packed store"
PF=$MNT/overlay2/$PCID/diff/data/victim
SRC=$T/src/data/victim
SIZE=$(stat -c %s "$SRC")
[[ $(stat -c %s "$PF") -eq $SIZE ]] && pass "size $SIZE before any read" || fail "size $(stat -c %s "$PF"), expected $SIZE"
# Flip one byte of chunk 3 inside the blob (random data is stored as it is: found by content).
python3 - "$BLOB" "$SRC" >"$T/flip.off" <<'PY' || die "chunk 3 not found in the blob"
import sys
blob, src = sys.argv[1], sys.argv[2]
chunk = open(src, "rb").read()[3 << 20:4 << 20]
b = open(blob, "rb").read()
off = b.find(chunk)
if off < 0:
    sys.exit(1)
with open(blob, "r+b") as f:
    f.seek(off + 999); c = f.read(1); f.seek(off + 999); f.write(bytes([c[0] ^ 0x10]))
print(off + 999)
PY
dd_at() { dd if="$PF" bs=64K count=$3 skip=$(($2 * MiB)) iflag=skip_bytes,count_bytes 2>"$T/dd.err" >"$1"; }
rc=0; dd_at "$T/c3" 3 $MiB || rc=$?
[[ $rc -ne 0 ]] && grep -q "Input/output error" "$T/dd.err" && pass "reading the damaged chunk: EIO" || fail "reading the damaged chunk: rc $rc, $(tail -1 "$T/dd.err")"
rc=0; timeout 60 cat "$PF" >"$T/whole" 2>"$T/cat.err" || rc=$?
[[ $rc -ne 0 ]] && pass "cat of the whole file fails ($(head -1 "$T/cat.err"))" || fail "cat of a file with a bad chunk exited 0"
cmp -s "$T/whole" <(head -c "$(stat -c %s "$T/whole")" "$SRC") && pass "the $(stat -c %s "$T/whole") bytes cat got are the file's start" || fail "cat got wrong bytes"
[[ $(stat -c %s "$PF") -eq $SIZE ]] && pass "size $SIZE after the failed reads" || fail "size $(stat -c %s "$PF") after the failed reads"
for c in 0 1 2 4; do
  dd_at "$T/c" $c $MiB && cmp -s "$T/c" <(dd if="$SRC" bs=64K skip=$((c * MiB)) count=$MiB iflag=skip_bytes,count_bytes 2>/dev/null) \
    || fail "chunk $c differs"
done
pass "chunks 0, 1, 2 and 4 read right"
python3 - "$BLOB" "$(cat "$T/flip.off")" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    off = int(sys.argv[2]); f.seek(off); c = f.read(1); f.seek(off); f.write(bytes([c[0] ^ 0x10]))
PY
sync; echo 3 >/proc/sys/vm/drop_caches
# The daemon answers a chunk that failed less than 0.5 s ago with EIO at once (kFailureMemory in
# cache/chunk_fetcher.h): recovery comes within a bounded time, not at the first read.
recovered() { timeout 60 cmp "$SRC" "$PF" >"$T/cmp.out" 2>&1; }
rc=0; timed wait_until 5 recovered || rc=$?
[[ $rc -eq 0 ]] && pass "blob restored: the whole file reads right on the same mount within ${TIME_TAKEN} s" || fail "after the blob was restored (5 s): $(head -1 "$T/cmp.out")"
[[ $(stat -c %s "$PF") -eq $SIZE ]] && pass "size $SIZE at the end" || fail "size $(stat -c %s "$PF") at the end"
stats_json "$MNT" >"$T/s4.json" || fail "extrafs stats failed"
(( $(stat_of "$T/s4.json" corrupt_fetches) >= 1 )) && pass "corrupt_fetches $(stat_of "$T/s4.json" corrupt_fetches)" || fail "corrupt_fetches 0 after a corrupt chunk"
nm_unmount "$MNT" || die "cannot unmount"

cp -p "$IDX" "$T/index.orig"
flip_byte "$IDX" $(( $(stat -c %s "$IDX") / 2 )) || die "cannot damage $IDX"
nm_mount "$NFS4_URL" "$MNT" "$PC" "cache_size=256M,timeout=3" || fail "mount with a warm cache and a corrupt index in the store failed"
if is_mounted "$MNT"; then
  timeout 60 cmp -s "$SRC" "$PF" && pass "warm cache, corrupt index in the store: the file reads right" || fail "warm cache, corrupt index in the store: the file differs or is unreadable"
  nm_unmount "$MNT" || true
fi
rc=0; timeout -s KILL 60 "$EXTRAFS" mount "$NFS4_URL" "$MNT" -o "cache=$T/pcache2,cache_size=256M,timeout=3,log_level=warn" >"$T/m.out" 2>"$T/m.err" || rc=$?
track_mount "$MNT"
if [[ $rc -eq 0 ]]; then
  rc2=0; timeout -s KILL 30 cat "$PF" >"$T/whole2" 2>"$T/cat2.err" || rc2=$?
  if [[ $rc2 -ne 0 ]] && grep -q "Input/output error" "$T/cat2.err"; then
    pass "empty cache, corrupt index: mounted, the layer's file fails ($(head -1 "$T/cat2.err"))"
  else
    fail "empty cache, corrupt index: cat rc $rc2 (expected EIO): $(head -1 "$T/cat2.err")"
  fi
  nm_unmount "$MNT" || true
else
  fail "empty cache, corrupt index: mount rc $rc (the mount needs only the catalog): $(head -c 500 "$T/m.err")"
fi
cp -p "$T/index.orig" "$IDX"
nm_mount "$NFS4_URL" "$MNT" "$T/pcache3" "cache_size=256M,timeout=3" || fail "mount after the index was restored failed"
is_mounted "$MNT" && { timeout 60 cmp -s "$SRC" "$PF" && pass "index restored: a new mount reads right" || fail "index restored: the file differs"; }
nm_unmount "$MNT" || true
finish
