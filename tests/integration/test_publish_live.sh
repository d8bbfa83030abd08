#!/bin/bash
# test_publish_live.sh EXTRAFS — a store that grows under a running mount (issue 8, item 3), local
# directory store: while 4 readers loop over the mount's image/ files and a layer's files,
# `extrafs publish` adds an image (rewriting the store's repositories.json and adding to layerdb
# and imagedb). Not one read may fail or read other bytes than the file's old or new content, and
# the new image must be in the mount within 2 s. See live_publish_lib.sh.
set -u
EXTRAFS=${1:-}
source "$(dirname "$0")/lib.sh"
source "$HERE/live_publish_lib.sh"
require_env
setup_tmp

step "a packed store with one:1"
lp_prepare "$T/store"
mkdir -p "$T/mnt"
mount_extrafs "$T/store" "$T/mnt" || finish
lp_run "$T/mnt"
finish
