#!/bin/bash
# test_docker_e2e.sh EXTRAFS: an image built by a real dockerd (A), copied into a Hermes-style
# store, served over NFS by a private nfs-ganesha, mounted with extrafs and attached to a fresh
# data-root whose dockerd (B) runs it, lazily, with exactly the bytes the original has.
#
# Checks:
#   - the image (imported busybox-static base + `docker build` layers with a whiteout, an opaque
#     directory, a hard link, a setuid file, a file capability from an ADDed tar, a 50 MiB file
#     nothing reads) builds on A; its layer on the mount carries security.capability
#   - `extrafs ls STORE` and `extrafs ls MNT` show the tag and every layer (and CACHED on the mount)
#   - attach refuses: no --mount (exit 2), a mount point that is not extrafs, an image the store
#     lacks, a data-root of another storage driver, a running dockerd (exit 1); detach too
#   - attach writes the documented layout (diff symlinks into MNT, link/l/, lower, work, modes),
#     and a second attach changes nothing
#   - dockerd B lists and runs the image (`docker run --network none` prints the CMD's line),
#     having fetched less than half of the image's bytes
#   - `docker export` of a container of the attached image equals the export from A entry by
#     entry (type, mode, uid/gid, size, mtime, link targets, xattrs) and byte by byte
#   - `docker save` works on B; the image survives a dockerd B restart
#   - `docker rmi`, re-attach, `docker image prune -a`, detach: STORE and MNT untouched
#     (checksum snapshots), B's data-root left without what attach made
#   - detach keeps what a container uses; that container still runs; prune then removes it all
set -u
DHERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$DHERE/../integration/lib.sh"   # sets HERE to its own directory
GANESHA=$DHERE/../nfs/ganesha.sh
DOCKERD=$DHERE/dockerd.sh
COMPARE_TARS=$DHERE/compare_tars.py
IMAGE=e2e-app:1
EXPECT="extrafs-e2e-ok"
GSTATE=
DA= DB=

EXTRAFS=${1:-}
require_env
for p in /usr/sbin/dockerd /usr/bin/docker /bin/busybox setcap getcap getfattr ganesha.nfsd nfs-ls python3 tar; do
  command -v "$p" >/dev/null || { echo "FATAL: $p not installed (scripts/setup installs it)"; exit 1; }
done
file -L /bin/busybox 2>/dev/null | grep -q "statically linked" || { echo "FATAL: /bin/busybox is not busybox-static"; exit 1; }

e2e_cleanup() {
  local rc=$?
  set +e
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
DA=$T/da DB=$T/db GSTATE=$T/ganesha
RA=$T/ra RB=$T/rb STORE=$T/store MNT=$T/mnt
mkdir -p "$GSTATE" "$STORE" "$MNT"

dA() { timeout 120 "$DOCKERD" docker "$DA" "$@"; }
dB() { timeout 120 "$DOCKERD" docker "$DB" "$@"; }
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
dataroot_listing() {
  python3 - "$1" "${2:-}" <<'PY'
import hashlib, os, stat, sys
root, nomtime = sys.argv[1], sys.argv[2] == "nomtime"
for sub in ("image", "overlay2"):
    top = os.path.join(root, sub)
    for dp, dns, fns in sorted(os.walk(top)):
        dns.sort()
        for n in sorted(dns + fns):
            p = os.path.join(dp, n)
            st = os.lstat(p)
            extra = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (
                hashlib.sha256(open(p, "rb").read()).hexdigest() if stat.S_ISREG(st.st_mode) else "")
            rel = os.path.relpath(p, root)
            if rel == "image/overlay2/repositories.json":
                continue
            print(rel, oct(st.st_mode), "-" if nomtime else st.st_mtime_ns, extra)
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
stop_dockerd "$DA" A

# ---------------------------------------------------------------------------------------------
step "make a Hermes-style store, index it, serve it over NFS, mount it"
cp -a "$RA/image" "$RA/overlay2" "$STORE/" || die "cp -a failed"
run_x 0 "extrafs index STORE" index "$STORE" || die "index failed"
snapshot "$STORE" >"$T/store.before"
export GANESHA_PROTOCOLS=4 GANESHA_ACCESS=RO
URL=
for _ in $(seq 1 20); do
  port=$((31000 + (RANDOM % 8000) * 2))
  rc=0
  out=$(timeout 60 "$GANESHA" start "$GSTATE" "$STORE" "$port" 2>"$T/ganesha.err") || rc=$?
  if [[ $rc -eq 0 ]]; then URL=$(sed -n 's/^NFS4_URL=//p' <<<"$out"); break; fi
  [[ $rc -eq 3 ]] && continue
  die "ganesha.sh start failed (rc $rc): $(tail -5 "$T/ganesha.err")"
done
[[ -n $URL ]] || die "no free port for nfs-ganesha"
pass "nfs-ganesha serves the store at $URL"
rc=0
timeout 60 "$EXTRAFS" mount "$URL" "$MNT" -o "cache=$T/cache,cache_size=1G,log_level=warn" 2>"$T/mount.err" || rc=$?
track_mount "$MNT"
[[ $rc -eq 0 ]] || die "extrafs mount $URL failed (exit $rc): $(head -c 500 "$T/mount.err")"
pass "mounted $URL on $MNT"

# The layers as the store has them (base first).
mapfile -t CIDS < <(python3 - "$STORE" "$ID_A" <<'PY'
import hashlib, json, sys
root, iid = sys.argv[1], sys.argv[2]
cfg = json.load(open(f"{root}/image/overlay2/imagedb/content/sha256/{iid[7:]}"))
chain = None
for d in cfg["rootfs"]["diff_ids"]:
    chain = d if chain is None else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
    print(open(f"{root}/image/overlay2/layerdb/sha256/{chain[7:]}/cache-id").read().strip())
PY
)
[[ ${#CIDS[@]} -eq $NLAYERS ]] || fail "found ${#CIDS[@]} cache ids, expected $NLAYERS"
capv=$(getfattr -h --only-values -n security.capability "$MNT/overlay2/${CIDS[-1]}/diff/opt/capbin" 2>/dev/null | od -An -tx1 | tr -d ' \n')
[[ -n $capv ]] && pass "the served top layer carries security.capability on opt/capbin" ||
  fail "no security.capability on $MNT/overlay2/${CIDS[-1]}/diff/opt/capbin"

# ---------------------------------------------------------------------------------------------
step "extrafs ls"
for where in STORE MNT; do
  dir=${!where}
  if run_x 0 "extrafs ls $where" ls "$dir"; then
    grep -q "$IMAGE" "$T/x.out" || fail "ls $where does not show $IMAGE"
    grep -q "${ID_A:7:12}" "$T/x.out" || fail "ls $where does not show the image id ${ID_A:7:12}"
    for c in "${CIDS[@]}"; do grep -q "layer ${c:0:12}" "$T/x.out" || fail "ls $where does not show layer ${c:0:12}"; done
    [[ $where == MNT ]] && { grep -q "CACHED" "$T/x.out" && grep -Eq "[0-9.]+%" "$T/x.out" || fail "ls MNT shows no cached %"; }
    [[ $where == STORE ]] && grep -q "CACHED" "$T/x.out" && fail "ls STORE shows a CACHED column"
  fi
done
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
python3 - "$RB" "$MNT" "${CIDS[@]}" <<'PY' && pass "layout: diff symlinks, links, lower, work, modes" || fail "layout check failed"
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
dataroot_listing "$RB" >"$T/rb.1"
run_x 0 "attach again" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB"
grep -q "already attached" "$T/x.out" || fail "second attach did not say 'already attached': $(cat "$T/x.out")"
dataroot_listing "$RB" >"$T/rb.2"
cmp -s "$T/rb.1" "$T/rb.2" && pass "a second attach changes nothing" || fail "a second attach changed: $(diff "$T/rb.1" "$T/rb.2" | head -5)"

# ---------------------------------------------------------------------------------------------
step "dockerd B runs the attached image lazily"
start_dockerd "$DB" "$RB" B
dB image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null | grep -qx "$ID_A" && pass "B lists $IMAGE as $ID_A" || fail "B does not list $IMAGE"
run_x 1 "attach while dockerd B runs" docker attach "$IMAGE" --mount "$MNT" --data-root "$RB" &&
  { one_line_err "attach busy"; grep -q dockerd "$T/x.err" || fail "the refusal does not name dockerd"; }
run_x 1 "detach while dockerd B runs" docker detach "$IMAGE" --data-root "$RB" && one_line_err "detach busy"
out=$(dB run --rm --network none "$IMAGE" 2>&1)
[[ $out == "$EXPECT"$'\n'"hello" ]] && pass "docker run on B prints '$EXPECT'" || fail "docker run on B printed: $out"
"$EXTRAFS" stats "$MNT" --json >"$T/stats.json" || fail "extrafs stats failed"
python3 - "$T/stats.json" "${CIDS[@]}" <<'PY' && pass "$(tail -1 "$T/stats.msg")" || fail "$(tail -1 "$T/stats.msg")"
import json, sys, os
j = json.load(open(sys.argv[1])); cids = set(sys.argv[2:])
total = sum(l["bytes_total"] for l in j["layers"] if l["cache_id"] in cids)
fetched = j["bytes_fetched"]
msg = f"the run fetched {fetched} of {total} bytes ({100.0 * fetched / max(total, 1):.1f}%)"
open(os.path.join(os.path.dirname(sys.argv[1]), "stats.msg"), "w").write(msg + "\n")
sys.exit(0 if 0 < fetched < total // 2 and total > 50 << 20 else 1)
PY
dB create --name exp-b "$IMAGE" >/dev/null 2>&1 && dB export exp-b >"$T/export-b.tar" && dB rm exp-b >/dev/null ||
  fail "docker export on B failed"
if python3 "$COMPARE_TARS" "$T/export-a.tar" "$T/export-b.tar" --require opt/capbin --require opt/hard \
  --require opt/suid --require opt/unused.bin --require data/sub/c \
  --ignore-mtime . --ignore-mtime .dockerenv --ignore-mtime dev --ignore-mtime dev/console --ignore-mtime dev/pts \
  --ignore-mtime dev/shm --ignore-mtime etc --ignore-mtime etc/hostname --ignore-mtime etc/hosts \
  --ignore-mtime etc/mtab --ignore-mtime etc/resolv.conf --ignore-mtime proc --ignore-mtime sys >"$T/cmp.out" 2>&1; then
  pass "docker export from B equals the export from A: $(tail -1 "$T/cmp.out")"
else
  fail "exports differ: $(head -20 "$T/cmp.out")"
fi
python3 - "$T/export-b.tar" <<'PY' >"$T/odd.out" && pass "export has the whiteout, opaque dir, hard link, setuid bit and capability" || fail "export lacks an odd entry: $(cat "$T/odd.out")"
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
dB save "$IMAGE" >"$T/save.tar" 2>"$T/save.err" && tar -tf "$T/save.tar" | grep -q manifest.json &&
  pass "docker save works on B ($(stat -c %s "$T/save.tar") bytes)" || fail "docker save on B failed: $(head -c 300 "$T/save.err")"

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
