#!/bin/bash
# test_nfs_fidelity.sh EXTRAFS
#
# The odd-case store (tests/integration/make_odd_store.sh), indexed locally and exported by a
# private nfs-ganesha, is mounted twice at once: through NFSv3 (nfs://127.0.0.1/export?version=3&
# nfsport=N&mountport=M) and through plain NFSv4 (nfs://127.0.0.1:N/export). Every layer diff/ and
# image/ of each mount must equal the local store entry by entry (compare_trees.py, strict: with
# ctime, d_type, d_ino, hard-link groups, xattrs, every byte incl. the 5 GiB sparse file), and the
# daemons must actually have read the content over NFS (bytes_fetched > 0, no backend errors).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

STORE=$T/store
step "building and indexing the odd store"
nm_build_store "$STORE"

step "starting nfs-ganesha (v3 + v4)"
nm_start_ganesha "$STORE"
[[ -n $NFS3_URL && -n $NFS4_URL ]] || die "ganesha.sh printed no NFS3_URL/NFS4_URL"

step "mounting through NFSv3 and NFSv4"
nm_mount "$NFS3_URL" "$T/mnt3" "$T/cache3" "cache_size=2G,timeout=30" || die "cannot mount through NFSv3"
nm_mount "$NFS4_URL" "$T/mnt4" "$T/cache4" "cache_size=2G,timeout=30" || die "cannot mount through NFSv4"

# The two mounts are compared at the same time (two daemons, two compare_trees each in turn).
compare_all() {  # compare_all V: every layer diff/ and image/ of mount V; results in $T/res.V.*
  local v=$1 c i=0
  for c in "${CIDS[@]}" image; do
    i=$((i + 1))
    local a b
    if [[ $c == image ]]; then a=$STORE/image; b=$T/mnt$v/image
    else a=$STORE/overlay2/$c/diff; b=$T/mnt$v/overlay2/$c/diff; fi
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    "${COMPARE[@]}" "$a" "$b" >"$T/res.$v.$i.out" 2>&1 || rc=$?
    t1=$(date +%s.%N)
    echo "$rc $c $(python3 -c "print('%.1f' % ($t1 - $t0))")" >"$T/res.$v.$i.rc"
  done
}
step "compare every layer diff/ and image/ of both mounts with the store (strict, with ctime)"
compare_all 3 & P3=$!
compare_all 4 & P4=$!
wait $P3 || true; wait $P4 || true
for v in 3 4; do
  for i in 1 2 3 4; do
    read -r rc what secs <"$T/res.$v.$i.rc" || { fail "NFSv$v: compare $i produced no result"; continue; }
    label="NFSv$v: $( [[ $what == image ]] && echo image/ || echo "overlay2/${what:0:12}…/diff")"
    if [[ $rc -eq 0 ]]; then
      pass "$label: $(tail -1 "$T/res.$v.$i.out") ($secs s)"
    else
      fail "$label differs from the store (exit $rc, $secs s):"; sed 's/^/    /' "$T/res.$v.$i.out" | head -60
    fi
  done
done

for v in 3 4; do
  MNT=$T/mnt$v
  step "NFSv$v: link, lower and l/ as in the store"
  bad=0
  for c in "${CIDS[@]}"; do
    for f in link lower; do
      [[ -e $STORE/overlay2/$c/$f ]] || continue
      cmp -s "$STORE/overlay2/$c/$f" "$MNT/overlay2/$c/$f" || { fail "NFSv$v: overlay2/$c/$f differs"; bad=1; }
    done
  done
  for l in "$STORE"/overlay2/l/*; do
    [[ $(readlink "$MNT/overlay2/l/${l##*/}" 2>&1) == "$(readlink "$l")" ]] || { fail "NFSv$v: l/${l##*/} differs"; bad=1; }
  done
  [[ $bad -eq 0 ]] && pass "NFSv$v: link, lower and l/* match"

  step "NFSv$v: the content came over NFS"
  stats_json "$MNT" >"$T/stats$v.json" || fail "extrafs stats $MNT failed"
  if [[ -s $T/stats$v.json ]]; then
    bf=$(stat_of "$T/stats$v.json" bytes_fetched); be=$(stat_of "$T/stats$v.json" backend_errors)
    cf=$(stat_of "$T/stats$v.json" chunks_fetched)
    (( bf > 0 && cf > 0 )) && pass "NFSv$v: bytes_fetched $bf, chunks_fetched $cf" \
      || fail "NFSv$v: bytes_fetched $bf / chunks_fetched $cf: nothing was read from the server?"
    [[ $be -eq 0 ]] && pass "NFSv$v: backend_errors 0" || fail "NFSv$v: backend_errors $be"
    src=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("source",""))' "$T/stats$v.json")
    [[ $src == nfs://* ]] && pass "NFSv$v: stats source is $src" || fail "NFSv$v: stats source '$src' is not the nfs URL"
  fi
done

step "unmounting"
nm_unmount "$T/mnt3" && pass "NFSv3 mount unmounted, daemon gone"
nm_unmount "$T/mnt4" && pass "NFSv4 mount unmounted, daemon gone"
finish
