"""Real HTTP, HTTPS, proxy and S3 servers on loopback for extrafs's pytest integration tests:
nginx (HTTP and HTTPS with a throw-away CA), squid (a memory-only caching proxy), radosgw (Ceph's
S3 server on a one-monitor, one-OSD memstore cluster), and a small misbehaving HTTP server
(badhttp.py) for the answers nginx cannot be made to give. Fixtures in conftest.py hand them out.

Every server runs in the foreground as a child of the test process on a random free port, in a
private state directory; stop() ends it by its pid (never by name) with a bounded wait, and
close() (called by the fixtures at teardown, even after a failure) stops whatever is left. The
facts behind the recipes are in /work/shared/DESIGN.md section 4:
- nginx 1.22 `nginx -p DIR -c CONF` with `daemon off`; its workers run as `user` (root here, so
  that the test's private directories need not be opened to nobody).
- squid 5.7 `squid -N -f CONF` without cache_dir (memory cache only, so no `squid -z`); as root
  it runs as `proxy`, which must own its directory.
- radosgw 16.2 on ceph-mon + ceph-osd with `osd objectstore = memstore`, cephx on (radosgw
  insists on it), no ceph-mgr; `paxos propose interval = 0.05` makes the first start 2-3 s
  instead of ~15 s.
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
BADHTTP = HERE / "badhttp.py"


def free_port(count: int = 1) -> int:
    """A port p such that p..p+count-1 were all free on 127.0.0.1 just now (random, so that
    tests of several engineers do not meet)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        socks = []
        try:
            for i in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {count} free consecutive ports found")


def wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Waits until 127.0.0.1:port accepts a connection (bounded); fails early if proc exited."""
    end = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise AssertionError(f"{what} exited ({proc.returncode}) before answering on port {port}: {tail}")
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not answer on 127.0.0.1:{port} within {timeout} s")
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen | None, timeout: float = 10, sig=signal.SIGTERM):
    """Ends a child we started: sig, a bounded wait, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def kill_pid(pid: int, timeout: float = 10, sig=signal.SIGTERM):
    """Ends a process we started that is not our child (a daemonised one): sig, a bounded wait
    for it to go, then SIGKILL."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it if it is our child after all
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------
# A throw-away certificate authority


class TestCA:
    """A private CA made with openssl, and a server certificate for 127.0.0.1 and localhost."""

    def __init__(self, d: Path, name: str = "extrafs test CA"):
        self.dir = Path(d)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cert = self.dir / "ca.pem"
        self.key = self.dir / "ca.key"
        self.server_cert = self.dir / "server.pem"
        self.server_key = self.dir / "server.key"
        run = lambda *a: subprocess.run(["openssl", *map(str, a)], check=True, capture_output=True, timeout=60)
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", self.key, "-out", self.cert)
        csr = self.dir / "server.csr"
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", self.server_key, "-out", csr)
        ext = self.dir / "san.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", csr, "-CA", self.cert, "-CAkey", self.key, "-CAcreateserial", "-days", "2",
            "-extfile", ext, "-out", self.server_cert)


# ---------------------------------------------------------------------------------------------
# nginx


class Nginx:
    """nginx serving `root` over HTTP (port) and HTTPS (tls_port, certificate of `ca`), with
    correct 206 answers. Immutable objects get `Cache-Control: public, max-age=31536000,
    immutable`, extrafs/catalog and extrafs/catalog.d/ a short max-age: the server block that
    extrafs-store(5) and the README recommend."""

    def __init__(self, state: Path, root: Path, ca: TestCA | None, catalog_max_age: int = 1, limit_rate: str = ""):
        self.state, self.root, self.ca = Path(state), Path(root), ca
        self.catalog_max_age = catalog_max_age
        self.limit_rate = limit_rate  # e.g. "4m": bytes per second per connection
        self.port = self.tls_port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def _conf(self) -> str:
        tls = ""
        if self.ca:
            tls = f"""
        listen 127.0.0.1:{self.tls_port} ssl http2;
        ssl_certificate {self.ca.server_cert};
        ssl_certificate_key {self.ca.server_key};"""
        return f"""
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {self.state}/nginx.pid;
error_log {self.state}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {self.state}/access.log;
    client_body_temp_path {self.state}/tmp/body;
    proxy_temp_path {self.state}/tmp/proxy;
    fastcgi_temp_path {self.state}/tmp/fastcgi;
    uwsgi_temp_path {self.state}/tmp/uwsgi;
    scgi_temp_path {self.state}/tmp/scgi;
    types {{ }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{self.port};{tls}
        root {self.root};
        {f"limit_rate {self.limit_rate};" if self.limit_rate else ""}
        location / {{
            add_header Cache-Control "public, max-age=31536000, immutable" always;
        }}
        # Regular expressions: a store may be a sub-directory of the root (the bench serves two).
        location ~ /extrafs/catalog$ {{
            add_header Cache-Control "public, max-age={self.catalog_max_age}" always;
        }}
        location ~ /extrafs/catalog[.]d/ {{
            add_header Cache-Control "public, max-age={self.catalog_max_age}" always;
        }}
    }}
}}
"""

    def start(self) -> "Nginx":
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "tmp").mkdir(exist_ok=True)
        last = ""
        for _ in range(10):
            if not self.port:
                self.port = free_port()
                self.tls_port = free_port() if self.ca else 0
            conf = self.state / "nginx.conf"
            conf.write_text(self._conf())
            log = self.state / "stderr.log"
            with open(log, "ab") as err:
                self.proc = subprocess.Popen(["nginx", "-p", str(self.state), "-e", str(self.state / "error.log"),
                                              "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err,
                                             stdin=subprocess.DEVNULL)
            try:
                wait_port(self.port, 10, "nginx", self.proc, self.state / "error.log")
                if self.tls_port:
                    wait_port(self.tls_port, 10, "nginx (TLS)", self.proc, self.state / "error.log")
                return self
            except AssertionError as e:
                last = str(e)
                stop_process(self.proc)
                if "Address already in use" not in (self.state / "error.log").read_text(errors="replace"):
                    raise
                self.port = 0
        raise AssertionError(f"nginx did not start: {last}")

    def stop(self):
        """Stops it at once (SIGTERM: fast shutdown, connections cut)."""
        stop_process(self.proc)
        self.proc = None

    def access_log(self) -> list[str]:
        p = self.state / "access.log"
        return p.read_text(errors="replace").splitlines() if p.exists() else []

    def close(self):
        self.stop()


# ---------------------------------------------------------------------------------------------
# squid


class Squid:
    """squid as a memory-only caching proxy on 127.0.0.1:port. It runs as user `proxy`, which
    cannot enter a test's private directory: its state is in a directory of its own under /tmp,
    owned by proxy and removed by close(); `name` is a prefix for that directory."""

    def __init__(self, name: str = "xf-squid-", range_offset_limit: str = "0", collapsed_forwarding: bool = False):
        self.state = Path(tempfile.mkdtemp(prefix=name, dir="/tmp"))
        self.range_offset_limit = range_offset_limit
        # squid's default (off): concurrent misses of one URL each go to the origin.
        self.collapsed_forwarding = collapsed_forwarding
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _conf(self) -> str:
        s = self.state
        return f"""
http_port 127.0.0.1:{self.port}
pid_filename {s}/squid.pid
cache_log {s}/cache.log
access_log stdio:{s}/access.log
cache_store_log none
coredump_dir {s}
cache_mem 256 MB
maximum_object_size_in_memory 64 MB
maximum_object_size 1 GB
range_offset_limit {self.range_offset_limit}
collapsed_forwarding {"on" if self.collapsed_forwarding else "off"}
refresh_pattern . 10 20% 4320
acl localhost src 127.0.0.1/32
acl to_loopback dst 127.0.0.1/32
acl all_ports port 1-65535
http_access allow localhost
http_access deny all
via off
forwarded_for delete
shutdown_lifetime 0 seconds
visible_hostname extrafs-test-squid
"""

    def start(self) -> "Squid":
        shutil.chown(self.state, "proxy", "proxy")
        os.chmod(self.state, 0o755)
        last = ""
        for _ in range(10):
            if not self.port:
                self.port = free_port()
            conf = self.state / "squid.conf"
            conf.write_text(self._conf())
            log = self.state / "stderr.log"
            with open(log, "ab") as err:
                self.proc = subprocess.Popen(["squid", "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=err,
                                             stdin=subprocess.DEVNULL)
            try:
                wait_port(self.port, 20, "squid", self.proc, self.state / "stderr.log")
                return self
            except AssertionError as e:
                last = str(e)
                stop_process(self.proc)
                logs = [self.state / "cache.log", self.state / "stderr.log"]
                if not any("Address already in use" in p.read_text(errors="replace") for p in logs if p.exists()):
                    raise
                self.port = 0
        raise AssertionError(f"squid did not start: {last}")

    def stop(self, sig=signal.SIGTERM):
        stop_process(self.proc, sig=sig)
        self.proc = None

    def kill(self):
        """SIGKILL: the proxy dies as a crashed one does."""
        self.stop(signal.SIGKILL)

    def access_log(self) -> list[str]:
        p = self.state / "access.log"
        return p.read_text(errors="replace").splitlines() if p.exists() else []

    def close(self):
        self.stop()
        shutil.rmtree(self.state, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# radosgw


class Radosgw:
    """Ceph's S3 server on a private one-monitor, one-OSD (memstore) cluster, with one S3 user
    (access_key, secret_key). ~630 MB RSS while it runs."""

    access_key = "EXTRAFSTESTACCESSKEY"
    secret_key = "extrafs-test-secret-key-0123456789abcdef"

    def __init__(self, state: Path):
        self.state = Path(state)
        self.port = 0
        self.mon_port = 0
        self.procs: dict[str, int] = {}  # name -> pid (the daemons fork into the background)
        self.conf = self.state / "ceph.conf"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ceph(self, *args, timeout=60, check=True, input=None):
        p = subprocess.run([str(a) for a in args] + ["-c", str(self.conf)], capture_output=True, text=True,
                           timeout=timeout, input=input)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(map(str, args))}: exit {p.returncode}: {p.stderr[-2000:]}")
        return p

    def _keys(self) -> dict[str, str]:
        out = {}
        for name, caps in [("mon.", ["--cap", "mon", "allow *"]),
                           ("client.admin", ["--cap", "mon", "allow *", "--cap", "osd", "allow *",
                                             "--cap", "mgr", "allow *"]),
                           ("osd.0", ["--cap", "mon", "allow profile osd", "--cap", "osd", "allow *",
                                      "--cap", "mgr", "allow profile osd"]),
                           ("client.rgw", ["--cap", "mon", "allow rw", "--cap", "osd", "allow rwx",
                                           "--cap", "mgr", "allow rw"])]:
            args = ["ceph-authtool", str(self.state / "keyring")]
            if not out:
                args.append("--create-keyring")
            args += ["--gen-key", "-n", name, *caps]
            p = subprocess.run(args, capture_output=True, text=True, timeout=30)
            if p.returncode != 0:
                raise AssertionError(f"ceph-authtool: {p.stderr}")
            key = subprocess.run(["ceph-authtool", str(self.state / "keyring"), "-p", "-n", name],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
            out[name] = key
        return out

    def _conf_text(self) -> str:
        s = self.state
        return f"""[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{self.mon_port}
mon initial members = a
ms bind msgr1 = false
ms bind ipv4 = true
ms bind ipv6 = false
public addr = 127.0.0.1
ms bind port min = {self.mon_port + 2}
ms bind port max = {self.mon_port + 30}
keyring = {s}/keyring
osd objectstore = memstore
memstore device bytes = 4294967296
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd crush chooseleaf type = 0
paxos propose interval = 0.05
run dir = {s}/run
admin socket = {s}/run/$name.asok
log file = {s}/log/$name.log
pid file = {s}/run/$name.pid
mon data = {s}/mon/$id
osd data = {s}/osd/$id
osd memory target = 268435456
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw data = {s}/rgw
rgw enable usage log = false
rgw dns name = localhost
"""

    def start(self) -> "Radosgw":
        for d in ("mon", "osd/0", "run", "log", "rgw"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        # Ports: the monitor's, then 28 for the OSD's messengers (pinned by ms bind port min/max),
        # then radosgw's.
        base = free_port(32)
        self.mon_port, self.port = base, base + 31
        self.fsid = str(uuid.uuid4())
        self.conf.write_text(self._conf_text())
        keys = self._keys()
        monmap = self.state / "monmap"
        subprocess.run(["monmaptool", "--create", "--add", "a", f"v2:127.0.0.1:{self.mon_port}", "--fsid", self.fsid,
                        str(monmap)], check=True, capture_output=True, timeout=30)
        self._ceph("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", self.state / "keyring")
        self._ceph("ceph-mon", "-i", "a")
        self._remember("mon.a")
        osd_uuid = str(uuid.uuid4())
        self._ceph("ceph", "osd", "new", osd_uuid, "-i", "-", timeout=60,
                   input=json.dumps({"cephx_secret": keys["osd.0"]}))
        self._ceph("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._ceph("ceph-osd", "-i", "0")
        self._remember("osd.0")
        end = time.monotonic() + 60
        while "1 up" not in self._ceph("ceph", "osd", "stat", check=False, timeout=20).stdout:
            if time.monotonic() > end:
                raise AssertionError(f"the OSD did not come up: {self._log_tail('osd.0')}")
            time.sleep(0.1)
        self._ceph("radosgw", "-n", "client.rgw")
        self._remember("client.rgw")
        wait_port(self.port, 60, "radosgw")
        self._ceph("radosgw-admin", "-n", "client.rgw", "user", "create", "--uid=extrafs", "--display-name=extrafs",
                   f"--access-key={self.access_key}", f"--secret-key={self.secret_key}", timeout=60)
        return self

    def _remember(self, name: str):
        pidfile = self.state / "run" / f"{name}.pid"
        end = time.monotonic() + 20
        while not pidfile.exists() or not pidfile.read_text().strip():
            if time.monotonic() > end:
                raise AssertionError(f"{name} wrote no pid file: {self._log_tail(name)}")
            time.sleep(0.02)
        self.procs[name] = int(pidfile.read_text().strip())

    def _log_tail(self, name: str) -> str:
        p = self.state / "log" / f"{name}.log"
        return p.read_text(errors="replace")[-2000:] if p.exists() else "(no log)"

    def admin(self, *args, timeout=60) -> str:
        return self._ceph("radosgw-admin", "-n", "client.rgw", *args, timeout=timeout).stdout

    def client(self, access_key=None, secret_key=None, region="us-east-1") -> "S3Client":
        return S3Client(self.endpoint, access_key or self.access_key, secret_key or self.secret_key, region)

    def stop(self):
        # SIGKILL: memstore keeps nothing worth a clean shutdown, which takes ~10 s.
        for name in ("client.rgw", "osd.0", "mon.a"):
            pid = self.procs.pop(name, 0)
            if pid:
                kill_pid(pid, timeout=15, sig=signal.SIGKILL)

    def close(self):
        self.stop()


# ---------------------------------------------------------------------------------------------
# A small S3 client (AWS Signature V4 by hand: hashlib, hmac, http.client), for putting a store
# into radosgw before `extrafs push` exists


def _quote_key(key: str) -> str:
    return "/".join(urllib.parse.quote(part, safe="-_.~") for part in key.split("/"))


class S3Client:
    def __init__(self, endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1"):
        u = urllib.parse.urlsplit(endpoint)
        self.host, self.port = u.hostname, u.port or 80
        self.hostport = u.netloc
        self.access_key, self.secret_key, self.region = access_key, secret_key, region

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload_hash = hashlib.sha256(body).hexdigest()
        h = {"host": self.hostport, "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash}
        for k, v in (headers or {}).items():
            h[k.lower()] = v
        signed = sorted(h)
        u = urllib.parse.urlsplit(path)  # the path may carry a query ("?uploads=")
        q = "&".join(sorted(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
                            for k, v in urllib.parse.parse_qsl(u.query, keep_blank_values=True)))
        canonical = "\n".join([method, u.path, q, "".join(f"{k}:{h[k].strip()}\n" for k in signed), ";".join(signed),
                               payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        k = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        h["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                              f"SignedHeaders={';'.join(signed)}, Signature={sig}")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def make_bucket(self, bucket: str):
        st, _, body = self.request("PUT", f"/{bucket}")
        if st != 200:
            raise AssertionError(f"PUT bucket {bucket}: {st} {body[:500]!r}")

    def put(self, bucket: str, key: str, data: bytes, headers: dict | None = None):
        st, _, body = self.request("PUT", f"/{bucket}/{_quote_key(key)}", data, headers)
        if st != 200:
            raise AssertionError(f"PUT {bucket}/{key}: {st} {body[:500]!r}")

    def get(self, bucket: str, key: str) -> tuple[int, bytes]:
        st, _, body = self.request("GET", f"/{bucket}/{_quote_key(key)}")
        return st, body

    def upload_tree(self, root: Path, bucket: str, prefix: str = "", catalog_last: bool = True) -> int:
        """Puts every regular file under root as prefix/relative-path; extrafs/catalog last (what
        a host may read first must name only what is there). Returns the number of objects."""
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        rel = [p.relative_to(root).as_posix() for p in files]
        if catalog_last and "extrafs/catalog" in rel:
            i = rel.index("extrafs/catalog")
            files.append(files.pop(i))
            rel.append(rel.pop(i))
        for p, r in zip(files, rel):
            key = f"{prefix.strip('/')}/{r}" if prefix.strip("/") else r
            self.put(bucket, key, p.read_bytes())
        return len(files)


# ---------------------------------------------------------------------------------------------
# The misbehaving HTTP server


class BadHttp:
    """badhttp.py serving `root` on 127.0.0.1:port with the faults named in `mode` (see
    badhttp.py). The mode can be changed while it runs (set_mode)."""

    def __init__(self, state: Path, root: Path, mode: str = "good", ca: TestCA | None = None):
        self.state, self.root, self.mode, self.ca = Path(state), Path(root), mode, ca
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> "BadHttp":
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "mode").write_text(self.mode)
        for _ in range(10):
            if not self.port:
                self.port = free_port()
            log = self.state / "log"
            with open(log, "ab") as out:
                tls = [str(self.ca.server_cert), str(self.ca.server_key)] if self.ca else []
                self.proc = subprocess.Popen([sys.executable, str(BADHTTP), str(self.port), str(self.root),
                                              str(self.state / "mode"), str(self.state / "requests"), *tls],
                                             stdout=out, stderr=out, stdin=subprocess.DEVNULL)
            try:
                wait_port(self.port, 10, "badhttp", self.proc, log)
                return self
            except AssertionError:
                stop_process(self.proc)
                if "Address already in use" not in log.read_text(errors="replace"):
                    raise
                self.port = 0
        raise AssertionError("badhttp did not start")

    def set_mode(self, mode: str):
        tmp = self.state / "mode.tmp"
        tmp.write_text(mode)
        os.replace(tmp, self.state / "mode")
        self.mode = mode

    def requests(self) -> list[str]:
        p = self.state / "requests"
        return p.read_text(errors="replace").splitlines() if p.exists() else []

    def stop(self, sig=signal.SIGTERM):
        stop_process(self.proc, sig=sig)
        self.proc = None

    def close(self):
        self.stop()


# ---------------------------------------------------------------------------------------------
# nginx as a caching reverse proxy with the slice module


class NginxSliceCache(Nginx):
    """nginx in front of an origin (`upstream`, http://HOST:PORT) as a caching reverse proxy
    that cuts every object into 1 MiB slices (ngx_http_slice_module, built into Debian's nginx):
    a ranged read of a big blob fetches and keeps only the slices it covers, so hosts that mount
    the store through it (as its URL, a mirror) cost the origin each slice once. Concurrent
    misses of one slice wait for the first (proxy_cache_lock). The origin's Cache-Control decides
    how long an answer is kept: immutable objects for a year, extrafs/catalog for its short
    max-age, so hosts still see a new catalog. The server block extrafs-store(5) documents."""

    def __init__(self, state: Path, upstream: str):
        super().__init__(state, root=state, ca=None)  # serves no directory: root is unused
        self.upstream = upstream

    def _conf(self) -> str:
        return f"""
daemon off;
master_process on;
worker_processes 1;
user root root;
pid {self.state}/nginx.pid;
error_log {self.state}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format cache '$request_method $uri $http_range $status $upstream_cache_status';
    access_log {self.state}/access.log cache;
    client_body_temp_path {self.state}/tmp/body;
    proxy_temp_path {self.state}/tmp/proxy;
    fastcgi_temp_path {self.state}/tmp/fastcgi;
    uwsgi_temp_path {self.state}/tmp/uwsgi;
    scgi_temp_path {self.state}/tmp/scgi;
    proxy_cache_path {self.state}/cache levels=1:2 keys_zone=extrafs:16m max_size=10g inactive=30d use_temp_path=off;
    upstream origin {{
        server {self.upstream.removeprefix("http://")};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_cache extrafs;
        proxy_cache_lock on;
        proxy_cache_lock_timeout 30s;
        add_header X-Cache-Status $upstream_cache_status always;
        location / {{
            slice 1m;
            proxy_cache_key $uri$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 30d;
            proxy_pass http://origin;
        }}
        # The catalog changes in place: whole, kept only for the origin's short max-age.
        location ~ /extrafs/catalog$ {{
            proxy_cache_key $uri;
            proxy_pass http://origin;
        }}
        location ~ /extrafs/catalog[.]d/ {{
            proxy_cache_key $uri;
            proxy_pass http://origin;
        }}
    }}
}}
"""
