"""Issue 20 §6: whole-file copies (CACHE/files/<key>, read by the kernel itself through FUSE
passthrough) are trusted no more than chunks: each mount hashes a copy before its first
passthrough open, off the reader's path, and nothing kept beside a copy can vouch for it. And a
mount without passthrough neither counts copies against cache_size nor keeps them.

Needs a kernel that offers FUSE passthrough (Linux >= 6.9, CONFIG_FUSE_PASSTHROUGH); on one that
does not, the tests skip, which scripts/test counts as a failure."""
import hashlib
import os
from pathlib import Path

import pytest

import hostile
import xf

MiB = 1 << 20


def make_store(extrafs, path: Path, files: dict) -> tuple[Path, Path]:
    """A one-layer store holding `files` (name -> size, random bytes), indexed. Returns the store
    and the layer's diff/."""
    cid = hashlib.sha256(f"whole-file-trust-{sorted(files.items())}".encode()).hexdigest()
    diff = path / "overlay2" / cid / "diff"
    diff.mkdir(parents=True)
    for name, size in files.items():
        (diff / name).write_bytes(os.urandom(size))
    (path / "overlay2" / cid / "link").write_text("WHOLEFILETRUST" + "A" * 12 + "\n")
    xf.run([extrafs, "index", path], timeout=120)
    return path, diff


def served_path(m, diff: Path, name: str) -> Path:
    return m.path / "overlay2" / diff.parent.name / "diff" / name


def require_passthrough(m):
    if not m.stats().get("passthrough"):
        pytest.skip(f"the kernel ({os.uname().release}) did not agree to FUSE passthrough")


def copies(cache: Path) -> list[Path]:
    d = cache / "files"
    return sorted(p for p in d.iterdir() if len(p.name) == 32) if d.is_dir() else []


def make_checked_copy(mount, store, diff, cache, name):
    """Mounts, reads `name` whole (which makes its copy), waits until the copy exists and was
    checked by that mount, unmounts. Returns the copy's path."""
    m = mount(store, cache=cache)
    require_passthrough(m)
    assert served_path(m, diff, name).read_bytes() == (diff / name).read_bytes()
    xf.wait_until(lambda: m.stats().get("whole_files") == 1, 30, "the copy to be made")
    # Checked (hashed) a few seconds after it was written: newer versions count it, older ones
    # wrote its identity beside it.
    xf.wait_until(lambda: m.stats().get("whole_files_checked", 0) >= 1 or
                  any(p.name.endswith(".id") for p in (cache / "files").iterdir()), 30, "the copy's check")
    m.unmount()
    (copy,) = copies(cache)
    return copy


def test_a_forged_copy_with_a_forged_identity_is_never_served(extrafs, mount, tmp):
    store, diff = make_store(extrafs, tmp / "store", {"big": 24 * MiB + 12345})
    cache = tmp / "cache"
    copy = make_checked_copy(mount, store, diff, cache, "big")
    forged = hostile.forged_whole_file_copy(copy)

    m = mount(store, cache=cache)
    want = (diff / "big").read_bytes()
    got = served_path(m, diff, "big").read_bytes()
    assert got != forged, "the forged copy was served through the mount"
    assert got == want, "big differs through the mount"
    # The copy is hashed in the background, found forged and removed ...
    xf.wait_until(lambda: m.stats().get("whole_files_corrupt_dropped") == 1, 30, "the forged copy to be dropped")
    assert not (copy.parent / (copy.name + ".id")).exists()
    # ... and the next whole read makes a good copy in its place, which the kernel then reads:
    # every read right, whichever way it was served.
    assert served_path(m, diff, "big").read_bytes() == want
    xf.wait_until(lambda: m.stats().get("whole_files_checked", 0) >= 1, 30, "a new copy, checked")
    assert copy.read_bytes() == want
    for _ in range(3):
        assert served_path(m, diff, "big").read_bytes() == want
    assert m.stats()["passthrough_opens"] >= 1


def test_each_mount_hashes_a_copy_before_its_first_passthrough_open(extrafs, mount, tmp):
    store, diff = make_store(extrafs, tmp / "store", {"big": 12 * MiB + 7})
    cache = tmp / "cache"
    make_checked_copy(mount, store, diff, cache, "big")
    want = (diff / "big").read_bytes()

    m = mount(store, cache=cache)
    # The copy an earlier mount checked is not handed out unread: the first open is served by
    # the daemon (from the chunks in the cache) while the copy is hashed in the background.
    assert served_path(m, diff, "big").read_bytes() == want
    s = m.stats()
    assert s["passthrough_opens"] == 0, s
    assert s["bytes_served"] == len(want), s
    xf.wait_until(lambda: m.stats().get("whole_files_checked") == 1, 30, "the copy's check by this mount")
    assert served_path(m, diff, "big").read_bytes() == want
    s = m.stats()
    assert s["passthrough_opens"] == 1, s
    assert s["bytes_served"] == len(want), "the second open was served by the daemon, not the kernel"


def test_copies_are_neither_counted_nor_kept_where_passthrough_is_off(extrafs, mount, tmp):
    store, diff = make_store(extrafs, tmp / "store", {"x": 12 * MiB, "y": 46 * MiB})
    cache = tmp / "cache"
    # A mount with passthrough makes a 12 MiB copy of x (copies may take a quarter of 64 MiB).
    m = mount(store, cache=cache, cache_size="64M")
    require_passthrough(m)
    assert served_path(m, diff, "x").read_bytes() == (diff / "x").read_bytes()
    xf.wait_until(lambda: m.stats().get("whole_files") == 1, 30, "x's copy")
    m.unmount()
    assert len(copies(cache)) == 1

    # Without passthrough the copy is of no use: the cache must hold 58 MiB of chunks (x and y)
    # within its 64 MiB, not 52 MiB beside a copy no one reads.
    off = mount(store, cache=cache, cache_size="64M", env={"EXTRAFS_PASSTHROUGH": "0"})
    for name in ("x", "y"):
        assert served_path(off, diff, name).read_bytes() == (diff / name).read_bytes()
    s = off.stats()
    assert not s["passthrough"]
    assert s["cache_bytes"] >= 58 * MiB, f"cache_bytes {s['cache_bytes'] / MiB:.1f} MiB: chunks evicted for the copy"
    assert s.get("whole_file_bytes", 0) == 0, s
    xf.wait_until(lambda: not copies(cache), 10, "the copy to be removed from the cache")
    off.unmount()
    out = xf.run([extrafs, "cache", "stat", "--cache", cache]).stdout
    assert "whole files     0 (0 B)" in out, out
