"""Issue 20, section 1: nothing read from a store may block or balloon. Each shape of
hostile.py (a FIFO where a store object should be, sparse huge metadata, a catalog crafted for a
quadratic check) against the real daemon over a local store and over a real nfs-ganesha (NFSv4
and NFSv3), and against the commands that read a store or a mount. For each: the operation fails
or refuses quickly with one line or EIO, no task of the daemon is left in state D, the daemon
still stops on SIGTERM or `extrafs unmount` within seconds, its memory stays bounded (VmHWM), and
a refused object is not read again on the next access or refresh (meta_bytes_fetched)."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

import hostile
import xf

# A local store, and the same store exported by nfs-ganesha over NFSv4 and NFSv3 (a READ of a FIFO
# over NFSv3 hung ganesha itself).
VIA = ["local", "nfs4", "nfs3"]
MiB = 1 << 20
GiB = 1 << 30
# Well above an idle daemon of the odd store (~30-60 MB), well below what a read of one of the
# huge objects costs (the object's size at least).
MAX_HWM = 400 * MiB


class OddStores:
    """Indexed copies of one make_odd_store.sh store (xf.make_odd_store's template), each made
    in a thread while the test before it runs: take() hands over the one made ahead (renamed
    into the test's directory) and starts the next if another test will want one."""

    def __init__(self, extrafs: Path, dir: Path):
        self.extrafs, self.dir = extrafs, dir
        self.template = dir / "odd"
        xf.run([xf.MAKE_ODD_STORE, self.template], timeout=600)
        self.made = 0
        self.thread = None
        self._start()

    def _start(self):
        self.ready = self.dir / f"copy{self.made}"
        self.made += 1
        self.error = None

        def copy(dest=self.ready):
            try:
                xf.make_odd_store(self.extrafs, dest, template=self.template)
            except BaseException as e:  # raised by take()
                self.error = e
        self.thread = threading.Thread(target=copy, daemon=True)
        self.thread.start()

    def take(self, path: Path, more: bool) -> xf.Store:
        self.thread.join(timeout=900)
        assert not self.thread.is_alive(), "copying the odd store took over 900 s"
        if self.error is not None:
            raise self.error
        os.rename(self.ready, path)
        if more:
            self._start()
        else:
            self.thread = None
        return xf.Store(path, (path / ".layers").read_text().split())

    def close(self):
        if self.thread is not None:
            self.thread.join(timeout=900)


@pytest.fixture(scope="module")
def odd_stores(extrafs, module_tmp):
    stores = OddStores(extrafs, module_tmp)
    yield stores
    stores.close()


@pytest.fixture
def odd_store(odd_stores, tmp, request) -> xf.Store:
    """conftest's odd_store (each test makes its own store hostile), an indexed copy of the
    module's make_odd_store.sh store made while the test before ran, instead of the script and
    `extrafs index` run in each test's setup (~6 of its ~9 s)."""
    items = request.session.items
    later = items[items.index(request.node) + 1:]
    return odd_stores.take(tmp / "store", more=any("odd_store" in i.fixturenames for i in later
                                                   if i.module is request.module))


def source_of(store, via, ganesha) -> str:
    if via == "local":
        return str(store.path)
    g = ganesha(store.path, protocols="3,4")
    return g.url4 if via == "nfs4" else g.url3


def proc_status(pid: int, field: str) -> int:
    """A "kB" field of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_no_d_state(pid: int, seconds: float = 1.0):
    """No task of pid stays in state D over `seconds` (sampled every 0.1 s)."""
    always = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = set(xf.d_state_tasks(pid))
        always = now if always is None else always & now
        time.sleep(0.1)
    assert not always, f"tasks {sorted(always)} of {pid} stayed in state D for {seconds} s"


def timed(fn, *args, **kw):
    t = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t


def gone_or_killed(m: xf.Mount, within: float, what: str):
    """Waits up to `within` seconds for the daemon to exit. If it does not, kills it (a mount
    its daemon no longer serves hangs whoever looks at it, the test's teardown included) and
    fails, saying `what` did not stop it."""
    start = time.monotonic()
    while xf.process_alive(m.pid) and time.monotonic() < start + within:
        time.sleep(0.05)
    print(f"seen: daemon gone {time.monotonic() - start:.2f} s after {what}")
    if xf.process_alive(m.pid):
        print(f"the daemon's threads, before it is killed:\n{xf.thread_stacks(m.pid)}")
        os.kill(m.pid, signal.SIGKILL)
        raise AssertionError(f"daemon {m.pid} still running {within} s after {what} (killed)")


def stops_on_sigterm(m: xf.Mount, within: float = 10):
    """SIGTERM to the daemon ends it and its mount within `within` seconds."""
    assert m.pid and xf.process_alive(m.pid), "no daemon pid for the mount"
    os.kill(m.pid, signal.SIGTERM)
    gone_or_killed(m, within, "SIGTERM")
    assert not xf.is_mounted(m.path), f"{m.path} still mounted after its daemon exited"


def unmounts(m: xf.Mount, within: float = 15):
    """`extrafs unmount` returns and the daemon is gone within `within` seconds."""
    try:
        p, took = timed(xf.run, [m.extrafs, "unmount", m.path], timeout=within, check=False)
    except AssertionError:  # it hung
        gone_or_killed(m, 0, "extrafs unmount hung")
        raise
    gone_or_killed(m, 1, "extrafs unmount")
    assert p.returncode == 0, f"extrafs unmount: exit {p.returncode}: {p.stderr}"
    print(f"seen: extrafs unmount returned after {took:.2f} s")
    assert took < within, f"extrafs unmount took {took:.1f} s"
    assert not xf.is_mounted(m.path), f"{m.path} still mounted after extrafs unmount"


def a_file_of(store, cache_id) -> Path:
    """A non-empty regular file of layer `cache_id`, relative to its diff/."""
    diff = store.path / "overlay2" / cache_id / "diff"
    for p in sorted(diff.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size > 0:
            return p.relative_to(diff)
    raise AssertionError(f"no regular file under {diff}")


def fails_quickly(cmd, *needles, within: float = 20) -> str:
    """xf.expect_fail (exit 1, one line naming one of `needles`) within `within` seconds."""
    line, took = timed(xf.expect_fail, cmd, 1, *needles, timeout=within)
    print(f"seen: {os.path.basename(str(cmd[0]))} {cmd[1]}: exit 1 after {took:.2f} s: {line}")
    return line


def read_quickly(path, expect: str, within: float):
    """Reads path whole in a child process: the outcome (OK, EIO...) must be `expect`, within
    `within` seconds (a reader stuck on a FIFO or in state D reads as TIMEOUT)."""
    got, took = timed(xf.read_file_errno, path, timeout=within + 10)
    print(f"seen: read {got} after {took:.2f} s")
    assert got == expect, f"read of {path}: {got} after {took:.1f} s, expected {expect}"
    assert took < within, f"read of {path} took {took:.1f} s (expected {expect} within {within} s)"


# --- catalog generations: the refresh thread ---------------------------------------------------


@pytest.mark.parametrize("via", VIA)
def test_fifo_as_next_catalog_generation(odd_store, mount, ganesha, via):
    m = mount(source_of(odd_store, via, ganesha))
    hostile.fifo_next_generation(odd_store.path)
    time.sleep(3)  # three refresh ticks
    listing, took = timed(os.listdir, m.path / "overlay2")
    assert set(odd_store.cids) <= set(listing) and took < 2, f"overlay2/ listed in {took:.1f} s"
    for fmt in ("--json", "--prometheus"):
        _, took = timed(xf.run, [m.extrafs, "stats", m.path, fmt], timeout=20)
        assert took < 10, f"stats {fmt} took {took:.1f} s"
    assert_no_d_state(m.pid)
    stops_on_sigterm(m)


@pytest.mark.parametrize("via", VIA)
def test_sparse_huge_catalog_generation_is_never_read(odd_store, mount, ganesha, via):
    m = mount(source_of(odd_store, via, ganesha))
    before = m.stats()["meta_bytes_fetched"]
    cpu = cpu_seconds(m.pid)
    hostile.sparse_next_generation(odd_store.path, 1 * GiB)
    time.sleep(3.5)
    after = m.stats()["meta_bytes_fetched"]
    assert after - before < MiB, f"the daemon read {after - before} bytes of metadata in 3.5 s"
    used = cpu_seconds(m.pid) - cpu
    assert used < 1.0, f"the daemon used {used:.2f} s of CPU in 3.5 s"
    hwm = proc_status(m.pid, "VmHWM")
    print(f"seen: {after - before} bytes of metadata read, {used:.2f} s CPU in 3.5 s, VmHWM {hwm >> 20} MiB")
    assert hwm < MAX_HWM, f"the daemon's peak memory is {hwm >> 20} MiB"
    # A good catalog published after the refused generation is taken up, same mount.
    cat = hostile.catalog_of(odd_store.path)
    extra = hashlib.sha256(b"a layer published later").hexdigest()
    cat["layers"].append({"cache_id": extra, "index": "0" * 32, "link": "", "bytes": 0})
    cat["generation"] += 2
    hostile.write_catalog(odd_store.path, cat)
    xf.wait_until(lambda: extra in os.listdir(m.path / "overlay2"), 10, "the next good catalog to be served")
    assert_no_d_state(m.pid)
    unmounts(m)


# --- layer indexes: a reader's first access ----------------------------------------------------


@pytest.mark.parametrize("via", VIA)
def test_fifo_as_layer_index(odd_store, mount, ganesha, via):
    base, _, top = odd_store.cids
    m = mount(source_of(odd_store, via, ganesha))
    hostile.fifo_layer_index(odd_store.path, top)
    rel = a_file_of(odd_store, top)
    read_quickly(m.path / "overlay2" / top / "diff" / rel, "EIO", within=5)
    read_quickly(m.path / "overlay2" / base / "diff" / a_file_of(odd_store, base), "OK", within=10)
    time.sleep(2.5)  # past the retry back-off: the next access asks the store again
    read_quickly(m.path / "overlay2" / top / "diff" / rel, "EIO", within=5)
    assert_no_d_state(m.pid)
    stops_on_sigterm(m)


@pytest.mark.parametrize("via", VIA)
def test_sparse_index_over_its_cap_is_refused_unread(odd_store, mount, ganesha, via):
    _, _, top = odd_store.cids
    m = mount(source_of(odd_store, via, ganesha))
    hostile.sparse_layer_index(odd_store.path, top, 2 * GiB)
    before = m.stats()["meta_bytes_fetched"]
    rel = m.path / "overlay2" / top / "diff" / a_file_of(odd_store, top)
    read_quickly(rel, "EIO", within=5)
    time.sleep(2.5)
    read_quickly(rel, "EIO", within=5)
    after = m.stats()["meta_bytes_fetched"]
    hwm = proc_status(m.pid, "VmHWM")
    print(f"seen: {after - before} bytes of metadata read, VmHWM {hwm >> 20} MiB")
    assert after - before < MiB, f"the daemon read {after - before} bytes of a 2 GiB index"
    assert hwm < MAX_HWM, f"the daemon's peak memory is {hwm >> 20} MiB"
    assert_no_d_state(m.pid)
    unmounts(m)


@pytest.mark.parametrize("via", VIA)
def test_corrupt_index_is_read_once_until_it_changes(odd_store, mount, ganesha, via):
    _, _, top = odd_store.cids
    index = odd_store.path / "extrafs" / "layers" / f"{top}.index"
    good = index.read_bytes()
    m = mount(source_of(odd_store, via, ganesha))
    size = 32 * MiB
    hostile.sparse_layer_index(odd_store.path, top, size)
    rel = m.path / "overlay2" / top / "diff" / a_file_of(odd_store, top)
    before = m.stats()["meta_bytes_fetched"]
    read_quickly(rel, "EIO", within=5)
    first = m.stats()["meta_bytes_fetched"]
    assert size <= first - before < size + MiB, f"first access read {first - before} bytes"
    for _ in range(2):
        time.sleep(2.5)  # past the retry back-off
        read_quickly(rel, "EIO", within=5)
    again = m.stats()["meta_bytes_fetched"]
    print(f"seen: first access read {first - before} bytes, two more accesses {again - first}")
    assert again == first, f"the refused index was read again: {again - first} more bytes"
    # Repaired (a new file), it is read and served after the back-off, same mount.
    tmp = index.with_name(index.name + ".new")
    tmp.write_bytes(good)
    os.rename(tmp, index)
    time.sleep(2.5)
    read_quickly(rel, "OK", within=10)
    unmounts(m)


# --- plain diff/ files: chunk reads ------------------------------------------------------------


@pytest.mark.parametrize("via", VIA)
def test_fifo_as_plain_diff_file(odd_store, mount, ganesha, via):
    base = odd_store.cids[0]
    m = mount(source_of(odd_store, via, ganesha))
    rel = hostile.fifo_diff_file(odd_store.path, base)  # indexed as a regular file, now a FIFO
    read_quickly(m.path / "overlay2" / base / "diff" / rel, "EIO", within=5)
    read_quickly(m.path / "overlay2" / base / "diff" / rel, "EIO", within=5)
    assert_no_d_state(m.pid)
    stops_on_sigterm(m)


# --- commands that read a store or a mount -----------------------------------------------------


def test_fifo_as_layer_link_in_extrafs_index(odd_store, extrafs):
    base, mid, top = odd_store.cids
    # A layer the catalog does not name yet (index reads its link; a named layer stays as named).
    shutil.rmtree(odd_store.path / "extrafs" / "catalog.d")
    (odd_store.path / "extrafs" / "catalog").unlink()
    hostile.fifo_link(odd_store.path, top)
    line = fails_quickly([extrafs, "index", odd_store.path], f"{top}/link", within=60)
    assert "FIFO" in line, line
    # The writers' lock was released: the next run answers the same.
    fails_quickly([extrafs, "index", odd_store.path], f"{top}/link", within=60)
    assert {l["cache_id"] for l in hostile.catalog_of(odd_store.path)["layers"]} == {base, mid}


@pytest.mark.parametrize("via", VIA)
def test_fifo_as_repositories_json(odd_store, mount, ganesha, extrafs, tmp, via):
    hostile.fifo_repositories(odd_store.path)
    xf.run([extrafs, "index", odd_store.path], timeout=120)  # the image/ tree now serves a FIFO
    m = mount(source_of(odd_store, via, ganesha))
    assert (m.path / "image/overlay2/repositories.json").is_fifo()
    for target in (odd_store.path, m.path):
        fails_quickly([extrafs, "ls", target], "repositories.json")
    fails_quickly([extrafs, "prefetch", m.path, "odd:latest"], "repositories.json")
    fails_quickly([extrafs, "docker", "attach", "odd:latest", "--mount", m.path, "--data-root", tmp / "dr"],
                  "repositories.json")
    p, took = timed(xf.run, [extrafs, "stats", m.path, "--prometheus"], timeout=30, check=False)
    print(f"seen: stats --prometheus exit {p.returncode} after {took:.2f} s: {p.stdout.splitlines()[:1]}")
    assert took < 10, f"stats --prometheus took {took:.1f} s"
    assert p.returncode == 0 and "extrafs_bytes_fetched_total" in p.stdout, p.stderr
    assert_no_d_state(m.pid)
    unmounts(m)


@pytest.mark.parametrize("via", VIA)
def test_fifo_as_tar_split_in_docker_attach(odd_store, mount, ganesha, extrafs, tmp, via):
    hostile.fifo_tar_split(odd_store.path)
    xf.run([extrafs, "index", odd_store.path], timeout=120)
    m = mount(source_of(odd_store, via, ganesha))
    line = fails_quickly([extrafs, "docker", "attach", "odd:latest", "--mount", m.path, "--data-root", tmp / "dr"],
                         "tar-split.json.gz")
    assert "FIFO" in line, line
    assert_no_d_state(m.pid)
    unmounts(m)


# --- a catalog crafted for a quadratic check ---------------------------------------------------


@pytest.mark.parametrize("via", VIA)
def test_crafted_catalog_of_long_chains_mounts_at_once(odd_store, mount, ganesha, via):
    made = hostile.crafted_catalog(odd_store.path, good=1000, chain=1600)
    size = (odd_store.path / "extrafs" / "catalog").stat().st_size
    assert size > 40 * 10**6, f"the crafted catalog is only {size} bytes"
    m, took = timed(mount, source_of(odd_store, via, ganesha), timeout=60)
    print(f"seen: a {size} byte catalog mounted in {took:.2f} s")
    assert took < 20, f"mounting took {took:.1f} s"
    listing = set(os.listdir(m.path / "overlay2"))
    assert set(odd_store.cids) | set(made["good"]) <= listing
    assert not listing & set(made["chain"]), "a layer of the broken chain is served"
    hwm = proc_status(m.pid, "VmHWM")
    print(f"seen: VmHWM {hwm >> 20} MiB")
    assert hwm < 2 * GiB, f"the daemon's peak memory is {hwm >> 20} MiB"
    stops_on_sigterm(m)
