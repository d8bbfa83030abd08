#!/bin/bash
# test_bad_input.sh EXTRAFS
#
# Every bad input must end with exit status 1 or 2 (2 for usage errors, 1 for
# runtime failures; a mismatch between the two is only a warning), within 20 s
# (never a hang), never by a signal, with exactly one line on stderr that names
# the offending path or option. After every failed mount nothing may be left
# mounted on the mount point and no extrafs process may be left serving it.
# Cases: no arguments, unknown subcommand, missing operands, missing store,
# store not indexed, corrupt catalog, missing mount point, mount point that is a file, busy mount point
# (a tmpfs already mounted there), bad -o options, index of a missing
# directory, unmount of something not mounted; and a store file changed after
# indexing must read as EIO, not as wrong bytes, without harming the daemon.
# A corrupt/truncated/random/empty/missing layer index does not fail the mount
# (indexes are read on first use): that layer answers EIO, the others answer.
set -euo pipefail
EXTRAFS=${1:-}
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_env
setup_tmp

STORE=$T/store
MNT=$T/mnt
mkdir -p "$MNT"
"$HERE/make_odd_store.sh" "$STORE" >/dev/null
mapfile -t CIDS <"$STORE/.layers"
BASE=${CIDS[0]}

# After a failed mount: nothing (extra) mounted at $1, no daemon serving it.
nothing_left() {
  local mnt=$1 expect_mounts=${2:-0} n
  n=$(mounts_under "$mnt" | grep -cxF -- "$mnt" || true)
  if [[ $n -eq $expect_mounts ]]; then
    pass "nothing left mounted on $(basename "$mnt")"
  else
    fail "$n mount(s) on $mnt after the failed mount (expected $expect_mounts):"
    grep -F " $mnt " /proc/self/mountinfo | sed 's/^/    /'
    while [[ $(mounts_under "$mnt" | grep -cxF -- "$mnt" || true) -gt $expect_mounts ]]; do
      fusermount3 -u -z "$mnt" 2>/dev/null || umount -l "$mnt" || break
    done
  fi
  local pids
  pids=$(daemon_pids "$mnt")
  if [[ -z $pids ]]; then
    pass "no extrafs process left for $(basename "$mnt")"
  else
    fail "extrafs process(es) $pids still running for $mnt"
    kill -KILL $pids 2>/dev/null || true
  fi
}

OPTS="cache=$T/cache,cache_size=512M,log_level=warn"   # the same as mount_extrafs uses

# ---------------------------------------------------------------- usage
expect_fail "no arguments" usage "extrafs" "subcommand" "usage" "Usage" -- "$EXTRAFS"
expect_fail "unknown subcommand" usage "frobnicate" -- "$EXTRAFS" frobnicate
expect_fail "mount without operands" usage "SOURCE" "MOUNTPOINT" "source" "mountpoint" "required" -- "$EXTRAFS" mount
expect_fail "mount without a mount point" usage "MOUNTPOINT" "mountpoint" "required" -- "$EXTRAFS" mount "$STORE"
expect_fail "index without operand" usage "STORE" "store" "required" -- "$EXTRAFS" index

# ---------------------------------------------------------------- store problems
expect_fail "mount of a missing store directory" runtime "$T/no-such-store" -- \
  "$EXTRAFS" mount "$T/no-such-store" "$MNT" -o "$OPTS"
nothing_left "$MNT"
expect_fail "index of a missing directory" runtime "$T/no-such-store" -- "$EXTRAFS" index "$T/no-such-store"
[[ ! -e $T/no-such-store ]] && pass "index did not create the missing directory" || fail "index created $T/no-such-store"

expect_fail "mount of a store that is not indexed" runtime "$STORE" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS"
nothing_left "$MNT"

step "indexing the store for the corruption cases"
rc=0; timeout 300 "$EXTRAFS" index "$STORE" >"$T/index.out" 2>&1 || rc=$?
[[ $rc -eq 0 ]] || die "extrafs index exited $rc: $(head -c 2000 "$T/index.out")"
IDX=$STORE/extrafs/layers/$BASE.index
CAT=$STORE/extrafs/catalog
[[ -f $IDX && -f $CAT ]] || die "index did not write $IDX and $CAT"
cp -a "$IDX" "$T/index.orig"
cp -a "$CAT" "$T/catalog.orig"
pass "indexed; $IDX is $(stat -c %s "$IDX") bytes"

step "sanity: the intact store mounts (so the failures below are caused by the corruption)"
no_daemon() { [[ -z $(daemon_pids "$1") ]]; }
if mount_extrafs "$STORE" "$MNT"; then
  cat "$MNT/overlay2/$BASE/diff/etc/greeting" >/dev/null
  rc=0; timeout 30 "$EXTRAFS" unmount "$MNT" >/dev/null 2>&1 || rc=$?
  [[ $rc -eq 0 ]] && not_mounted "$MNT" && pass "unmounted" || { fail "unmount failed ($rc)"; umount -l "$MNT" || true; }
  wait_until 10 no_daemon "$MNT" || fail "daemon still running 10 s after unmount"
fi

flip_byte() {  # flip_byte FILE OFFSET
  python3 - "$1" "$2" <<'PY'
import sys
p, off = sys.argv[1], int(sys.argv[2])
with open(p, "r+b") as f:
    f.seek(off)
    b = f.read(1)
    f.seek(off)
    f.write(bytes([b[0] ^ 0x55]))
PY
}
restore() { cp -a "$T/index.orig" "$IDX"; cp -a "$T/catalog.orig" "$CAT"; }
SIZE=$(stat -c %s "$IDX")

# Each corruption case mounts with its own empty cache, so the daemon can only
# use the store's (corrupt) files and the expected outcome is unambiguous.
NCASE=0
corrupt_case() {  # corrupt_case NAME SHELL-COMMAND NEEDLE...
  local name=$1 cmd=$2; shift 2
  restore
  eval "$cmd"
  NCASE=$((NCASE + 1))
  expect_fail "$name" runtime "$@" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "cache=$T/cache-case$NCASE,cache_size=64M"
  nothing_left "$MNT"
}
# A bad layer index (empty cache): the mount serves, that layer answers EIO, the
# others answer, the daemon keeps running and unmounts cleanly.
bad_index_case() {  # bad_index_case NAME SHELL-COMMAND
  local name=$1 cmd=$2 rc=0 err
  restore
  eval "$cmd"
  NCASE=$((NCASE + 1))
  step "$name"
  timeout -k 5 20 "$EXTRAFS" mount "$STORE" "$MNT" -o "cache=$T/cache-case$NCASE,cache_size=64M,log_level=warn" \
    </dev/null >"$T/out" 2>"$T/err" || rc=$?
  track_mount "$MNT"
  if [[ $rc -ne 0 ]]; then
    fail "$name: mount exit $rc: $(head -c 300 "$T/err")"
    nothing_left "$MNT"
    return
  fi
  rc=0; err=$(timeout 20 cat "$MNT/overlay2/$BASE/diff/etc/greeting" 2>&1 >/dev/null) || rc=$?
  [[ $rc -ne 0 && $err == *"Input/output error"* ]] && pass "mounted; the layer answers EIO" || fail "$name: cat rc $rc: $err"
  if ls "$MNT/overlay2/${CIDS[1]}/diff" >/dev/null && [[ -n $(daemon_pids "$MNT") ]]; then
    pass "another layer answers, the daemon runs"
  else
    fail "$name: another layer does not answer or the daemon died"
  fi
  rc=0; timeout 30 "$EXTRAFS" unmount "$MNT" >/dev/null 2>&1 || rc=$?
  [[ $rc -eq 0 ]] || fail "$name: unmount exit $rc"
  if ! wait_until 10 no_daemon "$MNT"; then
    fail "$name: daemon still running 10 s after unmount"
    for p in $(daemon_pids "$MNT"); do echo "  daemon $p, still running:"; thread_stacks "$p"; done
  fi
  nothing_left "$MNT"
}
bad_index_case "layer index with a byte flipped in the middle" 'flip_byte "$IDX" $((SIZE / 2))'
bad_index_case "layer index with its first byte flipped" 'flip_byte "$IDX" 0'
bad_index_case "layer index with its last byte flipped" 'flip_byte "$IDX" $((SIZE - 1))'
bad_index_case "layer index truncated to half" 'truncate -s $((SIZE / 2)) "$IDX"'
bad_index_case "layer index truncated to 0 bytes" 'truncate -s 0 "$IDX"'
bad_index_case "layer index replaced by random bytes" 'head -c "$SIZE" /dev/urandom >"$IDX"'
bad_index_case "layer index missing" 'rm -f "$IDX"'
CSIZE=$(stat -c %s "$CAT")
corrupt_case "catalog with a byte flipped in the middle" 'flip_byte "$CAT" $((CSIZE / 2))' catalog
corrupt_case "catalog truncated to half" 'truncate -s $((CSIZE / 2)) "$CAT"' catalog
corrupt_case "catalog replaced by random bytes" 'head -c "$CSIZE" /dev/urandom >"$CAT"' catalog
restore
cmp -s "$T/index.orig" "$IDX" && cmp -s "$T/catalog.orig" "$CAT" && pass "index and catalog restored" || die "could not restore the index"

step "a corrupt index in the store does not change a warm cache"
# $T/cache was filled by the sanity mount above. A failed mount may not replace
# what the cache holds (the metadata copies and chunks) with corrupt bytes.
cache_snapshot() {
  (cd "$T/cache" && find . -path ./tmp -prune -o -type f ! -name lock -print0 | sort -z | xargs -0 -r sha256sum)
}
cache_snapshot >"$T/cache.before"
echo "  cache holds $(wc -l <"$T/cache.before") files"
# With a warm cache the mount serves the cached copy, which the catalog's digest vouches for;
# what matters is that it serves the right bytes and that the corrupt copy never enters the cache.
check_served() {  # the mount serves the layer exactly as the store has it
  python3 "$HERE/compare_trees.py" --no-ino "$STORE/overlay2/$BASE/diff" "$MNT/overlay2/$BASE/diff" >"$T/cmp.out" 2>&1 \
    && pass "$1: the mount serves the layer byte for byte" || fail "$1: served layer differs: $(head -3 "$T/cmp.out" | tr '\n' ' ')"
}
for how in 'flip_byte "$IDX" $((SIZE / 2))' 'head -c "$SIZE" /dev/urandom >"$IDX"' 'rm -f "$IDX"'; do
  restore; eval "$how"
  rc=0; timeout -k 5 20 "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS" </dev/null >/dev/null 2>"$T/err" || rc=$?
  if [[ $rc -eq 0 ]]; then
    pass "mount with a bad store index ($how) serves the verified cached copy"
    check_served "$how"
    timeout 30 "$EXTRAFS" unmount "$MNT" >/dev/null 2>&1 || { umount -l "$MNT"; fail "unmount failed"; }
  else
    fail "mount with a bad store index and a warm cache ($how): exit $rc: $(head -1 "$T/err")"
  fi
  nothing_left "$MNT"
  cache_snapshot | grep -Ev ' \./(chunks|files)/' >"$T/cache.after"
  grep -Ev ' \./(chunks|files)/' "$T/cache.before" >"$T/cache.before.meta"
  if diff "$T/cache.before.meta" "$T/cache.after" >"$T/d"; then
    pass "cached metadata unchanged ($how)"
  else
    fail "mount ($how) changed the cached metadata: $(grep '^>' "$T/d" | head -3 | tr '\n' ' ')"
  fi
done
is_mounted "$MNT" && { timeout 30 "$EXTRAFS" unmount "$MNT" >/dev/null 2>&1 || umount -l "$MNT"; }
restore

# ---------------------------------------------------------------- mount point problems
expect_fail "mount point does not exist" runtime "$T/no-such-mnt" -- "$EXTRAFS" mount "$STORE" "$T/no-such-mnt" -o "$OPTS"
[[ ! -e $T/no-such-mnt ]] && pass "missing mount point was not created" || fail "mount created $T/no-such-mnt"
touch "$T/afile"
expect_fail "mount point is a regular file" runtime "$T/afile" -- "$EXTRAFS" mount "$STORE" "$T/afile" -o "$OPTS"
nothing_left "$T/afile"

mkdir -p "$T/busy"
mount -t tmpfs -o size=1M extrafs-test-busy "$T/busy"
track_mount "$T/busy"
echo marker >"$T/busy/marker"
expect_fail "mount point busy (a tmpfs is mounted there)" runtime "$T/busy" -- "$EXTRAFS" mount "$STORE" "$T/busy" -o "$OPTS"
nothing_left "$T/busy" 1
[[ $(findmnt -n -o FSTYPE --mountpoint "$T/busy" | tail -1) == tmpfs && -f $T/busy/marker ]] \
  && pass "the tmpfs is still the top mount and intact" || fail "the busy tmpfs was covered or changed"
umount "$T/busy" || fail "cannot unmount the busy tmpfs"

# ---------------------------------------------------------------- bad options
expect_fail "-o bogus=1" usage "bogus" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS,bogus=1"
nothing_left "$MNT"
expect_fail "-o cache_size=abc" usage "cache_size" "abc" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "cache=$T/cache,cache_size=abc"
nothing_left "$MNT"
expect_fail "-o threads=0" usage "threads" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS,threads=0"
nothing_left "$MNT"
expect_fail "-o threads=abc" usage "threads" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS,threads=abc"
nothing_left "$MNT"
expect_fail "-o timeout=abc" usage "timeout" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS,timeout=abc"
nothing_left "$MNT"
expect_fail "-o log_level=shout" usage "log_level" "shout" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "cache=$T/cache,log_level=shout"
nothing_left "$MNT"
expect_fail "-o cache_size= (empty)" usage "cache_size" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "cache=$T/cache,cache_size="
nothing_left "$MNT"
# Numbers are read whole and strictly (issue 10, item 5): no trailing junk, no overflow.
expect_fail "-o cache_size=1.5.2G" usage "cache_size" "1.5.2G" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "cache=$T/cache,cache_size=1.5.2G"
nothing_left "$MNT"
expect_fail "-o cache_size=99999999999T (overflow)" usage "cache_size" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "cache=$T/cache,cache_size=99999999999T"
nothing_left "$MNT"
expect_fail "-o timeout=10s" usage "timeout" "10s" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS,timeout=10s"
nothing_left "$MNT"
expect_fail "-o threads=18446744073709551620 (overflow)" usage "threads" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS,threads=18446744073709551620"
nothing_left "$MNT"
expect_fail "-o max_read=4294967296" usage "max_read" -- "$EXTRAFS" mount "$STORE" "$MNT" -o "$OPTS,max_read=4294967296"
nothing_left "$MNT"

# ---------------------------------------------------------------- unmount
expect_fail "unmount of a directory that is not mounted" runtime "$MNT" -- "$EXTRAFS" unmount "$MNT"
expect_fail "unmount of a missing path" runtime "$T/no-such-mnt" -- "$EXTRAFS" unmount "$T/no-such-mnt"

# ---------------------------------------------------------------- data changed after indexing
step "a store file changed after indexing reads as EIO, and the daemon keeps serving"
F=$STORE/overlay2/$BASE/diff/data/chunk_exact
cp -a "$F" "$T/chunk_exact.orig"
flip_byte "$F" 524288
touch -r "$T/chunk_exact.orig" "$F"
if mount_extrafs "$STORE" "$MNT"; then
  DAEMON=$(daemon_pids "$MNT" | head -1)
  rc=0
  timeout 30 python3 - "$MNT/overlay2/$BASE/diff/data/chunk_exact" "$T/chunk_exact.orig" >"$T/eio.out" 2>&1 <<'PY' || rc=$?
import errno, sys
try:
    got = open(sys.argv[1], "rb").read()
except OSError as e:
    print("read failed: %s" % errno.errorcode.get(e.errno, e.errno))
    sys.exit(0 if e.errno == errno.EIO else 3)
want = open(sys.argv[2], "rb").read()
print("read succeeded, %s the indexed bytes" % ("equal to" if got == want else "NOT equal to"))
sys.exit(0 if got == want else 4)
PY
  case $rc in
    0) pass "reading the changed file: $(cat "$T/eio.out")" ;;
    124) fail "reading a file changed after indexing hung" ;;
    *) fail "reading a file changed after indexing: $(cat "$T/eio.out") (EIO expected)" ;;
  esac
  cmp -s "$STORE/overlay2/$BASE/diff/data/chunk_x2" "$MNT/overlay2/$BASE/diff/data/chunk_x2" \
    && pass "daemon still serves other files" || fail "daemon stopped serving after the bad chunk"
  [[ -z ${DAEMON:-} ]] || kill -0 "$DAEMON" 2>/dev/null && pass "daemon alive" || fail "daemon died"
  rc=0; timeout 30 "$EXTRAFS" unmount "$MNT" >/dev/null 2>&1 || rc=$?
  [[ $rc -eq 0 ]] || { fail "unmount exited $rc"; umount -l "$MNT" || true; }
fi
cp -a "$T/chunk_exact.orig" "$F"

finish
