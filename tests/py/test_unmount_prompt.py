"""`extrafs unmount` returns at once, and the daemon exits, while the store does not answer: the
catalog refresh waiting on the store (an HTTP origin answering 503 with Retry-After, a hung NFS
server) is cut short, not waited for until its timeout (30 s per call here)."""
import time

import http_util
import xf


def timed_unmount(m: xf.Mount) -> float:
    t0 = time.monotonic()
    m.unmount(timeout=60)  # also waits (bounded) for the daemon to exit
    return time.monotonic() - t0


def test_unmount_while_the_http_refresh_waits_out_503s(extrafs, tmp, mount, badhttp):
    store = http_util.make_big_store(extrafs, tmp, size_mib=1)
    b = badhttp(store)
    m = mount(b.url, options="refresh=1,timeout=30")
    assert http_util.layer_file(m.path, "etc/hello").read_text() == "hello\n"
    b.set_mode("503=1000000:1")
    # The refresh thread is now inside a HEAD that is answered 503 with Retry-After: 1 again and
    # again: it would wait up to timeout=30 s before failing.
    xf.wait_until(lambda: len([r for r in b.requests() if r.startswith("HEAD /extrafs/catalog")]) >= 4, 20,
                  "the refresh to probe the catalog through the 503 answers")
    secs = timed_unmount(m)
    print(f"unmount with the refresh in its 503 back-off: {secs:.2f} s")
    assert secs < 5, f"unmount took {secs:.1f} s while the refresh waited on the store"


def test_unmount_while_the_nfs_server_is_hung(extrafs, tmp, mount, ganesha, published_odd):
    g = ganesha(published_odd.path)
    m = mount(g.url4, options="refresh=1,timeout=30")
    assert (m.path / "overlay2").is_dir()
    g.pause()  # SIGSTOP: every RPC of the refresh now waits until the 30 s timeout
    time.sleep(2.5)
    secs = timed_unmount(m)
    print(f"unmount with the NFS server hung and the refresh waiting on it: {secs:.2f} s")
    assert secs < 5, f"unmount took {secs:.1f} s while the refresh waited on the hung server"
