#!/usr/bin/env python3
"""tests/bench/http_bench.py: the http(s) and caching-proxy cases of tests/bench/run.sh (issue 17).
run.sh builds the images, publishes the stores, starts nfs-ganesha and makes the cpu cgroups;
this script starts its own nginx (HTTP and HTTPS, the throw-away CA of tests/py/servers.py) and
squid instances on loopback, measures, prints Markdown table rows (the format of run.sh's row())
on stdout and its log on stderr, and undoes everything it started on exit.

    http_bench.py --extrafs BIN --stores DIR --nfs-url URL --py-cid ID --base-cid ID --tmp DIR
                  [--cases https,proxy] [--reps N] [--fleet N] [--probe-seconds S]
    environment: XF_CGROUP_PROCS="PROCS1 PROCS2 ..." (one cgroup.procs file per fleet host,
                 capped at EXTRAFS_BENCH_HOST_CPU cores by run.sh), EXTRAFS_BENCH_HOST_CPU

The stores under DIR: plain/ (layer blobs) and co/ (the same images published with
--chunk-objects). "Start" is run.sh's docker-less python start (fleet.py: overlayfs of the
image's two layers from the mount, chroot, python3 -c 'print(6*7)'), page cache dropped, empty
block cache: the lazy fetch undiluted by dockerd's fixed costs.

Cases:
  https  start from https vs NFS, blob and chunk-object stores, 3 of each per repetition (and
         chunk objects vs blobs over each); cold read of the unread 512 MiB file over https vs
         `curl` of its blob from the same nginx, and the same over NFS with chunk objects vs blobs
  proxy  8 hosts (own empty caches) start at one moment through one squid (memory cache,
         range_offset_limit and collapsed_forwarding at their defaults, 0 and off) in front of
         nginx: bytes and requests the origin answered (nginx's access log) vs one host alone
         through a fresh squid; p99 start vs one host, every host (daemon and start) in its own
         cpu cgroup as in the NFS fleet case; blob store, chunk-object store, and the latter with
         collapsed_forwarding on (concurrent misses of one object merged into one); catalog
         probes reaching the origin from 8 idle hosts with refresh=60, per 60 s
"""
from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "py"))
import servers  # noqa: E402
import xf  # noqa: E402

BIG = "opt/unread/big.bin"


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def drop():
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def p_nearest(values, p):
    v = sorted(values)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]


def mib(n):
    return f"{n / 1048576:.1f} MiB"


def row(case, ref, x, ratio, op="-", target="-", ratio_text=None):
    met = "-"
    if op != "-" and ratio == ratio:
        met = "yes" if (ratio <= target if op == "<=" else ratio >= target) else "**no**"
    rt = ratio_text if ratio_text is not None else (f"{ratio:.2f}" if ratio == ratio else "nan")
    tt = f"{op} {target}" if op != "-" else "-"
    print(f"| {case} | {ref} | {x} | {rt} | {tt} | {met} |", flush=True)


class Bench:
    def __init__(self, a):
        self.a = a
        self.extrafs = Path(a.extrafs)
        self.tmp = Path(a.tmp)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.mounts = xf.Mounts(self.extrafs, self.tmp)
        self.overlays: list[Path] = []
        self.procs = os.environ.get("XF_CGROUP_PROCS", "").split()
        self.samples: dict[str, list[float]] = {}
        self.ca = servers.TestCA(self.tmp / "ca")
        # catalog_max_age: what extrafs-store(5) recommends for an origin behind proxies with
        # refresh=60 hosts (the catalog may be up to a minute old in a proxy).
        self.nginx = servers.Nginx(self.tmp / "nginx", Path(a.stores), self.ca, catalog_max_age=60).start()
        self.squids: list[servers.Squid] = []
        self.n = 0

    def close(self):
        for o in reversed(self.overlays):
            subprocess.run(["umount", o], capture_output=True)
        self.mounts.close()
        for s in self.squids:
            s.close()
        self.nginx.close()

    def sample(self, key, v):
        self.samples.setdefault(key, []).append(v)

    def med(self, key):
        v = self.samples.get(key)
        return statistics.median(v) if v else float("nan")

    # -- mounts and starts --------------------------------------------------------------------

    def source(self, kind: str, store: str) -> tuple[str, str]:
        if kind == "nfs":
            return f"{self.a.nfs_url}/{store}", ""
        if kind == "https":
            return f"{self.nginx.tls_url}/{store}", f"cacert={self.ca.cert}"
        return f"{self.nginx.url}/{store}", ""  # http, through a proxy

    def mount(self, kind, store, extra=""):
        src, opts = self.source(kind, store)
        self.n += 1
        opts = ",".join(o for o in (opts, extra) if o)
        return self.mounts(src, self.tmp / f"m{self.n}", cache=self.tmp / f"c{self.n}", options=opts,
                           cache_size="8G", timeout=120)

    def overlay(self, m) -> Path:
        root = self.tmp / f"root-{m.path.name}"  # one per mount: a fleet's hosts each start their own
        root.mkdir(exist_ok=True)
        lower = f"{m.path}/overlay2/{self.a.py_cid}/diff:{m.path}/overlay2/{self.a.base_cid}/diff"
        xf.run(["mount", "-t", "overlay", "overlay", "-o", f"ro,lowerdir={lower}", root])
        self.overlays.append(root)
        return root

    def unoverlay(self, root: Path):
        xf.run(["umount", root])
        self.overlays.remove(root)

    def starts(self, roots, procs=None) -> list[float]:
        args = [f"{r}={p}" if p else str(r) for r, p in zip(roots, procs or [None] * len(roots))]
        out = xf.run(["python3", HERE / "fleet.py", *args], timeout=600).stdout
        return [float(x) for x in out.split()]

    def one_start(self, kind, store, extra="") -> float:
        m = self.mount(kind, store, extra)
        root = self.overlay(m)
        drop()
        t = self.starts([root])[0]
        self.unoverlay(root)
        m.unmount(timeout=60)
        return t

    def cold_read(self, kind, store) -> float:
        m = self.mount(kind, store)
        f = m.path / "overlay2" / self.a.py_cid / "diff" / BIG
        drop()
        t0 = time.monotonic()
        subprocess.run(["cat", f], stdout=subprocess.DEVNULL, check=True, timeout=600)
        t = time.monotonic() - t0
        m.unmount(timeout=120)  # before its whole-file copy runs into the next measurement
        return t

    # -- https ---------------------------------------------------------------------------------

    def case_https(self):
        blob = Path(self.a.stores) / "plain" / "extrafs" / "layers" / f"{self.a.py_cid}.blob"
        size = blob.stat().st_size
        for r in range(self.a.reps):
            log(f"case https: repetition {r + 1}/{self.a.reps}")
            # A start is ~0.1 s and noisy on shared cores: three of each per repetition, interleaved.
            for _ in range(3):
                for store in ("plain", "co"):
                    for kind in ("nfs", "https"):
                        t = self.one_start(kind, store)
                        self.sample(f"start_{kind}_{store}", t)
                        log(f"  start {kind} {store}: {t:.4f} s")
            for store in ("plain", "co"):
                for kind in ("nfs", "https"):
                    t = self.cold_read(kind, store)
                    self.sample(f"read_{kind}_{store}", t)
                    log(f"  cold read {kind} {store}: {t:.3f} s")
            drop()
            url = f"{self.nginx.tls_url}/plain/extrafs/layers/{self.a.py_cid}.blob"
            t0 = time.monotonic()
            xf.run(["curl", "-sSf", "--cacert", self.ca.cert, "-o", "/dev/null", url], timeout=600)
            t = time.monotonic() - t0
            self.sample("curl_blob", t)
            log(f"  curl of the blob: {t:.3f} s")
        m = self.mount("nfs", "plain")
        file_size = (m.path / "overlay2" / self.a.py_cid / "diff" / BIG).stat().st_size
        m.unmount()
        n, h = self.med("start_nfs_plain"), self.med("start_https_plain")
        row("python start without docker, empty cache: https vs NFSv4 (blob store)", f"{n:.4f} s", f"{h:.4f} s", h / n,
            "<=", 1.1)
        n2, h2 = self.med("start_nfs_co"), self.med("start_https_co")
        row("python start without docker, empty cache: https vs NFSv4 (--chunk-objects store)", f"{n2:.4f} s", f"{h2:.4f} s",
            h2 / n2)
        row("python start, empty cache, NFSv4: --chunk-objects store vs blob store", f"{n:.4f} s", f"{n2:.4f} s", n2 / n)
        row("python start, empty cache, https: --chunk-objects store vs blob store", f"{h:.4f} s", f"{h2:.4f} s", h2 / h)
        rate = lambda nbytes, t: f"{nbytes / 1048576 / t:.0f} MiB/s"
        c, x = self.med("curl_blob"), self.med("read_https_plain")
        speed = (file_size / x) / (size / c)
        row(f"read {file_size >> 20} MiB cold over https vs curl of its blob ({mib(size)}) from the same nginx",
            f"{c:.3f} s ({rate(size, c)})", f"{x:.3f} s ({rate(file_size, x)})", speed, ">=", 0.9,
            f"{speed:.2f}x the speed")
        xc = self.med("read_https_co")
        row(f"read {file_size >> 20} MiB cold over https: --chunk-objects vs blob store", f"{x:.3f} s ({rate(file_size, x)})",
            f"{xc:.3f} s ({rate(file_size, xc)})", xc / x)
        nb, nc = self.med("read_nfs_plain"), self.med("read_nfs_co")
        row(f"read {file_size >> 20} MiB cold over NFSv4: --chunk-objects vs blob store", f"{nb:.3f} s ({rate(file_size, nb)})",
            f"{nc:.3f} s ({rate(file_size, nc)})", nc / nb)

    # -- proxy ---------------------------------------------------------------------------------

    def origin_mark(self) -> int:
        return len(self.nginx.access_log())

    def origin_since(self, mark: int, pattern: str = "") -> tuple[int, int]:
        """(requests, body bytes) nginx answered since `mark`, of paths containing `pattern`."""
        n = b = 0
        for line in self.nginx.access_log()[mark:]:
            m = re.search(r'"[A-Z]+ (\S+) [^"]*" (\d{3}) (\d+)', line)
            if m and pattern in m.group(1):
                n += 1
                b += int(m.group(3))
        return n, b

    def fleet(self, count: int, store: str, capped: bool, collapsed=False) -> tuple[list[float], int, int]:
        """count hosts with empty caches start at one moment through a fresh squid: their start
        times, the requests that reached the origin and the body bytes it sent (mounts included)."""
        sq = servers.Squid("xf-bench-squid-", collapsed_forwarding=collapsed).start()
        self.squids.append(sq)
        mark = self.origin_mark()
        hosts = [self.mount("http", store, f"proxy={sq.address},refresh=60") for _ in range(count)]
        roots = [self.overlay(h) for h in hosts]
        procs = None
        if capped:
            procs = self.procs[:count]
            for h, p in zip(hosts, procs):
                Path(p).write_text(f"{h.pid}\n")
        drop()
        times = self.starts(roots, procs)
        reqs, body = self.origin_since(mark)
        # Every host fetched its start for itself (through the proxy): else the ratio means nothing.
        fetched = [h.stats()["bytes_fetched"] for h in hosts]
        if min(fetched) <= 0:
            raise AssertionError(f"a fleet host fetched nothing: bytes_fetched {fetched}")
        log(f"  {count} host(s) fetched {mib(sum(fetched))} through the proxy; the origin sent {mib(body)} in {reqs} requests")
        for r in roots:
            self.unoverlay(r)
        for h in hosts:
            h.unmount(timeout=60)
        sq.close()
        self.squids.remove(sq)
        return times, reqs, body

    def case_proxy(self):
        n = self.a.fleet
        capped = len(self.procs) >= n
        if not capped:
            log(f"case proxy: no {n} cpu cgroups given (XF_CGROUP_PROCS): starts are not capped")
        cpu = os.environ.get("EXTRAFS_BENCH_HOST_CPU", "0.2")
        for r in range(self.a.reps):
            for store in ("plain", "co", "co+cf"):
                log(f"case proxy: repetition {r + 1}/{self.a.reps}, {store}: one host, then {n} at once")
                collapsed = store.endswith("+cf")
                t1, q1, b1 = self.fleet(1, store.removesuffix("+cf"), capped, collapsed)
                tn, qn, bn = self.fleet(n, store.removesuffix("+cf"), capped, collapsed)
                self.sample(f"px_single_{store}", t1[0])
                self.samples.setdefault(f"px_times_{store}", []).extend(tn)
                self.sample(f"px_bytes1_{store}", b1)
                self.sample(f"px_bytesn_{store}", bn)
                self.sample(f"px_reqs1_{store}", q1)
                self.sample(f"px_reqsn_{store}", qn)
                log(f"  one host {t1[0]:.4f} s, origin: {q1} requests, {mib(b1)}; {n} hosts: "
                    f"{' '.join(f'{t:.3f}' for t in tn)} s, origin: {qn} requests, {mib(bn)}")
        cap = f", each host capped at {cpu} cores" if capped else ""
        for store, what in (("co", "--chunk-objects store"), ("co+cf", "--chunk-objects store, collapsed_forwarding on"),
                            ("plain", "blob store")):
            b1, bn = self.med(f"px_bytes1_{store}"), self.med(f"px_bytesn_{store}")
            target = ("<=", 1.25) if store == "co" else ("-", "-")
            row(f"fleet of {n} behind one squid ({what}): bytes the origin sent vs one host alone",
                f"{mib(b1)}", f"{mib(bn)}", bn / b1, *target, f"{bn / b1:.2f}x one host")
            q1, qn = self.med(f"px_reqs1_{store}"), self.med(f"px_reqsn_{store}")
            row(f"fleet of {n} behind one squid ({what}): requests reaching the origin vs one host alone",
                f"{q1:g}", f"{qn:g}", qn / q1, ratio_text=f"{qn / q1:.2f}x one host")
            s1, p99 = self.med(f"px_single_{store}"), p_nearest(self.samples[f"px_times_{store}"], 99)
            target = ("<=", 1.5) if store == "co" else ("-", "-")
            row(f"fleet of {n} behind one squid ({what}{cap}): p99 start vs one host", f"{s1:.4f} s", f"{p99:.4f} s",
                p99 / s1, *target)
        self.probes()

    def probes(self):
        n, secs = self.a.fleet, self.a.probe_seconds
        windows = max(3, self.a.reps)
        log(f"case proxy: catalog probes: {n} idle hosts, refresh=60, {windows} windows of {secs} s")
        sq = servers.Squid("xf-bench-squid-").start()
        self.squids.append(sq)
        hosts = [self.mount("http", "plain", f"proxy={sq.address},refresh=60") for _ in range(n)]
        time.sleep(5)  # the mounts' own catalog reads are over
        counts = []
        for w in range(windows):
            mark = self.origin_mark()
            time.sleep(secs)
            c, _ = self.origin_since(mark, "/extrafs/catalog")
            counts.append(c)
            log(f"  window {w + 1}: {c} catalog requests reached the origin")
        for h in hosts:
            h.unmount(timeout=60)
        sq.close()
        self.squids.remove(sq)
        med = statistics.median(counts)
        row(f"catalog probes reaching the origin from {n} idle hosts behind one squid, refresh=60, per {secs} s",
            f"{n} hosts x {secs // 60} probe(s)", f"{med:g} requests (windows: {', '.join(map(str, counts))})", med, "<=", 2,
            f"{med:g}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--extrafs", required=True)
    ap.add_argument("--stores", required=True)
    ap.add_argument("--nfs-url", required=True)
    ap.add_argument("--py-cid", required=True)
    ap.add_argument("--base-cid", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--cases", default="https,proxy")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--fleet", type=int, default=8)
    ap.add_argument("--probe-seconds", type=int, default=60)
    a = ap.parse_args()
    b = Bench(a)
    try:
        cases = a.cases.split(",")
        if "https" in cases:
            b.case_https()
        if "proxy" in cases:
            b.case_proxy()
    finally:
        b.close()


if __name__ == "__main__":
    main()
