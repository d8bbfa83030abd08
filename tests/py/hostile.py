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


# --- issue 20 section 1: nothing read from a store may block or balloon -----------------------
# A FIFO where a file should be (each place a reader opens one), sparse huge metadata objects,
# and a catalog crafted to make a quadratic check crawl. Each applies to an indexed store (the
# odd store, say) and returns what it made.

def catalog_of(store: Path) -> dict:
    """The store's extrafs/catalog, parsed."""
    return json.loads((Path(store) / "extrafs" / "catalog").read_text())


def fifo_next_generation(store: Path) -> Path:
    """A FIFO at extrafs/catalog.d/<N+1>: the name a mounted host looks up on every refresh."""
    return fifo_at(store, f"extrafs/catalog.d/{catalog_of(store).get('generation', 0) + 1}")


def sparse_next_generation(store: Path, size: int = 1 << 30) -> Path:
    """A sparse catalog generation N+1 of `size` bytes (1 GiB: it once cost a host 4 GiB read
    in 10 s)."""
    return sparse_at(store, f"extrafs/catalog.d/{catalog_of(store).get('generation', 0) + 1}", size)


def fifo_layer_index(store: Path, cache_id: str) -> Path:
    """A FIFO in place of a layer's index (extrafs/layers/<cache-id>.index)."""
    return fifo_at(store, f"extrafs/layers/{cache_id}.index")


def sparse_layer_index(store: Path, cache_id: str, size: int) -> Path:
    """A sparse layer index of `size` bytes: over the 1 GiB cap (2 GiB once took 4.2 GB of memory
    on every access), or under it (read, fails its digest, and must not be read again)."""
    return sparse_at(store, f"extrafs/layers/{cache_id}.index", size)


def fifo_diff_file(store: Path, cache_id: str) -> Path:
    """A FIFO in place of the first regular file (over 1 KiB) of a layer's plain diff/ tree, after
    it was indexed: the chunks the index names are read from there. Returns the path in the
    layer (relative to diff/)."""
    diff = Path(store) / "overlay2" / cache_id / "diff"
    for p in sorted(diff.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size > 1024:
            rel = p.relative_to(diff)
            fifo_at(diff, str(rel))
            return rel
    raise AssertionError(f"no regular file over 1 KiB under {diff}")


def fifo_link(store: Path, cache_id: str) -> Path:
    """A FIFO at overlay2/<cache-id>/link, which `extrafs index` reads."""
    return fifo_at(store, f"overlay2/{cache_id}/link")


def fifo_repositories(store: Path) -> Path:
    """A FIFO at image/overlay2/repositories.json (`extrafs index` then serves it in the mount's
    image/ tree as a FIFO, where ls, stats and docker attach read the tags)."""
    return fifo_at(store, "image/overlay2/repositories.json")


def fifo_tar_split(store: Path) -> Path:
    """A FIFO at the tar-split.json.gz of the last layer in image/overlay2/layerdb (what docker
    attach copies from the mount)."""
    layerdb = Path(store) / "image" / "overlay2" / "layerdb" / "sha256"
    chains = sorted(p for p in layerdb.iterdir() if p.is_dir() and (p / "parent").exists())
    if not chains:
        raise AssertionError(f"no layer with a parent under {layerdb}")
    return fifo_at(store, str((chains[-1] / "tar-split.json.gz").relative_to(store)))


def _xxh3_128_hex(data: bytes) -> str:
    """xxh3-128 in its canonical hex form, through the system's libxxhash (stdlib only)."""
    import ctypes

    class H(ctypes.Structure):
        _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]
    lib = ctypes.CDLL("libxxhash.so.0")
    lib.XXH3_128bits.restype = H
    lib.XXH3_128bits.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    h = lib.XXH3_128bits(data, len(data))
    return "%016x%016x" % (h.high64, h.low64)


def write_catalog(store: Path, catalog: dict) -> Path:
    """Writes `catalog` (a dict as catalog_of returns) as the store's extrafs/catalog, and as its
    generation under catalog.d/ if it has one, with a valid checksum: what a hostile or broken
    publisher could write."""
    body = {k: v for k, v in catalog.items() if k != "checksum"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    body["checksum"] = _xxh3_128_hex(canon)
    text = json.dumps(body, indent=1) + "\n"
    path = Path(store) / "extrafs" / "catalog"
    tmp = path.with_name("catalog.hostile-tmp")
    tmp.write_text(text)
    os.rename(tmp, path)
    if body.get("generation"):
        (Path(store) / "extrafs" / "catalog.d" / str(body["generation"])).write_text(text)
    return path


def crafted_catalog(store: Path, good: int = 1000, chain: int = 1600) -> dict:
    """Adds to the store's catalog `good` base layers and `chain` layers whose lowers name every
    good layer and then the next chain layer; the last names a link no layer has, so the whole
    chain is refused. Layer k of the chain is refused only once k+1 is, so a check that repeats
    passes over the catalog until nothing changes makes `chain` passes of `chain` x `good`
    lookups (a 47 MB catalog took a host 123 s to mount). The new layers have no index (a
    host reads a layer's index only when it is used). Returns {"good": [...], "chain": [...]}
    (cache-ids)."""
    import hashlib
    cat = catalog_of(store)

    def cid(kind, i):
        return hashlib.sha256(f"hostile-{kind}-{i}".encode()).hexdigest()

    def link(kind, i):
        return f"{kind[0].upper()}{i:025d}"

    good_ids = [cid("good", i) for i in range(good)]
    chain_ids = [cid("chain", i) for i in range(chain)]
    good_lower = ":".join(f"l/{link('good', i)}" for i in range(good))
    for i in range(good):
        cat["layers"].append({"cache_id": good_ids[i], "index": "0" * 32, "link": link("good", i), "bytes": 0})
    for i in range(chain):
        nxt = link("chain", i + 1) if i + 1 < chain else "MISSING" + "0" * 19
        cat["layers"].append({"cache_id": chain_ids[i], "index": "0" * 32, "link": link("chain", i),
                              "lower": f"{good_lower}:l/{nxt}", "bytes": 0})
    write_catalog(store, cat)
    return {"good": good_ids, "chain": chain_ids}
