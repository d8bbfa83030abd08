"""`extrafs docker attach|detach --restart` never leaves dockerd down and never loses a tag
(issue 20 section 4), against real parts: a store published from `docker save`-shaped archives,
a real extrafs mount of it, private dockerds with live-restore (tests/docker/dockerd.sh) running a
container that must keep running with the same pid.

"The window" is the time between dockerd being asked to stop and being started again. A test
finds it by dockerd's own log line for the SIGTERM it got ("Processing signal 'terminated'"):
from then until the restarted dockerd answers, a signal must not end extrafs, and a SIGKILL must
be recovered by the next extrafs docker command (the restart journal in the data-root).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import hostile
import xf

JOURNAL = "extrafs-restart.json"


def xattach(extrafs, images: xf.Images, root: Path, *refs, restart=False, check=True, timeout=180):
    cmd = [extrafs, "docker", "attach", *refs, "--mount", images.mnt, "--data-root", root]
    return xf.run(cmd + (["--restart"] if restart else []), check=check, timeout=timeout)


def cmdline(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def environ(pid: int) -> set[bytes]:
    return set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))


def dockerd_down(d: xf.Dockerd, old_pid: int, settle: float = 3.0) -> bool:
    """Whether the dockerd of `d` is down and stays down for `settle` seconds: its old process has
    exited, no new one wrote its pid file, its API does not answer."""
    xf.wait_until(lambda: not xf.process_alive(old_pid), 60, f"dockerd {old_pid} to exit")
    time.sleep(settle)
    pid = d.current_pid()
    return not (pid and xf.process_alive(pid)) and not d.answers()


def in_the_window(d: xf.Dockerd, proc: subprocess.Popen, log_offset: int, timeout=60):
    """Waits until dockerd has logged the SIGTERM it got from `proc` (the stop of a --restart):
    from then on `proc` is in the window. Fails if `proc` ended before."""
    def stopped():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"extrafs ended (exit {proc.returncode}) before dockerd was asked to stop: "
                                 f"stdout {out!r} stderr {err!r}")
        with open(d.log, "rb") as f:
            f.seek(log_offset)
            return b"Processing signal 'terminated'" in f.read()
    xf.wait_until(stopped, timeout, "dockerd to be asked to stop", interval=0.005)


def start_restart(extrafs, images: xf.Images, root: Path, *refs) -> subprocess.Popen:
    """`extrafs docker attach REFS --restart` in its own session (like a command on a terminal,
    whose process group gets the terminal's signals)."""
    cmd = [str(extrafs), "docker", "attach", *refs, "--mount", str(images.mnt), "--data-root", str(root), "--restart"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=default_signals)


def default_signals():
    """A terminal's command starts with the signals' default actions. The suite itself may have
    been started with some ignored (under `nohup`, SIGHUP is; a shell's background job ignores
    SIGINT), and an ignored disposition is inherited: extrafs then rightly leaves the signal
    ignored, and the tests of what it does with them would test nothing."""
    for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)


def test_sigkill_in_the_window_is_recovered_by_the_next_command(extrafs, images, dockerd, tmp):
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    old = d.current_pid()
    old_cmdline, old_env = cmdline(old), environ(old)
    proc = start_restart(extrafs, images, root, "app-b:1")
    in_the_window(d, proc, d.log.stat().st_size)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert dockerd_down(d, old), "the SIGKILL did not land in the window: dockerd answered again"
    journal = json.loads((root / JOURNAL).read_text()) if (root / JOURNAL).exists() else {}

    # The next command, whatever it is, starts dockerd again first.
    p = xattach(extrafs, images, root, "app-c:1", restart=True)
    print(p.stdout)
    assert d.answers(), f"dockerd does not answer after the next extrafs docker command: {p.stdout}"
    assert "was started again" in p.stdout, p.stdout
    assert journal.get("dockerd", {}).get("pid") == old, f"the journal left in the window: {journal}"
    new = d.current_pid()
    assert new != old and xf.process_alive(new)
    assert cmdline(new) == old_cmdline, "dockerd was not started with its own command line"
    assert environ(new) == old_env, "dockerd was not started with its own environment"
    assert os.readlink(f"/proc/{new}/fd/1") == str(d.log), "dockerd's stdout is not its log file any more"
    assert xf.container_pid(d) == keeper, "the container did not keep running through it all"
    assert not (root / JOURNAL).exists(), "the journal stayed after dockerd answered"
    # The interrupted attach is finished by running it again.
    xattach(extrafs, images, root, "app-b:1", restart=True)
    assert {"app-a:1", "app-b:1", "app-c:1"} <= xf.docker_tags(d), xf.docker_tags(d)
    out = d.docker("run", "--rm", "--network", "none", "app-b:1", "/bin/busybox", "cat", "/etc/marker").stdout
    assert out == "app-b-marker\n"
    assert xf.container_pid(d) == keeper


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_in_the_window_waits_until_dockerd_is_back(extrafs, images, dockerd, tmp, sig):
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    old = d.current_pid()
    proc = start_restart(extrafs, images, root, "app-b:1")
    in_the_window(d, proc, d.log.stat().st_size)
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C (or hangup) reaches the whole process group
    out, err = proc.communicate(timeout=180)
    print(out, err)
    assert d.answers(), f"dockerd is down after {sig.name} in the window; extrafs said {out!r} {err!r}"
    assert d.current_pid() != old
    assert proc.returncode == -sig, f"extrafs did not end by {sig.name} once done: exit {proc.returncode}, {err!r}"
    assert "attached app-b:1" in out and "dockerd restarted" in out, out
    assert "dockerd was stopped" in err and len(err.strip().splitlines()) == 1, err
    assert "app-b:1" in xf.docker_tags(d)
    assert xf.container_pid(d) == keeper
    assert not (root / JOURNAL).exists()


def test_dockerd_started_in_a_deleted_directory_is_restarted(extrafs, images, dockerd, tmp):
    root = tmp / "root"
    here = tmp / "was-here"
    here.mkdir()
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root, cwd=here)
    here.rmdir()
    assert os.readlink(f"/proc/{d.current_pid()}/cwd").endswith(" (deleted)")
    old = d.current_pid()
    p = xattach(extrafs, images, root, "app-b:1", restart=True, check=False)
    assert p.returncode == 0, p.stderr
    assert d.answers() and d.current_pid() != old, "dockerd was not started again"
    assert os.readlink(f"/proc/{d.current_pid()}/cwd") == "/"
    assert xf.container_pid(d) == keeper


def test_a_directory_named_deleted_is_still_its_working_directory(extrafs, images, dockerd, tmp):
    root = tmp / "root"
    here = tmp / "x (deleted)"
    here.mkdir()
    d, _ = xf.dockerd_with_keeper(extrafs, images, dockerd, root, cwd=here)
    xattach(extrafs, images, root, "app-b:1", restart=True)
    assert d.answers()
    assert os.readlink(f"/proc/{d.current_pid()}/cwd") == str(here)


def test_concurrent_restarts_lose_no_tag(extrafs, images, dockerd, tmp):
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    want = {"app-a:1"}
    # Rounds of two runs started together: each must wait for the other's whole restart.
    for pair in (("app-b:1", "app-c:1"), ("app-d:1", "app-e:1"), ("app-f:1", "app-g:1")):
        results = {}

        def attach(ref):
            results[ref] = xattach(extrafs, images, root, ref, restart=True, check=False, timeout=600)

        threads = [threading.Thread(target=attach, args=(r,)) for r in pair]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for ref, p in results.items():
            print(p.stdout)
            assert p.returncode == 0, f"attach {ref}: exit {p.returncode}: {p.stderr}"
        want |= set(pair)
        assert d.answers()
        assert want <= xf.docker_tags(d), f"dockerd lost a tag: it lists {xf.docker_tags(d)}"
    # dockerd's own copy, which it writes from memory, has them all: once more through a restart.
    xf.run([extrafs, "docker", "detach", "app-a:1", "--data-root", root, "--restart"])
    want.discard("app-a:1")
    assert want <= xf.docker_tags(d), f"a tag was lost: {xf.docker_tags(d)}"
    repos = json.loads((root / "image/overlay2/repositories.json").read_text())["Repositories"]
    assert want <= {t for refs in repos.values() for t in refs}, repos
    assert xf.container_pid(d) == keeper


def test_all_with_tags_docker_refuses_in_the_store_never_restarts_then_fails(extrafs, tmp, mount, dockerd):
    forged = []
    store = tmp / "store"
    xf.publish_busybox_images(extrafs, tmp, store, tweak_after_first=lambda s: forged.extend(hostile.forged_tags(s)))
    images = xf.Images(store, mount(store).path)
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    old = d.current_pid()
    p = xattach(extrafs, images, root, "--all", restart=True, check=False)
    print(p.stdout, p.stderr)
    assert p.returncode == 0, f"exit {p.returncode}: {p.stderr}"
    lines = p.stderr.strip().splitlines()
    assert len(lines) == len(forged) and all(" warning " in l and ": skipping " in l for l in lines), p.stderr
    assert d.answers() and d.current_pid() != old
    assert {"app-a:1", "app-b:1", "app-c:1"} <= xf.docker_tags(d)
    kept = (root / "image/overlay2/repositories.json").read_text()
    assert not [k for k in forged if json.dumps(k)[1:-1] in kept], f"a forged key reached the data-root: {kept}"
    assert xf.container_pid(d) == keeper


def test_all_with_an_image_it_cannot_resolve_leaves_dockerd_alone(extrafs, tmp, mount, dockerd):
    store = tmp / "store"
    ghost = []
    xf.publish_busybox_images(extrafs, tmp, store, tweak_after_first=lambda s: ghost.append(hostile.tag_without_image(s)))
    images = xf.Images(store, mount(store).path)
    root = tmp / "root"
    d, keeper = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    old = d.current_pid()
    line = xf.expect_fail([extrafs, "docker", "attach", "--all", "--mount", images.mnt, "--data-root", root,
                           "--restart"], 1, ghost[0][7:])
    assert d.current_pid() == old and d.answers(), f"dockerd was restarted for nothing: {line}"
    assert not (root / JOURNAL).exists()
    assert xf.container_pid(d) == keeper


def test_a_fifo_in_the_mounts_metadata_leaves_dockerd_running(extrafs, tmp, mount, dockerd):
    def fifo(store):
        chain = next((store / "image/overlay2/layerdb/sha256").iterdir()).name  # app-a's only layer
        hostile.fifo_at(store, f"image/overlay2/layerdb/sha256/{chain}/tar-split.json.gz")

    store = tmp / "store"
    xf.publish_busybox_images(extrafs, tmp, store, tweak_after_first=fifo)
    images = xf.Images(store, mount(store).path)
    root = tmp / "root"
    root.mkdir()
    d = dockerd(root)
    old = d.current_pid()
    line = xf.expect_fail([extrafs, "docker", "attach", "app-b:1", "--mount", images.mnt, "--data-root", root,
                           "--restart"], 1, "tar-split.json.gz", timeout=60)
    assert d.current_pid() == old and d.answers(), f"dockerd was stopped: {line}"
    assert not (root / JOURNAL).exists()


def test_attach_without_restart_against_a_running_dockerd_changes_nothing(extrafs, images, dockerd, tmp):
    root = tmp / "root"
    d, _ = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    before = sorted(str(p.relative_to(root)) for p in (root / "image").rglob("*"))
    xf.expect_fail([extrafs, "docker", "attach", "app-b:1", "--mount", images.mnt, "--data-root", root], 1,
                   "--restart")
    after = sorted(str(p.relative_to(root)) for p in (root / "image").rglob("*"))
    assert before == after
    assert not list((root / "image/overlay2/layerdb/tmp").glob("extrafs-*")), "staged entries were left behind"


def test_an_attached_image_needs_no_restart(extrafs, images, dockerd, tmp):
    root = tmp / "root"
    d, _ = xf.dockerd_with_keeper(extrafs, images, dockerd, root)
    old = d.current_pid()
    p = xattach(extrafs, images, root, "app-a:1", restart=True)
    assert "already attached" in p.stdout and "restarted" not in p.stdout, p.stdout
    assert d.current_pid() == old
