# lib.sh — shared helpers for the extrafs integration tests (sourced, not run).
#
# Provides: pass/fail/warn/step reporting with a failure count, a private temp
# dir $T that is always cleaned up (every mount registered with track_mount is
# unmounted first, every pid registered with track_pid is killed), bounded
# waits for mounts and processes, and helpers to mount extrafs and to find its
# daemon process.

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
COMPARE=(python3 "$HERE/compare_trees.py")
FAILS=0
WARNS=0
MOUNTS=()
PIDS=()
T=
SCRIPT_START=$SECONDS

pass() { echo "  ok: $*"; }
fail() { echo "  FAIL: $*"; FAILS=$((FAILS + 1)); }
warn() { echo "  WARN: $*"; WARNS=$((WARNS + 1)); }
step() { echo; echo "== [$((SECONDS - SCRIPT_START))s] $*"; }
die() { echo "  FATAL: $*"; FAILS=$((FAILS + 1)); finish; }

# Print the summary and exit 1 if any check failed.
finish() {
  echo
  if [[ $FAILS -ne 0 ]]; then
    echo "$(basename "$0"): $FAILS check(s) FAILED, $WARNS warning(s), $((SECONDS - SCRIPT_START)) s"
    exit 1
  fi
  echo "$(basename "$0"): all checks passed, $WARNS warning(s), $((SECONDS - SCRIPT_START)) s"
  exit 0
}

# Skip (exit 77, shown as SKIP by meson) when the environment cannot run the test at all.
require_env() {
  if [[ $(id -u) -ne 0 ]]; then echo "SKIP: needs root"; exit 77; fi
  if [[ ! -c /dev/fuse ]]; then echo "SKIP: no /dev/fuse"; exit 77; fi
  [[ -n ${EXTRAFS:-} ]] || { echo "usage: $0 EXTRAFS"; exit 2; }
  [[ -x $EXTRAFS ]] || { echo "FATAL: extrafs binary not executable: $EXTRAFS"; exit 1; }
  EXTRAFS=$(realpath "$EXTRAFS")
}

is_mounted() { mountpoint -q -- "$1" 2>/dev/null; }

# flip_byte FILE OFFSET: inverts every bit of the byte at OFFSET, so the file surely changes
# (writing a fixed byte leaves a file that already holds it there, 1 in 256 for random data, as
# it was).
flip_byte() {
  python3 -c 'import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2])); b = f.read(1)
    if len(b) != 1: sys.exit("flip_byte: " + sys.argv[1] + " has no byte at " + sys.argv[2])
    f.seek(int(sys.argv[2])); f.write(bytes([b[0] ^ 0xff]))' "$1" "$2"
}

# Any mount at or below a path (from /proc/self/mountinfo, field 5).
mounts_under() {
  python3 - "$1" <<'PY'
import sys
root = sys.argv[1].rstrip("/")
for line in open("/proc/self/mountinfo"):
    mp = line.split()[4].encode().decode("unicode_escape")
    if mp == root or mp.startswith(root + "/"):
        print(mp)
PY
}

cleanup() {
  local rc=$? i m n p
  set +e
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${MOUNTS[$i]}
    for n in 1 2 3 4 5; do
      is_mounted "$m" || break
      umount -- "$m" 2>/dev/null || fusermount3 -u -z -- "$m" 2>/dev/null || umount -l -- "$m" 2>/dev/null
    done
  done
  for p in "${PIDS[@]}"; do
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
  done
  if [[ -n $T && -d $T ]]; then
    local left
    left=$(mounts_under "$T")
    if [[ -n $left ]]; then
      for m in $left; do umount -l -- "$m" 2>/dev/null; done
      left=$(mounts_under "$T")
    fi
    if [[ -z $left ]]; then
      rm -rf --one-file-system -- "$T"
    else
      echo "WARNING: mounts left under $T, not removing it: $left"
    fi
  fi
  exit $rc
}

setup_tmp() {
  T=$(mktemp -d /tmp/extrafs-it.XXXXXX)
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

track_mount() { MOUNTS+=("$1"); }
track_pid() { PIDS+=("$1"); }

# wait_until SECONDS COMMAND... : poll every 0.1 s; status 0 once COMMAND succeeds.
wait_until() {
  local limit=$1; shift
  local end=$((SECONDS + limit))
  while ((SECONDS <= end)); do
    "$@" && return 0
    sleep 0.1
  done
  "$@"
}
not_mounted() { ! is_mounted "$1"; }
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# thread_stacks PID: every thread of PID, and gdb's backtraces: the report of a daemon found hung,
# before it goes (tests/py/xf.py thread_stacks, which the pytest tests print).
thread_stacks() {
  /usr/bin/python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import xf; print(xf.thread_stacks(int(sys.argv[2])))' \
    "$HERE/../py" "$1"
}

# Pids of extrafs processes whose command line has MOUNTPOINT as an argument: those whose
# executable (" (deleted)" or not) is $EXTRAFS or named extrafs*. One python3 rather than a loop of
# readlink/basename/tr/grep per process, which took 2-9 s a call on a busy machine, and
# test_bad_input.sh calls it ~35 times.
daemon_pids() {
  python3 - "$1" "${EXTRAFS:-}" <<'PY'
import os, sys
m, extrafs = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
for p in sorted(d for d in os.listdir("/proc") if d[:1].isdigit()):
    try:
        exe = os.readlink(f"/proc/{p}/exe".encode())
        exe = exe[:-len(b" (deleted)")] if exe.endswith(b" (deleted)") else exe
        if exe != extrafs and not os.path.basename(exe).startswith(b"extrafs"):
            continue
        with open(f"/proc/{p}/cmdline", "rb") as f:
            args = f.read().replace(b"\0", b"\n").split(b"\n")
    except OSError:
        continue
    if m in args:
        print(p)
PY
}

# mount_extrafs STORE MNT [EXTRA_OPTS]: mounts in the background mode (no -f) with a private
# cache; fails the test unless it exits 0 and the mount serves as soon as the command returns.
mount_extrafs() {
  local store=$1 mnt=$2 extra=${3:-} rc=0
  local opts="cache=$T/cache,cache_size=512M,log_level=warn${extra:+,$extra}"
  timeout 60 "$EXTRAFS" mount "$store" "$mnt" -o "$opts" >"$T/mount.out" 2>"$T/mount.err" || rc=$?
  track_mount "$mnt"
  if [[ $rc -ne 0 ]]; then
    fail "extrafs mount $store $mnt -o $opts: exit $rc; stderr: $(head -c 2000 "$T/mount.err")"
    return 1
  fi
  if is_mounted "$mnt" && stat -- "$mnt/overlay2" >/dev/null 2>&1; then
    pass "extrafs mount returned 0 and $mnt serves at once"
  else
    fail "extrafs mount returned 0 but $mnt was not serving when it returned"
    wait_until 10 is_mounted "$mnt" || { fail "$mnt still not mounted after 10 s"; return 1; }
  fi
  [[ -s $T/mount.err ]] && warn "mount wrote to stderr on success: $(head -c 500 "$T/mount.err")"
  return 0
}

# Snapshot of the index files: path, size, mtime_ns, ctime_ns, ino, sha256.
snapshot_index() {
  python3 - "$1" <<'PY'
import hashlib, os, sys
root = sys.argv[1]
for dp, dns, fns in sorted(os.walk(root)):
    dns.sort()
    for n in sorted(fns) + [d for d in dns if os.path.islink(os.path.join(dp, d))]:
        p = os.path.join(dp, n)
        st = os.lstat(p)
        h = hashlib.sha256(open(p, "rb").read()).hexdigest() if os.path.isfile(p) and not os.path.islink(p) else "-"
        print(os.path.relpath(p, root), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, h)
PY
}

# timed COMMAND...: runs COMMAND, sets TIME_TAKEN to its wall time in seconds (3 decimals),
# returns its status.
timed() {
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  "$@" || rc=$?
  t1=$(date +%s.%N)
  TIME_TAKEN=$(python3 -c "print('%.3f' % ($t1 - $t0))")
  return $rc
}

# expect_fail NAME CLASS(usage|runtime) NEEDLE [NEEDLE...] -- COMMAND...
# Runs COMMAND (stdin /dev/null, 20 s limit) and checks the outcome: exit 1 or 2 (the class
# says which; the other is a warning), never a hang or a signal, exactly one line on stderr; any NEEDLE
# (fixed string) in the stderr line is enough. Sets LAST_RC.
expect_fail() {
  local name=$1 class=$2; shift 2
  local needles=()
  while [[ $1 != -- ]]; do needles+=("$1"); shift; done
  shift
  step "$name"
  echo "  \$ $(printf '%q ' "$@")"
  local rc=0
  timeout -k 5 20 "$@" </dev/null >"$T/out" 2>"$T/err" || rc=$?
  LAST_RC=$rc
  local nlines
  nlines=$(python3 -c "import sys; d=open(sys.argv[1],'rb').read(); print(len(d.rstrip(b'\n').split(b'\n')) if d.strip() else 0)" "$T/err")
  echo "  exit $rc; stderr ($nlines line(s)): $(head -c 600 "$T/err")"
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    fail "$name: hung (killed after 20 s)"
  elif [[ $rc -gt 128 ]]; then
    fail "$name: died from signal $((rc - 128))"
  elif [[ $rc -eq 0 ]]; then
    fail "$name: exit status 0"
  elif [[ $rc -ne 1 && $rc -ne 2 ]]; then
    fail "$name: exit status $rc, expected 1 or 2"
  else
    pass "exit status $rc"
    local want=1; [[ $class == usage ]] && want=2
    [[ $rc -eq $want ]] || warn "$name: exit $rc, but this is a $class error (expected $want)"
  fi
  if [[ $nlines -eq 1 ]]; then
    pass "one line on stderr"
  else
    fail "$name: $nlines lines on stderr, expected exactly 1"
  fi
  local n found=0
  for n in "${needles[@]}"; do grep -qF -- "$n" "$T/err" && found=1; done
  if [[ $found -eq 1 ]]; then
    pass "stderr names $(printf "'%s' or " "${needles[@]}" | sed 's/ or $//')"
  else
    fail "$name: stderr does not mention $(printf "'%s' or " "${needles[@]}" | sed 's/ or $//')"
  fi
}
