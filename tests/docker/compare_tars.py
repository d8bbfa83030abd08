#!/usr/bin/env python3
"""Compare two tar archives entry by entry and byte by byte (e.g. two `docker export`s).

usage: compare_tars.py A.tar B.tar [--ignore-mtime PATH]... [--max-diffs N] [--require PATH]...

For every entry name present in either archive it checks: presence in both, the entry type,
mode (all permission bits including setuid/setgid/sticky), uid, gid, uname, gname, size, mtime
(unless the path is given with --ignore-mtime: docker's per-container init layer re-creates
/etc/hosts, /dev, ... at `docker create` time), link target (symlinks and hard links), device
numbers, every pax xattr record (SCHILY.xattr.*, e.g. security.capability) and the SHA-256 of
the content of every regular file. --require PATH fails unless PATH is an entry of both.

Exit status: 0 identical, 1 differences (listed on stdout), 2 usage or unreadable archive.
"""
import hashlib
import sys
import tarfile


def load(path):
    entries = {}
    try:
        with tarfile.open(path, "r:") as t:
            for m in t:
                name = m.name.rstrip("/")
                if name.startswith("./"):
                    name = name[2:]
                if name in ("", "."):
                    name = "."
                d = {
                    "type": m.type,
                    "mode": oct(m.mode),
                    "uid": m.uid,
                    "gid": m.gid,
                    "uname": m.uname,
                    "gname": m.gname,
                    "size": m.size,
                    "mtime": int(m.mtime),
                    "linkname": m.linkname if (m.issym() or m.islnk()) else "",
                    "dev": (m.devmajor, m.devminor) if (m.ischr() or m.isblk()) else None,
                    "xattrs": {k: v for k, v in sorted(m.pax_headers.items()) if k.startswith("SCHILY.xattr.")},
                }
                if m.isreg():
                    h = hashlib.sha256()
                    f = t.extractfile(m)
                    n = 0
                    while True:
                        b = f.read(1 << 20)
                        if not b:
                            break
                        n += len(b)
                        h.update(b)
                    d["sha256"] = h.hexdigest()
                    d["read"] = n
                if name in entries:
                    print(f"{path}: entry {name} appears twice")
                    sys.exit(1)
                entries[name] = d
    except (OSError, tarfile.TarError) as e:
        print(f"cannot read {path}: {e}", file=sys.stderr)
        sys.exit(2)
    return entries


def main():
    args = sys.argv[1:]
    ignore, require, files, max_diffs = set(), [], [], 50
    i = 0
    while i < len(args):
        if args[i] == "--ignore-mtime" and i + 1 < len(args):
            ignore.add(args[i + 1].strip("/") or ".")
            i += 2
        elif args[i] == "--require" and i + 1 < len(args):
            require.append(args[i + 1].strip("/"))
            i += 2
        elif args[i] == "--max-diffs" and i + 1 < len(args):
            max_diffs = int(args[i + 1])
            i += 2
        else:
            files.append(args[i])
            i += 1
    if len(files) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    a, b = load(files[0]), load(files[1])
    diffs = []
    for name in sorted(set(a) | set(b)):
        if name not in a:
            diffs.append(f"{name}: only in {files[1]}")
            continue
        if name not in b:
            diffs.append(f"{name}: only in {files[0]}")
            continue
        for k in sorted(set(a[name]) | set(b[name])):
            if k == "mtime" and name in ignore:
                continue
            if a[name].get(k) != b[name].get(k):
                diffs.append(f"{name}: {k} {a[name].get(k)!r} != {b[name].get(k)!r}")
    for r in require:
        if r not in a or r not in b:
            diffs.append(f"{r}: required entry missing")
    for d in diffs[:max_diffs]:
        print(d)
    if diffs:
        print(f"{len(diffs)} differences")
        sys.exit(1)
    regs = sum(1 for d in a.values() if "sha256" in d)
    nbytes = sum(d.get("read", 0) for d in a.values())
    print(f"identical: {len(a)} entries, {regs} regular files, {nbytes} bytes of content")


if __name__ == "__main__":
    main()
