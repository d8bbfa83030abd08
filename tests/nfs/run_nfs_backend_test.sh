#!/bin/bash
# Runs nfs_backend_test against a private nfs-ganesha (NFSv3 + NFSv4) on 127.0.0.1.
#   run_nfs_backend_test.sh TEST_EXE GANESHA_SH [catch2 args...]
# Fails (never skips) when ganesha cannot be started.
set -u
exe=${1:?usage: run_nfs_backend_test.sh TEST_EXE GANESHA_SH [catch args]}
ganesha=${2:?usage: run_nfs_backend_test.sh TEST_EXE GANESHA_SH [catch args]}
shift 2

tmp=$(mktemp -d /tmp/extrafs-nfs-test.XXXXXX) || exit 1
state=$tmp/state
export_dir=$tmp/export
cleanup() {
  "$ganesha" stop "$state" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Test data: a random file > 3 MiB (not a multiple of anything), an empty file, a nested
# directory, a directory with many entries (several READDIR round trips).
mkdir -p "$export_dir/nested/deeper" "$export_dir/many" "$state" || exit 1
head -c $((3 * 1024 * 1024 + 512 * 1024 + 12345)) /dev/urandom >"$export_dir/big.bin" || exit 1
: >"$export_dir/empty"
printf 'hello nfs\n' >"$export_dir/small.txt"
printf 'deep\n' >"$export_dir/nested/deeper/file.txt"
for i in $(seq 1 600); do echo "$i" >"$export_dir/many/entry-with-a-longish-name-$i"; done

export GANESHA_PROTOCOLS=3,4
export GANESHA_ACCESS=RO
started=0
for _ in $(seq 1 20); do
  port=$((20490 + (RANDOM % 4000) * 2))
  export GANESHA_MNT_PORT=$((port + 1))
  out=$("$ganesha" start "$state" "$export_dir" "$port")
  rc=$?
  if [ $rc = 0 ]; then started=1; break; fi
  [ $rc = 3 ] && continue   # port taken: try another
  echo "run_nfs_backend_test: cannot start nfs-ganesha (rc $rc)" >&2
  exit 1
done
[ $started = 1 ] || { echo "run_nfs_backend_test: no free port found" >&2; exit 1; }
echo "$out"

# A loopback port nothing listens on (for the unreachable-server test).
closed=""
for _ in $(seq 1 50); do
  p=$((30000 + RANDOM % 20000))
  if ! ss -Hltn "sport = :$p" | grep -q .; then closed=$p; break; fi
done
[ -n "$closed" ] || { echo "run_nfs_backend_test: no closed port found" >&2; exit 1; }

EXTRAFS_NFS4_URL=$(echo "$out" | sed -n 's/^NFS4_URL=//p')
EXTRAFS_NFS3_URL=$(echo "$out" | sed -n 's/^NFS3_URL=//p')
export EXTRAFS_NFS4_URL EXTRAFS_NFS3_URL
export EXTRAFS_NFS_EXPORT_DIR=$export_dir
export EXTRAFS_NFS_PORT=$port
export EXTRAFS_NFS_CLOSED_PORT=$closed
export EXTRAFS_GANESHA_SH=$ganesha
export EXTRAFS_GANESHA_STATE=$state

# libnfs 4.0.0 leaks a few small allocations of its own (client name on nfs4_set_client_name, the
# connect data of a mount cancelled mid-connect); keep sanitizer builds green about those.
printf 'leak:libnfs.so\n' >"$tmp/lsan.supp"
export LSAN_OPTIONS="suppressions=$tmp/lsan.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

"$exe" "$@"
rc=$?
if [ $rc != 0 ]; then
  echo "---- ganesha log tail ----" >&2
  tail -15 "$state/ganesha.log" >&2
fi
exit $rc
