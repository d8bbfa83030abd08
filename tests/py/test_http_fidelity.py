"""The same published store served by nginx (http:// and https:// with a private CA) and by
radosgw (s3:// with SigV4) is, through extrafs, exactly what the local mount of that store is:
every entry's type, mode, owner, size, times, xattrs, d_type, hard links and every byte. And the
S3 secret appears nowhere a user or another process can see it."""
import subprocess

import http_util
import xf


def test_http_https_and_s3_mounts_equal_the_local_mount(published_odd, mount, nginx, radosgw, tmp, extrafs):
    store = published_odd.path
    local = mount(store)
    n = nginx(store)
    bucket = http_util.put_store(radosgw, store, "stores/odd")
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    mounts = {
        "http": mount(n.url + "/", options="timeout=30"),
        "https": mount(n.tls_url, options=f"cacert={xf.Path(n.ca.cert)}"),
        "s3": mount(f"s3://{bucket}/stores/odd", options=http_util.s3_options(radosgw, creds)),
    }
    for kind, m in mounts.items():
        # One mount reads the odd store's 5 GiB sparse file whole; the others read its data and a
        # sample of its holes (zero chunks never reach the backend: they read the same anyway).
        summary = http_util.compare_mounts(local.path, m.path, None if kind == "https" else tmp / "odd")
        print(f"{kind}: {summary}")
        s = m.stats()
        assert s["bytes_fetched"] > (1 << 20), f"{kind}: {s}"
        assert s["backend_errors"] == 0, f"{kind}: {s}"
        assert s["source"] == m.source
    # Over https the origin saw HTTP/2; over http, HTTP/1.1 with kept-alive connections.
    log = n.access_log()
    assert any('HTTP/2.0"' in line for line in log), log[-5:]
    assert any('HTTP/1.1"' in line for line in log), log[-5:]


def test_verify_reads_http_and_s3_sources(published_odd, nginx, radosgw, tmp, extrafs):
    store = published_odd.path
    n = nginx(store)
    out = xf.run([extrafs, "verify", n.tls_url, "-o", f"cacert={n.ca.cert}"], timeout=300).stdout
    assert "all good" in out, out
    bucket = http_util.put_store(radosgw, store)
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    out = xf.run([extrafs, "verify", f"s3://{bucket}", "-o", http_util.s3_options(radosgw, creds)], timeout=300).stdout
    assert "all good" in out, out
    xf.expect_fail([extrafs, "verify", n.url, "-o", "cache=/tmp/x"], 2, "not an option of verify")
    xf.expect_fail([extrafs, "verify", n.url, "-o", "s3_region=us-east-2"], 2, "s3:// sources only")
    # ls needs directory listings, which HTTP has not: one line saying so.
    xf.expect_fail([extrafs, "ls", n.url], 1, "not a URL")


def test_the_s3_secret_is_nowhere_to_be_seen(published_odd, mount, radosgw, tmp, extrafs):
    bucket = http_util.put_store(radosgw, published_odd.path)
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    opts = http_util.s3_options(radosgw, creds)
    m = mount(f"s3://{bucket}", options=opts, log_level="debug")
    for p in http_util.big_files(m.path)[:3]:
        p.read_bytes()
    secret = radosgw.secret_key
    assert m.pid, "no daemon pid"
    assert secret not in open(f"/proc/{m.pid}/cmdline", "rb").read().decode(errors="replace")
    assert secret not in open("/proc/mounts").read()
    assert secret not in xf.run([extrafs, "stats", m.path, "--json"]).stdout
    # The same with the environment's credentials, in the foreground with every debug line on
    # stderr: not one of them holds the secret, the access key's partner.
    fg = tmp / "fg"
    fg.mkdir()
    env = dict(xf.os.environ, AWS_ACCESS_KEY_ID=radosgw.access_key, AWS_SECRET_ACCESS_KEY=secret)
    log = tmp / "fg.log"
    with open(log, "w") as err:
        p = subprocess.Popen([str(extrafs), "mount", "-f", f"s3://{bucket}", str(fg), "-o",
                              f"cache={tmp / 'fgcache'},log_level=trace,s3_endpoint={radosgw.endpoint}"],
                             stdout=err, stderr=err, env=env)
    try:
        xf.wait_until(lambda: xf.is_mounted(fg), 30, "the foreground mount")
        for f in http_util.big_files(fg)[:3]:
            f.read_bytes()
        xf.run([extrafs, "unmount", fg], timeout=60)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert "serving" in text, text[-2000:]  # the log did say things
    assert secret not in text
