#!/bin/bash
# tests/bench/run.sh BUILD_DIR [--quick] [--only CASE[,CASE...]] [--reps N] [--big-mib N] [--append]
#
# The benchmark suite of issue 9. Every case runs its reference and extrafs in the same invocation
# (the machines are shared and noisy; only ratios made back to back mean something), takes the
# median of --reps runs (default 3; --quick: 1 run and a 64 MiB unread file), and drops the page
# cache (`sync; echo 3 > /proc/sys/vm/drop_caches`) before every cold run. Prints one Markdown
# table: case | reference | extrafs | ratio | target | met?  With --append the table, the command
# and the commit are appended to docs/benchmarks-log.md (BENCHMARKS.md keeps the current results,
# replaced by hand with the run that stands).
#
# Cases (--only takes their names):
#   start   docker run --rm --network none bench-py:1 python3 -c 'print(6*7)': extrafs with an
#           empty cache (NFSv4), against `docker load` + run and against the image fully local
#           (page cache dropped, and warm); also the store published with --order from a trace
#           recorded by a first run (attach starts the prefix; and with the mount restarted after
#           attach, so that the container's overlayfs starts it), and `extrafs prefetch --trace`
#           started at attach time.
#           Bytes fetched from the store against bytes served to readers.
#   read    512 MiB file: block-cache read (fresh mount, page cache dropped) and page-cache read,
#           against ext4 (docker's own overlay2 copy of the layer) the same way; also the block
#           cache's own chunk files read with O_DIRECT by direct_read.py, no daemon (the disk's floor)
#   nfs     cold NFS read of that file against nfs-cat of its blob; metadata walk
#           (find -printf '%s %m %u') of the Debian rootfs layer against ext4, warm and cold
#   small   2,000 files of 1-16 KiB read in directory order, cold, against ext4
#   fleet   8 mounts with their own caches start python at the same moment against one ganesha
#           (emulated without dockerd: overlayfs of the mount's layers + chroot, see BENCHMARKS.md, "The suite"):
#           bytes ganesha wrote to its sockets against 8 x what it wrote one host alone, and
#           against the hosts' chunk and metadata (catalog, indexes: meta_bytes_fetched) bytes;
#           p50/p99 start time against a single host, uncapped and with every host (its daemon
#           and its start) in a cpu cgroup of EXTRAFS_BENCH_HOST_CPU cores (default 0.2), the
#           single host capped the same
#   memory  peak RSS (VmHWM) of the daemon with 10 small images attached and started
#   https   (issue 17, tests/bench/http_bench.py) the docker-less python start from an https store
#           (nginx, TLS) vs the same from NFS, empty cache; cold read of the unread file over https
#           vs curl of its blob from the same nginx; each also with the store published
#           --chunk-objects (co/), against the blob store, over NFS and https
#   proxy   (http_bench.py) FLEET_N hosts behind one squid (memory cache, range_offset_limit and
#           collapsed_forwarding at their defaults): bytes and requests the origin answered vs one
#           host alone, p99 start vs one host (every host in its cpu cgroup, as in the capped fleet
#           runs), blob and chunk-object stores, and the latter with collapsed_forwarding on;
#           catalog probes reaching the origin from FLEET_N idle hosts with refresh=60, per 60 s
#
# The image: a Debian bookworm rootfs with python3 (debootstrap --variant=minbase
# --include=python3 from the apt mirror configured on this host, kept as a tarball in
# /var/cache/extrafs-bench, override with EXTRAFS_BENCH_CACHE), imported into a private dockerd
# (A), plus a layer holding a random file nothing reads. Published with `extrafs publish`, served
# by a private nfs-ganesha (NFSv4, 127.0.0.1, port 20490 and up), mounted and attached into the
# data-roots of further private dockerds. Everything lives under one temporary directory and is
# stopped and removed on exit. Needs root, /dev/fuse, overlayfs, docker.io, nfs-ganesha,
# libnfs-utils, debootstrap (scripts/setup installs them).
set -uo pipefail

usage() { echo "usage: $0 BUILD_DIR [--quick] [--only CASE[,CASE...]] [--reps N] [--big-mib N] [--append]" >&2; exit 2; }
[ $# -ge 1 ] || usage
CMDLINE="tests/bench/run.sh $*"
BUILD=$(realpath "$1") || usage
shift
QUICK=0 ONLY=start,read,nfs,small,fleet,memory,https,proxy REPS= BIG_MIB= APPEND=0
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --only) ONLY=${2:?}; shift ;;
    --reps) REPS=${2:?}; shift ;;
    --big-mib) BIG_MIB=${2:?}; shift ;;
    --append) APPEND=1 ;;
    *) usage ;;
  esac
  shift
done
if [ $QUICK = 1 ]; then REPS=${REPS:-1} BIG_MIB=${BIG_MIB:-64}; else REPS=${REPS:-3} BIG_MIB=${BIG_MIB:-512}; fi
for c in ${ONLY//,/ }; do
  case $c in start|read|nfs|small|fleet|memory|https|proxy) ;; *) echo "run.sh: unknown case '$c'" >&2; usage ;; esac
done
want() { [[ ,$ONLY, == *,$1,* ]]; }

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
EXTRAFS=$BUILD/tools/extrafs
GANESHA=$HERE/../nfs/ganesha.sh
DOCKERD=$HERE/../docker/dockerd.sh
FLEET_PY=$HERE/fleet.py
HTTP_BENCH_PY=$HERE/http_bench.py
DIRECT_READ_PY=$HERE/direct_read.py
CACHE_DIR=${EXTRAFS_BENCH_CACHE:-/var/cache/extrafs-bench}
ROOTFS_TAR=$CACHE_DIR/bookworm-python3.tar
FLEET_N=${EXTRAFS_BENCH_FLEET:-8}
# CPU each emulated host gets in the capped fleet runs, in cores (see case_fleet)
HOST_CPU=${EXTRAFS_BENCH_HOST_CPU:-0.2}
NMEM=10

[ "$(id -u)" = 0 ] || { echo "run.sh: needs root" >&2; exit 1; }
[ -x "$EXTRAFS" ] || { echo "run.sh: $EXTRAFS not found (ninja -C $BUILD tools/extrafs)" >&2; exit 1; }
for p in /usr/sbin/dockerd /usr/bin/docker ganesha.nfsd nfs-ls nfs-cat python3 chroot; do
  command -v "$p" >/dev/null || { echo "run.sh: $p not installed (scripts/setup)" >&2; exit 1; }
done

T=$(mktemp -d /tmp/xfb.XXXXXX)   # short: dockerd's containerd socket path must fit in 108 bytes
LOG=$T/log
MOUNTS=()    # extrafs and overlay mounts, unmounted last-first
DOCKERDS=()  # dockerd state dirs
CGROUPS=()   # cpu cgroups made for the capped fleet runs, removed last
GSTATE=
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

cleanup() {
  local rc=$? i m
  set +e
  for m in "${DOCKERDS[@]}"; do timeout 90 "$DOCKERD" stop "$m" >/dev/null 2>&1; done
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${MOUNTS[$i]}
    mountpoint -q "$m" && { timeout 30 umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; }
  done
  [ -n "$GSTATE" ] && timeout 60 "$GANESHA" stop "$GSTATE" >/dev/null 2>&1
  for m in "${CGROUPS[@]}"; do  # a daemon may still be exiting after its unmount
    for _ in $(seq 1 100); do [ -s "$m/cgroup.procs" ] || break; sleep 0.1; done
    rmdir "$m" 2>/dev/null
  done
  if [ -n "${KEEP:-}" ]; then log "kept $T"; else rm -rf "$T"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# helpers
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
secs() { python3 -c "import sys; print('%.4f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
sample() { echo "$2" >>"$T/res/$1"; }       # sample KEY VALUE
median() {
  [ -s "$T/res/$1" ] || { echo nan; return; }
  python3 -c "import statistics,sys; print('%.4f' % statistics.median(float(l) for l in open(sys.argv[1])))" "$T/res/$1"
}
pctl() {  # pctl KEY P: P-th percentile (nearest rank) of the samples
  python3 -c "
import math, sys
v = sorted(float(l) for l in open(sys.argv[1]))
print('%.4f' % v[max(0, math.ceil(float(sys.argv[2]) / 100 * len(v)) - 1)])" "$T/res/$1" "$2"
}
ROWS=$T/rows
# row CASE REFERENCE_TEXT EXTRAFS_TEXT RATIO TARGET_OP TARGET [RATIO_TEXT]
#   RATIO is a number compared with TARGET by TARGET_OP (<= or >=); "-" for no target.
row() {
  local c=$1 ref=$2 x=$3 r=$4 op=$5 tgt=$6 rt=${7:-} met=-
  if [ "$op" != - ] && [ "$r" != nan ]; then
    met=$(python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[3]); print('yes' if (a<=b if sys.argv[2]=='<=' else a>=b) else '**no**')" "$r" "$op" "$tgt")
  fi
  [ -n "$rt" ] || rt=$r
  local tt=-
  [ "$op" != - ] && tt="$op $tgt"
  printf '| %s | %s | %s | %s | %s | %s |\n' "$c" "$ref" "$x" "$rt" "$tt" "$met" >>"$ROWS"
}
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print('nan' if b==0 or a!=a or b!=b else '%.2f' % (a/b))" "$1" "$2"; }
mib() { python3 -c "import sys; print('%.1f MiB' % (float(sys.argv[1]) / 1048576))" "$1"; }
stat_json() { timeout 30 "$EXTRAFS" stats "$1" --json; }
stat_field() { stat_json "$1" | python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])"; }
# stat_opt MNT FIELD: the field, or nothing if the daemon does not report it (an older build).
stat_opt() { stat_json "$1" | python3 -c "import json,sys; v = json.load(sys.stdin).get('$2'); print('' if v is None else v)"; }

# Extrafs mounts: xmount NAME SUBDIR [EXTRA_OPTS] mounts $URL/SUBDIR on $T/m/NAME, cache $T/c/NAME.
xmount() {
  local name=$1 sub=$2 extra=${3:-} mnt=$T/m/$1
  mkdir -p "$mnt" "$T/c/$name"
  timeout 60 "$EXTRAFS" mount "$URL/$sub" "$mnt" \
    -o "cache=$T/c/$name,cache_size=8G,log_level=warn${extra:+,$extra}" 2>"$T/mount.err" ||
    die "extrafs mount $URL/$sub $mnt: $(head -c 300 "$T/mount.err")"
  MOUNTS+=("$mnt")
}
xunmount() {
  local mnt=$T/m/$1 pid
  mountpoint -q "$mnt" || return 0
  pid=$(daemon_pid "$mnt") || pid=
  timeout 60 "$EXTRAFS" unmount "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || umount -l "$mnt"
  for _ in $(seq 1 100); do mountpoint -q "$mnt" || break; sleep 0.1; done
  # The daemon holds its cache's lock until it exits, a moment after the unmount: a mount on the
  # same cache right away would find it in use.
  if [ -n "$pid" ]; then for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done; fi
}
# xremount NAME SUBDIR cold|warm [EXTRA_OPTS]: cold also empties the block cache
xremount() {
  xunmount "$1"
  [ "$3" = cold ] && rm -rf "$T/c/$1"
  xmount "$1" "$2" "${4:-}"
}
daemon_pid() {  # daemon_pid MNT: the extrafs process serving MNT
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == "$EXTRAFS"* ]] || continue
    tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$1" && { echo "${p#/proc/}"; return 0; }
  done
  return 1
}

# cg_make NAME: makes a cpu cgroup whose processes together get at most HOST_CPU cores (cgroup v1's
# cpu controller or cgroup v2's, whichever this host has) and sets CGP to its cgroup.procs file;
# fails if this host has neither.
cg_make() {
  local d period=10000 quota  # a short period: a start of ~50 ms CPU is not quantised into 100 ms steps
  CGP=
  quota=$(python3 -c "import sys; print(int(float(sys.argv[1]) * $period))" "$HOST_CPU") || return 1
  if [ -w /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    d=/sys/fs/cgroup/cpu/xfbench-$$-$1
    mkdir -p "$d" && CGROUPS+=("$d") && echo "$period" >"$d/cpu.cfs_period_us" && echo "$quota" >"$d/cpu.cfs_quota_us" || return 1
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    echo +cpu >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    d=/sys/fs/cgroup/xfbench-$$-$1
    mkdir -p "$d" && CGROUPS+=("$d") && echo "$quota $period" >"$d/cpu.max" || return 1
  else
    return 1
  fi
  CGP=$d/cgroup.procs
}

# dockerds: dstart NAME ROOT, dstop NAME, D NAME ARGS... (the CLI against it)
dstart() {
  local st=$T/d/$1 out
  [[ " ${DOCKERDS[*]} " == *" $st "* ]] || DOCKERDS+=("$st")
  out=$(timeout 90 "$DOCKERD" start "$st" "$2" 2>&1) || die "dockerd $1 did not start: $out"
}
dstop() { timeout 90 "$DOCKERD" stop "$T/d/$1" >/dev/null 2>&1 || log "dockerd $1 did not stop cleanly"; }
D() { local n=$1; shift; timeout 600 "$DOCKERD" docker "$T/d/$n" "$@"; }
PYCMD=(python3 -c 'print(6*7)')
# timed_run NAME IMAGE: prints the wall time of docker run on dockerd NAME; dies unless it prints 42
timed_run() {
  local t0 t1 out
  t0=$EPOCHREALTIME
  out=$(D "$1" run --rm --network none "$2" "${PYCMD[@]}" 2>&1)
  t1=$EPOCHREALTIME
  [ "$out" = 42 ] || die "docker run $2 on $1 printed: $(head -c 300 <<<"$out")"
  secs "$t0" "$t1"
}
# Bytes ganesha has sent on the TCP connections open now on its port (tcp_info bytes_sent, from
# ss). /proc/PID/io of ganesha.nfsd is no use: it replies with sendmsg, which wchar does not count.
# Sampled before the mounts go away: their connections are made at mount time, so this is all
# the server sent them, the catalog and indexes included.
server_sent() {
  ss -Htin state established "( sport = :$PORT )" | grep -o 'bytes_sent:[0-9]*' | cut -d: -f2 | awk '{s += $1} END {print s + 0}'
}

mkdir -p "$T/res" "$T/d" "$T/m" "$T/c"
: >"$ROWS"
# The commit of the tree the build was configured from (not of the directory this script runs
# from: a build of another worktree is measured with this script as often as not).
BUILD_SRC=$(sed -n 's/.*"source": *"\([^"]*\)".*/\1/p' "$BUILD/meson-info/meson-info.json" 2>/dev/null | head -n1)
[ -n "$BUILD_SRC" ] || BUILD_SRC=$REPO
COMMIT=$(git -C "$BUILD_SRC" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$BUILD_SRC" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+dirty" || true)
log "extrafs bench: $CMDLINE (commit $COMMIT$DIRTY), temp dir $T, reps $REPS, unread file $BIG_MIB MiB"

# ---------------------------------------------------------------------------------------------
# The rootfs tarball (cached between runs)
if [ ! -s "$ROOTFS_TAR" ]; then
  command -v debootstrap >/dev/null || die "debootstrap not installed (scripts/setup installs it)"
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list |
    grep -o 'https\?://[^ ]*debian/\?$' | grep -v security | head -1)
  mirror=${mirror:-http://deb.debian.org/debian}
  log "debootstrap bookworm (minbase + python3) from $mirror into $ROOTFS_TAR (once)"
  mkdir -p "$CACHE_DIR"
  rm -rf "$CACHE_DIR/rootfs.tmp"
  timeout 1200 debootstrap --variant=minbase --include=python3 bookworm "$CACHE_DIR/rootfs.tmp" "$mirror" \
    >"$CACHE_DIR/debootstrap.log" 2>&1 || die "debootstrap failed: $(tail -3 "$CACHE_DIR/debootstrap.log")"
  rm -rf "$CACHE_DIR"/rootfs.tmp/var/cache/apt/archives/*.deb "$CACHE_DIR"/rootfs.tmp/var/lib/apt/lists/*
  tar --numeric-owner --xattrs -C "$CACHE_DIR/rootfs.tmp" -cf "$ROOTFS_TAR.tmp" . || die "tar of the rootfs failed"
  mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
  rm -rf "$CACHE_DIR/rootfs.tmp"
fi

# ---------------------------------------------------------------------------------------------
# Dockerd A: the images, built locally. bench-base:1 (the rootfs), bench-py:1 (+ the unread
# file), bench-small:1 (2,000 small files), bench-m1..10:1 (base + one small layer each).
log "building the images in dockerd A"
RA=$T/ra
dstart a "$RA"
D a import - bench-base:1 <"$ROOTFS_TAR" >/dev/null || die "docker import failed"
export DOCKER_BUILDKIT=0
mkdir -p "$T/ctx/py"
head -c $((BIG_MIB << 20)) /dev/urandom >"$T/ctx/py/big.bin"
printf 'FROM bench-base:1\nCOPY big.bin /opt/unread/big.bin\n' >"$T/ctx/py/Dockerfile"
D a build -q -t bench-py:1 "$T/ctx/py" >/dev/null 2>"$T/build.err" || die "docker build bench-py:1: $(tail -3 "$T/build.err")"
rm -f "$T/ctx/py/big.bin"
IMAGES=(bench-py:1)
if want small; then
  python3 "$HERE/small_tree.py" "$T/ctx/small/small"
  printf 'FROM scratch\nCOPY small /small\n' >"$T/ctx/small/Dockerfile"
  D a build -q -t bench-small:1 "$T/ctx/small" >/dev/null 2>"$T/build.err" || die "docker build bench-small:1: $(tail -3 "$T/build.err")"
  IMAGES+=(bench-small:1)
fi
if want memory; then
  for i in $(seq 1 $NMEM); do
    mkdir -p "$T/ctx/m$i"
    head -c $((64 << 10)) /dev/urandom >"$T/ctx/m$i/data.bin"
    printf 'FROM bench-base:1\nCOPY data.bin /opt/m%s/data.bin\n' "$i" >"$T/ctx/m$i/Dockerfile"
    D a build -q -t "bench-m$i:1" "$T/ctx/m$i" >/dev/null 2>"$T/build.err" || die "docker build bench-m$i:1: $(tail -3 "$T/build.err")"
    IMAGES+=("bench-m$i:1")
  done
fi
upper() { D a image inspect -f '{{.GraphDriver.Data.UpperDir}}' "$1"; }
PY_DIFF=$(upper bench-py:1) BASE_DIFF=$(upper bench-base:1)
PY_CID=$(basename "$(dirname "$PY_DIFF")") BASE_CID=$(basename "$(dirname "$BASE_DIFF")")
[ -f "$PY_DIFF/opt/unread/big.bin" ] || die "bench-py:1's top layer has no /opt/unread/big.bin"
if want small; then SMALL_DIFF=$(upper bench-small:1); SMALL_CID=$(basename "$(dirname "$SMALL_DIFF")"); fi
IMAGE_BYTES=$(D a image inspect -f '{{.Size}}' bench-py:1)
log "bench-py:1 is $(mib "$IMAGE_BYTES") (base layer $BASE_CID, top $PY_CID)"

# The store, published from A's data-root (so the cache-ids are A's), served by ganesha.
STORES=$T/stores
mkdir -p "$STORES/plain" "$STORES/ordered"
log "extrafs publish ${IMAGES[*]}"
t0=$EPOCHREALTIME
timeout 1200 "$EXTRAFS" publish --data-root "$RA" "${IMAGES[@]}" --to "$STORES/plain" >"$T/publish.out" 2>&1 ||
  die "publish failed: $(tail -3 "$T/publish.out")"
log "published in $(secs "$t0" "$EPOCHREALTIME") s: $(tail -1 "$T/publish.out")"
if want https || want proxy; then
  # The same image with every chunk its own object (publish --chunk-objects), for the http cases.
  timeout 1200 "$EXTRAFS" publish --data-root "$RA" bench-py:1 --to "$STORES/co" --chunk-objects >"$T/publish.out" 2>&1 ||
    die "publish --chunk-objects failed: $(tail -3 "$T/publish.out")"
  log "published with --chunk-objects: $(tail -1 "$T/publish.out")"
fi
GSTATE=$T/ganesha
mkdir -p "$GSTATE"
URL=
for port in $(seq 20490 2 20530); do
  rc=0
  GANESHA_PROTOCOLS=4 timeout 60 "$GANESHA" start "$GSTATE" "$STORES" "$port" >"$T/urls" 2>"$T/ganesha.err" || rc=$?
  [ $rc = 0 ] && { URL=$(sed -n 's/^NFS4_URL=//p' "$T/urls"); PORT=$port; break; }
  [ $rc = 3 ] || die "ganesha.sh start failed: $(tail -3 "$T/ganesha.err")"
done
[ -n "$URL" ] || die "no free port for nfs-ganesha in 20490-20530"
GPID=$(sed -n 's/^PID=//p' "$T/urls")
log "nfs-ganesha (pid $GPID) serves $STORES at $URL"
# The stores are not changed while mounted; let ganesha cache attributes as a production one would.

# ---------------------------------------------------------------------------------------------
# 1. Container start
case_start() {
  log "case start: record a trace (a first run on the plain store)"
  local RB=$T/rb RL=$T/rl TRACE_DIR=$T/trace i t
  mkdir -p "$TRACE_DIR"
  xremount b plain cold "record=$TRACE_DIR"
  rm -rf "$RB"
  timeout 120 "$EXTRAFS" docker attach bench-py:1 --mount "$T/m/b" --data-root "$RB" >/dev/null 2>"$T/attach.err" ||
    die "attach: $(cat "$T/attach.err")"
  dstart b "$RB"
  timed_run b bench-py:1 >/dev/null
  dstop b
  xunmount b
  TRACE=$(ls "$TRACE_DIR"/trace-*.txt 2>/dev/null | head -1)
  [ -s "$TRACE" ] || die "the recording mount wrote no trace in $TRACE_DIR"
  log "trace: $(wc -l <"$TRACE") files first opened; publishing --order into the ordered store"
  timeout 1200 "$EXTRAFS" publish --data-root "$RA" bench-py:1 --to "$STORES/ordered" --order "$TRACE" >"$T/publish2.out" 2>&1 ||
    die "publish --order failed: $(tail -3 "$T/publish2.out")"

  # lazy VARIANT: plain | ordered | ordered_remounted | prefetch | blockcache (the last: block
  # cache kept, page cache dropped)
  lazy() {
    local v=$1 sub=plain pf= t
    [[ $v == ordered* ]] && sub=ordered
    dstop b
    if [ "$v" = blockcache ]; then
      xunmount b; xmount b plain
    else
      xremount b "$sub" cold
    fi
    rm -rf "$RB"
    timeout 120 "$EXTRAFS" docker attach bench-py:1 --mount "$T/m/b" --data-root "$RB" >/dev/null 2>"$T/attach.err" ||
      die "attach: $(cat "$T/attach.err")"
    # A host whose daemon restarted since attach (a reboot): nothing has looked at the layers.
    [ "$v" = ordered_remounted ] && xremount b ordered cold
    drop
    if [ "$v" = prefetch ]; then
      timeout 600 "$EXTRAFS" prefetch "$T/m/b" bench-py:1 --trace "$TRACE" >"$T/prefetch.out" 2>&1 &
      pf=$!
    fi
    dstart b "$RB"
    t=$(timed_run b bench-py:1)
    sample "start_$v" "$t"
    local j
    j=$(stat_json "$T/m/b")
    sample "fetched_$v" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_fetched"])' <<<"$j")"
    sample "served_$v" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_served"])' <<<"$j")"
    if [ -n "$pf" ]; then wait "$pf" || log "prefetch failed: $(tail -2 "$T/prefetch.out")"; fi
    log "  extrafs $v: $t s, fetched $(mib "$(tail -1 "$T/res/fetched_$v")"), served $(mib "$(tail -1 "$T/res/served_$v")")"
  }
  local_run() {  # the image fully local in A: cold (dockerd restarted after the drop) and warm
    dstop a
    drop
    dstart a "$RA"
    t=$(timed_run a bench-py:1); sample start_local_cold "$t"
    t=$(timed_run a bench-py:1); sample start_local_warm "$t"
    log "  local: cold $(tail -1 "$T/res/start_local_cold") s, warm $t s"
  }
  load_run() {  # docker load of `docker save` output into an empty data-root, then run
    dstop l
    rm -rf "$RL"
    drop
    dstart l "$RL"
    local t0 t1
    t0=$EPOCHREALTIME
    D l load -q -i "$T/py.tar" >/dev/null || die "docker load failed"
    t1=$(timed_run l bench-py:1)
    t=$(secs "$t0" "$EPOCHREALTIME")
    sample start_load "$t"
    log "  docker load + run: $t s (run $t1 s)"
  }
  log "case start: docker save bench-py:1 (the pull reference)"
  D a save -o "$T/py.tar" bench-py:1 || die "docker save failed"
  for i in $(seq 1 "$REPS"); do
    log "case start: repetition $i/$REPS"
    lazy plain
    lazy blockcache
    lazy ordered
    lazy ordered_remounted
    lazy prefetch
    local_run
    load_run
  done
  dstop b; dstop l; xunmount b
  rm -f "$T/py.tar"

  local lc pl
  lc=$(median start_local_cold); pl=$(median start_plain)
  row "start: extrafs empty cache vs docker load + run" "$(median start_load) s" "$pl s" \
    "$(ratio "$(median start_load)" "$pl")" ">=" 8 "$(ratio "$(median start_load)" "$pl")x faster"
  row "start: extrafs empty cache vs fully local, cold" "$lc s" "$pl s" "$(ratio "$pl" "$lc")" "<=" 1.2
  row "start: extrafs --order store, empty cache vs local cold" "$lc s" "$(median start_ordered) s" \
    "$(ratio "$(median start_ordered)" "$lc")" "<=" 1.1
  row "start: extrafs --order store, mount restarted after attach, vs local cold" "$lc s" \
    "$(median start_ordered_remounted) s" "$(ratio "$(median start_ordered_remounted)" "$lc")" - -
  row "start: extrafs + prefetch --trace at attach vs local cold" "$lc s" "$(median start_prefetch) s" \
    "$(ratio "$(median start_prefetch)" "$lc")" "<=" 1.1
  row "start: extrafs block cache warm, page cache dropped vs local cold" "$lc s" "$(median start_blockcache) s" \
    "$(ratio "$(median start_blockcache)" "$lc")" - -
  row "start: fully local, warm vs cold (for scale)" "$lc s" "$(median start_local_warm) s" \
    "$(ratio "$(median start_local_warm)" "$lc")" - -
  local f s
  f=$(median fetched_plain); s=$(median served_plain)
  row "start: bytes fetched vs bytes served to readers (empty cache)" "$(mib "$s") served" "$(mib "$f") fetched" \
    "$(ratio "$f" "$s")" "<=" 1.25
  f=$(median fetched_ordered); s=$(median served_ordered)
  row "start: bytes fetched vs served, --order store" "$(mib "$s") served" "$(mib "$f") fetched" "$(ratio "$f" "$s")" - -
  row "start: image size vs bytes fetched (for scale)" "$(mib "$IMAGE_BYTES") image" "$(mib "$(median fetched_plain)") fetched" \
    "$(ratio "$(median fetched_plain)" "$IMAGE_BYTES")" - -
}

# ---------------------------------------------------------------------------------------------
# 2./3. Reads and metadata. The ext4 reference is docker's own copy of the layer in A's data-root.
BIG_X() { echo "$T/m/r/overlay2/$PY_CID/diff/opt/unread/big.bin"; }
case_read_nfs() {
  local i t0 t BIGN=$PY_DIFF/opt/unread/big.bin BIGX BIGB filled=0
  BIGX=$(BIG_X)
  # The block-cache read has a mount of its own (b), so that the cold cases' fresh caches (on r)
  # leave its cache warm from one repetition to the next, as a host's stays.
  BIGB=$T/m/b/overlay2/$PY_CID/diff/opt/unread/big.bin
  local blob_url="nfs://127.0.0.1/export/plain/extrafs/layers/$PY_CID.blob?version=4&nfsport=$PORT"
  local nb
  nb=$(timeout 120 nfs-cat "$blob_url" 2>/dev/null | wc -c)
  [ "$nb" -ge $((BIG_MIB << 20)) ] || die "nfs-cat $blob_url reads $nb bytes, not the whole layer"
  timed() { local t0=$EPOCHREALTIME; "$@" >/dev/null || die "failed: $*"; secs "$t0" "$EPOCHREALTIME"; }
  walk() { find "$1" -printf '%s %m %u\n'; }
  readall() { find "$1" -type f -print0 | xargs -0 -r cat; }
  for i in $(seq 1 "$REPS"); do
    log "case read/nfs: repetition $i/$REPS"
    if want nfs; then
      xremount r plain cold; drop
      sample nfs_cold "$(timed cat "$BIGX")"
      # Reading it whole started a whole-file copy and, 3 s after it, the copy's check (512 MiB
      # written, then read back): stop that work here, or it runs into the next measurements.
      xunmount r
      drop
      sample nfs_cat "$(timed nfs-cat "$blob_url")"
    fi
    if want read; then
      # Fill the block cache once (and let the background work it starts finish: the whole-file
      # copy, where the kernel agreed to passthrough, and its check a few seconds later), then
      # each time a fresh mount with the page cache dropped. A fresh mount hashes the copy again
      # before it hands it out, after the first open: read_block is that first open, served by
      # the daemon from the block cache; read_page comes after the check.
      if [ $filled = 0 ]; then
        xremount b plain cold; cat "$BIGB" >/dev/null; filled=1
        local w
        for w in $(seq 1 120); do
          [ "$(stat_opt "$T/m/b" passthrough)" = True ] || break
          [ "$(stat_opt "$T/m/b" whole_files_checked)" -ge 1 ] && break
          sleep 0.5
        done
      fi
      xremount b plain warm; drop
      local tb te w
      tb=$(timed cat "$BIGB")
      sample read_block "$tb"
      drop
      te=$(timed cat "$BIGN")
      sample read_ext4_cold "$te"
      # the floor: the same cache's chunk files (only this file's chunks: the cache was filled by
      # the one read above) read by a plain program with O_DIRECT, one at a time, no daemon
      drop
      local floor
      floor=$(python3 "$DIRECT_READ_PY" "$T/c/b/chunks") || die "direct_read.py $T/c/b/chunks failed"
      sample read_floor "${floor% *}"
      sample read_floor_bytes "${floor#* }"
      log "  block cache $tb s, ext4 cold $te s, chunk files O_DIRECT ${floor% *} s"
      # The page-cache read goes through the copy (where passthrough is on) once this mount
      # checked it.
      for w in $(seq 1 120); do
        [ "$(stat_opt "$T/m/b" passthrough)" = True ] || break
        [ "$(stat_opt "$T/m/b" whole_files_checked)" -ge 1 ] && break
        sleep 0.5
      done
      cat "$BIGB" >/dev/null; cat "$BIGN" >/dev/null
      local s0
      s0=$(stat_field "$T/m/b" bytes_served)
      sample read_page "$(timed cat "$BIGB")"
      sample read_page_served $(( $(stat_field "$T/m/b" bytes_served) - s0 ))
      sample read_ext4_hot "$(timed cat "$BIGN")"
    fi
    if want nfs; then
      xremount r plain warm; drop
      sample meta_cold "$(timed walk "$T/m/r/overlay2/$BASE_CID/diff")"
      sample meta_warm "$(timed walk "$T/m/r/overlay2/$BASE_CID/diff")"
      drop
      sample meta_ext4_cold "$(timed walk "$BASE_DIFF")"
      sample meta_ext4_warm "$(timed walk "$BASE_DIFF")"
    fi
    if want small; then
      xremount r plain cold; drop
      sample small_cold "$(timed readall "$T/m/r/overlay2/$SMALL_CID/diff/small")"
      xremount r plain warm; drop
      sample small_block "$(timed readall "$T/m/r/overlay2/$SMALL_CID/diff/small")"
      drop
      sample small_ext4_cold "$(timed readall "$SMALL_DIFF/small")"
    fi
  done
  xunmount r
  xunmount b
  rate() { python3 -c "import sys; print('%.0f MiB/s' % ($BIG_MIB / float(sys.argv[1])))" "$1"; }
  local a b
  if want read; then
    a=$(median read_block) b=$(median read_ext4_cold)
    row "read ${BIG_MIB} MiB: block cache, page cache dropped vs ext4 cold" "$b s ($(rate "$b"))" "$a s ($(rate "$a"))" "$(ratio "$a" "$b")" "<=" 1.25
    b=$(median read_floor)
    row "read ${BIG_MIB} MiB: block cache vs its chunk files ($(mib "$(median read_floor_bytes)")) read with O_DIRECT, no daemon" \
      "$b s ($(rate "$b"))" "$a s ($(rate "$a"))" "$(ratio "$a" "$b")" - -
    a=$(median read_page) b=$(median read_ext4_hot)
    row "read ${BIG_MIB} MiB: page cache vs ext4 page cache ($(mib "$(median read_page_served)") served by the daemon)" \
      "$b s ($(rate "$b"))" "$a s ($(rate "$a"))" "$(ratio "$a" "$b")" "<=" 1.1
  fi
  if want nfs; then
    a=$(median nfs_cold) b=$(median nfs_cat)
    row "read ${BIG_MIB} MiB: cold over NFSv4 vs nfs-cat of the blob" "$b s ($(rate "$b"))" "$a s ($(rate "$a"))" "$(ratio "$a" "$b")" - -
    local n
    n=$(find "$BASE_DIFF" | wc -l)
    a=$(median meta_warm) b=$(median meta_ext4_warm)
    row "metadata walk, $n entries (find -printf '%s %m %u'), warm" "$b s" "$a s" "$(ratio "$a" "$b")" "<=" 1.2
    a=$(median meta_cold) b=$(median meta_ext4_cold)
    row "metadata walk, $n entries, cold (fresh mount, page cache dropped)" "$b s" "$a s" "$(ratio "$a" "$b")" "<=" 2
  fi
  if want small; then
    a=$(median small_cold) b=$(median small_ext4_cold)
    row "2,000 files of 1-16 KiB in directory order: empty cache vs ext4 cold" "$b s" "$a s" "$(ratio "$a" "$b")" - -
    a=$(median small_block)
    row "2,000 small files: block cache, page cache dropped vs ext4 cold" "$b s" "$a s" "$(ratio "$a" "$b")" - -
  fi
}

# ---------------------------------------------------------------------------------------------
# 5. Fleet: FLEET_N mounts (own cache each), python started at one moment in each, through
# overlayfs (the image's two layers as lowers, read-only) and chroot: the same reads as the
# container's start, without 8 dockerds competing for 2 cores.
case_fleet() {
  local i r w1 k m
  fleet_prepare() {  # fleet_prepare N: N fresh mounts with empty caches and their overlays
    local k
    for k in $(seq 1 "$FLEET_N"); do
      mountpoint -q "$T/fr/$k" && umount "$T/fr/$k"
      xunmount "f$k"
    done
    for k in $(seq 1 "$1"); do
      xremount "f$k" plain cold
      mkdir -p "$T/fr/$k"
      mount -t overlay overlay -o "ro,lowerdir=$T/m/f$k/overlay2/$PY_CID/diff:$T/m/f$k/overlay2/$BASE_CID/diff" "$T/fr/$k" ||
        die "overlay mount of fleet member $k failed"
      MOUNTS+=("$T/fr/$k")
    done
  }
  # Capped runs: on this one machine the 8 "hosts" share 2 cores, so uncapped their starts measure
  # the cores. Real hosts each have their own: each emulated host k gets a cpu cgroup capped at
  # HOST_CPU cores (default 0.2: 8 take 1.6 cores, ganesha and the kernel keep the rest), its
  # daemon and its python start run in it, and the single host it is compared with is capped the
  # same. What is left between the two is what the shared server adds.
  local -a cgp=()
  local capped=1
  for k in $(seq 1 "$FLEET_N"); do
    if cg_make "host$k"; then cgp[$k]=$CGP; else capped=0; fi
  done
  [ $capped = 1 ] || log "case fleet: no cpu cgroup controller here: the capped runs are skipped"
  cap_daemons() {  # cap_daemons N: moves the daemons of fleet members 1..N into their cgroups
    local k pid
    for k in $(seq 1 "$1"); do
      pid=$(daemon_pid "$T/m/f$k") || die "no daemon for fleet member $k"
      echo "$pid" >"${cgp[$k]}" || die "cannot move daemon $pid into ${cgp[$k]}"
    done
  }
  for r in $(seq 1 "$REPS"); do
    log "case fleet: repetition $r/$REPS: one host"
    fleet_prepare 1
    sample fleet_single_mount "$(server_sent)"
    drop
    python3 "$FLEET_PY" "$T/fr/1" >"$T/fleet.out" || die "single start failed"
    w1=$(server_sent)
    sample fleet_single "$(cat "$T/fleet.out")"
    sample fleet_single_server "$w1"
    sample fleet_single_fetched "$(stat_field "$T/m/f1" bytes_fetched)"
    m=$(stat_opt "$T/m/f1" meta_bytes_fetched)
    [ -n "$m" ] && sample fleet_single_meta "$m"
    # The same start from the image's layers on ext4 (A's overlay2 copy), page cache dropped, and
    # from host 1's block cache (fresh mount, page cache dropped): python's own start without
    # dockerd's fixed costs, so the lazy fetch shows undiluted.
    mountpoint -q "$T/fr/local" || {
      mkdir -p "$T/fr/local"
      mount -t overlay overlay -o "ro,lowerdir=$PY_DIFF:$BASE_DIFF" "$T/fr/local" || die "overlay mount of the ext4 layers failed"
      MOUNTS+=("$T/fr/local")
    }
    drop
    python3 "$FLEET_PY" "$T/fr/local" >"$T/fleet.out" || die "local start failed"
    sample chroot_local "$(cat "$T/fleet.out")"
    umount "$T/fr/1"; xremount f1 plain warm
    mount -t overlay overlay -o "ro,lowerdir=$T/m/f1/overlay2/$PY_CID/diff:$T/m/f1/overlay2/$BASE_CID/diff" "$T/fr/1" ||
      die "overlay mount of fleet member 1 failed"
    drop
    python3 "$FLEET_PY" "$T/fr/1" >"$T/fleet.out" || die "single warm start failed"
    sample chroot_block "$(cat "$T/fleet.out")"
    log "  one host: empty cache $(tail -1 "$T/res/fleet_single") s, block cache $(tail -1 "$T/res/chroot_block") s, ext4 $(tail -1 "$T/res/chroot_local") s (page cache dropped)"
    log "case fleet: repetition $r/$REPS: $FLEET_N hosts at once"
    fleet_prepare "$FLEET_N"
    drop
    python3 "$FLEET_PY" $(for k in $(seq 1 "$FLEET_N"); do echo "$T/fr/$k"; done) >"$T/fleet.out" || die "fleet start failed"
    w1=$(server_sent)
    cat "$T/fleet.out" >>"$T/res/fleet_times"
    sample fleet_server "$w1"
    local fsum=0 msum=0
    for k in $(seq 1 "$FLEET_N"); do
      fsum=$((fsum + $(stat_field "$T/m/f$k" bytes_fetched)))
      m=$(stat_opt "$T/m/f$k" meta_bytes_fetched)
      msum=$((msum + ${m:-0}))
    done
    sample fleet_fetched "$fsum"
    [ -n "$m" ] && sample fleet_meta "$msum"
    log "  single $(tail -1 "$T/res/fleet_single") s; fleet: $(tr '\n' ' ' <"$T/fleet.out")s; server sent $(mib "$w1") (one host: $(mib "$(tail -1 "$T/res/fleet_single_server")"))"
    # The same 8 starts at once from their (now warm) block caches, page cache dropped: what the
    # 2 shared cores alone cost, with no server in the way.
    for k in $(seq 1 "$FLEET_N"); do
      umount "$T/fr/$k"
      xremount "f$k" plain warm
      mount -t overlay overlay -o "ro,lowerdir=$T/m/f$k/overlay2/$PY_CID/diff:$T/m/f$k/overlay2/$BASE_CID/diff" "$T/fr/$k" ||
        die "overlay mount of fleet member $k failed"
    done
    drop
    python3 "$FLEET_PY" $(for k in $(seq 1 "$FLEET_N"); do echo "$T/fr/$k"; done) >"$T/fleet.out" || die "warm fleet start failed"
    cat "$T/fleet.out" >>"$T/res/fleet_warm_times"
    log "  the same from their block caches: $(tr '\n' ' ' <"$T/fleet.out")s"
    [ $capped = 1 ] || continue
    log "case fleet: repetition $r/$REPS: capped at $HOST_CPU cores per host: one host, then $FLEET_N at once"
    fleet_prepare 1; cap_daemons 1; drop
    python3 "$FLEET_PY" "$T/fr/1=${cgp[1]}" >"$T/fleet.out" || die "capped single start failed"
    sample fleet_cap_single "$(cat "$T/fleet.out")"
    fleet_prepare "$FLEET_N"; cap_daemons "$FLEET_N"; drop
    python3 "$FLEET_PY" $(for k in $(seq 1 "$FLEET_N"); do echo "$T/fr/$k=${cgp[$k]}"; done) >"$T/fleet.out" ||
      die "capped fleet start failed"
    cat "$T/fleet.out" >>"$T/res/fleet_cap_times"
    log "  single $(tail -1 "$T/res/fleet_cap_single") s; fleet: $(tr '\n' ' ' <"$T/fleet.out")s"
  done
  for i in $(seq 1 "$FLEET_N"); do
    mountpoint -q "$T/fr/$i" && umount "$T/fr/$i"
    xunmount "f$i"
  done
  log "ganesha.nfsd's /proc/$GPID/io: $(grep -E '^(rchar|wchar)' "/proc/$GPID/io" | tr '\n' ' ')"
  local s1 sf p50 p99 f1
  local lc
  lc=$(median chroot_local)
  row "python start without docker (overlayfs + chroot): extrafs empty cache vs ext4, cold" "$lc s" "$(median fleet_single) s" \
    "$(ratio "$(median fleet_single)" "$lc")" - -
  row "python start without docker: extrafs block cache vs ext4, page cache dropped" "$lc s" "$(median chroot_block) s" \
    "$(ratio "$(median chroot_block)" "$lc")" - -
  f1=$(median fleet_single_fetched); sf=$(median fleet_server); s1=$(median fleet_single_server)
  # The target's yardstick, "one host's fetch", is measured where the fleet's bytes are: what
  # ganesha sent one host alone (its chunks, its metadata and the RPC framing of both), so that
  # the ratio is the fleet's amplification and nothing else. Beside it, the hosts' own counts.
  local m1 mf f1all=$f1
  m1=$(median fleet_single_meta); mf=$(median fleet_meta)
  row "fleet of $FLEET_N: bytes ganesha sent vs $FLEET_N x what it sent one host alone" \
    "$(mib "$(python3 -c "print($s1 * $FLEET_N)")") ($FLEET_N x $(mib "$s1"))" "$(mib "$sf") sent" "$(ratio "$sf" "$s1")" "<=" "$FLEET_N" \
    "$(ratio "$sf" "$s1")x one host"
  row "fleet of $FLEET_N: bytes ganesha sent vs $FLEET_N x one host's chunk bytes fetched" \
    "$(mib "$(python3 -c "print($f1 * $FLEET_N)")") ($FLEET_N x $(mib "$f1"))" "$(mib "$sf") sent" \
    "$(ratio "$sf" "$f1")" - - "$(ratio "$sf" "$f1")x one host's chunks"
  if [ "$m1" != nan ]; then
    f1all=$(python3 -c "print($f1 + $m1)")
    row "fleet of $FLEET_N: bytes ganesha sent vs $FLEET_N x one host's chunk + metadata bytes fetched" \
      "$(mib "$(python3 -c "print($f1all * $FLEET_N)")") ($FLEET_N x $(mib "$f1all"))" "$(mib "$sf") sent" \
      "$(ratio "$sf" "$f1all")" - - "$(ratio "$sf" "$f1all")x one host's chunks + metadata"
  fi
  row "fleet: one host, ganesha sent (at mount + during start) vs its bytes fetched" "$(mib "$f1") fetched" \
    "$(mib "$(median fleet_single_mount)") + $(mib "$(python3 -c "print($s1 - $(median fleet_single_mount))")") sent" \
    "$(ratio "$s1" "$f1")" - -
  # Metadata (catalog, image/ index, layer indexes) the hosts read, from their own counter.
  if [ "$m1" != nan ]; then
    row "fleet: one host, metadata read (catalog + indexes, meta_bytes_fetched) vs its chunk bytes fetched" "$(mib "$f1") chunks" \
      "$(mib "$m1") metadata" "$(ratio "$m1" "$f1")" - -
    row "fleet of $FLEET_N: bytes ganesha sent vs the hosts' chunk + metadata bytes" \
      "$(mib "$(python3 -c "print($(median fleet_fetched) + $mf)")") ($(mib "$(median fleet_fetched)") + $(mib "$mf"))" "$(mib "$sf") sent" \
      "$(ratio "$sf" "$(python3 -c "print($(median fleet_fetched) + $mf)")")" - -
  else
    row "fleet: one host, metadata read (meta_bytes_fetched)" "$(mib "$f1") chunks" "not reported by this build" - - -
  fi
  p50=$(pctl fleet_times 50); p99=$(pctl fleet_times 99); s1=$(median fleet_single)
  row "fleet of $FLEET_N on $(nproc) shared cores: p50 start vs a single host" "$s1 s" "$p50 s" "$(ratio "$p50" "$s1")" - -
  row "fleet of $FLEET_N on $(nproc) shared cores: p99 start vs a single host" "$s1 s" "$p99 s" "$(ratio "$p99" "$s1")" - -
  local w99
  w99=$(pctl fleet_warm_times 99)
  row "fleet of $FLEET_N: p99 start vs the same $FLEET_N at once from their block caches (CPU only)" "$w99 s" "$p99 s" "$(ratio "$p99" "$w99")" - -
  if [ -s "$T/res/fleet_cap_times" ]; then
    p50=$(pctl fleet_cap_times 50); p99=$(pctl fleet_cap_times 99); s1=$(median fleet_cap_single)
    row "fleet of $FLEET_N, each host capped at $HOST_CPU cores: p50 start vs one host capped the same" "$s1 s" "$p50 s" "$(ratio "$p50" "$s1")" - -
    row "fleet of $FLEET_N, each host capped at $HOST_CPU cores: p99 start vs one host capped the same" "$s1 s" "$p99 s" "$(ratio "$p99" "$s1")" "<=" 1.5
  fi
}

# ---------------------------------------------------------------------------------------------
# 6. Memory: 10 images attached into one data-root and started; the daemon's VmHWM.
case_memory() {
  local RM=$T/rm i pid hwm rss idx loaded nlayers
  log "case memory: attach $NMEM images, run each"
  xremount mem plain cold
  rm -rf "$RM"
  timeout 300 "$EXTRAFS" docker attach $(for i in $(seq 1 $NMEM); do echo "bench-m$i:1"; done) --mount "$T/m/mem" --data-root "$RM" \
    >/dev/null 2>"$T/attach.err" || die "attach: $(cat "$T/attach.err")"
  drop
  dstart mem "$RM"
  for i in $(seq 1 $NMEM); do
    out=$(D mem run -d --network none "bench-m$i:1" python3 -c "import time; open('/opt/m$i/data.bin','rb').read(); print(6*7); time.sleep(30)") ||
      die "docker run bench-m$i:1 failed"
  done
  for _ in $(seq 1 100); do
    [ "$(D mem ps -q | wc -l)" -ge $NMEM ] && break; sleep 0.1
  done
  sleep 2
  pid=$(daemon_pid "$T/m/mem") || die "no daemon for $T/m/mem"
  hwm=$(awk '/^VmHWM:/ {print $2 * 1024}' "/proc/$pid/status")
  rss=$(awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$pid/status")
  loaded=$(stat_opt "$T/m/mem" layer_indexes_loaded)
  nlayers=$(stat_json "$T/m/mem" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["layers"]))')
  D mem ps -q | xargs -r timeout 60 "$DOCKERD" docker "$T/d/mem" rm -f >/dev/null 2>&1
  dstop mem
  xunmount mem
  idx=$(find "$STORES/plain/extrafs" -name '*.index' -printf '%s\n' | awk '{s += $1} END {print s}')
  local limit=$((64 << 20))
  row "daemon peak RSS (VmHWM), $NMEM images attached and running" "64 MiB + $(mib "$idx") of indexes" \
    "$(mib "$hwm") (RSS now $(mib "$rss"); ${loaded:-all} of $nlayers layer indexes loaded)" "$(ratio "$hwm" $((limit + idx)))" "<=" 1 \
    "$(ratio "$hwm" $((limit + idx))) of the budget"
}

# ---------------------------------------------------------------------------------------------
# 7. http(s) and caching proxies (issue 17): tests/bench/http_bench.py, with the stores and
# ganesha above and one capped cpu cgroup per fleet host made here.
case_http() {
  local k cases= procs=
  want https && cases=https
  want proxy && cases=${cases:+$cases,}proxy
  for k in $(seq 1 "$FLEET_N"); do
    if cg_make "http$k"; then procs="$procs $CGP"; else procs=; break; fi
  done
  [ -n "$procs" ] || log "case proxy: no cpu cgroup controller here: its starts are not capped"
  XF_CGROUP_PROCS=$procs EXTRAFS_BENCH_HOST_CPU=$HOST_CPU python3 "$HTTP_BENCH_PY" --extrafs "$EXTRAFS" --stores "$STORES" \
    --nfs-url "$URL" --py-cid "$PY_CID" --base-cid "$BASE_CID" --tmp "$T/http" --cases "$cases" --reps "$REPS" \
    --fleet "$FLEET_N" >>"$ROWS" || die "http_bench.py failed"
}

want start && case_start
if want read || want nfs || want small; then case_read_nfs; fi
want fleet && case_fleet
want memory && case_memory
if want https || want proxy; then case_http; fi

# ---------------------------------------------------------------------------------------------
{
  echo "| case | reference | extrafs | ratio | target | met? |"
  echo "|---|---|---|---|---|---|"
  cat "$ROWS"
} >"$T/table"
cat "$T/table"
if [ $APPEND = 1 ]; then
  {
    echo
    echo "### $(date -u +%Y-%m-%d\ %H:%M) UTC — \`$CMDLINE\`, commit $COMMIT$DIRTY"
    echo
    echo "Medians of $REPS; unread file $BIG_MIB MiB; image bench-py:1 $(mib "$IMAGE_BYTES"); $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB;"
    echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    cat "$T/table"
  } >>"$REPO/docs/benchmarks-log.md"
  log "appended to $REPO/docs/benchmarks-log.md"
fi
