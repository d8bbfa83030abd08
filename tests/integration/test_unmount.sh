#!/bin/bash
# extrafs unmount returns once the daemon has exited (its cache written and its lock released),
# so a mount on the same cache right after it works; a daemon that does not answer does not make
# unmount hang.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
require_env
setup_tmp

step "a one-layer store"
S=$T/store
id=$(printf 'um-layer' | sha256sum | cut -c1-64)
mkdir -p "$S/overlay2/$id/diff" "$S/overlay2/l" "$T/mnt"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$S/overlay2/$id/diff/data"
printf 'UUUUUUUUUUUUUUUUUUUUUUUUUU' >"$S/overlay2/$id/link"
"$EXTRAFS" index "$S" >/dev/null
F=overlay2/$id/diff/data
# Whether process $1 still runs (an exited one whose parent has not reaped it yet is a zombie: its
# files, the cache lock among them, are closed).
running() { [[ -r /proc/$1/stat ]] && [[ $(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1) != Z ]]; }

step "unmount, then at once mount the same cache again, 5 times"
for i in 1 2 3 4 5; do
  mount_extrafs "$S" "$T/mnt" >/dev/null || die "mount $i failed"
  pid=$("$EXTRAFS" stats "$T/mnt" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
  [[ " $(daemon_pids "$T/mnt" | tr '\n' ' ') " == *" $pid "* ]] || fail "stats pid $pid is not the mount's daemon ($(daemon_pids "$T/mnt"))"
  cmp -s "$T/mnt/$F" "$S/overlay2/$id/diff/data" || fail "round $i: content differs"
  "$EXTRAFS" unmount "$T/mnt" || fail "round $i: unmount failed"
  if running "$pid"; then fail "round $i: daemon $pid still running when unmount returned"; fi
done
[[ $FAILS == 0 ]] && pass "each unmount returned after its daemon exited; each new mount got the cache"
"$EXTRAFS" cache stat --cache "$T/cache" >"$T/stat.out" 2>&1 || fail "cache stat after the rounds: $(cat "$T/stat.out")"

step "a daemon that does not answer (stopped) does not make unmount hang"
mount_extrafs "$S" "$T/mnt" >/dev/null || die "mount failed"
pid=$(daemon_pids "$T/mnt" | head -1)
[[ -n $pid ]] || die "no daemon found"
kill -STOP "$pid"
start=$SECONDS
timeout 60 "$EXTRAFS" unmount "$T/mnt" >"$T/um.out" 2>&1 &
um=$!
sleep 4
kill -CONT "$pid"
rc=0; wait "$um" || rc=$?
took=$((SECONDS - start))
[[ $rc == 0 ]] && pass "unmount of a stopped daemon's mount exit 0 ($took s)" || fail "unmount exit $rc: $(cat "$T/um.out")"
((took < 40)) || fail "unmount took $took s"
not_mounted "$T/mnt" && pass "not mounted afterwards" || fail "still mounted"
wait_until 10 pid_gone "$pid" && pass "the daemon exited" || fail "daemon $pid still running"

finish
