"""Issue 20 §7 (first two items): fstab's `comment=` option mounts (`extrafs mount` and
mount.extrafs, as mount(8) calls it for an fstab line with comment=x-gvfs-show); two `extrafs
mount` started at once on one mount point give one mount, the other refused with one line.
"""
import subprocess

import xf


def small_store(extrafs, tmp):
    base = tmp / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "name").write_text("base\n")
    return xf.publish_images(extrafs, tmp / "store", {"app:1": [base]}, tmp / "work")


def test_comment_option_mounts(extrafs, build_dir, mount, tmp):
    store = small_store(extrafs, tmp)
    m = mount(store.path, options="comment=x-gvfs-show")
    assert (m.path / "overlay2" / store.cids[0] / "diff" / "etc" / "name").read_text() == "base\n"
    m.unmount()
    # mount.extrafs with the options of an fstab line, as mount(8) passes them.
    helper = build_dir / "tools" / "mount.extrafs"
    mnt = tmp / "fstab-mnt"
    mnt.mkdir()
    try:
        xf.run([helper, store.path, mnt, "-o",
                f"rw,comment=x-gvfs-show,_netdev,x-systemd.before=docker.service,cache={tmp / 'c2'}"], timeout=60)
        assert xf.is_mounted(mnt)
        pids = xf.daemon_pids(mnt)
        xf.run([extrafs, "unmount", mnt], timeout=60)
        assert not xf.is_mounted(mnt)
        assert not [p for p in pids if xf.process_alive(p)]
    finally:
        xf.unmount_under(mnt)


def extrafs_mounts_at(path) -> int:
    real = str(path.resolve())
    n = 0
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == real and line.split(" - ")[1].split()[0] == "fuse.extrafs":
                n += 1
    return n


def test_two_mounts_at_once_on_one_mount_point_give_one(extrafs, tmp):
    store = small_store(extrafs, tmp)
    mnt = tmp / "mnt"
    mnt.mkdir()
    rounds = 5
    try:
        for r in range(rounds):
            # Two caches, so that only the mount point is shared (the cache has its own lock).
            procs = [subprocess.Popen([str(extrafs), "mount", str(store.path), str(mnt), "-o",
                                       f"cache={tmp / f'cache-{r}-{k}'},log_level=warn"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for k in range(2)]
            results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
            codes = sorted(rc for rc, _ in results)
            assert codes == [0, 1], f"round {r}: exit codes {results}"
            (refusal,) = [err for rc, err in results if rc == 1]
            assert len(refusal.strip().splitlines()) == 1 and "is busy" in refusal, refusal
            assert extrafs_mounts_at(mnt) == 1, f"round {r}: {extrafs_mounts_at(mnt)} extrafs mounts on {mnt}"
            pids = xf.daemon_pids(mnt)
            xf.run([extrafs, "unmount", mnt], timeout=60)
            assert not xf.is_mounted(mnt), f"round {r}: still mounted after unmount"
            xf.wait_until(lambda: not [p for p in pids if xf.process_alive(p)], 10, "the daemons to exit")
    finally:
        xf.unmount_under(mnt)
        xf.unmount_under(mnt)
