#!/bin/bash
# test_nfs_bad_urls.sh EXTRAFS
#
# Bad nfs:// sources are refused with one line on stderr ("extrafs: ...") and exit status 1 or 2,
# never a hang (each attempt runs under `timeout 30`), never a crash, and nothing is left mounted
# or running afterwards: no host, bad port, unknown URL option, version=5, a closed loopback port,
# an export that does not exist on a running server (v4 and v3), a path inside the export that is
# a file, and a hung server (SIGSTOP) with an empty cache (must fail within the timeout).
# Then a good URL still mounts (the harness is not the reason the others fail).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/nfs_lib.sh"
nm_init "$@"

STORE=$T/store
MNT=$T/mnt
mkdir -p "$MNT"
step "building and indexing the odd store"
nm_build_store "$STORE"
step "starting nfs-ganesha"
nm_start_ganesha "$STORE"
CLOSED=$(closed_port) || die "no closed loopback port found"
P=$GPORT
MP=$GMNT_PORT

# bad_url LABEL URL [MAX_SECONDS]
n=0
bad_url() {
  local label=$1 url=$2 max=${3:-30} rc=0 lines
  n=$((n + 1))
  local cache=$T/cache.$n
  timed timeout -s KILL 30 "$EXTRAFS" mount "$url" "$MNT" -o "cache=$cache,timeout=3" >"$T/out" 2>"$T/err" || rc=$?
  lines=$(wc -l <"$T/err")
  if [[ $rc -eq 137 ]]; then
    fail "$label: '$url' did not return within 30 s (hang)"
  elif [[ $rc -ne 1 && $rc -ne 2 ]]; then
    fail "$label: '$url' exited $rc (expected 1 or 2); stderr: $(head -c 300 "$T/err")"
  elif [[ $lines -ne 1 ]] || ! grep -q '^extrafs: ..*' "$T/err"; then
    fail "$label: '$url' exit $rc but stderr is not one 'extrafs: ...' line ($lines lines): $(head -c 300 "$T/err")"
  elif ! secs_le "$TIME_TAKEN" "$max"; then
    fail "$label: '$url' exit $rc after ${TIME_TAKEN} s (> $max s)"
  else
    pass "$label: exit $rc in ${TIME_TAKEN} s: $(cat "$T/err")"
  fi
  [[ -s $T/out ]] && fail "$label: wrote to stdout: $(head -c 200 "$T/out")"
  if is_mounted "$MNT"; then
    fail "$label: $MNT is mounted after the failure"
    umount -l "$MNT" 2>/dev/null || true
  fi
  local left
  left=$(daemon_pids "$MNT")
  if [[ -n $left ]]; then
    fail "$label: extrafs process(es) $left still running for $MNT"
    kill -KILL $left 2>/dev/null || true
  fi
  # the cache directory must not be left locked: a second open must be possible
  if [[ -e $cache/lock ]] && ! flock -n "$cache/lock" true; then fail "$label: $cache/lock still held"; fi
}

step "malformed URLs"
bad_url "no host" "nfs:///export" 5
bad_url "no host, with port" "nfs://:$P/export" 5
bad_url "nothing after nfs://" "nfs://" 5
bad_url "port out of range" "nfs://127.0.0.1:99999/x" 5
bad_url "port not a number" "nfs://127.0.0.1:abc/export" 5
bad_url "unknown option" "nfs://127.0.0.1:$P/export?foo=1" 5
bad_url "version=5" "nfs://127.0.0.1:$P/export?version=5" 5
bad_url "version=3 with nfsport=0" "nfs://127.0.0.1/export?version=3&nfsport=0&mountport=$MP" 5
bad_url "no export path" "nfs://127.0.0.1:$P" 5
bad_url "other scheme" "ftp://127.0.0.1:$P/export" 5

step "unreachable or wrong server"
bad_url "closed loopback port (v4)" "nfs://127.0.0.1:$CLOSED/export" 10
bad_url "closed loopback port (v3)" "nfs://127.0.0.1/export?version=3&nfsport=$CLOSED&mountport=$CLOSED" 10
bad_url "export does not exist (v4)" "nfs://127.0.0.1:$P/no-such-export" 10
bad_url "export does not exist (v3)" "nfs://127.0.0.1/no-such-export?version=3&nfsport=$P&mountport=$MP" 10
bad_url "subdir does not exist" "nfs://127.0.0.1:$P/export/no/such/dir" 10
bad_url "path is a file" "nfs://127.0.0.1:$P/export/extrafs/catalog" 10
bad_url "export without an extrafs store" "nfs://127.0.0.1:$P/export/overlay2" 10

step "hung server, empty cache"
timeout 20 "$GANESHA" pause "$GSTATE" || die "ganesha.sh pause failed"
bad_url "paused server (v4), timeout=3" "$NFS4_URL" 15
bad_url "paused server (v3), timeout=3" "$NFS3_URL" 15
timeout 20 "$GANESHA" resume "$GSTATE" || die "ganesha.sh resume failed"

step "the good URLs still mount"
for u in "$NFS4_URL" "$NFS3_URL"; do
  nm_mount "$u" "$MNT" "$T/cache.good" "timeout=10" || continue
  cmp -s "$STORE/overlay2/${CIDS[0]}/diff/etc/greeting" "$MNT/overlay2/${CIDS[0]}/diff/etc/greeting" \
    && pass "serves content" || fail "wrong content through $u"
  nm_unmount "$MNT" || true
done
finish
