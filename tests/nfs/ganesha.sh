#!/bin/bash
# ganesha.sh: start/stop a private nfs-ganesha (userspace NFS server) on 127.0.0.1 for tests.
#
#   ganesha.sh start DIR EXPORT_PATH PORT   serve EXPORT_PATH; state (config, log, pid) goes in DIR
#   ganesha.sh stop DIR                      stop that instance
#   ganesha.sh urls DIR                      print the URLs of a started instance again
#   ganesha.sh status DIR                    exit 0 if the instance's process is alive
#   ganesha.sh kill DIR                      SIGKILL it (a crash; start again with `start`)
#   ganesha.sh pause DIR / resume DIR        SIGSTOP / SIGCONT it (a hung server)
#
# Environment knobs for start (all optional):
#   GANESHA_PROTOCOLS  "3,4" (default) or "4" (NFSv4 only: no rpcbind needed at all)
#   GANESHA_ACCESS     RO (default) or RW
#   GANESHA_MNT_PORT   MOUNT protocol port for NFSv3 (default PORT+1)
#   GANESHA_PSEUDO     pseudo path of the export (default /export); also the v3 mount path
#   GANESHA_WAIT_S     seconds to wait for the server to answer (default 10)
#   GANESHA_ATTR_EXPIRATION  seconds ganesha's MDCACHE trusts cached attributes/lookups
#                      (default 0: tests change the exported tree behind ganesha's back);
#                      "default" leaves the setting out, so ganesha's own default (60 s) applies
#   GANESHA_RPCBIND_LOCK  the machine-wide lock file of NFSv3 starts (default
#                      /run/lock/extrafs-ganesha-rpcbind.lock; see below)
#
# Exit status: 0 started, 3 the port (or mount port) is in use (pick another), 1 anything else.
#
# On success prints, one per line, and also writes them to DIR/urls:
#   NFS4_URL=nfs://127.0.0.1:PORT/export
#   NFS3_URL=nfs://127.0.0.1/export?version=3&nfsport=PORT&mountport=MNT_PORT   (if v3 enabled)
#   PID=<ganesha pid>
#
# Facts found on Debian 12 / ganesha 4.3 / libnfs 4.0.0 (see also backend/nfs_backend.cc):
# - Enable_NLM/Enable_RQUOTA must be false or ganesha exits when there is no rpcbind; Enable_UDP
#   false keeps it off UDP. With Protocols = 4 only, ganesha runs without rpcbind.
# - NFSv3: ganesha registers its programs with the portmapper at start-up and refuses to start
#   ("Cannot register ... ") without it, so `rpcbind -f` must be running while it starts. Once
#   started, clients that name nfsport= and mountport= never talk to rpcbind, so it may go away.
#   MNT_Port in NFS_CORE_PARAM fixes the MOUNT port (otherwise it is random-ish).
# - There is one portmapper per machine (port 111) and ganesha registers each program as
#   unset-then-set: a second instance that registers after the first replaces its entries, but two
#   instances starting at the same moment interleave (A unsets, B unsets, A sets, B's set finds
#   A's entry) and one exits with "Cannot register NFS V3 on TCP" (or MNT V1): 4 starts at once,
#   5 times, 8 of 20 failed (5 of 20 with an rpcbind already running). A second rpcbind started
#   beside the first cannot bind port 111, and an instance's stop used to kill the rpcbind it had
#   started while another instance was registering with it. So the NFSv3 start, from rpcbind to
#   the first answer, holds a machine-wide lock (RPCBIND_LOCK, flock); inside it the instance's
#   entries are removed again and the rpcbind it started is stopped, so nothing outlives the start.
# - Mount_Path_Pseudo = true makes an NFSv3 MNT use the pseudo path, so the same "/export" works
#   for v3 and v4 (by default v3 would need the real directory path).
# - NFSv4 { Graceless = true } avoids 90 s of NFS4ERR_GRACE after every (re)start;
#   Only_Numeric_Owners = true avoids uid 0 showing up as 65534; RecoveryRoot must be private.
# - ganesha's MDCACHE caches attributes and name lookups (Attr_Expiration_Time, 60 s by default):
#   a file replaced directly in the exported directory (rename over it) keeps being served with
#   its old size, and a fresh LOOKUP may still return the old inode, whose content ganesha keeps
#   readable through its open fd. Attr_Expiration_Time = 0 makes changes visible at once.
# - Several instances can run at once (distinct DIR, PORT); each has its own pid file.
set -u

die() { echo "ganesha.sh: $*" >&2; exit 1; }

GANESHA_BIN=${GANESHA_BIN:-ganesha.nfsd}
PLUGINS_DIR=${GANESHA_PLUGINS_DIR:-/usr/lib/x86_64-linux-gnu/ganesha}

# True if process $1 exists and is not a zombie (an orphaned ganesha may linger as a zombie for a
# moment when PID 1 is slow to reap it).
alive() {
  local st
  st=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [ -n "$st" ] && [ "${st#Z}" = "$st" ]
}

# Waits (bounded, 10 s) until process $1 is gone.
wait_gone() {
  local pid=$1
  for _ in $(seq 1 100); do
    alive "$pid" || return 0
    sleep 0.1
  done
  return 1
}

rpcbind_running() {
  rpcinfo -p 127.0.0.1 >/dev/null 2>&1
}

# Machine-wide, not per instance: every NFSv3 start on this machine shares the one portmapper.
RPCBIND_LOCK=${GANESHA_RPCBIND_LOCK:-/run/lock/extrafs-ganesha-rpcbind.lock}
RPCBIND_PID=  # the rpcbind this start started, if any (stopped again before the lock is released)

# Takes the portmapper lock on fd 9 (bounded: starts queue behind each other for ~0.1-1 s each).
lock_rpcbind() {
  exec 9>>"$RPCBIND_LOCK" || die "cannot open $RPCBIND_LOCK"
  flock -w 120 9 || die "waited 120 s for $RPCBIND_LOCK (another NFSv3 start holds it)"
  # An rpcbind this start started never outlives it, whichever way it ends.
  trap '[ -n "$RPCBIND_PID" ] && kill -TERM "$RPCBIND_PID" 2>/dev/null' EXIT
}

# Starts `rpcbind -f` unless a portmapper answers already (one this script did not start is used
# and left alone). Called with the lock held.
start_rpcbind() {
  local dir=$1
  rpcbind_running && return 0
  command -v rpcbind >/dev/null || die "NFSv3 needs rpcbind, which is not installed"
  # -f: foreground (we keep its pid to stop it). It listens on port 111 of all addresses (its -h
  # restricts UDP only); ganesha needs it only while starting, to register NFSv3 and MOUNT.
  rpcbind -f >"$dir/rpcbind.log" 2>&1 9>&- &
  RPCBIND_PID=$!
  for _ in $(seq 1 50); do
    rpcbind_running && return 0
    alive "$RPCBIND_PID" || break
    sleep 0.1
  done
  die "rpcbind did not come up; log: $(tail -5 "$dir/rpcbind.log" 2>/dev/null)"
}

# Undoes the registration window, lock held: removes the entries ganesha made (clients name
# nfsport= and mountport=; a later instance would replace them anyway), stops the rpcbind this
# start started and releases the lock.
end_rpcbind_window() {
  if rpcbind_running; then
    local prog_vers
    for prog_vers in "100003 3" "100003 4" "100005 1" "100005 3"; do
      # shellcheck disable=SC2086
      rpcinfo -d $prog_vers >/dev/null 2>&1
    done
  fi
  if [ -n "$RPCBIND_PID" ] && alive "$RPCBIND_PID"; then
    kill -TERM "$RPCBIND_PID" 2>/dev/null
    wait_gone "$RPCBIND_PID" || { kill -KILL "$RPCBIND_PID" 2>/dev/null; wait_gone "$RPCBIND_PID"; }
  fi
  RPCBIND_PID=
  flock -u 9 2>/dev/null
  exec 9>&-
}

print_urls() {
  cat "$1/urls"
}

cmd_start() {
  [ $# -eq 3 ] || die "usage: ganesha.sh start DIR EXPORT_PATH PORT"
  local dir=$1 export_path=$2 port=$3
  command -v "$GANESHA_BIN" >/dev/null || die "$GANESHA_BIN not found (apt-get install nfs-ganesha nfs-ganesha-vfs)"
  command -v nfs-ls >/dev/null || die "nfs-ls not found (apt-get install libnfs-utils)"
  if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -le 0 ] || [ "$port" -ge 65535 ]; then
    die "bad port '$port'"
  fi
  [ -d "$export_path" ] || die "export path '$export_path' is not a directory"
  mkdir -p "$dir/recovery" || die "cannot create $dir"
  dir=$(cd "$dir" && pwd)
  export_path=$(cd "$export_path" && pwd)

  if [ -f "$dir/ganesha.pid" ] && alive "$(cat "$dir/ganesha.pid")"; then
    die "an instance is already running for $dir (pid $(cat "$dir/ganesha.pid"))"
  fi

  local protocols=${GANESHA_PROTOCOLS:-3,4}
  local access=${GANESHA_ACCESS:-RO}
  local mnt_port=${GANESHA_MNT_PORT:-$((port + 1))}
  local pseudo=${GANESHA_PSEUDO:-/export}
  local wait_s=${GANESHA_WAIT_S:-10}
  local attr_exp=${GANESHA_ATTR_EXPIRATION:-0} attr_line
  if [ "$attr_exp" = default ]; then
    attr_line="# Attr_Expiration_Time: ganesha's default"
  elif [[ "$attr_exp" =~ ^[0-9]+$ ]]; then
    attr_line="Attr_Expiration_Time = $attr_exp;"
  else
    die "bad GANESHA_ATTR_EXPIRATION '$attr_exp' (seconds or \"default\")"
  fi
  local v3=0
  case ",$protocols," in *,3,*) v3=1 ;; esac

  if command -v ss >/dev/null && ss -Hltn "sport = :$port" 2>/dev/null | grep -q .; then
    echo "ganesha.sh: port $port is already in use" >&2
    exit 3
  fi
  if [ $v3 = 1 ] && command -v ss >/dev/null && ss -Hltn "sport = :$mnt_port" 2>/dev/null | grep -q .; then
    echo "ganesha.sh: mount port $mnt_port is already in use" >&2
    exit 3
  fi

  cat >"$dir/ganesha.conf" <<EOF
# generated by ganesha.sh
NFS_CORE_PARAM {
  Protocols = $protocols;
  Bind_addr = 127.0.0.1;
  NFS_Port = $port;
  MNT_Port = $mnt_port;
  Enable_NLM = false;
  Enable_RQUOTA = false;
  Enable_UDP = false;
  Mount_Path_Pseudo = true;
  Plugins_Dir = "$PLUGINS_DIR";
}
NFSv4 {
  Graceless = true;
  RecoveryRoot = "$dir/recovery";
  Only_Numeric_Owners = true;
}
EXPORT_DEFAULTS {
  SecType = sys;
}
EXPORT {
  Export_Id = 1;
  Path = "$export_path";
  Pseudo = "$pseudo";
  Access_Type = $access;
  Squash = No_Root_Squash;
  Protocols = $protocols;
  Transports = TCP;
  $attr_line
  FSAL { Name = VFS; }
}
LOG {
  Default_Log_Level = EVENT;
}
EOF

  if [ $v3 = 1 ]; then
    lock_rpcbind
    start_rpcbind "$dir"
  fi

  : >"$dir/ganesha.log"
  rm -f "$dir/ganesha.pid"
  # -F foreground (we background it ourselves and keep the pid), -p pid file, -L log file.
  setsid "$GANESHA_BIN" -F -f "$dir/ganesha.conf" -L "$dir/ganesha.log" -p "$dir/ganesha.pid" \
    >>"$dir/ganesha.log" 2>&1 </dev/null 9>&- &
  local pid=$!
  echo "$pid" >"$dir/ganesha.pid"
  echo "$pid" >"$dir/ganesha.bgpid"

  local url4="nfs://127.0.0.1:$port$pseudo"
  local url3="nfs://127.0.0.1$pseudo?version=3&nfsport=$port&mountport=$mnt_port"
  local probe="nfs://127.0.0.1$pseudo/?version=4&nfsport=$port"
  case ",$protocols," in *,4,*) ;; *) probe="nfs://127.0.0.1$pseudo/?version=3&nfsport=$port&mountport=$mnt_port" ;; esac

  local deadline=$(( $(date +%s%N) / 1000000 + wait_s * 1000 )) ok=0
  while [ $(( $(date +%s%N) / 1000000 )) -lt $deadline ]; do
    if ! alive "$pid"; then
      break
    fi
    if timeout 3 nfs-ls "$probe" >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.05
  done
  # Registration is done once the server answers (ganesha registers before it serves).
  [ $v3 = 1 ] && end_rpcbind_window
  if [ $ok != 1 ] && grep -q 'Error binding' "$dir/ganesha.log"; then
    # Taken between the check above and ganesha's bind (another test's server, or a client's
    # ephemeral port: the random ports lie in that range). The same exit as the check: try another.
    cmd_stop "$dir" >/dev/null 2>&1
    echo "ganesha.sh: port $port or $mnt_port was taken while nfs-ganesha started ($(grep -m1 'Error binding' "$dir/ganesha.log" | sed 's/.*:FATAL ://'))" >&2
    exit 3
  fi
  if [ $ok != 1 ]; then
    echo "ganesha.sh: nfs-ganesha did not answer on 127.0.0.1:$port within ${wait_s}s; log tail:" >&2
    tail -20 "$dir/ganesha.log" >&2
    cmd_stop "$dir" >/dev/null 2>&1
    exit 1
  fi

  {
    echo "NFS4_URL=$url4"
    [ $v3 = 1 ] && echo "NFS3_URL=$url3"
    echo "PID=$pid"
  } >"$dir/urls"
  print_urls "$dir"
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: ganesha.sh stop DIR"
  local dir=$1 pid rc=0
  for f in ganesha.bgpid ganesha.pid; do
    [ -f "$dir/$f" ] || continue
    pid=$(cat "$dir/$f")
    [ -n "$pid" ] || continue
    if alive "$pid"; then
      # A SIGSTOPped server (tests of a hung server) must be continued to see the SIGTERM.
      kill -CONT "$pid" 2>/dev/null
      kill -TERM "$pid" 2>/dev/null
      if ! wait_gone "$pid"; then
        kill -KILL "$pid" 2>/dev/null
        wait_gone "$pid" || rc=1
      fi
    fi
  done
  rm -f "$dir/ganesha.pid" "$dir/ganesha.bgpid"
  return $rc
}

cmd_status() {
  [ $# -eq 1 ] || die "usage: ganesha.sh status DIR"
  [ -f "$1/ganesha.pid" ] && alive "$(cat "$1/ganesha.pid")"
}

# Signals the instance: kill = SIGKILL and wait (a crash; fast, unlike stop which takes ~3.5 s
# because ganesha shuts down its threads one by one), pause = SIGSTOP (a hung server: TCP stays
# up, nothing answers), resume = SIGCONT.
cmd_signal() {
  local what=$1 dir=${2:-} pid
  [ -n "$dir" ] || die "usage: ganesha.sh $what DIR"
  [ -f "$dir/ganesha.pid" ] || die "no instance in $dir"
  pid=$(cat "$dir/ganesha.pid")
  alive "$pid" || die "instance in $dir (pid $pid) is not running"
  case $what in
    kill) kill -KILL "$pid"; wait_gone "$pid" || die "pid $pid did not die"; rm -f "$dir/ganesha.pid" "$dir/ganesha.bgpid" ;;
    pause)
      # SIGSTOP is asynchronous: a running worker thread may still answer a request or two after
      # kill returns. Wait (bounded) until every thread is stopped.
      kill -STOP "$pid"
      local t st all
      for _ in $(seq 1 100); do
        all=1
        for t in /proc/"$pid"/task/*/stat; do
          st=$(sed 's/.*) //' "$t" 2>/dev/null | cut -c1)
          [ -z "$st" ] || [ "$st" = T ] || [ "$st" = t ] || { all=0; break; }
        done
        [ $all = 1 ] && break
        sleep 0.02
      done
      [ $all = 1 ] || die "pid $pid did not stop" ;;
    resume) kill -CONT "$pid" ;;
  esac
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  urls) shift; print_urls "$@" ;;
  status) shift; cmd_status "$@" ;;
  kill|pause|resume) cmd_signal "$@" ;;
  *) die "usage: ganesha.sh start DIR EXPORT_PATH PORT | stop|kill|pause|resume|urls|status DIR" ;;
esac
