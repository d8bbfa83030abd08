#!/usr/bin/env python3
"""dataroot_listing.py ROOT [nomtime]

Everything under a dockerd data-root that `extrafs docker attach` writes (ROOT/image and
ROOT/overlay2), one line per entry: relative path, mode, mtime in ns ("-" with "nomtime"), link
target or sha256 of the content. repositories.json is left out (dockerd rewrites it on its own).
For tests that check a data-root was, or was not, changed (tests/py imports listing()).
"""
import hashlib
import os
import stat
import sys


def listing(root, nomtime=False):
    out = []
    for sub in ("image", "overlay2"):
        top = os.path.join(root, sub)
        for dp, dns, fns in sorted(os.walk(top)):
            dns.sort()
            for n in sorted(dns + fns):
                p = os.path.join(dp, n)
                st = os.lstat(p)
                extra = os.readlink(p) if stat.S_ISLNK(st.st_mode) else (
                    hashlib.sha256(open(p, "rb").read()).hexdigest() if stat.S_ISREG(st.st_mode) else "")
                rel = os.path.relpath(p, root)
                if rel == "image/overlay2/repositories.json":
                    continue
                out.append(" ".join([rel, oct(st.st_mode), "-" if nomtime else str(st.st_mtime_ns), extra]))
    return out


if __name__ == "__main__":
    for line in listing(sys.argv[1], len(sys.argv) > 2 and sys.argv[2] == "nomtime"):
        print(line)
