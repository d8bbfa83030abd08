"""Ordered prefixes (the port of tests/nfs_mount/test_nfs_ordered_prefix.sh): a store published
with `publish --order` records each layer's ordered prefix in its catalog; a mount of it (local
directory and NFSv4) fetches a layer's whole prefix in the background on the first look at its
diff/: after reading one traced file the other traced files' chunks arrive without being read, in
a few large backend reads, and every byte read equals the source. `docker attach` (which checks
each layer's diff/) starts the prefix of a layer nothing has read yet, and the prefixes of
several layers started at once all come whole, even beyond what the daemon queues at a time. A
store without the key behaves as before; a hostile value is clamped (huge) or refused (not a
number) with one line, and never crashes the daemon.

Checks of the shell test, each kept ([x]: where it is now):
[x] a recording mount of the plain store traces the 4 files read          -> fixture `stores`
[x] publish --order says "7.0 MiB of it in trace order first"; the catalog's ordered_prefix is
    6 MiB for the base layer, 1 MiB for the top; the plain catalog has no such key
                                                     -> test_publish_order_records_the_prefixes
[x] on a local and an NFSv4 mount of the ordered store (test_the_first_look_..._prefix[local|nfs]):
    nothing fetched at mount (prefetches and chunks_fetched 0); bin/app reads as the source; the
    base layer's 6 MiB prefix arrives within 20 s without being read, and nothing beyond it; the
    top layer's prefix is not fetched; >= 5 prefetches counted; lib/a and lib/b read as the
    source and fetch nothing more; <= 7 backend reads for it all; `docker attach` starts the top
    layer's 1 MiB prefix (within 20 s) and only it; opt/unread and the top layer's files read as
    the source; no backend errors
[x] one attach starts two layers' 20 MiB prefixes (more than the 32 MiB queued at once) over
    NFSv4: publish says "40.0 MiB of it in trace order first", both arrive whole within 30 s,
    nothing beyond them, every file equal to the source        -> test_one_attach_brings_*
[x] a store without the key over NFSv4: bin/app as the source, after 1 s no prefetch and only
    bin/app's 1 MiB cached                               -> test_a_store_without_the_key_*
[x] a huge ordered_prefix (2^64-1, valid checksum): the mount serves bin/app, the whole 14 MiB
    blob is prefetched (within 30 s), every file of the layer equals the source, exactly one
    "clamped" line in the daemon's log, the daemon still runs, and exits after unmount
                                                     -> test_a_huge_ordered_prefix_is_clamped_*
[x] an ordered_prefix that is a string: mount exits 1 with one line naming "bad ordered_prefix
    for <cache-id>", nothing mounted                  -> test_an_ordered_prefix_that_is_no_number_*
"""
from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import hostile
import xf

MiB = 1 << 20
MAKE_SAVE_ARCHIVE = xf.TESTS / "integration" / "make_save_archive.py"


@dataclass
class Stores:
    src: Path            # src/base, src/top: the layers' source trees
    root: Path           # plain/, ordered/, big/ (the NFS export)
    plain: list[str]     # cache-ids, base first
    ordered: list[str]
    big: list[str]
    src_big: Path
    publish_out: dict[str, str]


def archive(path: Path, tag: str, *dirs: Path) -> Path:
    xf.run(["/usr/bin/python3", MAKE_SAVE_ARCHIVE, path, tag, *dirs], timeout=120)
    return path


@pytest.fixture(scope="module")
def stores(module_tmp, extrafs) -> Stores:
    t = module_tmp
    src, src2, root = t / "src", t / "src2", t / "stores"
    for rel, mib in (("base/bin/app", 1), ("base/lib/a", 3), ("base/lib/b", 2), ("base/opt/unread", 8),
                     ("top/app/main", 1), ("top/app/unused", 4)):
        xf.random_file(src / rel, mib * MiB, rel.split("/")[-1])
    img = archive(t / "img.tar", "ord:1", src / "base", src / "top")
    xf.run([extrafs, "publish", "--archive", img, "--to", root / "plain"], timeout=300)
    plain = [l["cache_id"] for l in xf.catalog_layers(root / "plain")]
    # A trace of a start-up: the files a recording mount saw read.
    rec = t / "rec"
    rec.mkdir()
    mounts = xf.Mounts(extrafs, t)
    try:
        m = mounts(root / "plain", options=f"record={rec}")
        for cid, rel in ((plain[0], "bin/app"), (plain[0], "lib/a"), (plain[0], "lib/b"), (plain[1], "app/main")):
            (m.path / "overlay2" / cid / "diff" / rel).read_bytes()
        m.unmount()
    finally:
        mounts.close()
    traces = list(rec.glob("trace-*.txt"))
    assert len(traces) == 1, f"recording left {traces}"
    assert len(traces[0].read_text().splitlines()) == 4, f"trace: {traces[0].read_text()}"
    out = {"ordered": xf.run([extrafs, "publish", "--archive", img, "--to", root / "ordered", "--order", traces[0]],
                             timeout=300).stdout}
    # Two layers of 20 MiB prefixes; a trace names paths, which publish --order matches in every layer.
    xf.random_file(src2 / "base/big/a", 20 * MiB, "big-a")
    xf.random_file(src2 / "top/big/b", 20 * MiB, "big-b")
    xf.random_file(src2 / "top/big/unread", 4 * MiB, "big-unread")
    big = archive(t / "big.tar", "big:1", src2 / "base", src2 / "top")
    (t / "big.trace").write_text("x 1 big/a\ny 1 big/b\n")
    out["big"] = xf.run([extrafs, "publish", "--archive", big, "--to", root / "big", "--order", t / "big.trace"],
                        timeout=300).stdout
    return Stores(src, root, plain, [l["cache_id"] for l in xf.catalog_layers(root / "ordered")],
                  [l["cache_id"] for l in xf.catalog_layers(root / "big")], src2, out)


@pytest.fixture(scope="module")
def nfs_url(module_ganesha, stores) -> str:
    return module_ganesha(stores.root).url4


def cached(m: xf.Mount, cid: str) -> int:
    return xf.layer_cached(m.stats(), cid)


def wait_cached(m: xf.Mount, cid: str, at_least: int, timeout: float, what: str):
    end = time.monotonic() + timeout
    while cached(m, cid) < at_least:
        assert time.monotonic() < end, \
            f"{what}: {cached(m, cid)} bytes cached after {timeout} s, want {at_least}; stats {m.stats()}"
        time.sleep(0.1)


def same(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def test_publish_order_records_the_prefixes(stores):
    assert "7.0 MiB of it in trace order first" in stores.publish_out["ordered"], stores.publish_out["ordered"]
    # Random content is stored raw (lz4 does not pay): the prefix is exactly the traced files' sizes.
    layers = xf.catalog_layers(stores.root / "ordered")
    assert [l.get("ordered_prefix") for l in layers] == [6 * MiB, 1 * MiB], layers
    assert all("ordered_prefix" not in l for l in xf.catalog_layers(stores.root / "plain"))


@pytest.mark.parametrize("source", ["local", "nfs"])
def test_the_first_look_at_a_layer_fetches_its_whole_prefix(source, stores, mount, request, extrafs, tmp):
    url = stores.root / "ordered" if source == "local" else request.getfixturevalue("nfs_url") + "/ordered"
    m = mount(url)
    base, top = stores.ordered
    d = m.path / "overlay2" / base / "diff"
    s = m.stats()
    assert s["prefetches"] == 0 and s["chunks_fetched"] == 0, f"fetched at mount: {s}"
    assert same(stores.src / "base/bin/app", d / "bin/app")
    wait_cached(m, base, 6 * MiB, 20, "the base layer's 6 MiB prefix")
    s = m.stats()
    assert xf.layer_cached(s, base) == 6 * MiB, f"beyond the prefix (opt/unread) fetched: {s}"
    assert xf.layer_cached(s, top) == 0, f"the untouched top layer's prefix fetched: {s}"
    assert s["prefetches"] >= 5, s
    for f in ("lib/a", "lib/b"):
        assert same(stores.src / "base" / f, d / f), f
    s2 = m.stats()
    assert s2["chunks_fetched"] == s["chunks_fetched"], f"reading lib/a and lib/b fetched more: {s} -> {s2}"
    # Backend reads: one per at most 1 MiB, so at most 6 for the prefix plus bin/app's own.
    assert s2["fetch_seconds"]["count"] <= 7, s2
    # docker attach checks each layer's diff/ in the mount: that look starts the top layer's
    # prefix, with nothing under it read (a container's first start then finds it here).
    xf.run([extrafs, "docker", "attach", "ord:1", "--mount", m.path, "--data-root", tmp / "dr"], timeout=120)
    wait_cached(m, top, 1 * MiB, 20, "the top layer's 1 MiB prefix after attach")
    assert cached(m, top) == 1 * MiB, f"app/unused fetched: {m.stats()}"
    assert same(stores.src / "base/opt/unread", d / "opt/unread")
    for f in ("app/main", "app/unused"):
        assert same(stores.src / "top" / f, m.path / "overlay2" / top / "diff" / f), f
    assert m.stats()["backend_errors"] == 0
    m.unmount()


def test_one_attach_brings_two_prefixes_larger_than_the_queue_whole(stores, nfs_url, mount, extrafs, tmp):
    assert "40.0 MiB of it in trace order first" in stores.publish_out["big"], stores.publish_out["big"]
    base, top = stores.big
    m = mount(nfs_url + "/big")
    xf.run([extrafs, "docker", "attach", "big:1", "--mount", m.path, "--data-root", tmp / "dr"], timeout=120)
    end = time.monotonic() + 30
    while cached(m, base) < 20 * MiB or cached(m, top) < 20 * MiB:
        assert time.monotonic() < end, f"30 s after attach: base {cached(m, base)}, top {cached(m, top)} bytes cached"
        time.sleep(0.1)
    assert cached(m, top) == 20 * MiB, f"big/unread fetched: {m.stats()}"
    assert same(stores.src_big / "base/big/a", m.path / "overlay2" / base / "diff/big/a")
    for f in ("big/b", "big/unread"):
        assert same(stores.src_big / "top" / f, m.path / "overlay2" / top / "diff" / f), f
    m.unmount()


def test_a_store_without_the_key_prefetches_nothing(stores, nfs_url, mount):
    base = stores.plain[0]
    m = mount(nfs_url + "/plain")
    assert same(stores.src / "base/bin/app", m.path / "overlay2" / base / "diff/bin/app")
    time.sleep(1)
    s = m.stats()
    assert s["prefetches"] == 0 and xf.layer_cached(s, base) == 1 * MiB, f"more than bin/app fetched: {s}"
    m.unmount()


@pytest.fixture
def hostile_store(stores, tmp) -> Path:
    """A copy of the ordered store whose catalog tests rewrite (hostile.rewrite_catalog)."""
    store = tmp / "hostile"
    xf.run(["cp", "-a", stores.root / "ordered", store])
    return store


def set_base_prefix(store: Path, value):
    hostile.rewrite_catalog(store, lambda cat: cat["layers"][0].__setitem__("ordered_prefix", value))


def test_a_huge_ordered_prefix_is_clamped_with_one_line(stores, hostile_store, extrafs, tmp):
    set_base_prefix(hostile_store, 18446744073709551615)
    base = stores.ordered[0]
    mnt, log = tmp / "mnt", tmp / "daemon.log"
    mnt.mkdir()
    with open(log, "w") as out:
        daemon = subprocess.Popen([str(extrafs), "mount", str(hostile_store), str(mnt), "-f", "-o",
                                   f"cache={tmp / 'cache'},log_level=warn"], stdout=out, stderr=out)
    try:
        xf.wait_until(lambda: xf.is_mounted(mnt), 20, f"the -f mount (log: {log})")
        m = xf.Mount(extrafs, str(hostile_store), mnt, tmp / "cache", "", daemon.pid)
        d = mnt / "overlay2" / base / "diff"
        assert same(stores.src / "base/bin/app", d / "bin/app")
        # Clamped to the blob: the whole base layer (14 MiB, within half the 64 MiB memory LRU) comes.
        wait_cached(m, base, 14 * MiB, 30, "the whole base blob")
        for f in ("bin/app", "lib/a", "lib/b", "opt/unread"):
            assert same(stores.src / "base" / f, d / f), f
        clamped = [l for l in log.read_text().splitlines()
                   if f"is beyond the {14 * MiB} bytes of chunks in its blob; clamped" in l]
        assert len(clamped) == 1, f"clamp lines: {clamped}; log: {log.read_text()[:2000]}"
        assert daemon.poll() is None, f"the daemon died: {log.read_text()[:2000]}"
        xf.run([extrafs, "unmount", mnt], timeout=30)
        daemon.wait(timeout=20)
    finally:
        if daemon.poll() is None:
            subprocess.run(["umount", "-l", "--", str(mnt)], capture_output=True, timeout=30)
            daemon.kill()
            daemon.wait(timeout=10)


def test_an_ordered_prefix_that_is_no_number_is_refused(stores, hostile_store, extrafs, tmp):
    set_base_prefix(hostile_store, "6291456")
    mnt = tmp / "mnt"
    mnt.mkdir()
    xf.expect_fail([extrafs, "mount", hostile_store, mnt, "-o", f"cache={tmp / 'cache'}"], 1,
                   f"bad ordered_prefix for {stores.ordered[0]}", timeout=60)
    assert not xf.is_mounted(mnt), "it mounted anyway"
