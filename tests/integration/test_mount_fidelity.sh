#!/bin/bash
# test_mount_fidelity.sh EXTRAFS
#
# Builds the odd store, indexes it, mounts it and checks that the mount is a
# faithful read-only copy of the store:
#   * every layer diff/ equals the store's, entry by entry, with ctime, d_type,
#     d_ino, hard-link groups, xattrs and every byte (compare_trees.py);
#     so does image/;
#   * overlay2/ lists the same layers, link and lower have the store's content,
#     overlay2/l/* are symlinks with the store's targets resolving to the diffs;
#   * concurrent first reads and mmap return the right bytes;
#   * an unprivileged user (allow_other, default permissions) gets the same
#     stat/read/search outcomes on the served tree as on the store;
#   * inode numbers are stable across stats and across dropped kernel caches;
#   * every kind of write fails with EROFS and changes nothing;
#   * indexing and mounting do not modify the store; `index` run again changes
#     nothing under STORE/extrafs/ and is fast;
#   * `extrafs unmount` unmounts and the daemon exits; a daemon killed with
#     SIGTERM (background and -f) unmounts cleanly; a daemon started with its
#     stdout/stderr on a pipe does not hold the pipe open.
set -euo pipefail
EXTRAFS=${1:-}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env
setup_tmp

STORE=$T/store
MNT=$T/mnt
mkdir -p "$MNT"

step "building the odd store"
"$HERE/make_odd_store.sh" "$STORE" >/dev/null
mapfile -t CIDS <"$STORE/.layers"
BASE=${CIDS[0]}
echo "  layers: ${CIDS[*]}"
store_manifest() { "${COMPARE[@]}" --manifest "$STORE/image" 2>/dev/null; "${COMPARE[@]}" --manifest "$STORE/overlay2" 2>/dev/null; }
store_manifest >"$T/store.manifest.before"

step "extrafs index STORE (first run)"
rc=0; timed timeout 300 "$EXTRAFS" index "$STORE" >"$T/index.out" 2>"$T/index.err" || rc=$?
T_INDEX1=$TIME_TAKEN
if [[ $rc -ne 0 ]]; then
  die "extrafs index exited $rc: $(head -c 2000 "$T/index.err")"
fi
pass "index exited 0 in ${T_INDEX1} s"
[[ -f $STORE/extrafs/catalog ]] && pass "STORE/extrafs/catalog written" || fail "no STORE/extrafs/catalog"
for c in "${CIDS[@]}"; do
  [[ -s $STORE/extrafs/layers/$c.index ]] && pass "layers/$c.index written" \
    || fail "no (or empty) STORE/extrafs/layers/$c.index"
done
store_manifest >"$T/store.manifest.indexed"
if diff -u "$T/store.manifest.before" "$T/store.manifest.indexed" >"$T/d"; then
  pass "indexing left the store (outside extrafs/) untouched"
else
  fail "indexing modified the store:"; head -20 "$T/d"
fi

step "extrafs mount STORE MNT -o cache=...,cache_size=512M,log_level=warn,threads=4,timeout=30,allow_other"
mount_extrafs "$STORE" "$MNT" "threads=4,timeout=30,allow_other" || die "cannot continue without a mount"
echo "  mounted as: $(findmnt -n -o FSTYPE,OPTIONS --mountpoint "$MNT" | tail -1)"
DAEMON=$(daemon_pids "$MNT" | head -1)
[[ -n $DAEMON ]] && pass "daemon pid $DAEMON" || warn "could not find the daemon pid for $MNT"
# The kernel starts a FUSE mount at 128 KiB of readahead; the daemon raises it to one chunk.
RA_FILE=/sys/class/bdi/$(mountpoint -d "$MNT")/read_ahead_kb
RA=$(cat "$RA_FILE" 2>/dev/null)
[[ $RA == 1024 ]] && pass "the mount's readahead is 1024 KiB" || fail "$RA_FILE is '$RA', not 1024"

step "top-level layout"
for d in image overlay2; do
  [[ -d $MNT/$d && ! -L $MNT/$d ]] && pass "MNT/$d is a directory" || fail "MNT/$d missing or not a directory"
done
extra=$(comm -13 <(printf '%s\n' image overlay2) <(ls -A "$MNT" | sort))
[[ -z $extra ]] || echo "  note: MNT also holds: $(echo $extra)"
if diff <(ls -A "$STORE/overlay2" | sort) <(ls -A "$MNT/overlay2" | sort) >"$T/d"; then
  pass "MNT/overlay2 lists exactly the store's layers and l/"
else
  fail "MNT/overlay2 listing differs from STORE/overlay2 (< store, > mount):"; cat "$T/d"
fi

for p in "overlay2/$BASE/diff/no-such-file" "overlay2/$BASE/diff/etc/no-such-file" "overlay2/0000no-such-layer" \
         "overlay2/l/NOSUCHLINK" "image/no-such" "overlay2/$BASE/diff/etc/greeting/below-a-file"; do
  err=$(stat -- "$MNT/$p" 2>&1 >/dev/null) && fail "MNT/$p exists" || {
    case $err in
      *"No such file or directory"*|*"Not a directory"*) pass "MNT/$p: ${err##*: }" ;;
      *) fail "MNT/$p: unexpected error: $err" ;;
    esac
  }
done

step "concurrent first reads (8 readers of the same unread files)"
FILES=(data/chunk_x3_plus7 data/chunk_plus1 links/big_a data/chunk_x2)
for f in "${FILES[@]}"; do sha256sum <"$STORE/overlay2/$BASE/diff/$f" | cut -d' ' -f1 >"$T/want.$(basename "$f")"; done
pids=()
for i in 1 2 3 4 5 6 7 8; do
  (for f in "${FILES[@]}"; do sha256sum <"$MNT/overlay2/$BASE/diff/$f" | cut -d' ' -f1 >"$T/got.$i.$(basename "$f")"; done) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
bad=0
for i in 1 2 3 4 5 6 7 8; do
  for f in "${FILES[@]}"; do cmp -s "$T/want.$(basename "$f")" "$T/got.$i.$(basename "$f")" || bad=$((bad + 1)); done
done
[[ $bad -eq 0 ]] && pass "all 32 concurrent reads returned the store's bytes" || fail "$bad of 32 concurrent reads returned wrong bytes"

step "mmap of a served file"
if python3 - "$STORE/overlay2/$BASE/diff/data/chunk_plus1" "$MNT/overlay2/$BASE/diff/data/chunk_plus1" <<'PY'
import mmap, sys
a = open(sys.argv[1], "rb").read()
with open(sys.argv[2], "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
    sys.exit(0 if m[:] == a else 1)
PY
then pass "mmap returns the store's bytes"; else fail "mmap of MNT/overlay2/$BASE/diff/data/chunk_plus1 failed or differs"; fi

for c in "${CIDS[@]}"; do
  step "compare STORE/overlay2/$c/diff with the mount (strict, with ctime)"
  if timed "${COMPARE[@]}" "$STORE/overlay2/$c/diff" "$MNT/overlay2/$c/diff" >"$T/cmp.out" 2>&1; then
    pass "$(tail -1 "$T/cmp.out") (${TIME_TAKEN} s)"
  else
    fail "diff of layer $c differs from the store (${TIME_TAKEN} s):"; sed 's/^/    /' "$T/cmp.out"
  fi
done

step "compare STORE/image with MNT/image (strict, with ctime)"
if "${COMPARE[@]}" "$STORE/image" "$MNT/image" >"$T/cmp.out" 2>&1; then
  pass "$(tail -1 "$T/cmp.out")"
else
  fail "MNT/image differs from STORE/image:"; sed 's/^/    /' "$T/cmp.out"
fi

step "link, lower and overlay2/l/"
for c in "${CIDS[@]}"; do
  diff <(ls -A "$STORE/overlay2/$c" | sort) <(ls -A "$MNT/overlay2/$c" 2>&1 | sort) >"$T/d" \
    && pass "overlay2/${c:0:12}…/ lists $(ls -A "$STORE/overlay2/$c" | tr '\n' ' ')" \
    || { fail "overlay2/$c/ listing differs (< store, > mount):"; cat "$T/d"; }
  for f in link lower; do
    [[ -e $STORE/overlay2/$c/$f ]] || continue
    if [[ -f $MNT/overlay2/$c/$f && ! -L $MNT/overlay2/$c/$f ]] && cmp -s "$STORE/overlay2/$c/$f" "$MNT/overlay2/$c/$f"; then
      pass "${c:0:12}…/$f = '$(cat "$STORE/overlay2/$c/$f")'"
    else
      fail "MNT/overlay2/$c/$f is not a regular file with the store's content ('$(cat "$MNT/overlay2/$c/$f" 2>&1)')"
    fi
  done
done
for l in "$STORE"/overlay2/l/*; do
  n=$(basename "$l")
  want=$(readlink "$l")
  got=$(readlink "$MNT/overlay2/l/$n" 2>&1) || true
  if [[ -L $MNT/overlay2/l/$n && $got == "$want" ]]; then
    pass "l/$n -> $got"
  else
    fail "MNT/overlay2/l/$n: readlink '$got', expected symlink to '$want'"
    continue
  fi
  c=${want#../}; c=${c%/diff}
  [[ $(stat -L -c %i "$MNT/overlay2/l/$n") == "$(stat -c %i "$MNT/overlay2/$c/diff")" ]] \
    && pass "l/$n resolves to the served overlay2/${c:0:12}…/diff" \
    || fail "MNT/overlay2/l/$n does not resolve to MNT/overlay2/$c/diff"
done

step "permission checks for an unprivileged user (uid/gid 65534, allow_other) match the store"
python3 - "$STORE/overlay2/$BASE/diff" "$MNT/overlay2/$BASE/diff" >"$T/perm.out" 2>&1 <<'PY' || true
import os, sys
def probe(root):
    # Run as nobody in a child, from inside root; return the outcome of each access.
    paths = ["etc/greeting", "perms/mode0000", "perms/dir_0700", "perms/dir_0700/inside",
             "perms/dir_0000", "perms/dir_0000/inside", "perms/dir_0555", "links/g1/one",
             "links/a/target", "owners/dir12345", "owners/dir12345/nobody_inside",
             "perms/dir_sticky/inside", "xattrs/cap_net_raw"]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.chdir(root)   # as root: the parents (0700 temp dir, 0710 overlay2/) need not be searchable
        os.setgroups([])
        os.setresgid(65534, 65534, 65534)
        os.setresuid(65534, 65534, 65534)
        out = []
        for p in paths:
            full = p
            res = []
            for what, fn in (("stat", lambda: os.lstat(full)),
                             ("read", lambda: open(full, "rb").read(1) if not os.path.isdir(full) else os.listdir(full)),
                             ("exec", lambda: os.access(full, os.X_OK) or (_ for _ in ()).throw(PermissionError(13, "no x")))):
                try:
                    fn()
                    res.append(what + ":ok")
                except OSError as e:
                    res.append(what + ":" + (os.strerror(e.errno) if e.errno else str(e)))
            out.append("%s %s" % (p, " ".join(res)))
        os.write(w, "\n".join(out).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        data += b
    os.waitpid(pid, 0)
    return data.decode().splitlines()
a, b = probe(sys.argv[1]), probe(sys.argv[2])
for x, y in zip(a, b):
    print(("ok " if x == y else "FAIL ") + (x if x == y else "store: %s | mount: %s" % (x, y)))
PY
while read -r st rest; do [[ $st == ok ]] && pass "as nobody: $rest" || fail "as nobody: $rest"; done <"$T/perm.out"

step "inode numbers are stable"
P=$MNT/overlay2/$BASE/diff/links/a/target
i1=$(stat -c %i "$P" 2>&1) || true; i2=$(stat -c %i "$P" 2>&1) || true
[[ $i1 == "$i2" ]] && pass "stat twice: st_ino $i1" || fail "stat twice gave st_ino $i1 then $i2"
mnt_manifest() {  # mnt_manifest OUT
  "${COMPARE[@]}" --manifest "$MNT/overlay2/$BASE/diff" >"$1" 2>&1 || fail "manifest of the served base layer failed"
  "${COMPARE[@]}" --manifest "$MNT/overlay2" --exclude "$BASE" >>"$1" 2>&1 || fail "manifest of MNT/overlay2 failed"
}
mnt_manifest "$T/ino1"
sync; echo 3 >/proc/sys/vm/drop_caches   # makes the kernel FORGET the nodes
mnt_manifest "$T/ino2"
if diff "$T/ino1" "$T/ino2" >"$T/d"; then
  pass "st_ino (and all metadata) of $(wc -l <"$T/ino1") entries unchanged after drop_caches"
else
  fail "metadata/st_ino changed after the kernel dropped its caches ($(grep -c '^<' "$T/d") lines):"; head -10 "$T/d"
fi

step "writes fail with EROFS"
D=$MNT/overlay2/$BASE/diff
python3 - "$MNT" "$D" "$BASE" >"$T/erofs.out" 2>&1 <<'PY' && rc=0 || rc=$?
import errno, os, sys
mnt, d, base = sys.argv[1:4]
f = d + "/etc/greeting"
ops = [
    ("open O_WRONLY existing", lambda: os.open(f, os.O_WRONLY)),
    ("open O_RDWR existing", lambda: os.open(f, os.O_RDWR)),
    ("open O_WRONLY|O_TRUNC", lambda: os.open(f, os.O_WRONLY | os.O_TRUNC)),
    ("open O_CREAT new file", lambda: os.open(d + "/etc/new", os.O_CREAT | os.O_WRONLY, 0o644)),
    ("open O_CREAT in MNT root", lambda: os.open(mnt + "/new", os.O_CREAT | os.O_WRONLY, 0o644)),
    ("mkdir", lambda: os.mkdir(d + "/newdir")),
    ("mkdir in overlay2/", lambda: os.mkdir(mnt + "/overlay2/newlayer")),
    ("rmdir", lambda: os.rmdir(d + "/times/dir_ns")),
    ("unlink", lambda: os.unlink(f)),
    ("unlink l/ symlink", lambda: os.unlink(mnt + "/overlay2/l/" + sorted(os.listdir(mnt + "/overlay2/l"))[0])),
    ("rename", lambda: os.rename(f, d + "/etc/renamed")),
    ("chmod", lambda: os.chmod(f, 0o600)),
    ("chown", lambda: os.chown(f, 1, 1)),
    ("utime", lambda: os.utime(f, (0, 0))),
    ("truncate", lambda: os.truncate(f, 0)),
    ("setxattr user.*", lambda: os.setxattr(f, "user.new", b"1")),
    ("removexattr user.*", lambda: os.removexattr(d + "/xattrs/several", "user.a")),
    ("removexattr security.capability", lambda: os.removexattr(d + "/xattrs/cap_net_raw", "security.capability")),
    ("symlink", lambda: os.symlink("x", d + "/newlink")),
    ("link", lambda: os.link(f, d + "/etc/hardlink")),
    ("mknod fifo", lambda: os.mknod(d + "/newfifo", 0o10644)),
    ("write image file", lambda: os.open(mnt + "/image/overlay2/repositories.json", os.O_WRONLY)),
    ("write link file", lambda: os.open(mnt + "/overlay2/" + base + "/link", os.O_WRONLY | os.O_TRUNC)),
]
bad = 0
for name, op in ops:
    try:
        r = op()
        if isinstance(r, int):
            os.close(r)
        print("FAIL %s: succeeded" % name)
        bad += 1
    except OSError as e:
        if e.errno == errno.EROFS:
            print("ok %s: EROFS" % name)
        else:
            print("FAIL %s: %s (errno %d), expected EROFS" % (name, errno.errorcode.get(e.errno, "?"), e.errno))
            bad += 1
sys.exit(1 if bad else 0)
PY
while read -r st rest; do
  if [[ $st == ok ]]; then pass "$rest"; else fail "$rest"; fi
done <"$T/erofs.out"
for cmd in "touch $D/etc/greeting" "touch $D/etc/newfile" "mkdir $D/newdir" "rm -f $D/etc/greeting" \
           "chmod 600 $D/etc/greeting" "setfattr -n user.x -v 1 $D/etc/greeting" \
           "truncate -s 0 $D/etc/greeting" "sh -c 'echo x > $D/etc/greeting'" "sh -c 'echo x >> $D/etc/greeting'"; do
  if eval "$cmd" >"$T/sh.out" 2>&1; then
    fail "'$cmd' succeeded on the read-only mount"
  elif grep -q "Read-only file system" "$T/sh.out"; then
    pass "'$cmd' -> Read-only file system"
  else
    fail "'$cmd' failed but not with EROFS: $(head -1 "$T/sh.out")"
  fi
done
cmp -s "$STORE/overlay2/$BASE/diff/etc/greeting" "$D/etc/greeting" \
  && pass "etc/greeting still has its content" || fail "etc/greeting changed after the write attempts"

step "extrafs index STORE again (mounted) changes nothing and is fast"
snapshot_index "$STORE/extrafs" >"$T/idx1" || fail "cannot read STORE/extrafs"
rc=0; timed timeout 300 "$EXTRAFS" index "$STORE" >"$T/index2.out" 2>"$T/index2.err" || rc=$?
T_INDEX2=$TIME_TAKEN
[[ $rc -eq 0 ]] && pass "second index exited 0 in ${T_INDEX2} s (first: ${T_INDEX1} s)" \
  || fail "second index exited $rc: $(head -c 1000 "$T/index2.err")"
snapshot_index "$STORE/extrafs" >"$T/idx2" || fail "cannot read STORE/extrafs after re-index"
if diff "$T/idx1" "$T/idx2" >"$T/d"; then
  pass "catalog and indexes unchanged (content, size, mtime, ctime, inode)"
else
  fail "second index changed STORE/extrafs:"; head -20 "$T/d"
fi
if python3 -c "import sys; t1, t2 = float(sys.argv[1]), float(sys.argv[2]); sys.exit(0 if t2 <= max(2.0, t1 / 2) else 1)" "$T_INDEX1" "$T_INDEX2"; then
  pass "re-index is fast (${T_INDEX2} s <= max(2 s, first/2))"
else
  fail "re-index took ${T_INDEX2} s, first index ${T_INDEX1} s: an unchanged store should not be re-read"
fi
cmp -s "$STORE/overlay2/$BASE/diff/etc/greeting" "$MNT/overlay2/$BASE/diff/etc/greeting" \
  && pass "mount still serves after re-index" || fail "mount broken after re-index"

step "extrafs unmount"
rc=0; timeout 30 "$EXTRAFS" unmount "$MNT" >"$T/umount.out" 2>"$T/umount.err" || rc=$?
[[ $rc -eq 0 ]] && pass "unmount exited 0" || fail "extrafs unmount exited $rc: $(head -c 500 "$T/umount.err")"
not_mounted "$MNT" && pass "MNT is no longer a mount point" || fail "MNT still mounted after extrafs unmount"
[[ -z $(mounts_under "$MNT") ]] || fail "mountinfo still lists $MNT"
if [[ -n ${DAEMON:-} ]]; then
  wait_until 10 pid_gone "$DAEMON" && pass "daemon $DAEMON exited" || fail "daemon $DAEMON still running 10 s after unmount"
fi
[[ -z $(ls -A "$MNT") ]] && pass "MNT is the empty directory again" || fail "MNT not empty after unmount"

step "mount again (output on a pipe, persistent cache reused), compare, then SIGTERM"
rc=0
timeout 30 bash -c '"$1" mount "$2" "$3" -o "cache=$4/cache,cache_size=512M,log_level=warn" 2>&1 | cat >"$4/mount2.out"' \
  _ "$EXTRAFS" "$STORE" "$MNT" "$T" || rc=$?
track_mount "$MNT"
if [[ $rc -eq 124 ]]; then
  fail "mount with stdout/stderr on a pipe did not return within 30 s (daemon keeps the pipe open)"
  wait_until 10 is_mounted "$MNT" || true
elif [[ $rc -ne 0 ]]; then
  fail "second mount exited $rc: $(head -c 500 "$T/mount2.out")"
else
  pass "second mount returned (daemon does not hold the caller's pipe)"
fi
if is_mounted "$MNT"; then
  if timed "${COMPARE[@]}" "$STORE/overlay2/$BASE/diff" "$MNT/overlay2/$BASE/diff" --exclude data/sparse_5g >"$T/cmp.out" 2>&1; then
    pass "base layer identical after remount with a warm cache (${TIME_TAKEN} s)"
  else
    fail "base layer differs after remount with a warm cache:"; sed 's/^/    /' "$T/cmp.out"
  fi
  mapfile -t pids < <(daemon_pids "$MNT")
  if [[ ${#pids[@]} -eq 0 ]]; then
    fail "no extrafs process found serving $MNT; cannot send SIGTERM"
  else
    kill -TERM "${pids[@]}"
    wait_until 10 pid_gone "${pids[0]}" && pass "daemon ${pids[*]} exited after SIGTERM" \
      || fail "daemon ${pids[*]} still alive 10 s after SIGTERM"
    wait_until 10 not_mounted "$MNT" && pass "mount gone after SIGTERM" || fail "still mounted 10 s after SIGTERM"
    stat "$MNT" >/dev/null 2>&1 && [[ -z $(ls -A "$MNT") ]] && pass "MNT usable and empty (no stale 'Transport endpoint is not connected')" \
      || fail "MNT not usable after SIGTERM: $(stat "$MNT" 2>&1 | head -1)"
  fi
fi

step "foreground mount (-f), then SIGTERM"
"$EXTRAFS" mount "$STORE" "$MNT" -f -o "cache=$T/cache,cache_size=512M,log_level=warn" >"$T/fg.out" 2>&1 &
FG=$!
track_pid "$FG"; track_mount "$MNT"
if wait_until 10 is_mounted "$MNT"; then
  pass "-f mount is serving (pid $FG stays in the foreground)"
  cmp -s "$STORE/overlay2/$BASE/diff/etc/greeting" "$MNT/overlay2/$BASE/diff/etc/greeting" \
    && pass "-f mount serves content" || fail "-f mount serves wrong content"
  kill -TERM "$FG"
  st=0
  if wait_until 10 pid_gone "$FG"; then
    wait "$FG" || st=$?
    if [[ $st -eq 0 || $st -eq 143 ]]; then
      pass "-f daemon exited with status $st after SIGTERM"
    elif [[ $st -gt 128 ]]; then
      fail "-f daemon died from signal $((st - 128)) after SIGTERM"
    else
      warn "-f daemon exited with status $st after SIGTERM (0 expected for a requested stop)"
    fi
  else
    fail "-f daemon still alive 10 s after SIGTERM"
  fi
  wait_until 10 not_mounted "$MNT" && pass "-f mount gone after SIGTERM" || fail "-f mount still there 10 s after SIGTERM"
else
  fail "-f mount not serving within 10 s: $(head -c 500 "$T/fg.out")"
fi

step "the store is unchanged by everything above"
store_manifest >"$T/store.manifest.after"
if diff -u "$T/store.manifest.before" "$T/store.manifest.after" >"$T/d"; then
  pass "store metadata (incl. ctime) unchanged"
else
  fail "store modified:"; head -20 "$T/d"
fi

finish
