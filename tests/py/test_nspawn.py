"""The nspawn fixture itself, against a real systemd as PID 1 (tests/py/nspawn.py): the machine
boots to "running", docker.service runs under systemd with a working `docker run`, FUSE works
inside, a reboot keeps what was written and powering off leaves nothing behind on the host.
If these fail, every test that boots a machine would fail for the wrong reason."""
import hashlib
import sys
from pathlib import Path

import nspawn as nspawn_mod
import xf

MAKE_SAVE_ARCHIVE = xf.TESTS / "integration" / "make_save_archive.py"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def busybox_tree(dest: Path) -> Path:
    """A one-program root: /bin/busybox (static) and /bin/sh."""
    (dest / "bin").mkdir(parents=True)
    (dest / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())  # busybox-static
    (dest / "bin" / "busybox").chmod(0o755)
    (dest / "bin" / "sh").symlink_to("busybox")
    return dest


def test_boots_runs_docker_and_powers_off(nspawn, tmp):
    m = nspawn()
    assert m.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
    assert m.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    assert m.run(["hostname"]).stdout.strip() == m.name

    # docker.service is dockerd under systemd, storing on the bound host directory.
    assert m.run(["systemctl", "is-active", "docker.service"]).stdout.strip() == "active"
    main_pid = m.run(["systemctl", "show", "-P", "MainPID", "docker.service"]).stdout.strip()
    assert m.run(["cat", f"/proc/{main_pid}/comm"]).stdout.strip() == "dockerd"
    assert m.run(["docker", "info", "--format", "{{.Driver}}"]).stdout.strip() == "overlay2"

    m.copy_in(busybox_tree(tmp / "bb"), "/root/bb")
    m.run("tar -C /root/bb -c . | docker import - bb:1")
    out = m.run(["docker", "run", "--rm", "--network", "none", "bb:1", "/bin/busybox", "cat",
                 "/proc/1/cmdline"])
    assert out.stdout.strip("\0\n") == "/bin/busybox\0cat\0/proc/1/cmdline", "not run as a container's PID 1"
    assert (m.docker_dir / "image" / "overlay2" / "repositories.json").is_file(), \
        "dockerd inside did not store into the bound /var/lib/docker"

    init = m.init
    cgroups = [r / m.cgroup for r in nspawn_mod.CGROUP_ROOTS]
    assert all(c.is_dir() for c in cgroups)
    m.poweroff()
    assert not xf.process_alive(init), f"the container's systemd {init} outlived poweroff"
    assert not any(c.exists() for c in cgroups), f"cgroups left after poweroff: {cgroups}"


def test_reboot_keeps_what_was_written_and_the_cache_stays_clean(nspawn):
    m = nspawn()
    m.write("/etc/xf-marker", "one\n")
    first_init = m.init
    m.reboot()
    assert m.init != first_init
    assert m.read("/etc/xf-marker") == "one\n"
    assert m.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
    assert not (m.rootfs / "etc" / "xf-marker").exists(), "a machine wrote into the cached rootfs"
    # A second machine boots from the same cache without what the first one wrote.
    other = nspawn()
    assert other.run(["test", "-e", "/etc/xf-marker"], check=False).returncode == 1


def test_fuse_works_inside(nspawn, extrafs, tmp):
    # A store with one busybox image, bound in read-only and served by the build's extrafs
    # (with the libraries the rootfs lacks) from inside the container.
    archive = tmp / "bb.tar"
    xf.run([sys.executable, MAKE_SAVE_ARCHIVE, archive, "bb:1", busybox_tree(tmp / "bb")])
    store = tmp / "store"
    xf.run([extrafs, "publish", "--archive", archive, "--to", store], timeout=120)
    m = nspawn({store: "/srv/store"})
    m.install_program(extrafs, "/usr/local/sbin/extrafs")
    m.run(["mkdir", "-p", "/mnt/x"])
    m.run(["extrafs", "mount", "/srv/store", "/mnt/x", "-o", "cache=/var/cache/x,cache_size=64M"], timeout=60)
    assert m.run(["findmnt", "-n", "-o", "FSTYPE", "/mnt/x"]).stdout.strip() == "fuse.extrafs"
    served = m.run("sha256sum /mnt/x/overlay2/*/diff/bin/busybox").stdout.split()[0]
    assert served == sha(Path("/bin/busybox").read_bytes())
    # The mount is the container's: the host does not see it.
    assert not any(p.endswith("/mnt/x") for p in xf.mountpoints())
    m.run(["extrafs", "unmount", "/mnt/x"], timeout=60)
