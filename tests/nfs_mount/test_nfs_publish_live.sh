#!/bin/bash
# test_nfs_publish_live.sh EXTRAFS — a store that grows under running mounts (issue 8, item 3),
# served by nfs-ganesha with its DEFAULT export attribute cache (no Attr_Expiration_Time, so
# ganesha trusts cached attributes for 60 s): an NFSv4 and an NFSv3 mount, 4 readers each over
# image/ files and a layer's files, while `extrafs publish` adds an image to the exported
# directory. Not one read may fail or read other bytes than its file's old or new content, and
# the new image must be in both mounts within 2 s. See tests/integration/live_publish_lib.sh.
set -u
source "$(dirname "$0")/nfs_lib.sh"
source "$HERE/live_publish_lib.sh"
nm_init "$@"

step "a packed store with one:1, exported with ganesha's default attribute cache"
lp_prepare "$T/store"
export GANESHA_ATTR_EXPIRATION=default
nm_start_ganesha "$T/store"
grep -qE '^\s*Attr_Expiration_Time' "$GSTATE/ganesha.conf" && die "ganesha.conf sets Attr_Expiration_Time"
nm_mount "$NFS4_URL" "$T/mnt4" "$T/cache4" || finish
nm_mount "$NFS3_URL" "$T/mnt3" "$T/cache3" || finish
lp_run "$T/mnt4" "$T/mnt3"
finish
