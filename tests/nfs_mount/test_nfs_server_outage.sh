#!/bin/bash
# test_nfs_server_outage.sh EXTRAFS
#
# A server that goes away gives EIO within the timeout, and the same mount recovers by itself:
# mount over NFSv4 (and a second mount over NFSv3) with -o timeout=3, then
#   1. hung server (ganesha.sh pause = SIGSTOP: TCP stays up, nothing answers): reading an uncached
#      file fails with EIO after >= 2.5 s and <= 8 s (v4 and v3 at once); after drop_caches a cached
#      file, `ls MNT/overlay2` and a stat in another layer each answer within 1.5 s (metadata and
#      cached content must not wait for the server); after resume the uncached files read
#      correctly, without a remount;
#   2. a read already in progress when the server hangs: a reader streams a file that is half
#      read, the server is paused in the middle -> EIO within the bound;
#   3. stopped server (ganesha.sh stop: connection refused): EIO within 8 s; after the server is
#      started again on the same ports (a new ganesha process) the file reads correctly, without
#      a remount.
# Throughout: no daemon task stays in state D (checked after each fault), and no file's size
# changes (stat of every test file at the start and at the end, after drop_caches).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

STORE=$T/store
add_files() {
  local d=$1/overlay2/${CIDS[2]}/diff/nfsit f
  for f in warm cold_pause cold_pause_v3 midread cold_stop cold_stop_v3; do
    random_file "$d/$f" $((2 * MiB + 17)) "$f"
  done
  random_file "$d/midread" $((16 * MiB)) midread
}
step "building and indexing the odd store (+ top/nfsit/*)"
nm_build_store "$STORE" add_files
D=overlay2/${CIDS[2]}/diff/nfsit

step "starting nfs-ganesha"
nm_start_ganesha "$STORE"
nm_mount "$NFS4_URL" "$T/mnt4" "$T/cache4" "cache_size=256M,timeout=3" || die "cannot mount (v4)"
nm_mount "$NFS3_URL" "$T/mnt3" "$T/cache3" "cache_size=256M,timeout=3" || die "cannot mount (v3)"
M4=$T/mnt4/$D
M3=$T/mnt3/$D
cmp -s "$STORE/$D/warm" "$M4/warm" && pass "warm file read (v4)" || fail "warm file differs (v4)"
cmp -s "$STORE/$D/warm" "$M3/warm" && pass "warm file read (v3)" || fail "warm file differs (v3)"
# Resolve every path now, so the EIO timings below measure the reads alone; and use the base
# layer (its index is read on first use) for the metadata checks below.
stat "$M4"/* "$M3"/* >/dev/null || fail "cannot stat the test files"
stat "$T/mnt4/overlay2/${CIDS[0]}/diff/etc" >/dev/null || fail "cannot stat the base layer's etc"
stat -c '%n %s' "$M4"/* "$M3"/* >"$T/sizes.before"
mapfile -t DPIDS < <(daemon_pids "$T/mnt4"; daemon_pids "$T/mnt3")
[[ ${#DPIDS[@]} -eq 2 ]] || fail "expected two daemons, found: ${DPIDS[*]}"
no_d() { wait_until 5 no_d_state "${DPIDS[@]}" && pass "$1: no daemon task in state D" || fail "$1: a daemon task is in state D"; }

# expect_eio MIN LABEL FILE [LABEL FILE]...: each read (run concurrently) fails with EIO, after at
# least MIN s (a hung server is not asked to fail fast) and at most 8 s (timeout=3).
expect_eio() {
  local min=$1 i=0 k res secs
  shift
  local args=("$@") pids=()
  for ((k = 0; k < ${#args[@]}; k += 2)); do
    ( read_errno "${args[k + 1]}" 30; echo "$READ_RESULT $READ_SECS" >"$T/eio.$k" ) &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  for ((k = 0; k < ${#args[@]}; k += 2)); do
    read -r res secs <"$T/eio.$k" || { res=missing; secs=0; }
    if [[ $res == EIO ]] && secs_le "$secs" 8 && secs_le "$min" "$secs"; then
      pass "${args[k]}: EIO after $secs s"
    else
      fail "${args[k]}: $res after $secs s (expected EIO within [$min, 8] s with timeout=3)"
    fi
  done
}
expect_ok() {
  local label=$1 f=$2
  if timed timeout 30 cmp -s "$STORE/$D/$(basename "$f")" "$f"; then pass "$label: identical to the store (${TIME_TAKEN} s)"
  else fail "$label: $(timeout 30 cmp "$STORE/$D/$(basename "$f")" "$f" 2>&1 | head -1) (rc $?)"; fi
}

step "hung server (SIGSTOP)"
timeout 20 "$GANESHA" pause "$GSTATE" || die "ganesha.sh pause failed"
expect_eio 2.5 "v4, paused server, uncached file" "$M4/cold_pause" "v3, paused server, uncached file" "$M3/cold_pause_v3"
no_d "paused server"
# A layer never used before (mid) has no index in memory or in the cache: it fails like an
# uncached read, and is served again once the server is back (see after the resume).
expect_eio 2.5 "v4, paused server, a path in a layer never used (its index)" "$T/mnt4/overlay2/${CIDS[1]}/diff/etc/x"
# Metadata comes from the in-memory index and cached content from the block cache: neither may
# wait for the hung server. After drop_caches every path is looked up again.
sync; echo 3 >/proc/sys/vm/drop_caches
sleep 1.1   # past the 1 s catalog refresh interval
timed timeout 30 cmp -s "$STORE/$D/warm" "$M4/warm" && ok=1 || ok=0
if [[ $ok -eq 1 ]] && secs_le "$TIME_TAKEN" 1.5; then pass "v4, paused server, cached file (paths looked up again): identical, ${TIME_TAKEN} s"
elif [[ $ok -eq 1 ]]; then fail "v4, paused server, cached file (paths looked up again): identical but took ${TIME_TAKEN} s (> 1.5 s: a lookup waited for the hung server)"
else fail "v4, paused server, cached file: differs or unreadable"; fi
sleep 1.1
timed timeout 30 ls "$T/mnt4/overlay2" >"$T/ls.out" 2>&1 && ok=1 || ok=0
if [[ $ok -eq 1 ]] && [[ $(wc -l <"$T/ls.out") -eq 4 ]] && secs_le "$TIME_TAKEN" 1.5; then pass "v4, paused server: ls MNT/overlay2 in ${TIME_TAKEN} s"
else fail "v4, paused server: ls MNT/overlay2 took ${TIME_TAKEN} s (ok=$ok, $(wc -l <"$T/ls.out") names; expected 4 names within 1.5 s: readdir waited for the hung server)"; fi
sleep 1.1
timed timeout 30 stat "$T/mnt4/overlay2/${CIDS[0]}/diff/etc/greeting" >/dev/null 2>&1 && ok=1 || ok=0
if [[ $ok -eq 1 ]] && secs_le "$TIME_TAKEN" 1.5; then pass "v4, paused server: stat of a path in another layer in ${TIME_TAKEN} s"
else fail "v4, paused server: stat MNT/overlay2/<base>/diff/etc/greeting took ${TIME_TAKEN} s (ok=$ok; expected within 1.5 s: a lookup waited for the hung server)"; fi
timeout 5 "$EXTRAFS" stats "$T/mnt4" --json >"$T/s.json" && pass "extrafs stats answers while the server hangs" \
  || fail "extrafs stats did not answer within 5 s while the server hangs"
[[ $(python3 -c 'import json,sys; print(sum(l["index_loaded"] for l in json.load(open(sys.argv[1]))["layers"]))' "$T/s.json") == 2 ]] \
  && pass "2 layer indexes loaded (base and top), mid not" || fail "layer indexes loaded: $(head -c 600 "$T/s.json")"
(( $(stat_of "$T/s.json" backend_errors) > 0 )) && pass "backend_errors $(stat_of "$T/s.json" backend_errors)" \
  || fail "backend_errors 0 after failed reads"
timeout 20 "$GANESHA" resume "$GSTATE" || die "ganesha.sh resume failed"
expect_ok "v4, after resume, same file, same mount" "$M4/cold_pause"
expect_ok "v3, after resume, same file, same mount" "$M3/cold_pause_v3"
# The failed index is tried again on an access 2 s after the failure (well past by now).
mid_lists() { timeout 10 ls "$T/mnt4/overlay2/${CIDS[1]}/diff" >/dev/null 2>&1; }
timed wait_until 5 mid_lists && pass "v4, after resume: the layer never used lists (${TIME_TAKEN} s)" \
  || fail "v4, after resume: the layer never used still fails 5 s later"

step "the server hangs while a read is in progress"
# The reader streams midread (16 MiB) in 256 KiB reads and reports how far it got; the server is
# paused once it has read 2 MiB (chunks ahead are still uncached: readahead fetches at most 4).
cat >"$T/midread.py" <<'PY'
import errno, os, sys, time
path, flag, out = sys.argv[1:4]
fd = os.open(path, os.O_RDONLY)
done = 0
res = "OK"
t_err = None
try:
    while True:
        if done >= 2 << 20 and not os.path.exists(flag + ".sent"):
            open(flag + ".sent", "w").close()
            end = time.monotonic() + 20
            while not os.path.exists(flag) and time.monotonic() < end:   # wait for the pause
                time.sleep(0.01)
            t0 = time.monotonic()
        b = os.read(fd, 256 << 10)
        if not b:
            break
        done += len(b)
except OSError as e:
    res = errno.errorcode.get(e.errno, str(e.errno))
    t_err = time.monotonic() - t0
open(out, "w").write("%s %d %s\n" % (res, done, "%.2f" % t_err if t_err is not None else "-"))
PY
timeout 60 python3 "$T/midread.py" "$M4/midread" "$T/paused" "$T/midread.out" &
RP=$!
wait_until 20 test -e "$T/paused.sent" || fail "the reader never got to 2 MiB"
timeout 20 "$GANESHA" pause "$GSTATE" || die "ganesha.sh pause failed"
touch "$T/paused"
wait "$RP" || fail "mid-read reader exited non-zero"
read -r res done_b t_err <"$T/midread.out" || true
if [[ $res == EIO ]] && (( done_b >= 2 * MiB && done_b < 16 * MiB )) && secs_le "$t_err" 8; then
  pass "read in progress: EIO after $done_b bytes, $t_err s after the server hung"
else
  fail "read in progress: result '$res' after $done_b of $((16 * MiB)) bytes, ${t_err} s (expected EIO within 8 s)"
fi
timeout 20 "$GANESHA" resume "$GSTATE" || die "ganesha.sh resume failed"
expect_ok "after resume, the interrupted file, same mount" "$M4/midread"

step "stopped server (connection refused)"
timeout 30 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1 || fail "ganesha.sh stop failed"
expect_eio 0 "v4, stopped server, uncached file" "$M4/cold_stop" "v3, stopped server, uncached file" "$M3/cold_stop_v3"
no_d "stopped server"
is_mounted "$T/mnt4" && is_mounted "$T/mnt3" && pass "both mounts still there" || fail "a mount went away while the server was down"
step "server started again on the same ports"
nm_restart_ganesha "$STORE" || die "cannot restart the server"
expect_ok "v4, after restart, same file, same mount" "$M4/cold_stop"
expect_ok "v3, after restart, same file, same mount" "$M3/cold_stop_v3"
stats_json "$T/mnt4" >"$T/s2.json" || fail "extrafs stats failed"
[[ $(stat_of "$T/s2.json" corrupt_fetches) -eq 0 ]] && pass "corrupt_fetches 0" || fail "corrupt_fetches $(stat_of "$T/s2.json" corrupt_fetches)"
sync; echo 3 >/proc/sys/vm/drop_caches
stat -c '%n %s' "$M4"/* "$M3"/* >"$T/sizes.after"
cmp -s "$T/sizes.before" "$T/sizes.after" && pass "no file size changed ($(wc -l <"$T/sizes.after") files)" \
  || fail "file sizes changed: $(diff "$T/sizes.before" "$T/sizes.after" | head -4 | tr '\n' ' ')"

nm_unmount "$T/mnt4" || true
nm_unmount "$T/mnt3" || true
finish
