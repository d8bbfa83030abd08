"""Issue 18: the example retention units, extrafs-gc@.service and extrafs-gc@.timer, as `meson
install` puts them: installed into systemd's unit directory with the installed extrafs, clean
under `systemd-analyze verify` (checked as tests/systemd/test_units.sh checks the attach unit:
the install tree bound over the prefix in a private mount namespace), not enabled by the
install; and run for real under systemd as PID 1 (nspawn): the service removes the image whose
tag moved to a newer build and, with GRACE=0 from /etc/extrafs/gc.env, deletes its layer; the
timer can be enabled and is scheduled."""
import json
import re
import subprocess
from pathlib import Path

import xf


def installed(build_dir, tmp):
    dest = tmp / "destdir"
    xf.run(["meson", "install", "-C", build_dir, "--no-rebuild", "--quiet", "--destdir", dest], timeout=300)
    opts = {o["name"]: o["value"] for o in json.loads(xf.run(["meson", "introspect", build_dir, "--buildoptions"]).stdout)}
    prefix = Path(opts["prefix"])
    sbindir = prefix / opts["sbindir"]
    units = {p.name: p for p in dest.rglob("extrafs-gc@*")}
    return dest, sbindir, units


def test_the_retention_units_install_and_verify(build_dir, tmp):
    dest, sbindir, units = installed(build_dir, tmp)
    assert set(units) == {"extrafs-gc@.service", "extrafs-gc@.timer"}, units
    for u in units.values():
        assert re.search(r"/systemd/system/extrafs-gc@\.(service|timer)$", str(u)), f"{u}: not in a systemd unit directory"
    service = units["extrafs-gc@.service"].read_text()
    assert f"ExecStart={sbindir}/extrafs rm --all-untagged --from %f\n" in service, service
    assert f"ExecStart={sbindir}/extrafs gc %f --grace ${{GRACE}}\n" in service, service
    assert (dest / str(sbindir).lstrip("/") / "extrafs").is_file()
    # Nothing enabled by the install: no *.wants link anywhere in the tree.
    assert not [p for p in dest.rglob("*.wants")], "the install enabled a unit"

    # systemd-analyze verify on instances, with the installed binary where the units name it.
    work = tmp / "units"
    work.mkdir()
    for name, src in units.items():
        inst = name.replace("@.", "@srv-store.")
        (work / inst).write_text(src.read_text())
        (work / name).write_text(src.read_text())
    script = ('set -e; mkdir -p "$2"; mount --bind "$1$2" "$2"; '
              'systemd-analyze verify --man=no "$3/extrafs-gc@srv-store.service" "$3/extrafs-gc@srv-store.timer"')
    p = subprocess.run(["unshare", "-m", "bash", "-c", script, "_", str(dest), str(sbindir), str(work)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), \
        f"systemd-analyze verify: exit {p.returncode}: {p.stdout} {p.stderr}"


def test_the_retention_service_runs_under_systemd(build_dir, extrafs, tmp, nspawn):
    store = tmp / "store"
    base = {"bin/busybox": b"@busybox", "bin/sh": "busybox"}
    v1 = xf.make_images(tmp / "v1", {"base": base, "v1": {"app/data": xf.pseudo_random(2 << 20, 11)}},
                        {"app:latest": ["base", "v1"]})
    v2 = xf.make_images(tmp / "v2", {"base": base, "v2": {"app/data": xf.pseudo_random(2 << 20, 12)}},
                        {"app:latest": ["base", "v2"]})
    xf.run([extrafs, "publish", "--archive", v1.archives["app:latest"], "--to", store], timeout=300)
    old_top = xf.image_layer_ids(store, "app:latest")[-1]
    xf.run([extrafs, "publish", "--archive", v2.archives["app:latest"], "--to", store], timeout=300)
    new_top = xf.image_layer_ids(store, "app:latest")[-1]
    assert old_top != new_top and (store / "extrafs" / "layers" / f"{old_top}.blob").exists()

    dest, sbindir, units = installed(build_dir, tmp)
    m = nspawn({store: "/srv/store"})
    m.install_program(extrafs, f"{sbindir}/extrafs")
    for name, src in units.items():
        m.copy_in(src, f"/etc/systemd/system/{name}", mode=0o644)
    m.write("/etc/extrafs/gc.env", "GRACE=0\n")
    m.run(["systemctl", "daemon-reload"])
    # A oneshot: start returns once both commands ran.
    m.run(["systemctl", "start", "extrafs-gc@srv-store.service"], timeout=300)
    show = m.run(["systemctl", "show", "-P", "Result", "extrafs-gc@srv-store.service"]).stdout.strip()
    log = m.run(["journalctl", "-q", "-o", "cat", "-u", "extrafs-gc@srv-store.service"], check=False).stdout
    assert show == "success", f"Result={show}\n{log}"
    assert "removed image" in log and "(untagged)" in log, log
    assert "freed" in log, log
    assert not (store / "extrafs" / "layers" / f"{old_top}.blob").exists(), "the replaced build's layer is still there"
    assert (store / "extrafs" / "layers" / f"{new_top}.blob").exists()
    xf.run([extrafs, "verify", store], timeout=120)

    m.run(["systemctl", "enable", "--now", "extrafs-gc@srv-store.timer"])
    assert m.run(["systemctl", "is-active", "extrafs-gc@srv-store.timer"]).stdout.strip() == "active"
    nxt = m.run(["systemctl", "show", "-P", "NextElapseUSecRealtime", "extrafs-gc@srv-store.timer"]).stdout.strip()
    assert nxt and nxt != "n/a", f"the timer is not scheduled: {nxt!r}"
