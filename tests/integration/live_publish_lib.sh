# live_publish_lib.sh — `extrafs publish` into a store while mounts read it (issue 8, item 3);
# sourced by test_publish_live.sh (local store) and tests/nfs_mount/test_nfs_publish_live.sh
# (nfs-ganesha), after lib.sh.
#
# Uses $EXTRAFS, $T and $HERE (tests/integration). Provides:
#   lp_prepare STORE     two `docker save` archives (one:1 = base; two:1 = base + top, built with
#                        make_save_archive.py), one:1 published into STORE; sets LP_STORE, LP_BASE
#                        (the base layer's cache-id)
#   lp_run MNT...        4 readers per mount loop over every image/ file and every file of the
#                        base layer (page cache dropped after each read) while
#                        `extrafs publish --archive two.tar` runs; then: two:1, its config and its
#                        new layer are visible in each MNT within 2 s of the publish's exit, every
#                        read succeeded and read either the old or the new content of its file
#                        (image/) or its source bytes (layers)

LP_PY=(python3 "$HERE/live_publish.py")
MiB=$((1024 * 1024))

lp_prepare() {
  LP_STORE=$1
  mkdir -p "$T/src/base/data/dir" "$T/src/base/etc" "$T/src/top/app"
  head -c $((3 * MiB + 17)) /dev/urandom >"$T/src/base/data/blob"
  seq 1 50000 >"$T/src/base/data/text"
  echo base >"$T/src/base/etc/name"
  for i in $(seq 1 20); do head -c $((i * 700)) /dev/urandom >"$T/src/base/data/dir/f$i"; done
  head -c $((2 * MiB)) /dev/urandom >"$T/src/top/app/main"
  echo top >"$T/src/top/app/name"
  python3 "$HERE/make_save_archive.py" "$T/one.tar" one:1 "$T/src/base" || die "make_save_archive.py one.tar failed"
  python3 "$HERE/make_save_archive.py" "$T/two.tar" two:1 "$T/src/base" "$T/src/top" || die "make_save_archive.py two.tar failed"
  timeout 300 "$EXTRAFS" publish --archive "$T/one.tar" --to "$LP_STORE" >"$T/publish1.out" 2>&1 \
    || die "extrafs publish --archive one.tar failed: $(head -c 1000 "$T/publish1.out")"
  LP_BASE=$(lp_layers "$LP_STORE")
  [[ $LP_BASE =~ ^[0-9a-f]{64}$ ]] || die "one:1 should have one layer in the store, found: $LP_BASE"
  pass "one:1 published (base layer ${LP_BASE:0:12}…)"
}

lp_layers() { find "$1/overlay2" -mindepth 1 -maxdepth 1 -type d ! -name l -printf '%f\n' | sort; }

lp_run() {
  local mnts=("$@") m i list pids=() outs=() rc

  step "4 readers per mount loop over image/ files and the base layer while two:1 is published"
  for m in "${mnts[@]}"; do
    list=$T/list${m//\//_}
    "${LP_PY[@]}" files "$list" "$m" "$LP_STORE/image" "$LP_BASE" "$T/src/base" \
      || die "cannot list the files to read"
    for i in 1 2 3 4; do
      "${LP_PY[@]}" read "$list" "$T/stop" "$T/reader.${#outs[@]}.json" 300 \
        >"$T/reader.${#outs[@]}.log" 2>&1 &
      pids+=($!)
      track_pid $!
      outs+=("$T/reader.${#outs[@]}.json")
    done
  done
  cp -a "$LP_STORE/image" "$T/image.before"
  sleep 1   # every reader is looping before the publish starts
  rc=0
  timeout 300 "$EXTRAFS" publish --archive "$T/two.tar" --to "$LP_STORE" >"$T/publish2.out" 2>&1 || rc=$?
  [[ $rc -eq 0 ]] || fail "extrafs publish --archive two.tar exited $rc: $(head -c 1000 "$T/publish2.out")"
  cp -a "$LP_STORE/image" "$T/image.after"
  local top config
  top=$(comm -13 <(echo "$LP_BASE") <(lp_layers "$LP_STORE"))
  config=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["Repositories"]["two"]["two:1"].split(":")[1])' \
    "$LP_STORE/image/overlay2/repositories.json") || die "two:1 is not in the store's repositories.json"
  [[ $top =~ ^[0-9a-f]{64}$ ]] || die "two:1 should have added one layer, added: $top"

  local out
  for m in "${mnts[@]}"; do
    rc=0
    out=$("${LP_PY[@]}" visible 2 "$m" two:1 "$config" "$top" "$T/src/top") || rc=$?
    if [[ $rc -eq 0 ]]; then
      pass "$m: two:1, its config and its layer are there ${out} s after the publish"
    else
      fail "$m: $out"
    fi
  done
  sleep 1   # the readers also read the image/ tree of the new catalog
  touch "$T/stop"
  for i in "${!pids[@]}"; do
    rc=0
    wait "${pids[$i]}" || rc=$?
    [[ $rc -eq 0 ]] || fail "reader $i exited $rc: $(tail -3 "$T/reader.$i.log")"
  done

  "${LP_PY[@]}" allowed "$T/allowed.json" "$T/image.before" "$T/image.after" "${mnts[0]}" "$LP_BASE" "$T/src/base" \
    || die "cannot compute the expected contents"
  for m in "${mnts[@]:1}"; do
    "${LP_PY[@]}" allowed "$T/allowed.more.json" "$T/image.before" "$T/image.after" "$m" "$LP_BASE" "$T/src/base" \
      || die "cannot compute the expected contents"
    python3 -c 'import json, sys; a = json.load(open(sys.argv[1])); a.update(json.load(open(sys.argv[2]))); json.dump(a, open(sys.argv[1], "w"))' \
      "$T/allowed.json" "$T/allowed.more.json" || die "cannot merge the expected contents"
  done
  rc=0
  out=$("${LP_PY[@]}" check "$T/allowed.json" "${outs[@]}") || rc=$?
  if [[ $rc -eq 0 ]]; then
    pass "no failed read, every read as its source: $(tail -1 <<<"$out")"
  else
    fail "readers: $(head -c 3000 <<<"$out")"
  fi
}
