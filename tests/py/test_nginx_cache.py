"""nginx's proxy_cache with the slice module in front of a blob store (issue 17 section 3, the
site cache for stores published without --chunk-objects): hosts that mount the store through it
read exactly what the origin serves, a second host costs the origin no byte of layer data, and a
new catalog still reaches the hosts (the catalog is kept only for the origin's short max-age).
The server block is the one extrafs-store(5) documents (servers.NginxSliceCache)."""
import os
import threading
import re

import http_util
import xf


def blob_requests(origin) -> list[str]:
    return [line for line in origin.access_log() if re.search(r'"GET [^"]*/extrafs/layers/[^"]*\.blob', line)]


def test_hosts_behind_a_slice_cache_read_the_store_and_cost_the_origin_one_host(extrafs, tmp, mount, nginx,
                                                                                nginx_slice_cache, published_odd):
    origin = nginx(published_odd.path, tls=False)
    cache = nginx_slice_cache(origin.url)
    local = mount(published_odd.path)
    first = mount(cache.url)
    print("host 1:", http_util.compare_mounts(local.path, first.path, tmp / "odd"))
    after_first = len(blob_requests(origin))
    assert after_first > 0, "host 1 read no blob through the cache"
    # Every blob request the cache made was a 1 MiB slice (never the whole blob).
    for line in blob_requests(origin):
        assert '" 206 ' in line, line
    second = mount(cache.url)
    print("host 2:", http_util.compare_mounts(local.path, second.path, tmp / "odd"))
    extra = blob_requests(origin)[after_first:]
    print(f"origin blob requests: host 1 {after_first}, host 2 {len(extra)}")
    assert not extra, f"host 2 reached the origin for layer data: {extra[:5]}"
    for m in (first, second):
        s = m.stats()
        assert s["backend_errors"] == 0 and s["corrupt_fetches"] == 0, s
    hits = [line for line in cache.access_log() if "/extrafs/layers/" in line and line.endswith(" HIT")]
    assert hits, "the cache's own log shows no hit for layer data"


def test_a_new_image_reaches_hosts_through_the_slice_cache(extrafs, tmp, mount, nginx, nginx_slice_cache):
    store = http_util.make_big_store(extrafs, tmp, size_mib=8, tag="big:1")
    origin = nginx(store, tls=False)
    cache = nginx_slice_cache(origin.url)
    host = mount(cache.url, options="refresh=1")
    assert http_util.layer_file(host.path, "data/big").read_bytes() == (tmp / "bigsrc" / "data" / "big").read_bytes()
    src = tmp / "src2" / "data"
    src.mkdir(parents=True)
    (src / "new").write_bytes(os.urandom(3 << 20))
    xf.run(["/usr/bin/python3", xf.TESTS / "integration" / "make_save_archive.py", tmp / "b.tar", "big:2", tmp / "src2"],
           timeout=120)
    xf.run([extrafs, "publish", "--archive", tmp / "b.tar", "--to", store], timeout=120)
    # nginx keeps the catalog for the origin's max-age (1 s here), the host probes every second.
    xf.wait_until(lambda: "big:2" in (host.path / "image/overlay2/repositories.json").read_text(), 20,
                  "the host to see big:2 through the cache")
    assert http_util.layer_file(host.path, "data/new").read_bytes() == (src / "new").read_bytes()
    assert host.stats()["backend_errors"] == 0


def test_hosts_starting_together_cost_the_origin_each_slice_once(extrafs, tmp, mount, nginx, nginx_slice_cache):
    store = http_util.make_big_store(extrafs, tmp, size_mib=24, tag="big:1")
    want = (tmp / "bigsrc" / "data" / "big").read_bytes()
    origin = nginx(store, tls=False)
    cache = nginx_slice_cache(origin.url)
    hosts = [mount(cache.url) for _ in range(4)]
    results = [None] * len(hosts)

    def read(i):
        try:
            results[i] = http_util.layer_file(hosts[i].path, "data/big").read_bytes() == want
        except OSError as e:
            results[i] = str(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert results == [True] * len(hosts), results
    blob_bytes = sum(p.stat().st_size for p in (store / "extrafs" / "layers").glob("*.blob"))
    slices = sum(-(-p.stat().st_size // (1 << 20)) for p in (store / "extrafs" / "layers").glob("*.blob"))
    got = blob_requests(origin)
    print(f"4 hosts at once: {len(got)} blob requests at the origin for {slices} slices ({blob_bytes} bytes of blobs)")
    assert 0 < len(got) <= slices, f"a slice reached the origin twice: {len(got)} requests for {slices} slices"
