"""Issue 20 §5: `extrafs index` never changes an index a catalog names. On a store with a layer
whose index is larger than 64 MiB, re-running it after access times changed (which the index
records) neither indexes that layer again nor replaces its index, and a mount started before
keeps serving the layer (before the fix: the layer was indexed on every run, its index replaced
under the same name, and the running mount answered EIO for it)."""
import os
import time

import hostile
import xf


def index(extrafs, store, timeout=600):
    return xf.run([extrafs, "index", store], timeout=timeout)


def test_rerunning_index_on_a_large_layer_changes_nothing_and_mounts_keep_serving(extrafs, mount, tmp):
    store = tmp / "store"
    cid = hostile.large_layer(store)
    diff = store / "overlay2" / cid / "diff"
    first = index(extrafs, store)
    assert "1 layers indexed, 0 already indexed; catalog written" in first.stdout, first.stdout
    idx = store / "extrafs" / "layers" / f"{cid}.index"
    assert idx.stat().st_size > 64 << 20, f"the shape needs an index over 64 MiB: {idx.stat().st_size}"
    before = idx.read_bytes()
    ino = idx.stat().st_ino
    catalog = (store / "extrafs" / "catalog").read_bytes()

    m = mount(store)  # the layer's index is not loaded yet: it is read on the layer's first use
    # Access times change (a backup, a reader without noatime); each change moves ctime too.
    for p in [diff / "content" / "f0", diff / "d0003", *list((diff / "d0007").iterdir())[:50]]:
        st = os.stat(p, follow_symlinks=False)
        os.utime(p, ns=(st.st_atime_ns - 10**12, st.st_mtime_ns), follow_symlinks=False)

    t0 = time.monotonic()
    second = index(extrafs, store)
    took = time.monotonic() - t0

    # The running mount serves the layer: every byte as in the store, no EIO.
    served = m.path / "overlay2" / cid / "diff"
    for f in sorted((diff / "content").iterdir()):
        assert xf.read_file_errno(served / "content" / f.name) == "OK", f"reading {f.name} through the mount"
        assert (served / "content" / f.name).read_bytes() == f.read_bytes(), f"{f.name} differs through the mount"
    assert len(os.listdir(served / "d0007")) == 500

    assert "0 layers indexed, 1 already indexed; catalog unchanged" in second.stdout, \
        f"second run: {second.stdout!r} (first took as long: the layer was indexed again)"
    assert idx.stat().st_ino == ino, "the index was replaced (a new file under its name)"
    assert idx.read_bytes() == before, "the index changed"
    assert (store / "extrafs" / "catalog").read_bytes() == catalog
    print(f"re-run on a {idx.stat().st_size >> 20} MiB index took {took:.2f} s")

    # A fresh mount reads the same index and serves the same bytes.
    m.unmount()
    m2 = mount(store)
    f = diff / "content" / "f7"
    assert (m2.path / "overlay2" / cid / "diff" / "content" / "f7").read_bytes() == f.read_bytes()
