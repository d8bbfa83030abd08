#!/bin/bash
# A store published with `publish --order` records each layer's ordered prefix in its catalog;
# a mount of it (local directory and NFSv4) fetches a layer's whole prefix in the background on
# the first look at its diff/: after reading one traced file, the other traced files' chunks
# arrive without being read, in a few large backend reads, and every byte read equals the
# source; `docker attach` (which checks each layer's diff/) starts the prefix of a layer nothing
# has read yet, and the prefixes of several layers started at once all come whole, even beyond
# what the daemon queues at a time. A store without the key behaves as before; a hostile value
# is clamped (huge) or refused (not a number) with one line, and never crashes the daemon.
set -euo pipefail
source "$(dirname "$0")/nfs_lib.sh"
nm_init "$@"

step "an image of two layers in a docker save archive; a plain store of it; a trace of a start-up"
SRC=$T/src
random_file "$SRC/base/bin/app" $((1 * MiB)) app
random_file "$SRC/base/lib/a" $((3 * MiB)) a
random_file "$SRC/base/lib/b" $((2 * MiB)) b
random_file "$SRC/base/opt/unread" $((8 * MiB)) unread
random_file "$SRC/top/app/main" $((1 * MiB)) main
random_file "$SRC/top/app/unused" $((4 * MiB)) unused
python3 "$HERE/../integration/make_save_archive.py" "$T/img.tar" ord:1 "$SRC/base" "$SRC/top" || die "make_save_archive.py failed"
STORES=$T/stores
"$EXTRAFS" publish --archive "$T/img.tar" --to "$STORES/plain" >"$T/pub.out" 2>&1 || die "publish plain: $(cat "$T/pub.out")"
# The cache-ids of a store's two layers, base first (publish lists them in that order).
layers_of() { python3 -c 'import json,sys; print(*[l["cache_id"] for l in json.load(open(sys.argv[1]))["layers"]])' "$1/extrafs/catalog"; }
read -r PBASE PTOP < <(layers_of "$STORES/plain")
mkdir -p "$T/m/rec" "$T/rec"
nm_mount "$STORES/plain" "$T/m/rec" "$T/c/rec" "record=$T/rec" || die "mount of the plain store failed"
for f in "$PBASE/diff/bin/app" "$PBASE/diff/lib/a" "$PBASE/diff/lib/b" "$PTOP/diff/app/main"; do
  cat "$T/m/rec/overlay2/$f" >/dev/null || die "reading $f through the recording mount failed"
done
"$EXTRAFS" unmount "$T/m/rec"
TRACE=$(ls "$T"/rec/trace-*.txt)
[[ $(wc -l <"$TRACE") == 4 ]] && pass "trace of 4 files" || die "trace: $(cat "$TRACE")"

step "publish --order: the catalog records each layer's ordered prefix"
"$EXTRAFS" publish --archive "$T/img.tar" --to "$STORES/ordered" --order "$TRACE" >"$T/pub.out" 2>&1 ||
  die "publish --order: $(cat "$T/pub.out")"
grep -q "7.0 MiB of it in trace order first" "$T/pub.out" && pass "$(cat "$T/pub.out")" || fail "publish said: $(cat "$T/pub.out")"
# Random content is stored raw (lz4 does not pay): the prefix is exactly the traced files' sizes.
# (The ordered store got its own cache-ids: the trace's paths are matched in every layer.)
read -r OBASE OTOP < <(python3 - "$STORES/ordered/extrafs/catalog" $((6 * MiB)) $((1 * MiB)) <<'PY'
import json, sys
cat = json.load(open(sys.argv[1]))
layers = cat["layers"]
assert [l.get("ordered_prefix") for l in layers] == [int(sys.argv[2]), int(sys.argv[3])], layers
print(layers[0]["cache_id"], layers[1]["cache_id"])
PY
) && pass "base layer: 6 MiB (bin/app, lib/a, lib/b), top layer: 1 MiB (app/main)" || die "catalog: $(cat "$STORES/ordered/extrafs/catalog")"
python3 - "$STORES/plain/extrafs/catalog" <<'PY' && pass "the plain store's catalog has no ordered_prefix" || fail "plain catalog has the key"
import json, sys
assert all("ordered_prefix" not in l for l in json.load(open(sys.argv[1]))["layers"])
PY

stats() { "$EXTRAFS" stats "$1" --json; }
field() { stats "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
layer_cached() { stats "$1" | python3 -c "import json,sys; print(sum(l['bytes_cached'] for l in json.load(sys.stdin)['layers'] if l['cache_id'] == '$2'))"; }
cached_at_least() { (($(layer_cached "$1" "$2") >= $3)); }
same() { cmp -s "$1" "$2"; }

# check_prefix LABEL MNT: the first read of one traced file brings the rest of the base prefix.
check_prefix() {
  local label=$1 mnt=$2 d f
  d=$mnt/overlay2/$OBASE/diff
  [[ $(field "$mnt" prefetches) == 0 && $(field "$mnt" chunks_fetched) == 0 ]] \
    && pass "$label: nothing fetched at mount" || fail "$label: fetched at mount: $(stats "$mnt")"
  same "$SRC/base/bin/app" "$d/bin/app" && pass "$label: bin/app read, equal to the source" || fail "$label: bin/app differs"
  if wait_until 20 cached_at_least "$mnt" "$OBASE" $((6 * MiB)); then
    pass "$label: the base layer's 6 MiB prefix arrived without being read ($(field "$mnt" prefetches) chunks prefetched)"
  else
    fail "$label: base layer cached $(layer_cached "$mnt" "$OBASE") bytes after 20 s: $(stats "$mnt")"
  fi
  local cached
  cached=$(layer_cached "$mnt" "$OBASE")
  [[ $cached == $((6 * MiB)) ]] && pass "$label: and nothing beyond it (opt/unread not fetched)" || fail "$label: base cached $cached bytes"
  [[ $(layer_cached "$mnt" "$OTOP") == 0 ]] && pass "$label: the untouched top layer's prefix is not fetched" \
    || fail "$label: top layer cached $(layer_cached "$mnt" "$OTOP")"
  (($(field "$mnt" prefetches) >= 5)) && pass "$label: prefetches counted" || fail "$label: prefetches $(field "$mnt" prefetches)"
  local before
  before=$(field "$mnt" chunks_fetched)
  for f in lib/a lib/b; do same "$SRC/base/$f" "$d/$f" && pass "$label: $f equal to the source" || fail "$label: $f differs"; done
  [[ $(field "$mnt" chunks_fetched) == "$before" ]] && pass "$label: reading lib/a and lib/b fetched nothing more" \
    || fail "$label: chunks_fetched $before -> $(field "$mnt" chunks_fetched)"
  # Backend reads: one per at most 1 MiB, so at most 6 for the prefix plus bin/app's own.
  local reads
  reads=$(stats "$mnt" | python3 -c "import json,sys; print(json.load(sys.stdin)['fetch_seconds']['count'])")
  ((reads <= 7)) && pass "$label: $reads backend reads for 6 MiB" || fail "$label: $reads backend reads"
  # docker attach checks each layer's diff/ in the mount: that look starts the top layer's
  # prefix, with nothing under it read (a container's first start then finds it here).
  rm -rf "$T/dr-$label"
  "$EXTRAFS" docker attach ord:1 --mount "$mnt" --data-root "$T/dr-$label" >"$T/attach.out" 2>&1 \
    || fail "$label: docker attach: $(cat "$T/attach.out")"
  if wait_until 20 cached_at_least "$mnt" "$OTOP" $((1 * MiB)); then
    pass "$label: docker attach started the top layer's 1 MiB prefix"
  else
    fail "$label: top layer cached $(layer_cached "$mnt" "$OTOP") bytes 20 s after attach: $(stats "$mnt")"
  fi
  [[ $(layer_cached "$mnt" "$OTOP") == $((1 * MiB)) ]] && pass "$label: and only it (app/unused not fetched)" \
    || fail "$label: top layer cached $(layer_cached "$mnt" "$OTOP") bytes"
  for f in opt/unread; do same "$SRC/base/$f" "$d/$f" && pass "$label: $f equal to the source" || fail "$label: $f differs"; done
  same "$SRC/top/app/main" "$mnt/overlay2/$OTOP/diff/app/main" && same "$SRC/top/app/unused" "$mnt/overlay2/$OTOP/diff/app/unused" \
    && pass "$label: the top layer reads equal to the source" || fail "$label: top layer differs"
  [[ $(field "$mnt" backend_errors) == 0 ]] && pass "$label: no backend errors" || fail "$label: backend errors"
}

step "local mount of the ordered store"
nm_mount "$STORES/ordered" "$T/m/local" "$T/c/local" || die "mount failed"
check_prefix local "$T/m/local"
"$EXTRAFS" unmount "$T/m/local"

step "NFSv4 mount of the ordered store"
nm_start_ganesha "$STORES" 4
nm_mount "$NFS4_URL/ordered" "$T/m/nfs" "$T/c/nfs" || die "NFS mount failed"
check_prefix nfs "$T/m/nfs"
"$EXTRAFS" unmount "$T/m/nfs"

step "one attach starts two layers' prefixes of 20 MiB each: more than is queued at once (32 MiB), both come whole"
SRC2=$T/src2
random_file "$SRC2/base/big/a" $((20 * MiB)) big-a
random_file "$SRC2/top/big/b" $((20 * MiB)) big-b
random_file "$SRC2/top/big/unread" $((4 * MiB)) big-unread
python3 "$HERE/../integration/make_save_archive.py" "$T/big.tar" big:1 "$SRC2/base" "$SRC2/top" || die "make_save_archive.py failed"
# A trace names paths; publish --order matches them in every layer.
printf '%s 1 big/a\n%s 1 big/b\n' x y >"$T/big.trace"
"$EXTRAFS" publish --archive "$T/big.tar" --to "$STORES/big" --order "$T/big.trace" >"$T/pub.out" 2>&1 ||
  die "publish --order big:1: $(cat "$T/pub.out")"
grep -q "40.0 MiB of it in trace order first" "$T/pub.out" && pass "$(cat "$T/pub.out")" || fail "publish said: $(cat "$T/pub.out")"
read -r BBASE BTOP < <(layers_of "$STORES/big")
nm_mount "$NFS4_URL/big" "$T/m/big" "$T/c/big" || die "NFS mount of the big store failed"
"$EXTRAFS" docker attach big:1 --mount "$T/m/big" --data-root "$T/dr-big" >"$T/attach.out" 2>&1 \
  || fail "docker attach big:1: $(cat "$T/attach.out")"
both_whole() { cached_at_least "$T/m/big" "$BBASE" $((20 * MiB)) && cached_at_least "$T/m/big" "$BTOP" $((20 * MiB)); }
if wait_until 30 both_whole; then
  pass "both prefixes arrived whole without being read ($(field "$T/m/big" prefetches) chunks prefetched)"
else
  fail "30 s after attach: base $(layer_cached "$T/m/big" "$BBASE"), top $(layer_cached "$T/m/big" "$BTOP") bytes cached"
fi
[[ $(layer_cached "$T/m/big" "$BTOP") == $((20 * MiB)) ]] && pass "and nothing beyond them (big/unread not fetched)" \
  || fail "top layer cached $(layer_cached "$T/m/big" "$BTOP") bytes"
same "$SRC2/base/big/a" "$T/m/big/overlay2/$BBASE/diff/big/a" && same "$SRC2/top/big/b" "$T/m/big/overlay2/$BTOP/diff/big/b" \
  && same "$SRC2/top/big/unread" "$T/m/big/overlay2/$BTOP/diff/big/unread" && pass "every file equal to the source" \
  || fail "big:1 differs from the source"
"$EXTRAFS" unmount "$T/m/big"

step "a store without the key behaves as before"
nm_mount "$NFS4_URL/plain" "$T/m/plain" "$T/c/plain" || die "NFS mount of the plain store failed"
same "$SRC/base/bin/app" "$T/m/plain/overlay2/$PBASE/diff/bin/app" && pass "bin/app equal to the source" || fail "bin/app differs"
sleep 1
[[ $(field "$T/m/plain" prefetches) == 0 && $(layer_cached "$T/m/plain" "$PBASE") == $((1 * MiB)) ]] \
  && pass "only bin/app fetched, no prefetch" || fail "plain store: $(stats "$T/m/plain")"
"$EXTRAFS" unmount "$T/m/plain"

# set_prefix JSON_VALUE: rewrites the hostile store's catalog with the base layer's ordered_prefix
# set to JSON_VALUE and a valid checksum (xxh3-128 of the canonical form, through libxxhash), as a
# hostile or broken publisher could.
set_prefix() {
  python3 - "$STORES/hostile/extrafs/catalog" "$1" <<'PY'
import ctypes, json, sys
class H(ctypes.Structure):
    _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]
lib = ctypes.CDLL("libxxhash.so.0")
lib.XXH3_128bits.restype = H
lib.XXH3_128bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
path, value = sys.argv[1], json.loads(sys.argv[2])
cat = json.load(open(path))
cat["layers"][0]["ordered_prefix"] = value
cat.pop("checksum")
canon = json.dumps(cat, sort_keys=True, separators=(",", ":")).encode()
h = lib.XXH3_128bits(canon, len(canon))
cat["checksum"] = "%016x%016x" % (h.high64, h.low64)
open(path, "w").write(json.dumps(cat, indent=1) + "\n")
PY
}

step "a hostile ordered_prefix: huge is clamped with one line, not a number is refused with one line"
cp -a "$STORES/ordered" "$STORES/hostile"
set_prefix 18446744073709551615
mkdir -p "$T/m/hostile"
"$EXTRAFS" mount "$STORES/hostile" "$T/m/hostile" -f -o "cache=$T/c/hostile,log_level=warn" >"$T/daemon.log" 2>&1 &
DPID=$!
track_pid "$DPID"
track_mount "$T/m/hostile"
wait_until 20 is_mounted "$T/m/hostile" || die "not mounted after 20 s: $(cat "$T/daemon.log")"
d=$T/m/hostile/overlay2/$OBASE/diff
same "$SRC/base/bin/app" "$d/bin/app" && pass "bin/app equal to the source" || fail "bin/app differs"
# Clamped to the blob: the whole base layer (14 MiB, within half the 64 MiB memory LRU) comes.
if wait_until 30 cached_at_least "$T/m/hostile" "$OBASE" $((14 * MiB)); then
  pass "the whole blob prefetched, and no more"
else
  fail "base layer cached $(layer_cached "$T/m/hostile" "$OBASE") bytes"
fi
bad=0
for f in bin/app lib/a lib/b opt/unread; do same "$SRC/base/$f" "$d/$f" || { fail "$f differs"; bad=1; }; done
[[ $bad == 0 ]] && pass "every file of the layer equal to the source"
n=$(grep -c "is beyond the $((14 * MiB)) bytes of chunks in its blob; clamped" "$T/daemon.log" || true)
[[ $n == 1 ]] && pass "one line: $(grep clamped "$T/daemon.log")" || fail "clamp lines: $n; log: $(head -c 2000 "$T/daemon.log")"
kill -0 "$DPID" && pass "daemon still running" || fail "daemon died"
"$EXTRAFS" unmount "$T/m/hostile"
wait_until 20 pid_gone "$DPID" || fail "daemon did not exit after unmount"

set_prefix '"6291456"'
rc=0
timeout 60 "$EXTRAFS" mount "$STORES/hostile" "$T/m/hostile" -o "cache=$T/c/hostile2" >"$T/mount.out" 2>"$T/mount.err" || rc=$?
track_mount "$T/m/hostile"
[[ $rc == 1 && $(wc -l <"$T/mount.err") == 1 ]] && grep -q "bad ordered_prefix for $OBASE" "$T/mount.err" \
  && pass "refused: $(cat "$T/mount.err")" || fail "mount of a string prefix: rc $rc: $(cat "$T/mount.err")"
is_mounted "$T/m/hostile" && fail "it mounted anyway" || true
finish
