"""`extrafs publish` against a private dockerd (the port of tests/publish/test_publish.sh): a
two-layer image (busybox-static import + `docker build` layers holding a whiteout, an opaque
directory, a hard link, setuid/setgid/sticky modes, a file capability, compressible, zero and
random content) is published with --data-root and, after `docker save`, with --archive; both
stores are mounted and every published layer compared with the data-root's own
overlay2/<cache-id>/diff. Then: image metadata, re-publish is a no-op, --order, bad input, and a
publish killed with SIGKILL half-way through a 200 MiB layer.

Checks of the shell test, each kept ([x]: where it is now):
[x] the data-root layers hold a whiteout (opt/gone), an opaque dir (data/dir) and a file
    capability (srv/capfile); the image has >= 3 layers          -> test_the_data_root_layers_*
[x] publish --data-root (dockerd running): exit 0, one summary line, nothing on stderr;
    publish --archive: exit 0                                    -> fixture `stores`, test_publish_says_*
[x] for each store: the image config under its digest's name; repositories.json maps app:1 to
    it; per layer: a layerdb entry with the data-root's diff, parent (none for the base) and
    size, the same cache-id (data-root) or a fresh 64-hex one (archive), tar-split copied
    (data-root) or absent (archive), a blob and an index, no diff/, a 26-character link, lower
    chained from the links below (none for the base); all NL layers     -> test_a_store_published_*
[x] the third layer's blob is smaller than its text file + 2 MiB (lz4 and zero chunks pay)
                                                          -> test_compressible_and_zero_content_*
[x] `extrafs verify` finds both stores good                      -> test_verify_finds_*
[x] mounted, every data-root-published layer equals the data-root's (compare_trees --no-ctime);
    every archive-published layer equals it up to what a tar carries (compare_archive); in the
    archive store .wh..wh..opq became trusted.overlay.opaque=y, .wh.gone a 0/0 character device,
    and srv/a keeps its hard link                                -> test_every_published_layer_*
[x] re-publish (both ways): exit 0, "0 layers written, NL already in the store", no file
    rewritten (size, mtime, ctime, inode, content)               -> test_republishing_*
[x] --order (both ways) puts srv/rand2 then srv/rand1 first in the COPY layer's blob; verify ok
                                                                 -> test_order_packs_*
[x] --order into a store that has the layers: exit 0, exactly one warning line "--order applies
    only to layers written now; NL layers already in", nothing rewritten -> test_order_into_a_store_*
[x] bad input (missing data-root, unknown image, a tar that is no docker save output, no tar,
    --data-root with --archive, neither, no --to, a store under a file): the exit code, one
    line on stderr, nothing on stdout, no store created          -> test_bad_input_*
[x] an archive whose top layer tar does not match its diffID: exit 1, one line, nothing left
                                                                 -> test_a_diff_id_mismatch_*
[x] a gzip-compressed layer tar is accepted, and the store verifies -> test_a_gzip_compressed_*
[x] publish killed with SIGKILL while a > 40 MiB blob temporary is written: the catalog is
    unchanged, the store verifies, publishing again works, no temporaries are left, the store
    verifies                                                       -> test_a_publish_killed_*
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

import compare_archive
import xf

MiB = 1 << 20


@dataclass
class Image:
    """app:1 as the module's dockerd built it."""
    d: xf.Dockerd
    root: Path                      # the data-root
    id: str
    layers: list[tuple[str, str]]   # (chain id hex, cache-id), base first
    ctx: Path                       # the build context (rand1, rand2)
    rootfs: Path                    # what base:1 was imported from
    archive: Path                   # `docker save app:1`

    def diff(self, n: int) -> Path:
        """The data-root's diff/ of layer n (1 = base)."""
        return self.root / "overlay2" / self.layers[n - 1][1] / "diff"


@pytest.fixture(scope="module")
def image(module_tmp) -> Image:
    t = module_tmp
    d = xf.Dockerd(t / "d", t / "docker", live_restore=False)
    try:
        d.start()
        r = xf.busybox_rootfs(t / "rootfs", "sh ls rm mkdir ln chmod chown cp cat echo dd touch mv head seq",
                              "etc", "opt", "data/dir/sub", "tmp", "usr/sbin")
        (r / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        # setcap (and its libraries) inside the image: docker build's COPY drops security.capability.
        shutil.copy("/usr/sbin/setcap", r / "usr/sbin/setcap")
        for lib in re.findall(r"(/\S+)", xf.run(["ldd", "/usr/sbin/setcap"]).stdout):
            xf.run(["cp", "--parents", "-L", lib, r])
        (r / "opt/gone").write_text("gone\n")
        (r / "opt/keep").write_text("keep\n")
        (r / "data/dir/a").write_text("a\n")
        (r / "data/dir/sub/b").write_text("b\n")
        xf.run(["tar", "-C", r, "-cf", t / "rootfs.tar", "."])
        d.docker("import", t / "rootfs.tar", "base:1")
        ctx = t / "ctx"
        ctx.mkdir()
        (ctx / "rand1").write_bytes(os.urandom(300000))
        (ctx / "rand2").write_bytes(os.urandom(200000))
        (ctx / "Dockerfile").write_text(
            "FROM base:1\n"
            "RUN rm /opt/gone && rm -rf /data/dir && mkdir /data/dir && echo fresh >/data/dir/c\n"
            "RUN mkdir -p /srv/sticky && echo linked >/srv/a && ln /srv/a /srv/b && cp /bin/busybox /srv/suid"
            " && chmod 4755 /srv/suid && cp /bin/busybox /srv/sgid && chmod 2711 /srv/sgid && chmod 1777 /srv/sticky"
            " && chown 123:456 /srv/a && seq 1 400000 >/srv/text && dd if=/dev/zero of=/srv/zeros bs=1048576 count=3"
            " 2>/dev/null && ln -s ../opt/keep /srv/sym && ln -s /nowhere /srv/dangling\n"
            "COPY rand1 rand2 /srv/\n"
            "RUN cp /bin/busybox /srv/capfile && /usr/sbin/setcap cap_net_raw+ep /srv/capfile\n")
        build(d, ctx, "app:1")
        image_id = d.docker("image", "inspect", "-f", "{{.Id}}", "app:1").stdout.strip()
        # Saved first: docker save mounts the top layer, and overlayfs then stores its private
        # bookkeeping xattrs (trusted.overlay.impure/uuid/origin) in that layer's diff.
        d.docker("save", "app:1", "-o", t / "app.tar", timeout=300)
        yield Image(d, t / "docker", image_id, xf.layer_chain(t / "docker", image_id), ctx, r, t / "app.tar")
    finally:
        d.close()


def build(d: xf.Dockerd, ctx: Path, tag: str):
    xf.run(["/usr/bin/docker", "-H", d.host, "build", "--network", "none", "-q", "-t", tag, ctx], timeout=600,
           env={"DOCKER_BUILDKIT": "0"})


@dataclass
class Published:
    path: Path
    out: subprocess.CompletedProcess
    same_cache_ids: bool


@pytest.fixture(scope="module")
def stores(module_tmp, image, extrafs) -> dict[str, Published]:
    """dr: published from the data-root while its dockerd runs; ar: from the `docker save` archive."""
    t = module_tmp
    out = {}
    for name, args in (("dr", ["--data-root", image.root, "app:1"]), ("ar", ["--archive", image.archive])):
        t0 = time.monotonic()
        p = xf.run([extrafs, "publish", *args, "--to", t / f"store-{name}"], timeout=300)
        print(f"publish {args[0]}: {time.monotonic() - t0:.2f} s: {p.stdout.strip()}")
        out[name] = Published(t / f"store-{name}", p, name == "dr")
    return out


def store_cids(s: Published, image: Image) -> list[str]:
    """The store's cache-ids of app:1's layers, base first."""
    return [c for _, c in xf.layer_chain(s.path, image.id)]


def test_the_data_root_layers_hold_the_odd_cases(image):
    assert len(image.layers) >= 3, f"app:1 has {len(image.layers)} layers, expected at least 3"
    assert stat.S_ISCHR(os.lstat(image.diff(2) / "opt/gone").st_mode), "no whiteout for /opt/gone"
    assert os.getxattr(image.diff(2) / "data/dir", "trusted.overlay.opaque") == b"y", "/data/dir is not opaque"
    caps = xf.run(["getcap", image.diff(len(image.layers)) / "srv/capfile"]).stdout
    assert "cap_net_raw" in caps, f"the capability did not survive docker build: {caps!r}"


def test_publish_says_one_line_and_nothing_on_stderr(stores):
    p = stores["dr"].out
    assert p.stderr == "", f"publish wrote to stderr when not on a terminal: {p.stderr[:300]}"
    assert len(p.stdout.splitlines()) == 1, f"publish printed more than one summary line: {p.stdout}"


@pytest.mark.parametrize("name", ["dr", "ar"])
def test_a_store_published_has_the_images_metadata_and_packed_layers(name, stores, image):
    s = stores[name]
    meta = s.path / "image" / "overlay2"
    config = meta / "imagedb" / "content" / "sha256" / image.id[7:]
    assert "sha256:" + hashlib.sha256(config.read_bytes()).hexdigest() == image.id, "image config digest mismatch"
    repos = json.loads((meta / "repositories.json").read_text())
    assert repos["Repositories"]["app"]["app:1"] == image.id, repos
    prev_link, prev_lower = "", ""
    for n, (chain, cid) in enumerate(image.layers, 1):
        db, src = meta / "layerdb" / "sha256" / chain, image.root / "image" / "overlay2" / "layerdb" / "sha256" / chain
        assert db.is_dir(), f"no layerdb for layer {n}"
        scid = (db / "cache-id").read_text()
        if s.same_cache_ids:
            assert scid == cid, f"layer {n}: cache-id {scid}, the data-root has {cid}"
        else:
            assert re.fullmatch(r"[0-9a-f]{64}", scid) and scid != cid, f"layer {n}: cache-id {scid!r} is not fresh"
        assert (db / "diff").read_bytes() == (src / "diff").read_bytes(), f"layer {n}: diff differs"
        if n > 1:
            assert (db / "parent").read_bytes() == (src / "parent").read_bytes(), f"layer {n}: parent differs"
        else:
            assert not (db / "parent").exists(), "the base layer has a parent file"
        assert (db / "size").read_text() == (src / "size").read_text(), f"layer {n}: size differs"
        if s.same_cache_ids:
            assert (db / "tar-split.json.gz").read_bytes() == (src / "tar-split.json.gz").read_bytes(), \
                f"layer {n}: tar-split.json.gz not copied"
        else:
            assert not (db / "tar-split.json.gz").exists(), f"layer {n} has a tar-split.json.gz from nowhere"
        layers = s.path / "extrafs" / "layers"
        assert (layers / f"{scid}.blob").is_file() and (layers / f"{scid}.index").is_file(), f"layer {n}: no blob/index"
        assert not os.path.lexists(s.path / "overlay2" / scid / "diff"), f"layer {n} has a diff/ directory"
        link = (s.path / "overlay2" / scid / "link").read_text()
        assert re.fullmatch(r"[A-Z0-9]{26}", link), f"layer {n}: link {link!r}"
        want_lower = ":".join(x for x in (f"l/{prev_link}" if prev_link else "", prev_lower) if x)
        if n == 1:
            assert not (s.path / "overlay2" / scid / "lower").exists(), "the base layer has a lower file"
        else:
            assert (s.path / "overlay2" / scid / "lower").read_text() == want_lower, f"layer {n}: lower"
        prev_link, prev_lower = link, want_lower


@pytest.mark.parametrize("name", ["dr", "ar"])
def test_compressible_and_zero_content_is_packed_small(name, stores, image):
    third = store_cids(stores[name], image)[2]
    size = (stores[name].path / "extrafs" / "layers" / f"{third}.blob").stat().st_size
    text = (image.diff(3) / "srv/text").stat().st_size
    assert size < text + 2 * MiB, f"layer 3's blob is {size} bytes: no compression, or zeros stored"


def test_verify_finds_both_stores_good(stores, extrafs):
    for s in stores.values():
        print(xf.run([extrafs, "verify", s.path], timeout=300).stdout.strip().splitlines()[-1])


def test_every_published_layer_serves_as_the_data_root_has_it(stores, image, mount):
    m1, m2 = mount(stores["dr"].path), mount(stores["ar"].path)
    acids = store_cids(stores["ar"], image)
    for i, (_, cid) in enumerate(image.layers):
        print(f"layer {i + 1} (data-root): {xf.compare_trees(m1.path / 'overlay2' / cid / 'diff', image.diff(i + 1), '--no-ctime')}")
        print(f"layer {i + 1} (archive): {compare_archive.compare(m2.path / 'overlay2' / acids[i] / 'diff', image.diff(i + 1))}")
    d2 = m2.path / "overlay2" / acids[1] / "diff"
    assert os.getxattr(d2 / "data/dir", "trusted.overlay.opaque") == b"y", ".wh..wh..opq did not become opaque=y"
    st = os.lstat(d2 / "opt/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, ".wh.gone did not become a 0/0 character device"
    a = [m2.path / "overlay2" / c / "diff/srv/a" for c in (acids[-1], acids[2])]
    assert next(os.lstat(p).st_nlink for p in a if os.path.lexists(p)) == 2, "the hard link group was lost"


@pytest.mark.parametrize("name", ["dr", "ar"])
def test_republishing_writes_nothing(name, stores, image, extrafs):
    s = stores[name]
    args = ["--data-root", image.root, "app:1"] if name == "dr" else ["--archive", image.archive]
    before = xf.snapshot(s.path)
    out = xf.run([extrafs, "publish", *args, "--to", s.path], timeout=300).stdout
    assert f"0 layers written, {len(image.layers)} already in the store" in out, out
    xf.assert_unchanged(before, xf.snapshot(s.path), "the store after re-publishing")


def order_trace(image: Image, path: Path) -> Path:
    copy_cid = image.layers[3][1]
    assert (image.root / "overlay2" / copy_cid / "diff/srv/rand1").is_file(), "layer 4 is not the COPY layer"
    path.write_text(f"{copy_cid} 1 srv/rand2\n{copy_cid} 2 srv/nope\n{copy_cid} 3 srv/rand1\n")
    return path


@pytest.mark.parametrize("name", ["dr", "ar"])
def test_order_packs_the_traced_files_first_in_trace_order(name, image, extrafs, tmp):
    args = ["--data-root", image.root, "app:1"] if name == "dr" else ["--archive", image.archive]
    store = tmp / "store"
    xf.run([extrafs, "publish", *args, "--to", store, "--order", order_trace(image, tmp / "trace")], timeout=300)
    top = (store / "image/overlay2/layerdb/sha256" / image.layers[3][0] / "cache-id").read_text()
    blob = (store / "extrafs/layers" / f"{top}.blob").read_bytes()
    assert blob[:200000] == (image.ctx / "rand2").read_bytes(), "the blob does not start with srv/rand2"
    assert blob[200000:500000] == (image.ctx / "rand1").read_bytes(), "srv/rand1 does not follow srv/rand2"
    xf.run([extrafs, "verify", store], timeout=300)


def test_order_into_a_store_with_the_layers_keeps_their_packing_and_warns(stores, image, extrafs, tmp):
    s = stores["dr"].path
    before = xf.snapshot(s)
    p = xf.run([extrafs, "publish", "--data-root", image.root, "app:1", "--to", s, "--order",
                order_trace(image, tmp / "trace")], timeout=300)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and \
        f"warning: --order applies only to layers written now; {len(image.layers)} layers already in" in lines[0], p.stderr
    xf.assert_unchanged(before, xf.snapshot(s), "the store after re-publishing with --order")


def test_bad_input_gets_one_line_and_writes_nothing(image, extrafs, tmp):
    ns = tmp / "never"
    xf.run(["tar", "-C", image.rootfs, "-cf", tmp / "plain.tar", "etc"])
    (tmp / "junk.tar").write_bytes(os.urandom(10000))
    (tmp / "afile").touch()
    for code, args in (
            (1, ["--data-root", tmp / "nope", "app:1"]),                       # missing data-root
            (1, ["--data-root", image.root, "nosuch:9"]),                      # unknown image
            (1, ["--archive", tmp / "plain.tar"]),                             # not docker save output
            (1, ["--archive", tmp / "junk.tar"]),                              # not a tar at all
            (2, ["--data-root", image.root, "app:1", "--archive", image.archive]),
            (2, []),                                                           # neither
            (1, ["--archive", image.archive, "--to", tmp / "afile" / "store"])):  # a store under a file
        to = [] if "--to" in args else ["--to", ns]
        xf.expect_fail([extrafs, "publish", *args, *to], code, no_stdout=True)
    xf.expect_fail([extrafs, "publish", "--archive", image.archive], 2, no_stdout=True)  # no --to
    assert not ns.exists(), "bad input created a store"


def unpacked_archive(image: Image, d: Path) -> tuple[Path, str]:
    """The `docker save` archive unpacked into d, and its top layer's member name."""
    d.mkdir()
    with tarfile.open(image.archive) as t:
        t.extractall(d)
    return d, json.loads((d / "manifest.json").read_text())[0]["Layers"][-1]


def test_a_diff_id_mismatch_is_refused_and_leaves_nothing(image, extrafs, tmp):
    x, top = unpacked_archive(image, tmp / "x")
    xf.run(["tar", "-C", image.rootfs, "-cf", x / top, "opt"])  # another tar in its place
    xf.run(["tar", "-C", x, "-cf", tmp / "bad-diff.tar", "."])
    ns = tmp / "never"
    xf.expect_fail([extrafs, "publish", "--archive", tmp / "bad-diff.tar", "--to", ns], 1, no_stdout=True)
    assert not ns.exists(), f"a diffID mismatch left files: {list(ns.rglob('*'))[:10]}"


def test_a_gzip_compressed_layer_is_accepted(image, extrafs, tmp):
    # As other tools write them; the diffID is that of the uncompressed stream.
    x, top = unpacked_archive(image, tmp / "x")
    (x / top).write_bytes(gzip.compress((x / top).read_bytes(), mtime=0))
    xf.run(["tar", "-C", x, "-cf", tmp / "gz.tar", "."])
    print(xf.run([extrafs, "publish", "--archive", tmp / "gz.tar", "--to", tmp / "store"], timeout=300).stdout)
    xf.run([extrafs, "verify", tmp / "store"], timeout=300)


def test_a_publish_killed_half_way_leaves_no_incomplete_layer_in_the_catalog(image, extrafs, tmp):
    ctx = tmp / "ctx"
    ctx.mkdir()
    (ctx / "big").write_bytes(os.urandom(200 * MiB))
    (ctx / "Dockerfile").write_text("FROM app:1\nCOPY big /big\n")
    build(image.d, ctx, "big:1")
    (ctx / "big").unlink()
    store = tmp / "store"
    xf.run([extrafs, "publish", "--data-root", image.root, "app:1", "--to", store], timeout=300)
    catalog = (store / "extrafs/catalog").read_bytes()
    layers = store / "extrafs/layers"

    def big_tmp():
        return [p for p in layers.glob(".*.blob.tmp-*") if p.is_file() and p.stat().st_size > 40 * MiB]

    p = subprocess.Popen([str(extrafs), "publish", "--data-root", str(image.root), "big:1", "--to", str(store)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = xf.wait_until(big_tmp, 60, "the big blob being written")
        p.send_signal(signal.SIGKILL)
        print(f"publish killed with {seen[0].stat().st_size >> 20} MiB of the blob written")
    finally:
        p.kill()
        p.wait(timeout=30)
    assert (store / "extrafs/catalog").read_bytes() == catalog, "the killed publish changed the catalog"
    xf.run([extrafs, "verify", store], timeout=300)
    print(xf.run([extrafs, "publish", "--data-root", image.root, "big:1", "--to", store], timeout=300).stdout)
    assert not [p for p in os.listdir(layers) if "tmp" in p], f"temporaries left: {os.listdir(layers)}"
    xf.run([extrafs, "verify", store], timeout=300)
