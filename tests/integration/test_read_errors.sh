#!/bin/bash
# test_read_errors.sh EXTRAFS — a chunk that cannot be served fails reads, it never shortens the
# file (issue 10, item 1).
#
# A packed store (extrafs publish --archive of a hand-made `docker save` archive) with one byte
# flipped in the middle chunk of a five-chunk file in the layer blob, mounted from the local
# directory: reading the whole file fails (cat, sha256sum exit non-zero, also the second time),
# reads that span a good and the bad chunk fail with EIO, `stat -c %s` shows the same size before
# and after, and the good chunks still read byte for byte.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
require_env
setup_tmp

MiB=$((1024 * 1024))
SIZE=$((4 * MiB + 1234))  # chunks 0..4 of 1 MiB; chunk 2 is the bad one

step "a packed store with a five-chunk file"
mkdir -p "$T/src/data" "$T/mnt"
head -c $SIZE /dev/urandom >"$T/src/data/victim"
echo fine >"$T/src/data/small"
python3 "$HERE/make_save_archive.py" "$T/app.tar" rel:1 "$T/src"
"$EXTRAFS" publish --archive "$T/app.tar" --to "$T/store" >"$T/publish.out" 2>&1 \
  || die "publish failed: $(cat "$T/publish.out")"
blobs=("$T"/store/extrafs/layers/*.blob)
[[ ${#blobs[@]} -eq 1 && -f ${blobs[0]} ]] || die "expected one layer blob, found: ${blobs[*]}"
BLOB=${blobs[0]}
CID=$(basename "$BLOB" .blob)
pass "published layer $CID"

step "flip one byte of chunk 2 inside the blob"
# Random data does not compress, so the chunk is stored as it is: find it by content.
python3 - "$BLOB" "$T/src/data/victim" <<'PY' || die "chunk 2 of the victim not found in the blob"
import sys
blob, src = sys.argv[1], sys.argv[2]
data = open(src, "rb").read()
chunk = data[2 << 20:3 << 20]
b = open(blob, "rb").read()
off = b.find(chunk)
if off < 0 or b.find(chunk, off + 1) >= 0:
    sys.exit(1)
with open(blob, "r+b") as f:
    f.seek(off + 4321)
    c = f.read(1)
    f.seek(off + 4321)
    f.write(bytes([c[0] ^ 0x20]))
print(f"  flipped byte {off + 4321} of {blob}")
PY

step "mount the store and read the damaged file"
mount_extrafs "$T/store" "$T/mnt"
F=$T/mnt/overlay2/$CID/diff/data/victim
size0=$(stat -c %s "$F")
[[ $size0 -eq $SIZE ]] && pass "size $size0 before any read" || fail "size $size0 before any read, expected $SIZE"

# A lone 64 KiB read from 32 KiB before the end of chunk 1 into chunk 2: the kernel reads just
# these pages (a small random read gets no readahead), one FUSE request that spans a good and
# the bad chunk. Served short, it would read as end of file at 2 MiB and shrink the size to it.
span_read() {
  local rc=0
  dd if="$F" of="$T/span" bs=64K count=1 skip=$((2 * MiB - 32 * 1024)) iflag=skip_bytes,fullblock 2>"$T/dd.err" || rc=$?
  [[ $rc -ne 0 ]] && grep -q "Input/output error" "$T/dd.err" && pass "a read spanning chunks 1 and 2 fails with EIO" \
    || fail "a read spanning chunks 1 and 2: exit $rc, $(stat -c %s "$T/span") bytes, $(tail -1 "$T/dd.err")"
  local sz
  sz=$(stat -c %s "$F")
  [[ $sz -eq $SIZE ]] && pass "size $sz after it" || fail "size after a read spanning chunks 1 and 2: $sz, expected $SIZE"
}
span_read

rc=0; cat "$F" >"$T/out" 2>"$T/cat.err" || rc=$?
[[ $rc -ne 0 ]] && pass "cat fails (exit $rc: $(head -1 "$T/cat.err"))" \
  || fail "cat exited 0 with $(stat -c %s "$T/out") of $SIZE bytes"
grep -q "Input/output error" "$T/cat.err" && pass "the error is EIO" || fail "cat error: $(cat "$T/cat.err")"
[[ $(stat -c %s "$T/out") -le $((2 * MiB)) ]] && cmp -s "$T/out" <(head -c "$(stat -c %s "$T/out")" "$T/src/data/victim") \
  && pass "what cat got before the error ($(stat -c %s "$T/out") bytes) is the file's start" \
  || fail "cat got $(stat -c %s "$T/out") bytes that are not the file's start"
size1=$(stat -c %s "$F")
[[ $size1 -eq $SIZE ]] && pass "size $size1 after the failed read" || fail "size after the failed read: $size1, expected $SIZE"

rc=0; sha256sum "$F" >"$T/sum.out" 2>&1 || rc=$?
[[ $rc -ne 0 ]] && pass "sha256sum fails too (exit $rc)" || fail "sha256sum exited 0: $(cat "$T/sum.out")"
rc=0; cat "$F" >/dev/null 2>&1 || rc=$?
[[ $rc -ne 0 ]] && pass "a second cat fails again" || fail "a second cat exited 0"

step "reads that touch the bad chunk fail; the good chunks read right"
sync; echo 3 >/proc/sys/vm/drop_caches
span_read
chunk_of() { dd if="$1" bs=64K skip=$(($2 * MiB)) count=$3 iflag=skip_bytes,count_bytes 2>/dev/null; }
for c in 0 1 3 4; do
  n=$MiB
  ((c == 4)) && n=1234
  if cmp -s <(chunk_of "$F" $c $n) <(chunk_of "$T/src/data/victim" $c $n) \
      && [[ $(chunk_of "$F" $c $n | wc -c) -eq $n ]]; then
    pass "chunk $c reads right"
  else
    fail "chunk $c differs from the source"
  fi
done
cmp -s <(head -c $((2 * MiB)) "$F") <(head -c $((2 * MiB)) "$T/src/data/victim") \
  && pass "the first two chunks read right in one go" || fail "the first two chunks differ"
[[ $(cat "$T/mnt/overlay2/$CID/diff/data/small") == fine ]] && pass "another file of the layer reads" || fail "data/small unreadable"
size2=$(stat -c %s "$F")
[[ $size2 -eq $SIZE ]] && pass "size $size2 at the end" || fail "size at the end: $size2, expected $SIZE"
sync; echo 3 >/proc/sys/vm/drop_caches
size3=$(stat -c %s "$F")
[[ $size3 -eq $SIZE ]] && pass "size $size3 after dropping the page cache" || fail "size after dropping caches: $size3"

"$EXTRAFS" stats "$T/mnt" --json >"$T/stats.json"
python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); sys.exit(0 if j["corrupt_fetches"] >= 1 else 1)' "$T/stats.json" \
  && pass "the bad chunk is counted in corrupt_fetches" || fail "stats: $(cat "$T/stats.json")"
"$EXTRAFS" unmount "$T/mnt" || fail "unmount failed"
finish
