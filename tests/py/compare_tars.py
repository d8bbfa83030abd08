"""Compare two tar archives entry by entry and byte by byte (e.g. two `docker export`s):
compare(A, B, ignore_mtime=[...], require=[...]) -> (differences, summary).

For every entry name present in either archive it checks: presence in both, the entry type,
mode (all permission bits including setuid/setgid/sticky), uid, gid, uname, gname, size, mtime
(unless the path is in ignore_mtime: docker's per-container init layer re-creates /etc/hosts,
/dev, ... at `docker create` time), link target (symlinks and hard links), device numbers, every
pax xattr record (SCHILY.xattr.*, e.g. security.capability) and the SHA-256 of the content of
every regular file. A path in `require` is a difference unless it is an entry of both.
"""
import hashlib
import tarfile


def name_of(member: tarfile.TarInfo) -> str:
    """An entry's path without a leading ./ or trailing /; "." for the root."""
    name = member.name.rstrip("/")
    if name.startswith("./"):
        name = name[2:]
    return name if name not in ("", ".") else "."


def load(path) -> dict:
    """{entry name: its attributes and content digest}. Raises OSError or tarfile.TarError if
    the archive cannot be read, ValueError if a name appears twice."""
    entries = {}
    with tarfile.open(path, "r:") as t:
        for m in t:
            name = name_of(m)
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
                for b in iter(lambda: f.read(1 << 20), b""):
                    n += len(b)
                    h.update(b)
                d["sha256"] = h.hexdigest()
                d["read"] = n
            if name in entries:
                raise ValueError(f"{path}: entry {name} appears twice")
            entries[name] = d
    return entries


def compare(path_a, path_b, ignore_mtime=(), require=()) -> tuple[list[str], str]:
    """The differences between two archives (empty if none) and a summary of what was compared."""
    ignore = {p.strip("/") or "." for p in ignore_mtime}
    a, b = load(path_a), load(path_b)
    diffs = []
    for name in sorted(set(a) | set(b)):
        if name not in a:
            diffs.append(f"{name}: only in {path_b}")
            continue
        if name not in b:
            diffs.append(f"{name}: only in {path_a}")
            continue
        for k in sorted(set(a[name]) | set(b[name])):
            if k == "mtime" and name in ignore:
                continue
            if a[name].get(k) != b[name].get(k):
                diffs.append(f"{name}: {k} {a[name].get(k)!r} != {b[name].get(k)!r}")
    for r in require:
        r = r.strip("/")
        if r not in a or r not in b:
            diffs.append(f"{r}: required entry missing")
    regs = sum(1 for d in a.values() if "sha256" in d)
    nbytes = sum(d.get("read", 0) for d in a.values())
    return diffs, f"{len(a)} entries, {regs} regular files, {nbytes} bytes of content"
