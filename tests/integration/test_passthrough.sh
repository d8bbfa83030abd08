#!/bin/bash
# test_passthrough.sh EXTRAFS — whole-file copies read by the kernel itself (FUSE passthrough),
# through a real mount of a local-directory store.
#
# A file of at least 8 MiB read to its end, with every chunk cached, gets a copy in CACHE/files,
# which the daemon hashes a few seconds later, unasked; a later open hands the copy to the
# kernel: the bytes are the store's (through the mount and through an overlay mount on it, as
# docker reads them), and the daemon serves none of them. A fresh mount hashes the copies again
# before it hands them out (the first open of each is served by the daemon meanwhile). A copy
# damaged on disk is found by that hash, removed, and the file is read the usual way, correctly.
# Copies count against cache_size with the chunks; `cache stat` shows them and `cache gc`
# removes them. A file under 8 MiB gets no copy. EXTRAFS_PASSTHROUGH=0 turns passthrough off
# (files then open without an OPEN round trip) and the copies are removed.
# The kernel must offer passthrough (Linux >= 6.9 with CONFIG_FUSE_PASSTHROUGH): on a kernel
# that does not, the test fails in CI (CI=true) and skips elsewhere.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
require_env
setup_tmp

MiB=$((1024 * 1024))
step "a store with a 24 MiB file, a 4 MiB file and a 9 MiB file of zeros and data"
id=$(printf 'passthrough' | sha256sum | cut -c1-64)
d=$T/store/overlay2/$id/diff
mkdir -p "$d" "$T/store/overlay2/l" "$T/mnt" "$T/ovl/upper" "$T/ovl/work" "$T/ovl/merged"
head -c $((24 * MiB + 12345)) /dev/urandom >"$d/big"
head -c $((4 * MiB)) /dev/urandom >"$d/small"
{ head -c $((3 * MiB)) /dev/zero; head -c $((6 * MiB + 7)) /dev/urandom; } >"$d/holes"
echo PASSTHROUGHPASSTHROUGH0000 >"$T/store/overlay2/$id/link"
"$EXTRAFS" index "$T/store" >/dev/null
F=$T/mnt/overlay2/$id/diff

js() {  # js FIELD: a field of stats --json
  "$EXTRAFS" stats "$T/mnt" --json | python3 -c "import json,sys; print(json.load(sys.stdin).get('$1'))"
}
js_is() { [[ $(js "$1") == "$2" ]]; }  # js_is FIELD VALUE (for wait_until)

step "first mount: reading the files whole makes copies of the large ones"
mount_extrafs "$T/store" "$T/mnt"
if [[ $(js passthrough) != True ]]; then
  if [[ ${CI:-} == true ]]; then die "the kernel did not agree to FUSE passthrough ($(uname -r)); CI's kernel must"; fi
  echo "SKIP: this kernel does not offer FUSE passthrough"
  exit 77
fi
pass "the kernel agreed to FUSE passthrough"
for f in big small holes; do cmp "$d/$f" "$F/$f" || fail "$f differs on the first read"; done
wait_until 20 js_is whole_files 2 && pass "2 copies made (big, holes), none of the 4 MiB file" \
  || fail "whole_files $(js whole_files) after reading, expected 2"
# Each new copy is hashed by the daemon a few seconds after it is written, with no open (so the
# first open needs no hash).
wait_until 15 js_is whole_files_checked 2 && pass "both copies checked in the background, none opened" \
  || fail "$(js whole_files_checked) copies checked 15 s after they were made"
[[ $(js whole_files_corrupt_dropped) == 0 ]] && pass "and both matched" || fail "corrupt_dropped $(js whole_files_corrupt_dropped)"
[[ $(js passthrough_opens) == 0 ]] && pass "no passthrough open yet" || fail "passthrough_opens $(js passthrough_opens) before any copy"
"$EXTRAFS" unmount "$T/mnt"
out=$("$EXTRAFS" cache stat --cache "$T/cache")
grep -q "whole files     2 (33.0 MiB)" <<<"$out" && pass "cache stat shows the copies" || fail "cache stat: $out"

step "a fresh mount: copies hashed again before use, then the kernel reads them, the daemon serves nothing"
mount_extrafs "$T/store" "$T/mnt"
for f in big holes; do cmp "$d/$f" "$F/$f" || fail "$f differs on the fresh mount's first open"; done
[[ $(js passthrough_opens) == 0 ]] && pass "first opens served by the daemon while the copies are hashed" \
  || fail "passthrough_opens $(js passthrough_opens) before this mount checked the copies"
wait_until 15 js_is whole_files_checked 2 && pass "both copies checked again by this mount" \
  || fail "$(js whole_files_checked) copies checked by the fresh mount"
served0=$(js bytes_served)
sync; echo 3 >/proc/sys/vm/drop_caches
cmp "$d/big" "$F/big" && pass "big identical through the copy" || fail "big differs through the copy"
cmp "$d/holes" "$F/holes" && pass "holes identical through the copy" || fail "holes differs through the copy"
mount -t overlay overlay -o "lowerdir=$F,upperdir=$T/ovl/upper,workdir=$T/ovl/work" "$T/ovl/merged" \
  && track_mount "$T/ovl/merged" || die "overlayfs refused the mount as a lower layer"
cmp "$d/big" "$T/ovl/merged/big" && pass "big identical through overlayfs on the mount" || fail "big differs through overlayfs"
[[ $(js passthrough_opens) -ge 3 ]] && pass "opens handed to the kernel: $(js passthrough_opens)" \
  || fail "passthrough_opens $(js passthrough_opens), expected >= 3"
[[ $(js bytes_served) == "$served0" ]] && pass "the daemon served 0 bytes more" \
  || fail "bytes_served $(js bytes_served), $served0 before the reads through the copies"
# Two readers at once, one holding the file open while the other opens it: same mode, same bytes.
exec {held}<"$F/big"
cmp "$d/big" "$F/big" && pass "a second open while one is held reads the same bytes" || fail "second open differs"
exec {held}<&-
umount "$T/ovl/merged"
cmp "$d/small" "$F/small" && pass "small (no copy) identical" || fail "small differs"
[[ $(js bytes_served) -gt "$served0" ]] && pass "small was served by the daemon" || fail "small was not served by the daemon"
prom=$("$EXTRAFS" stats "$T/mnt" --prometheus)  # whole: grep -q would stop reading at its match
grep -q '^extrafs_passthrough_opens_total [1-9]' <<<"$prom" \
  && pass "prometheus: extrafs_passthrough_opens_total" || fail "prometheus lacks extrafs_passthrough_opens_total"
"$EXTRAFS" unmount "$T/mnt"

step "a damaged copy is found by the hash after its first open, removed, and the file read the usual way"
copy=$(find "$T/cache/files" -type f -size +20M | head -1)
[[ -n $copy ]] || die "no copy of big in $T/cache/files"
flip_byte "$copy" $((13 * MiB + 3)) || die "cannot damage $copy"
mount_extrafs "$T/store" "$T/mnt"
cmp "$d/big" "$F/big" && pass "big identical despite the damaged copy" || fail "big differs with a damaged copy"
wait_until 15 js_is whole_files_corrupt_dropped 1 && pass "the damaged copy was dropped" \
  || fail "whole_files_corrupt_dropped $(js whole_files_corrupt_dropped)"
# Read whole again, the file gets a new, good copy under the same name.
cmp "$d/big" "$F/big" || fail "big differs after the damaged copy was dropped"
wait_until 20 js_is whole_files_written 1 && cmp -s "$copy" "$d/big" && pass "a new, good copy replaced it" \
  || fail "no good copy after the damaged one was dropped (written $(js whole_files_written))"
"$EXTRAFS" unmount "$T/mnt"

step "copies count against cache_size; cache gc removes them"
"$EXTRAFS" cache gc --cache "$T/cache" >/dev/null
out=$("$EXTRAFS" cache stat --cache "$T/cache")
grep -q "whole files     0 (0 B)" <<<"$out" && pass "gc removed the copies" || fail "after gc: $out"
rm -rf "$T/cache"
# 64 MiB: copies may take 16 MiB, so big (24 MiB) gets none; holes (9 MiB) does.
mount_extrafs "$T/store" "$T/mnt" "cache_size=64M"
for f in big holes; do cmp "$d/$f" "$F/$f" || fail "$f differs with a small cache"; done
wait_until 20 js_is whole_files 1 && pass "one copy (holes) within a quarter of cache_size" \
  || fail "whole_files $(js whole_files) with cache_size=64M, expected 1"
"$EXTRAFS" unmount "$T/mnt"
python3 - "$T/cache" $((64 * MiB)) <<'PY' && pass "chunks + copies within cache_size" || fail "the cache holds more than cache_size"
import os, sys
total = 0
for root, _, files in os.walk(sys.argv[1]):
    if "/meta" in root: continue
    for f in files:
        p = os.path.join(root, f)
        if root.endswith("/files") or "/chunks" in root:
            total += os.path.getsize(p) - (32 if "/chunks" in root else 0)
print("  chunks + copies:", total)
sys.exit(0 if total <= int(sys.argv[2]) else 1)
PY

step "EXTRAFS_PASSTHROUGH=0: no passthrough, files open without OPEN, copies removed"
EXTRAFS_PASSTHROUGH=0 mount_extrafs "$T/store" "$T/mnt"
cmp "$d/holes" "$F/holes" && cmp "$d/big" "$F/big" && pass "identical without passthrough" || fail "differs without passthrough"
[[ $(js passthrough) == False && $(js passthrough_opens) == 0 ]] && pass "passthrough off" || fail "passthrough $(js passthrough)"
[[ $(js open_requests) == 1 ]] && pass "one OPEN, then the kernel opens by itself" || fail "open_requests $(js open_requests)"
no_copies() { [[ -z $(find "$T/cache/files" -maxdepth 1 -type f) ]]; }
wait_until 10 no_copies && pass "the copy the cache held was removed" || fail "copies left: $(ls "$T/cache/files")"
"$EXTRAFS" unmount "$T/mnt"
finish
