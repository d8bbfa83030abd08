#!/bin/bash
# test_hostile_store.sh EXTRAFS
#
# Hostile stores, archives and names through the real binaries and a real FUSE mount (issue 10,
# items 2, 3 and 5). A marker file outside every store must never appear in a catalog, an
# index, a blob, the block cache or (as a regular file) the mount:
#  - index: layers whose diff, link or lower is a symlink to a host file or directory, a link
#    "../../x", a folder "bad id", a lower naming a link no layer has: each skipped with one
#    line naming it, exit 1, a catalog the mount accepts, a re-run that works; content symlinks
#    stay symlinks; a symlinked overlay2/, extrafs/layers or image/ is refused with one line;
#  - the local backend and verify: a diff replaced by a symlink after indexing is never read;
#  - publish --archive: tags docker refuses, layer tars with "..", absolute, symlinked-parent
#    and hard-link-outside members, --order traces with "..", absolute and symlinked paths, a
#    target store whose extrafs/layers is a symlink; attach with a tag docker refuses;
#  - a SOURCE or option holding control characters: one escaped line.
set -euo pipefail
EXTRAFS=${1:-}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env
setup_tmp

MARK=MARKER-OUTSIDE-$$-$RANDOM
OUT=$T/outside
mkdir -p "$OUT/dir" "$T/mnt"
echo "$MARK" >"$OUT/marker"
echo "$MARK" >"$OUT/dir/shadow"
S=$T/store
cid() { printf '%064x' "$1"; }
layer() {  # layer N: a layer directory with a small diff/
  local d=$S/overlay2/$(cid "$1")
  mkdir -p "$d/diff/etc"
  echo "layer $1" >"$d/diff/etc/hello"
  echo "$d"
}
A=$(cid 1)
d=$(layer 1); echo AAAAAAAAAAAAAAAAAAAAAAAAAA >"$d/link"
ln -s /etc/shadow "$d/diff/etc/shadow"            # content: indexed as a symlink
ln -s "$OUT/marker" "$d/diff/etc/marker-link"
d=$(layer 2); echo BBBBBBBBBBBBBBBBBBBBBBBBBB >"$d/link"; echo l/AAAAAAAAAAAAAAAAAAAAAAAAAA >"$d/lower"
B=$(cid 2)
d=$S/overlay2/$(cid 3); mkdir -p "$d"; ln -s "$OUT/dir" "$d/diff"                 # diff -> outside
d=$(layer 4); ln -s "$OUT/marker" "$d/link"                                      # link -> host file
d=$(layer 5); echo CCCCCCCCCCCCCCCCCCCCCCCCCC >"$d/link"; ln -s "$OUT/marker" "$d/lower"
d=$(layer 6); echo '../../x' >"$d/link"                                          # link the reader refuses
mkdir -p "$S/overlay2/bad id/diff"                                               # not a cache-id
d=$(layer 7); echo DDDDDDDDDDDDDDDDDDDDDDDDDD >"$d/link"; echo l/NOSUCHLINKNOSUCHLINKNOSU >"$d/lower"
ln -s "$OUT" "$S/overlay2/$(cid 8)"                                              # layer dir -> outside
mkdir -p "$S/overlay2/l" "$S/image/overlay2"
ln -s ../$A/diff "$S/overlay2/l/AAAAAAAAAAAAAAAAAAAAAAAAAA"
echo '{"Repositories":{}}' >"$S/image/overlay2/repositories.json"
ln -s "$OUT/marker" "$S/image/overlay2/marker-link"

no_marker() {  # no_marker WHAT PATH...: no regular file under PATH holds the marker (grep -r
  local what=$1 rc=0; shift  # does not follow symlinks); grep's own failure fails the test
  grep -rqaF -- "$MARK" "$@" || rc=$?
  case $rc in
    1) pass "no outside content in $what" ;;
    0) fail "outside content found in $what: $(grep -rlaF -- "$MARK" "$@" | head -3)" ;;
    *) fail "grep over $what failed ($rc)" ;;
  esac
}

step "index a store with hostile layers"
rc=0; timeout 120 "$EXTRAFS" index "$S" >"$T/out" 2>"$T/err" || rc=$?
cat "$T/err" "$T/out" | sed 's/^/    /'
[[ $rc -eq 1 ]] && pass "exit 1 (layers skipped)" || fail "index exited $rc, expected 1"
for n in 3 4 5 6 7 8; do
  [[ $(grep -c "skipping overlay2/$(cid $n)" "$T/err") -eq 1 ]] && pass "one line names layer $n" || fail "layer $n not named once"
done
[[ $(grep -c "skipping overlay2/bad id" "$T/err") -eq 1 ]] && pass "one line names 'bad id'" || fail "'bad id' not named once"
[[ $(wc -l <"$T/err") -eq 7 ]] && pass "7 lines on stderr" || fail "$(wc -l <"$T/err") lines on stderr, expected 7"
grep -q "symlink" <(grep "$(cid 3)" "$T/err") && pass "the symlinked diff is named as such" || fail "no reason for layer 3"
python3 - "$S/extrafs/catalog" "$A" "$B" <<'PY' && pass "catalog holds exactly the two good layers" || fail "catalog layers wrong"
import json, sys
c = json.load(open(sys.argv[1]))
ids = sorted(l["cache_id"] for l in c["layers"])
sys.exit(0 if ids == sorted(sys.argv[2:]) else 1)
PY
cp "$S/extrafs/catalog" "$T/catalog.1"
no_marker "the store's extrafs/ directory" "$S/extrafs"

step "a re-run of index works and changes nothing"
rc=0; timeout 120 "$EXTRAFS" index "$S" >"$T/out" 2>"$T/err" || rc=$?
[[ $rc -eq 1 ]] && pass "exit 1 again" || fail "re-run exited $rc: $(head -3 "$T/err")"
# (The catalog itself may change: the image/ index records atimes, and the first readlink of a
# fresh symlink under image/ moves its atime.)
python3 - "$T/catalog.1" "$S/extrafs/catalog" <<'PY' && pass "the same layers, unchanged" || fail "re-run changed the layers"
import json, sys
a, b = (json.load(open(p))["layers"] for p in sys.argv[1:])
sys.exit(0 if a == b else 1)
PY

step "the store mounts and serves only what is inside it"
if mount_extrafs "$S" "$T/mnt"; then
  [[ $(cat "$T/mnt/overlay2/$A/diff/etc/hello") == "layer 1" ]] && pass "a good layer reads" || fail "good layer unreadable"
  [[ $(readlink "$T/mnt/overlay2/$A/diff/etc/shadow") == /etc/shadow ]] && pass "content symlink stays a symlink" \
    || fail "etc/shadow is not the symlink it was"
  [[ -L $T/mnt/overlay2/$A/diff/etc/shadow ]] || fail "etc/shadow not a symlink in the mount"
  got=$(ls "$T/mnt/overlay2" | sort | tr '\n' ' ')
  [[ $got == "$A $B l " ]] && pass "overlay2/ lists the good layers and l/ only" || fail "overlay2/ lists: $got"
  [[ $(readlink "$T/mnt/overlay2/l/AAAAAAAAAAAAAAAAAAAAAAAAAA") == "../$A/diff" ]] && pass "l/ link served from the catalog" \
    || fail "l/ link wrong"
  no_marker "the mount" "$T/mnt"
  no_marker "the block cache" "$T/cache"
  "$EXTRAFS" unmount "$T/mnt" || fail "unmount failed"
fi

step "a diff replaced by a symlink after indexing is never read (local backend, verify)"
mv "$S/overlay2/$A/diff" "$OUT/diff-a"
echo "$MARK" >"$OUT/diff-a/etc/hello-marker"
cp "$OUT/diff-a/etc/hello" "$OUT/hello.bak"
ln -s "$OUT/diff-a" "$S/overlay2/$A/diff"
rm -rf "$T/cache"
if mount_extrafs "$S" "$T/mnt"; then
  rc=0; cat "$T/mnt/overlay2/$A/diff/etc/hello" >/dev/null 2>"$T/err" || rc=$?
  [[ $rc -ne 0 ]] && pass "read through the symlinked diff fails ($(head -c 100 "$T/err"))" || fail "read through a symlinked diff succeeded"
  no_marker "the block cache" "$T/cache"
  "$EXTRAFS" unmount "$T/mnt" || fail "unmount failed"
fi
rc=0; timeout 60 "$EXTRAFS" verify "$S" >"$T/out" 2>"$T/err" || rc=$?
[[ $rc -eq 1 ]] && grep -q "symlink" "$T/err" && pass "verify fails naming the symlink" || fail "verify exited $rc: $(head -3 "$T/err")"
rm "$S/overlay2/$A/diff"; mv "$OUT/diff-a" "$S/overlay2/$A/diff"; rm "$S/overlay2/$A/diff/etc/hello-marker"

step "symlinked store directories are refused"
S2=$T/store2
mkdir -p "$S2/overlay2/$A/diff" "$S2/extrafs" "$T/elsewhere"
ln -s "$T/elsewhere" "$S2/extrafs/layers"
expect_fail "index with a symlinked extrafs/layers" runtime "extrafs/layers" -- "$EXTRAFS" index "$S2"
[[ -z $(ls "$T/elsewhere") ]] && pass "nothing written through it" || fail "index wrote into $T/elsewhere"
rm "$S2/extrafs/layers"; ln -s "$OUT" "$S2/image"
expect_fail "index with a symlinked image/" runtime "image" -- "$EXTRAFS" index "$S2"
rm "$S2/image"; mv "$S2/overlay2" "$T/ov2"; ln -s "$T/ov2" "$S2/overlay2"
expect_fail "index with a symlinked overlay2/" runtime "overlay2" -- "$EXTRAFS" index "$S2"
[[ ! -e $S2/extrafs/catalog ]] && pass "no catalog written" || fail "a catalog was written"

step "publish --archive: refused tags, hostile members, hostile --order traces"
mkarchive() {  # mkarchive OUT TAG MODE: a docker save archive with one layer
  python3 - "$@" "$OUT" <<'PY'
import hashlib, io, json, sys, tarfile
out, tag, mode, outside = sys.argv[1:5]
def tar(members):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in members:
            ti = tarfile.TarInfo(name)
            ti.mode = 0o755 if kind == "d" else 0o644
            if kind == "f":
                ti.size = len(data); t.addfile(ti, io.BytesIO(data))
            else:
                ti.type = {"d": tarfile.DIRTYPE, "s": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}[kind]
                ti.linkname = data
                t.addfile(ti)
    return b.getvalue()
members = [("etc", "d", ""), ("etc/hello", "f", b"hello\n")]
members += {
    "dotdot": [("../../escape-dotdot", "f", b"x")],
    "abs": [("/abs-escape", "f", b"y")],
    "symparent": [("up", "s", outside), ("up/escape-through-symlink", "f", b"z")],
    "hardout": [("hard-out", "h", outside + "/marker")],
    "hardup": [("hard-up", "h", "../../" + outside + "/marker")],
    "mid": [("etc/../../escape-mid", "f", b"w")],
}.get(mode, [])
layer = tar(members)
diff = "sha256:" + hashlib.sha256(layer).hexdigest()
cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                  "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
cid = hashlib.sha256(cfg).hexdigest()
man = json.dumps([{"Config": cid + ".json", "RepoTags": [tag], "Layers": ["l1/layer.tar"]}]).encode()
outer = [("manifest.json", "f", man), (cid + ".json", "f", cfg), ("l1", "d", ""), ("l1/layer.tar", "f", layer)]
if mode == "outer":
    outer += [("../outer-escape", "f", b"q"), ("l2", "s", outside), ("l2/x", "f", b"r")]
open(out, "wb").write(tar(outer))
PY
}
P=$T/pstore
for tag in '../../x:1' 'Upper:1' 'app:bad/tag' "app:$(printf 't%.0s' {1..129})"; do
  mkarchive "$T/bad-tag.tar" "$tag" plain
  expect_fail "publish of an archive with a tag docker refuses ($tag)" runtime "not a docker image name:tag" -- \
    "$EXTRAFS" publish --archive "$T/bad-tag.tar" --to "$P"
  [[ ! -e $P/extrafs/catalog ]] && pass "nothing published" || fail "a catalog was written for $tag"
done
mkdir -p "$T/dr"
expect_fail "publish of an IMAGE docker refuses" usage "not a docker image name:tag" -- \
  "$EXTRAFS" publish --data-root "$T/dr" 'Bad/../x:1' --to "$P"
rmdir "$T/dr"

outside_untouched() {  # nothing written outside the target store, the marker neither changed nor linked
  local f
  for f in "$T/escape-dotdot" /escape-dotdot /abs-escape "$OUT/escape-through-symlink" "$T/escape-mid" \
    /tmp/escape-mid "$T/outer-escape" "$OUT/x" "$OUT/hello"; do
    [[ ! -e $f ]] || fail "publish wrote $f outside the store"
  done
  [[ $(cat "$OUT/marker") == "$MARK" && $(stat -c %h "$OUT/marker") -eq 1 ]] && pass "the marker is untouched, not hard-linked" \
    || fail "the marker was changed or linked"
}
for mode in dotdot abs symparent hardout hardup mid outer; do
  mkarchive "$T/hostile.tar" "hostile:$mode" "$mode"
  rc=0; (cd "$T" && timeout 120 "$EXTRAFS" publish --archive "$T/hostile.tar" --to "$P") >"$T/out" 2>"$T/err" || rc=$?
  echo "    $mode: exit $rc: $(head -c 300 "$T/err")"
  case $rc in
    0) pass "$mode: the archive was published (its members taken as data)" ;;
    1 | 2) [[ $(wc -l <"$T/err") -eq 1 ]] && pass "$mode: the archive was refused with one line" \
      || fail "$mode: refused with $(wc -l <"$T/err") lines" ;;
    *) fail "$mode: publish died ($rc)" ;;
  esac
  outside_untouched
  [[ -e $P ]] && no_marker "the published store ($mode)" "$P"
done

mkarchive "$T/ok.tar" ok:1 plain
{
  echo "$(cid 9) 1 ../../$OUT/marker"
  echo "$(cid 9) 2 $OUT/marker"
  echo "$(cid 9) 3 up/escape-through-symlink"
  echo "$(cid 9) 4 etc/../../outside/marker"
  echo "$(cid 9) 5 etc/hello"
} >"$T/trace"
P4=$T/pstore4
rc=0; (cd "$T" && timeout 120 "$EXTRAFS" publish --archive "$T/ok.tar" --to "$P4" --order "$T/trace") >"$T/out" 2>"$T/err" || rc=$?
echo "    exit $rc: $(head -c 300 "$T/err")"
case $rc in
  0) pass "a trace with .., absolute and symlinked paths only orders files" ;;
  1 | 2) [[ $(wc -l <"$T/err") -eq 1 ]] && pass "the hostile trace was refused with one line" || fail "refused with $(wc -l <"$T/err") lines" ;;
  *) fail "publish with a hostile trace died ($rc)" ;;
esac
outside_untouched
[[ -e $P4 ]] && no_marker "the store published with the trace" "$P4"

mkdir -p "$T/p3/extrafs" "$T/p3-else"
ln -s "$T/p3-else" "$T/p3/extrafs/layers"
expect_fail "publish into a store with a symlinked extrafs/layers" runtime "extrafs/layers" -- \
  "$EXTRAFS" publish --archive "$T/ok.tar" --to "$T/p3"
[[ -z $(ls "$T/p3-else") ]] && pass "nothing written through it" || fail "publish wrote into $T/p3-else"

expect_fail "attach of a tag docker refuses" usage "not a docker image name:tag" -- \
  "$EXTRAFS" docker attach '../../x:1' --mount "$T/mnt" --data-root "$T/dr"
[[ ! -e $T/dr ]] && pass "no data-root created" || fail "attach created $T/dr"

step "control characters in input give one escaped line"
expect_fail "mount of a SOURCE with a newline" usage 'h\nx' -- "$EXTRAFS" mount $'nfs://h\nx' "$T/mnt"
expect_fail "mount with an option holding a newline" usage '\n' -- "$EXTRAFS" mount "$S" "$T/mnt" -o $'cache_size=1\nG'
expect_fail "index of a path with an escape sequence" runtime '\x1b' -- "$EXTRAFS" index "$T/no"$'\e[2J'"such"
MOUNT_HELPER=$(dirname "$EXTRAFS")/mount.extrafs
if [[ -x $MOUNT_HELPER ]]; then
  expect_fail "mount.extrafs with a newline in -o" usage '\n' -- "$MOUNT_HELPER" "$S" "$T/mnt" -o $'timeout=\n5'
fi
finish
