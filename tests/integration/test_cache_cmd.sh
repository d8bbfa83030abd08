#!/bin/bash
# extrafs cache stat|verify|gc on a real cache filled through a real mount, extrafs stats, and
# extrafs verify of a store.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
require_env
setup_tmp

step "a store with one layer of 5 MiB"
id=$(printf 'cache-cmd' | sha256sum | cut -c1-64)
d=$T/store/overlay2/$id/diff
mkdir -p "$d" "$T/store/overlay2/l" "$T/mnt"
head -c $((5 * 1024 * 1024)) /dev/urandom >"$d/blob"
echo LINKLINKLINKLINKLINKLINK00 >"$T/store/overlay2/$id/link"
"$EXTRAFS" index "$T/store" >/dev/null

step "read it through a mount; stats and cache stat agree"
mount_extrafs "$T/store" "$T/mnt"
cmp "$d/blob" "$T/mnt/overlay2/$id/diff/blob" && pass "content identical" || fail "content differs"
json=$("$EXTRAFS" stats "$T/mnt" --json)
python3 - "$json" "$id" <<'PY' && pass "stats --json: 5 chunks fetched, layer 100% cached" || fail "stats --json wrong: $json"
import json, sys
j = json.loads(sys.argv[1])
for k in ("bytes_fetched", "bytes_served", "chunks_fetched", "cache_hits", "cache_misses", "cache_bytes", "backend_errors", "layers"):
    assert k in j, k
assert j["chunks_fetched"] == 5 and j["bytes_fetched"] == 5 << 20, j
assert j["backend_errors"] == 0
(l,) = [l for l in j["layers"] if l["cache_id"] == sys.argv[2]]
assert l["bytes_total"] == 5 << 20 and l["bytes_cached"] == 5 << 20, l
PY
# Captured first: grep -q stops reading at its match, and the writer would die of SIGPIPE.
prom=$("$EXTRAFS" stats "$T/mnt" --prometheus)
grep -q "^extrafs_chunks_fetched_total 5$" <<<"$prom" && pass "prometheus format" || fail "prometheus output"
out=$("$EXTRAFS" cache stat --cache "$T/cache")
grep -q "chunks          5 (5.0 MiB)" <<<"$out" && pass "cache stat counts 5 chunks" || fail "cache stat: $out"
grep -q "in use by       extrafs pid" <<<"$out" && pass "cache stat names the daemon using it" || fail "cache stat: $out"
rc=0; "$EXTRAFS" cache verify --cache "$T/cache" 2>"$T/err" || rc=$?
[[ $rc == 1 ]] && grep -q "in use" "$T/err" && pass "verify refuses a cache in use: $(cat "$T/err")" || fail "verify on a busy cache: rc $rc $(cat "$T/err")"
"$EXTRAFS" unmount "$T/mnt"

step "verify finds a corrupted chunk; gc evicts down to a size"
chunk=$(find "$T/cache/chunks" -type f | head -1)
flip_byte "$chunk" 1000 || die "cannot damage $chunk"
rc=0; out=$("$EXTRAFS" cache verify --cache "$T/cache") || rc=$?
[[ $rc == 1 && $out == *"1 corrupt chunks dropped"* ]] && pass "verify: $out" || fail "verify: rc $rc: $out"
[[ ! -e $chunk ]] && pass "the corrupt chunk is gone" || fail "the corrupt chunk is still there"
out=$("$EXTRAFS" cache verify --cache "$T/cache") && pass "verify is clean afterwards: $out" || fail "second verify: $out"
"$EXTRAFS" cache gc --cache "$T/cache" --size 2M >/dev/null
n=$(find "$T/cache/chunks" -type f | wc -l)
[[ $n == 2 ]] && pass "gc --size 2M keeps 2 chunks" || fail "gc --size 2M left $n chunks"
rc=0; "$EXTRAFS" cache gc --cache "$T/cache" --size lots 2>/dev/null || rc=$?
[[ $rc == 2 ]] && pass "bad --size is a usage error" || fail "bad --size: rc $rc"
rc=0; "$EXTRAFS" cache stat --cache "$T/nope" 2>/dev/null || rc=$?
[[ $rc == 1 ]] && pass "missing cache dir: exit 1" || fail "missing cache dir: rc $rc"

step "a remount reads the rest again and serves correct bytes"
mount_extrafs "$T/store" "$T/mnt"
cmp "$d/blob" "$T/mnt/overlay2/$id/diff/blob" && pass "content identical after gc" || fail "content differs after gc"
fetched=$("$EXTRAFS" stats "$T/mnt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks_fetched"])')
[[ $fetched == 3 ]] && pass "only the 3 evicted chunks were fetched again" || fail "fetched $fetched chunks, expected 3"
"$EXTRAFS" unmount "$T/mnt"

step "extrafs verify STORE checks every chunk"
out=$("$EXTRAFS" verify "$T/store") && [[ $out == *"5 chunks"*"all good"* ]] && pass "intact store: $out" || fail "verify of an intact store: $out"
cp "$d/blob" "$T/blob.orig"
flip_byte "$d/blob" $((3 * 1024 * 1024 + 5)) || die "cannot damage $d/blob"
rc=0; "$EXTRAFS" verify "$T/store" >"$T/out" 2>"$T/err" || rc=$?
[[ $rc == 1 ]] && grep -q "/blob at offset 3145728" "$T/err" && [[ $(wc -l <"$T/err") == 1 ]] \
  && pass "a changed chunk is named: $(cat "$T/err")" || fail "verify of a damaged store: rc $rc: $(cat "$T/err")"
cp "$T/blob.orig" "$d/blob"
rc=0; "$EXTRAFS" verify "$T/nothing-here" 2>"$T/err" || rc=$?
[[ $rc == 1 && $(wc -l <"$T/err") == 1 ]] && pass "missing store: $(cat "$T/err")" || fail "verify of a missing store: rc $rc"
finish
