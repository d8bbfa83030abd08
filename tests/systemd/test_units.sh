#!/bin/bash
# test_units.sh BUILD_DIR: the systemd units as `meson install` puts them.
#
# Checks:
#   - `meson install --destdir D` installs extrafs-attach@.service into systemd's unit directory
#     and extrafs-attach-listed (executable) into libexecdir, with the configured paths
#   - `systemd-analyze verify` passes on an instance of the unit (extrafs-attach@mnt-extrafs),
#     with the installed binaries in place: the install tree is bind-mounted over the prefix in a
#     private mount namespace, so the unit is checked exactly as installed
#   - extrafs-attach-listed: usage error (2) without its two arguments, 1 for an unreadable list,
#     0 with a message for a list that names no image (comments and blank lines only)
# The attach it runs is checked against a real dockerd data-root in tests/docker.
set -u
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../integration/lib.sh"
BUILD=${1:-}
[[ -d $BUILD ]] || { echo "usage: $0 BUILD_DIR"; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "SKIP: needs root"; exit 77; }
command -v systemd-analyze >/dev/null || { echo "FATAL: systemd-analyze not installed (scripts/setup installs systemd)"; exit 1; }
setup_tmp
trap cleanup EXIT

step "meson install into a private tree"
D=$T/destdir
meson install -C "$BUILD" --no-rebuild --quiet --destdir "$D" >"$T/install.log" 2>&1 || { cat "$T/install.log"; die "meson install failed"; }
opts=$(meson introspect "$BUILD" --buildoptions)
opt() { python3 -c 'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"] == sys.argv[1]))' "$1" <<<"$opts"; }
prefix=$(opt prefix) sbindir=$(opt sbindir) libexecdir=$(opt libexecdir)
[[ $sbindir = /* ]] || sbindir=$prefix/$sbindir
[[ $libexecdir = /* ]] || libexecdir=$prefix/$libexecdir
unit=$(find "$D" -name 'extrafs-attach@.service' -print -quit)
[[ -n $unit ]] && pass "unit installed: ${unit#"$D"}" || die "extrafs-attach@.service not installed"
case ${unit#"$D"} in
  */systemd/system/extrafs-attach@.service) pass "in a systemd system unit directory" ;;
  *) fail "installed outside a systemd unit directory: ${unit#"$D"}" ;;
esac
script=$D$libexecdir/extrafs-attach-listed
[[ -x $script ]] && pass "extrafs-attach-listed installed executable" || die "$libexecdir/extrafs-attach-listed missing or not executable"
[[ -x $D$sbindir/extrafs ]] && pass "extrafs installed in $sbindir" || fail "$sbindir/extrafs not installed"
grep -qx "ExecStart=$libexecdir/extrafs-attach-listed %f /etc/extrafs/images" "$unit" \
  && pass "ExecStart names the installed script" || fail "ExecStart: $(grep ExecStart "$unit")"
grep -qx "extrafs=$sbindir/extrafs" "$script" && pass "script runs the installed extrafs" || fail "script: $(grep "^extrafs=" "$script")"
grep -qx "Before=docker.service" "$unit" && pass "ordered before docker.service" || fail "no Before=docker.service"

step "systemd-analyze verify on the installed unit"
# The unit names absolute paths under the prefix; show systemd the installed files there without
# installing onto this machine: bind the install tree's directories over them in a private mount
# namespace.
instance=$T/units/extrafs-attach@mnt-extrafs.service
mkdir -p "$T/units"
cp "$unit" "$T/units/extrafs-attach@.service"
cp "$unit" "$instance"
verify_log=$T/verify.log
unshare -m bash -c '
  set -e
  D=$1 sbindir=$2 libexecdir=$3 unit=$4
  mkdir -p "$sbindir" "$libexecdir"
  mount --bind "$D$sbindir" "$sbindir"
  mount --bind "$D$libexecdir" "$libexecdir"
  systemd-analyze verify --man=no "$unit"
' _ "$D" "$sbindir" "$libexecdir" "$instance" >"$verify_log" 2>&1
rc=$?
if [[ $rc -eq 0 && ! -s $verify_log ]]; then
  pass "systemd-analyze verify: clean"
else
  cat "$verify_log"
  fail "systemd-analyze verify: exit $rc"
fi

step "extrafs-attach-listed arguments"
"$script" >/dev/null 2>&1; rc=$?
[[ $rc -eq 2 ]] && pass "no arguments: exit 2" || fail "no arguments: exit $rc"
"$script" "$T" "$T/no-such-list" >/dev/null 2>"$T/err"; rc=$?
[[ $rc -eq 1 ]] && grep -q "cannot read" "$T/err" && pass "unreadable list: exit 1, says so" || fail "unreadable list: exit $rc: $(cat "$T/err")"
printf '# images for this host\n\n   # none yet\n' >"$T/list"
out=$("$script" "$T" "$T/list" 2>&1); rc=$?
[[ $rc -eq 0 && $out == *"names no image"* ]] && pass "empty list: exit 0, says so" || fail "empty list: exit $rc: $out"
finish
