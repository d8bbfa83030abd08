#!/bin/bash
# test_cache_full.sh EXTRAFS — the cache directory on a full file system (issue 10, item 4).
#
# The cache lives on a 2 MiB tmpfs while cache_size allows far more, so the disk fills after a
# chunk or two. Reading 12 MiB through the mount (daemon in the foreground, its log in a file):
# every byte is right (sha256 equal to the source's), `extrafs stats --json` and --prometheus
# count cache_write_errors, and the log names the failure once, not once per chunk.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
require_env
setup_tmp

MiB=$((1024 * 1024))
step "a store with 12 MiB of files, a cache on a 2 MiB tmpfs"
S=$T/store
cid=$(printf 'cache-full' | sha256sum | cut -c1-64)
mkdir -p "$S/overlay2/$cid/diff/data" "$T/mnt" "$T/cachefs"
head -c $((8 * MiB + 77)) /dev/urandom >"$S/overlay2/$cid/diff/data/big"
head -c $((4 * MiB)) /dev/urandom >"$S/overlay2/$cid/diff/data/more"
"$EXTRAFS" index "$S" >/dev/null
mount -t tmpfs -o size=2m tmpfs "$T/cachefs"
track_mount "$T/cachefs"

step "mount in the foreground, log to a file"
"$EXTRAFS" mount "$S" "$T/mnt" -f -o "cache=$T/cachefs/c,cache_size=256M,log_level=info" >"$T/daemon.log" 2>&1 &
DPID=$!
track_pid "$DPID"
track_mount "$T/mnt"
wait_until 20 is_mounted "$T/mnt" || die "not mounted after 20 s: $(cat "$T/daemon.log")"
pass "mounted (daemon pid $DPID)"

step "read everything through the mount"
for f in big more; do
  want=$(sha256sum <"$S/overlay2/$cid/diff/data/$f")
  got=$(sha256sum <"$T/mnt/overlay2/$cid/diff/data/$f") || fail "reading $f failed"
  [[ $got == "$want" ]] && pass "$f: sha256 equal to the source" || fail "$f: sha256 differs"
done
df_used=$(df --output=pcent "$T/cachefs" | tail -1 | tr -d ' %')
echo "  cache tmpfs ${df_used}% used"

"$EXTRAFS" stats "$T/mnt" --json >"$T/stats.json" || die "extrafs stats --json failed"
errs=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cache_write_errors"])' "$T/stats.json")
((errs > 0)) && pass "cache_write_errors $errs in --json" || fail "cache_write_errors $errs: $(cat "$T/stats.json")"
chunks=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["chunks_fetched"])' "$T/stats.json")
"$EXTRAFS" stats "$T/mnt" --prometheus >"$T/stats.prom" || die "extrafs stats --prometheus failed"
grep -Eq "^extrafs_cache_write_errors(_total)? $errs\$" "$T/stats.prom" \
  && pass "and in --prometheus" || fail "no cache_write_errors $errs in: $(cat "$T/stats.prom")"

n=$(grep -c "cannot write to the cache" "$T/daemon.log" || true)
((n >= 1)) && pass "the daemon logged it: $(grep -m1 "cannot write to the cache" "$T/daemon.log")" \
  || fail "no log line about the cache writes; log: $(tail -5 "$T/daemon.log")"
((n == 1)) && pass "once, not once per failure ($errs failures, $chunks chunks fetched)" \
  || fail "$n log lines for $errs failures within a minute"

step "the cached part still serves after the page cache is dropped"
sync; echo 3 >/proc/sys/vm/drop_caches
got=$(sha256sum <"$T/mnt/overlay2/$cid/diff/data/big") || fail "re-reading big failed"
[[ $got == "$(sha256sum <"$S/overlay2/$cid/diff/data/big")" ]] && pass "big: sha256 still equal" || fail "big differs on re-read"

"$EXTRAFS" unmount "$T/mnt" || fail "unmount failed"
if wait_until 20 pid_gone "$DPID"; then
  rc=0; wait "$DPID" || rc=$?
  [[ $rc -eq 0 ]] && pass "the daemon exited with status 0" || fail "the daemon exited with status $rc"
else
  fail "the daemon is still running 20 s after the unmount"
fi
finish
