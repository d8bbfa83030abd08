#!/bin/bash
# test_lazy_index.sh EXTRAFS — layer indexes are read on first use (local store); see
# lazy_index_lib.sh for what is checked. tests/nfs_mount/test_nfs_lazy_index.sh runs the same
# checks over NFSv4.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../nfs_mount/nfs_lib.sh"   # nm_mount, nm_unmount, stats_json
EXTRAFS=$1
require_env
setup_tmp
source "$HERE/grow_lib.sh"
source "$HERE/lazy_index_lib.sh"

S=$T/store
step "a local store with five images"
lazy_build_store
lazy_index_suite "$S"
finish
