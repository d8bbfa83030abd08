#!/bin/bash
# test_compare_trees.sh — self-test of make_odd_store.sh and compare_trees.py,
# needing no extrafs binary: the odd store must equal a `cp -a` copy of itself
# (apart from ctime and grown directory sizes), and every one of a list of
# deliberate modifications of a second copy must be reported.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
COMPARE="python3 $HERE/compare_trees.py"

if [[ $(id -u) -ne 0 ]]; then echo "SKIP: needs root"; exit 77; fi

T=$(mktemp -d /tmp/extrafs-cmp.XXXXXX)
cleanup() { rm -rf --one-file-system "$T"; }
trap cleanup EXIT

FAILS=0
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
pass() { echo "ok: $*"; }

echo "== building the odd store"
start=$SECONDS
"$HERE/make_odd_store.sh" "$T/store" >/dev/null
mapfile -t CIDS < "$T/store/.layers"
BASE=overlay2/${CIDS[0]}/diff
MID=overlay2/${CIDS[1]}/diff
echo "built in $((SECONDS - start)) s"

# cp -a copies a sparse file's data and holes, not its allocation: ext4 may lay the copy out in
# fewer extents, so its st_blocks can be one extent-tree block (8 sectors) smaller than the
# original's (seen: sparse_5g 200 vs 192 on a loaded machine). st_blocks is checked below, where
# zeros written into a hole must be reported.
echo "== a cp -a copy must compare equal (--no-ctime --no-dir-size --no-blocks)"
cp -a "$T/store" "$T/copy"
if $COMPARE "$T/store" "$T/copy" --no-ctime --no-dir-size --no-blocks >"$T/out" 2>&1; then
  pass "store == cp -a copy"; tail -1 "$T/out"
else
  fail "store != cp -a copy"; cat "$T/out"
fi

echo "== the same comparison with ctime must fail (cp cannot copy ctime)"
if $COMPARE "$T/store" "$T/copy" --no-dir-size >"$T/out" 2>&1; then
  fail "ctime difference not reported"
else
  grep -q st_ctime_ns "$T/out" && pass "ctime difference reported" || fail "no st_ctime_ns line"
fi

echo "== deliberate modifications must each be reported"
cp -a "$T/store" "$T/mod"
M=$T/mod
# Each entry: a description, a command run in $M, and a regex the report must contain.
declare -a DESC CMD EXPECT
add() { DESC+=("$1"); CMD+=("$2"); EXPECT+=("$3"); }
add "flipped last byte of a file"   "printf 'Z' | dd of=$BASE/data/chunk_plus1 bs=1 seek=1048576 conv=notrunc status=none; touch -r $T/store/$BASE/data/chunk_plus1 $BASE/data/chunk_plus1" \
    "data/chunk_plus1: content differs at byte 1048576"
add "data in a hole of the 5G file" "printf 'Q' | dd of=$BASE/data/sparse_5g bs=1 seek=3221225472 conv=notrunc status=none; touch -r $T/store/$BASE/data/sparse_5g $BASE/data/sparse_5g" \
    "data/sparse_5g: content differs at byte 3221225472"
add "zeros written into a hole (only st_blocks changes)" "dd if=/dev/zero of=$BASE/data/sparse_middle_only bs=4096 count=1 seek=600 conv=notrunc status=none; touch -r $T/store/$BASE/data/sparse_middle_only $BASE/data/sparse_middle_only" \
    "data/sparse_middle_only: st_blocks"
add "chmod"                         "chmod 0644 $BASE/perms/setuid" "perms/setuid: st_mode A=0104755 B=0100644"
add "chown"                         "chown -h 1:1 $BASE/owners/nobody" "owners/nobody: st_uid A=65534 B=1"
add "mtime off by 1 ns"             "python3 -c 'import os;p=\"$BASE/times/ns\";os.utime(p,ns=(0,1234567890123456790))'" \
    "times/ns: st_mtime_ns A=1234567890123456789 B=1234567890123456790"
add "xattr value changed"           "setfattr -n user.c -v changed $BASE/xattrs/several" "xattrs/several: xattr user.c A="
add "xattr removed"                 "setfattr -x user.empty $BASE/xattrs/several" "xattrs/several: xattr user.empty only in A"
add "xattr added"                   "setfattr -n user.new -v 1 $BASE/xattrs/binary" "xattrs/binary: xattr user.new only in B"
add "capability removed"            "setcap -r $BASE/xattrs/cap_net_raw" "xattrs/cap_net_raw: xattr security.capability only in A"
add "opaque xattr removed"          "setfattr -x trusted.overlay.opaque $MID/opq" "opq: xattr trusted.overlay.opaque only in A"
add "symlink retargeted"            "ln -sfn elsewhere $BASE/symlinks/rel; touch -h -d @$(stat -c %Y "$T/store/$BASE/symlinks/rel") $BASE/symlinks/rel" \
    "symlinks/rel: readlink A=b'../etc/greeting' B=b'elsewhere'"
add "hard link broken"              "cp -a $BASE/links/b/target_link $T/tl && rm $BASE/links/b/target_link && mv $T/tl $BASE/links/b/target_link" \
    "hard-link group in A but not in B: $BASE/links/a/target, $BASE/links/b/target_link"
add "whiteout rdev changed"         "rm $MID/wh_targets/file1 && mknod -m 000 $MID/wh_targets/file1 c 0 1" "wh_targets/file1: st_rdev A=0:0 B=0:1"
add "fifo replaced by a file"       "rm $BASE/specials/fifo && touch $BASE/specials/fifo" "specials/fifo: st_mode A=0010644 B=0100644"
add "file removed from bigdir"      "rm $BASE/bigdir/f04242" "bigdir/f04242: only in A"
add "file added"                    "touch $BASE/bigdir/extra" "bigdir/extra: only in B"
add "newline name renamed"          "mv $BASE/names/new\$'\\n'line $BASE/names/newline" 'names/new\nline: only in A'
add "truncated"                     "truncate -s 100 $BASE/data/chunk_x2" "data/chunk_x2: st_size A=2097152 B=100"
for i in "${!CMD[@]}"; do (cd "$M" && eval "${CMD[$i]}"); done
$COMPARE "$T/store" "$M" --no-ctime --no-dir-size --max-diffs 1000 >"$T/out" 2>&1 && rc=0 || rc=$?
[[ $rc -eq 1 ]] && pass "exit status 1 on differences" || fail "exit status $rc, expected 1"
for i in "${!DESC[@]}"; do
  if grep -qF -- "${EXPECT[$i]}" "$T/out"; then pass "${DESC[$i]}"; else fail "${DESC[$i]}: no line containing '${EXPECT[$i]}'"; fi
done
if [[ $FAILS -ne 0 ]]; then echo "--- compare_trees output:"; cat "$T/out"; fi

echo "== --manifest is stable and sees a metadata change"
$COMPARE --manifest "$T/store" >"$T/m1" 2>/dev/null
$COMPARE --manifest "$T/store" >"$T/m2" 2>/dev/null
cmp -s "$T/m1" "$T/m2" && pass "two manifests identical" || fail "manifest not stable"
setfattr -n user.touch -v 1 "$T/store/$BASE/etc/greeting"
$COMPARE --manifest "$T/store" >"$T/m3" 2>/dev/null
if ! cmp -s "$T/m1" "$T/m3"; then pass "manifest changes after setfattr"; else fail "manifest blind to setfattr"; fi

echo "== usage errors exit 2"
$COMPARE "$T/store" >/dev/null 2>&1 && rc=0 || rc=$?
[[ $rc -eq 2 ]] && pass "one tree -> 2" || fail "one tree -> $rc"
$COMPARE "$T/store" "$T/nonexistent" >/dev/null 2>&1 && rc=0 || rc=$?
[[ $rc -eq 2 ]] && pass "missing tree -> 2" || fail "missing tree -> $rc"

if [[ $FAILS -ne 0 ]]; then echo "$FAILS check(s) FAILED"; exit 1; fi
echo "all compare_trees self-checks passed"
