"""The Debian package (debian/): built with `dpkg-buildpackage -us -uc -b` from the source tree
(or taken from $EXTRAFS_DEB), checked with lintian, then installed into a Debian host booted
with a real systemd as PID 1 and docker.io (the nspawn fixture), configured as an operator
would (an fstab line of type extrafs, /etc/extrafs/images, extrafs-attach@ enabled) and booted
again: the store is mounted at boot, the listed image registered before docker.service starts,
`docker run` of it works, and `apt-get remove` leaves no unit behind.

The container has no network, so the package's dependencies that the rootfs lacks are resolved
by apt on this host against the container's own dpkg status, downloaded from the configured
Debian mirror (kept in ROOTFS_CACHE/debs), copied in and installed with the package by one
`dpkg -i`."""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nspawn as nspawn_mod
import xf

SOURCE = xf.TESTS.parent
MAKE_SAVE_ARCHIVE = xf.TESTS / "integration" / "make_save_archive.py"
DEB_CACHE = nspawn_mod.ROOTFS_CACHE / "debs"


def project_version() -> str:
    out = xf.run(["meson", "introspect", "--projectinfo", SOURCE / "meson.build"], timeout=60).stdout
    return json.loads(out)["version"]


def source_files() -> list[str]:
    """The files of the source tree: what git tracks plus new files it does not ignore (a
    worktree's uncommitted work is what is tested; build directories are ignored)."""
    p = xf.run(["git", "-C", SOURCE, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
               timeout=60)
    files = [f for f in p.stdout.split("\0") if f]
    assert "debian/rules" in files, f"debian/rules is not in {SOURCE}"
    return [f for f in files if os.path.lexists(SOURCE / f)]


def copy_source(dest: Path) -> Path:
    for f in source_files():
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(SOURCE / f, dest / f, follow_symlinks=False)
    return dest


@pytest.fixture(scope="module")
def deb():
    """(path of extrafs_VERSION_ARCH.deb, version, directory it was unpacked into)."""
    version = project_version()
    work = xf.short_tmpdir("xf-deb-")
    try:
        given = os.environ.get("EXTRAFS_DEB")
        if given:
            path = Path(given).resolve()
        else:
            src = copy_source(work / f"extrafs-{version}")
            # nocheck: the package build runs no test (debian/rules says why); parallel=2: the
            # machine's two cores.
            log = work / "dpkg-buildpackage.log"
            with open(log, "w") as out:
                p = subprocess.run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=2400,
                                   env=dict(os.environ, DEB_BUILD_OPTIONS="nocheck parallel=2"))
            if p.returncode != 0:
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                raise AssertionError(f"dpkg-buildpackage failed (exit {p.returncode}):\n{tail}")
            arch = xf.run(["dpkg", "--print-architecture"]).stdout.strip()
            path = work / f"extrafs_{version}_{arch}.deb"
            assert path.is_file(), f"dpkg-buildpackage made no {path.name}: {sorted(os.listdir(work))}"
        unpacked = work / "unpacked"
        xf.run(["dpkg-deb", "-x", path, unpacked], timeout=120)
        yield path, version, unpacked
    finally:
        xf.remove_tree(work)


def test_package_holds_the_programs_units_pages_and_docs(deb):
    path, version, root = deb
    field = lambda f: xf.run(["dpkg-deb", "-f", path, f]).stdout.strip()
    assert field("Package") == "extrafs"
    assert field("Version") == version
    assert path.name == f"extrafs_{version}_{field('Architecture')}.deb"
    for f in ("usr/sbin/extrafs", "sbin/mount.extrafs", "usr/libexec/extrafs-attach-listed",
              "usr/libexec/docker/cli-plugins/docker-extrafs"):
        assert os.access(root / f, os.X_OK), f"{f} missing or not executable in the package"
    unit = root / "lib/systemd/system/extrafs-attach@.service"
    assert "ExecStart=/usr/libexec/extrafs-attach-listed %f /etc/extrafs/images" in unit.read_text()
    docs = root / "usr/share/doc/extrafs"
    assert (docs / "copyright").is_file()
    assert any((docs / n).is_file() for n in ("README.md", "README.md.gz"))

    # Every page of man/ is installed, and each names the project's version (filled in by meson).
    pages = sorted(p.name for p in (SOURCE / "man").iterdir() if re.fullmatch(r".*\.[1-8]", p.name))
    for name in pages:
        page = root / f"usr/share/man/man{name[-1]}/{name}.gz"
        assert page.is_file(), f"man page {name} not in the package"
        th = gzip.decompress(page.read_bytes()).decode().splitlines()[0]
        assert th.startswith(".TH ") and f'"extrafs {version}"' in th, f"{name}: {th!r}"

    # The packaged binary reports the same version (libraries: this host's, the same release).
    out = xf.run([root / "usr/sbin/extrafs", "--version"]).stdout.strip()
    assert out == f"extrafs {version}"
    # The docker CLI plugin, where docker looks for the system's plugins, says the same version.
    meta = json.loads(xf.run([root / "usr/libexec/docker/cli-plugins/docker-extrafs", "docker-cli-plugin-metadata"]).stdout)
    assert meta["SchemaVersion"] == "0.1.0" and meta["Version"] == version, meta


def test_package_build_refuses_a_changelog_version_other_than_meson(tmp):
    version = project_version()
    src = copy_source(tmp / "src")
    changelog = src / "debian" / "changelog"
    text = changelog.read_text()
    assert text.startswith(f"extrafs ({version}) "), f"debian/changelog does not start with {version}"
    changelog.write_text(text.replace(f"extrafs ({version}) ", "extrafs (99.0) ", 1))
    p = xf.run(["debian/rules", "override_dh_auto_configure"], cwd=src, check=False, timeout=120)
    assert p.returncode != 0
    assert f"debian/changelog says 99.0 but meson.build says {version}" in p.stderr, p.stderr
    assert not (src / "obj-x86_64-linux-gnu").exists() and not list(src.glob("obj-*")), "configured anyway"


def test_lintian_finds_no_error(deb):
    path, _, _ = deb
    p = xf.run(["lintian", "--fail-on", "error", "--no-tag-display-limit", path], timeout=600, check=False)
    print(p.stdout)
    errors = [l for l in p.stdout.splitlines() if l.startswith("E:")]
    assert p.returncode == 0 and not errors, f"lintian (exit {p.returncode}): {errors or p.stderr}"


def dependencies_for(deb_path: Path, machine_root: Path) -> list[Path]:
    """The .deb files of the packages deb_path needs that the machine lacks: apt on this host
    resolves them against the machine's dpkg status and downloads them into DEB_CACHE (files
    already there are reused)."""
    (DEB_CACHE / "partial").mkdir(parents=True, exist_ok=True)
    lock = os.open(DEB_CACHE / "lock.extrafs", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        opts = ["--no-install-recommends", "-y", "-o", f"Dir::State::status={machine_root}/var/lib/dpkg/status",
                "-o", f"Dir::Cache::archives={DEB_CACHE}"]
        plan = xf.run(["apt-get", "install", "--simulate", *opts, deb_path], timeout=300).stdout
        wanted = [(n, v) for n, v in re.findall(r"^Inst (\S+) (?:\[[^]]*\] )?\((\S+) ", plan, re.M)
                  if n != "extrafs"]
        xf.run(["apt-get", "install", "--download-only", *opts, deb_path], timeout=900)
    finally:
        os.close(lock)
    debs = []
    for name, version in wanted:
        found = sorted(DEB_CACHE.glob(f"{name}_{version.replace(':', '%3a')}_*.deb"))
        assert found, f"apt-get downloaded no {name} {version} into {DEB_CACHE}"
        debs.append(found[0])
    return debs


def unit_times(m, unit: str, *props: str) -> list[int]:
    out = m.run(["systemctl", "show", unit] + [f"--property={p}" for p in props]).stdout
    kv = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return [int(kv[p]) for p in props]


def test_installed_package_mounts_at_boot_attaches_before_docker_and_removes_clean(deb, nspawn, extrafs, tmp):
    path, version, _ = deb
    # A store with one busybox image, published on "the build host" (this one), bound into the
    # machine where an operator would have it mounted over NFS.
    bb = tmp / "bb"
    (bb / "bin").mkdir(parents=True)
    (bb / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())  # busybox-static
    (bb / "bin" / "busybox").chmod(0o755)
    (bb / "bin" / "sh").symlink_to("busybox")
    xf.run([sys.executable, MAKE_SAVE_ARCHIVE, tmp / "bb.tar", "bb:1", bb])
    store = tmp / "store"
    xf.run([extrafs, "publish", "--archive", tmp / "bb.tar", "--to", store], timeout=120)

    m = nspawn({store: "/srv/store"})
    debs = dependencies_for(path, m.root)
    m.copy_in(path, f"/root/pkg/{path.name}")
    for d in debs:
        m.copy_in(d, f"/root/pkg/deps/{d.name}")
    m.run("dpkg -i /root/pkg/deps/*.deb /root/pkg/*.deb" if debs else "dpkg -i /root/pkg/*.deb",
          timeout=300)
    assert m.run(["extrafs", "--version"]).stdout.strip() == f"extrafs {version}"
    m.run(["test", "-f", "/usr/share/man/man8/extrafs-mount.8.gz"])

    # The operator's configuration, then a boot.
    m.run(["mkdir", "-p", "/mnt/extrafs"])
    m.write("/etc/fstab", m.read("/etc/fstab") +
            "/srv/store /mnt/extrafs extrafs cache_size=64M,x-systemd.before=docker.service 0 0\n")
    m.write("/etc/extrafs/images", "# images of this host\nbb:1\n")
    attach = m.run(["systemd-escape", "--path", "--template=extrafs-attach@.service",
                    "/mnt/extrafs"]).stdout.strip()
    assert attach == "extrafs-attach@mnt-extrafs.service"
    m.run(["systemctl", "enable", attach])
    m.reboot()

    # Mounted at boot from fstab, through /sbin/mount.extrafs.
    assert m.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE", "/mnt/extrafs"]).stdout.split() == \
        ["fuse.extrafs", "/srv/store"]
    assert m.run(["systemctl", "show", "-P", "SourcePath", "mnt-extrafs.mount"]).stdout.strip() == "/etc/fstab"
    # The mount, then the attach, then dockerd.
    assert m.run(["systemctl", "is-active", attach]).stdout.strip() == "active"
    mounted, = unit_times(m, "mnt-extrafs.mount", "ActiveEnterTimestampMonotonic")
    a_start, a_end = unit_times(m, attach, "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic")
    d_start, = unit_times(m, "docker.service", "ExecMainStartTimestampMonotonic")
    assert 0 < mounted <= a_start < a_end <= d_start, (mounted, a_start, a_end, d_start)
    assert m.run(["systemctl", "show", "-P", "ExecMainStatus", attach]).stdout.strip() == "0"

    # dockerd found the image at start-up; its layer is served by the mount.
    images = m.run(["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"]).stdout.split()
    assert "bb:1" in images, images
    diffs = m.run("for d in /var/lib/docker/overlay2/*/diff; do readlink \"$d\"; done").stdout.split()
    assert any(d.startswith("/mnt/extrafs/overlay2/") for d in diffs), diffs
    out = m.run(["docker", "run", "--rm", "--network", "none", "bb:1", "/bin/busybox", "sha256sum",
                 "/bin/busybox"]).stdout.split()[0]
    assert out == hashlib.sha256(Path("/bin/busybox").read_bytes()).hexdigest()
    # The docker CLI finds the plugin where the package put it; with the one mount of the machine
    # it lists bb:1 as attached to this dockerd.
    listed = m.run(["docker", "extrafs", "images"]).stdout.splitlines()
    assert any(l.split()[:2] == ["bb", "1"] and l.split()[-1] == "yes" for l in listed[1:]), listed
    stats = json.loads(m.run(["extrafs", "stats", "/mnt/extrafs", "--json"]).stdout)
    assert stats["bytes_served"] > 0 and stats["bytes_fetched"] > 0, stats

    # Removal: the programs, the template and the enabled instance all go.
    m.run(["apt-get", "remove", "-y", "extrafs"], timeout=300)
    status = m.run(["dpkg-query", "-W", "-f=${Status}", "extrafs"], check=False).stdout
    assert "install ok installed" not in status, status
    for f in ("/usr/sbin/extrafs", "/sbin/mount.extrafs", "/usr/libexec/extrafs-attach-listed",
              "/usr/libexec/docker/cli-plugins/docker-extrafs"):
        assert m.run(["test", "-e", f], check=False).returncode == 1, f"{f} left after apt-get remove"
    left = m.run(["find", "/etc/systemd", "/usr/lib/systemd", "/run/systemd/system", "-name", "extrafs*"]).stdout.split()
    assert not left, f"unit files or links left after apt-get remove: {left}"
    units = m.run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "extrafs*"]).stdout.strip()
    assert not units, f"units still loaded after apt-get remove: {units}"
    # (exit 1 when nothing matches)
    files = m.run(["systemctl", "list-unit-files", "--no-legend", "extrafs*"], check=False).stdout.strip()
    assert not files, f"unit files still known after apt-get remove: {files}"
    assert m.run(["systemctl", "is-system-running"], check=False).stdout.strip() == "running"
    # What removal leaves alone: the running mount (its daemon serves until unmounted) and the
    # registered image.
    out = m.run(["docker", "run", "--rm", "--network", "none", "bb:1", "/bin/busybox", "true"], check=False)
    assert out.returncode == 0, f"docker run after apt-get remove: {out.stderr}"
    assert m.run(["findmnt", "-n", "-o", "FSTYPE", "/mnt/extrafs"]).stdout.strip() == "fuse.extrafs"
