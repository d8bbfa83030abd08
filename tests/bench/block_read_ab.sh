#!/bin/bash
# tests/bench/block_read_ab.sh [--reps N] [--mib N] EXTRAFS[@RA_KB]... : A/B of the block-cache
# read (the `read` case of run.sh, quicker). One local-directory store holding a random file of
# --mib MiB (default 256), indexed with the first binary; each binary gets its own block cache,
# filled by one read. Then --reps repetitions (default 5), each: for every binary in turn (the
# order rotates from one repetition to the next) a fresh mount, `sync; echo 3 >
# /proc/sys/vm/drop_caches`, `cat` of the file, timed; and the same file on ext4 read the same way.
# Prints per-run times (with the daemon's CPU time during the read, in clock ticks), then the
# median of each and its ratio to the ext4 median.
# EXTRAFS@RA_KB: right after each mount by that binary, the mount's bdi read_ahead_kb is set to
# RA_KB (128 is the kernel's default for a FUSE mount); the same binary may be given twice with
# different values.
# Needs root and /dev/fuse. Not part of any test suite.
set -uo pipefail
REPS=5 MIB=256
while [ $# -gt 0 ]; do
  case $1 in
    --reps) REPS=${2:?}; shift ;;
    --mib) MIB=${2:?}; shift ;;
    --) shift; break ;;
    -*) echo "usage: $0 [--reps N] [--mib N] EXTRAFS[@RA_KB]..." >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[ $# -ge 1 ] || { echo "usage: $0 [--reps N] [--mib N] EXTRAFS[@RA_KB]..." >&2; exit 2; }
BINS=() RAS=()
for b in "$@"; do
  BINS+=("$(realpath "${b%@*}")")
  if [[ $b == *@* ]]; then RAS+=("${b##*@}"); else RAS+=(""); fi
done
[ "$(id -u)" = 0 ] || { echo "block_read_ab.sh: needs root" >&2; exit 1; }

T=$(mktemp -d /tmp/xfab.XXXXXX)
cleanup() {
  local i
  for i in "${!BINS[@]}"; do mountpoint -q "$T/m$i" && { umount "$T/m$i" || umount -l "$T/m$i"; }; done
  rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
secs() { python3 -c "import sys; print('%.4f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$1" "$2"; }
id=$(printf 'block-read-ab' | sha256sum | cut -c1-64)
D=$T/store/overlay2/$id/diff
mkdir -p "$D" "$T/store/overlay2/l"
head -c $((MIB << 20)) /dev/urandom >"$D/big"
printf 'BLOCKREADABBLOCKREADAB0000' >"$T/store/overlay2/$id/link"
"${BINS[0]}" index "$T/store" >/dev/null || { echo "block_read_ab.sh: extrafs index failed" >&2; exit 1; }

mnt() {  # mnt I: mounts the store with binary I on $T/mI, cache $T/cI
  mkdir -p "$T/m$1"
  "${BINS[$1]}" mount "$T/store" "$T/m$1" -o "cache=$T/c$1,cache_size=4G,log_level=warn" || exit 1
  if [ -n "${RAS[$1]}" ]; then
    local dev
    dev=$(mountpoint -d "$T/m$1") && echo "${RAS[$1]}" >"/sys/class/bdi/$dev/read_ahead_kb" || exit 1
  fi
}
daemon_pid() {  # daemon_pid I: the daemon serving $T/mI
  local p
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/exe" 2>/dev/null) == "${BINS[$1]}" ]] || continue
    tr '\0' '\n' <"$p/cmdline" 2>/dev/null | grep -qxF -- "$T/m$1" && { echo "${p#/proc/}"; return 0; }
  done
  return 1
}
daemon_ticks() {  # daemon_ticks PID: its user+system clock ticks
  local f
  read -ra f <"/proc/$1/stat" && echo $((f[13] + f[14]))
}
unmnt() {  # unmnt I: unmounts, waits (at most 10 s) for the daemon to exit and free its cache
  local pid
  pid=$(daemon_pid "$1")
  umount "$T/m$1" || umount -l "$T/m$1"
  for _ in $(seq 1 100); do [ -n "$pid" ] && [ -d "/proc/$pid" ] || break; sleep 0.1; done
}
for i in "${!BINS[@]}"; do
  mnt "$i"
  cmp "$T/m$i/overlay2/$id/diff/big" "$D/big" || { echo "block_read_ab.sh: binary $i serves wrong bytes" >&2; exit 1; }
  unmnt "$i"
done
echo "# $MIB MiB, $REPS repetitions; load average $(cut -d' ' -f1-3 /proc/loadavg)"
n=${#BINS[@]}
for r in $(seq 1 "$REPS"); do
  line="rep $r:"
  for k in $(seq 0 "$n"); do
    i=$(( (k + r) % (n + 1) ))  # n = ext4
    if [ $i = "$n" ]; then
      drop
      t0=$EPOCHREALTIME; cat "$D/big" >/dev/null; t=$(secs "$t0" "$EPOCHREALTIME")
      echo "$t" >>"$T/ext4"; line+=" ext4 $t"
    else
      mnt "$i"; drop
      pid=$(daemon_pid "$i") || exit 1
      c0=$(daemon_ticks "$pid")
      t0=$EPOCHREALTIME; cat "$T/m$i/overlay2/$id/diff/big" >/dev/null || exit 1; t=$(secs "$t0" "$EPOCHREALTIME")
      c=$(( $(daemon_ticks "$pid") - c0 ))
      unmnt "$i"
      echo "$t" >>"$T/b$i"; echo "$c" >>"$T/cpu$i"; line+=" bin$i $t (${c}t)"
    fi
  done
  echo "$line"
done
med() { python3 -c "import statistics,sys; print('%.4f' % statistics.median(float(l) for l in open(sys.argv[1])))" "$1"; }
e=$(med "$T/ext4")
echo "ext4 median $e s"
for i in "${!BINS[@]}"; do
  m=$(med "$T/b$i")
  echo "bin$i ${BINS[$i]}${RAS[$i]:+ (read_ahead_kb ${RAS[$i]})}: median $m s, $(python3 -c "print('%.2f' % ($m / $e))")x ext4; daemon CPU median $(med "$T/cpu$i") ticks of 1/$(getconf CLK_TCK) s"
done
