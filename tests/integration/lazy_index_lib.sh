# lazy_index_lib.sh — layer indexes read on first use, checked through a real mount (sourced by
# tests/integration/test_lazy_index.sh for a local store and tests/nfs_mount/test_nfs_lazy_index.sh
# over NFSv4, after tests/nfs_mount/nfs_lib.sh and grow_lib.sh).
#
#   lazy_build_store                a store $S with four images over five layers:
#                                   a:1 = A, b:1 = A B, c:1 = C, d:1 = C D, e:1 = E
#   lazy_index_suite SOURCE         the checks below, mounting SOURCE (the store at $S, or a URL
#                                   serving it) with fresh caches under $T
#
# What is checked (every count from `extrafs stats --json`, exact):
#   - the mount reads the catalog and the image/ index only; listing overlay2/, l/ and the layer
#     directories (names), reading link and lower, `extrafs ls` and `extrafs stats` read no
#     layer index;
#   - reading the files of b:1 reads the indexes of A and B and no other (meta_bytes_fetched grows
#     by exactly their sizes; the same figure in --prometheus);
#   - 24 threads reading the files of c:1 and d:1 for the first time at once: all bytes right,
#     each of the two indexes read once;
#   - a remount on the warm cache reads no layer index from the store;
#   - with an empty cache, B's index corrupted and E's missing: the mount starts, A, C and D read
#     right, B and E answer EIO with one log line each; after the store is repaired the same mount
#     serves them (after the back-off), without a remount.

lazy_ids() {
  LA=$(grow_cid lazy-a) LB=$(grow_cid lazy-b) LC=$(grow_cid lazy-c) LD=$(grow_cid lazy-d) LE=$(grow_cid lazy-e)
}

# lazy_publish ID LINK LOWER TAG CHAIN...: grow_publish with six more files in the layer (written
# before it is indexed), so that the concurrent readers below have distinct files to open.
lazy_publish() {
  local i
  mkdir -p "$S/overlay2/$1/diff/data"
  for i in 1 2 3 4 5 6; do head -c $((100000 + i * 7919)) /dev/urandom >"$S/overlay2/$1/diff/data/f$i"; done
  grow_publish "$@"
}

lazy_build_store() {
  lazy_ids
  lazy_publish "$LA" AAAAAAAAAAAAAAAAAAAAAAAAAA "" a:1 "$LA"
  lazy_publish "$LB" BBBBBBBBBBBBBBBBBBBBBBBBBB l/AAAAAAAAAAAAAAAAAAAAAAAAAA b:1 "$LA" "$LB"
  lazy_publish "$LC" CCCCCCCCCCCCCCCCCCCCCCCCCC "" c:1 "$LC"
  lazy_publish "$LD" DDDDDDDDDDDDDDDDDDDDDDDDDD l/CCCCCCCCCCCCCCCCCCCCCCCCCC d:1 "$LC" "$LD"
  lazy_publish "$LE" EEEEEEEEEEEEEEEEEEEEEEEEEE "" e:1 "$LE"
  pass "store with 5 images over 5 layers built and indexed"
}

lazy_index_size() { stat -c %s "$S/extrafs/layers/$1.index"; }

# lazy_stat MNT EXPR: a Python expression over the stats object `j`, printed.
lazy_stat() {
  local out
  out=$(stats_json "$1") || { echo "stats-failed"; return 1; }
  python3 -c '
import json, sys
j = json.loads(sys.argv[1])
print(eval(sys.argv[2]))' "$out" "$2"
}

# lazy_read_layer MNT ID: every file of layer ID read through MNT and compared with the store.
lazy_read_layer() {
  local m=$1 id=$2 f bad=0
  for f in "$S/overlay2/$id/diff/data/"*; do
    cmp -s "$f" "$m/overlay2/$id/diff/data/${f##*/}" || bad=1
  done
  return $bad
}

lazy_index_suite() {
  local src=$1 m=$T/lazy-mnt
  lazy_ids
  local cat_size img_size sa sb sc sd
  cat_size=$(stat -c %s "$S/extrafs/catalog")
  img_size=$(stat -c %s "$S/extrafs/image-$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["image_index"])' "$S/extrafs/catalog").index")
  sa=$(lazy_index_size "$LA") sb=$(lazy_index_size "$LB") sc=$(lazy_index_size "$LC") sd=$(lazy_index_size "$LD")

  step "mount with an empty cache: the catalog and the image/ index only"
  nm_mount "$src" "$m" "$T/lazy-cache1" "cache_size=256M" || die "cannot mount $src"
  local at_mount=$((cat_size + img_size)) got
  got=$(lazy_stat "$m" 'j["meta_bytes_fetched"]')
  [[ $got == "$at_mount" ]] && pass "meta_bytes_fetched $got = catalog $cat_size + image/ index $img_size" \
    || fail "meta_bytes_fetched $got after mounting, expected $at_mount (catalog $cat_size + image/ index $img_size)"
  ls "$m/overlay2" "$m/overlay2/l" >/dev/null || fail "cannot list overlay2/ or l/"
  local id
  for id in "$LA" "$LB" "$LC" "$LD" "$LE"; do
    # Names only: a stat of diff/ itself needs the index (its attributes are the layer root's).
    [[ $(ls "$m/overlay2/$id" | tr '\n' ' ') == "diff link "* ]] || fail "overlay2/${id:0:12}… does not list diff and link"
    [[ $(cat "$m/overlay2/$id/link") == "$(cat "$S/overlay2/$id/link")" ]] || fail "overlay2/${id:0:12}…/link differs"
  done
  [[ $(cat "$m/overlay2/$LD/lower") == l/CCCCCCCCCCCCCCCCCCCCCCCCCC ]] || fail "overlay2/${LD:0:12}…/lower differs"
  [[ $(readlink "$m/overlay2/l/BBBBBBBBBBBBBBBBBBBBBBBBBB") == "../$LB/diff" ]] || fail "l/BBB… does not point at B's diff"
  local rc=0
  timeout 30 "$EXTRAFS" ls "$m" >"$T/lazy-ls.out" 2>&1 || rc=$?
  [[ $rc -eq 0 ]] && grep -q 'e:1' "$T/lazy-ls.out" && pass "extrafs ls on the mount lists the images" \
    || fail "extrafs ls $m: rc $rc: $(head -c 500 "$T/lazy-ls.out")"
  got=$(lazy_stat "$m" '(j["meta_bytes_fetched"], j["layer_indexes_loaded"], sum(l["index_loaded"] for l in j["layers"]))')
  [[ $got == "($at_mount, 0, 0)" ]] && pass "overlay2/, l/, layer directories, link, lower, extrafs ls: no layer index read" \
    || fail "(meta_bytes_fetched, layer_indexes_loaded, loaded layers) = $got, expected ($at_mount, 0, 0)"

  step "reading image b:1 reads the indexes of its layers A and B, no other"
  lazy_read_layer "$m" "$LA" && lazy_read_layer "$m" "$LB" && pass "b:1's files read back identical" || fail "b:1's files differ"
  local want=$((at_mount + sa + sb))
  got=$(lazy_stat "$m" '(j["meta_bytes_fetched"], j["layer_indexes_loaded"])')
  [[ $got == "($want, 2)" ]] && pass "meta_bytes_fetched $want (+ A's $sa + B's $sb), 2 indexes loaded" \
    || fail "(meta_bytes_fetched, layer_indexes_loaded) = $got, expected ($want, 2)"
  got=$(lazy_stat "$m" '" ".join(sorted(l["cache_id"] for l in j["layers"] if l["index_loaded"]))')
  [[ $got == "$(printf '%s\n' "$LA" "$LB" | sort | tr '\n' ' ' | sed 's/ $//')" ]] \
    && pass "per layer: only A and B report index_loaded" || fail "layers with index_loaded: $got, expected A and B only"
  got=$(lazy_stat "$m" 'all(l["bytes_total"] > 3 << 20 for l in j["layers"])')
  [[ $got == True ]] && pass "every layer reports bytes_total (from the catalog where not loaded)" || fail "bytes_total: $(stats_json "$m")"
  got=$(timeout 10 "$EXTRAFS" stats "$m" --prometheus | sed -n 's/^extrafs_meta_bytes_fetched_total //p')
  [[ $got == "$want" ]] && pass "--prometheus: extrafs_meta_bytes_fetched_total $got" || fail "--prometheus meta bytes: '$got', expected $want"

  step "24 threads read c:1 and d:1 for the first time at once"
  python3 - "$m" "$S" "$LC" "$LD" <<'PY' || fail "concurrent first reads failed (above)"
import os, sys, threading
mnt, store, c, d = sys.argv[1:5]
files = [(lid, "data/" + n) for lid in (c, d) for n in ["big", "small"] + ["f%d" % i for i in range(1, 7)]]
jobs = [files[i % len(files)] for i in range(24)]
start = threading.Barrier(len(jobs))
errors = []
def read(lid, rel):
    start.wait()
    try:
        with open(os.path.join(mnt, "overlay2", lid, "diff", rel), "rb") as f:
            got = f.read()
        if got != open(os.path.join(store, "overlay2", lid, "diff", rel), "rb").read():
            errors.append("%s/%s differs" % (lid[:12], rel))
    except OSError as e:
        errors.append("%s/%s: %s" % (lid[:12], rel, e))
threads = [threading.Thread(target=read, args=j) for j in jobs]
for t in threads: t.start()
for t in threads: t.join(120)
alive = sum(t.is_alive() for t in threads)
if alive or errors:
    print("  FAIL: %d readers still running, errors: %s" % (alive, errors[:5]))
    sys.exit(1)
print("  ok: 24 readers, every byte right")
PY
  want=$((want + sc + sd))
  got=$(lazy_stat "$m" '(j["meta_bytes_fetched"], j["layer_indexes_loaded"])')
  [[ $got == "($want, 4)" ]] && pass "each of the two indexes read once (meta_bytes_fetched $want)" \
    || fail "(meta_bytes_fetched, layer_indexes_loaded) = $got, expected ($want, 4)"
  nm_unmount "$m"

  step "remount on the warm cache: indexes come from the cache, not the store"
  nm_mount "$src" "$m" "$T/lazy-cache1" "cache_size=256M" || die "cannot remount $src"
  lazy_read_layer "$m" "$LB" && lazy_read_layer "$m" "$LD" && pass "B and D read back identical" || fail "B or D differ after the remount"
  got=$(lazy_stat "$m" '(j["meta_bytes_fetched"], j["bytes_fetched"])')
  [[ $got == "($cat_size, 0)" ]] && pass "only the catalog ($cat_size bytes) read from the store, no chunk" \
    || fail "(meta_bytes_fetched, bytes_fetched) = $got after the remount, expected ($cat_size, 0)"
  nm_unmount "$m"

  step "empty cache, B's index corrupted, E's missing: the mount starts, the other layers read"
  cp -p "$S/extrafs/layers/$LB.index" "$T/b.index.orig"
  mv "$S/extrafs/layers/$LE.index" "$T/e.index.orig"
  python3 - "$S/extrafs/layers/$LB.index" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(os.path.getsize(sys.argv[1]) // 2)
    b = f.read(1)
    f.seek(-1, 1)
    f.write(bytes([b[0] ^ 0x55]))
PY
  mkdir -p "$m"
  "$EXTRAFS" mount "$src" "$m" -f -o "cache=$T/lazy-cache2,cache_size=256M,log_level=info,timeout=3" 2>"$T/lazy-daemon.err" &
  local dpid=$!
  track_pid "$dpid"
  track_mount "$m"
  serves() { stat -- "$m/overlay2" >/dev/null 2>&1 && is_mounted "$m"; }
  wait_until 30 serves || die "the mount with a corrupt and a missing index did not start: $(head -c 500 "$T/lazy-daemon.err")"
  pass "mounted with B's index corrupt and E's missing"
  lazy_read_layer "$m" "$LA" && lazy_read_layer "$m" "$LC" && lazy_read_layer "$m" "$LD" \
    && pass "A, C and D read back identical" || fail "A, C or D differ"
  for id in "$LB" "$LE"; do
    for _ in 1 2 3; do
      rc=0; err=$(cat "$m/overlay2/$id/diff/data/small" 2>&1 >/dev/null) || rc=$?
      [[ $rc -ne 0 && $err == *"Input/output error"* ]] || fail "layer ${id:0:12}…: cat rc $rc, '$err' (expected EIO)"
    done
  done
  [[ $(cat "$m/overlay2/$LB/link") == BBBBBBBBBBBBBBBBBBBBBBBBBB ]] && pass "B and E answer EIO; B's link still answers" \
    || fail "B's link does not answer"
  local nb ne
  nb=$(grep -c "$LB.index" "$T/lazy-daemon.err" || true)
  ne=$(grep -c "$LE.index" "$T/lazy-daemon.err" || true)
  [[ $nb == 1 && $ne == 1 ]] && pass "one log line each: $(grep "$LB.index" "$T/lazy-daemon.err" | sed -E 's/^\[[^]]*\] //')" \
    || fail "log lines naming B's index: $nb, E's: $ne (expected 1 each): $(head -c 1000 "$T/lazy-daemon.err")"

  step "the store repaired: the same mount serves B and E after the back-off"
  cp -p "$T/b.index.orig" "$S/extrafs/layers/$LB.index"
  mv "$T/e.index.orig" "$S/extrafs/layers/$LE.index"
  both_read() { lazy_read_layer "$m" "$LB" 2>/dev/null && lazy_read_layer "$m" "$LE" 2>/dev/null; }
  timed wait_until 15 both_read && pass "B and E read back identical, same mount, ${TIME_TAKEN} s after the repair" \
    || fail "B or E still unreadable 15 s after the repair"
  grep -q "index of layer $LB loaded" "$T/lazy-daemon.err" && pass "recovery logged" || fail "no recovery line: $(tail -c 500 "$T/lazy-daemon.err")"
  nm_unmount "$m"
  wait_until 10 pid_gone "$dpid" || fail "foreground daemon still running after unmount"
}
