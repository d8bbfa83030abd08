#!/bin/bash
# test_nfs_load.sh EXTRAFS
#
# Load with faults (issue 10): 64 readers (EXTRAFS_LOAD_READERS) at random offsets and lengths over
# nine random files in the three layers of the odd store (~140 MiB), for EXTRAFS_LOAD_SECONDS
# (default 60), over NFSv4 with -o timeout=3 and a block cache much smaller than the data
# (cache_size=16M; with the daemon's 64 MiB in-memory chunk LRU, reads keep reaching the server).
# The page cache is dropped under the readers (posix_fadvise(DONTNEED) on every file every 0.2 s
# from a separate process, and `echo 1 > /proc/sys/vm/drop_caches` every 10 s). The server is stopped twice in the middle, each
# time followed by a NEW ganesha instance on the same port and export:
#   at 20% of the run: SIGKILL, a new instance started at once (the outage, until the new server
#      answers, is as short as ganesha's start allows: under this load it can take longer than
#      timeout=3; the test reports the outage it saw);
#   at 40% of the run: graceful stop, down 8 s (longer than timeout);
# the readers go on to the end of the run and at least 20 s after the second return.
# Checked (tests/nfs_mount/fault_readers.py): every successful read equals the store's bytes, no
# file size changes, no errno other than EIO, no reader crashes or hangs, no reader or daemon task
# in state D for more than 20 s (EXTRAFS_LOAD_MAX_D). Errors happen only while the server is away
# or within 10 s of its return (recovery), none in the last part of the run; reads succeed again
# without a remount; the whole files compare equal at the end; the daemon never died.
#
# The same script runs the daemon built with ThreadSanitizer (scripts/test passes
# build-tsan/tools/extrafs): TSAN_OPTIONS sends reports to files under the test's directory with
# halt_on_error=1 exitcode=66; any report fails the test, and so does a daemon that exited. The
# daemon serves 30 to 70 times fewer reads there, and 64 readers starve a request for as long as
# the run lasts (see RELIABILITY.md), so scripts/test raises the D bound to 90 s for that run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

SECS=${EXTRAFS_LOAD_SECONDS:-60}
NREADERS=${EXTRAFS_LOAD_READERS:-64}
MAXD=${EXTRAFS_LOAD_MAX_D:-20}
[[ $SECS =~ ^[0-9]+$ ]] && (( SECS >= 40 )) || die "EXTRAFS_LOAD_SECONDS must be a whole number >= 40 (got '$SECS')"
mkdir -p "$T/tsan"
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 log_path=$T/tsan/report ${TSAN_OPTIONS:-}"
if grep -q __tsan_init "$EXTRAFS" 2>/dev/null; then echo "  daemon built with ThreadSanitizer"; fi

STORE=$T/store
CACHE=$T/cache
MNT=$T/mnt
add_files() {
  local l f
  for l in 0 1 2; do
    for f in a b c; do
      random_file "$1/overlay2/${CIDS[$l]}/diff/load/$f" $(( (12 + l * 2 + (RANDOM % 3)) * MiB + RANDOM )) "load-$l-$f"
    done
  done
}
step "building and indexing the odd store (+ load/{a,b,c} in each of the 3 layers)"
nm_build_store "$STORE" add_files
for l in 0 1 2; do for f in a b c; do echo "overlay2/${CIDS[$l]}/diff/load/$f"; done; done >"$T/files"
total=$(cd "$STORE" && xargs stat -c %s <"$T/files" | python3 -c "import sys; print(sum(map(int, sys.stdin)))")
echo "  $(wc -l <"$T/files") files, $((total / MiB)) MiB"

step "starting nfs-ganesha and mounting (timeout=3, cache_size=16M)"
nm_start_ganesha "$STORE" 4
nm_mount "$NFS4_URL" "$MNT" "$CACHE" "cache_size=16M,timeout=3,threads=16" || die "cannot mount"
mapfile -t DPIDS < <(daemon_pids "$MNT")
[[ ${#DPIDS[@]} -ge 1 ]] && pass "daemon pid ${DPIDS[*]}" || die "no daemon process found for $MNT"
watch=()
for p in "${DPIDS[@]}"; do watch+=(--watch-pid "$p"); done

step "$NREADERS readers for $SECS s, page cache dropped under them, server stopped twice"
python3 "$NM_HERE/fault_readers.py" --src "$STORE" --mnt "$MNT" --files "$T/files" \
  --readers "$NREADERS" --seconds $((SECS * 3)) --stop-file "$T/stop" --out "$T/load.json" \
  --drop-every 0.2 --drop-caches-every 10 --max-d-secs "$MAXD" "${watch[@]}" >"$T/readers.out" 2>&1 &
RPID=$!
now() { date +%s.%N; }
: >"$T/events"
START=$SECONDS
sleep $((SECS / 5))
echo "down1 $(now)" >>"$T/events"
timeout 20 "$GANESHA" kill "$GSTATE" || fail "ganesha.sh kill failed"
nm_restart_ganesha "$STORE" && echo "up1 $(now)" >>"$T/events" || fail "first restart failed"
wait2=$((SECS * 2 / 5 - (SECONDS - START)))
(( wait2 > 0 )) && sleep "$wait2"
echo "down2 $(now)" >>"$T/events"
timeout 30 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1 || fail "ganesha.sh stop failed"
sleep 8
nm_restart_ganesha "$STORE" && echo "up2 $(now)" >>"$T/events" || fail "second restart failed"
# The readers go on to the end of the run, and for at least 20 s after the server's return.
UP2=$SECONDS
while (( SECONDS - START < SECS || SECONDS - UP2 < 20 )); do sleep 1; done
touch "$T/stop"
rc=0
wait "$RPID" || rc=$?
sed 's/^/  /' "$T/readers.out"
[[ $rc -eq 0 ]] && pass "readers: no wrong byte, no size change, no unexpected error, no crash or hang, no long D state" \
  || fail "fault_readers.py exited $rc (see above)"
[[ -f $T/load.json ]] || die "fault_readers.py wrote no summary"
sed 's/^/  events: /' "$T/events"

step "errors only while the server was away, recovery by itself"
python3 - "$T/load.json" "$T/events" "$SECS" >"$T/judge.out" <<'PY' && jr=0 || jr=$?
import json, sys
s = json.load(open(sys.argv[1]))
ev = dict(l.split() for l in open(sys.argv[2]))
ev = {k: float(v) for k, v in ev.items()}
secs = float(sys.argv[3])
bad = 0
# Errors count against an outage from its stop to 10 s after its return (or the next stop).
windows = [(ev["down1"], min(ev["up1"] + 10, ev["down2"])), (ev["down2"], ev["up2"] + 10)]
outside = [t for t in s["error_times"] if not any(a <= t <= b for a, b in windows)]
print("reads compared OK: %d (%d MiB), errors: %s, %d of them after a short read; %d short reads followed up" % (
    s["reads_ok"], s["bytes_ok"] >> 20, s["errors"], s["partial_then_error"], s["short_reads"]))
for i, (d, u) in enumerate((("down1", "up1"), ("down2", "up2")), 1):
    errs = [t for t in s["error_times"] if windows[i - 1][0] <= t <= windows[i - 1][1]]
    after = [t - ev[u] for t in errs if t > ev[u]]
    print("outage %d: server away %.1f s (stop to the new server answering), %d EIO%s, last %s" % (
        i, ev[u] - ev[d], len(errs), (", the first %.1f s after the stop" % (errs[0] - ev[d])) if errs else "",
        ("%.1f s after the new server answered" % max(after)) if after else ("before the new server answered" if errs else "-")))
if outside:
    print("FAIL: %d errors outside the outage windows (+10 s), first at %.1f s into the run" % (len(outside), outside[0] - s["start"]))
    bad = 1
if not s["errors"].get("EIO"):
    print("FAIL: no EIO at all although the server was away for 8 s with timeout=3")
    bad = 1
tail = s["end"] - (ev["up2"] + 10)
print("after the second return (+10 s): %.1f s of reads without an error" % tail)
if tail < 5:   # the readers run 20 s past the return
    print("FAIL: the run ended too soon after the second outage to see recovery")
    bad = 1
sys.exit(bad)
PY
sed 's/^/  /' "$T/judge.out"
[[ $jr -eq 0 ]] && pass "errors only during the outages; reads succeed again after each return" \
  || fail "errors outside the outages or no recovery (see above)"

step "after the load: whole files, sizes, the daemon"
for p in "${DPIDS[@]}"; do kill -0 "$p" 2>/dev/null && pass "daemon $p still running" || fail "daemon $p died during the run"; done
sync; echo 3 >/proc/sys/vm/drop_caches
n=0
while read -r f; do
  if timeout 60 cmp -s "$STORE/$f" "$MNT/$f"; then n=$((n + 1)); else fail "$(sp "$f") differs after the run"; fi
  [[ $(stat -c %s "$MNT/$f") -eq $(stat -c %s "$STORE/$f") ]] || fail "$(sp "$f"): size $(stat -c %s "$MNT/$f") in the mount"
done <"$T/files"
[[ $n -eq $(wc -l <"$T/files") ]] && pass "all $n files identical to the store, same mount" || true
stats_json "$MNT" >"$T/s.json" || fail "extrafs stats failed"
echo "  stats: chunks_fetched $(stat_of "$T/s.json" chunks_fetched), backend_errors $(stat_of "$T/s.json" backend_errors), corrupt_fetches $(stat_of "$T/s.json" corrupt_fetches), cache_write_errors $(stat_of "$T/s.json" cache_write_errors)"
[[ $(stat_of "$T/s.json" corrupt_fetches) -eq 0 ]] && pass "corrupt_fetches 0" || fail "corrupt_fetches $(stat_of "$T/s.json" corrupt_fetches)"
nm_unmount "$MNT" || true
reports=$(find "$T/tsan" -type f | wc -l)
if [[ $reports -eq 0 ]]; then pass "no ThreadSanitizer report"
else
  fail "$reports ThreadSanitizer report(s):"
  find "$T/tsan" -type f -exec head -40 {} \; | sed 's/^/    /'
fi
finish
