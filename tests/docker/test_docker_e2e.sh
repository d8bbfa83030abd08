#!/bin/bash
# test_docker_e2e.sh EXTRAFS: an image built by a real dockerd (A) is published with
# `extrafs publish`, twice: from A's data-root into STORE, and from its `docker save` archive
# (tagged e2e-app:archive) into STORE2. Both stores are served over NFS by one private
# nfs-ganesha (one export, a subdirectory each), mounted with extrafs and attached to fresh
# data-roots whose dockerds (B for STORE, C for STORE2) run the image, lazily, with exactly the
# bytes the original has.
#
# Checks:
#   - the image (imported busybox-static base + `docker build` layers with a whiteout, an opaque
#     directory, a hard link, a setuid file, a file capability from an ADDed tar, a 50 MiB file
#     nothing reads) builds on A
#   - publish --data-root and publish --archive: exit 0, packed stores (blob + index per layer,
#     no diff/ directories), tar-split kept from the data-root, none from the archive; the top
#     layer on each mount carries security.capability
#   - `extrafs ls STORE|MNT|STORE2|MNT2` show the tag and every layer (and CACHED on a mount)
#   - attach refuses: no --mount (exit 2), a mount point that is not extrafs, an image the store
#     lacks, a data-root of another storage driver, a running dockerd when it has anything to
#     write (exit 1; an image attached whole is reported so, exit 0); detach too
#   - attach writes the documented layout (diff symlinks into the mount, link/l/, lower, work,
#     modes), and a second attach changes nothing
#   - for each store: the dockerd lists and runs the image (`docker run --network none` prints
#     the CMD's line), having fetched less than half of the image's bytes; `docker export` of a
#     container of the attached image equals the export from A entry by entry (type, mode,
#     uid/gid, size, mtime, link targets, xattrs) and byte by byte
#   - `docker save` works on B (data-root publish); on C (archive publish: no tar-split) it fails,
#     as extrafs-publish(8) documents, and leaves C, STORE2 and MNT2 as they were
#   - the images survive a dockerd restart (B next to a running A; C)
#   - a Hermes-style store (cp -a of A's data-root + `extrafs index`, STORE3, a third subdirectory
#     of the export) still attaches, runs, exports the same and saves on dockerd H
#   - `docker rmi`, re-attach, `docker image prune -a`, detach: STORE(2) and MNT(2) untouched
#     (checksum snapshots), B's data-root left without what attach made
#   - detach keeps what a container uses; that container still runs; prune then removes it all
set -u
DHERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$DHERE/../integration/lib.sh"   # sets HERE to its own directory
GANESHA=$DHERE/../nfs/ganesha.sh
DOCKERD=$DHERE/dockerd.sh
COMPARE_TARS=$DHERE/compare_tars.py
IMAGE=e2e-app:1
IMAGE_AR=e2e-app:archive
EXPECT="extrafs-e2e-ok"
GSTATE=
DA= DB= DC= DH=

EXTRAFS=${1:-}
require_env
for p in /usr/sbin/dockerd /usr/bin/docker /bin/busybox setcap getcap getfattr ganesha.nfsd nfs-ls python3 tar; do
  command -v "$p" >/dev/null || { echo "FATAL: $p not installed (scripts/setup installs it)"; exit 1; }
done
file -L /bin/busybox 2>/dev/null | grep -q "statically linked" || { echo "FATAL: /bin/busybox is not busybox-static"; exit 1; }

e2e_cleanup() {
  local rc=$?
  set +e
  [[ -n $DH ]] && timeout 60 "$DOCKERD" stop "$DH" >/dev/null 2>&1
  [[ -n $DC ]] && timeout 60 "$DOCKERD" stop "$DC" >/dev/null 2>&1
  [[ -n $DB ]] && timeout 60 "$DOCKERD" stop "$DB" >/dev/null 2>&1
  [[ -n $DA ]] && timeout 60 "$DOCKERD" stop "$DA" >/dev/null 2>&1
  local i m
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${MOUNTS[$i]}
    is_mounted "$m" && { timeout 20 umount -- "$m" 2>/dev/null || umount -l -- "$m" 2>/dev/null; }
  done
  [[ -n $GSTATE && -d $GSTATE ]] && timeout 30 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1
  (exit $rc)
  cleanup
}
setup_tmp
trap e2e_cleanup EXIT
trap 'exit 130' INT TERM
DA=$T/da DB=$T/db DC=$T/dc DH=$T/dh GSTATE=$T/ganesha
RA=$T/ra RB=$T/rb RC=$T/rc RH=$T/rh STORES=$T/stores MNT=$T/mnt MNT2=$T/mnt2 MNT3=$T/mnt3
STORE=$STORES/dr STORE2=$STORES/ar STORE3=$STORES/hermes
mkdir -p "$GSTATE" "$STORES" "$MNT" "$MNT2" "$MNT3" "$STORE3"

dA() { timeout 120 "$DOCKERD" docker "$DA" "$@"; }
dB() { timeout 120 "$DOCKERD" docker "$DB" "$@"; }
dC() { timeout 120 "$DOCKERD" docker "$DC" "$@"; }
dH() { timeout 120 "$DOCKERD" docker "$DH" "$@"; }
start_dockerd() {  # STATE ROOT NAME
  local out
  out=$(timeout 60 "$DOCKERD" start "$1" "$2" 2>&1) || die "starting dockerd $3 failed: $out"
  pass "dockerd $3 started ($(sed -n 's/^PID=//p' <<<"$out"))"
}
stop_dockerd() {  # STATE NAME
  timeout 60 "$DOCKERD" stop "$1" >/dev/null 2>&1 || fail "dockerd $2 did not stop cleanly"
  "$DOCKERD" status "$1" && fail "dockerd $2 still running after stop"
  return 0
}
# run_x EXPECTED_RC NAME ARGS...: runs extrafs, checks the exit code; output in $T/x.out/$T/x.err.
run_x() {
  local want=$1 name=$2 rc=0; shift 2
  timeout 120 "$EXTRAFS" "$@" >"$T/x.out" 2>"$T/x.err" || rc=$?
  if [[ $rc -eq $want ]]; then
    pass "$name: exit $rc${want:+$( [[ $want -ne 0 ]] && echo " ($(head -c 300 "$T/x.err"))")}"
    return 0
  fi
  fail "$name: exit $rc, wanted $want; stdout: $(head -c 500 "$T/x.out"); stderr: $(head -c 500 "$T/x.err")"
  return 1
}
one_line_err() {  # NAME: stderr must be exactly one line starting "extrafs: "
  [[ $(wc -l <"$T/x.err") -eq 1 && $(head -c 9 "$T/x.err") == "extrafs: " ]] ||
    fail "$1: stderr is not one 'extrafs: ' line: $(head -c 500 "$T/x.err")"
}
snapshot() { snapshot_index "$1"; }
# Everything under a data-root that attach writes: names, types, modes, mtimes (not with a
# second argument "nomtime"), link targets, content; repositories.json is left out.
dataroot_listing() { python3 "$DHERE/dataroot_listing.py" "$1" "${2:-}"; }
# cache_ids STORE: the cache-ids of $ID_A's layers as STORE's layerdb has them (base first).
cache_ids() {
  python3 - "$1" "$ID_A" <<'PY'
import hashlib, json, sys
root, iid = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{root}/image/overlay2/imagedb/content/sha256/{iid[7:]}"))
chain = None
for d in cfg["rootfs"]["diff_ids"]:
    chain = d if chain is None else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    print(chain[7:], open(f"{root}/image/overlay2/layerdb/sha256/{chain[7:]}/cache-id").read().strip())
PY
}
# check_packed NAME STORE TARSPLIT(yes|no) CHAIN:CID...: every layer is a blob + index with no
# diff/ directory; tar-split.json.gz present in the layerdb or not.
check_packed() {
  local name=$1 store=$2 ts=$3 bad=() ch c; shift 3
  for x in "$@"; do
    ch=${x%%:*} c=${x#*:}
    [[ -f $store/extrafs/layers/$c.blob ]] || bad+=("no $c.blob")
    [[ -s $store/extrafs/layers/$c.index ]] || bad+=("no $c.index")
    [[ -e $store/overlay2/$c/diff ]] && bad+=("overlay2/$c/diff exists")
    [[ -s $store/overlay2/$c/link ]] || bad+=("no overlay2/$c/link")
    if [[ $ts == yes ]]; then
      [[ -s $store/image/overlay2/layerdb/sha256/$ch/tar-split.json.gz ]] || bad+=("no tar-split for $ch")
    else
      [[ -e $store/image/overlay2/layerdb/sha256/$ch/tar-split.json.gz ]] && bad+=("tar-split for $ch")
    fi
  done
  [[ -s $store/extrafs/catalog ]] || bad+=("no extrafs/catalog")
  [[ ${#bad[@]} -eq 0 ]] && pass "$name: packed store, a blob and an index per layer, no diff/, tar-split: $ts" ||
    fail "$name: ${bad[*]}"
}
# check_cap NAME MNT CID: security.capability on opt/capbin of that layer on the mount.
check_cap() {
  local capv
  capv=$(getfattr -h --only-values -n security.capability "$2/overlay2/$3/diff/opt/capbin" 2>/dev/null | od -An -tx1 | tr -d ' \n')
  [[ -n $capv ]] && pass "$1: the served top layer carries security.capability on opt/capbin" ||
    fail "$1: no security.capability on $2/overlay2/$3/diff/opt/capbin"
}
# check_ls NAME DIR TAG ISMOUNT CID...
check_ls() {
  local name=$1 dir=$2 tag=$3 ismnt=$4 c; shift 4
  run_x 0 "extrafs ls $name" ls "$dir" || return
  grep -q "$tag" "$T/x.out" || fail "ls $name does not show $tag"
  grep -q "${ID_A:7:12}" "$T/x.out" || fail "ls $name does not show the image id ${ID_A:7:12}"
  for c in "$@"; do grep -q "layer ${c:0:12}" "$T/x.out" || fail "ls $name does not show layer ${c:0:12}"; done
  if [[ $ismnt == yes ]]; then
    grep -q "CACHED" "$T/x.out" && grep -Eq "[0-9.]+%" "$T/x.out" || fail "ls $name shows no cached %"
  else
    grep -q "CACHED" "$T/x.out" && fail "ls $name shows a CACHED column"
  fi
}
# check_layout NAME ROOT MNT CID...: what attach wrote into ROOT.
check_layout() {
  local name=$1; shift
  python3 - "$@" <<'PY' && pass "$name layout: diff symlinks, links, lower, work, modes" || fail "$name layout check failed"
import os, re, stat, sys
rb, mnt, cids = sys.argv[1], sys.argv[2], sys.argv[3:]
bad = []
links = []
for i, c in enumerate(cids):
    d = f"{rb}/overlay2/{c}"
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o710: bad.append(f"{d} mode {oct(st.st_mode)}")
    if os.readlink(f"{d}/diff") != f"{mnt}/overlay2/{c}/diff": bad.append(f"{d}/diff -> {os.readlink(d + '/diff')}")
    link = open(f"{d}/link").read()
    if not re.fullmatch(r"[A-Z0-9]{26}", link): bad.append(f"{d}/link is {link!r}")
    if os.readlink(f"{rb}/overlay2/l/{link}") != f"../{c}/diff": bad.append(f"l/{link}")
    want_lower = ":".join("l/" + l for l in reversed(links))
    if i == 0:
        if os.path.exists(f"{d}/lower") or os.path.exists(f"{d}/work"): bad.append(f"{d}: base has lower/work")
    else:
        if open(f"{d}/lower").read() != want_lower: bad.append(f"{d}/lower")
        if not os.path.isdir(f"{d}/work"): bad.append(f"{d}/work missing")
    links.append(link)
    if not os.path.isdir(f"{d}/diff/"): bad.append(f"{d}/diff does not resolve")
if bad:
    print("\n".join(bad))
sys.exit(1 if bad else 0)
PY
}
# check_fetched NAME MNT CID...: `extrafs stats` shows a small part of the image fetched.
check_fetched() {
  local name=$1 mnt=$2; shift 2
  "$EXTRAFS" stats "$mnt" --json >"$T/stats.json" || { fail "$name: extrafs stats failed"; return; }
  python3 -c "$FETCHED_PY" "$T/stats.json" "$@" >"$T/stats.msg" 2>&1 && pass "$name: $(tail -1 "$T/stats.msg")" || fail "$name: $(tail -1 "$T/stats.msg")"
}
FETCHED_PY='
import json, sys
j = json.load(open(sys.argv[1])); cids = set(sys.argv[2:])
total = sum(l["bytes_total"] for l in j["layers"] if l["cache_id"] in cids)
fetched = j["bytes_fetched"]
print(f"the run fetched {fetched} of {total} bytes ({100.0 * fetched / max(total, 1):.1f}%)")
sys.exit(0 if 0 < fetched < total // 2 and total > 50 << 20 else 1)
'
# check_save NAME TAR: a `docker save` archive whose layer tars hash to the image's diff_ids, i.e.
# dockerd rebuilt every layer tar byte for byte from the served files and the tar-split.
check_save() {
  python3 - "$2" <<'PY' >"$T/save.msg" 2>&1 && pass "$1: docker save works, $(tail -1 "$T/save.msg")" || fail "$1: docker save archive: $(tail -3 "$T/save.msg")"
import hashlib, json, sys, tarfile
t = tarfile.open(sys.argv[1])
man = json.load(t.extractfile("manifest.json"))[0]
cfg = json.load(t.extractfile(man["Config"]))
got = []
for l in man["Layers"]:
    h = hashlib.sha256(); f = t.extractfile(l)
    for b in iter(lambda: f.read(1 << 20), b""): h.update(b)
    got.append("sha256:" + h.hexdigest())
ok = got == cfg["rootfs"]["diff_ids"]
print(f"{len(got)} layer tars, {'all equal to' if ok else 'NOT equal to'} the config's diff_ids")
sys.exit(0 if ok else 1)
PY
}
# check_export NAME TAR: equals $T/export-a.tar, and has every odd entry.
check_export() {
  local name=$1 tar=$2
  if python3 "$COMPARE_TARS" "$T/export-a.tar" "$tar" --require opt/capbin --require opt/hard \
    --require opt/suid --require opt/unused.bin --require data/sub/c \
    --ignore-mtime . --ignore-mtime .dockerenv --ignore-mtime dev --ignore-mtime dev/console --ignore-mtime dev/pts \
    --ignore-mtime dev/shm --ignore-mtime etc --ignore-mtime etc/hostname --ignore-mtime etc/hosts \
    --ignore-mtime etc/mtab --ignore-mtime etc/resolv.conf --ignore-mtime proc --ignore-mtime sys >"$T/cmp.out" 2>&1; then
    pass "$name: docker export equals the export from A: $(tail -1 "$T/cmp.out")"
  else
    fail "$name: exports differ: $(head -20 "$T/cmp.out")"
  fi
  python3 - "$tar" <<'PY' >"$T/odd.out" && pass "$name: export has the whiteout, opaque dir, hard link, setuid bit and capability" || fail "$name: export lacks an odd entry: $(cat "$T/odd.out")"
import sys, tarfile
t = {}
for m in tarfile.open(sys.argv[1]):
    n = m.name[2:] if m.name.startswith("./") else m.name
    t[n.rstrip("/")] = m
checks = {
    "whiteout hides etc/removeme": "etc/removeme" not in t,
    "opaque dir hides data/sub/b": "data/sub/b" not in t and "data/sub/c" in t and "data/keep/a" in t,
    "opt/hard and opt/orig are hard links": any(
        a in t and t[a].islnk() and t[a].linkname.lstrip("./") == b for a, b in (("opt/hard", "opt/orig"), ("opt/orig", "opt/hard"))),
    "opt/suid is setuid": "opt/suid" in t and bool(t["opt/suid"].mode & 0o4000),
    "opt/capbin has security.capability": "opt/capbin" in t and "SCHILY.xattr.security.capability" in t["opt/capbin"].pax_headers,
}
bad = [k for k, v in checks.items() if not v]
print("; ".join(bad))
sys.exit(1 if bad else 0)
PY
}

# ---------------------------------------------------------------------------------------------
step "build the image on dockerd A"
start_dockerd "$DA" "$RA" A
R=$T/rootfs
mkdir -p "$R/bin" "$R/etc" "$R/data/keep" "$R/data/sub" "$R/opt" "$R/tmp"
cp /bin/busybox "$R/bin/busybox"
for a in sh ls cat echo rm mkdir ln chmod stat head true touch; do ln -s busybox "$R/bin/$a"; done
echo hello >"$R/etc/greeting"
echo gone >"$R/etc/removeme"
echo a >"$R/data/keep/a"
echo b >"$R/data/sub/b"
head -c $((50 << 20)) /dev/urandom >"$R/opt/unused.bin"
tar -C "$R" -c . | dA import - e2e-base:1 >/dev/null || die "docker import failed"
CTX=$T/ctx
mkdir -p "$CTX" "$T/capsrc"
printf 'capfile\n' >"$T/capsrc/capbin"
chmod 755 "$T/capsrc/capbin"
setcap cap_net_raw+ep "$T/capsrc/capbin" || die "setcap failed"
tar --xattrs --xattrs-include='security.capability' -C "$T/capsrc" -cf "$CTX/cap.tar" capbin
cat >"$CTX/Dockerfile" <<EOF
FROM e2e-base:1
RUN rm /etc/removeme && rm -rf /data/sub && mkdir /data/sub && echo new >/data/sub/c
RUN echo linked >/opt/orig && ln /opt/orig /opt/hard && echo suid >/opt/suid && chmod 4755 /opt/suid
ADD cap.tar /opt/
CMD ["/bin/sh", "-c", "echo $EXPECT; cat /etc/greeting"]
EOF
dA build --network none -q -t "$IMAGE" "$CTX" >"$T/build.out" 2>&1 || die "docker build failed: $(tail -5 "$T/build.out")"
ID_A=$(dA image inspect -f '{{.Id}}' "$IMAGE")
NLAYERS=$(dA image inspect -f '{{len .RootFS.Layers}}' "$IMAGE")
[[ $NLAYERS -ge 4 ]] && pass "$IMAGE built: $ID_A, $NLAYERS layers" || fail "$IMAGE has $NLAYERS layers"
out=$(dA run --rm --network none "$IMAGE" 2>&1)
[[ $(head -1 <<<"$out") == "$EXPECT" ]] && pass "runs on A" || fail "run on A printed: $out"
dA create --name exp-a "$IMAGE" >/dev/null 2>&1 && dA export exp-a >"$T/export-a.tar" && dA rm exp-a >/dev/null ||
  die "docker export on A failed"
dA tag "$IMAGE" "$IMAGE_AR" && dA save "$IMAGE_AR" -o "$T/app.tar" && dA rmi "$IMAGE_AR" >/dev/null ||
  die "docker save $IMAGE_AR on A failed"
pass "docker save $IMAGE_AR: $(stat -c %s "$T/app.tar") bytes"
stop_dockerd "$DA" A

# ---------------------------------------------------------------------------------------------
step "publish from the data-root into STORE, from the archive into STORE2; cp -a + index STORE3"
run_x 0 "publish --data-root RA $IMAGE e2e-base:1" publish --data-root "$RA" "$IMAGE" e2e-base:1 --to "$STORE" &&
  { grep -q "^published .*$NLAYERS layers written" "$T/x.out" && pass "$(cat "$T/x.out")" || fail "publish said: $(cat "$T/x.out")"; }
run_x 0 "publish --archive app.tar" publish --archive "$T/app.tar" --to "$STORE2" &&
  { grep -q "^published .*$NLAYERS layers written" "$T/x.out" && pass "$(cat "$T/x.out")" || fail "publish said: $(cat "$T/x.out")"; }
[[ -s $STORE/extrafs/catalog && -s $STORE2/extrafs/catalog ]] || die "publish made no catalog"
mapfile -t CH1 < <(cache_ids "$STORE")
mapfile -t CH2 < <(cache_ids "$STORE2")
CIDS=() CIDS2=()
for x in "${CH1[@]}"; do CIDS+=("${x#* }"); done
for x in "${CH2[@]}"; do CIDS2+=("${x#* }"); done
[[ ${#CIDS[@]} -eq $NLAYERS && ${#CIDS2[@]} -eq $NLAYERS ]] ||
  die "found ${#CIDS[@]} / ${#CIDS2[@]} cache ids in STORE / STORE2, expected $NLAYERS"
# --data-root keeps A's cache-ids; --archive makes fresh ones.
same=0; for c in "${CIDS[@]}"; do [[ -d $RA/overlay2/$c ]] && same=$((same + 1)); done
[[ $same -eq $NLAYERS ]] && pass "STORE keeps A's cache-ids" || fail "only $same of STORE's cache-ids are A's"
same=0; for c in "${CIDS2[@]}"; do [[ -d $RA/overlay2/$c ]] && same=1; done
[[ $same -eq 0 ]] && pass "STORE2 has fresh cache-ids" || fail "STORE2 reuses a cache-id of A"
check_packed STORE "$STORE" yes "${CH1[@]/ /:}"
check_packed STORE2 "$STORE2" no "${CH2[@]/ /:}"
grep -q '"e2e-base"' "$STORE/image/overlay2/repositories.json" && grep -q "\"$IMAGE\"" "$STORE/image/overlay2/repositories.json" &&
  pass "STORE's repositories.json has e2e-base:1 and $IMAGE" || fail "STORE's repositories.json: $(head -c 400 "$STORE/image/overlay2/repositories.json")"
grep -q "\"$IMAGE_AR\"" "$STORE2/image/overlay2/repositories.json" && ! grep -q "\"$IMAGE\"" "$STORE2/image/overlay2/repositories.json" &&
  pass "STORE2's repositories.json has $IMAGE_AR only" || fail "STORE2's repositories.json: $(head -c 400 "$STORE2/image/overlay2/repositories.json")"
cp -a "$RA/image" "$RA/overlay2" "$STORE3/" || die "cp -a failed"
run_x 0 "extrafs index STORE3 (Hermes-style copy)" index "$STORE3" || die "index failed"
snapshot "$STORE" >"$T/store.before"
snapshot "$STORE2" >"$T/store2.before"
snapshot "$STORE3" >"$T/store3.before"

step "serve the three stores over NFS (one export, a subdirectory each), mount each"
export GANESHA_PROTOCOLS=4 GANESHA_ACCESS=RO
URL=
for _ in $(seq 1 20); do
  port=$((31000 + (RANDOM % 8000) * 2))
  rc=0
  out=$(timeout 60 "$GANESHA" start "$GSTATE" "$STORES" "$port" 2>"$T/ganesha.err") || rc=$?
  if [[ $rc -eq 0 ]]; then URL=$(sed -n 's/^NFS4_URL=//p' <<<"$out"); break; fi
  [[ $rc -eq 3 ]] && continue
  die "ganesha.sh start failed (rc $rc): $(tail -5 "$T/ganesha.err")"
done
[[ -n $URL ]] || die "no free port for nfs-ganesha"
pass "nfs-ganesha serves $STORES at $URL"
for m in "dr $MNT cache" "ar $MNT2 cache2" "hermes $MNT3 cache3"; do
  read -r sub mnt cache <<<"$m"
  rc=0
  timeout 60 "$EXTRAFS" mount "$URL/$sub" "$mnt" -o "cache=$T/$cache,cache_size=1G,log_level=warn" 2>"$T/mount.err" || rc=$?
  track_mount "$mnt"
  [[ $rc -eq 0 ]] || die "extrafs mount $URL/$sub failed (exit $rc): $(head -c 500 "$T/mount.err")"
  pass "mounted $URL/$sub on $mnt"
done
check_cap MNT "$MNT" "${CIDS[-1]}"
check_cap MNT2 "$MNT2" "${CIDS2[-1]}"

# ---------------------------------------------------------------------------------------------
step "extrafs ls"
check_ls STORE "$STORE" "$IMAGE" no "${CIDS[@]}"
check_ls STORE2 "$STORE2" "$IMAGE_AR" no "${CIDS2[@]}"
check_ls MNT2 "$MNT2" "$IMAGE_AR" yes "${CIDS2[@]}"
check_ls MNT "$MNT" "$IMAGE" yes "${CIDS[@]}"
cp "$T/x.out" "$T/ls-mnt.out"
run_x 1 "extrafs ls of a directory that is no store" ls "$T/capsrc" && one_line_err "ls bad dir"
run_x 1 "extrafs ls of a missing path" ls "$T/nonexistent" && one_line_err "ls missing"

# ---------------------------------------------------------------------------------------------
step "attach: refusals"
run_x 2 "attach without --mount" docker attach "$IMAGE" --data-root "$RB"
run_x 2 "attach without an image" docker attach --mount "$MNT" --data-root "$RB"
run_x 2 "attach of a bad reference" docker attach "bad ref" --mount "$MNT" --data-root "$RB" && one_line_err "bad ref"
run_x 1 "attach from a directory that is not an extrafs mount" docker attach "$IMAGE" --mount "$STORE" --data-root "$RB" &&
  one_line_err "not a mount"
run_x 1 "attach of an image the store lacks" docker attach nosuch:1 --mount "$MNT" --data-root "$RB" && one_line_err "no image"
mkdir -p "$T/rvfs/image/vfs"
run_x 1 "attach into a data-root of the vfs driver" docker attach "$IMAGE" --mount "$MNT" --data-root "$T/rvfs" &&
  { one_line_err "vfs"; grep -q vfs "$T/x.err" || fail "the refusal does not name vfs"; }
[[ -e $RB ]] && fail "a refused attach created $RB"

step "attach into a fresh data-root"
run_x 0 "attach $IMAGE" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB"
check_layout B "$RB" "$MNT" "${CIDS[@]}"
dataroot_listing "$RB" >"$T/rb.1"
run_x 0 "attach again" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB"
grep -q "already attached" "$T/x.out" || fail "second attach did not say 'already attached': $(cat "$T/x.out")"
dataroot_listing "$RB" >"$T/rb.2"
cmp -s "$T/rb.1" "$T/rb.2" && pass "a second attach changes nothing" || fail "a second attach changed: $(diff "$T/rb.1" "$T/rb.2" | head -5)"

# ---------------------------------------------------------------------------------------------
step "dockerd B runs the attached image lazily"
start_dockerd "$DB" "$RB" B
dB image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null | grep -qx "$ID_A" && pass "B lists $IMAGE as $ID_A" || fail "B does not list $IMAGE"
# Attached whole already: nothing to write, so no refusal (and nothing written).
run_x 0 "attach of the attached $IMAGE while dockerd B runs" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB" &&
  { grep -q "already attached" "$T/x.out" && pass "says it is attached already" || fail "stdout: $(cat "$T/x.out")"; }
run_x 1 "attach of e2e-base:1 while dockerd B runs" docker attach e2e-base:1 --mount "$MNT" --data-root "$RB" &&
  { one_line_err "attach busy"; grep -q dockerd "$T/x.err" || fail "the refusal does not name dockerd"; }
run_x 1 "detach while dockerd B runs" docker detach "$IMAGE" --data-root "$RB" && one_line_err "detach busy"
out=$(dB run --rm --network none "$IMAGE" 2>&1)
[[ $out == "$EXPECT"$'\n'"hello" ]] && pass "docker run on B prints '$EXPECT'" || fail "docker run on B printed: $out"
check_fetched B "$MNT" "${CIDS[@]}"
dB create --name exp-b "$IMAGE" >/dev/null 2>&1 && dB export exp-b >"$T/export-b.tar" && dB rm exp-b >/dev/null ||
  fail "docker export on B failed"
check_export B "$T/export-b.tar"
dB save "$IMAGE" >"$T/save.tar" 2>"$T/save.err" && check_save B "$T/save.tar" ||
  fail "docker save on B failed: $(head -c 300 "$T/save.err")"
rm -f "$T/save.tar"

# ---------------------------------------------------------------------------------------------
step "dockerd C runs the archive-published image from MNT2"
run_x 0 "attach $IMAGE_AR from MNT2" docker attach "$IMAGE_AR" --mount "$MNT2" --data-root "$RC"
check_layout C "$RC" "$MNT2" "${CIDS2[@]}"
start_dockerd "$DC" "$RC" C
dC image inspect -f '{{.Id}}' "$IMAGE_AR" 2>/dev/null | grep -qx "$ID_A" && pass "C lists $IMAGE_AR as $ID_A" || fail "C does not list $IMAGE_AR"
out=$(dC run --rm --network none "$IMAGE_AR" 2>&1)
[[ $out == "$EXPECT"$'\n'"hello" ]] && pass "docker run on C prints '$EXPECT'" || fail "docker run on C printed: $out"
check_fetched C "$MNT2" "${CIDS2[@]}"
dC create --name exp-c "$IMAGE_AR" >/dev/null 2>&1 && dC export exp-c >"$T/export-c.tar" && dC rm exp-c >/dev/null ||
  fail "docker export on C failed"
check_export C "$T/export-c.tar"
rm -f "$T/export-c.tar"
snapshot "$MNT2" >"$T/mnt2.before"
# extrafs-publish(8): a layer published from an archive has no tar-split, so docker save fails.
rc=0
dC save "$IMAGE_AR" -o "$T/save-c.tar" >/dev/null 2>"$T/save-c.err" || rc=$?
if [[ $rc -ne 0 ]]; then
  grep -qi "tar-split" "$T/save-c.err" && pass "docker save on C fails as documented (no tar-split): $(head -c 200 "$T/save-c.err")" ||
    fail "docker save on C fails, but not for the missing tar-split: $(head -c 300 "$T/save-c.err")"
else
  fail "docker save on C succeeded ($(stat -c %s "$T/save-c.tar" 2>/dev/null) bytes); extrafs-publish(8) says it fails"
fi
rm -f "$T/save-c.tar"
out=$(dC run --rm --network none "$IMAGE_AR" 2>&1)
[[ $(head -1 <<<"$out") == "$EXPECT" ]] && pass "C still runs it after the failed save" || fail "after the failed save, C printed: $out"
stop_dockerd "$DC" C
start_dockerd "$DC" "$RC" C
out=$(dC run --rm --network none "$IMAGE_AR" 2>&1)
[[ $(head -1 <<<"$out") == "$EXPECT" ]] && pass "C runs it after a dockerd restart" || fail "after restart, C printed: $out"
dC rmi "$IMAGE_AR" >/dev/null 2>"$T/rmi.err" && pass "docker rmi on C" || fail "docker rmi on C failed: $(cat "$T/rmi.err")"
dC image prune -a -f >/dev/null 2>&1 || fail "docker image prune -a on C failed"
left=$(ls "$RC/overlay2" | grep -vx l | wc -l)
[[ $left -eq 0 ]] && pass "rmi removed C's overlay2 dirs" || fail "$left overlay2 dirs left on C after rmi"
stop_dockerd "$DC" C
snapshot "$STORE2" | cmp -s - "$T/store2.before" && pass "STORE2 untouched by save/rmi/prune" || fail "STORE2 changed"
snapshot "$MNT2" | cmp -s - "$T/mnt2.before" && pass "MNT2 untouched by save/rmi/prune" || fail "MNT2 changed"

# ---------------------------------------------------------------------------------------------
step "dockerd H runs the image from the Hermes-style store (MNT3)"
run_x 0 "attach $IMAGE from MNT3" docker attach "$IMAGE" --mount "$MNT3" --data-root "$RH"
check_layout H "$RH" "$MNT3" "${CIDS[@]}"
start_dockerd "$DH" "$RH" H
out=$(dH run --rm --network none "$IMAGE" 2>&1)
[[ $out == "$EXPECT"$'\n'"hello" ]] && pass "docker run on H prints '$EXPECT'" || fail "docker run on H printed: $out"
check_fetched H "$MNT3" "${CIDS[@]}"
dH create --name exp-h "$IMAGE" >/dev/null 2>&1 && dH export exp-h >"$T/export-h.tar" && dH rm exp-h >/dev/null ||
  fail "docker export on H failed"
check_export H "$T/export-h.tar"
rm -f "$T/export-h.tar"
dH save "$IMAGE" >"$T/save.tar" 2>"$T/save.err" && check_save H "$T/save.tar" ||
  fail "docker save on H failed: $(head -c 300 "$T/save.err")"
rm -f "$T/save.tar"
dH image prune -a -f >/dev/null 2>&1 || fail "docker image prune -a on H failed"
dH image inspect "$IMAGE" >/dev/null 2>&1 && fail "prune -a left $IMAGE on H"
stop_dockerd "$DH" H
snapshot "$STORE3" | cmp -s - "$T/store3.before" && pass "STORE3 untouched" || fail "STORE3 changed"

step "dockerd B restart, next to a running dockerd A"
stop_dockerd "$DB" B
start_dockerd "$DA" "$RA" A
run_x 0 "attach into B's data-root while only A (another data-root) runs" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB"
start_dockerd "$DB" "$RB" B
out=$(dB run --rm --network none "$IMAGE" 2>&1)
[[ $(head -1 <<<"$out") == "$EXPECT" ]] && pass "runs after a dockerd restart" || fail "after restart, run printed: $out"
out=$(dA run --rm --network none "$IMAGE" 2>&1)
[[ $(head -1 <<<"$out") == "$EXPECT" ]] && pass "A runs it too, at the same time" || fail "A (with B running) printed: $out"
stop_dockerd "$DA" A

# ---------------------------------------------------------------------------------------------
step "docker rmi / re-attach / image prune leave the store alone"
snapshot "$MNT" >"$T/mnt.before"
dB rmi "$IMAGE" >/dev/null 2>"$T/rmi.err" && pass "docker rmi" || fail "docker rmi failed: $(cat "$T/rmi.err")"
left=$(ls "$RB/overlay2" | grep -vx l | wc -l)
[[ $left -eq 0 ]] && pass "rmi removed B's overlay2 dirs" || fail "$left overlay2 dirs left after rmi"
snapshot "$STORE" | cmp -s - "$T/store.before" && pass "STORE untouched after rmi" || fail "STORE changed after rmi"
snapshot "$MNT" | cmp -s - "$T/mnt.before" && pass "MNT untouched after rmi" || fail "MNT changed after rmi"
stop_dockerd "$DB" B
run_x 0 "re-attach after rmi" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB"
start_dockerd "$DB" "$RB" B
out=$(dB run --rm --network none "$IMAGE" 2>&1)
[[ $(head -1 <<<"$out") == "$EXPECT" ]] && pass "runs after re-attach" || fail "after re-attach, run printed: $out"
dB image prune -a -f >"$T/prune.out" 2>&1 || fail "docker image prune -a failed: $(cat "$T/prune.out")"
dB image inspect "$IMAGE" >/dev/null 2>&1 && fail "prune -a left $IMAGE" || pass "docker image prune -a removed $IMAGE"
snapshot "$STORE" | cmp -s - "$T/store.before" && pass "STORE untouched after prune" || fail "STORE changed after prune"
snapshot "$MNT" | cmp -s - "$T/mnt.before" && pass "MNT untouched after prune" || fail "MNT changed after prune"

# ---------------------------------------------------------------------------------------------
step "detach"
stop_dockerd "$DB" B
dataroot_listing "$RB" nomtime >"$T/rb.empty"
run_x 0 "attach e2e-base:1 (the base layer only)" docker attach e2e-base:1 --mount "$MNT" --data-root "$RB"
run_x 0 "attach $IMAGE on top" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB"
grep -q "1 already present" "$T/x.out" && pass "the base layer was reused" || fail "base layer not reused: $(cat "$T/x.out")"
run_x 0 "detach $IMAGE" docker detach "$IMAGE" --data-root "$RB"
grep -q "kept layer ${CIDS[0]}" "$T/x.out" && [[ -L $RB/overlay2/${CIDS[0]}/diff ]] && [[ ! -e $RB/overlay2/${CIDS[1]} ]] &&
  pass "detach kept the base layer e2e-base:1 uses and removed the rest" || fail "detach with a shared base: $(cat "$T/x.out")"
run_x 0 "detach e2e-base:1" docker detach e2e-base:1 --data-root "$RB"
dataroot_listing "$RB" nomtime >"$T/rb.after"
cmp -s "$T/rb.empty" "$T/rb.after" &&
  pass "detach removed exactly what attach made" || fail "detach left: $(diff "$T/rb.empty" "$T/rb.after" | head -8)"
python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['Repositories']; sys.exit(any('$IMAGE' in v for v in r.values()))" \
  "$RB/image/overlay2/repositories.json" && pass "tag gone from repositories.json" || fail "tag still in repositories.json"
run_x 1 "detach of an image that is not there" docker detach "$IMAGE" --data-root "$RB" && one_line_err "detach missing"

step "detach keeps what a container uses"
run_x 0 "attach" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB"
start_dockerd "$DB" "$RB" B
dB create --network none --name keeper "$IMAGE" >/dev/null 2>&1 || fail "docker create failed"
stop_dockerd "$DB" B
run_x 0 "detach with a container" docker detach "$IMAGE" --data-root "$RB"
grep -q "kept layer" "$T/x.out" && pass "detach kept the layers: $(grep -c 'kept layer' "$T/x.out")" || fail "detach kept nothing: $(cat "$T/x.out")"
[[ -f $RB/image/overlay2/imagedb/content/sha256/${ID_A:7} ]] && pass "image config kept" || fail "image config removed under a container"
start_dockerd "$DB" "$RB" B
out=$(dB start -a keeper 2>&1)
[[ $(head -1 <<<"$out") == "$EXPECT" ]] && pass "the container still runs" || fail "container after detach printed: $out"
dB rm keeper >/dev/null && dB image prune -a -f >/dev/null 2>&1 || fail "cleanup by dockerd failed"
left=$(ls "$RB/overlay2" | grep -vx l | wc -l)
[[ $left -eq 0 ]] && pass "dockerd removed the rest itself" || fail "$left overlay2 dirs left"
stop_dockerd "$DB" B
snapshot "$STORE" | cmp -s - "$T/store.before" && pass "STORE untouched at the end" || fail "STORE changed"

finish
