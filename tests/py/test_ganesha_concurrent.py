"""NFSv3 nfs-ganesha instances started at the same moment all come up and serve (tests run two at a
time under `meson test --num-processes 2`, and several of them start NFSv3 servers).

Each NFSv3 ganesha registers its programs with the one portmapper of the machine (port 111) by
unset-then-set; two starting together interleave and one exits "Cannot register NFS V3 on TCP"
(8 of 20 starts failed, 4 at once, before tests/nfs/ganesha.sh serialized the window under a
machine-wide flock). Here: 20 rounds of 4 NFSv3+4 instances started at once by 4 threads; each must
start, and serve its own export over NFSv3 (nfsport=/mountport=, no portmapper) and NFSv4, read
with libnfs's nfs-cat and compared byte for byte; afterwards no rpcbind started by them is left."""
from __future__ import annotations

import concurrent.futures
import subprocess

import xf

ROUNDS = 20
AT_ONCE = 4


def rpcbind_answers() -> bool:
    return subprocess.run(["rpcinfo", "-p", "127.0.0.1"], capture_output=True, timeout=10).returncode == 0


def start_and_read(g: xf.Ganesha, name: str, want: bytes) -> str:
    """Starts g and reads `name` over v3 and v4; returns "" or what went wrong."""
    try:
        g.start()
    except AssertionError as e:
        return f"start: {str(e)[-600:]}"
    problems = []
    # libnfs's own URL forms (nfs-cat takes no host:port): v3 as ganesha.sh prints it, v4 by nfsport=.
    base, _, query = g.url3.partition("?")
    for file_url in (f"{base}/{name}?{query}", f"nfs://127.0.0.1/export/{name}?version=4&nfsport={g.port}"):
        p = subprocess.run(["nfs-cat", file_url], capture_output=True, timeout=30)
        if p.returncode != 0 or p.stdout != want:
            problems.append(f"{file_url}: exit {p.returncode}, {len(p.stdout)} bytes, "
                            f"stderr {p.stderr[-300:]!r}")
    return "; ".join(problems)


def test_nfsv3_instances_started_at_once_all_serve(tmp):
    export = tmp / "export"
    export.mkdir()
    want = bytes(range(256)) * 37 + b"end\n"
    (export / "data").write_bytes(want)
    had_rpcbind = rpcbind_answers()
    failures = []
    for r in range(ROUNDS):
        gs = [xf.Ganesha(tmp / f"r{r}-{i}", export, protocols="3,4") for i in range(AT_ONCE)]
        try:
            with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
                results = list(pool.map(lambda g: start_and_read(g, "data", want), gs))
            for i, res in enumerate(results):
                if res:
                    failures.append(f"round {r} instance {i}: {res}")
                else:
                    assert gs[i].url3 and "nfsport=" in gs[i].url3, gs[i].url3
        finally:
            with concurrent.futures.ThreadPoolExecutor(AT_ONCE) as pool:
                list(pool.map(lambda g: g.close(), gs))
    assert not failures, f"{len(failures)} of {ROUNDS * AT_ONCE} starts failed:\n" + "\n".join(failures[:8])
    if not had_rpcbind:
        assert not rpcbind_answers(), "an rpcbind started for a ganesha start is still running"
