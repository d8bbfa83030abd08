"""`extrafs docker attach|detach --restart` with dockerd run by systemd (docker.service and
docker.socket, live-restore on), and extrafs-attach@.service with an fstab `extrafs` line at boot
(issue 20 section 4): in a Debian rootfs booted with systemd-nspawn, systemd as PID 1
(tests/py/nspawn.py), the build's extrafs, mount.extrafs and units installed where the build
configured them, a store published on the host bound read-only at /srv/store.

Checked: a restart goes through systemd (the unit and its socket stopped and started, a new
MainPID) while a container keeps its pid; a SIGKILL of extrafs while docker.service is stopped
is recovered by the next extrafs docker command, and at the next boot by extrafs-attach@.service
(which also finishes the interrupted attach of an image it lists); at boot the fstab mount and
the attach unit bring the listed images up before docker.service starts.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import nspawn
import xf

MNT = "/mnt/extrafs"
UNIT = "extrafs-attach@mnt-extrafs.service"
JOURNAL = "extrafs-restart.json"


class Host:
    """A booted machine set up for the docker tests; `x` is the path of extrafs inside."""

    def __init__(self, m: nspawn.Machine, x: str):
        self.m, self.x = m, x

    def run(self, *args, check=True, timeout=180):
        return self.m.run(list(args), check=check, timeout=timeout)

    def extrafs(self, *args, check=True, timeout=300):
        return self.run(self.x, *args, check=check, timeout=timeout)

    def prop(self, unit: str, name: str) -> str:
        return self.run("systemctl", "show", "-p", name, "--value", unit).stdout.strip()

    def active(self, unit: str) -> str:
        return self.prop(unit, "ActiveState")

    def docker(self, *args, check=True):
        return self.run("docker", *args, check=check)

    def tags(self) -> set[str]:
        return set(self.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())

    def container_pid(self, name="keeper") -> int:
        running, pid = self.docker("inspect", "-f", "{{.State.Running}} {{.State.Pid}}", name).stdout.split()
        assert running == "true", f"container {name} is not running"
        return int(pid)

    def marker(self, ref: str) -> str:
        return self.docker("run", "--rm", "--network", "none", ref, "/bin/busybox", "cat", "/etc/marker").stdout


def configured(build_dir: Path) -> tuple[str, str]:
    """(sbindir, libexecdir) as the build configured the helper and the unit."""
    helper = (build_dir / "systemd" / "extrafs-attach-listed").read_text()
    unit = (build_dir / "systemd" / "extrafs-attach@.service").read_text()
    found = re.search(r"^extrafs=(/.*)/extrafs$", helper, re.M) or re.search(r"^exec (/\S*)/extrafs ", helper, re.M)
    sbindir = found.group(1)
    libexecdir = re.search(r"^ExecStart=(/.*)/extrafs-attach-listed ", unit, re.M).group(1)
    return sbindir, libexecdir


def machine(nspawn_factory, extrafs, build_dir, tmp, *, at_boot=False, listed=("app-a:1",)) -> Host:
    """A machine with the images store bound at /srv/store, the build installed, dockerd with
    live-restore as docker.service. at_boot: an fstab line mounts the store at MNT before
    docker.service and extrafs-attach@ is enabled for MNT with `listed` in /etc/extrafs/images
    (takes effect at the next boot); else the store is mounted at MNT now, by hand."""
    store = tmp / "store"
    xf.publish_busybox_images(extrafs, tmp, store)
    m = nspawn_factory([(store, "/srv/store", True)])
    sbindir, libexecdir = configured(build_dir)
    h = Host(m, f"{sbindir}/extrafs")
    m.install_program(extrafs, h.x)
    m.install_program(build_dir / "tools" / "mount.extrafs", "/usr/sbin/mount.extrafs")
    m.copy_in(build_dir / "systemd" / "extrafs-attach-listed", f"{libexecdir}/extrafs-attach-listed", mode=0o755)
    m.copy_in(build_dir / "systemd" / "extrafs-attach@.service", "/etc/systemd/system/extrafs-attach@.service",
              mode=0o644)
    m.write("/etc/docker/daemon.json", '{"live-restore": true}\n')
    h.run("systemctl", "daemon-reload")
    h.run("systemctl", "restart", "docker.service")
    assert h.docker("info", "--format", "{{.LiveRestoreEnabled}}").stdout.strip() == "true"
    if at_boot:
        m.write("/etc/fstab", f"/srv/store {MNT} extrafs cache=/var/cache/extrafs,x-systemd.before=docker.service 0 0\n")
        m.write("/etc/extrafs/images", "# images for this host\n" + "".join(f"{r}\n" for r in listed))
        h.run("systemctl", "enable", UNIT)
    else:
        h.run("mkdir", "-p", MNT)
        h.extrafs("mount", "/srv/store", MNT, "-o", "cache=/var/cache/extrafs")
    return h


def keeper(h: Host) -> int:
    # A container that lives through the restarts and ends on SIGTERM (xf.KEEPER_CMD).
    h.docker("run", "-d", "--network", "none", "--name", "keeper", "app-a:1", *xf.KEEPER_CMD)
    return h.container_pid()


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def cmdline(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


def kill_in_the_window(h: Host, *args):
    """Runs extrafs ARGS (a --restart) in the machine and SIGKILLs it once it has asked systemd
    to stop docker.service (its `systemctl stop` child exists: that goes on without it). Then
    waits for docker.service to be stopped."""
    m = h.m
    enter = ["nsenter", "-t", str(m.init), "-a", "env", "-i", f"PATH={nspawn.PATH}"]
    p = subprocess.Popen(enter + [h.x, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         stdin=subprocess.DEVNULL)

    def attach_pid():
        kids = [c for c in children(p.pid) if (cmdline(c) or [b""])[0].endswith(b"extrafs")]
        return kids[0] if kids else 0

    def stopping(pid):
        if p.poll() is not None:
            out, err = p.communicate()
            raise AssertionError(f"extrafs ended (exit {p.returncode}) before stopping docker.service: {out!r} {err!r}")
        return any(b"systemctl" in (cmdline(c) or [b""])[0] and b"stop" in cmdline(c) for c in children(pid))

    try:
        pid = xf.wait_until(attach_pid, 30, "extrafs to start in the machine")
        xf.wait_until(lambda: stopping(pid), 120, "extrafs to run systemctl stop", interval=0.002)
        os.kill(pid, signal.SIGKILL)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)
    xf.wait_until(lambda: h.active("docker.service") in ("inactive", "failed"), 120, "docker.service to stop")


def test_restart_goes_through_docker_service(nspawn, extrafs, build_dir, tmp):
    h = machine(nspawn, extrafs, build_dir, tmp)
    h.extrafs("docker", "attach", "app-a:1", "--mount", MNT, "--restart")
    kpid = keeper(h)
    for what, args in (("attached", ["attach", "app-b:1", "--mount", MNT]), ("detached", ["detach", "app-b:1"])):
        old = int(h.prop("docker.service", "MainPID"))
        out = h.extrafs("docker", *args, "--restart").stdout
        assert f"{what} app-b:1" in out, out
        assert f"dockerd restarted (systemd unit docker.service; pid {old} -> " in out, out
        new = int(h.prop("docker.service", "MainPID"))
        assert new not in (0, old), f"docker.service's MainPID {old} -> {new}"
        assert h.active("docker.service") == "active" and h.active("docker.socket") == "active"
        assert h.container_pid() == kpid, "the container did not keep its pid through the restart"
        assert not (h.m.docker_dir / JOURNAL).exists()
        if what == "attached":
            assert h.marker("app-b:1") == "app-b-marker\n"
        else:
            assert "app-b:1" not in h.tags()
    assert "app-a:1" in h.tags()


def test_sigkill_in_the_window_is_recovered_by_the_next_command(nspawn, extrafs, build_dir, tmp):
    h = machine(nspawn, extrafs, build_dir, tmp)
    h.extrafs("docker", "attach", "app-a:1", "--mount", MNT, "--restart")
    kpid = keeper(h)
    kill_in_the_window(h, "docker", "attach", "app-b:1", "--mount", MNT, "--restart")
    assert h.active("docker.socket") == "inactive"
    journal_left = (h.m.docker_dir / JOURNAL).exists()
    p = h.extrafs("docker", "attach", "app-c:1", "--mount", MNT, "--restart", check=False)
    assert h.active("docker.service") == "active", f"docker.service is still down: {p.stdout} {p.stderr}"
    assert journal_left, "no restart journal was left in the window"
    assert p.returncode == 0, p.stderr
    assert "was started again" in p.stdout, p.stdout
    assert h.active("docker.socket") == "active"
    assert h.container_pid() == kpid
    assert not (h.m.docker_dir / JOURNAL).exists()
    h.extrafs("docker", "attach", "app-b:1", "--mount", MNT, "--restart")  # finishes the interrupted one
    assert h.marker("app-b:1") == "app-b-marker\n" and h.marker("app-c:1") == "app-c-marker\n"
    assert h.container_pid() == kpid


def test_the_fstab_mount_and_the_attach_unit_bring_images_up_before_docker(nspawn, extrafs, build_dir, tmp):
    h = machine(nspawn, extrafs, build_dir, tmp, at_boot=True, listed=("app-a:1", "app-b:1"))
    h.m.reboot()
    mounts = h.run("findmnt", "-n", "-o", "FSTYPE", MNT, check=False).stdout.strip()
    assert mounts == "fuse.extrafs", f"{MNT} at boot: {mounts!r}"
    assert h.prop(UNIT, "Result") == "success" and h.active(UNIT) == "active", h.run(
        "journalctl", "-b", "-u", UNIT, "--no-pager", check=False).stdout
    attached = int(h.prop(UNIT, "ExecMainExitTimestampMonotonic"))
    docker = int(h.prop("docker.service", "ExecMainStartTimestampMonotonic"))
    assert 0 < attached <= docker, f"the attach unit ended at {attached}, docker.service started at {docker}"
    assert {"app-a:1", "app-b:1"} <= h.tags()
    assert h.marker("app-b:1") == "app-b-marker\n"
    # The next boot has nothing new to attach and writes nothing.
    before = (h.m.docker_dir / "image/overlay2/repositories.json").stat().st_mtime_ns
    h.m.reboot()
    assert h.prop(UNIT, "Result") == "success"
    assert (h.m.docker_dir / "image/overlay2/repositories.json").stat().st_mtime_ns == before


def test_sigkill_in_the_window_is_recovered_at_the_next_boot(nspawn, extrafs, build_dir, tmp):
    h = machine(nspawn, extrafs, build_dir, tmp, at_boot=True, listed=("app-a:1", "app-c:1"))
    h.m.reboot()
    assert {"app-a:1", "app-c:1"} <= h.tags()
    keeper(h)
    h.m.write("/etc/extrafs/images", "app-a:1\napp-c:1\napp-d:1\n")
    kill_in_the_window(h, "docker", "attach", "app-d:1", "--mount", MNT, "--restart")
    assert (h.m.docker_dir / JOURNAL).exists(), "no restart journal was left in the window"
    h.m.reboot()
    log = h.run("journalctl", "-b", "-u", UNIT, "--no-pager", "-o", "cat", check=False).stdout
    assert h.prop(UNIT, "Result") == "success", log
    assert "earlier boot" in log, f"the attach unit did not see the journal: {log}"
    assert not (h.m.docker_dir / JOURNAL).exists(), "the journal is still there after the boot"
    assert h.active("docker.service") == "active"
    assert {"app-a:1", "app-c:1", "app-d:1"} <= h.tags()
    assert h.marker("app-d:1") == "app-d-marker\n"
