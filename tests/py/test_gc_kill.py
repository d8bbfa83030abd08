"""Issue 18: `extrafs gc` killed (SIGKILL) at any point never leaves a store a host cannot mount
and read. Two ways to stop it: ten kills at random moments of a run in which gc pauses after each
deletion (EXTRAFS_GC_TEST_PAUSE_MS), spread over the whole run; and, for a packed and a
Hermes-style (plain, indexed) store, a kill right after each deletion in turn
(EXTRAFS_GC_TEST_KILL_AFTER=N, gc raising SIGKILL itself). After each kill a fresh mount reads
every remaining image whole, `extrafs verify` passes, and a second gc finishes the job: what the
killed one left unnamed goes once it is an hour old, as files of a killed writer do, and then
the store holds exactly what a whole run leaves."""
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

import xf

RUNS = 10
PAUSE_MS = 25


def files_under(root):
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}


def copy_store(src, dst):
    xf.run(["cp", "-a", src, dst])
    return dst


def make_store(extrafs, tmp, images, kind):
    """The three images (packed by publish, or as a Hermes-style store of plain trees indexed by
    `extrafs index`), c:1 removed, and a stray temporary old enough to go."""
    packed = tmp / "packed"
    for tag in images.archives:
        xf.run([extrafs, "publish", "--archive", images.archives[tag], "--to", packed], timeout=300)
    store = packed
    if kind == "plain":
        # publish's image/ metadata and link/lower files, with each layer's files as a plain diff/
        # tree and docker's l/ symlinks: what `cp -a` of a data-root gives.
        store = tmp / "plain"
        store.mkdir()
        for part in ("image", "overlay2"):
            xf.run(["cp", "-a", packed / part, store / part])
        (store / "overlay2" / "l").mkdir()
        for tag in images.images:
            for cid, src in zip(xf.image_layer_ids(store, tag), images.sources(tag)):
                if not (store / "overlay2" / cid / "diff").exists():
                    xf.run(["cp", "-a", src, store / "overlay2" / cid / "diff"])
                    link = (store / "overlay2" / cid / "link").read_text().strip()
                    os.symlink(f"../{cid}/diff", store / "overlay2" / "l" / link)
        xf.run([extrafs, "index", store], timeout=300)
    xf.run([extrafs, "rm", "c:1", "--from", store])
    stray = store / "extrafs" / "layers" / ".x.blob.tmp-1"  # pid 1 runs: the lock's clean-up leaves it
    stray.write_bytes(b"left by a writer on another host")
    os.utime(stray, (time.time() - 7200, time.time() - 7200))
    return store


def whole_gc(extrafs, pristine, dst, env=None):
    """A whole gc of a copy: the copy, what it deleted, how long it took."""
    full = copy_store(pristine, dst)
    t0 = time.monotonic()
    xf.run([extrafs, "gc", full, "--grace", "0"], env=env)
    doomed = files_under(pristine) - files_under(full)
    assert len(doomed) >= 10, f"too little for gc to delete: {sorted(doomed)}"
    assert any(".index" in d for d in doomed) and any("catalog.d/" in d for d in doomed), sorted(doomed)
    return full, doomed, time.monotonic() - t0


def check_after_kill(extrafs, mount, images, store, full, what):
    # A host mounting the store now reads every remaining image whole.
    m = mount(store)
    for tag in ("a:1", "b:1"):
        for cid, src in zip(xf.image_layer_ids(m.path, tag), images.sources(tag)):
            xf.check_layer_served(m.path, cid, src)
    m.unmount()
    xf.run([extrafs, "verify", store], timeout=120)
    xf.run([extrafs, "ls", store])
    hour_ago = time.time() - 7200
    for q in store.rglob("*"):
        os.utime(q, (hour_ago, hour_ago), follow_symlinks=False)
    xf.run([extrafs, "gc", store, "--grace", "0"])
    diff = sorted(files_under(store) ^ files_under(full))
    assert not diff, f"{what}: after a second gc the store differs from a whole gc's: {diff[:10]}"


def test_gc_killed_at_random_moments_leaves_a_store_every_host_can_mount_and_read(extrafs, tmp, three_images, mount):
    pristine = make_store(extrafs, tmp, three_images, "packed")
    env = {"EXTRAFS_GC_TEST_PAUSE_MS": str(PAUSE_MS)}
    full, doomed, duration = whole_gc(extrafs, pristine, tmp / "full", env)
    rng = random.Random(1818)
    landed = {"before": 0, "between": 0, "after": 0}
    for i in range(RUNS):
        store = copy_store(pristine, tmp / f"run{i}")
        p = subprocess.Popen([str(extrafs), "gc", str(store), "--grace", "0"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, **env})
        time.sleep(duration * (i + rng.random()) / RUNS)  # run i dies in the i-th tenth of gc's run
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        left = {d for d in doomed if (store / d).exists() or (store / d).is_symlink()}
        landed["before" if left == doomed else "after" if not left else "between"] += 1
        check_after_kill(extrafs, mount, three_images, store, full, f"run {i}")
        shutil.rmtree(store)
    print(f"{RUNS} kills over {duration:.2f} s of gc: {landed}")
    assert landed["between"] >= RUNS // 2, f"too few kills landed between two deletions: {landed}"


@pytest.mark.parametrize("kind", ["packed", "plain"])
def test_gc_killed_after_each_deletion_leaves_a_store_every_host_can_mount_and_read(extrafs, tmp, three_images, mount, kind):
    pristine = make_store(extrafs, tmp, three_images, kind)
    full, doomed, _ = whole_gc(extrafs, pristine, tmp / "full")
    if kind == "plain":
        assert any("/diff/" in d for d in doomed) and any(d.startswith("overlay2/l/") for d in doomed), sorted(doomed)
    n = 1
    while True:
        store = copy_store(pristine, tmp / f"kill{n}")
        r = xf.run([extrafs, "gc", store, "--grace", "0"], check=False, env={"EXTRAFS_GC_TEST_KILL_AFTER": str(n)})
        left = {d for d in doomed if (store / d).exists() or (store / d).is_symlink()}
        if r.returncode == 0:  # fewer than n deletions: the whole run
            assert not left
            break
        assert r.returncode == -signal.SIGKILL, f"gc: exit {r.returncode}: {r.stderr}"
        assert left != doomed, f"killed after deletion {n}, yet all {len(doomed)} files are there"
        check_after_kill(extrafs, mount, three_images, store, full, f"killed after deletion {n}")
        shutil.rmtree(store)
        n += 1
    print(f"{kind}: killed after each of {n - 1} deletions")
    assert n > 8
