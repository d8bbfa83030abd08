#!/bin/bash
# mount -o record=DIR writes first-access traces; extrafs prefetch warms a fresh cache with a
# whole image or with just the files of a trace.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
require_env
setup_tmp

step "a two-layer store with image metadata"
S=$T/store
base=$(printf 'pf-base' | sha256sum | cut -c1-64) top=$(printf 'pf-top' | sha256sum | cut -c1-64)
mkdir -p "$S/overlay2/$base/diff/lib" "$S/overlay2/$top/diff/app" "$S/overlay2/l" "$T/mnt" "$T/rec"
for f in a b c; do head -c $((3 * 1024 * 1024)) /dev/urandom >"$S/overlay2/$base/diff/lib/$f"; done
head -c $((2 * 1024 * 1024)) /dev/urandom >"$S/overlay2/$top/diff/app/main"
head -c $((4 * 1024 * 1024)) /dev/urandom >"$S/overlay2/$top/diff/app/unused"
printf 'AAAAAAAAAAAAAAAAAAAAAAAAAA' >"$S/overlay2/$base/link"
printf 'BBBBBBBBBBBBBBBBBBBBBBBBBB' >"$S/overlay2/$top/link"
printf 'l/AAAAAAAAAAAAAAAAAAAAAAAAAA' >"$S/overlay2/$top/lower"
python3 "$HERE/make_image_meta.py" "$S" app:1 "$base" "$top" >/dev/null
"$EXTRAFS" index "$S" >/dev/null

step "a recorded start-up: the first open of each file is traced"
mount_extrafs "$S" "$T/mnt" "record=$T/rec"
cat "$T/mnt/overlay2/$top/diff/app/main" "$T/mnt/overlay2/$base/diff/lib/b" "$T/mnt/overlay2/$top/diff/app/main" >/dev/null
"$EXTRAFS" unmount "$T/mnt"
trace=$(ls "$T"/rec/*)
[[ $(wc -l <"$trace") == 2 ]] && pass "two files traced once each" || fail "trace: $(cat "$trace")"
[[ $(head -1 "$trace") == "$top "*" app/main" && $(tail -1 "$trace") == "$base "*" lib/b" ]] \
  && pass "in first-access order with layer and path" || fail "trace: $(cat "$trace")"

fetched() { "$EXTRAFS" stats "$T/mnt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_fetched"])'; }

step "prefetch --trace fetches exactly the traced files into a fresh cache"
rm -rf "$T/cache"
mount_extrafs "$S" "$T/mnt"
out=$("$EXTRAFS" prefetch "$T/mnt" app:1 --trace "$trace")
echo "  $out"
# The image metadata (config, layerdb, repositories.json) is read through the mount too: a few
# hundred bytes on top of the layer data.
MiB=$((1024 * 1024))
f1=$(fetched)
((f1 >= 5 * MiB && f1 < 5 * MiB + 65536)) && pass "5 MiB of layer data fetched (main + lib/b), $f1 bytes in all" || fail "fetched $f1 bytes"
cat "$T/mnt/overlay2/$top/diff/app/main" "$T/mnt/overlay2/$base/diff/lib/b" >/dev/null
[[ $(fetched) == "$f1" ]] && pass "reading them afterwards fetches nothing" || fail "fetched $(fetched) bytes after reading"

step "prefetch of the whole image caches every layer fully"
"$EXTRAFS" prefetch "$T/mnt" app:1 >/dev/null
"$EXTRAFS" stats "$T/mnt" --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert all(l["bytes_cached"] == l["bytes_total"] > 0 for l in j["layers"]), j["layers"]
assert 15 << 20 <= j["bytes_fetched"] < (15 << 20) + 65536, j["bytes_fetched"]' && pass "every layer 100% cached, each byte fetched once" || fail "after prefetch: $("$EXTRAFS" stats "$T/mnt" --json)"
cmp "$S/overlay2/$top/diff/app/unused" "$T/mnt/overlay2/$top/diff/app/unused" && pass "content identical" || fail "content differs"

step "bad input"
rc=0; "$EXTRAFS" prefetch "$T/mnt" nope:1 2>"$T/err" || rc=$?
[[ $rc == 1 && $(wc -l <"$T/err") == 1 ]] && grep -q "nope:1" "$T/err" && pass "unknown image: $(cat "$T/err")" || fail "unknown image: rc $rc $(cat "$T/err")"
rc=0; "$EXTRAFS" prefetch "$T" app:1 2>"$T/err" || rc=$?
[[ $rc == 1 ]] && grep -q "not an extrafs mount" "$T/err" && pass "not a mount: $(cat "$T/err")" || fail "not a mount: rc $rc $(cat "$T/err")"
rc=0; "$EXTRAFS" prefetch "$T/mnt" app:1 --trace "$T/missing" 2>"$T/err" || rc=$?
[[ $rc == 1 ]] && pass "missing trace: $(cat "$T/err")" || fail "missing trace: rc $rc"
"$EXTRAFS" unmount "$T/mnt"
finish
