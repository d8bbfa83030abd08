"""The hostile-store generator: shapes a store author (or a careless operator) can give a store,
made on a real store directory so that new code meets them too. Each function damages one thing
of an existing store in place and returns what it made. tests/py/test_hostile_*.py use them
against the daemon, every command that reads a store, and the docker tools.

Shapes (add new ones here, one function each, with the issue they come from):
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def fifo_at(store: Path, rel: str) -> Path:
    """A FIFO where a regular file (catalog generation, index, diff/ file, link,
    repositories.json, ...) should be. Nothing may ever open it blocking."""
    p = Path(store) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        p.unlink()
    os.mkfifo(p)
    return p


def sparse_at(store: Path, rel: str, size: int) -> Path:
    """A sparse file of `size` bytes (reads as zeros) where a small metadata object should be."""
    p = Path(store) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        p.unlink()
    with open(p, "wb") as f:
        f.truncate(size)
    return p


def large_layer(store: Path, files: int = 110_000, name_len: int = 220, content_files: int = 8) -> str:
    """A layer of `files` empty files with long names (500 to a directory), plus `content_files`
    small files with content under content/, whose index is larger than 64 MiB (about 750 bytes
    per file). Issue 20 §5: a 64 MiB cap on reading an existing index made `extrafs index` miss
    it, index the layer again on every run and, once an access time had changed, replace the
    index under its name, so that running mounts answered EIO for the layer. Returns the
    layer's cache-id (its link is LARGELAYER followed by letters)."""
    import hashlib
    cid = hashlib.sha256(f"large-layer-{files}-{name_len}".encode()).hexdigest()
    layer = Path(store) / "overlay2" / cid
    diff = layer / "diff"
    per = 500
    for d in range((files + per - 1) // per):
        dp = diff / f"d{d:04d}"
        dp.mkdir(parents=True)
        dfd = os.open(dp, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(min(per, files - d * per)):
                os.close(os.open(f"{d * per + i:08d}".ljust(name_len, "x"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                                 0o644, dir_fd=dfd))
        finally:
            os.close(dfd)
    (diff / "content").mkdir()
    for i in range(content_files):
        (diff / "content" / f"f{i}").write_bytes(os.urandom(1000 + 4099 * i))
    (layer / "link").write_text("LARGELAYER" + "A" * 16 + "\n")
    return cid


def forged_whole_file_copy(copy: Path) -> bytes:
    """Replaces a whole-file copy in a cache (CACHE/files/<key>) by rename with a file of the same
    size holding other bytes, and writes beside it the "<key>.id" that versions before issue 20
    §6 trusted (the identity of the copy when last hashed: dev ino size mtime ctime), made to
    match the forged file. A mount must never hand the forged bytes to a reader. Returns them."""
    copy = Path(copy)
    size = copy.stat().st_size
    forged = (b"FORGED-" * (size // 7 + 1))[:size]
    tmp = copy.with_name(copy.name + ".forging")
    tmp.write_bytes(forged)
    os.rename(tmp, copy)
    st = os.stat(copy)
    ident = (f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns // 10**9} {st.st_mtime_ns % 10**9} "
             f"{st.st_ctime_ns // 10**9} {st.st_ctime_ns % 10**9}\n")
    copy.with_name(copy.name + ".id").write_text(ident)
    return forged


# Issue 20 §2: output forged by store content. The metric name a forged tag tries to inject into
# `extrafs stats --prometheus`; no line of any output may ever start with it.
INJECTED_METRIC = "extrafs_injected_total"


def forged_tags(store: Path, image_id: str | None = None) -> list[str]:
    """repositories.json entries docker would never have written, all pointing at an image the
    store has (`image_id`, or the first tagged one): a tag holding a newline and a Prometheus
    sample (a metric injection into every scraper), one holding terminal escapes and a CR (a
    forged row on the operator's terminal), one holding a C1 control (CSI, U+009B), an
    upper-case name, a 129-character tag, a tag listed under another repository than its name,
    an image id that is no digest, and a repository whose value is not an object of tags.
    Rewrites STORE/image/overlay2/repositories.json in place (run `extrafs index STORE`
    afterwards, so that the image/ index and the catalog name the new content) and returns the
    forged keys (repositories and tags), each of which every reader must leave out."""
    path = Path(store) / "image" / "overlay2" / "repositories.json"
    repos = json.loads(path.read_text())
    r = repos.setdefault("Repositories", {})
    if image_id is None:
        image_id = next(iter(next(iter(r.values())).values()))
    forged = {
        "x": {f"x:1\n{INJECTED_METRIC} 1": image_id},
        "app": {"app:1\x1b[2J\rFORGED ROW": image_id, "app:1\u009b2J": image_id,
                "app:" + "t" * 129: image_id, "app:3": "sha256:../../../etc/passwd",
                "other:1": image_id},
        "Upper": {"Upper:1": image_id},
        f"evil\n{INJECTED_METRIC} 2": "not an object of tags",
    }
    keys = []
    for repo, tags in forged.items():
        if isinstance(tags, dict):
            r.setdefault(repo, {}).update(tags)
            keys += list(tags)
        else:
            r[repo] = tags
            keys.append(repo)
    path.write_text(json.dumps(repos))
    return keys


def tag_without_image(store: Path, tag: str = "ghost:1") -> str:
    """A well-formed tag in STORE/image/overlay2/repositories.json naming an image id (a valid
    digest) the store has no config for: docker's grammar accepts it, resolving it fails. Issue 20
    section 4: `docker attach --all --restart` stopped dockerd before finding that out. Publish
    something afterwards (or index) for a mount to serve it. Returns the id."""
    path = Path(store) / "image" / "overlay2" / "repositories.json"
    repos = json.loads(path.read_text())
    image_id = "sha256:" + "0" * 64
    repos.setdefault("Repositories", {}).setdefault(tag.rsplit(":", 1)[0], {})[tag] = image_id
    path.write_text(json.dumps(repos))
    return image_id


def rewrite_catalog(store: Path, edit) -> dict:
    """The store's catalog as `edit(catalog)` leaves it, written back with a valid checksum
    (xxh3-128 of the canonical form, through libxxhash): what a broken or hostile publisher could
    write, which the checksum does not catch. Returns the new catalog."""
    import ctypes

    class H(ctypes.Structure):
        _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]

    lib = ctypes.CDLL("libxxhash.so.0")
    lib.XXH3_128bits.restype = H
    lib.XXH3_128bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    path = store / "extrafs" / "catalog"
    cat = json.loads(path.read_text())
    edit(cat)
    cat.pop("checksum")
    canon = json.dumps(cat, sort_keys=True, separators=(",", ":")).encode()
    h = lib.XXH3_128bits(canon, len(canon))
    cat["checksum"] = "%016x%016x" % (h.high64, h.low64)
    path.write_text(json.dumps(cat, indent=1) + "\n")
    return cat
