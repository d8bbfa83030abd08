"""Docker pairing end to end (the port of tests/docker/test_docker_e2e.sh): an image built by a
real dockerd (A) is published with `extrafs publish` twice, from A's data-root (STORE) and from
its `docker save` archive tagged e2e-app:archive (STORE2), and copied by hand as a Hermes-style
store indexed with `extrafs index` (STORE3). One private nfs-ganesha serves the three (one
export, a subdirectory each); extrafs mounts them and `extrafs docker attach` registers the image
into fresh data-roots whose dockerds run it, lazily, with exactly the bytes the original has.

The image, the stores and the server are made once per module; each test mounts and attaches
for itself, so it fails or passes on its own.

Checks of the shell test, each kept ([x]: where it is now):
[x] the image (imported busybox-static base + `docker build` layers with a whiteout, an opaque
    directory, a hard link, a setuid file, a file capability from an ADDed tar, a 50 MiB file
    nothing reads) builds on A with >= 4 layers and runs there            -> fixture `image`
[x] publish --data-root and --archive exit 0 and say "N layers written"  -> test_publish_*
[x] --data-root keeps A's cache-ids, --archive makes fresh ones          -> test_publish_*
[x] packed stores: blob + index + link per layer, no diff/, a catalog; tar-split kept from the
    data-root, none from the archive                                      -> test_publish_*
[x] STORE's repositories.json has e2e-base:1 and e2e-app:1; STORE2's only e2e-app:archive
[x] `extrafs index` of the Hermes-style copy exits 0                      -> fixture `stores`
[x] the top layer on each mount carries security.capability   -> test_the_served_top_layers_...
[x] `extrafs ls` of STORE, STORE2, MNT, MNT2: the tag, the image id, every layer; CACHED and a %
    on a mount only; ls of a directory that is no store and of a missing path: exit 1, one
    "extrafs: " line                                                       -> test_ls_*
[x] attach refuses: no --mount, no image (exit 2), a bad reference (exit 2, one line), a
    directory that is no extrafs mount, an image the store lacks, a data-root of the vfs driver
    (exit 1, one line naming vfs); a refused attach creates no data-root -> test_attach_refuses_*
[x] attach writes the documented layout (0710 layer dirs, diff symlinks into the mount, a 26
    character link with its l/ symlink, lower, work/ above the base); a second attach says
    "already attached" and changes nothing                                -> test_attach_writes_*
[x] for STORE (B), STORE2 (C) and STORE3 (H): the dockerd lists the image as A's id, `docker run
    --network none` prints the CMD's two lines, less than half of the image's bytes (> 50 MiB)
    were fetched, `docker export` equals A's entry by entry and byte by byte with the whiteout,
    opaque directory, hard link, setuid bit and capability      -> test_dockerd_* / test_a_hermes_*
[x] while B runs: attach of the image attached whole exits 0 saying "already attached" (and
    writes nothing); attach of e2e-base:1, which has a tag to write, and detach are refused
    (exit 1, one line; attach's names dockerd)
[x] `docker save` works on B and H (every layer tar hashes to its diff_id); on C it fails naming
    the missing tar-split and C still runs the image, also after a dockerd restart; rmi and
    prune -a on C leave no overlay2 dir; STORE2 and MNT2 unchanged        -> test_dockerd_*_archive_*
[x] H: prune -a removes the image; STORE3 unchanged                       -> test_a_hermes_*
[x] B runs the image after a restart, next to A (another data-root) running it at the same time;
    attach into B's data-root works while only A runs                     -> test_..._restart_...
[x] rmi removes B's overlay2 dirs; re-attach runs again; prune -a removes the image; STORE and
    MNT unchanged after rmi and after prune                               -> test_rmi_*
[x] detach with a shared base keeps the base layer (said, and its diff symlink) and removes the
    rest; detaching the base too leaves the data-root exactly as before the attaches; the tag is
    gone from repositories.json; detaching an image not there: exit 1, one line -> test_detach_removes_*
[x] detach keeps the layers and config a container uses; the container still runs; dockerd then
    removes the rest itself; STORE unchanged at the end                   -> test_detach_keeps_*
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import compare_tars
import xf

IMAGE = "e2e-app:1"
IMAGE_AR = "e2e-app:archive"
BASE = "e2e-base:1"
EXPECT = "extrafs-e2e-ok"
RUN_OUTPUT = f"{EXPECT}\nhello"
# docker create makes these afresh in each container's init layer.
INIT_LAYER = [".", ".dockerenv", "dev", "dev/console", "dev/pts", "dev/shm", "etc", "etc/hostname",
              "etc/hosts", "etc/mtab", "etc/resolv.conf", "proc", "sys"]
ODD = ["opt/capbin", "opt/hard", "opt/suid", "opt/unused.bin", "data/sub/c"]


@dataclass
class Image:
    """e2e-app:1 as dockerd A built it."""
    ra: Path            # A's data-root
    id: str             # sha256:...
    nlayers: int
    export: Path        # `docker export` of a container of it on A
    archive: Path       # `docker save` of it tagged e2e-app:archive
    no_store: Path      # a directory that is no store


@dataclass
class Stores:
    root: Path          # the NFS export: dr/ (STORE), ar/ (STORE2), hermes/ (STORE3)
    publish_out: dict[str, str]
    layers: dict[str, list[tuple[str, str]]]      # store -> [(chain id, cache-id)], base first
    snapshots: dict[str, list[str]] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / name

    def cids(self, name: str) -> list[str]:
        return [c for _, c in self.layers[name]]


def docker_run(d: xf.Dockerd, image: str) -> str:
    return d.docker("run", "--rm", "--network", "none", image, timeout=120).stdout.rstrip("\n")


@pytest.fixture(scope="module")
def image(module_tmp) -> Image:
    t = module_tmp
    a = xf.Dockerd(t / "da", t / "ra", live_restore=False)
    try:
        a.start()
        rootfs = xf.busybox_rootfs(t / "rootfs", "sh ls cat echo rm mkdir ln chmod stat head true touch",
                                   "etc", "data/keep", "data/sub", "opt", "tmp")
        (rootfs / "etc" / "greeting").write_text("hello\n")
        (rootfs / "etc" / "removeme").write_text("gone\n")
        (rootfs / "data" / "keep" / "a").write_text("a\n")
        (rootfs / "data" / "sub" / "b").write_text("b\n")
        (rootfs / "opt" / "unused.bin").write_bytes(os.urandom(50 << 20))
        xf.run(["tar", "-C", rootfs, "-cf", t / "rootfs.tar", "."])
        a.docker("import", t / "rootfs.tar", BASE)
        ctx, capsrc = t / "ctx", t / "capsrc"
        ctx.mkdir()
        capsrc.mkdir()
        (capsrc / "capbin").write_text("capfile\n")
        (capsrc / "capbin").chmod(0o755)
        xf.run(["setcap", "cap_net_raw+ep", capsrc / "capbin"])
        xf.run(["tar", "--xattrs", "--xattrs-include=security.capability", "-C", capsrc, "-cf", ctx / "cap.tar",
                "capbin"])
        (ctx / "Dockerfile").write_text(
            f"FROM {BASE}\n"
            "RUN rm /etc/removeme && rm -rf /data/sub && mkdir /data/sub && echo new >/data/sub/c\n"
            "RUN echo linked >/opt/orig && ln /opt/orig /opt/hard && echo suid >/opt/suid && chmod 4755 /opt/suid\n"
            "ADD cap.tar /opt/\n"
            f'CMD ["/bin/sh", "-c", "echo {EXPECT}; cat /etc/greeting"]\n')
        a.docker("build", "--network", "none", "-q", "-t", IMAGE, ctx, timeout=300)
        image_id = a.docker("image", "inspect", "-f", "{{.Id}}", IMAGE).stdout.strip()
        nlayers = int(a.docker("image", "inspect", "-f", "{{len .RootFS.Layers}}", IMAGE).stdout)
        assert nlayers >= 4, f"{IMAGE} has {nlayers} layers"
        assert docker_run(a, IMAGE).split("\n")[0] == EXPECT
        a.docker("create", "--name", "exp-a", IMAGE)
        a.docker("export", "-o", t / "export-a.tar", "exp-a")
        a.docker("rm", "exp-a")
        a.docker("tag", IMAGE, IMAGE_AR)
        a.docker("save", IMAGE_AR, "-o", t / "app.tar", timeout=300)
        a.docker("rmi", IMAGE_AR)
        print(f"{IMAGE} built: {image_id}, {nlayers} layers; docker save: {(t / 'app.tar').stat().st_size} bytes")
        a.stop(check=True)
    finally:
        a.close()
    return Image(t / "ra", image_id, nlayers, t / "export-a.tar", t / "app.tar", capsrc)


@pytest.fixture(scope="module")
def stores(module_tmp, image, extrafs) -> Stores:
    root = module_tmp / "stores"
    out = {
        "dr": xf.run([extrafs, "publish", "--data-root", image.ra, IMAGE, BASE, "--to", root / "dr"], timeout=300).stdout,
        "ar": xf.run([extrafs, "publish", "--archive", image.archive, "--to", root / "ar"], timeout=300).stdout,
    }
    for name in ("dr", "ar"):
        assert (root / name / "extrafs" / "catalog").stat().st_size > 0, f"publish made no catalog in {name}"
    hermes = root / "hermes"
    hermes.mkdir()
    xf.run(["cp", "-a", image.ra / "image", image.ra / "overlay2", hermes], timeout=120)
    xf.run([extrafs, "index", hermes], timeout=300)
    s = Stores(root, out, {n: xf.layer_chain(root / n, image.id) for n in ("dr", "ar", "hermes")})
    s.snapshots = {n: xf.snapshot(root / n) for n in ("dr", "ar", "hermes")}
    return s


@pytest.fixture(scope="module")
def nfs_url(module_ganesha, stores) -> str:
    return module_ganesha(stores.root).url4


@pytest.fixture
def mounts(mount, nfs_url):
    """mounts(name) -> a fresh extrafs mount of the store `name` (dr, ar, hermes) over NFSv4."""
    return lambda name: mount(f"{nfs_url}/{name}", cache_size="1G")


def attach(extrafs, image_ref: str, mnt, data_root) -> str:
    return xf.run([extrafs, "docker", "attach", image_ref, "--mount", mnt, "--data-root", data_root],
                  timeout=120).stdout


def detach(extrafs, image_ref: str, data_root) -> str:
    return xf.run([extrafs, "docker", "detach", image_ref, "--data-root", data_root], timeout=120).stdout


def refused(cmd, code: int, *needles: str) -> str:
    """The error contract with the "extrafs: " prefix of every error line."""
    line = xf.expect_fail(cmd, code, *needles)
    assert line.startswith("extrafs: "), f"stderr line without the extrafs: prefix: {line!r}"
    return line


def check_layout(root: Path, mnt, cids: list[str]):
    """What attach wrote into the data-root `root` is the documented layout."""
    bad, links = [], []
    for i, c in enumerate(cids):
        d = root / "overlay2" / c
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o710:
            bad.append(f"{d} mode {oct(st.st_mode)}")
        if os.readlink(d / "diff") != f"{mnt}/overlay2/{c}/diff":
            bad.append(f"{d}/diff -> {os.readlink(d / 'diff')}")
        link = (d / "link").read_text()
        if not re.fullmatch(r"[A-Z0-9]{26}", link):
            bad.append(f"{d}/link is {link!r}")
        elif os.readlink(root / "overlay2" / "l" / link) != f"../{c}/diff":
            bad.append(f"l/{link} -> {os.readlink(root / 'overlay2' / 'l' / link)}")
        if i == 0:
            if (d / "lower").exists() or (d / "work").exists():
                bad.append(f"{d}: the base layer has lower or work")
        else:
            want = ":".join("l/" + l for l in reversed(links))
            if not (d / "lower").exists() or (d / "lower").read_text() != want:
                bad.append(f"{d}/lower is not {want!r}")
            if not (d / "work").is_dir():
                bad.append(f"{d}/work missing")
        links.append(link)
        if not os.path.isdir(f"{d}/diff/"):
            bad.append(f"{d}/diff does not resolve")
    assert not bad, f"attach wrote into {root} other than the documented layout:\n" + "\n".join(bad)


def packed_problems(store: Path, layers: list[tuple[str, str]], tar_split: bool) -> list[str]:
    bad = []
    for chain, c in layers:
        if not (store / "extrafs" / "layers" / f"{c}.blob").is_file():
            bad.append(f"no {c}.blob")
        idx = store / "extrafs" / "layers" / f"{c}.index"
        if not idx.is_file() or idx.stat().st_size == 0:
            bad.append(f"no {c}.index")
        if os.path.lexists(store / "overlay2" / c / "diff"):
            bad.append(f"overlay2/{c}/diff exists")
        link = store / "overlay2" / c / "link"
        if not link.is_file() or link.stat().st_size == 0:
            bad.append(f"no overlay2/{c}/link")
        ts = store / "image" / "overlay2" / "layerdb" / "sha256" / chain / "tar-split.json.gz"
        if tar_split and (not ts.is_file() or ts.stat().st_size == 0):
            bad.append(f"no tar-split for {chain}")
        if not tar_split and os.path.lexists(ts):
            bad.append(f"tar-split for {chain}")
    if not (store / "extrafs" / "catalog").is_file():
        bad.append("no extrafs/catalog")
    return bad


def check_fetched_little(m: xf.Mount, cids: list[str]):
    """The run read less than half of the image's bytes (> 50 MiB) from the server, and more than none."""
    s = m.stats()
    total = sum(l["bytes_total"] for l in s["layers"] if l["cache_id"] in cids)
    fetched = s["bytes_fetched"]
    print(f"{m.source}: the run fetched {fetched} of {total} bytes ({100.0 * fetched / max(total, 1):.1f}%)")
    assert total > 50 << 20, f"the image's layers hold {total} bytes, not the 50 MiB file: {s['layers']}"
    assert 0 < fetched < total // 2, f"fetched {fetched} of {total} bytes to run the image"


def check_export(d: xf.Dockerd, image_ref: str, want: Path, out: Path):
    """`docker export` of a container of image_ref equals the export from A (entry by entry, byte
    by byte) and holds every odd entry."""
    name = f"exp-{out.stem}"
    d.docker("create", "--name", name, image_ref)
    d.docker("export", "-o", out, name, timeout=300)
    d.docker("rm", name)
    diffs, summary = compare_tars.compare(want, out, ignore_mtime=INIT_LAYER, require=ODD)
    assert not diffs, f"the export differs from A's ({len(diffs)} differences):\n" + "\n".join(diffs[:30])
    print(f"export equals A's: {summary}")
    t = {}
    for m in tarfile.open(out):
        t[compare_tars.name_of(m)] = m
    odd = {
        "whiteout hides etc/removeme": "etc/removeme" not in t,
        "opaque dir hides data/sub/b": "data/sub/b" not in t and "data/sub/c" in t and "data/keep/a" in t,
        "opt/hard and opt/orig are hard links": any(
            x in t and t[x].islnk() and t[x].linkname.lstrip("./") == y
            for x, y in (("opt/hard", "opt/orig"), ("opt/orig", "opt/hard"))),
        "opt/suid is setuid": "opt/suid" in t and bool(t["opt/suid"].mode & 0o4000),
        "opt/capbin has security.capability":
            "opt/capbin" in t and "SCHILY.xattr.security.capability" in t["opt/capbin"].pax_headers,
    }
    assert all(odd.values()), f"the export lacks: {[k for k, v in odd.items() if not v]}"
    out.unlink()


def check_save(d: xf.Dockerd, image_ref: str, out: Path):
    """`docker save` works and every layer tar in it hashes to the config's diff_id: dockerd rebuilt
    each layer tar byte for byte from the served files and the tar-split."""
    d.docker("save", image_ref, "-o", out, timeout=300)
    with tarfile.open(out) as t:
        man = json.load(t.extractfile("manifest.json"))[0]
        cfg = json.load(t.extractfile(man["Config"]))
        got = []
        for layer in man["Layers"]:
            h, f = hashlib.sha256(), t.extractfile(layer)
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
            got.append("sha256:" + h.hexdigest())
    assert got == cfg["rootfs"]["diff_ids"], f"layer tars {got} != diff_ids {cfg['rootfs']['diff_ids']}"
    out.unlink()


def overlay_dirs_left(root: Path) -> list[str]:
    return [p.name for p in (root / "overlay2").iterdir() if p.name != "l"]


def run_attached(extrafs, dockerd, m: xf.Mount, image_ref: str, root: Path, cids: list[str], want_id: str) -> xf.Dockerd:
    """Attaches image_ref (layers `cids`) from the mount into `root`, which must then have the
    documented layout, and starts a dockerd there, which must list it as want_id and run it."""
    attach(extrafs, image_ref, m.path, root)
    check_layout(root, m.path, cids)
    d = dockerd(root, live_restore=False)
    got = d.docker("image", "inspect", "-f", "{{.Id}}", image_ref).stdout.strip()
    assert got == want_id, f"dockerd lists {image_ref} as {got}, A built {want_id}"
    assert docker_run(d, image_ref) == RUN_OUTPUT
    return d


# ---------------------------------------------------------------------------------------------


def test_publish_from_the_data_root_keeps_cache_ids_and_tar_split(image, stores):
    out = stores.publish_out["dr"]
    assert re.search(rf"^published .*{image.nlayers} layers written", out, re.M), out
    cids = stores.cids("dr")
    assert len(cids) == image.nlayers
    assert all((image.ra / "overlay2" / c).is_dir() for c in cids), f"not A's cache-ids: {cids}"
    assert packed_problems(stores.path("dr"), stores.layers["dr"], tar_split=True) == []
    repos = (stores.path("dr") / "image" / "overlay2" / "repositories.json").read_text()
    assert '"e2e-base"' in repos and f'"{IMAGE}"' in repos, repos[:400]


def test_publish_from_an_archive_makes_fresh_cache_ids_and_no_tar_split(image, stores):
    out = stores.publish_out["ar"]
    assert re.search(rf"^published .*{image.nlayers} layers written", out, re.M), out
    cids = stores.cids("ar")
    assert len(cids) == image.nlayers
    assert not any((image.ra / "overlay2" / c).exists() for c in cids), f"STORE2 reuses a cache-id of A: {cids}"
    assert packed_problems(stores.path("ar"), stores.layers["ar"], tar_split=False) == []
    repos = (stores.path("ar") / "image" / "overlay2" / "repositories.json").read_text()
    assert f'"{IMAGE_AR}"' in repos and f'"{IMAGE}"' not in repos, repos[:400]


def test_the_served_top_layers_carry_the_file_capability(stores, mounts):
    for name in ("dr", "ar"):
        m = mounts(name)
        capbin = m.path / "overlay2" / stores.cids(name)[-1] / "diff" / "opt" / "capbin"
        assert os.getxattr(capbin, "security.capability", follow_symlinks=False), f"{capbin}: empty capability"


def test_ls_shows_tags_image_id_and_layers_of_stores_and_mounts(extrafs, image, stores, mounts):
    for name, tag in (("dr", IMAGE), ("ar", IMAGE_AR)):
        for where, is_mount in ((stores.path(name), False), (mounts(name).path, True)):
            out = xf.run([extrafs, "ls", where], timeout=120).stdout
            assert tag in out and image.id[7:19] in out, f"ls {where}:\n{out}"
            for c in stores.cids(name):
                assert f"layer {c[:12]}" in out, f"ls {where} does not show layer {c[:12]}:\n{out}"
            if is_mount:
                assert "CACHED" in out and re.search(r"[0-9.]+%", out), f"ls {where} shows no cached %:\n{out}"
            else:
                assert "CACHED" not in out, f"ls {where} shows a CACHED column:\n{out}"
    refused([extrafs, "ls", image.no_store], 1)
    refused([extrafs, "ls", image.no_store.parent / "nonexistent"], 1)


def test_attach_refuses_bad_requests_and_writes_nothing(extrafs, image, stores, mounts, tmp):
    m = mounts("dr")
    rb = tmp / "rb"
    x = [extrafs, "docker", "attach"]
    refused([*x, IMAGE, "--data-root", rb], 2)
    refused([*x, "--mount", m.path, "--data-root", rb], 2)
    refused([*x, "bad ref", "--mount", m.path, "--data-root", rb], 2)
    refused([*x, IMAGE, "--mount", stores.path("dr"), "--data-root", rb], 1)
    refused([*x, "nosuch:1", "--mount", m.path, "--data-root", rb], 1)
    (tmp / "rvfs" / "image" / "vfs").mkdir(parents=True)
    refused([*x, IMAGE, "--mount", m.path, "--data-root", tmp / "rvfs"], 1, "vfs")
    assert not rb.exists(), "a refused attach created the data-root"


def test_attach_writes_the_documented_layout_and_a_second_attach_changes_nothing(extrafs, stores, mounts, tmp):
    m = mounts("dr")
    rb = tmp / "rb"
    attach(extrafs, IMAGE, m.path, rb)
    check_layout(rb, m.path, stores.cids("dr"))
    before = xf.dataroot_listing(rb)
    out = attach(extrafs, IMAGE, m.path, rb)
    assert "already attached" in out, out
    xf.assert_unchanged(before, xf.dataroot_listing(rb), "the data-root after a second attach")


def test_dockerd_runs_the_data_root_published_image_lazily_and_exactly(extrafs, image, stores, mounts, dockerd, tmp):
    m = mounts("dr")
    rb = tmp / "rb"
    b = run_attached(extrafs, dockerd, m, IMAGE, rb, stores.cids("dr"), image.id)
    # Attached whole already: nothing to write, so no refusal (and nothing written).
    before = xf.dataroot_listing(rb)
    out = attach(extrafs, IMAGE, m.path, rb)
    assert "already attached" in out, f"attach of the attached image while dockerd runs: {out}"
    xf.assert_unchanged(before, xf.dataroot_listing(rb), "the data-root after attaching the attached image")
    refused([extrafs, "docker", "attach", BASE, "--mount", m.path, "--data-root", rb], 1, "dockerd")
    refused([extrafs, "docker", "detach", IMAGE, "--data-root", rb], 1)
    check_fetched_little(m, stores.cids("dr"))
    check_export(b, IMAGE, image.export, tmp / "export-b.tar")
    check_save(b, IMAGE, tmp / "save-b.tar")


def test_dockerd_runs_the_archive_published_image_but_cannot_save_it(extrafs, image, stores, mounts, dockerd, tmp):
    m2 = mounts("ar")
    rc = tmp / "rc"
    c = run_attached(extrafs, dockerd, m2, IMAGE_AR, rc, stores.cids("ar"), image.id)
    check_fetched_little(m2, stores.cids("ar"))
    check_export(c, IMAGE_AR, image.export, tmp / "export-c.tar")
    mnt2_before = xf.snapshot(m2.path)
    # extrafs-publish(8): a layer published from an archive has no tar-split, so docker save fails.
    p = c.docker("save", IMAGE_AR, "-o", tmp / "save-c.tar", timeout=300, check=False)
    assert p.returncode != 0, "docker save on C succeeded; extrafs-publish(8) says it fails"
    assert "tar-split" in p.stderr.lower(), f"docker save fails, but not for the missing tar-split: {p.stderr[:300]}"
    assert docker_run(c, IMAGE_AR).split("\n")[0] == EXPECT, "C does not run it after the failed save"
    c.stop(check=True)
    c.start()
    assert docker_run(c, IMAGE_AR).split("\n")[0] == EXPECT, "C does not run it after a restart"
    c.docker("rmi", IMAGE_AR)
    c.docker("image", "prune", "-a", "-f")
    assert overlay_dirs_left(rc) == [], "rmi and prune left overlay2 dirs on C"
    c.stop(check=True)
    xf.assert_unchanged(stores.snapshots["ar"], xf.snapshot(stores.path("ar")), "STORE2")
    xf.assert_unchanged(mnt2_before, xf.snapshot(m2.path), "MNT2")


def test_a_hermes_style_store_attaches_runs_exports_and_saves(extrafs, image, stores, mounts, dockerd, tmp):
    m3 = mounts("hermes")
    rh = tmp / "rh"
    h = run_attached(extrafs, dockerd, m3, IMAGE, rh, stores.cids("hermes"), image.id)
    check_fetched_little(m3, stores.cids("hermes"))
    check_export(h, IMAGE, image.export, tmp / "export-h.tar")
    check_save(h, IMAGE, tmp / "save-h.tar")
    h.docker("image", "prune", "-a", "-f")
    assert h.docker("image", "inspect", IMAGE, check=False).returncode != 0, "prune -a left the image on H"
    h.stop(check=True)
    xf.assert_unchanged(stores.snapshots["hermes"], xf.snapshot(stores.path("hermes")), "STORE3")


def test_the_image_runs_after_a_dockerd_restart_next_to_another_dockerd(extrafs, image, stores, mounts, dockerd, tmp):
    m = mounts("dr")
    rb = tmp / "rb"
    b = run_attached(extrafs, dockerd, m, IMAGE, rb, stores.cids("dr"), image.id)
    b.stop(check=True)
    a = dockerd(image.ra, live_restore=False)
    # Only A runs, on another data-root: no reason to refuse.
    attach(extrafs, IMAGE, m.path, rb)
    b.start()
    assert docker_run(b, IMAGE).split("\n")[0] == EXPECT, "B does not run it after a restart"
    assert docker_run(a, IMAGE).split("\n")[0] == EXPECT, "A does not run it while B runs"
    a.stop(check=True)


def test_rmi_reattach_and_prune_leave_the_store_and_the_mount_alone(extrafs, image, stores, mounts, dockerd, tmp):
    m = mounts("dr")
    rb = tmp / "rb"
    b = run_attached(extrafs, dockerd, m, IMAGE, rb, stores.cids("dr"), image.id)
    mnt_before = xf.snapshot(m.path)
    b.docker("rmi", IMAGE)
    assert overlay_dirs_left(rb) == [], "rmi left overlay2 dirs"
    xf.assert_unchanged(stores.snapshots["dr"], xf.snapshot(stores.path("dr")), "STORE after rmi")
    xf.assert_unchanged(mnt_before, xf.snapshot(m.path), "MNT after rmi")
    b.stop(check=True)
    attach(extrafs, IMAGE, m.path, rb)
    b.start()
    assert docker_run(b, IMAGE).split("\n")[0] == EXPECT, "does not run after re-attach"
    b.docker("image", "prune", "-a", "-f")
    assert b.docker("image", "inspect", IMAGE, check=False).returncode != 0, "prune -a left the image"
    xf.assert_unchanged(stores.snapshots["dr"], xf.snapshot(stores.path("dr")), "STORE after prune")
    xf.assert_unchanged(mnt_before, xf.snapshot(m.path), "MNT after prune")


def test_detach_removes_exactly_what_attach_made(extrafs, image, stores, mounts, dockerd, tmp):
    m = mounts("dr")
    rb = tmp / "rb"
    # A data-root a dockerd has used (as the shell test's B's was, after rmi and prune): an image
    # imported and removed leaves layerdb/sha256 and layerdb/tmp, which detach rightly keeps.
    (tmp / "one").mkdir()
    (tmp / "one" / "f").write_text("x\n")
    xf.run(["tar", "-C", tmp / "one", "-cf", tmp / "one.tar", "."])
    b = dockerd(rb, live_restore=False)
    b.docker("import", tmp / "one.tar", "used:1")
    b.docker("rmi", "used:1")
    b.stop(check=True)
    empty = xf.dataroot_listing(rb, nomtime=True)
    cids = stores.cids("dr")
    attach(extrafs, BASE, m.path, rb)
    out = attach(extrafs, IMAGE, m.path, rb)
    assert "1 already present" in out, f"the base layer was not reused: {out}"
    out = detach(extrafs, IMAGE, rb)
    assert f"kept layer {cids[0]}" in out, out
    assert (rb / "overlay2" / cids[0] / "diff").is_symlink(), "detach removed the base layer e2e-base:1 uses"
    assert not (rb / "overlay2" / cids[1]).exists(), "detach left a layer only e2e-app:1 used"
    detach(extrafs, BASE, rb)
    xf.assert_unchanged(empty, xf.dataroot_listing(rb, nomtime=True), "the data-root after attach and detach")
    repos = json.loads((rb / "image" / "overlay2" / "repositories.json").read_text())["Repositories"]
    assert not any(IMAGE in v for v in repos.values()), f"the tag is still in repositories.json: {repos}"
    refused([extrafs, "docker", "detach", IMAGE, "--data-root", rb], 1)


def test_detach_keeps_what_a_container_uses(extrafs, image, stores, mounts, dockerd, tmp):
    m = mounts("dr")
    rb = tmp / "rb"
    attach(extrafs, IMAGE, m.path, rb)
    b = dockerd(rb, live_restore=False)
    b.docker("create", "--network", "none", "--name", "keeper", IMAGE)
    b.stop(check=True)
    out = detach(extrafs, IMAGE, rb)
    assert "kept layer" in out, f"detach kept nothing: {out}"
    assert (rb / "image" / "overlay2" / "imagedb" / "content" / "sha256" / image.id[7:]).is_file(), \
        "detach removed the image config a container uses"
    b.start()
    assert b.docker("start", "-a", "keeper").stdout.split("\n")[0] == EXPECT, "the container does not run after detach"
    b.docker("rm", "keeper")
    b.docker("image", "prune", "-a", "-f")
    assert overlay_dirs_left(rb) == [], "dockerd did not remove the rest itself"
    b.stop(check=True)
    xf.assert_unchanged(stores.snapshots["dr"], xf.snapshot(stores.path("dr")), "STORE")
