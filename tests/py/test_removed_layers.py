"""Issue 18, the host side: a host mounted before `extrafs rm` and `extrafs gc --grace 0` keeps
serving the removed image's layer from what it has (a file it had open, a file it had read),
counts the reads that fail because the store no longer has the data (removed_layer_errors, in
JSON and Prometheus), and marks the layer in `extrafs ls`; `docker attach --all` leaves the
removed image out. A store rebuilt from scratch (a new store id, generations from 1 again) is
picked up by a running mount without a remount. Local store and NFS (ganesha)."""
import hashlib
import json
import os
import re
import shutil

import pytest

import xf


def four_images(dir):
    """three_images' a:1, b:1, c:1, and d:1 (base + its own layer): the tests read c:1's files
    before gc, and only look at d:1's (its index loaded, none of its data read)."""
    return xf.make_images(dir, {
        "base": {"bin/busybox": b"@busybox", "bin/sh": "busybox", "etc/base-marker": b"base\n"},
        "b": {"b/data": xf.pseudo_random(1 << 20, 2), "b/marker": b"b:1\n"},
        "c": {"c/data": xf.pseudo_random(3 << 20, 3), "c/marker": b"c:1\n"},
        "d": {"d/data": xf.pseudo_random(300000, 4)},
    }, {"a:1": ["base"], "b:1": ["base", "b"], "c:1": ["base", "c"], "d:1": ["base", "d"]})


def publish(extrafs, images, store, *tags):
    for tag in tags:
        xf.run([extrafs, "publish", "--archive", images.archives[tag], "--to", store], timeout=300)


def catalog(store):
    return json.loads((store / "extrafs" / "catalog").read_text())


def repositories(mnt):
    return set(json.loads((mnt / "image" / "overlay2" / "repositories.json").read_text())["Repositories"])


def read_uncached(f) -> bytes:
    """The whole file behind the open file f, read again through extrafs: the kernel's page cache
    of it is dropped first, so the bytes come from the daemon."""
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    f.seek(0)
    return f.read()


def layer_stats(m):
    return {l["cache_id"]: l for l in m.stats()["layers"]}


@pytest.mark.parametrize("over", ["local", "nfs"])
def test_a_host_mounted_before_rm_and_gc_keeps_reading_what_it_had(extrafs, tmp, ganesha, mount, over):
    imgs = four_images(tmp / "images")
    store = tmp / "store"
    publish(extrafs, imgs, store, "a:1", "b:1", "c:1", "d:1")
    base, c_top = xf.image_layer_ids(store, "c:1")
    d_top = xf.image_layer_ids(store, "d:1")[1]
    b_top = xf.image_layer_ids(store, "b:1")[1]
    src = imgs.layers["c"] / "c"
    m = mount(ganesha(store).url4 if over == "nfs" else store)
    c_dir = m.path / "overlay2" / c_top / "diff" / "c"
    opened = open(c_dir / "data", "rb")  # read whole and kept open across rm and gc
    try:
        assert opened.read() == (src / "data").read_bytes()
        assert (c_dir / "marker").read_bytes() == b"c:1\n"  # read whole, closed: in the cache
        d_data = m.path / "overlay2" / d_top / "diff" / "d" / "data"
        assert os.stat(d_data).st_size == 300000  # d:1's index is loaded, none of its data read
        assert m.stats()["removed_layer_errors"] == 0
        # (ls also waits for the daemon to know the image names of this image/ tree, which it
        # names the removed layers by below.)
        ls = xf.run([extrafs, "ls", m.path]).stdout
        assert "c:1" in ls and "d:1" in ls and "removed from the store" not in ls, ls

        xf.run([extrafs, "rm", "c:1", "d:1", "--from", store])
        # The mount loads the catalog without c:1 and d:1 (its image/ tree no longer names them) ...
        xf.wait_until(lambda: repositories(m.path) == {"a", "b"}, 15, "the mount to load the catalog without c:1, d:1")
        out = xf.run([extrafs, "gc", store, "--grace", "0"]).stdout
        assert "deleted layer blobs" in out, out
        assert not (store / "extrafs" / "layers" / f"{c_top}.blob").exists()
        for cid in (c_top, d_top):
            assert not (store / "extrafs" / "layers" / f"{cid}.index").exists()
            assert not (store / "extrafs" / "layers" / f"{cid}.blob").exists()

        # ... and still serves c:1's layer from what it has: the open file, the file read before
        # (through the daemon, not the kernel's page cache: bytes_served grows by both).
        served = m.stats()["bytes_served"]
        assert read_uncached(opened) == (src / "data").read_bytes()
        with open(c_dir / "marker", "rb") as f:
            assert read_uncached(f) == b"c:1\n"
        assert m.stats()["bytes_served"] >= served + (3 << 20) + 4
        assert os.stat(d_data).st_size == 300000  # metadata: the index is in memory
        assert {c_top, d_top} <= set(os.listdir(m.path / "overlay2"))
        stats = m.stats()
        assert stats["removed_layer_errors"] == 0, stats["removed_layer_errors"]
        layers = layer_stats(m)
        assert layers[c_top].get("removed") is True and layers[d_top].get("removed") is True, layers
        assert layers[base].get("removed") is False and layers[b_top].get("removed") is False, layers

        # A file whose bytes it never read: they are gone from the store. EIO, counted (each
        # time), not a backend problem the operator must chase.
        for _ in range(2):
            assert xf.read_file_errno(d_data) == "EIO"
        assert m.stats()["removed_layer_errors"] >= 2
        prom = xf.run([extrafs, "stats", m.path, "--prometheus"]).stdout
        v = re.search(r"^extrafs_removed_layer_errors_total (\d+)$", prom, re.M)
        assert v and int(v.group(1)) >= 2, prom
        assert "# TYPE extrafs_removed_layer_errors_total counter" in prom, prom
        # The images that remain read right.
        xf.check_layer_served(m.path, b_top, imgs.layers["b"])
        xf.check_layer_served(m.path, base, imgs.layers["base"])

        # `extrafs ls` marks the layer the mount still serves though the store removed it.
        ls = xf.run([extrafs, "ls", m.path]).stdout
        for cid, tag in ((c_top, "c:1"), (d_top, "d:1")):
            marked = [l for l in ls.splitlines() if cid[:12] in l]
            assert marked and all("removed from the store" in l for l in marked), ls
            assert any(f"(was {tag})" in l for l in marked), ls

        # `extrafs docker attach --all` attaches what the store has, not the removed image.
        root = tmp / "dataroot"
        (root / "overlay2" / "l").mkdir(parents=True)
        xf.run([extrafs, "docker", "attach", "--all", "--mount", m.path, "--data-root", root], timeout=120)
        attached = json.loads((root / "image" / "overlay2" / "repositories.json").read_text())["Repositories"]
        assert set(attached) == {"a", "b"}, attached
        assert not (root / "overlay2" / c_top).exists() and not (root / "overlay2" / d_top).exists()
    finally:
        opened.close()


@pytest.mark.parametrize("over,how", [("local", "emptied"), ("local", "replaced"), ("nfs", "emptied")])
def test_a_rebuilt_store_is_picked_up_by_a_running_mount(extrafs, tmp, ganesha, mount, over, how):
    """how: the store directory emptied and published into, or removed and made again (a local
    store only: an NFS export of a removed directory is gone for its clients)."""
    imgs = four_images(tmp / "images")
    store = tmp / "store"
    publish(extrafs, imgs, store, "a:1", "b:1")
    xf.run([extrafs, "rm", "a:1", "--from", store])
    old = catalog(store)
    assert old["generation"] == 3, old["generation"]
    b_base, b_top = xf.image_layer_ids(store, "b:1")
    m = mount(ganesha(store).url4 if over == "nfs" else store)
    b_data = m.path / "overlay2" / b_top / "diff" / "b" / "data"
    assert b_data.read_bytes() == (imgs.layers["b"] / "b" / "data").read_bytes()

    # The store made again from scratch: a new store id, and its generations start again at 1,
    # below the generation the mount holds.
    if how == "replaced":
        shutil.rmtree(store)
    else:
        for p in store.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    publish(extrafs, imgs, store, "c:1")
    new = catalog(store)
    assert new["generation"] == 1 and new["store_id"] != old["store_id"], (new["generation"], new["store_id"])

    # No remount: the running mount serves the new store's image ...
    xf.wait_until(lambda: repositories(m.path) == {"c"}, 15, "the running mount to load the rebuilt store's catalog")
    c_base, c_top = xf.image_layer_ids(m.path, "c:1")
    xf.check_layer_served(m.path, c_top, imgs.layers["c"])
    xf.check_layer_served(m.path, c_base, imgs.layers["base"])
    # ... keeps what it had of the old one's layers, marked removed ...
    with open(b_data, "rb") as f:
        assert read_uncached(f) == (imgs.layers["b"] / "b" / "data").read_bytes()
    layers = layer_stats(m)
    assert layers[b_top].get("removed") is True and layers[b_base].get("removed") is True, layers
    assert not layers[c_top].get("removed"), layers[c_top]
    # ... and follows the rebuilt store's next generations.
    publish(extrafs, imgs, store, "b:1")
    assert catalog(store)["generation"] == 2
    xf.wait_until(lambda: repositories(m.path) == {"b", "c"}, 15, "the running mount to load generation 2")
    nb_base, nb_top = xf.image_layer_ids(m.path, "b:1")
    xf.check_layer_served(m.path, nb_top, imgs.layers["b"])


def test_a_running_container_of_a_removed_and_collected_image_keeps_running_on_what_its_host_has(
        extrafs, tmp, mount, dockerd):
    imgs = four_images(tmp / "images")
    store = tmp / "store"
    publish(extrafs, imgs, store, "a:1", "b:1", "c:1", "d:1")
    c_top = xf.image_layer_ids(store, "c:1")[1]
    m = mount(store)
    root = tmp / "dataroot"
    (root / "overlay2" / "l").mkdir(parents=True)
    xf.run([extrafs, "docker", "attach", "c:1", "--mount", m.path, "--data-root", root], timeout=120)
    d = dockerd(root)
    ctr = d.docker("run", "-d", "--network", "none", "c:1", "/bin/busybox", "sleep", "600").stdout.strip()
    want = hashlib.sha256((imgs.layers["c"] / "c" / "data").read_bytes()).hexdigest()
    assert d.docker("exec", ctr, "/bin/busybox", "sha256sum", "/c/data").stdout.split()[0] == want

    xf.run([extrafs, "rm", "c:1", "--from", store])
    xf.wait_until(lambda: "c" not in repositories(m.path), 15, "the mount to load the catalog without c:1")
    xf.run([extrafs, "gc", store, "--grace", "0"])
    assert not (store / "extrafs" / "layers" / f"{c_top}.blob").exists()

    # The container keeps running and reads what its host has; new processes start in it.
    state = json.loads(d.docker("inspect", ctr).stdout)[0]["State"]
    assert state["Running"], state
    assert d.docker("exec", ctr, "/bin/busybox", "sha256sum", "/c/data").stdout.split()[0] == want
    assert d.docker("exec", ctr, "/bin/busybox", "cat", "/c/marker").stdout == "c:1\n"
    assert layer_stats(m)[c_top]["removed"] is True
    assert m.stats()["removed_layer_errors"] == 0
