#!/bin/bash
# dockerd.sh: start/stop a private dockerd (with its own containerd) for tests.
#
#   dockerd.sh start STATE DATA_ROOT   start a dockerd on DATA_ROOT; its exec-root, socket, pid file,
#                                      log and config go in STATE (keep STATE short: containerd's
#                                      socket STATE/exec/containerd/containerd.sock must fit in 108
#                                      bytes). Prints DOCKER_HOST=unix://STATE/docker.sock and PID=.
#   dockerd.sh stop STATE              SIGTERM, wait (bounded), SIGKILL if needed; then kill what is
#                                      left of its containerd and shims and unmount what it left
#                                      mounted under its exec-root and data-root
#   dockerd.sh status STATE            exit 0 if that dockerd is alive
#   dockerd.sh docker STATE ARGS...    run /usr/bin/docker against that dockerd
#
# Environment knobs (optional):
#   DOCKERD_WAIT_S   seconds to wait for the API to answer (default 30)
#   DOCKERD_BIN      default /usr/sbin/dockerd;  DOCKER_CLI  default /usr/bin/docker
#   DOCKERD_EXTRA_ARGS  more dockerd arguments, split at blanks (e.g. "--live-restore")
#
# Several instances may run at once: each has its own data-root, exec-root (so its own containerd,
# state and netns), socket, pid file, config file and trust key. Facts (docker.io 20.10.24, Debian 12):
# - dockerd starts its own containerd (supervised child) under EXEC/containerd. A dockerd killed
#   with SIGKILL takes its containerd along but leaves each running container's
#   containerd-shim-runc-v2 and the container's processes (in their own pid namespace, not
#   children of anything we know) running: stop removes them with `runc --root
#   EXEC/runtime-runc/moby delete --force`, then kills what is left of containerd (through
#   EXEC/containerd/containerd.pid) and the shims (their -address argument).
# - --config-file STATE/daemon.json keeps the host's /etc/docker/daemon.json out (dockerd 20.10
#   still creates its trust key /etc/docker/key.json; there is no flag to move it).
set -u

DOCKERD_BIN=${DOCKERD_BIN:-/usr/sbin/dockerd}
DOCKER_CLI=${DOCKER_CLI:-/usr/bin/docker}

die() { echo "dockerd.sh: $*" >&2; exit 1; }

alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

# wait_gone PID TENTHS: bounded wait for a process to exit.
wait_gone() {
  local pid=$1 n=${2:-100}
  for _ in $(seq 1 "$n"); do
    alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

cli() {
  local state=$1; shift
  "$DOCKER_CLI" -H "unix://$state/docker.sock" "$@"
}

# Pids of containerd-shim processes (and the containerd) belonging to exec-root EXEC.
children_of() {
  local exec=$1 p
  if [ -f "$exec/containerd/containerd.pid" ]; then
    p=$(cat "$exec/containerd/containerd.pid" 2>/dev/null)
    [ -n "$p" ] && alive "$p" && echo "$p"
  fi
  # Every process (but this python3) with an argument naming the socket: one python3 rather than
  # a tr and a grep per process, which took ~5 s on a loaded machine (each test's stop pays it).
  python3 - "$exec/containerd/containerd.sock" <<'PY'
import os, sys
sock = os.fsencode(sys.argv[1])
for p in sorted(d for d in os.listdir("/proc") if d[:1].isdigit() and d != str(os.getpid())):
    try:
        with open(f"/proc/{p}/cmdline", "rb") as f:
            args = f.read().replace(b"\0", b"\n").split(b"\n")
    except OSError:
        continue
    if any(sock in a for a in args):
        print(p)
PY
}

unmount_under() {
  local root=$1 m
  [ -n "$root" ] || return 0
  for _ in 1 2 3; do
    m=$(python3 - "$root" <<'PY'
import sys
root = sys.argv[1].rstrip("/")
out = []
for line in open("/proc/self/mountinfo"):
    mp = line.split()[4].encode().decode("unicode_escape")
    if mp == root or mp.startswith(root + "/"):
        out.append(mp)
for mp in sorted(out, key=len, reverse=True):
    print(mp)
PY
)
    [ -n "$m" ] || return 0
    while IFS= read -r mp; do umount -- "$mp" 2>/dev/null || umount -l -- "$mp" 2>/dev/null; done <<<"$m"
  done
}

cmd_start() {
  [ $# -eq 2 ] || die "usage: dockerd.sh start STATE DATA_ROOT"
  local state=$1 root=$2 wait_s=${DOCKERD_WAIT_S:-30}
  [ -x "$DOCKERD_BIN" ] || die "$DOCKERD_BIN not found (apt-get install docker.io)"
  [ -x "$DOCKER_CLI" ] || die "$DOCKER_CLI not found (apt-get install docker.io)"
  mkdir -p "$state" "$root" || die "cannot create $state or $root"
  state=$(cd "$state" && pwd)
  root=$(cd "$root" && pwd)
  if [ -f "$state/dockerd.pid" ] && alive "$(cat "$state/dockerd.pid")"; then
    die "a dockerd is already running for $state (pid $(cat "$state/dockerd.pid"))"
  fi
  local sock=$state/docker.sock
  [ ${#sock} -lt 90 ] || die "state dir path too long for unix sockets: $state"
  mkdir -p "$state/exec"
  [ -f "$state/daemon.json" ] || echo '{}' >"$state/daemon.json"
  echo "$root" >"$state/data-root"
  rm -f "$state/dockerd.pid" "$sock"
  : >>"$state/dockerd.log"
  local extra=()
  read -r -a extra <<<"${DOCKERD_EXTRA_ARGS:-}"
  setsid "$DOCKERD_BIN" \
    --config-file "$state/daemon.json" \
    --data-root "$root" --exec-root "$state/exec" --pidfile "$state/dockerd.pid" \
    -H "unix://$sock" \
    --storage-driver overlay2 --iptables=false --ip6tables=false --ip-masq=false \
    --ip-forward=false --bridge=none --userland-proxy=false --shutdown-timeout 5 "${extra[@]}" \
    >>"$state/dockerd.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$state/dockerd.bgpid"
  local end=$((SECONDS + wait_s))
  while [ $SECONDS -le $end ]; do
    alive "$pid" || { echo "dockerd.sh: dockerd exited at start-up; log tail:" >&2; tail -15 "$state/dockerd.log" >&2; cmd_stop "$state" >/dev/null 2>&1; exit 1; }
    if [ -S "$sock" ] && timeout 5 "$DOCKER_CLI" -H "unix://$sock" version --format '{{.Server.Version}}' >/dev/null 2>&1; then
      echo "DOCKER_HOST=unix://$sock"
      echo "PID=$pid"
      return 0
    fi
    sleep 0.1
  done
  echo "dockerd.sh: dockerd did not answer within ${wait_s}s; log tail:" >&2
  tail -15 "$state/dockerd.log" >&2
  cmd_stop "$state" >/dev/null 2>&1
  exit 1
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: dockerd.sh stop STATE"
  local state=$1 pid rc=0 root=
  [ -d "$state" ] || return 0
  state=$(cd "$state" && pwd)
  [ -f "$state/data-root" ] && root=$(cat "$state/data-root")
  for f in dockerd.bgpid dockerd.pid; do
    [ -f "$state/$f" ] || continue
    pid=$(cat "$state/$f")
    [ -n "$pid" ] || continue
    if alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null
      if ! wait_gone "$pid" 300; then
        echo "dockerd.sh: dockerd $pid did not stop within 30 s, killing it" >&2
        kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" 50 || rc=1
      fi
    fi
  done
  # What a clean shutdown stops by itself; after a crash or SIGKILL it is still there: the
  # containers (their processes outlive their shims), then containerd and the shims.
  local rroot=$state/exec/runtime-runc/moby c
  if [ -d "$rroot" ] && command -v runc >/dev/null; then
    for c in $(ls "$rroot" 2>/dev/null); do
      timeout 20 runc --root "$rroot" delete --force "$c" >/dev/null 2>&1 || rc=1
    done
  fi
  local left
  left=$(children_of "$state/exec" | sort -u)
  if [ -n "$left" ]; then
    for p in $left; do kill -TERM "$p" 2>/dev/null; done
    for p in $left; do wait_gone "$p" 50 || { kill -KILL "$p" 2>/dev/null; wait_gone "$p" 20 || rc=1; }; done
  fi
  # A stale pid file makes the next dockerd wait for a containerd that is gone (a zombie not yet
  # reaped still passes dockerd's kill(pid, 0) check) and fail after its 60 s timeout.
  rm -f "$state/exec/containerd/containerd.pid"
  unmount_under "$state/exec"
  [ -n "$root" ] && unmount_under "$root"
  rm -f "$state/dockerd.pid" "$state/dockerd.bgpid" "$state/docker.sock"
  return $rc
}

cmd_status() {
  [ $# -eq 1 ] || die "usage: dockerd.sh status STATE"
  [ -f "$1/dockerd.bgpid" ] && alive "$(cat "$1/dockerd.bgpid")"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  status) shift; cmd_status "$@" ;;
  docker) shift; [ $# -ge 1 ] || die "usage: dockerd.sh docker STATE ARGS..."; cli "$@" ;;
  *) die "usage: dockerd.sh start STATE DATA_ROOT | stop|status STATE | docker STATE ARGS..." ;;
esac
