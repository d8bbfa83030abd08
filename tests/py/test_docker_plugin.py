"""`docker extrafs pull|images|rmi`, the docker CLI plugin (issue 22), against real parts: the
real docker CLI (/usr/bin/docker, Debian's 20.10) finding docker-extrafs in $DOCKER_CONFIG/cli-plugins,
a real extrafs mount of a published store of busybox images (the `images` fixture), and private
dockerds with live-restore on (or off) holding a container that must keep running."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

import xf

DOCKER = "/usr/bin/docker"


class Cli:
    """The docker CLI with a private DOCKER_CONFIG whose cli-plugins/ holds the docker-extrafs
    under test, talking to `host` through DOCKER_HOST (or, with host="", to what the config says:
    no DOCKER_HOST or DOCKER_CONTEXT in its environment at all)."""

    def __init__(self, config: Path, host: str = ""):
        self.config, self.host = config, host

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
        env["DOCKER_CONFIG"] = str(self.config)
        if self.host:
            env["DOCKER_HOST"] = self.host
        return env

    def run(self, *args, check=True, timeout=180) -> subprocess.CompletedProcess:
        p = subprocess.run([DOCKER, *map(str, args)], capture_output=True, text=True, errors="backslashreplace",
                           env=self.env(), timeout=timeout, stdin=subprocess.DEVNULL)
        if check and p.returncode != 0:
            raise AssertionError(f"docker {' '.join(map(str, args))}: exit {p.returncode}\nstdout: {p.stdout}\n"
                                 f"stderr: {p.stderr}")
        return p

    def fails(self, code: int, *args, needles=()) -> str:
        """One line on stderr naming one of `needles`, exit `code` (xf.expect_fail)."""
        return xf.expect_fail([DOCKER, *args], code, *needles, timeout=180, env=self.env())


@pytest.fixture
def plugin_config(build_dir, tmp) -> Path:
    """A DOCKER_CONFIG directory whose cli-plugins/ holds the docker-extrafs of the build."""
    binary = build_dir / "tools" / "docker-extrafs"
    assert os.access(binary, os.X_OK), f"{binary} is not built"
    cfg = tmp / "docker-config"
    (cfg / "cli-plugins").mkdir(parents=True)
    os.symlink(binary, cfg / "cli-plugins" / "docker-extrafs")
    return cfg


def test_docker_info_lists_the_plugin_with_the_project_version(extrafs, plugin_config, dockerd, tmp):
    d = dockerd(tmp / "root")
    out = Cli(plugin_config, d.host).run("info").stdout
    version = xf.run([extrafs, "--version"]).stdout.split()[-1]
    # docker 20.10 lists a plugin as "NAME: DESCRIPTION (VENDOR, VERSION)".
    assert "  extrafs: " in out and f"(extrafs, {version})" in out, out
    help_text = Cli(plugin_config, d.host).run("extrafs", "--help").stdout
    assert all(c in help_text for c in ("pull", "images", "rmi")), help_text


def test_pull_then_run_and_a_second_pull_is_a_no_op(extrafs, images, plugin_config, dockerd, tmp):
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    old = d.current_pid()
    cli = Cli(plugin_config, d.host)
    p = cli.run("extrafs", "pull", "app-b:1", "app-c:1", "--mount", images.mnt)
    print(p.stdout, p.stderr)
    assert "Status: Attached image for app-b:1" in p.stdout and "Status: Attached image for app-c:1" in p.stdout, p.stdout
    assert "dockerd restarted" in p.stdout, p.stdout
    assert d.current_pid() != old and d.answers()
    assert xf.container_pid(d) == keeper, "the container did not keep running"
    out = cli.run("run", "--rm", "--network", "none", "app-b:1", "/bin/busybox", "cat", "/etc/marker").stdout
    assert out == "app-b-marker\n"

    # Again: nothing to do, and dockerd is left alone.
    now = d.current_pid()
    p = cli.run("extrafs", "pull", "app-b:1", "--mount", images.mnt)
    assert "Status: Image is up to date for app-b:1" in p.stdout and "restarted" not in p.stdout, p.stdout
    assert d.current_pid() == now


def test_images_lists_the_mount_with_cached_and_attached_through_the_current_context(extrafs, images, plugin_config,
                                                                                     dockerd, tmp):
    root = tmp / "root"
    d, _ = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    # No DOCKER_HOST: the context named in config.json says where the daemon is.
    name = "xf-test"
    meta = plugin_config / "contexts" / "meta" / hashlib.sha256(name.encode()).hexdigest()
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {},
                                                "Endpoints": {"docker": {"Host": d.host, "SkipTLSVerify": False}}}))
    (plugin_config / "config.json").write_text(json.dumps({"currentContext": name}))
    cli = Cli(plugin_config)
    out = cli.run("extrafs", "images", "--mount", images.mnt).stdout
    print(out)
    lines = out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "SIZE", "CACHED", "ATTACHED"], lines[0]
    rows = {(l.split()[0], l.split()[1]): l.split() for l in lines[1:]}
    assert set(rows) == {(f"app-{n}", "1") for n in "abcdefg"}, rows
    assert rows[("app-a", "1")][-1] == "yes" and rows[("app-b", "1")][-1] == "no", rows
    # The cached share is the one `extrafs ls` reports for the same image.
    ls = xf.run([extrafs, "ls", images.mnt]).stdout
    ls_cached = {l.split()[0]: l.split()[-1] for l in ls.splitlines() if re.match(r"[0-9a-f]{12} ", l)}
    assert {r[2]: r[4] for r in rows.values()} == {r[2]: ls_cached[r[2]] for r in rows.values()}, ls
    assert all(r[4].endswith("%") for r in rows.values()), rows
    # A context whose endpoint is not local is refused in one line.
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Endpoints": {"docker": {"Host": "tcp://127.0.0.1:1"}}}))
    line = xf.expect_fail([DOCKER, "extrafs", "images", "--mount", images.mnt], 1, "tcp://127.0.0.1:1",
                          env={"DOCKER_CONFIG": plugin_config})
    assert "context xf-test" in line, line


def test_rmi_detaches_and_the_container_keeps_running(extrafs, images, plugin_config, dockerd, tmp):
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    cli = Cli(plugin_config, d.host)
    cli.run("extrafs", "pull", "app-c:1", "--mount", images.mnt)
    assert "app-c:1" in xf.docker_tags(d)
    old = d.current_pid()
    p = cli.run("extrafs", "rmi", "app-c:1")
    print(p.stdout)
    assert "Untagged: app-c:1" in p.stdout and "Deleted: sha256:" in p.stdout and "dockerd restarted" in p.stdout, p.stdout
    assert "app-c:1" not in xf.docker_tags(d) and "app-a:1" in xf.docker_tags(d)
    assert d.current_pid() != old and xf.container_pid(d) == keeper
    # One that is not there (any more): one line naming it, exit 1, dockerd left alone.
    now = d.current_pid()
    cli.fails(1, "extrafs", "rmi", "app-c:1", needles=("app-c:1",))
    assert d.current_pid() == now


def test_without_live_restore_pull_refuses_before_anything_changes(extrafs, images, plugin_config, dockerd, tmp):
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root, live_restore=False)
    old = d.current_pid()
    before = xf.tree_state(root / "image")
    Cli(plugin_config, d.host).fails(1, "extrafs", "pull", "app-b:1", "--mount", images.mnt, needles=("live-restore",))
    assert xf.tree_state(root / "image") == before, "the data-root changed"
    assert d.current_pid() == old and d.answers() and xf.container_pid(d) == keeper
    assert "app-b:1" not in xf.docker_tags(d)


def test_which_mount_two_then_docker_conf_then_the_only_one_then_none(extrafs, images, mount, plugin_config,
                                                                    dockerd, tmp):
    d = dockerd(tmp / "root")
    second = mount(images.store)  # the same store twice: two extrafs mounts
    conf = tmp / "docker.conf"
    conf.write_text(f"# which mount docker extrafs uses\nmount = {second.path}\n")
    # A private mount namespace where the other extrafs mounts of this machine (other tests')
    # are unmounted, to see the plugin choose by itself; the host's mounts are not touched.
    # Each step records its exit status and output; the assertions are below.
    cli = f"DOCKER_CONFIG={plugin_config} DOCKER_HOST={d.host} {DOCKER} extrafs images"
    script = f"""
set -e
awk -F' - ' '{{split($1, a, " "); split($2, b, " "); if (b[1] == "fuse.extrafs") print a[5]}}' /proc/self/mountinfo |
  sort -u | while IFS= read -r m; do
    m=$(printf '%b' "$m")
    [ "$m" = "{images.mnt}" ] || [ "$m" = "{second.path}" ] || umount -l "$m"
  done
step() {{ name=$1; shift; if "$@" > {tmp}/$name.out 2> {tmp}/$name.err; then echo 0; else echo $?; fi > {tmp}/$name.rc; }}
step two env EXTRAFS_DOCKER_CONF={tmp}/none.conf sh -c '{cli}'
step conf env EXTRAFS_DOCKER_CONF={conf} sh -c '{cli}'
umount -l {second.path}
step one env EXTRAFS_DOCKER_CONF={tmp}/none.conf sh -c '{cli}'
umount -l {images.mnt}
step none env EXTRAFS_DOCKER_CONF={tmp}/none.conf sh -c '{cli}'
"""
    xf.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], timeout=120)

    def step(name):
        return int((tmp / f"{name}.rc").read_text()), (tmp / f"{name}.out").read_text(), \
            (tmp / f"{name}.err").read_text().splitlines()

    rc, out, err = step("two")
    assert rc == 1 and len(err) == 1 and "2 extrafs mounts" in err[0] and "--mount" in err[0], (rc, err)
    for name in ("conf", "one"):
        rc, out, err = step(name)
        assert rc == 0 and "app-a   " in out, (name, rc, out, err)
    rc, out, err = step("none")
    assert rc == 1 and len(err) == 1 and "extrafs mount SOURCE MOUNTPOINT" in err[0], (rc, err)


def test_usage_errors_exit_2_and_a_remote_daemon_is_refused(plugin_config, tmp):
    env = {"DOCKER_CONFIG": plugin_config, "DOCKER_HOST": "unix:///nonexistent.sock"}
    xf.expect_fail([DOCKER, "extrafs", "pull"], 2, "IMAGE", env=env)
    xf.expect_fail([DOCKER, "extrafs", "pull", "Not A Ref"], 2, "Not A Ref", env=env)
    xf.expect_fail([DOCKER, "extrafs", "frobnicate"], 2, "frobnicate", env=env)
    xf.expect_fail([DOCKER, "extrafs", "images"], 1, "Cannot connect to the Docker daemon", env=env)
    xf.expect_fail([DOCKER, "extrafs", "images"], 1, "tcp://127.0.0.1:2375",
                   env={"DOCKER_CONFIG": plugin_config, "DOCKER_HOST": "tcp://127.0.0.1:2375"})
    xf.expect_fail([DOCKER, "-H", "tcp://127.0.0.1:2375", "extrafs", "pull", "x:1"], 1, "not a local unix socket",
                   env={"DOCKER_CONFIG": plugin_config})
