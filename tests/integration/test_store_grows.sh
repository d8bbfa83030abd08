#!/bin/bash
# A local store that grows under a running mount: a layer and an image added to the store, and
# the catalog replaced by `extrafs index`, show up in the mount within 2 s, without a remount;
# twice in a row (a daemon that has reloaded the catalog once does so again). What was mounted
# before keeps its node ids and content.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
source "$HERE/grow_lib.sh"
require_env
setup_tmp

S=$T/store
M=$T/mnt
mkdir -p "$M"
base=$(grow_cid base) second=$(grow_cid second) third=$(grow_cid third)

step "a one-layer store with an image, mounted"
grow_publish "$base" AAAAAAAAAAAAAAAAAAAAAAAAAA "" app:1 "$base"
mount_extrafs "$S" "$M" || die "cannot mount"
cmp -s "$S/overlay2/$base/diff/data/big" "$M/overlay2/$base/diff/data/big" && pass "base layer reads back" || fail "base layer differs"
base_ino=$(stat -c %i "$M/overlay2/$base/diff/data/big")
# Listed, not looked up: a lookup of the name to come would cache a negative entry.
ls "$M/overlay2" | grep -qx "$second" && fail "the second layer is there before it was published" || pass "only the base layer so far"

step "add a second layer and image app:2; extrafs index replaces the catalog"
grow_publish "$second" BBBBBBBBBBBBBBBBBBBBBBBBBB l/AAAAAAAAAAAAAAAAAAAAAAAAAA app:2 "$base" "$second"
grow_check_mount "$M" "$second" BBBBBBBBBBBBBBBBBBBBBBBBBB app:2

step "and a third layer and image app:3"
grow_publish "$third" CCCCCCCCCCCCCCCCCCCCCCCCCC l/BBBBBBBBBBBBBBBBBBBBBBBBBB:l/AAAAAAAAAAAAAAAAAAAAAAAAAA app:3 \
  "$base" "$second" "$third"
grow_check_mount "$M" "$third" CCCCCCCCCCCCCCCCCCCCCCCCCC app:3

step "what was there before is unchanged"
[[ $(stat -c %i "$M/overlay2/$base/diff/data/big") == "$base_ino" ]] && pass "the base file keeps its node id" || fail "the base file's node id changed"
cmp -s "$S/overlay2/$base/diff/data/big" "$M/overlay2/$base/diff/data/big" && pass "the base layer still reads back" || fail "the base layer differs"
grep -q '"app:1"' "$M/image/overlay2/repositories.json" && pass "app:1 still listed" || fail "app:1 no longer listed"
n=$(ls "$M/overlay2" | grep -cvx l)
[[ $n == 3 ]] && pass "three layers listed" || fail "overlay2 lists: $(ls "$M/overlay2" | tr '\n' ' ')"

"$EXTRAFS" unmount "$M" || fail "extrafs unmount failed"
finish
