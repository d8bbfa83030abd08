#!/usr/bin/env python3
"""fleet.py ROOT[=PROCS]...: start `python3 -c 'print(6*7)'` chrooted into every ROOT at the same
moment (one thread each, released together by a barrier) and print one line per ROOT: its wall time
in seconds. With =PROCS (a cgroup's cgroup.procs file) that start runs in that cgroup: a shell
writes its pid there, then execs chroot (the same shell is timed whether or not PROCS is given).
Exit 1 if any start fails or does not print 42."""
import subprocess
import sys
import threading
import time

roots = [a.split("=", 1)[0] for a in sys.argv[1:]]
procs = [a.split("=", 1)[1] if "=" in a else "" for a in sys.argv[1:]]
SCRIPT = 'if [ -n "$1" ]; then echo $$ >"$1" || exit 1; fi; exec chroot "$2" /usr/bin/python3 -c "print(6*7)"'
barrier = threading.Barrier(len(roots))
times = [None] * len(roots)
errors = []


def run(i, root):
    barrier.wait()
    t0 = time.monotonic()
    p = subprocess.run(["sh", "-c", SCRIPT, "sh", procs[i], root], capture_output=True, text=True, timeout=600)
    times[i] = time.monotonic() - t0
    if p.returncode != 0 or p.stdout.strip() != "42":
        errors.append(f"{root}: rc {p.returncode}, out {p.stdout!r}, err {p.stderr[:200]!r}")


threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(roots)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for e in errors:
    print("fleet.py:", e, file=sys.stderr)
for t in times:
    print("%.4f" % t)
sys.exit(1 if errors else 0)
