#!/bin/bash
# test_overlay.sh EXTRAFS
#
# The served layers must work as overlayfs lower layers exactly like the
# store's own diff/ directories:
#   * a read-only overlay of the store's diffs (O1) and one of the served diffs
#     (O2, lowerdir taken the docker way: MNT/overlay2/l/<link> of the top layer
#     plus the entries of its `lower` file) compare identical;
#   * whiteouts, opaque directories, type changes and hard links are checked
#     explicitly in both overlays, so the test cannot pass if both are equally
#     broken (e.g. ghost whiteout entries from a missing d_type, or lower files
#     leaking through an opaque directory when getxattr is missing);
#   * a writable overlay over the served diffs copies up on write, chmod, rm and
#     mkdir, keeps xattrs on copy-up, and leaves the store and the mount
#     untouched;
#   * a static busybox in the base layer runs from a chroot into O2.
set -euo pipefail
EXTRAFS=${1:-}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env
setup_tmp

BUSYBOX=$(command -v busybox || true)
if [[ -z $BUSYBOX ]] || ldd "$BUSYBOX" >/dev/null 2>&1; then   # ldd fails on static binaries
  echo "FATAL: a statically linked busybox is needed in PATH (apt-get install busybox-static)"; exit 1
fi

STORE=$T/store
MNT=$T/mnt
O1=$T/o1 O2=$T/o2 O3=$T/o3
mkdir -p "$MNT" "$O1" "$O2" "$O3" "$T/upper" "$T/work"

step "building the odd store (with $BUSYBOX as base:/bin/busybox), indexing, mounting"
"$HERE/make_odd_store.sh" "$STORE" --busybox "$BUSYBOX" >/dev/null
mapfile -t CIDS <"$STORE/.layers"
BASE=${CIDS[0]} MID=${CIDS[1]} TOP=${CIDS[2]}
rc=0; timeout 300 "$EXTRAFS" index "$STORE" >"$T/index.out" 2>&1 || rc=$?
[[ $rc -eq 0 ]] || die "extrafs index exited $rc: $(head -c 2000 "$T/index.out")"
pass "indexed"
store_manifest() { "${COMPARE[@]}" --manifest "$STORE/image" 2>/dev/null; "${COMPARE[@]}" --manifest "$STORE/overlay2" 2>/dev/null; }
store_manifest >"$T/store.manifest.before"
mount_extrafs "$STORE" "$MNT" || die "cannot continue without a mount"

step "the store really holds the whiteouts and opaque dirs the overlay checks rely on"
S=$STORE/overlay2
python3 - "$S/$BASE/diff" "$S/$MID/diff" "$S/$TOP/diff" <<'PY' >"$T/pre.out" || true
import os, stat, sys
base, mid, top = sys.argv[1:4]
def wh(p):
    st = os.lstat(p)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
checks = [
    ("mid wh_targets/file1 is a whiteout (c 0 0)", lambda: wh(mid + "/wh_targets/file1")),
    ("mid wh_targets/dir1 is a whiteout", lambda: wh(mid + "/wh_targets/dir1")),
    ("top wh_targets/file2 is a whiteout", lambda: wh(top + "/wh_targets/file2")),
    ("top data/one_byte is a whiteout", lambda: wh(top + "/data/one_byte")),
    ("base wh_targets/file2 exists", lambda: os.path.isfile(base + "/wh_targets/file2")),
    ("base wh_targets/dir1/x exists", lambda: os.path.isfile(base + "/wh_targets/dir1/x")),
    ("base data/one_byte exists", lambda: os.path.isfile(base + "/data/one_byte")),
    ("mid opq is opaque", lambda: os.getxattr(mid + "/opq", "trusted.overlay.opaque") == b"y"),
    ("top opq2/deep is opaque", lambda: os.getxattr(top + "/opq2/deep", "trusted.overlay.opaque") == b"y"),
    ("base opq/a exists", lambda: os.path.isfile(base + "/opq/a")),
    ("base opq2/deep/old exists", lambda: os.path.isfile(base + "/opq2/deep/old")),
]
for name, f in checks:
    try:
        ok = f()
    except OSError as e:
        ok = False
    print(("ok " if ok else "FAIL ") + name)
PY
while read -r st rest; do [[ $st == ok ]] && pass "$rest" || fail "store precondition: $rest"; done <"$T/pre.out"

step "read-only overlays: O1 over the store's diffs, O2 over the served diffs"
mount -t overlay overlay -o "ro,lowerdir=$S/$TOP/diff:$S/$MID/diff:$S/$BASE/diff" "$O1" \
  || die "overlayfs over the store itself does not mount (kernel/environment problem)"
track_mount "$O1"
pass "O1 mounted"
# O2 the way dockerd builds it: l/<link of the top layer> followed by the top layer's `lower`.
TOPLINK=$(cat "$MNT/overlay2/$TOP/link") && TOPLOWER=$(cat "$MNT/overlay2/$TOP/lower") \
  || die "cannot read link/lower of the top layer from the mount"
LOWER="l/$TOPLINK:$TOPLOWER"
LOWER_ABS=$(echo "$LOWER" | tr ':' '\n' | sed "s|^|$MNT/overlay2/|" | paste -sd:)
echo "  O2 lowerdir=$LOWER_ABS"
if mount -t overlay overlay -o "ro,lowerdir=$LOWER_ABS" "$O2" 2>"$T/o2.err"; then
  track_mount "$O2"
  pass "O2 mounted on the extrafs-served layers"
else
  fail "overlay mount on the served layers failed: $(cat "$T/o2.err"); dmesg: $(dmesg | tail -3)"
  finish
fi

step "compare O1 and O2 (--no-ino --no-ctime)"
if timed "${COMPARE[@]}" --no-ino --no-ctime "$O1" "$O2" >"$T/cmp.out" 2>&1; then
  pass "$(tail -1 "$T/cmp.out") (${TIME_TAKEN} s)"
else
  fail "O2 differs from O1 (${TIME_TAKEN} s):"; sed 's/^/    /' "$T/cmp.out"
fi

cat >"$T/ovl_checks.py" <<'PY'
# Explicit overlay semantics checks; argv[1] is the merged root.
import os, stat, sys
root = sys.argv[1]
def P(rel): return os.path.join(root, rel)
def listing(rel): return sorted(os.listdir(P(rel)))
def absent(rel):
    try:
        os.lstat(P(rel))
        return False
    except (FileNotFoundError, NotADirectoryError):
        return True
def content(rel):
    with open(P(rel), "rb") as f:
        return f.read()
def ino(rel): return os.lstat(P(rel)).st_ino
def ghosts():
    found = []
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            st = os.lstat(os.path.join(dp, n))
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                found.append(os.path.relpath(os.path.join(dp, n), root))
    return found
checks = [
    ("wh_targets lists exactly file1 hl_keep keep", lambda: listing("wh_targets") == ["file1", "hl_keep", "keep"]),
    ("wh_targets/file1 is top's (reborn over mid's whiteout)", lambda: content("wh_targets/file1") == b"reborn in top\n"),
    ("wh_targets/file2 hidden (top whiteout over base file)", lambda: absent("wh_targets/file2")),
    ("wh_targets/dir1 hidden (whiteout of a directory)", lambda: absent("wh_targets/dir1") and absent("wh_targets/dir1/x")),
    ("wh_targets/link1 hidden (whiteout of a symlink)", lambda: absent("wh_targets/link1")),
    ("wh_targets/newfile hidden (top whiteout over mid file)", lambda: absent("wh_targets/newfile")),
    ("wh_targets/hl_hidden hidden, its hard link hl_keep still there", lambda: absent("wh_targets/hl_hidden") and content("wh_targets/hl_keep") == b"hard-linked, one name whited out\n"),
    ("orphan_whiteout hidden", lambda: absent("orphan_whiteout")),
    ("data/one_byte hidden, data/chunk_exact visible", lambda: absent("data/one_byte") and os.path.getsize(P("data/chunk_exact")) == 1 << 20),
    ("opq (opaque in mid) lists only new", lambda: listing("opq") == ["new"]),
    ("opq/a and opq/sub from base hidden", lambda: absent("opq/a") and absent("opq/sub/c")),
    ("opq2 merges base and top: base_only deep extra", lambda: listing("opq2") == ["base_only", "deep", "extra"]),
    ("opq2/deep (opaque in top) lists only top_file", lambda: listing("opq2/deep") == ["top_file"]),
    ("etc/overridden is top's", lambda: content("etc/overridden") == b"top\n"),
    ("etc merges base and top: greeting overridden passwd", lambda: listing("etc") == ["greeting", "overridden", "passwd"]),
    ("typechange: base file replaced by mid directory", lambda: os.path.isdir(P("typechange")) and listing("typechange") == ["inner"]),
    ("typechange_dir: base directory replaced by mid file", lambda: stat.S_ISREG(os.lstat(P("typechange_dir")).st_mode) and absent("typechange_dir/inner")),
    ("hard links: links/a/target and links/b/target_link share an inode", lambda: ino("links/a/target") == ino("links/b/target_link") and os.lstat(P("links/a/target")).st_nlink == 2),
    ("hard links: 3-link group shares an inode", lambda: ino("links/g1/one") == ino("links/g2/two") == ino("links/g3/sub/three")),
    ("no whiteout (c 0 0) visible anywhere", lambda: ghosts() == []),
    ("opaque xattr not visible on merged opq", lambda: "trusted.overlay.opaque" not in os.listxattr(P("opq"))),
    ("security.capability visible on xattrs/cap_net_raw", lambda: len(os.getxattr(P("xattrs/cap_net_raw"), "security.capability")) == 20),
    ("mid_odd/chr_10_200 is char 10:200", lambda: os.lstat(P("mid_odd/chr_10_200")).st_rdev == os.makedev(10, 200)),
]
bad = 0
for name, f in checks:
    try:
        ok = f()
    except OSError as e:
        ok = False
        name += " (%s)" % e
    print(("ok " if ok else "FAIL ") + name)
PY
for o in O1 O2; do
  step "explicit whiteout / opaque / hard-link checks in $o"
  python3 "$T/ovl_checks.py" "${!o}" >"$T/ovl.$o.out" 2>&1 || true
  while read -r st rest; do [[ $st == ok ]] && pass "$o: $rest" || fail "$o: $rest"; done <"$T/ovl.$o.out"
done

step "run busybox from a chroot into O2"
out=$(timeout 20 chroot "$O2" /bin/busybox sh -c 'echo hello; cat /etc/greeting' 2>&1) && rc=0 || rc=$?
if [[ $rc -eq 0 && $out == $'hello\nhello from the base layer' ]]; then
  pass "chroot O2 /bin/busybox sh -c 'echo hello; cat /etc/greeting'"
else
  fail "busybox in chroot: exit $rc, output: $out"
fi
out=$(timeout 20 chroot "$O2" /bin/sh -c 'cat /etc/overridden; ls /opq; ls /wh_targets' 2>&1) && rc=0 || rc=$?
if [[ $rc -eq 0 && $out == $'top\nnew\nfile1\nhl_keep\nkeep' ]]; then
  pass "chroot O2 /bin/sh (applet symlink): overridden file, opaque dir and whiteouts as expected"
else
  fail "chroot O2 /bin/sh: exit $rc, output: $out"
fi
want=$(sha256sum <"$S/$BASE/diff/data/chunk_x3_plus7" | cut -d' ' -f1)
got=$(timeout 60 chroot "$O2" /bin/busybox sha256sum /data/chunk_x3_plus7 2>&1 | cut -d' ' -f1) || true
[[ $got == "$want" ]] && pass "busybox sha256sum inside the chroot matches the store" || fail "sha256 in chroot '$got', expected '$want'"

step "writable overlay O3 (upperdir on tmp) over the served layers: copy-up"
if ! mount -t overlay overlay -o "lowerdir=$LOWER_ABS,upperdir=$T/upper,workdir=$T/work" "$O3" 2>"$T/o3m.err"; then
  fail "writable overlay over the served layers does not mount: $(cat "$T/o3m.err"); dmesg: $(dmesg | tail -3)"
  finish
fi
track_mount "$O3"
pass "O3 mounted read-write"
"${COMPARE[@]}" --manifest "$MNT/overlay2" >"$T/mnt.manifest.before" 2>&1 || fail "manifest of MNT/overlay2 failed"
declare -A SUM
for f in etc/greeting data/chunk_plus1 xattrs/several wh_targets/keep links/a/target; do
  SUM[$f]=$(sha256sum <"$S/$BASE/diff/$f" | cut -d' ' -f1)
done
ops_ok=1
{
  echo "copied up" >"$O3/etc/greeting" &&
  echo "appended" >>"$O3/data/chunk_plus1" &&
  chmod 600 "$O3/xattrs/several" &&
  rm "$O3/wh_targets/keep" &&
  mkdir "$O3/newdir" && echo new >"$O3/newdir/file" &&
  echo "via hard link" >"$O3/links/a/target" &&
  setfattr -n user.added -v 1 "$O3/xattrs/binary"
} 2>"$T/o3.err" || ops_ok=0
[[ $ops_ok -eq 1 ]] && pass "writes, append, chmod, rm, mkdir, setfattr in O3 succeeded" || fail "an O3 operation failed: $(cat "$T/o3.err")"
[[ $(cat "$O3/etc/greeting") == "copied up" ]] && pass "O3 shows the new etc/greeting" || fail "O3 etc/greeting: $(cat "$O3/etc/greeting")"
[[ $(tail -c 9 "$O3/data/chunk_plus1") == "appended" && $(stat -c %s "$O3/data/chunk_plus1") -eq $((1048577 + 9)) ]] \
  && pass "append after copy-up of a 1 MiB+1 file" || fail "O3 data/chunk_plus1 wrong after append"
cmp -s <(head -c 1048577 "$O3/data/chunk_plus1") "$S/$BASE/diff/data/chunk_plus1" \
  && pass "copied-up data equals the lower bytes" || fail "copy-up of data/chunk_plus1 corrupted the data"
[[ -f $T/upper/etc/greeting && $(cat "$T/upper/etc/greeting") == "copied up" ]] && pass "upper holds etc/greeting" || fail "upper/etc/greeting missing"
u=$(stat -c '%F %t:%T' "$T/upper/wh_targets/keep" 2>&1) || true
[[ $u == "character special file 0:0" ]] && pass "rm created a whiteout in upper" || fail "upper/wh_targets/keep: $u"
absent_keep=1; [[ -e $O3/wh_targets/keep ]] && absent_keep=0
[[ $absent_keep -eq 1 ]] && pass "wh_targets/keep gone from O3" || fail "wh_targets/keep still visible in O3"
if python3 - "$S/$BASE/diff/xattrs/several" "$T/upper/xattrs/several" <<'PY'
import os, sys
a, b = sys.argv[1:3]
def ux(p): return {n: os.getxattr(p, n) for n in os.listxattr(p) if n.startswith("user.")}
sys.exit(0 if ux(a) == ux(b) and ux(a) else 1)
PY
then pass "copy-up kept every user.* xattr (incl. the empty one)"; else fail "copy-up lost or changed user.* xattrs of xattrs/several"; fi
[[ $(stat -c %a "$O3/xattrs/several") == 600 ]] && pass "chmod visible in O3" || fail "chmod not visible in O3"
# The store and the mount are untouched.
bad=0
for f in "${!SUM[@]}"; do
  [[ $(sha256sum <"$S/$BASE/diff/$f" | cut -d' ' -f1) == "${SUM[$f]}" ]] || { fail "store file $f changed"; bad=1; }
  [[ $(sha256sum <"$MNT/overlay2/$BASE/diff/$f" | cut -d' ' -f1) == "${SUM[$f]}" ]] || { fail "served file $f changed"; bad=1; }
done
[[ $bad -eq 0 ]] && pass "store and served copies of the touched files unchanged"
"${COMPARE[@]}" --manifest "$MNT/overlay2" >"$T/mnt.manifest.after" 2>&1 || fail "manifest of MNT/overlay2 failed"
diff -q "$T/mnt.manifest.before" "$T/mnt.manifest.after" >/dev/null && pass "served tree metadata unchanged" \
  || { fail "served tree metadata changed:"; diff "$T/mnt.manifest.before" "$T/mnt.manifest.after" | head; }
umount "$O3" || fail "cannot unmount O3"
store_manifest >"$T/store.manifest.after"
diff -q "$T/store.manifest.before" "$T/store.manifest.after" >/dev/null && pass "store metadata (incl. ctime) unchanged" \
  || { fail "store metadata changed:"; diff "$T/store.manifest.before" "$T/store.manifest.after" | head; }

step "unmount"
umount "$O2" && umount "$O1" && pass "overlays unmounted" || fail "could not unmount the overlays"
rc=0; timeout 30 "$EXTRAFS" unmount "$MNT" >"$T/u.out" 2>&1 || rc=$?
[[ $rc -eq 0 ]] && not_mounted "$MNT" && pass "extrafs unmounted" || fail "extrafs unmount: exit $rc, $(cat "$T/u.out")"

finish
