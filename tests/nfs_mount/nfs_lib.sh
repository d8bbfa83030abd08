# nfs_lib.sh — shared helpers for the tests/nfs_mount/ tests (sourced, not run).
#
# Builds on tests/integration/lib.sh (pass/fail/step, $T, track_mount, cleanup) and
# tests/nfs/ganesha.sh (a private nfs-ganesha on 127.0.0.1). Every test:
#   nm_init "$@"                      root + /dev/fuse + ganesha present, private $T, traps
#   nm_build_store STORE [HOOK]       make_odd_store.sh, then HOOK STORE (add files), then
#                                     `extrafs index STORE`; sets CIDS (base, mid, top)
#   nm_start_ganesha EXPORT_DIR       random port (retry on exit 3); sets NFS4_URL, NFS3_URL,
#                                     GPORT, GMNT_PORT, GSTATE
#   nm_mount URL MNT CACHE [OPTS]     background mount (timeout 60), tracked for cleanup
#   no_d_state PID...                 none of these processes' tasks is in state D now
# The EXIT trap stops ganesha (continuing it first if paused) and unmounts everything.

NM_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$NM_HERE/../integration/lib.sh"
GANESHA=$NM_HERE/../nfs/ganesha.sh
MAKE_STORE=$NM_HERE/../integration/make_odd_store.sh
MiB=$((1 << 20))
CHUNK_FILE_SIZE=$((MiB + 32))   # one chunk file: 32-byte header + 1 MiB of raw bytes
GSTATE=
GPORT=
GMNT_PORT=

nm_cleanup() {
  local rc=$?
  set +e
  # Unmount first (a read blocked on a paused server ends within the mount's timeout), then stop
  # the server, then lib.sh's cleanup (remaining mounts, pids, $T).
  local i m
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${MOUNTS[$i]}
    is_mounted "$m" && { timeout 20 umount -- "$m" 2>/dev/null || umount -l -- "$m" 2>/dev/null; }
  done
  if [[ -n $GSTATE && -d $GSTATE ]]; then
    timeout 30 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1
  fi
  (exit $rc)
  cleanup
}

nm_init() {
  EXTRAFS=${1:-}
  require_env
  local p
  for p in ganesha.nfsd nfs-ls rpcbind rpcinfo ss python3; do
    command -v "$p" >/dev/null || { echo "FATAL: $p not installed (scripts/setup installs it)"; exit 1; }
  done
  setup_tmp
  trap nm_cleanup EXIT
  trap 'exit 130' INT TERM
  GSTATE=$T/ganesha
  mkdir -p "$GSTATE"
}

# nm_build_store STORE [HOOK]: the odd store (+ HOOK STORE), indexed.
nm_build_store() {
  local store=$1 hook=${2:-} rc=0
  "$MAKE_STORE" "$store" >/dev/null 2>"$T/make_store.err" || die "make_odd_store.sh failed: $(tail -3 "$T/make_store.err")"
  mapfile -t CIDS <"$store/.layers"
  if [[ -n $hook ]]; then
    "$hook" "$store" || die "adding test files to the store failed"
  fi
  timeout 300 "$EXTRAFS" index "$store" >"$T/index.out" 2>"$T/index.err" || rc=$?
  [[ $rc -eq 0 ]] || die "extrafs index $store exited $rc: $(head -c 2000 "$T/index.err")"
  pass "store built and indexed (${#CIDS[@]} layers)"
}

# random_file PATH BYTES SEED: deterministic pseudo-random content (distinct per SEED).
random_file() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, random, sys
path, size, seed = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random("nfs_mount:" + seed)
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as f:
    left = size
    while left:
        n = min(left, 1 << 20)
        f.write(rng.randbytes(n))
        left -= n
PY
}

# nm_start_ganesha EXPORT_DIR [PROTOCOLS]: starts the private server on a free random port pair.
nm_start_ganesha() {
  local export_dir=$1 out rc port
  export GANESHA_PROTOCOLS=${2:-3,4}
  export GANESHA_ACCESS=RO
  for _ in $(seq 1 20); do
    port=$((31000 + (RANDOM % 8000) * 2))
    export GANESHA_MNT_PORT=$((port + 1))
    rc=0
    out=$(timeout 60 "$GANESHA" start "$GSTATE" "$export_dir" "$port" 2>"$T/ganesha.start.err") || rc=$?
    if [[ $rc -eq 0 ]]; then
      GPORT=$port
      GMNT_PORT=$((port + 1))
      NFS4_URL=$(sed -n 's/^NFS4_URL=//p' <<<"$out")
      NFS3_URL=$(sed -n 's/^NFS3_URL=//p' <<<"$out")
      pass "nfs-ganesha serving $export_dir on 127.0.0.1:$GPORT (mount port $GMNT_PORT)"
      return 0
    fi
    [[ $rc -eq 3 ]] && continue
    die "ganesha.sh start failed (rc $rc): $(tail -5 "$T/ganesha.start.err")"
  done
  die "no free port pair found for nfs-ganesha"
}

# nm_restart_ganesha EXPORT_DIR: starts the server again on the same ports (after stop).
nm_restart_ganesha() {
  local export_dir=$1 rc=0
  export GANESHA_MNT_PORT=$GMNT_PORT
  for _ in $(seq 1 20); do
    rc=0
    timeout 60 "$GANESHA" start "$GSTATE" "$export_dir" "$GPORT" >/dev/null 2>"$T/ganesha.start.err" || rc=$?
    [[ $rc -eq 0 ]] && return 0
    [[ $rc -eq 3 ]] || break
    sleep 0.5   # the port is still held by the old instance's sockets
  done
  fail "could not restart nfs-ganesha on port $GPORT (rc $rc): $(tail -5 "$T/ganesha.start.err")"
  return 1
}

# A loopback TCP port nothing listens on.
closed_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((40000 + RANDOM % 20000))
    ss -Hltn "sport = :$p" | grep -q . || { echo "$p"; return 0; }
  done
  return 1
}

# nm_mount URL MNT CACHE [EXTRA_OPTS]: `extrafs mount` in the background mode; status 0 if it
# returned 0 and MNT serves. Errors are recorded with fail.
nm_mount() {
  local url=$1 mnt=$2 cache=$3 extra=${4:-} rc=0
  local opts="cache=$cache,log_level=warn${extra:+,$extra}"
  mkdir -p "$mnt"
  timeout 60 "$EXTRAFS" mount "$url" "$mnt" -o "$opts" >"$T/mount.out" 2>"$T/mount.err" || rc=$?
  track_mount "$mnt"
  if [[ $rc -ne 0 ]]; then
    fail "extrafs mount '$url' $mnt -o $opts: exit $rc; stderr: $(head -c 1000 "$T/mount.err")"
    return 1
  fi
  if ! is_mounted "$mnt" || ! stat -- "$mnt/overlay2" >/dev/null 2>&1; then
    fail "extrafs mount '$url' returned 0 but $mnt does not serve"
    return 1
  fi
  pass "mounted '$url' on $mnt -o $opts"
}

# nm_unmount MNT: `extrafs unmount`, and the daemon is gone within 10 s.
nm_unmount() {
  local mnt=$1 rc=0 pids
  mapfile -t pids < <(daemon_pids "$mnt")
  timeout 30 "$EXTRAFS" unmount "$mnt" >"$T/umount.out" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    fail "extrafs unmount $mnt exited $rc: $(head -c 500 "$T/umount.out")"
    return 1
  fi
  wait_until 10 not_mounted "$mnt" || { fail "$mnt still mounted after extrafs unmount"; return 1; }
  local p
  for p in "${pids[@]}"; do
    wait_until 10 pid_gone "$p" || { fail "daemon $p still alive 10 s after unmount"; return 1; }
  done
  return 0
}

# no_d_state PID...: none of these processes' tasks is in state D (uninterruptible sleep) now.
no_d_state() {
  local p t st
  for p in "$@"; do
    for t in /proc/"$p"/task/*/stat; do
      st=$(sed 's/.*) //' "$t" 2>/dev/null | cut -c1) || continue
      [[ $st != D ]] || return 1
    done
  done
  return 0
}

# stats_json MNT: the daemon's counters (one JSON object) on stdout.
stats_json() { timeout 10 "$EXTRAFS" stats "$1" --json; }

# stat_of JSON_FILE KEY: one integer counter from a saved stats JSON.
stat_of() {
  python3 -c 'import json, sys; print(int(json.load(open(sys.argv[1]))[sys.argv[2]]))' "$1" "$2"
}

# sum_chunk_bytes CACHE: total st_size of the chunk files under CACHE/chunks.
sum_chunk_bytes() {
  python3 - "$1" <<'PY'
import os, sys
t = 0
for dp, dns, fns in os.walk(os.path.join(sys.argv[1], "chunks")):
    for n in fns:
        try:
            t += os.lstat(os.path.join(dp, n)).st_size
        except FileNotFoundError:
            pass
print(t)
PY
}

# read_errno FILE TIMEOUT: reads FILE completely to /dev/null under `timeout -s KILL`; sets
# READ_RESULT to "OK", "TIMEOUT" or the errno name (EIO, ...) and READ_SECS to the wall time.
read_errno() {
  local f=$1 limit=$2 t0 t1 out rc=0
  t0=$(date +%s.%N)
  out=$(timeout -s KILL "$limit" python3 - "$f" <<'PY' 2>&1
import errno, sys
try:
    with open(sys.argv[1], "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e.errno)))
PY
  ) || rc=$?
  t1=$(date +%s.%N)
  READ_SECS=$(python3 -c "print('%.2f' % ($t1 - $t0))")
  if [[ $rc -eq 137 || $rc -eq 124 ]]; then READ_RESULT=TIMEOUT
  else READ_RESULT=$(tail -1 <<<"$out"); [[ -n $READ_RESULT ]] || READ_RESULT="exit $rc"; fi
}

# secs_le A B: A <= B (floats)
secs_le() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)' "$1" "$2"; }

# sp PATH: PATH with each 64-hex cache-id shortened to 12 digits (for readable messages).
sp() { sed -E 's#([0-9a-f]{12})[0-9a-f]{52}#\1…#g' <<<"$1"; }
