# grow_lib.sh — a store that grows under running mounts (sourced by test_store_grows.sh and
# tests/nfs_mount/test_nfs_store_grows.sh, after lib.sh).
#
# Uses $S (the store, written directly), $EXTRAFS and $HERE (tests/integration). Provides:
#   grow_cid NAME                              a cache id (64 hex digits) derived from NAME
#   grow_publish CACHE-ID LINK LOWER TAG CHAIN...
#                                              adds a layer (a 3 MiB file and a small one) and an
#                                              image TAG whose layers are CHAIN (base first) to
#                                              the store, then `extrafs index` replaces the
#                                              catalog; sets GROW_T0 to the time it finished
#   grow_check_mount MNT CACHE-ID LINK TAG     the layer and the image are in MNT within 2 s
#                                              of GROW_T0, and the layer reads back identical

grow_cid() { printf 'grow-%s' "$1" | sha256sum | cut -c1-64; }

grow_now() { date +%s.%N; }

# grow_within LIMIT COMMAND...: polls COMMAND every 50 ms until it succeeds or LIMIT seconds have
# passed since GROW_T0; sets GROW_WAITED to the seconds taken.
grow_within() {
  local limit=$1; shift
  while :; do
    if "$@" 2>/dev/null; then
      GROW_WAITED=$(python3 -c "print('%.2f' % ($(grow_now) - $GROW_T0))")
      return 0
    fi
    python3 -c "import sys; sys.exit(0 if $(grow_now) - $GROW_T0 > $limit else 1)" && return 1
    sleep 0.05
  done
}

grow_publish() {
  local id=$1 link=$2 lower=$3 tag=$4; shift 4
  mkdir -p "$S/overlay2/$id/diff/data" "$S/overlay2/l"
  head -c $((3 * 1024 * 1024)) /dev/urandom >"$S/overlay2/$id/diff/data/big"
  printf 'layer %s\n' "$id" >"$S/overlay2/$id/diff/data/small"
  printf '%s' "$link" >"$S/overlay2/$id/link"
  [[ -z $lower ]] || printf '%s' "$lower" >"$S/overlay2/$id/lower"
  python3 "$HERE/make_image_meta.py" "$S" "$tag" "$@" >/dev/null
  "$EXTRAFS" index "$S" >"$T/grow_index.out" 2>&1 || die "extrafs index $S failed: $(head -c 1000 "$T/grow_index.out")"
  GROW_T0=$(grow_now)
}

grow_lists_tag() { grep -q "\"$2\"" "$1/image/overlay2/repositories.json"; }

grow_check_mount() {
  local m=$1 id=$2 link=$3 tag=$4
  if grow_within 2 test -d "$m/overlay2/$id/diff/data"; then
    pass "$m: the new layer ${id:0:12}… is there after ${GROW_WAITED}s"
  else
    fail "$m: the new layer ${id:0:12}… is not there 2 s after the catalog was replaced (overlay2: $(ls "$m/overlay2" | tr '\n' ' '))"
  fi
  cmp -s "$S/overlay2/$id/diff/data/big" "$m/overlay2/$id/diff/data/big" && pass "$m: its content reads back identical" \
    || fail "$m: its content differs from the store"
  [[ $(readlink "$m/overlay2/l/$link") == "../$id/diff" ]] && pass "$m: overlay2/l/$link points at it" \
    || fail "$m: overlay2/l/$link: $(readlink "$m/overlay2/l/$link" 2>&1)"
  if grow_within 2 grow_lists_tag "$m" "$tag"; then
    pass "$m: image/overlay2/repositories.json lists $tag after ${GROW_WAITED}s"
  else
    fail "$m: repositories.json does not list $tag 2 s after the catalog was replaced: $(head -c 300 "$m/image/overlay2/repositories.json" 2>&1)"
  fi
}
