#!/bin/bash
# test_docker_live.sh EXTRAFS HELPER: attaching to and detaching from a live dockerd
# (`extrafs docker attach|detach --restart`), `attach --all`, and the systemd helper
# extrafs-attach-listed (HELPER, as configured into the build directory) against real parts: a
# store published from two `docker save`-shaped archives (live-a:1 = a busybox-static base;
# live-b:1 and live-b:latest = that base + a top layer), a real extrafs mount of it, and private
# dockerds (tests/docker/dockerd.sh).
#
# Checks:
#   - attach without --restart against a running dockerd: exit 1, one line that names --restart
#   - with dockerd B (--live-restore) running a container of live-a:1: `attach --restart live-b:1`
#     exits 0, says how long the API was unavailable, B has a new pid and writes its log to the
#     same file, the container still runs with the same pid, live-b:1 runs
#   - `detach --restart live-b:1` likewise: the container keeps its pid, live-b:1 is gone from
#     dockerd, live-a:1 (sharing the base layer) still runs
#   - dockerd C without live-restore: `attach|detach --restart` exit 1 with one line naming the
#     "live-restore": true setting; C keeps its pid, still answers, its data-root is untouched;
#     `attach --all --restart` with nothing new leaves C alone
#   - `attach --all` (stopped data-root) attaches every tag of the store; a second one changes
#     nothing; IMAGE with --all, or neither, is a usage error (exit 2)
#   - extrafs-attach-listed MNT FILE (FILE names live-b:latest) with DATA_ROOT set attaches it
#     into a stopped data-root; a dockerd started there then lists it and runs it
set -u
DHERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$DHERE/../integration/lib.sh"   # sets HERE to its own directory
DOCKERD=$DHERE/dockerd.sh
EXTRAFS=${1:-}
HELPER=${2:-}
DB= DC= DD=

require_env
# configure_file leaves it without the x bit in the build directory (meson install sets it): run it with sh.
[[ -r $HELPER ]] || { echo "FATAL: extrafs-attach-listed not found: $HELPER"; exit 1; }
for p in /usr/sbin/dockerd /usr/bin/docker /bin/busybox python3 unshare; do
  command -v "$p" >/dev/null || { echo "FATAL: $p not installed (scripts/setup installs it)"; exit 1; }
done
file -L /bin/busybox 2>/dev/null | grep -q "statically linked" || { echo "FATAL: /bin/busybox is not busybox-static"; exit 1; }

live_cleanup() {
  local rc=$? s
  set +e
  for s in "$DD" "$DC" "$DB"; do
    [[ -n $s ]] && timeout 60 "$DOCKERD" stop "$s" >/dev/null 2>&1
  done
  (exit $rc)
  cleanup
}
setup_tmp
trap live_cleanup EXIT
trap 'exit 130' INT TERM
DB=$T/db DC=$T/dc DD=$T/dd
STORE=$T/store MNT=$T/mnt RB=$T/rb RC=$T/rc RD=$T/rd
mkdir -p "$MNT" "$T/base/bin" "$T/top/etc"

dB() { timeout 120 "$DOCKERD" docker "$DB" "$@"; }
dC() { timeout 120 "$DOCKERD" docker "$DC" "$@"; }
dD() { timeout 120 "$DOCKERD" docker "$DD" "$@"; }
start_dockerd() {  # STATE ROOT NAME [EXTRA_ARGS]
  local out
  out=$(DOCKERD_EXTRA_ARGS=${4:-} timeout 60 "$DOCKERD" start "$1" "$2" 2>&1) || die "starting dockerd $3 failed: $out"
  pass "dockerd $3 started (pid $(sed -n 's/^PID=//p' <<<"$out")${4:+, $4})"
}
dpid() { cat "$1/dockerd.pid" 2>/dev/null; }   # the pid dockerd wrote (--pidfile), also after a restart
run_x() {  # EXPECTED_RC NAME ARGS...: output in $T/x.out, $T/x.err
  local want=$1 name=$2 rc=0; shift 2
  timeout 300 "$EXTRAFS" "$@" >"$T/x.out" 2>"$T/x.err" || rc=$?
  if [[ $rc -eq $want ]]; then
    pass "$name: exit $rc"
    return 0
  fi
  fail "$name: exit $rc, wanted $want; stdout: $(head -c 600 "$T/x.out"); stderr: $(head -c 600 "$T/x.err")"
  return 1
}
one_line_err() {  # NAME PATTERN: stderr is one "extrafs: " line containing PATTERN (fixed string)
  if [[ $(wc -l <"$T/x.err") -eq 1 && $(head -c 9 "$T/x.err") == "extrafs: " ]] && grep -qF -- "$2" "$T/x.err"; then
    pass "$1: one line naming '$2': $(cat "$T/x.err")"
  else
    fail "$1: stderr is not one 'extrafs: ' line naming '$2': $(head -c 600 "$T/x.err")"
  fi
}
# container_state STATE NAME: "running pid" of a container, from the dockerd's API.
container_state() {
  timeout 60 "$DOCKERD" docker "$1" inspect -f '{{.State.Running}} {{.State.Pid}}' "$2" 2>&1
}
# listing ROOT: what attach writes under a data-root (tests/docker/dataroot_listing.py; without
# repositories.json, compared on its own where it matters).
listing() { python3 "$DHERE/dataroot_listing.py" "$1"; }

step "a store with two images (three tags), mounted"
cp /bin/busybox "$T/base/bin/busybox"
ln -s busybox "$T/base/bin/sh"
echo "live-b-marker" >"$T/top/etc/marker"
python3 "$HERE/make_save_archive.py" "$T/a.tar" live-a:1 "$T/base" || die "make_save_archive a failed"
python3 "$HERE/make_save_archive.py" "$T/b.tar" live-b:1,live-b:latest "$T/base" "$T/top" || die "make_save_archive b failed"
run_x 0 "publish live-a:1" publish --archive "$T/a.tar" --to "$STORE" || die "publish failed"
run_x 0 "publish live-b:1, live-b:latest" publish --archive "$T/b.tar" --to "$STORE" || die "publish failed"
mount_extrafs "$STORE" "$MNT" || die "mount failed"

step "usage: IMAGE... and --all are exclusive"
run_x 2 "attach IMAGE --all" docker attach live-a:1 --all --mount "$MNT" --data-root "$RB" && one_line_err "IMAGE with --all" "--all"
run_x 2 "attach with neither IMAGE nor --all" docker attach --mount "$MNT" --data-root "$RB" && one_line_err "no IMAGE" "--all"

step "dockerd B with --live-restore, a container of live-a:1 running"
run_x 0 "attach live-a:1 (dockerd stopped)" docker attach live-a:1 --mount "$MNT" --data-root "$RB" || die "attach failed"
start_dockerd "$DB" "$RB" B --live-restore
[[ $(dB info -f '{{.LiveRestoreEnabled}}' 2>&1) == true ]] && pass "B has live-restore" || die "B has no live-restore"
cid=$(dB run -d --network none --name keeper live-a:1 /bin/busybox sleep 600 2>&1) || die "docker run -d live-a:1: $cid"
read -r running cpid <<<"$(container_state "$DB" keeper)"
[[ $running == true && $cpid -gt 0 ]] && pass "container keeper runs (pid $cpid)" || die "keeper not running: $running $cpid"

step "attach without --restart against a running dockerd"
listing "$RB" >"$T/rb.before"
run_x 1 "attach live-b:1 without --restart" docker attach live-b:1 --mount "$MNT" --data-root "$RB" &&
  one_line_err "running dockerd" "--restart"
listing "$RB" >"$T/rb.after"
cmp -s "$T/rb.before" "$T/rb.after" && pass "data-root untouched" || fail "data-root changed: $(diff "$T/rb.before" "$T/rb.after" | head -5)"

# restarted_around WHAT ARGS...: runs `extrafs ARGS...` (an attach or detach --restart of live-b:1
# on B), which must report WHAT ("attached"/"detached") and the downtime; then B runs with a new
# pid, its own command line, appending to its log file, and keeper runs with the same pid.
restarted_around() {
  local what=$1 old new lines running pid2; shift
  old=$(dpid "$DB")
  lines=$(wc -l <"$DB/dockerd.log")
  if run_x 0 "$*" "$@"; then
    grep -q "^$what live-b:1 " "$T/x.out" && pass "reports: $what live-b:1" || fail "no '$what live-b:1' line: $(cat "$T/x.out")"
    grep -Eq "^dockerd restarted .*unavailable for [0-9]+\.[0-9]+ s$" "$T/x.out" &&
      pass "reports the downtime: $(grep '^dockerd restarted' "$T/x.out")" || fail "no downtime line: $(cat "$T/x.out")"
  fi
  new=$(dpid "$DB")
  [[ -n $new && $new != "$old" ]] && kill -0 "$new" 2>/dev/null && pass "B runs again with a new pid ($old -> $new)" ||
    fail "B pid before $old, after '$new'"
  [[ $(tr '\0' ' ' <"/proc/$new/cmdline" 2>/dev/null) == *"--data-root $RB "*"--live-restore"* ]] &&
    pass "B restarted with its own command line" ||
    fail "B's command line after the restart: $(tr '\0' ' ' <"/proc/$new/cmdline" 2>/dev/null)"
  [[ $(readlink "/proc/$new/fd/1") == "$DB/dockerd.log" && $(wc -l <"$DB/dockerd.log") -gt $lines ]] &&
    pass "B appends to its log file again" || fail "B's stdout after the restart: $(readlink "/proc/$new/fd/1")"
  read -r running pid2 <<<"$(container_state "$DB" keeper)"
  [[ $running == true && $pid2 == "$cpid" ]] && kill -0 "$cpid" 2>/dev/null &&
    pass "keeper still runs with the same pid ($cpid)" || fail "keeper after the restart: running=$running pid=$pid2 (was $cpid)"
}

step "attach --restart live-b:1 with the container running"
restarted_around attached docker attach live-b:1 --mount "$MNT" --data-root "$RB" --restart
out=$(dB run --rm --network none live-b:1 /bin/busybox cat /etc/marker 2>&1)
[[ $out == live-b-marker ]] && pass "live-b:1 runs" || fail "docker run live-b:1: $out"

step "detach --restart live-b:1 with the container running"
restarted_around detached docker detach live-b:1 --data-root "$RB" --restart
imgs=$(dB image ls --format '{{.Repository}}:{{.Tag}}' 2>&1)
[[ $imgs == *live-a:1* && $imgs != *"live-b:1"* ]] && pass "dockerd lists live-a:1 and no live-b:1" || fail "images after detach: $imgs"
out=$(dB run --rm --network none live-a:1 /bin/busybox echo still-ok 2>&1)
[[ $out == still-ok ]] && pass "live-a:1 (sharing the base layer) still runs" || fail "docker run live-a:1: $out"

step "attach --all into a stopped data-root, twice"
run_x 0 "attach --all" docker attach --all --mount "$MNT" --data-root "$RC"
for ref in live-a:1 live-b:1 live-b:latest; do
  grep -q "^attached $ref " "$T/x.out" && pass "--all attached $ref" || fail "--all did not attach $ref: $(cat "$T/x.out")"
done
listing "$RC" >"$T/rc.before"
cp "$RC/image/overlay2/repositories.json" "$T/repos.before"
run_x 0 "second attach --all" docker attach --all --mount "$MNT" --data-root "$RC" &&
  { grep -q "nothing to attach" "$T/x.out" && pass "says there is nothing to attach" || fail "second --all: $(cat "$T/x.out")"; }
listing "$RC" >"$T/rc.after"
cmp -s "$T/rc.before" "$T/rc.after" && cmp -s "$T/repos.before" "$RC/image/overlay2/repositories.json" &&
  pass "second --all changed nothing" || fail "second --all changed the data-root: $(diff "$T/rc.before" "$T/rc.after" | head -5)"

step "dockerd C without live-restore: attach --restart is refused"
start_dockerd "$DC" "$RC" C
cpid_c=$(dpid "$DC")
imgs=$(dC image ls --format '{{.Repository}}:{{.Tag}}' 2>&1)
[[ $imgs == *live-a:1* && $imgs == *live-b:1* && $imgs == *live-b:latest* ]] && pass "C lists every image --all attached" ||
  fail "C lists: $imgs"
run_x 1 "detach --restart on C" docker detach live-b:1 --data-root "$RC" --restart &&
  one_line_err "no live-restore (detach)" '"live-restore": true'
# --all with nothing to attach does not touch dockerd at all.
run_x 0 "attach --all --restart with nothing new" docker attach --all --mount "$MNT" --data-root "$RC" --restart &&
  { grep -q "nothing to attach" "$T/x.out" && ! grep -q "restarted" "$T/x.out" && pass "nothing to attach, no restart" ||
    fail "attach --all --restart with nothing new: $(cat "$T/x.out")"; }
dC rmi live-b:latest >/dev/null 2>&1 || fail "docker rmi live-b:latest on C failed"
listing "$RC" >"$T/rc.before"
cp "$RC/image/overlay2/repositories.json" "$T/repos.before"
run_x 1 "attach --restart on C" docker attach live-b:latest --mount "$MNT" --data-root "$RC" --restart &&
  one_line_err "no live-restore" '"live-restore": true'
[[ $(dpid "$DC") == "$cpid_c" ]] && kill -0 "$cpid_c" 2>/dev/null && pass "C still runs with the same pid ($cpid_c)" ||
  fail "C's pid was $cpid_c, now '$(dpid "$DC")'"
[[ $(dC version --format '{{.Server.Version}}' 2>/dev/null) != "" ]] && pass "C still answers" || fail "C does not answer"
listing "$RC" >"$T/rc.after"
cmp -s "$T/rc.before" "$T/rc.after" && cmp -s "$T/repos.before" "$RC/image/overlay2/repositories.json" &&
  pass "C's data-root untouched" || fail "C's data-root changed: $(diff "$T/rc.before" "$T/rc.after" | head -5)"

step "the systemd helper extrafs-attach-listed attaches the listed image into a stopped data-root"
sbindir=$(sed -n 's|^extrafs=\(/.*\)/extrafs$|\1|p' "$HELPER")
[[ -n $sbindir && -d $sbindir ]] || die "cannot find the extrafs path the helper runs: $(grep "^extrafs=" "$HELPER")"
mkdir -p "$T/sbin"
ln -s "$EXTRAFS" "$T/sbin/extrafs"
printf '# images for this host\nlive-b:latest   # the app\n\n' >"$T/images"
# The helper runs $sbindir/extrafs: show it this build's binary there in a private mount namespace.
rc=0
DATA_ROOT=$RD timeout 120 unshare -m sh -c 'mount --bind "$1" "$2" && exec sh "$3" "$4" "$5"' _ \
  "$T/sbin" "$sbindir" "$HELPER" "$MNT" "$T/images" >"$T/h.out" 2>"$T/h.err" || rc=$?
[[ $rc -eq 0 ]] && grep -q "^attached live-b:latest " "$T/h.out" && pass "helper: exit 0, $(head -1 "$T/h.out")" ||
  fail "helper: exit $rc; stdout: $(cat "$T/h.out"); stderr: $(cat "$T/h.err")"
start_dockerd "$DD" "$RD" D
imgs=$(dD image ls --format '{{.Repository}}:{{.Tag}}' 2>&1)
[[ $imgs == *live-b:latest* && $imgs != *live-a:1* ]] && pass "D lists live-b:latest (only)" || fail "D lists: $imgs"
out=$(dD run --rm --network none live-b:latest /bin/busybox cat /etc/marker 2>&1)
[[ $out == live-b-marker ]] && pass "live-b:latest runs on D" || fail "docker run live-b:latest on D: $out"

finish
