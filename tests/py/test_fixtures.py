"""The fixtures themselves, against real parts: a local and an NFSv4 mount of the odd store serve
the same bytes as the store, stats answer, unmount ends the daemon; a private dockerd answers.
If these fail, every other test in tests/py would fail for the wrong reason."""
import hashlib

import xf


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def some_file(store):
    """A regular file of the base layer at least 1 MiB long (several chunks)."""
    diff = store.path / "overlay2" / store.cids[0] / "diff"
    for p in sorted(diff.rglob("*")):
        if p.is_file() and not p.is_symlink() and p.stat().st_size > (1 << 20):
            return p.relative_to(store.path)
    raise AssertionError(f"no file over 1 MiB under {diff}")


def test_local_and_nfs_mounts_serve_the_store(odd_store, mount, ganesha):
    rel = some_file(odd_store)
    local = mount(odd_store.path)
    assert sha(local.path / rel) == sha(odd_store.path / rel)
    g = ganesha(odd_store.path)
    nfs = mount(g.url4)
    assert sha(nfs.path / rel) == sha(odd_store.path / rel)
    s = nfs.stats()
    assert s["bytes_fetched"] >= (1 << 20), s
    assert {l["cache_id"] for l in s["layers"]} == set(odd_store.cids)
    nfs.unmount()
    assert not xf.process_alive(nfs.pid)


def test_expect_fail_checks_the_error_contract(extrafs, tmp):
    line = xf.expect_fail([extrafs, "mount", tmp / "no-such-store", tmp / "m"], 1, "no-such-store")
    assert "\n" not in line


def test_dockerd_answers(dockerd, tmp):
    d = dockerd(tmp / "root")
    assert d.docker("info", "--format", "{{.LiveRestoreEnabled}}").stdout.strip() == "true"
    assert d.docker("info", "--format", "{{.Driver}}").stdout.strip() == "overlay2"
