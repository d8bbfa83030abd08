#!/bin/bash
# test_nfs_store_grows.sh EXTRAFS
#
# A store served by nfs-ganesha grows under running mounts (NFSv4 and NFSv3 at once): a layer and
# an image added on the server, and the catalog replaced by `extrafs index`, show up in both
# mounts within 2 s without a remount; twice in a row. The daemons must read the replaced catalog
# through a fresh handle, not the one open on the old file. ganesha.sh exports with
# Attr_Expiration_Time = 0 (see there), so the server itself reports the new catalog at once.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"
source "$HERE/grow_lib.sh"   # HERE: tests/integration (lib.sh)

S=$T/store
M4=$T/mnt4
M3=$T/mnt3
base=$(grow_cid base) second=$(grow_cid second) third=$(grow_cid third)

step "a one-layer store with an image, served by nfs-ganesha, mounted over NFSv4 and NFSv3"
grow_publish "$base" AAAAAAAAAAAAAAAAAAAAAAAAAA "" app:1 "$base"
nm_start_ganesha "$S"
nm_mount "$NFS4_URL" "$M4" "$T/cache4" || die "cannot mount over NFSv4"
nm_mount "$NFS3_URL" "$M3" "$T/cache3" || die "cannot mount over NFSv3"
for m in "$M4" "$M3"; do
  cmp -s "$S/overlay2/$base/diff/data/big" "$m/overlay2/$base/diff/data/big" && pass "$m: base layer reads back" || fail "$m: base layer differs"
done

step "add a second layer and image app:2 on the server; extrafs index replaces the catalog"
grow_publish "$second" BBBBBBBBBBBBBBBBBBBBBBBBBB l/AAAAAAAAAAAAAAAAAAAAAAAAAA app:2 "$base" "$second"
for m in "$M4" "$M3"; do grow_check_mount "$m" "$second" BBBBBBBBBBBBBBBBBBBBBBBBBB app:2; done

step "and a third layer and image app:3"
grow_publish "$third" CCCCCCCCCCCCCCCCCCCCCCCCCC l/BBBBBBBBBBBBBBBBBBBBBBBBBB:l/AAAAAAAAAAAAAAAAAAAAAAAAAA app:3 \
  "$base" "$second" "$third"
for m in "$M4" "$M3"; do grow_check_mount "$m" "$third" CCCCCCCCCCCCCCCCCCCCCCCCCC app:3; done

for m in "$M4" "$M3"; do
  grep -q '"app:1"' "$m/image/overlay2/repositories.json" && pass "$m: app:1 still listed" || fail "$m: app:1 no longer listed"
  nm_unmount "$m"
done
finish
