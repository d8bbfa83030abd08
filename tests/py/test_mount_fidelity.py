"""A mount is a faithful read-only copy of its store, whatever the source (the port of
tests/integration/test_mount_fidelity.sh and tests/nfs_mount/test_nfs_fidelity.sh): the odd
store (tests/integration/make_odd_store.sh), indexed, mounted from the local directory and, from
one private nfs-ganesha, over NFSv3 (nfs://...?version=3&nfsport=N&mountport=M) and plain NFSv4.
Every test marked [source] runs for each of the three; compare_trees.py is the comparison engine.

Checks of the shell tests, each kept ([x]: where it is now; L: test_mount_fidelity.sh, N:
test_nfs_fidelity.sh; [source] marks the checks the NFS test lacked, now made for NFS too):
[x] L: index exits 0, writes the catalog and a non-empty index per layer, and leaves the store
    outside extrafs/ untouched (manifest before and after)       -> test_index_writes_*
[x] L: the mount's readahead is 1024 KiB [source]                   -> test_the_mount_raises_*
[x] L: MNT/image and MNT/overlay2 are directories; MNT/overlay2 lists exactly the store's layers
    and l/ [source]                                                 -> test_overlay2_lists_*
[x] L: six missing names answer ENOENT or ENOTDIR [source]          -> test_missing_names_*
[x] L: 8 concurrent first readers of 4 unread files get the store's bytes; mmap too [source]
                                                        -> test_concurrent_first_reads_and_mmap_*
[x] L, N: every layer diff/ and image/ equal the store strictly (with ctime, d_type, d_ino,
    hard-link groups, xattrs, every byte incl. the 5 GiB sparse file); the three sources at
    once, as N compared NFSv3 and NFSv4 side by side       -> test_every_layer_and_image_equal_*
[x] N: the content came from the source: bytes_fetched and chunks_fetched > 0, backend_errors 0,
    stats source is the mount's source (nfs://... over NFS)      -> test_every_layer_and_image_equal_*
[x] L, N: each layer's directory lists as in the store [N: source]; link and lower are regular
    files with the store's content; every l/ symlink has the store's target [L: and resolves to
    the served diff/, source]                                       -> test_overlay2_lists_*
[x] L: an unprivileged user (65534, allow_other) gets the store's stat/read/search outcomes on 13
    paths [source]                                                  -> test_an_unprivileged_user_*
[x] L: st_ino stable across two stats; the base layer's and overlay2/'s manifests (all metadata
    with st_ino) unchanged after drop_caches [source]              -> test_inode_numbers_*
[x] L: 23 kinds of write fail with EROFS, 9 shell commands with "Read-only file system", and
    etc/greeting keeps its content [source]                         -> test_every_kind_of_write_*
[x] L: `index` again on the mounted store exits 0, changes nothing under extrafs/ (content, size,
    mtime, ctime, inode), takes <= max(2 s, first/2), and the mount still serves
                                                        -> test_reindexing_a_mounted_store_*
[x] L, N: `extrafs unmount` exits 0, the mount is gone (also from mountinfo), the daemon exits
    within 10 s, MNT is the empty directory again [source]           -> test_unmount_*
[x] L: a mount with its output on a pipe returns (the daemon does not hold the pipe); the base
    layer is identical after a remount on the warm cache; SIGTERM ends the daemon and the mount
    within 10 s, MNT usable and empty [source]              -> test_a_remount_on_a_pipe_*
[x] L: a foreground (-f) mount serves, and after SIGTERM exits 0 (or dies by SIGTERM; another
    signal fails; another status is printed as the shell's warning) and is unmounted within 10 s
    [source]                                                       -> test_a_foreground_mount_*
[x] L: the store's metadata (incl. ctime) unchanged by everything   -> test_nothing_changed_the_store
"""
from __future__ import annotations

import errno
import hashlib
import mmap
import multiprocessing
import os
import signal
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import xf

SOURCES = ["local", "nfs3", "nfs4"]
OPTIONS = "threads=4,timeout=30,allow_other"


@dataclass
class Odd:
    store: Path
    cids: list[str]
    manifest_before: list[str]   # image/ and overlay2/ before indexing
    index_out: str
    index_secs: float

    @property
    def base(self) -> str:
        return self.cids[0]

    def manifest(self) -> list[str]:
        return xf.tree_manifest(self.store / "image") + xf.tree_manifest(self.store / "overlay2")


@pytest.fixture(scope="module")
def odd(module_tmp, extrafs) -> Odd:
    store = module_tmp / "store"
    xf.run([xf.MAKE_ODD_STORE, store], timeout=600)
    o = Odd(store, (store / ".layers").read_text().split(), [], "", 0.0)
    o.manifest_before = o.manifest()
    t0 = time.monotonic()
    o.index_out = xf.run([extrafs, "index", store], timeout=300).stdout
    o.index_secs = time.monotonic() - t0
    return o


@pytest.fixture(scope="module")
def nfs(module_ganesha, odd) -> xf.Ganesha:
    g = module_ganesha(odd.store, protocols="3,4")
    assert g.url3 and g.url4, "ganesha.sh printed no NFS3_URL/NFS4_URL"
    return g


def source_url(name: str, odd: Odd, request) -> str:
    if name == "local":
        return str(odd.store)
    g = request.getfixturevalue("nfs")
    return g.url3 if name == "nfs3" else g.url4


@pytest.fixture(params=SOURCES)
def source(request, odd) -> str:
    return source_url(request.param, odd, request)


@pytest.fixture
def served(mount, source) -> xf.Mount:
    """A fresh mount of the odd store from the source under test (nothing read yet)."""
    return mount(source, cache_size="2G", options=OPTIONS)


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_index_writes_a_catalog_and_an_index_per_layer_and_leaves_the_store_alone(odd):
    print(f"first index: {odd.index_secs:.2f} s: {odd.index_out.strip()}")
    assert (odd.store / "extrafs" / "catalog").is_file()
    for c in odd.cids:
        idx = odd.store / "extrafs" / "layers" / f"{c}.index"
        assert idx.is_file() and idx.stat().st_size > 0, f"no (or an empty) {idx}"
    xf.assert_unchanged(odd.manifest_before, odd.manifest(), "the store outside extrafs/ after indexing")


def test_the_mount_raises_the_readahead_to_one_chunk(served):
    # The kernel starts a FUSE mount at 128 KiB of readahead; the daemon raises it to one chunk.
    ra = Path(f"/sys/class/bdi/{xf.mount_dev(served.path)}/read_ahead_kb")
    assert ra.read_text().strip() == "1024", f"{ra} is {ra.read_text().strip()!r}"


def test_overlay2_lists_the_stores_layers_with_their_link_lower_and_l(served, odd):
    mnt, store = served.path, odd.store
    for d in ("image", "overlay2"):
        assert (mnt / d).is_dir() and not (mnt / d).is_symlink(), f"MNT/{d} missing or not a directory"
    extra = set(os.listdir(mnt)) - {"image", "overlay2"}
    if extra:
        print(f"note: MNT also holds {sorted(extra)}")
    assert listing(mnt / "overlay2") == listing(store / "overlay2")
    for c in odd.cids:
        assert listing(mnt / "overlay2" / c) == listing(store / "overlay2" / c), f"overlay2/{c}/ lists differently"
        for f in ("link", "lower"):
            want = store / "overlay2" / c / f
            if want.exists():
                got = mnt / "overlay2" / c / f
                assert got.is_file() and not got.is_symlink(), f"MNT/overlay2/{c}/{f} is not a regular file"
                assert got.read_bytes() == want.read_bytes(), f"MNT/overlay2/{c}/{f}: {got.read_bytes()!r}"
    for l in (store / "overlay2" / "l").iterdir():
        got = mnt / "overlay2" / "l" / l.name
        assert got.is_symlink() and os.readlink(got) == os.readlink(l), f"l/{l.name} -> {os.readlink(got)!r}"
        cid = os.readlink(l).removeprefix("../").removesuffix("/diff")
        assert os.stat(got).st_ino == os.stat(mnt / "overlay2" / cid / "diff").st_ino, \
            f"l/{l.name} does not resolve to the served overlay2/{cid}/diff"


def test_missing_names_answer_enoent_or_enotdir(served, odd):
    base = f"overlay2/{odd.base}/diff"
    for p in (f"{base}/no-such-file", f"{base}/etc/no-such-file", "overlay2/0000no-such-layer",
              "overlay2/l/NOSUCHLINK", "image/no-such", f"{base}/etc/greeting/below-a-file"):
        with pytest.raises(OSError) as e:
            os.lstat(served.path / p)
        assert e.value.errno in (errno.ENOENT, errno.ENOTDIR), f"MNT/{p}: {e.value}"


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_concurrent_first_reads_and_mmap_return_the_stores_bytes(served, odd):
    files = ["data/chunk_x3_plus7", "data/chunk_plus1", "links/big_a", "data/chunk_x2"]
    src, mnt = odd.store / "overlay2" / odd.base / "diff", served.path / "overlay2" / odd.base / "diff"
    want = {f: sha256(src / f) for f in files}
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: {f: sha256(mnt / f) for f in files}, range(8)))
    bad = sum(1 for g in got for f in files if g[f] != want[f])
    assert bad == 0, f"{bad} of 32 concurrent reads returned wrong bytes"
    a = (src / "data/chunk_plus1").read_bytes()
    with open(mnt / "data/chunk_plus1", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:] == a, "mmap of a served file differs"


def compare_mount(odd: Odd, mnt: Path) -> list[tuple[str, str, bool]]:
    """Every layer diff/ and image/ of the mount at mnt against the store, strictly: (what, the
    summary or the differences, equal) for each."""
    out = []
    for what in [f"overlay2/{c}/diff" for c in odd.cids] + ["image"]:
        t0 = time.monotonic()
        try:
            out.append((what, f"{xf.compare_trees(odd.store / what, mnt / what)} ({time.monotonic() - t0:.1f} s)", True))
        except AssertionError as e:
            out.append((what, str(e), False))
    return out


@pytest.fixture(scope="module")
def compared(odd, extrafs, module_tmp, request) -> dict:
    """A fresh mount from each source compared whole with the store, the three at once (a process
    each, as the shell tests compared NFSv3 and NFSv4 side by side): {source: (compare_mount()'s
    results, the mount's stats after them, the mount's source, its cache, now warm and unused)}."""
    mounts = xf.Mounts(extrafs, module_tmp / "compared")
    try:
        ms = {n: mounts(source_url(n, odd, request), cache_size="2G", options=OPTIONS) for n in SOURCES}
        with ProcessPoolExecutor(len(ms), mp_context=multiprocessing.get_context("fork")) as pool:
            running = {n: pool.submit(compare_mount, odd, m.path) for n, m in ms.items()}
            results = {n: f.result(timeout=900) for n, f in running.items()}
        return {n: (results[n], ms[n].stats(), ms[n].source, ms[n].cache) for n in ms}
    finally:
        mounts.close()


@pytest.mark.parametrize("name", SOURCES)
def test_every_layer_and_image_equal_the_store(name, compared):
    results, s, source, _ = compared[name]
    for what, summary, equal in results:
        print(f"{what}: {summary}" if equal else f"{what}: DIFFERS")
    bad = [summary for _, summary, equal in results if not equal]
    assert not bad, "\n".join(bad)
    assert s["bytes_fetched"] > 0 and s["chunks_fetched"] > 0, f"nothing was read from the source? {s}"
    assert s["backend_errors"] == 0, s
    assert s["source"] == source, f"stats source {s['source']!r}, mounted {source!r}"


PROBE_PATHS = ["etc/greeting", "perms/mode0000", "perms/dir_0700", "perms/dir_0700/inside",
               "perms/dir_0000", "perms/dir_0000/inside", "perms/dir_0555", "links/g1/one",
               "links/a/target", "owners/dir12345", "owners/dir12345/nobody_inside",
               "perms/dir_sticky/inside", "xattrs/cap_net_raw"]


def probe_as_nobody(root: Path) -> list[str]:
    """The outcome of stat, read (or list) and an exec check on each PROBE_PATHS entry, done by
    uid/gid 65534 from inside root."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.chdir(root)  # as root: the parents (0700 temp dir, 0710 overlay2/) need not be searchable
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            out = []
            for p in PROBE_PATHS:
                res = []
                for what, fn in (("stat", lambda: os.lstat(p)),
                                 ("read", lambda: open(p, "rb").read(1) if not os.path.isdir(p) else os.listdir(p)),
                                 ("exec", lambda: os.access(p, os.X_OK) or (_ for _ in ()).throw(PermissionError(13, "no x")))):
                    try:
                        fn()
                        res.append(what + ":ok")
                    except OSError as e:
                        res.append(what + ":" + (os.strerror(e.errno) if e.errno else str(e)))
                out.append(f"{p} {' '.join(res)}")
            os.write(w, "\n".join(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return data.decode().splitlines()


def test_an_unprivileged_user_gets_the_stores_permission_outcomes(served, odd):
    want = probe_as_nobody(odd.store / "overlay2" / odd.base / "diff")
    got = probe_as_nobody(served.path / "overlay2" / odd.base / "diff")
    assert len(want) == len(PROBE_PATHS), f"the probe of the store broke: {want}"
    assert got == want, "\n".join(f"store: {a} | mount: {b}" for a, b in zip(want, got) if a != b)


def test_inode_numbers_stay_across_stats_and_dropped_caches(served, odd):
    p = served.path / "overlay2" / odd.base / "diff" / "links/a/target"
    assert os.stat(p).st_ino == os.stat(p).st_ino

    def manifest():
        return (xf.tree_manifest(served.path / "overlay2" / odd.base / "diff")
                + xf.tree_manifest(served.path / "overlay2", odd.base))

    before = manifest()
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")  # makes the kernel FORGET the nodes
    xf.assert_unchanged(before, manifest(), "st_ino and metadata after drop_caches")


def write_attempts(mnt: Path, d: Path, base: str):
    f = d / "etc/greeting"
    return [
        ("open O_WRONLY existing", lambda: os.open(f, os.O_WRONLY)),
        ("open O_RDWR existing", lambda: os.open(f, os.O_RDWR)),
        ("open O_WRONLY|O_TRUNC", lambda: os.open(f, os.O_WRONLY | os.O_TRUNC)),
        ("open O_CREAT new file", lambda: os.open(d / "etc/new", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("open O_CREAT in MNT root", lambda: os.open(mnt / "new", os.O_CREAT | os.O_WRONLY, 0o644)),
        ("mkdir", lambda: os.mkdir(d / "newdir")),
        ("mkdir in overlay2/", lambda: os.mkdir(mnt / "overlay2/newlayer")),
        ("rmdir", lambda: os.rmdir(d / "times/dir_ns")),
        ("unlink", lambda: os.unlink(f)),
        ("unlink l/ symlink", lambda: os.unlink(mnt / "overlay2/l" / sorted(os.listdir(mnt / "overlay2/l"))[0])),
        ("rename", lambda: os.rename(f, d / "etc/renamed")),
        ("chmod", lambda: os.chmod(f, 0o600)),
        ("chown", lambda: os.chown(f, 1, 1)),
        ("utime", lambda: os.utime(f, (0, 0))),
        ("truncate", lambda: os.truncate(f, 0)),
        ("setxattr user.*", lambda: os.setxattr(f, "user.new", b"1")),
        ("removexattr user.*", lambda: os.removexattr(d / "xattrs/several", "user.a")),
        ("removexattr security.capability", lambda: os.removexattr(d / "xattrs/cap_net_raw", "security.capability")),
        ("symlink", lambda: os.symlink("x", d / "newlink")),
        ("link", lambda: os.link(f, d / "etc/hardlink")),
        ("mknod fifo", lambda: os.mknod(d / "newfifo", 0o10644)),
        ("write image file", lambda: os.open(mnt / "image/overlay2/repositories.json", os.O_WRONLY)),
        ("write link file", lambda: os.open(mnt / "overlay2" / base / "link", os.O_WRONLY | os.O_TRUNC)),
    ]


def test_every_kind_of_write_fails_with_erofs(served, odd):
    mnt = served.path
    d = mnt / "overlay2" / odd.base / "diff"
    bad = []
    for name, op in write_attempts(mnt, d, odd.base):
        try:
            r = op()
            if isinstance(r, int):
                os.close(r)
            bad.append(f"{name}: succeeded")
        except OSError as e:
            if e.errno != errno.EROFS:
                bad.append(f"{name}: {errno.errorcode.get(e.errno, '?')}, expected EROFS")
    g = d / "etc/greeting"
    for cmd in (f"touch {g}", f"touch {d}/etc/newfile", f"mkdir {d}/newdir", f"rm -f {g}", f"chmod 600 {g}",
                f"setfattr -n user.x -v 1 {g}", f"truncate -s 0 {g}", f"echo x > {g}", f"echo x >> {g}"):
        p = xf.run(["sh", "-c", cmd], check=False, timeout=30)
        if p.returncode == 0:
            bad.append(f"'{cmd}' succeeded")
        elif "Read-only file system" not in p.stdout + p.stderr:
            bad.append(f"'{cmd}' failed, but not with EROFS: {p.stderr.strip()}")
    assert not bad, "\n".join(bad)
    assert g.read_bytes() == (odd.store / "overlay2" / odd.base / "diff/etc/greeting").read_bytes()


def test_reindexing_a_mounted_store_changes_nothing_and_is_fast(odd, mount, extrafs):
    m = mount(odd.store, options=OPTIONS)
    before = xf.snapshot(odd.store / "extrafs")
    t0 = time.monotonic()
    xf.run([extrafs, "index", odd.store], timeout=300)
    took = time.monotonic() - t0
    xf.assert_unchanged(before, xf.snapshot(odd.store / "extrafs"), "the catalog and indexes after a second index")
    assert took <= max(2.0, odd.index_secs / 2), \
        f"re-index took {took:.2f} s, the first {odd.index_secs:.2f} s: an unchanged store should not be re-read"
    greeting = f"overlay2/{odd.base}/diff/etc/greeting"
    assert (m.path / greeting).read_bytes() == (odd.store / greeting).read_bytes(), "the mount broke after re-index"


def test_unmount_ends_the_daemon_and_empties_the_mount_point(served):
    assert served.pid, "no daemon found for the mount"
    served.unmount()  # exit 0, not mounted, the daemon gone within 10 s
    assert not any(m == str(served.path) or m.startswith(f"{served.path}/") for m in xf.mountpoints())
    assert os.listdir(served.path) == [], "MNT not empty after unmount"


def test_a_remount_on_a_pipe_serves_the_warm_cache_and_sigterm_unmounts(source, odd, extrafs, tmp, compared):
    base = f"overlay2/{odd.base}/diff"
    # The cache the whole comparison filled (as the shell test remounted on its first mount's).
    cache = next(c for _, _, src, c in compared.values() if src == source)
    mnt = tmp / "again"
    mnt.mkdir()
    # The daemon must not keep the caller's stdout/stderr (here a pipe) open, or this never returns.
    p = xf.run(["bash", "-c", '"$1" mount "$2" "$3" -o "cache=$4,cache_size=2G,log_level=warn" 2>&1 | cat',
                "_", extrafs, source, mnt, cache], timeout=30, check=False)
    assert p.returncode == 0, f"mount on a pipe: exit {p.returncode}: {p.stdout[:500]}"
    try:
        assert xf.is_mounted(mnt)
        print(xf.compare_trees(odd.store / base, mnt / base, "--exclude", "data/sparse_5g"))
        pids = xf.daemon_pids(mnt)
        assert pids, f"no extrafs process serves {mnt}"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        xf.wait_until(lambda: not xf.process_alive(pids[0]), 10, "the daemon to exit after SIGTERM")
        xf.wait_until(lambda: not xf.is_mounted(mnt), 10, "the mount to go after SIGTERM")
        assert os.listdir(mnt) == [], "MNT not usable and empty after SIGTERM"
    finally:
        xf.unmount_under(mnt)


def test_a_foreground_mount_serves_and_stops_cleanly_on_sigterm(source, odd, extrafs, tmp):
    mnt, log = tmp / "fg", tmp / "fg.log"
    mnt.mkdir()
    with open(log, "w") as out:
        fg = subprocess.Popen([str(extrafs), "mount", source, str(mnt), "-f", "-o",
                               f"cache={tmp / 'cache'},cache_size=512M,log_level=warn"], stdout=out, stderr=out)
    try:
        xf.wait_until(lambda: xf.is_mounted(mnt), 10, f"the -f mount to serve (log: {log})")
        greeting = f"overlay2/{odd.base}/diff/etc/greeting"
        assert (mnt / greeting).read_bytes() == (odd.store / greeting).read_bytes()
        fg.send_signal(signal.SIGTERM)
        rc = fg.wait(timeout=10)
        assert rc >= 0 or rc == -signal.SIGTERM, f"the -f daemon died from signal {-rc}: {log.read_text()[:500]}"
        if rc > 0:
            print(f"warning: the -f daemon exited with status {rc} after SIGTERM (0 expected for a requested stop)")
        xf.wait_until(lambda: not xf.is_mounted(mnt), 10, "the -f mount to go after SIGTERM")
    finally:
        if fg.poll() is None:
            fg.kill()
            fg.wait(timeout=10)
        xf.unmount_under(mnt)


def test_nothing_changed_the_store(odd):
    xf.assert_unchanged(odd.manifest_before, odd.manifest(), "the store's metadata (incl. ctime)")
