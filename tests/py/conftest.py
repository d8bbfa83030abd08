"""Fixtures for extrafs's pytest integration tests (libfuse's test/ is the model: fixtures that
start real parts and always undo them; each test a short function that says what differed).

meson runs each test_*.py as one test (tests/py/meson.build):
    pytest-3 -p no:cacheprovider tests/py/test_x.py --extrafs BUILD/tools/extrafs --build-dir BUILD
By hand, from the source tree, as root:
    /usr/bin/python3 -m pytest -p no:cacheprovider tests/py/test_x.py --extrafs build/tools/extrafs

Fixtures:
    extrafs      Path of the extrafs binary under test
    build_dir    the meson build directory (for mount.extrafs, configured units, ...)
    tmp          a fresh directory directly under /tmp, removed after the test (mounts under it
                 are unmounted first)
    module_tmp   the same for what all tests of one module share, removed after the last one
    mount        factory: mount(SOURCE, options="k=v,...", cache=None, env=None) -> xf.Mount; every mount
                 is unmounted at teardown
    odd_store    the odd store (tests/integration/make_odd_store.sh), indexed -> xf.Store
    images       busybox images published into a store and mounted -> xf.Images (app-a:1, app-b:1, ...)
    ganesha      factory: ganesha(EXPORT_DIR, protocols="4") -> started xf.Ganesha (url4, url3)
    module_ganesha  the same, for a module's shared fixtures (stopped after its last test)
    dockerd      factory: dockerd(DATA_ROOT, live_restore=True, extra_args="", cwd=None) -> started
                 xf.Dockerd (cwd: the directory dockerd is started in)
    nspawn       factory: nspawn(binds={HOST: PATH}) -> nspawn.Machine, a Debian rootfs booted with
                 systemd as PID 1 (docker.io inside); .run(cmd), .copy_in(), .reboot(), .poweroff()
    test_ca      a throw-away certificate authority (openssl) -> servers.TestCA
    nginx        factory: nginx(ROOT, tls=True, catalog_max_age=1, limit_rate="") -> started
                 servers.Nginx serving ROOT over HTTP (url) and HTTPS (tls_url, test_ca's)
    squid        factory: squid(range_offset_limit="0") -> started servers.Squid (memory cache)
    nginx_slice_cache  factory: nginx_slice_cache(ORIGIN_URL) -> started servers.NginxSliceCache, a
                 caching reverse proxy (slice module, 1 MiB slices) in front of an http:// origin
    radosgw      a radosgw on a private one-OSD memstore Ceph cluster, one per test file (it
                 takes ~5 s and ~630 MB) -> servers.Radosgw; tests use their own buckets
    badhttp      factory: badhttp(ROOT, mode="good", tls=False) -> started servers.BadHttp, the
                 misbehaving server (badhttp.py)
    published_odd  the odd store with busybox, published (extrafs publish --data-root) -> xf.Store
    three_images xf.SavedImages: a:1 (busybox-static base), b:1 and c:1 (base + a layer of their own),
                 as `docker save` archives under tmp (xf.three_images)

A test that cannot run here (not root, no /dev/fuse) ends the run with exit status 77, which meson
shows as SKIP and scripts/test counts as a failure; a pytest skip inside a test does the same.
Nothing is ever skipped silently.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import servers
import xf

_skipped = []


def pytest_addoption(parser):
    parser.addoption("--extrafs", default=os.environ.get("EXTRAFS", ""),
                     help="path of the extrafs binary (or $EXTRAFS)")
    parser.addoption("--build-dir", default=os.environ.get("EXTRAFS_BUILD_DIR", ""),
                     help="meson build directory (default: two levels above --extrafs)")


def pytest_sessionstart(session):
    if os.geteuid() != 0:
        pytest.exit("these tests need root", returncode=77)
    if not os.path.exists("/dev/fuse"):
        pytest.exit("these tests need /dev/fuse", returncode=77)


def pytest_runtest_logreport(report):
    if report.skipped:
        _skipped.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    # A skip is never a pass here: 77 makes meson report SKIP, which scripts/test counts as failed.
    if _skipped and exitstatus == 0:
        print(f"\nskipped (counted as not passed): {_skipped}")
        session.exitstatus = 77


@pytest.fixture(scope="session")
def extrafs(pytestconfig) -> Path:
    p = pytestconfig.getoption("--extrafs")
    if not p:
        pytest.exit("give --extrafs PATH (or EXTRAFS=PATH)", returncode=2)
    p = Path(p).resolve()
    if not os.access(p, os.X_OK):
        pytest.exit(f"extrafs binary not executable: {p}", returncode=2)
    return p


@pytest.fixture(scope="session")
def build_dir(pytestconfig, extrafs) -> Path:
    b = pytestconfig.getoption("--build-dir")
    return Path(b).resolve() if b else extrafs.parent.parent


@pytest.fixture
def tmp():
    d = xf.short_tmpdir()
    yield d
    xf.remove_tree(d)


@pytest.fixture(scope="module")
def module_tmp():
    """A fresh directory directly under /tmp for what the tests of one module share (an image
    built once, stores published once), removed after the module's last test."""
    d = xf.short_tmpdir()
    yield d
    xf.remove_tree(d)


@pytest.fixture
def mount(extrafs, tmp):
    m = xf.Mounts(extrafs, tmp)
    yield m
    m.close()


@pytest.fixture
def odd_store(extrafs, tmp) -> xf.Store:
    return xf.make_odd_store(extrafs, tmp / "store")


def started_servers(make):
    """The body of a factory fixture: yields start(*args) which makes a server with
    make(n, *args) (n counts the servers made so far), starts it and returns what its start()
    returns; at teardown closes every one, the last started first."""
    made = []

    def start(*args, **kwargs):
        s = make(len(made), *args, **kwargs)
        made.append(s)
        return s.start()

    try:
        yield start
    finally:
        for s in reversed(made):
            s.close()


@pytest.fixture
def images(extrafs, tmp, mount) -> xf.Images:
    store = tmp / "store"
    xf.publish_busybox_images(extrafs, tmp, store)
    return xf.Images(store, mount(store).path)


@pytest.fixture
def ganesha(tmp):
    yield from started_servers(lambda n, export, protocols="4", access="RO":
                               xf.Ganesha(tmp / f"ganesha{n}", Path(export), protocols, access))


@pytest.fixture(scope="module")
def module_ganesha(module_tmp):
    """ganesha for what the tests of one module share: stopped after the module's last test."""
    yield from started_servers(lambda n, export, protocols="4", access="RO":
                               xf.Ganesha(module_tmp / f"ganesha{n}", Path(export), protocols, access))


@pytest.fixture
def dockerd(tmp):
    yield from started_servers(lambda n, data_root, live_restore=True, extra_args="", cwd=None:
                               xf.Dockerd(tmp / f"d{n}", Path(data_root), live_restore, extra_args, cwd))


@pytest.fixture
def nspawn(tmp):
    """Factory: nspawn(binds={HOST: PATH_INSIDE}, name=None) -> a booted nspawn.Machine (a real
    systemd as PID 1 in a Debian bookworm rootfs with docker.io; tests/py/nspawn.py). Every
    machine is powered off, and its overlay and cgroups removed, at teardown."""
    import nspawn as nspawn_mod
    machines = nspawn_mod.Machines(tmp)
    yield machines
    machines.close()


@pytest.fixture
def test_ca(tmp) -> servers.TestCA:
    return servers.TestCA(tmp / "ca")


@pytest.fixture
def nginx(tmp, test_ca):
    yield from started_servers(lambda n, root, tls=True, catalog_max_age=1, limit_rate="":
                               servers.Nginx(tmp / f"nginx{n}", Path(root), test_ca if tls else None, catalog_max_age,
                                             limit_rate))


@pytest.fixture
def squid():
    yield from started_servers(lambda n, range_offset_limit="0": servers.Squid(f"xf-squid{n}-", range_offset_limit))


@pytest.fixture(scope="module")
def radosgw():
    d = xf.short_tmpdir("xf-rgw-")
    r = servers.Radosgw(d / "rgw")
    try:
        yield r.start()
    finally:
        r.close()
        xf.remove_tree(d)


@pytest.fixture
def badhttp(tmp, test_ca):
    yield from started_servers(lambda n, root, mode="good", tls=False:
                               servers.BadHttp(tmp / f"bad{n}", Path(root), mode, test_ca if tls else None))


@pytest.fixture
def published_odd(extrafs, tmp) -> xf.Store:
    """The odd store (with /bin/busybox in its base layer, so that docker can run it),
    published into tmp/pub: a packed store (blobs, indexes, objects) as a build host makes."""
    odd = xf.make_odd_store(extrafs, tmp / "odd", busybox="/bin/busybox")
    pub = tmp / "pub"
    xf.run([extrafs, "publish", "--data-root", odd.path, "odd:latest", "--to", pub], timeout=300)
    return xf.Store(pub, odd.cids)


@pytest.fixture
def three_images(tmp) -> xf.SavedImages:
    return xf.three_images(tmp / "images")


@pytest.fixture
def nginx_slice_cache(tmp):
    """nginx_slice_cache(origin_url): a caching reverse proxy (slice module) in front of it."""
    yield from started_servers(lambda n, upstream: servers.NginxSliceCache(tmp / f"nginxcache{n}", upstream))
