"""`extrafs push` into a real S3 server (radosgw): a pushed store mounts and reads exactly as the
local store; a push killed at random points never leaves the bucket with a catalog that names
something it lacks, and a rerun completes it; hosts mounted from the bucket follow a push
without a failed read; multipart uploads; --prune; one line for every bad input."""
import hashlib
import os
import random
import re
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

import http_util
import xf


def push_cmd(extrafs, store, dest, rgw, creds, *extra):
    return [extrafs, "push", store, dest, "--s3-endpoint", rgw.endpoint, "--s3-credentials", creds, *extra]


def push(extrafs, store, dest, rgw, creds, *extra, env=None) -> str:
    out = xf.run(push_cmd(extrafs, store, dest, rgw, creds, *extra), timeout=600, env=env).stdout.strip()
    assert out.startswith("pushed ") and len(out.splitlines()) == 1, out
    print(out)
    return out


def new_bucket(rgw) -> str:
    b = http_util.bucket_name("push")
    rgw.client().make_bucket(b)
    return b


def verify(extrafs, src, rgw, creds):
    out = xf.run([extrafs, "verify", src, "-o", http_util.s3_options(rgw, creds)], timeout=600).stdout
    assert "all good" in out, out
    return out.strip().splitlines()[-1]


def compare_layers(a: Path, b: Path):
    """Every layer b serves has the same diff/ as in a (layers are immutable; b may serve fewer)."""
    for d in (b / "overlay2").iterdir():
        if d.name != "l":
            http_util.compare(a / "overlay2" / d.name / "diff", d / "diff")


def add_image(extrafs, tmp: Path, store: Path, tag: str, size_mib: int) -> Path:
    """Publishes one more image (a base and a layer of size_mib random MiB in /data/new) into
    store: a new catalog generation. Returns the source file."""
    src = tmp / f"src-{tag.replace(':', '-')}"
    (src / "data").mkdir(parents=True)
    (src / "data" / "new").write_bytes(os.urandom(size_mib << 20))
    archive = tmp / f"{tag.replace(':', '-')}.tar"
    xf.run(["/usr/bin/python3", xf.TESTS / "integration" / "make_save_archive.py", archive, tag, src], timeout=300)
    xf.run([extrafs, "publish", "--archive", archive, "--to", store], timeout=300)
    return src / "data" / "new"


def test_a_pushed_store_mounts_from_radosgw_as_the_local_store(extrafs, tmp, mount, radosgw, published_odd):
    store = published_odd.path
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    bucket = new_bucket(radosgw)
    dest = f"s3://{bucket}/stores/odd"
    out = push(extrafs, store, dest, radosgw, creds)
    assert " 0 already there" in out and "catalog generation 1 uploaded" in out, out
    local = mount(store)
    m = mount(dest, options=http_util.s3_options(radosgw, creds))
    print(http_util.compare_mounts(local.path, m.path, tmp / "odd"))
    assert m.stats()["backend_errors"] == 0
    # Cache-Control as an origin should send it: immutable objects for ever, the catalog briefly.
    c = radosgw.client()
    st, h, _ = c.request("HEAD", f"/{bucket}/stores/odd/extrafs/catalog")
    assert st == 200 and h["cache-control"] == "public, max-age=10", h
    index = f"/{bucket}/stores/odd/extrafs/layers/{published_odd.cids[0]}.index"
    st, h, _ = c.request("HEAD", index)
    assert st == 200 and h["cache-control"] == "public, max-age=31536000, immutable", (index, st, h)
    # A second push finds everything there and writes nothing.
    out = push(extrafs, store, dest, radosgw, creds)
    assert " 0 uploaded" in out and "catalog generation 1 already there" in out, out


def test_multipart_uploads_beyond_the_part_size(extrafs, tmp, mount, radosgw):
    store = http_util.make_big_store(extrafs, tmp, size_mib=48)
    want = hashlib.sha256((tmp / "bigsrc" / "data" / "big").read_bytes()).hexdigest()
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    bucket = new_bucket(radosgw)
    push(extrafs, store, f"s3://{bucket}", radosgw, creds, env={"EXTRAFS_PUSH_PART_SIZE": "5M"})
    blobs = list((store / "extrafs" / "layers").glob("*.blob"))
    assert len(blobs) == 1
    st, h, _ = radosgw.client().request("HEAD", f"/{bucket}/extrafs/layers/{blobs[0].name}")
    # A multipart object's ETag is "<md5 of the parts' md5s>-<parts>".
    assert st == 200 and h["etag"].strip('"').endswith("-10"), h
    assert int(h["content-length"]) == blobs[0].stat().st_size
    assert h["cache-control"] == "public, max-age=31536000, immutable"
    m = mount(f"s3://{bucket}", options=http_util.s3_options(radosgw, creds))
    assert hashlib.sha256(http_util.layer_file(m.path, "data/big").read_bytes()).hexdigest() == want
    # No multipart upload is left open.
    st, _, body = radosgw.client().request("GET", f"/{bucket}?uploads=")
    assert st == 200 and b"<Upload>" not in body, body[:500]


_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
_PROGRESS = re.compile(r"pushing: (\d+)/(\d+) objects checked, ([\d.]+) (\w+) of ([\d.]+) (\w+) uploaded")


def push_killed_mid_upload(cmd, env, fraction: float, timeout: float = 120) -> tuple[str, float | None]:
    """Runs push with stderr on a terminal (so it shows its progress line) and SIGKILLs it as soon
    as the line shows at least `fraction` of its bytes uploaded but not all of them. Returns what
    it printed and the fraction uploaded when it was killed (None: it finished first)."""
    primary, secondary = os.openpty()
    p = subprocess.Popen([str(c) for c in cmd], env=dict(os.environ, **env), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=secondary)
    os.close(secondary)
    text, killed_at = "", None
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([primary], [], [], 0.5)
            if not r:
                if p.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal (it exited)
                break
            if not chunk:
                break
            text += chunk.decode(errors="replace")
            m = None
            for m in _PROGRESS.finditer(text):
                pass
            if m:
                done = float(m.group(3)) * _UNITS[m.group(4)]
                total = float(m.group(5)) * _UNITS[m.group(6)]
                if total > 0 and fraction * total <= done < total:
                    p.send_signal(signal.SIGKILL)
                    killed_at = done / total
                    break
        else:
            p.kill()
            raise AssertionError(f"push neither finished nor reached {fraction:.0%} in {timeout} s: {text[-300:]!r}")
        out, _ = p.communicate(timeout=60)
    finally:
        os.close(primary)
        if p.poll() is None:
            p.kill()
            p.wait(10)
    return out.decode().strip() or text.strip()[-200:], killed_at


def test_a_push_killed_half_way_and_rerun(extrafs, tmp, mount, radosgw):
    store = http_util.make_big_store(extrafs, tmp, size_mib=4, tag="big:1")
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    opts = http_util.s3_options(radosgw, creds)
    bucket = new_bucket(radosgw)
    dest = f"s3://{bucket}"
    push(extrafs, store, dest, radosgw, creds)
    host = mount(dest, options=f"{opts},refresh=1")
    env = {"EXTRAFS_PUSH_PART_SIZE": "8M"}  # the new blobs go up in parts: kills land mid-part and between parts
    rnd = random.Random(int(os.environ.get("EXTRAFS_TEST_SEED", str(time.time_ns()))))
    landed = 0
    for run in range(4):
        # Each run has a new image to upload (a rerun after a kill skips what is already there).
        new_src = add_image(extrafs, tmp, store, f"big:{run + 2}", 48)
        local = mount(store)
        # The line moves by parts (8 MiB; 16 if an update falls within the 0.1 s it waits between
        # two): a fraction up to 0.6 leaves a part or more of the 48 MiB to kill before the end.
        fraction = rnd.uniform(0.05, 0.6)
        said, killed_at = push_killed_mid_upload(push_cmd(extrafs, store, dest, radosgw, creds), env, fraction)
        landed += killed_at is not None
        print(f"run {run}: SIGKILL at {fraction:.0%} of the upload: "
              f"{'killed at ' + format(killed_at, '.0%') if killed_at is not None else 'finished first'}: {said}")
        # The bucket serves a store: every chunk its catalog names is there and right.
        print(f"  verify: {verify(extrafs, dest, radosgw, creds)}")
        # The host mounted during the kill reads everything it lists, with no backend error.
        time.sleep(1.5)  # a refresh or more
        compare_layers(local.path, host.path)
        assert host.stats()["backend_errors"] == 0
        local.unmount()
    assert landed >= 3, f"only {landed} of 4 kills landed mid-upload"
    push(extrafs, store, dest, radosgw, creds, env=env)
    print(f"  verify: {verify(extrafs, dest, radosgw, creds)}")
    # The host follows the completed push by itself, and serves exactly the local store.
    xf.wait_until(lambda: "big:5" in (host.path / "image/overlay2/repositories.json").read_text(), 20,
                  "the host to see big:5")
    local = mount(store)
    print(http_util.compare_mounts(local.path, host.path))
    want = new_src.read_bytes()
    assert any(p.read_bytes() == want for p in host.path.glob("overlay2/*/diff/data/new")), "big:5's file"
    assert host.stats()["backend_errors"] == 0
    st, _, body = radosgw.client().request("GET", f"/{bucket}?uploads=")
    assert st == 200 and b"<Upload>" not in body, "a killed push's multipart upload is still open"


def test_hosts_mounted_from_the_bucket_follow_a_push_without_a_failed_read(extrafs, tmp, mount, radosgw):
    # Larger than the daemons' 64 MiB of chunks in memory and their 32 MiB disk caches: reads keep
    # reaching the bucket while the push runs.
    store = http_util.make_big_store(extrafs, tmp, size_mib=80, tag="big:1")
    old = (tmp / "bigsrc" / "data" / "big").read_bytes()
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    opts = http_util.s3_options(radosgw, creds)
    bucket = new_bucket(radosgw)
    dest = f"s3://{bucket}"
    push(extrafs, store, dest, radosgw, creds)
    hosts = [mount(dest, options=f"{opts},refresh=1", cache_size="32M") for _ in range(2)]
    stop, errors, reads = threading.Event(), [], [0]

    def reader(m):
        f = http_util.layer_file(m.path, "data/big")
        while not stop.is_set():
            try:
                off = random.randrange(0, len(old) - 4096)
                with open(f, "rb") as fh:
                    fh.seek(off)
                    if fh.read(4096) != old[off:off + 4096]:
                        errors.append(f"{m.path}: wrong bytes at {off}")
                reads[0] += 1
                # Drop the kernel's copy: every read asks the daemon.
                fd = os.open(f, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
            except OSError as e:
                errors.append(f"{m.path}: {e}")

    threads = [threading.Thread(target=reader, args=(h,)) for h in hosts]
    for t in threads:
        t.start()
    try:
        new_src = add_image(extrafs, tmp, store, "big:2", 24)
        push(extrafs, store, dest, radosgw, creds)
        for h in hosts:
            xf.wait_until(lambda: "big:2" in (h.path / "image/overlay2/repositories.json").read_text(), 20,
                          f"{h.path} to see big:2")
            assert http_util.layer_file(h.path, "data/new").read_bytes() == new_src.read_bytes()
        time.sleep(1)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not errors, errors[:5]
    assert reads[0] > 20, reads
    print(f"{reads[0]} reads during the publish and push, none failed")
    for h in hosts:
        assert h.stats()["backend_errors"] == 0


def test_prune_deletes_what_the_store_no_longer_has(extrafs, tmp, mount, radosgw, published_odd):
    store = published_odd.path
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    bucket = new_bucket(radosgw)
    c = radosgw.client()
    junk = ["p/extrafs/objects/00112233445566778899aabbccddeeff", "p/extrafs/layers/" + "d" * 64 + ".blob",
            "p/overlay2/" + "d" * 64 + "/diff/old"]
    for k in junk + ["p/notes/README", "elsewhere/extrafs/x"]:
        c.put(bucket, k, b"old")
    dest = f"s3://{bucket}/p"
    out = push(extrafs, store, dest, radosgw, creds)
    assert "deleted" not in out
    for k in junk:
        assert c.get(bucket, k)[0] == 200, k  # never deleted without --prune
    out = push(extrafs, store, dest, radosgw, creds, "--prune")
    assert "3 objects (9 B) deleted" in out, out
    for k in junk:
        assert c.get(bucket, k)[0] == 404, k
    assert c.get(bucket, "p/notes/README")[0] == 200  # not the store's
    assert c.get(bucket, "elsewhere/extrafs/x")[0] == 200  # outside the prefix
    local = mount(store)
    m = mount(dest, options=http_util.s3_options(radosgw, creds))
    print(http_util.compare_mounts(local.path, m.path, tmp / "odd"))


def test_bad_input_is_one_line(extrafs, tmp, radosgw, published_odd):
    store = published_odd.path
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    wrong = http_util.credentials_file(tmp / "wrong", radosgw.access_key, "wrong-secret")
    bucket = new_bucket(radosgw)
    ep = ["--s3-endpoint", radosgw.endpoint]
    xf.expect_fail([extrafs, "push", store, "https://example.com/x"], 2, "s3://")
    xf.expect_fail([extrafs, "push", store, f"s3://{bucket};s3://{bucket}2", *ep, "--s3-credentials", creds], 2, "one bucket")
    xf.expect_fail([extrafs, "push", tmp / "none", f"s3://{bucket}", *ep], 2, "does not exist")
    xf.expect_fail([extrafs, "push", store, f"s3://{bucket}", *ep, "--s3-credentials", "relative"], 2, "absolute")
    line = xf.expect_fail([extrafs, "push", store, f"s3://{bucket}", *ep, "--s3-credentials", wrong], 1,
                          "SignatureDoesNotMatch")
    assert "wrong-secret" not in line
    xf.expect_fail([extrafs, "push", store, "s3://no-such-bucket-xf", *ep, "--s3-credentials", creds], 1,
                   "does not exist")
    empty = tmp / "empty"
    empty.mkdir()
    xf.expect_fail([extrafs, "push", empty, f"s3://{bucket}", *ep, "--s3-credentials", creds], 1, "no catalog")
    xf.expect_fail([extrafs, "push", store, f"s3://{bucket}", *ep, "--s3-credentials", creds], 2, "EXTRAFS_PUSH_PART_SIZE",
                   env={"EXTRAFS_PUSH_PART_SIZE": "1k"})
    # An S3 service that does not answer: one line within the bound, not a hang.
    xf.expect_fail([extrafs, "push", store, f"s3://{bucket}", "--s3-endpoint", "http://127.0.0.1:9",
                    "--s3-credentials", creds], 1, "127.0.0.1", timeout=120)


def test_progress_on_a_terminal_and_only_there(extrafs, tmp, radosgw):
    """On a terminal stderr shows one self-overwriting progress line (objects checked, bytes
    uploaded), cleared before the summary; stdout is the summary line alone, terminal or not.
    Without a terminal stderr stays empty."""
    store = http_util.make_big_store(extrafs, tmp, size_mib=24, tag="big:1")
    creds = http_util.credentials_file(tmp / "creds", radosgw.access_key, radosgw.secret_key)
    primary, secondary = os.openpty()
    try:
        p = subprocess.run(push_cmd(extrafs, store, f"s3://{new_bucket(radosgw)}", radosgw, creds),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=secondary, timeout=600,
                           env={**os.environ, "EXTRAFS_PUSH_PART_SIZE": "8m"})
        os.close(secondary)
        secondary = -1
        err = b""
        while True:  # the child is gone: read what it left in the terminal until EOF (EIO on Linux)
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(primary)
        if secondary >= 0:
            os.close(secondary)
    out = p.stdout.decode()
    assert p.returncode == 0, (out, err)
    assert out.startswith("pushed ") and out.count("\n") == 1, out
    updates = [u for u in err.decode().split("\r") if u.startswith("\x1b[Kpushing: ")]
    assert updates, f"no progress line on the terminal: {err!r}"
    last = updates[-1]
    total = int(last.split("/")[1].split()[0])
    assert f"{total}/{total} objects checked" in last, last
    assert " of 24" in last or " of 25" in last, last  # bytes_total: the 24 MiB blob and the rest
    assert err.endswith(b"\r\x1b[K"), f"the progress line is not cleared at the end: {err[-80:]!r}"
    # Not a terminal: nothing on stderr.
    q = subprocess.run(push_cmd(extrafs, store, f"s3://{new_bucket(radosgw)}", radosgw, creds),
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=600)
    assert q.returncode == 0 and q.stdout.decode().startswith("pushed ") and q.stderr == b"", (q.stdout, q.stderr)
