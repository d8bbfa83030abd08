#!/bin/bash
# test_nfs_lazy_index.sh EXTRAFS — layer indexes are read on first use, over NFSv4 from
# nfs-ganesha; the checks are tests/integration/lazy_index_lib.sh's (test_lazy_index.sh runs them
# on a local store).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"
source "$HERE/grow_lib.sh"   # HERE: tests/integration (lib.sh)
source "$HERE/lazy_index_lib.sh"

S=$T/store
step "a store with five images, served by nfs-ganesha"
lazy_build_store
nm_start_ganesha "$S" 4
lazy_index_suite "$NFS4_URL"
finish
