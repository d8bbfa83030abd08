#!/usr/bin/env python3
"""direct_read.py DIR: reads every regular file under DIR whole, in sorted path order, one at a
time with O_DIRECT (no page cache; the same way the daemon reads a chunk file from its block cache)
and prints "SECONDS BYTES" (the time the reads took, not counting this program's start).

run.sh points it at a block cache's chunks/ directory right after a read case filled it: what the
disk alone needs to hand over those chunk files, the floor under a block-cache read."""
import mmap
import os
import sys
import time

ALIGN = 1 << 20  # buffer and read size: a multiple of any device's logical block size


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: direct_read.py DIR")
    paths = []
    for root, dirs, files in os.walk(sys.argv[1]):
        dirs.sort()
        paths += [os.path.join(root, f) for f in sorted(files)]
    buf = mmap.mmap(-1, 8 * ALIGN)  # page-aligned, as O_DIRECT wants
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            off = 0
            while True:
                n = os.preadv(fd, [buf], off)
                total += n
                off += n
                if n < len(buf):
                    break
        finally:
            os.close(fd)
    t = time.perf_counter() - t0
    if total == 0:
        sys.exit("direct_read.py: no bytes under %s" % sys.argv[1])
    print("%.4f %d" % (t, total))


if __name__ == "__main__":
    main()
