# ab_lib.sh: what the A/B scripts (order_ab.sh, small_ab.sh) share; sourced, not run.

# start_ganesha FIRST_PORT LAST_PORT: a private NFSv4 ganesha (tests/nfs/ganesha.sh) on the first
# free even port of the range, state in $GSTATE, exporting $T/stores; sets URL to its NFSv4 URL.
# ganesha.sh exits 3 when a port is taken (the next one is tried); anything else ends the script.
start_ganesha() {
  local port rc out
  URL=
  for port in $(seq "$1" 2 "$2"); do
    rc=0
    out=$(GANESHA_PROTOCOLS=4 timeout 60 "$HERE/../nfs/ganesha.sh" start "$GSTATE" "$T/stores" "$port" 2>"$T/g.err") || rc=$?
    [ $rc = 0 ] && { URL=$(sed -n 's/^NFS4_URL=//p' <<<"$out"); break; }
    [ $rc = 3 ] || { cat "$T/g.err" >&2; exit 1; }
  done
  [ -n "$URL" ] || { echo "no free port for ganesha" >&2; exit 1; }
}
