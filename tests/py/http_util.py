"""Helpers shared by the tests/py/test_http_*.py files: comparing mounts, S3 buckets holding a
store, credentials files, and finding files in a mount."""
from __future__ import annotations

import os
import random
import string
from pathlib import Path

import servers
import xf


def compare(a: Path, b: Path, data_map: Path | None = None) -> str:
    """compare_trees.py A B (strict: every entry's type, mode, owner, size, times, xattrs, d_type,
    hard links and content); fails the test with its report if they differ. Returns its last line.
    data_map: the same tree on ext4 (compare_trees.py --data-map): sparse files are then read over
    their data and a sample of their holes, not whole."""
    extra = ["--data-map", data_map] if data_map is not None and Path(data_map).is_dir() else []
    p = xf.run(["/usr/bin/python3", xf.COMPARE_TREES, a, b, *extra], timeout=600, check=False)
    assert p.returncode == 0, f"{b} differs from {a} (exit {p.returncode}):\n{p.stdout[-4000:]}{p.stderr[-2000:]}"
    return p.stdout.strip().splitlines()[-1]


def compare_mounts(a: Path, b: Path, source: Path | None = None) -> str:
    """Two mounts of one store: image/ and every layer's diff/ entry by entry (compare), every
    layer's link and lower byte for byte, overlay2/l/ links with the same targets. (The
    directories extrafs makes up itself, like overlay2/, carry each mount's start time.)
    source: the data-root the store was published from (same cache-ids, on ext4): its layers
    are the data maps of the comparisons, so that the odd store's 5 GiB sparse file is read
    over its data, not whole."""
    layers = sorted(p.name for p in (a / "overlay2").iterdir() if p.name != "l")
    assert layers == sorted(p.name for p in (b / "overlay2").iterdir() if p.name != "l")
    total = [compare(a / "image", b / "image")]
    for cid in layers:
        ref = source / "overlay2" / cid / "diff" if source is not None else None
        total.append(compare(a / "overlay2" / cid / "diff", b / "overlay2" / cid / "diff", ref))
        for f in ("link", "lower"):
            pa, pb = a / "overlay2" / cid / f, b / "overlay2" / cid / f
            assert pa.exists() == pb.exists(), f"{cid}/{f}"
            if pa.exists():
                assert pa.read_bytes() == pb.read_bytes(), f"{cid}/{f} differs"
    la = {p.name: os.readlink(p) for p in (a / "overlay2" / "l").iterdir()}
    lb = {p.name: os.readlink(p) for p in (b / "overlay2" / "l").iterdir()}
    assert la == lb, f"overlay2/l differs: {la} vs {lb}"
    return f"{len(layers)} layers and image/: " + "; ".join(total)


def bucket_name(prefix="xf") -> str:
    return prefix + "-" + "".join(random.choice(string.ascii_lowercase + string.digits) for _ in range(10))


def put_store(rgw: servers.Radosgw, store: Path, prefix: str = "") -> str:
    """A new bucket holding `store` under `prefix` (catalog last); returns the bucket name."""
    bucket = bucket_name()
    c = rgw.client()
    c.make_bucket(bucket)
    c.upload_tree(store, bucket, prefix)
    return bucket


def credentials_file(path: Path, access_key: str, secret_key: str, profile: str = "default", mode: int = 0o600) -> Path:
    path.write_text(f"[{profile}]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n")
    os.chmod(path, mode)
    return path


def s3_options(rgw: servers.Radosgw, creds: Path) -> str:
    return f"s3_endpoint={rgw.endpoint},s3_credentials={creds}"


def big_files(mnt: Path, min_size: int = 1 << 20, max_size: int = 256 << 20) -> list[Path]:
    """The regular files of the mount's layers at least min_size long (several chunks) and at most
    max_size (not the odd store's 5 GiB sparse file), largest first."""
    out = []
    for p in (mnt / "overlay2").glob("*/diff/**/*"):
        try:
            st = p.lstat()
        except OSError:
            continue
        if p.is_file() and not p.is_symlink() and min_size <= st.st_size <= max_size:
            out.append((st.st_size, p))
    out.sort(key=lambda t: (-t[0], str(t[1])))
    return [p for _, p in out]


def make_big_store(extrafs: Path, tmp: Path, size_mib: int = 48, tag: str = "big:1") -> Path:
    """A published store of one image whose layer holds /data/big (size_mib MiB of random bytes,
    which lz4 leaves as they are) and /etc/hello: blob ranges big enough to be cut mid-read."""
    src = tmp / "bigsrc"
    (src / "data").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "data" / "big").write_bytes(os.urandom(size_mib << 20))
    (src / "etc" / "hello").write_text("hello\n")
    archive = tmp / "big.tar"
    xf.run(["/usr/bin/python3", xf.TESTS / "integration" / "make_save_archive.py", archive, tag, src], timeout=300)
    store = tmp / "bigstore"
    xf.run([extrafs, "publish", "--archive", archive, "--to", store], timeout=300)
    return store


def layer_file(mnt: Path, rel: str) -> Path:
    """MNT/overlay2/<the layer holding rel>/diff/rel."""
    hits = [p for p in (mnt / "overlay2").glob(f"*/diff/{rel}")]
    assert len(hits) == 1, f"{rel} found {len(hits)} times under {mnt}/overlay2"
    return hits[0]
