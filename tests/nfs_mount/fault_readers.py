#!/usr/bin/env python3
"""fault_readers.py: readers at random offsets that compare every successful read with the source.

Used by the fault and load tests (tests/py/test_nfs_faults.py, tests/nfs_mount/test_nfs_load.sh):

  fault_readers.py --src SRC_ROOT --mnt MNT_ROOT --files LIST --readers N --seconds S --out JSON
                   [--allow ERRNO,...] [--drop-every S] [--drop-caches-every S]
                   [--watch-pid PID]... [--max-d-secs S] [--stop-file PATH]

LIST holds one path per line, relative to both SRC_ROOT (the store) and MNT_ROOT (the mount).
N reader processes each loop for S seconds (or until --stop-file exists): pick a file and a random
offset and length (4 KiB to 2 MiB, sometimes up to the end of the file), pread it from the mount
and from the source, and compare. A short read is followed up at the position reached (the kernel
returns the bytes it has when a later page fails; the next read must then fail, not end): bytes
that differ, or end of file before the file's size, are a wrong read. A read
error whose errno is in --allow (default EIO) is counted with the time it happened; any other errno
is a failure. With --drop-every a separate process calls posix_fadvise(POSIX_FADV_DONTNEED) on
every file of the mount every S seconds, and with --drop-caches-every it writes 1 to
/proc/sys/vm/drop_caches every S seconds, so reads keep going to the daemon. A monitor thread
scans /proc/PID/task/*/stat of the readers and of every --watch-pid for state D and records the
longest time any task stayed in D.

The JSON summary (also printed in short on stdout) holds: reads_ok, bytes_ok, errors by errno,
short_reads (follow-ups needed), partial_then_error (reads that got bytes, then an error),
wrong (list of the first wrong reads), size_changes, error_times (seconds since the epoch of every
counted error), max_d_secs, readers_lost (readers that crashed or did not report), hung (readers
still running 60 s after the end). The exit status is 0 only if nothing was wrong: no wrong byte,
no size change, no unexpected errno, no lost or hung reader, no task in D longer than --max-d-secs.
Whether the counted errors are acceptable is for the caller to judge (with the timestamps).
"""
import argparse
import errno
import json
import multiprocessing as mp
import os
import random
import sys
import threading
import time

KiB = 1 << 10
MiB = 1 << 20


def reader(idx, args, files, sizes, deadline, q):
    rng = random.Random(1000 + idx)
    allow = set(args.allow)
    fds = {}
    src_fds = {p: os.open(os.path.join(args.src, p), os.O_RDONLY) for p in files}
    res = {"reads_ok": 0, "bytes_ok": 0, "errors": {}, "error_times": [], "wrong": [], "unexpected": [],
           "short_reads": 0, "partial_then_error": 0}
    while time.time() < deadline and not (args.stop_file and os.path.exists(args.stop_file)):
        p = rng.choice(files)
        size = sizes[p]
        off = rng.randrange(0, max(size, 1))
        if rng.random() < 0.1:
            length = size - off
        else:
            length = rng.choice((4 * KiB, 64 * KiB, 128 * KiB, 1 * MiB, 2 * MiB))
        # A read(2) that copied some bytes before a failing page returns them (a short read); the
        # next read at the position must then fail or go on, never read as end of file. So a
        # short read is followed up until the length, end of file or an error.
        got = b""
        err = None
        try:
            fd = fds.get(p)
            if fd is None:
                fd = fds[p] = os.open(os.path.join(args.mnt, p), os.O_RDONLY)
            while len(got) < length:
                b = os.pread(fd, length - len(got), off + len(got))
                if not b:
                    break
                if got:
                    res["short_reads"] += 1   # a follow-up read after a short one
                got += b
        except OSError as e:
            err = e
        want = os.pread(src_fds[p], length, off)
        if got != want[:len(got)] or (err is None and len(got) != len(want)):
            first = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
            res["wrong"].append("%s @%d+%d: got %d bytes%s, want %d, first difference at %s" % (
                p, off, length, len(got), " then %s" % err if err else " then end of file", len(want), first))
            if len(res["wrong"]) > 20:
                res["wrong"] = res["wrong"][:20]
        elif err is None:
            res["reads_ok"] += 1
            res["bytes_ok"] += len(got)
        if err is not None:
            name = errno.errorcode.get(err.errno, str(err.errno))
            if fds.get(p) is not None:
                try:
                    os.close(fds.pop(p))
                except OSError:
                    pass
            if name in allow:
                res["errors"][name] = res["errors"].get(name, 0) + 1
                res["error_times"].append(round(time.time(), 3))
                if got:
                    res["partial_then_error"] += 1
            else:
                res["unexpected"].append("%s @%d+%d: %s" % (p, off, length, err))
            time.sleep(0.01)
    q.put((idx, res))


def dropper(args, files, deadline, passes):
    next_drop = time.time() + (args.drop_caches_every or 1e9)
    while time.time() < deadline and not (args.stop_file and os.path.exists(args.stop_file)):
        if args.drop_every:
            passes.value += 1
            for p in files:
                try:
                    fd = os.open(os.path.join(args.mnt, p), os.O_RDONLY)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    finally:
                        os.close(fd)
                except OSError:
                    pass   # the mount may be failing right now; the readers count that
        if args.drop_caches_every and time.time() >= next_drop:
            with open("/proc/sys/vm/drop_caches", "w") as f:
                f.write("1\n")
            next_drop = time.time() + args.drop_caches_every
        time.sleep(args.drop_every or 0.5)


def d_state_monitor(pids_fn, stop, out):
    since = {}
    while not stop.is_set():
        now = time.monotonic()
        seen = set()
        for pid in pids_fn():
            try:
                tids = os.listdir("/proc/%d/task" % pid)
            except OSError:
                continue
            for t in tids:
                try:
                    with open("/proc/%d/task/%s/stat" % (pid, t)) as f:
                        st = f.read().rsplit(")", 1)[1].split()[0]
                except (OSError, IndexError):
                    continue
                key = (pid, t)
                if st == "D":
                    seen.add(key)
                    since.setdefault(key, now)
                    d = now - since[key]
                    if d > out["max_d_secs"]:
                        out["max_d_secs"] = round(d, 2)
                        out["max_d_task"] = "%d/%s" % key
        for key in list(since):
            if key not in seen:
                del since[key]
        stop.wait(0.2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--mnt", required=True)
    ap.add_argument("--files", required=True)
    ap.add_argument("--readers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--allow", default="EIO")
    ap.add_argument("--drop-every", type=float, default=0)
    ap.add_argument("--drop-caches-every", type=float, default=0)
    ap.add_argument("--watch-pid", type=int, action="append", default=[])
    ap.add_argument("--max-d-secs", type=float, default=20)
    ap.add_argument("--stop-file", default="")
    args = ap.parse_args()
    args.allow = [a for a in args.allow.split(",") if a]
    files = [l.strip() for l in open(args.files) if l.strip()]
    if not files:
        sys.exit("fault_readers.py: no files in " + args.files)
    sizes = {p: os.stat(os.path.join(args.src, p)).st_size for p in files}

    def mnt_sizes():
        out = {}
        for p in files:
            try:
                out[p] = os.stat(os.path.join(args.mnt, p)).st_size
            except OSError as e:
                out[p] = "error: %s" % e
        return out

    before = mnt_sizes()
    summary = {"readers": args.readers, "seconds": args.seconds, "reads_ok": 0, "bytes_ok": 0,
               "errors": {}, "error_times": [], "wrong": [], "unexpected": [], "size_changes": [],
               "max_d_secs": 0.0, "max_d_task": None, "readers_lost": 0, "hung": 0,
               "short_reads": 0, "partial_then_error": 0,
               "start": time.time()}
    for p in files:
        if before[p] != sizes[p]:
            summary["size_changes"].append("%s: %s in the mount before the run, %d in the store" % (p, before[p], sizes[p]))

    deadline = time.time() + args.seconds
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=reader, args=(i, args, files, sizes, deadline, q)) for i in range(args.readers)]
    for pr in procs:
        pr.start()
    drop = None
    drop_passes = ctx.Value("l", 0)  # how often the dropper went over every file: the page-cache
                                     # pressure the readers had (opens that wait on a slow daemon slow it)
    if args.drop_every or args.drop_caches_every:
        drop = ctx.Process(target=dropper, args=(args, files, deadline, drop_passes))
        drop.start()
    stop = threading.Event()
    mon = threading.Thread(target=d_state_monitor,
                           args=(lambda: [pr.pid for pr in procs if pr.pid] + args.watch_pid, stop, summary))
    mon.start()

    results = {}
    # Bounded: every reader must report within 60 s after the deadline (a read blocked longer is a
    # hang, whatever the mount's timeout).
    end = deadline + 60
    while len(results) < len(procs) and time.time() < end:
        try:
            idx, res = q.get(timeout=0.5)
            results[idx] = res
        except Exception:
            if all(not pr.is_alive() for pr in procs) and q.empty():
                break
    stop.set()
    mon.join()
    for pr in procs:
        pr.join(timeout=1)
        if pr.is_alive():
            summary["hung"] += 1
            pr.kill()
            pr.join(timeout=5)
    if drop is not None:
        drop.join(timeout=30)
        if drop.is_alive():
            summary["hung"] += 1
            drop.kill()
        elif drop.exitcode != 0:
            summary["unexpected"].append("the page-cache dropper exited %s" % drop.exitcode)
    summary["readers_lost"] = len(procs) - len(results)
    summary["drop_passes"] = drop_passes.value
    for res in results.values():
        summary["reads_ok"] += res["reads_ok"]
        summary["bytes_ok"] += res["bytes_ok"]
        summary["short_reads"] += res["short_reads"]
        summary["partial_then_error"] += res["partial_then_error"]
        for k, v in res["errors"].items():
            summary["errors"][k] = summary["errors"].get(k, 0) + v
        summary["error_times"] += res["error_times"]
        summary["wrong"] += res["wrong"]
        summary["unexpected"] += res["unexpected"][:20]
    summary["error_times"].sort()
    summary["end"] = time.time()
    after = mnt_sizes()
    for p in files:
        if after[p] != sizes[p] and not isinstance(after[p], str):
            summary["size_changes"].append("%s: %s in the mount after the run, %d in the store" % (p, after[p], sizes[p]))
    with open(args.out, "w") as f:
        json.dump(summary, f)
    bad = []
    if summary["wrong"]:
        bad.append("%d wrong reads, first: %s" % (len(summary["wrong"]), summary["wrong"][0]))
    if summary["size_changes"]:
        bad.append("size changed: " + "; ".join(summary["size_changes"][:3]))
    if summary["unexpected"]:
        bad.append("%d unexpected errors, first: %s" % (len(summary["unexpected"]), summary["unexpected"][0]))
    if summary["readers_lost"]:
        bad.append("%d readers crashed or did not report" % summary["readers_lost"])
    if summary["hung"]:
        bad.append("%d readers hung (still running 60 s after the end)" % summary["hung"])
    if summary["max_d_secs"] > args.max_d_secs:
        bad.append("task %s in state D for %.1f s (> %.1f s)" % (summary["max_d_task"], summary["max_d_secs"], args.max_d_secs))
    print("fault_readers: %d readers, %.0f s: %d reads compared OK (%d MiB), errors %s (%d after a short"
          " read), longest D %.1f s%s" % (
              args.readers, summary["end"] - summary["start"], summary["reads_ok"], summary["bytes_ok"] >> 20,
              json.dumps(summary["errors"]), summary["partial_then_error"], summary["max_d_secs"],
              ", %d page-cache drop passes" % drop_passes.value if args.drop_every else ""))
    for b in bad:
        print("fault_readers: " + b)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
