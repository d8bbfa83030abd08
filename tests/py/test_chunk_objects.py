"""`extrafs publish --chunk-objects`: every chunk its own content-addressed object. Such a store
reads exactly as the blob store of the same images through every kind of mount (local, NFS,
https), stores a chunk shared by layers once, and over HTTP its objects are requested whole, so a
caching proxy with its default settings serves a second host from its cache."""
import os
from pathlib import Path

import http_util
import xf


def compare_image_files(a: Path, b: Path):
    """image/ of two stores published separately: the same files with the same bytes (their
    times are those of each publish)."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb
    for rel in fa:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def same_layers(a: Path, b: Path, source: Path):
    la = sorted(p.name for p in (a / "overlay2").iterdir() if p.name != "l")
    assert la == sorted(p.name for p in (b / "overlay2").iterdir() if p.name != "l")
    out = [http_util.compare(a / "overlay2" / c / "diff", b / "overlay2" / c / "diff", source / "overlay2" / c / "diff")
           for c in la]
    compare_image_files(a / "image", b / "image")
    return f"{len(la)} layers: " + "; ".join(out)


def test_a_chunk_object_store_reads_as_the_blob_store_local_nfs_and_https(extrafs, tmp, mount, ganesha, nginx,
                                                                         published_odd):
    co = tmp / "co"
    out = xf.run([extrafs, "publish", "--data-root", tmp / "odd", "odd:latest", "--to", co, "--chunk-objects"],
                 timeout=300).stdout
    assert "new chunk objects" in out, out
    assert not list((co / "extrafs" / "layers").glob("*.blob")), "a chunk-object store has no blobs"
    blob = mount(published_odd.path)
    g = ganesha(co)
    n = nginx(co)
    mounts = {"local": mount(co), "nfs": mount(g.url4),
              "https": mount(n.tls_url, options=f"cacert={n.ca.cert}")}
    for kind, m in mounts.items():
        print(f"{kind}: {same_layers(blob.path, m.path, tmp / 'odd')}")
        s = m.stats()
        assert s["backend_errors"] == 0 and s["corrupt_fetches"] == 0, (kind, s)
    out = xf.run([extrafs, "verify", co], timeout=300).stdout
    assert "all good" in out, out
    # Chunk objects are asked for whole, never by range (what lets a proxy cache them).
    objects = [line for line in n.access_log() if "/extrafs/objects/" in line]
    assert objects and all('" 200 ' in line for line in objects), objects[:5]


def test_identical_chunks_are_stored_once_across_layers_and_images(extrafs, tmp):
    shared = os.urandom(5 << 20)
    for i in (1, 2):  # two images with nothing in common but one 5 MiB file, at different paths
        src = tmp / f"src{i}"
        (src / f"dir{i}").mkdir(parents=True)
        (src / f"dir{i}" / "shared.bin").write_bytes(shared)
        (src / f"dir{i}" / "own.bin").write_bytes(os.urandom(1 << 20))
        xf.run(["/usr/bin/python3", xf.TESTS / "integration" / "make_save_archive.py", tmp / f"i{i}.tar", f"img{i}:1", src],
               timeout=120)
    for kind, extra in (("blobs", []), ("objects", ["--chunk-objects"])):
        for i in (1, 2):
            print(xf.run([extrafs, "publish", "--archive", tmp / f"i{i}.tar", "--to", tmp / kind, *extra],
                         timeout=120).stdout.strip())
    size = lambda d: sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    blobs = size(tmp / "blobs" / "extrafs" / "layers") - sum(
        p.stat().st_size for p in (tmp / "blobs" / "extrafs" / "layers").glob("*.index"))
    objects = size(tmp / "objects" / "extrafs" / "objects")
    print(f"layer data: blobs {blobs} bytes, chunk objects {objects} bytes")
    assert blobs >= 12 << 20  # 2 x (5 + 1) MiB of random bytes
    assert objects < 8 << 20  # the 5 MiB file once: 5 + 1 + 1 MiB, and the image/ tree's objects
    out = xf.run([extrafs, "verify", tmp / "objects"], timeout=120).stdout
    assert "all good" in out, out


def test_a_proxy_with_default_settings_caches_chunk_objects(extrafs, tmp, mount, nginx, squid):
    src = tmp / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "big").write_bytes(os.urandom(8 << 20))
    xf.run(["/usr/bin/python3", xf.TESTS / "integration" / "make_save_archive.py", tmp / "a.tar", "big:1", src],
           timeout=120)
    xf.run([extrafs, "publish", "--archive", tmp / "a.tar", "--to", tmp / "co", "--chunk-objects"], timeout=120)
    n = nginx(tmp / "co", tls=False)
    p = squid()  # range_offset_limit 0: squid's default, which passes a ranged miss through uncached
    want = (src / "data" / "big").read_bytes()
    for _ in range(2):  # two hosts, each with its own empty cache
        m = mount(n.url, options=f"proxy={p.address}")
        assert http_util.layer_file(m.path, "data/big").read_bytes() == want
        m.unmount()
    gets = [line.split('"')[1] for line in n.access_log() if "/extrafs/objects/" in line]
    print(f"{len(gets)} object requests reached the origin for 2 hosts reading 8 MiB")
    assert len(gets) == len(set(gets)) >= 8, "a chunk object reached the origin twice: the proxy did not cache it"
