#!/bin/bash
# test_publish.sh EXTRAFS — `extrafs publish` against a private dockerd.
#
# Builds a two-layer image (busybox-static import + a docker build layer holding a whiteout, an
# opaque directory, a hard link, setuid/setgid/sticky modes, a file capability, compressible,
# zero and random content), publishes it with --data-root and, after `docker save`, with
# --archive, mounts both stores and compares every published layer with the data-root's own
# overlay2/<cache-id>/diff. Then: image metadata, re-publish is a no-op, --order, bad input,
# and a publish killed with SIGKILL half-way through a 200 MiB layer.
set -u
EXTRAFS=${1:-}
. "$(dirname "$0")/../integration/lib.sh"
require_env
HERE_PUB=$(cd "$(dirname "$0")" && pwd)
DOCKERD=/usr/sbin/dockerd
DOCKER_CLI=/usr/bin/docker
[[ -x $DOCKERD && -x $DOCKER_CLI ]] || { echo "FATAL: dockerd/docker not installed"; exit 1; }
[[ -x /bin/busybox ]] || { echo "FATAL: busybox-static not installed"; exit 1; }
setup_tmp

DROOT=$T/docker
SOCK=$T/docker.sock
DPID=
stop_dockerd() {
  [[ -n $DPID ]] || return 0
  kill -TERM "$DPID" 2>/dev/null
  wait_until 30 pid_gone "$DPID" || kill -KILL "$DPID" 2>/dev/null
  wait "$DPID" 2>/dev/null
  DPID=
}
trap 'rc=$?; stop_dockerd; (exit $rc); cleanup' EXIT
docker() { "$DOCKER_CLI" -H "unix://$SOCK" "$@"; }

step "start a private dockerd"
mkdir -p "$DROOT" "$T/exec"
"$DOCKERD" --data-root "$DROOT" --exec-root "$T/exec" --pidfile "$T/docker.pid" -H "unix://$SOCK" \
  --storage-driver overlay2 --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
  --bridge=none --userland-proxy=false >"$T/dockerd.log" 2>&1 &
DPID=$!
wait_until 30 docker version >/dev/null 2>&1 || { tail -20 "$T/dockerd.log"; die "dockerd did not come up"; }
pass "dockerd is up"

step "build app:1 (import + docker build)"
R=$T/rootfs
mkdir -p "$R"/{bin,etc,opt,data/dir/sub,tmp}
cp /bin/busybox "$R/bin/busybox"
for a in sh ls rm mkdir ln chmod chown cp cat echo dd touch mv head seq; do ln -s busybox "$R/bin/$a"; done
echo "root:x:0:0:root:/root:/bin/sh" >"$R/etc/passwd"
# setcap (and its libraries) inside the image: docker build's COPY drops security.capability.
mkdir -p "$R/usr/sbin"
cp /usr/sbin/setcap "$R/usr/sbin/setcap"
for lib in $(ldd /usr/sbin/setcap | grep -o '/[^ ]*'); do cp --parents -L "$lib" "$R"; done
echo gone >"$R/opt/gone"
echo keep >"$R/opt/keep"
echo a >"$R/data/dir/a"; echo b >"$R/data/dir/sub/b"
tar -C "$R" -c . | docker import - base:1 >/dev/null || die "docker import failed"
CTX=$T/ctx
mkdir -p "$CTX"
head -c 300000 /dev/urandom >"$CTX/rand1"
head -c 200000 /dev/urandom >"$CTX/rand2"
cat >"$CTX/Dockerfile" <<'DF'
FROM base:1
RUN rm /opt/gone && rm -rf /data/dir && mkdir /data/dir && echo fresh >/data/dir/c
RUN mkdir -p /srv/sticky && echo linked >/srv/a && ln /srv/a /srv/b && cp /bin/busybox /srv/suid && chmod 4755 /srv/suid \
 && cp /bin/busybox /srv/sgid && chmod 2711 /srv/sgid && chmod 1777 /srv/sticky && chown 123:456 /srv/a \
 && seq 1 400000 >/srv/text && dd if=/dev/zero of=/srv/zeros bs=1048576 count=3 2>/dev/null \
 && ln -s ../opt/keep /srv/sym && ln -s /nowhere /srv/dangling
COPY rand1 rand2 /srv/
RUN cp /bin/busybox /srv/capfile && /usr/sbin/setcap cap_net_raw+ep /srv/capfile
DF
DOCKER_BUILDKIT=0 docker build --network none -q -t app:1 "$CTX" >"$T/build.log" 2>&1 || { cat "$T/build.log"; die "docker build failed"; }
IMG_ID=$(docker image inspect -f '{{.Id}}' app:1)
pass "built app:1 = $IMG_ID"

# Layers of an image as "chainID cache-id" lines (from the data-root), base first.
layers_of() {
  python3 - "$1" "$2" <<'PY'
import hashlib, json, sys
root, img = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{root}/image/overlay2/imagedb/content/sha256/{img.split(':')[1]}"))
chain = None
for d in cfg["rootfs"]["diff_ids"]:
    chain = d if chain is None else "sha256:" + hashlib.sha256((chain + " " + d).encode()).hexdigest()
    cid = open(f"{root}/image/overlay2/layerdb/sha256/{chain.split(':')[1]}/cache-id").read().strip()
    print(chain, cid)
PY
}
layers_of "$DROOT" "$IMG_ID" >"$T/layers" || die "cannot read the layers of app:1"
NL=$(wc -l <"$T/layers")
[[ $NL -ge 3 ]] || die "app:1 has $NL layers, expected at least 3"
TOPCID=$(tail -1 "$T/layers" | cut -d' ' -f2)
# The build layers must hold what this test is about, in the data-root itself.
RUNCID=$(sed -n 2p "$T/layers" | cut -d' ' -f2)
[[ -c $DROOT/overlay2/$RUNCID/diff/opt/gone ]] || die "no whiteout for /opt/gone in the data-root layer"
[[ $(getfattr --absolute-names --only-values -n trusted.overlay.opaque "$DROOT/overlay2/$RUNCID/diff/data/dir" 2>/dev/null) == y ]] \
  || die "/data/dir is not opaque in the data-root layer"
getcap "$DROOT/overlay2/$TOPCID/diff/srv/capfile" | grep -q cap_net_raw || die "the capability did not survive docker build"
pass "data-root layers hold a whiteout, an opaque dir and a file capability"

step "docker save, then publish --data-root (dockerd running)"
# Saved first: docker save mounts the top layer, and overlayfs then stores its private
# bookkeeping xattrs (trusted.overlay.impure/uuid/origin) in that layer's diff.
docker save app:1 -o "$T/app.tar" || die "docker save failed"
S1=$T/store-dr
timed "$EXTRAFS" publish --data-root "$DROOT" app:1 --to "$S1" >"$T/pub1.out" 2>"$T/pub1.err"; rc=$?
[[ $rc -eq 0 ]] && pass "publish --data-root: exit 0 in ${TIME_TAKEN}s: $(cat "$T/pub1.out")" \
  || die "publish --data-root: exit $rc: $(cat "$T/pub1.err")"
[[ -s $T/pub1.err ]] && fail "publish wrote to stderr when not on a terminal: $(head -c 300 "$T/pub1.err")"
[[ $(wc -l <"$T/pub1.out") -eq 1 ]] || fail "publish printed more than one summary line"

step "publish --archive (docker save)"
S2=$T/store-ar
timed "$EXTRAFS" publish --archive "$T/app.tar" --to "$S2" >"$T/pub2.out" 2>"$T/pub2.err"; rc=$?
[[ $rc -eq 0 ]] && pass "publish --archive: exit 0 in ${TIME_TAKEN}s: $(cat "$T/pub2.out")" \
  || die "publish --archive: exit $rc: $(cat "$T/pub2.err")"

step "store layout and docker metadata"
check_store() {  # STORE LABEL SAME_CACHE_IDS(1/0)
  local S=$1 L=$2 same=$3 chain cid scid prev_link="" prev_lower="" hex want_lower
  [[ -f $S/image/overlay2/imagedb/content/sha256/${IMG_ID#sha256:} ]] || { fail "$L: no image config"; return; }
  [[ sha256:$(sha256sum <"$S/image/overlay2/imagedb/content/sha256/${IMG_ID#sha256:}" | cut -d' ' -f1) == "$IMG_ID" ]] \
    && pass "$L: image config matches its digest" || fail "$L: image config digest mismatch"
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r['Repositories']['app']['app:1']==sys.argv[2] else 1)" \
    "$S/image/overlay2/repositories.json" "$IMG_ID" && pass "$L: repositories.json has app:1" || fail "$L: repositories.json lacks app:1"
  local n=0
  while read -r chain cid; do
    n=$((n + 1)); hex=${chain#sha256:}
    local db=$S/image/overlay2/layerdb/sha256/$hex src=$DROOT/image/overlay2/layerdb/sha256/$hex
    [[ -d $db ]] || { fail "$L: no layerdb for layer $n"; continue; }
    scid=$(cat "$db/cache-id")
    if [[ $same == 1 ]]; then [[ $scid == "$cid" ]] || fail "$L: layer $n cache-id $scid, data-root has $cid"
    else [[ $scid =~ ^[0-9a-f]{64}$ && $scid != "$cid" ]] || fail "$L: layer $n cache-id '$scid' is not a fresh 64-hex id"; fi
    cmp -s "$db/diff" "$src/diff" || fail "$L: layer $n diff differs"
    if [[ $n -gt 1 ]]; then cmp -s "$db/parent" "$src/parent" || fail "$L: layer $n parent differs"
    else [[ ! -e $db/parent ]] || fail "$L: base layer has a parent file"; fi
    [[ $(cat "$db/size") == "$(cat "$src/size")" ]] || fail "$L: layer $n size $(cat "$db/size") != data-root $(cat "$src/size")"
    if [[ $same == 1 ]]; then
      cmp -s "$db/tar-split.json.gz" "$src/tar-split.json.gz" || fail "$L: layer $n tar-split.json.gz not copied"
    else
      [[ ! -e $db/tar-split.json.gz ]] || fail "$L: layer $n has a tar-split.json.gz from nowhere"
    fi
    [[ -f $S/extrafs/layers/$scid.blob && -f $S/extrafs/layers/$scid.index ]] || fail "$L: layer $n has no blob/index"
    [[ ! -e $S/overlay2/$scid/diff ]] || fail "$L: layer $n has a diff/ directory"
    local link; link=$(cat "$S/overlay2/$scid/link")
    [[ $link =~ ^[A-Z0-9]{26}$ ]] || fail "$L: layer $n link '$link' is not 26 uppercase letters/digits"
    want_lower=${prev_link:+l/$prev_link}${prev_lower:+:$prev_lower}
    if [[ $n -eq 1 ]]; then [[ ! -e $S/overlay2/$scid/lower ]] || fail "$L: base layer has a lower file"
    else [[ $(cat "$S/overlay2/$scid/lower") == "$want_lower" ]] || fail "$L: layer $n lower '$(cat "$S/overlay2/$scid/lower")' != '$want_lower'"; fi
    prev_link=$link; prev_lower=$want_lower
    echo "$scid" >>"$S.cids"
  done <"$T/layers"
  [[ $n -eq $NL ]] && pass "$L: $n layers with layerdb, blob, index, link, lower checked"
}
check_store "$S1" data-root 1
check_store "$S2" archive 0
# Content: the compressible text went lz4, the zero file stored nothing, random data as is.
TOP2=$(tail -1 "$S2.cids")
for S in "$S1" "$S2"; do
  top=$(tail -1 "$S.cids"); run=$(sed -n 3p "$S.cids")
  sz=$(stat -c %s "$S/extrafs/layers/$run.blob")
  raw=$(( $(stat -c %s "$DROOT/overlay2/$(sed -n 3p "$T/layers" | cut -d' ' -f2)/diff/srv/text") ))
  [[ $sz -lt $((raw + 2 * 1048576)) ]] && pass "$(basename "$S"): layer 3 blob $sz bytes < text + busybox copies (lz4 and zero chunks pay)" \
    || fail "$(basename "$S"): layer 3 blob is $sz bytes: no compression or zeros stored"
done

step "verify both stores"
for S in "$S1" "$S2"; do
  "$EXTRAFS" verify "$S" >"$T/verify.out" 2>&1 && pass "verify $(basename "$S"): $(tail -1 "$T/verify.out")" \
    || fail "verify $(basename "$S"): $(cat "$T/verify.out")"
done

step "mount the stores and compare every layer with the data-root"
M1=$T/m1; M2=$T/m2; mkdir -p "$M1" "$M2"
mount_extrafs "$S1" "$M1" || die "mount of the data-root store failed"
T_SAVE=$T
mount_extrafs "$S2" "$M2" "cache=$T/cache2" || die "mount of the archive store failed"
i=0
while read -r chain cid; do
  i=$((i + 1))
  if "${COMPARE[@]}" --no-ctime "$M1/overlay2/$cid/diff" "$DROOT/overlay2/$cid/diff" >"$T/cmp.out" 2>&1; then
    pass "data-root store, layer $i: identical to the data-root ($(tail -1 "$T/cmp.out"))"
  else fail "data-root store, layer $i differs:"; head -20 "$T/cmp.out"; fi
  acid=$(sed -n "${i}p" "$S2.cids")
  # Relaxed for the archive path, because a layer tar does not carry them: ctime; directory sizes
  # and st_blocks (the tar has neither); mtime nanoseconds (docker writes whole seconds); the
  # layer root's attributes (the tar has no entry for it).
  if python3 "$HERE_PUB/compare_archive.py" "$M2/overlay2/$acid/diff" "$DROOT/overlay2/$cid/diff" >"$T/cmp.out" 2>&1; then
    pass "archive store, layer $i: same as the data-root up to what a tar carries ($(tail -1 "$T/cmp.out"))"
  else fail "archive store, layer $i differs:"; head -20 "$T/cmp.out"; fi
done <"$T/layers"
[[ $(getfattr --absolute-names --only-values -n trusted.overlay.opaque "$M2/overlay2/$(sed -n 2p "$S2.cids")/diff/data/dir" 2>/dev/null) == y ]] \
  && pass "archive store: .wh..wh..opq became trusted.overlay.opaque=y" || fail "archive store: /data/dir not opaque"
[[ $(stat -c '%F %t:%T' "$M2/overlay2/$(sed -n 2p "$S2.cids")/diff/opt/gone") == "character special file 0:0" ]] \
  && pass "archive store: .wh.gone became a 0/0 character device" || fail "archive store: whiteout not converted"
[[ $(stat -c %h "$M2/overlay2/$TOP2/diff/srv/a" 2>/dev/null || stat -c %h "$M2/overlay2/$(sed -n 3p "$S2.cids")/diff/srv/a") == 2 ]] \
  && pass "archive store: hard link group kept" || fail "archive store: hard link lost"

step "re-publish is a no-op"
for S in "$S1" "$S2"; do
  snapshot_index "$S" >"$T/snap1"
  if [[ $S == "$S1" ]]; then "$EXTRAFS" publish --data-root "$DROOT" app:1 --to "$S" >"$T/re.out" 2>&1; rc=$?
  else "$EXTRAFS" publish --archive "$T/app.tar" --to "$S" >"$T/re.out" 2>&1; rc=$?; fi
  snapshot_index "$S" >"$T/snap2"
  [[ $rc -eq 0 ]] || fail "re-publish into $(basename "$S") exit $rc: $(cat "$T/re.out")"
  grep -q "0 layers written, $NL already in the store" "$T/re.out" && pass "re-publish $(basename "$S"): $(cat "$T/re.out")" \
    || fail "re-publish $(basename "$S") wrote something: $(cat "$T/re.out")"
  diff -q "$T/snap1" "$T/snap2" >/dev/null && pass "re-publish $(basename "$S"): no file rewritten (sizes, mtimes, inodes, content)" \
    || { fail "re-publish $(basename "$S") changed files:"; diff "$T/snap1" "$T/snap2" | head -10; }
done

step "--order packs the traced files first, in trace order"
COPYCID=$(sed -n 4p "$T/layers" | cut -d' ' -f2)
[[ -f $DROOT/overlay2/$COPYCID/diff/srv/rand1 ]] || fail "layer 4 is not the COPY layer"
printf '%s 1 srv/rand2\n%s 2 srv/nope\n%s 3 srv/rand1\n' "$COPYCID" "$COPYCID" "$COPYCID" >"$T/trace"
for mode in dr ar; do
  S=$T/store-order-$mode
  if [[ $mode == dr ]]; then "$EXTRAFS" publish --data-root "$DROOT" app:1 --to "$S" --order "$T/trace" >"$T/o.out" 2>&1; rc=$?
  else "$EXTRAFS" publish --archive "$T/app.tar" --to "$S" --order "$T/trace" >"$T/o.out" 2>&1; rc=$?; fi
  [[ $rc -eq 0 ]] || { fail "publish --order ($mode): exit $rc: $(cat "$T/o.out")"; continue; }
  top=$(cat "$S/image/overlay2/layerdb/sha256/$(sed -n 4p "$T/layers" | cut -d' ' -f1 | cut -d: -f2)/cache-id")
  blob=$S/extrafs/layers/$top.blob
  if cmp -s -n 200000 "$blob" "$CTX/rand2" && cmp -s -n 300000 -i 200000:0 "$blob" "$CTX/rand1"; then
    pass "publish --order ($mode): the blob starts with rand2 then rand1"
  else fail "publish --order ($mode): traced files are not first in the blob"; fi
  "$EXTRAFS" verify "$S" >/dev/null 2>&1 || fail "publish --order ($mode): verify fails"
done

step "--order into a store that has the layers already: they keep their packing, and publish says so"
snapshot_index "$S1" >"$T/snap1"
"$EXTRAFS" publish --data-root "$DROOT" app:1 --to "$S1" --order "$T/trace" >"$T/ro.out" 2>"$T/ro.err"; rc=$?
snapshot_index "$S1" >"$T/snap2"
if [[ $rc -eq 0 && $(wc -l <"$T/ro.err") -eq 1 ]] && grep -q "warning: --order applies only to layers written now; $NL layers already in" "$T/ro.err"; then
  pass "re-publish --order: exit 0, $(cat "$T/ro.err")"
else fail "re-publish --order: exit $rc, stderr: $(head -c 300 "$T/ro.err")"; fi
diff -q "$T/snap1" "$T/snap2" >/dev/null && pass "re-publish --order: no file rewritten" \
  || { fail "re-publish --order changed files:"; diff "$T/snap1" "$T/snap2" | head -10; }

step "bad input: one line on stderr, exit 1/2, nothing written"
expect_fail() {  # WANT_RC DESCRIPTION ARGS...
  local want=$1 what=$2; shift 2
  "$EXTRAFS" publish "$@" >"$T/bad.out" 2>"$T/bad.err"; local rc=$?
  if [[ $rc -eq $want && $(wc -l <"$T/bad.err") -eq 1 && ! -s $T/bad.out ]]; then pass "$what: exit $rc: $(cat "$T/bad.err")"
  else fail "$what: exit $rc (want $want), stderr: $(head -c 300 "$T/bad.err")"; fi
}
NS=$T/never
expect_fail 1 "missing data-root" --data-root "$T/nope" app:1 --to "$NS"
expect_fail 1 "unknown image" --data-root "$DROOT" nosuch:9 --to "$NS"
tar -C "$R" -cf "$T/plain.tar" etc
expect_fail 1 "a tar that is not docker save output" --archive "$T/plain.tar" --to "$NS"
head -c 10000 /dev/urandom >"$T/junk.tar"
expect_fail 1 "not a tar at all" --archive "$T/junk.tar" --to "$NS"
expect_fail 2 "--data-root with --archive" --data-root "$DROOT" app:1 --archive "$T/app.tar" --to "$NS"
expect_fail 2 "neither --data-root nor --archive" --to "$NS"
expect_fail 2 "no --to" --archive "$T/app.tar"
touch "$T/afile"
expect_fail 1 "unwritable store (under a file)" --archive "$T/app.tar" --to "$T/afile/store"
[[ ! -e $NS ]] && pass "no store was created by bad input" || fail "bad input created $NS"
# diffID mismatch: the top layer's tar replaced by another one.
mkdir -p "$T/x" && tar -C "$T/x" -xf "$T/app.tar"
toplayer=$(python3 -c "import json;print(json.load(open('$T/x/manifest.json'))[0]['Layers'][-1])")
tar -C "$R" -cf "$T/x/$toplayer" opt
tar -C "$T/x" -cf "$T/bad-diff.tar" .
expect_fail 1 "diffID mismatch" --archive "$T/bad-diff.tar" --to "$NS"
[[ ! -e $NS ]] && pass "diffID mismatch left nothing behind" || { fail "diffID mismatch left files:"; find "$NS" | head; }
# A gzip-compressed layer (as other tools write) is accepted, diffID of the uncompressed stream.
rm -rf "$T/x" && mkdir -p "$T/x" && tar -C "$T/x" -xf "$T/app.tar"
toplayer=$(python3 -c "import json;print(json.load(open('$T/x/manifest.json'))[0]['Layers'][-1])")
gzip -n "$T/x/$toplayer" && mv "$T/x/$toplayer.gz" "$T/x/$toplayer"
tar -C "$T/x" -cf "$T/gz.tar" .
"$EXTRAFS" publish --archive "$T/gz.tar" --to "$T/store-gz" >"$T/gz.out" 2>&1 && "$EXTRAFS" verify "$T/store-gz" >/dev/null 2>&1 \
  && pass "gzip-compressed layer tar accepted: $(cat "$T/gz.out")" || fail "gzip layer: $(cat "$T/gz.out")"
rm -rf "$T/x"

step "publish killed half-way leaves no incomplete layer in the catalog"
head -c $((200 * 1048576)) /dev/urandom >"$CTX/big"
printf 'FROM app:1\nCOPY big /big\n' >"$CTX/Dockerfile"
DOCKER_BUILDKIT=0 docker build --network none -q -t big:1 "$CTX" >"$T/build2.log" 2>&1 || { cat "$T/build2.log"; die "docker build big:1 failed"; }
rm -f "$CTX/big"
S3=$T/store-kill
"$EXTRAFS" publish --data-root "$DROOT" app:1 --to "$S3" >/dev/null 2>&1 || fail "publish app:1 into the kill store failed"
cp "$S3/extrafs/catalog" "$T/catalog.before"
"$EXTRAFS" publish --data-root "$DROOT" big:1 --to "$S3" >/dev/null 2>&1 &
KP=$!
track_pid "$KP"
big_tmp() { local f; for f in "$S3"/extrafs/layers/.*.blob.tmp-*; do [[ -f $f && $(stat -c %s "$f") -gt $((40 * 1048576)) ]] && return 0; done; return 1; }
if wait_until 60 big_tmp; then
  kill -KILL "$KP"; wait "$KP" 2>/dev/null
  pass "publish killed with a $(du -m "$S3"/extrafs/layers/.*.blob.tmp-* | cut -f1 | head -1) MiB blob half-written"
else
  fail "never saw the big blob being written"; wait "$KP" 2>/dev/null
fi
cmp -s "$S3/extrafs/catalog" "$T/catalog.before" && pass "catalog unchanged by the killed publish" || fail "killed publish changed the catalog"
"$EXTRAFS" verify "$S3" >"$T/v3.out" 2>&1 && pass "verify after the kill: $(tail -1 "$T/v3.out")" || fail "verify after the kill: $(cat "$T/v3.out")"
timed "$EXTRAFS" publish --data-root "$DROOT" big:1 --to "$S3" >"$T/p3.out" 2>&1 \
  && pass "publish big:1 after the kill: ${TIME_TAKEN}s: $(cat "$T/p3.out")" || fail "publish big:1 after the kill: $(cat "$T/p3.out")"
ls -a "$S3/extrafs/layers" | grep -q 'tmp' && fail "temporaries left: $(ls -a "$S3/extrafs/layers" | grep tmp)" || pass "the killed publish's temporaries were removed"
"$EXTRAFS" verify "$S3" >"$T/v3.out" 2>&1 && pass "verify: $(tail -1 "$T/v3.out")" || fail "verify: $(cat "$T/v3.out")"

finish
