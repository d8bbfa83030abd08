#!/usr/bin/env python3
"""Compare two directory trees entry by entry, metadata and content.

usage: compare_trees.py A B [--no-ino] [--no-ctime] [--no-dir-size] [--no-blocks]
                            [--exclude RELPATH]... [--data-map REF] [--max-diffs N]
       compare_trees.py --manifest TREE [--exclude RELPATH]...

Both trees are walked without following symlinks (lstat, readlink, l*xattr).
For every entry present in either tree it checks:

  * presence: the set of names in every directory must be identical both ways;
  * st_mode (file type and all permission bits incl. setuid/setgid/sticky),
    st_uid, st_gid, st_size, st_nlink, st_rdev, st_mtime_ns, st_ctime_ns
    (unless --no-ctime), st_blocks (unless --no-blocks);
    with --no-dir-size the st_size and st_blocks of directories are skipped
    (a copy made by cp(1) has differently grown directory files);
  * the readlink() target of symlinks (as bytes);
  * the complete xattr list and every value (os.listxattr / os.getxattr with
    follow_symlinks=False), so trusted.overlay.opaque, security.capability and
    user.* are all covered, including empty and binary values;
  * d_type exactly as readdir(3) returns it: directories are read with libc
    opendir/readdir64 through ctypes (os.scandir hides d_type for fifos,
    devices and sockets and silently falls back to lstat on DT_UNKNOWN).
    Within each tree d_type must equal IFTODT(st_mode) (DT_UNKNOWN is an
    error: overlayfs needs a real d_type to recognise whiteouts);
  * d_ino: within each tree readdir's d_ino must equal lstat's st_ino
    (skipped with --no-ino);
  * hard links: within each tree the non-directory entries are grouped by
    st_ino; the groups with more than one name must be the same sets of
    relative paths in both trees (skipped with --no-ino);
  * content: every byte of every regular file, streamed in 1 MiB blocks. Where
    a tree can report holes (SEEK_DATA/SEEK_HOLE) blocks lying wholly in a hole
    are not read but compared as zeros against the other side, so a sparse
    5 GiB file is compared completely while only the served side is read.
    The number of bytes read must equal st_size. With --data-map REF, a file that
    neither A nor B reports holes for (two FUSE mounts) but REF/RELPATH does (the
    source tree on ext4) is read over REF's data extents and 16 blocks of its holes
    only: a 5 GiB sparse file costs a few MiB per side instead of 5 GiB.

st_atime is never compared (reading a source changes it), nor st_dev / the
inode numbers themselves (they always differ between two file systems).

Exit status: 0 identical, 1 differences (the first --max-diffs, default 50,
are listed on stdout), 2 usage error or a tree that cannot be read at all.
The number of entries compared is printed last.

--manifest TREE prints one line per entry (path, type, mode, uid, gid, size,
nlink, rdev, mtime_ns, ctime_ns, ino, readlink target, xattrs digest) so two
manifests taken at different times can be diffed, e.g. to prove a store was
not modified. It reads no file content.
"""

import argparse
import bisect
import ctypes
import ctypes.util
import errno
import hashlib
import os
import random
import stat
import sys

BLOCK = 1 << 20
ZERO_BLOCK = bytes(BLOCK)

DT_NAMES = {0: "DT_UNKNOWN", 1: "DT_FIFO", 2: "DT_CHR", 4: "DT_DIR", 6: "DT_BLK",
            8: "DT_REG", 10: "DT_LNK", 12: "DT_SOCK", 14: "DT_WHT"}


class Dirent64(ctypes.Structure):
    _fields_ = [("d_ino", ctypes.c_uint64),
                ("d_off", ctypes.c_int64),
                ("d_reclen", ctypes.c_ushort),
                ("d_type", ctypes.c_ubyte),
                ("d_name", ctypes.c_char * 256)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.opendir.restype = ctypes.c_void_p
_libc.opendir.argtypes = [ctypes.c_char_p]
_libc.readdir64.restype = ctypes.POINTER(Dirent64)
_libc.readdir64.argtypes = [ctypes.c_void_p]
_libc.closedir.restype = ctypes.c_int
_libc.closedir.argtypes = [ctypes.c_void_p]


def readdir(path):
    """Return {name(bytes): (d_ino, d_type)} for a directory, without . and .."""
    d = _libc.opendir(path)
    if not d:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), os.fsdecode(path))
    out = {}
    try:
        while True:
            ctypes.set_errno(0)
            p = _libc.readdir64(d)
            if not p:
                e = ctypes.get_errno()
                if e:
                    raise OSError(e, os.strerror(e), os.fsdecode(path))
                break
            ent = p.contents
            name = ent.d_name
            if name in (b".", b".."):
                continue
            if name in out:
                raise OSError(errno.EIO, "readdir returned a name twice: %r" % name,
                              os.fsdecode(path))
            out[name] = (ent.d_ino, ent.d_type)
    finally:
        _libc.closedir(d)
    return out


def show(rel):
    """Printable form of a relative path (bytes): newlines etc. escaped."""
    s = rel.decode("utf-8", "backslashreplace") if rel else "."
    r = repr(s)
    return r[1:-1] if r[0] == "'" and "'" not in s else r


def xattrs_of(path):
    names = os.listxattr(path, follow_symlinks=False)
    out = {}
    for n in names:
        try:
            out[n] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            out[n] = "<getxattr error: %s>" % os.strerror(e.errno)
    return out


def fmt_xattr_value(v):
    if isinstance(v, str):
        return v
    if len(v) > 40:
        return "%d bytes sha256:%s" % (len(v), hashlib.sha256(v).hexdigest()[:16])
    return repr(v)


class Tree:
    """One side of the comparison: a root and the per-tree facts collected while walking."""

    def __init__(self, label, root, excludes):
        self.label = label
        self.root = os.fsencode(os.path.abspath(root))
        self.excludes = excludes
        self.inodes = {}  # st_ino -> [rel paths] for non-directories

    def path(self, rel):
        return self.root + b"/" + rel if rel else self.root


def data_ranges(fd, size):
    """Sorted list of (start, end) data extents, or None if holes can't be reported."""
    ranges = []
    off = 0
    try:
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no more data: rest is a hole
                    break
                raise
            end = os.lseek(fd, start, os.SEEK_HOLE)
            if end <= start:
                return None
            ranges.append((start, min(end, size)))
            off = end
    except OSError:
        return None
    if len(ranges) == 1 and ranges[0] == (0, size):
        return None  # no holes: treat as "read everything"
    return ranges


def in_hole(ranges, starts, off, length):
    """True if [off, off+length) lies wholly in a hole of the file described by ranges."""
    if ranges is None:
        return False
    i = bisect.bisect_right(starts, off) - 1
    if i >= 0 and ranges[i][1] > off:
        return False  # extent i covers off
    nxt = i + 1
    return not (nxt < len(ranges) and ranges[nxt][0] < off + length)


def read_full(fd, off, length):
    chunks = []
    got = 0
    while got < length:
        b = os.pread(fd, length - got, off + got)
        if not b:
            break
        chunks.append(b)
        got += len(b)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def open_ro(path):
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


def ref_holes(pr, size):
    """The data extents of the reference file pr (--data-map), or None if it is not there,
    has another size or reports no holes."""
    try:
        fr = open_ro(pr)
    except OSError:
        return None
    try:
        if os.fstat(fr).st_size != size:
            return None
        return data_ranges(fr, size)
    finally:
        os.close(fr)


def compare_content(pa, pb, size, pr=None):
    """Return None if identical, else a description of the first difference. pr: the same
    file in the --data-map tree (None: none)."""
    fa = open_ro(pa)
    try:
        fb = open_ro(pb)
        try:
            ra = data_ranges(fa, size)
            rb = data_ranges(fb, size)
            sa = [r[0] for r in ra] if ra else []
            sb = [r[0] for r in rb] if rb else []
            # Neither side reports holes, the reference does: its data extents are read on both
            # sides, its holes on a sample of 16 blocks (which must read as zeros on both).
            rr = ref_holes(pr, size) if pr is not None and ra is None and rb is None else None
            sr = [r[0] for r in rr] if rr else []
            sample = set()
            if rr is not None:
                holes = [k for k in range((size + BLOCK - 1) // BLOCK) if in_hole(rr, sr, k * BLOCK, BLOCK)]
                sample = set(random.Random(size).sample(holes, min(16, len(holes))))
            off = 0
            while True:
                want = BLOCK
                if rr is not None and off < size and in_hole(rr, sr, off, want) and off // BLOCK not in sample:
                    off += min(want, size - off)
                    continue
                ha = in_hole(ra, sa, off, want) if off < size else False
                hb = in_hole(rb, sb, off, want) if off < size else False
                if ha and hb:
                    off += min(want, size - off)
                    continue
                ba = ZERO_BLOCK[:min(want, size - off)] if ha else read_full(fa, off, want)
                bb = ZERO_BLOCK[:min(want, size - off)] if hb else read_full(fb, off, want)
                if ba != bb:
                    n = min(len(ba), len(bb))
                    i = next((k for k in range(n) if ba[k] != bb[k]), n)
                    if i < n:
                        return "content differs at byte %d (A=0x%02x B=0x%02x)" % (
                            off + i, ba[i], bb[i])
                    return "content length differs: A has %d bytes, B has %d bytes" % (
                        off + len(ba), off + len(bb))
                if not ba:
                    if off != size:
                        return "read returned %d bytes but st_size is %d" % (off, size)
                    return None
                if len(ba) < want:
                    # Short block: must be EOF for both; confirm with one more read.
                    off += len(ba)
                    if off != size:
                        return "read returned %d bytes but st_size is %d" % (off, size)
                    extra_a = os.pread(fa, 1, off)
                    extra_b = os.pread(fb, 1, off)
                    if extra_a or extra_b:
                        return "data past st_size %d (A:%d B:%d bytes)" % (
                            size, len(extra_a), len(extra_b))
                    return None
                off += len(ba)
                if off > size:
                    return "read returned more than st_size %d bytes" % size
        finally:
            os.close(fb)
    finally:
        os.close(fa)


class Comparer:
    def __init__(self, a, b, opts):
        self.a = a
        self.b = b
        self.opts = opts
        self.diffs = []
        self.ndiffs = 0
        self.entries = 0
        self.bytes_compared = 0

    def diff(self, rel, msg):
        self.ndiffs += 1
        if len(self.diffs) < self.opts.max_diffs:
            self.diffs.append("%s: %s" % (show(rel), msg))

    def excluded(self, rel):
        for e in self.opts.exclude:
            if rel == e or rel.startswith(e + b"/"):
                return True
        return False

    def check_dirent(self, tree, rel, st, dent):
        d_ino, d_type = dent
        want = stat.S_IFMT(st.st_mode) >> 12
        if d_type != want:
            self.diff(rel, "%s: readdir d_type %s but lstat type is %s" % (
                tree.label, DT_NAMES.get(d_type, d_type), DT_NAMES.get(want, want)))
        if not self.opts.no_ino and d_ino != st.st_ino:
            self.diff(rel, "%s: readdir d_ino %d != lstat st_ino %d" % (
                tree.label, d_ino, st.st_ino))

    def compare_entry(self, rel, dent_a, dent_b):
        """Compare one entry present in both trees; returns True if both are directories."""
        pa, pb = self.a.path(rel), self.b.path(rel)
        try:
            sa = os.lstat(pa)
        except OSError as e:
            self.diff(rel, "A: lstat failed: %s" % e.strerror)
            return False
        try:
            sb = os.lstat(pb)
        except OSError as e:
            self.diff(rel, "B: lstat failed: %s" % e.strerror)
            return False
        self.entries += 1
        if dent_a is not None:
            self.check_dirent(self.a, rel, sa, dent_a)
        if dent_b is not None:
            self.check_dirent(self.b, rel, sb, dent_b)

        is_dir = stat.S_ISDIR(sa.st_mode)
        if sa.st_mode != sb.st_mode:
            self.diff(rel, "st_mode A=%07o B=%07o" % (sa.st_mode, sb.st_mode))
            if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
                return False  # different types: nothing else is comparable
        fields = ["st_uid", "st_gid", "st_nlink", "st_rdev", "st_mtime_ns"]
        if not (is_dir and self.opts.no_dir_size):
            fields.append("st_size")
            if not self.opts.no_blocks:
                fields.append("st_blocks")
        if not self.opts.no_ctime:
            fields.append("st_ctime_ns")
        for f in fields:
            va, vb = getattr(sa, f), getattr(sb, f)
            if va != vb:
                if f == "st_rdev":
                    self.diff(rel, "st_rdev A=%d:%d B=%d:%d" % (
                        os.major(va), os.minor(va), os.major(vb), os.minor(vb)))
                else:
                    self.diff(rel, "%s A=%s B=%s" % (f, va, vb))

        if not is_dir:
            self.a.inodes.setdefault(sa.st_ino, []).append(rel)
            self.b.inodes.setdefault(sb.st_ino, []).append(rel)

        # xattrs
        try:
            xa = xattrs_of(pa)
        except OSError as e:
            xa = None
            self.diff(rel, "A: listxattr failed: %s" % e.strerror)
        try:
            xb = xattrs_of(pb)
        except OSError as e:
            xb = None
            self.diff(rel, "B: listxattr failed: %s" % e.strerror)
        if xa is not None and xb is not None and xa != xb:
            for n in sorted(set(xa) | set(xb)):
                if n not in xb:
                    self.diff(rel, "xattr %s only in A (%s)" % (n, fmt_xattr_value(xa[n])))
                elif n not in xa:
                    self.diff(rel, "xattr %s only in B (%s)" % (n, fmt_xattr_value(xb[n])))
                elif xa[n] != xb[n]:
                    self.diff(rel, "xattr %s A=%s B=%s" % (
                        n, fmt_xattr_value(xa[n]), fmt_xattr_value(xb[n])))

        if stat.S_ISLNK(sa.st_mode):
            try:
                la = os.readlink(pa)
                lb = os.readlink(pb)
                if la != lb:
                    self.diff(rel, "readlink A=%r B=%r" % (la[:200], lb[:200]))
            except OSError as e:
                self.diff(rel, "readlink failed: %s" % e)
        elif stat.S_ISREG(sa.st_mode) and sa.st_size == sb.st_size:
            try:
                pr = self.opts.data_map + b"/" + rel if self.opts.data_map else None
                r = compare_content(pa, pb, sa.st_size, pr)
                if r:
                    self.diff(rel, r)
                else:
                    self.bytes_compared += sa.st_size
            except OSError as e:
                self.diff(rel, "reading content failed: %s (%s)" % (
                    e.strerror, os.fsdecode(e.filename) if e.filename else ""))
        return is_dir and stat.S_ISDIR(sb.st_mode)

    def walk(self):
        # Iterative depth-first walk over relative paths present in both trees.
        if not self.compare_entry(b"", None, None):
            self.diff(b"", "roots are not both directories")
            return
        stack = [b""]
        while stack:
            rel = stack.pop()
            try:
                ea = readdir(self.a.path(rel))
            except OSError as e:
                self.diff(rel, "A: readdir failed: %s" % e.strerror)
                continue
            try:
                eb = readdir(self.b.path(rel))
            except OSError as e:
                self.diff(rel, "B: readdir failed: %s" % e.strerror)
                continue
            subdirs = []
            for name in sorted(set(ea) | set(eb)):
                crel = rel + b"/" + name if rel else name
                if self.excluded(crel):
                    continue
                if name not in eb:
                    self.diff(crel, "only in A")
                    continue
                if name not in ea:
                    self.diff(crel, "only in B")
                    continue
                if self.compare_entry(crel, ea[name], eb[name]):
                    subdirs.append(crel)
            stack.extend(reversed(subdirs))

    def compare_links(self):
        if self.opts.no_ino:
            return

        def classes(tree):
            return {frozenset(v) for v in tree.inodes.values() if len(v) > 1}

        ca, cb = classes(self.a), classes(self.b)
        for c in sorted(ca - cb, key=lambda c: sorted(c)):
            self.diff(sorted(c)[0], "hard-link group in A but not in B: %s" % (
                ", ".join(show(p) for p in sorted(c))))
        for c in sorted(cb - ca, key=lambda c: sorted(c)):
            self.diff(sorted(c)[0], "hard-link group in B but not in A: %s" % (
                ", ".join(show(p) for p in sorted(c))))


def manifest(root, excludes, out):
    root = os.fsencode(os.path.abspath(root))
    count = 0
    stack = [b""]

    def line(rel):
        p = root + b"/" + rel if rel else root
        st = os.lstat(p)
        link = os.readlink(p) if stat.S_ISLNK(st.st_mode) else b""
        try:
            xs = xattrs_of(p)
        except OSError as e:
            xs = {"<error>": e.strerror}
        h = hashlib.sha256()
        for n in sorted(xs):
            v = xs[n]
            h.update(n.encode() + b"=" + (v if isinstance(v, bytes) else v.encode()) + b"\0")
        out.write("%s\t%07o\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%r\t%s\t%s\n" % (
            show(rel), st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_nlink, st.st_rdev,
            st.st_mtime_ns, st.st_ctime_ns, st.st_ino, link, h.hexdigest()[:16],
            ",".join(sorted(xs))))
        return stat.S_ISDIR(st.st_mode)

    line(b"")
    count += 1
    while stack:
        rel = stack.pop()
        ents = readdir(root + b"/" + rel if rel else root)
        subdirs = []
        for name in sorted(ents):
            crel = rel + b"/" + name if rel else name
            if any(crel == e or crel.startswith(e + b"/") for e in excludes):
                continue
            count += 1
            if line(crel):
                subdirs.append(crel)
        stack.extend(reversed(subdirs))
    return count


def parse_args(argv=None):
    """The command line (argv, default sys.argv[1:]) as options for Comparer and manifest()."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("trees", nargs="+", metavar="TREE")
    ap.add_argument("--no-ino", action="store_true",
                    help="skip d_ino==st_ino and hard-link group checks")
    ap.add_argument("--no-ctime", action="store_true", help="do not compare st_ctime_ns")
    ap.add_argument("--no-dir-size", action="store_true",
                    help="do not compare st_size/st_blocks of directories")
    ap.add_argument("--no-blocks", action="store_true", help="do not compare st_blocks")
    ap.add_argument("--exclude", action="append", default=[], metavar="RELPATH",
                    help="skip this path (relative to the roots) and everything below it")
    ap.add_argument("--data-map", metavar="REF",
                    help="a tree holding the same files on a file system that reports holes: where neither A nor "
                         "B reports them, only REF's data extents and 16 blocks of its holes are read")
    ap.add_argument("--max-diffs", type=int, default=50)
    ap.add_argument("--manifest", action="store_true",
                    help="print a metadata manifest of one TREE instead of comparing")
    opts = ap.parse_args(argv)
    opts.exclude = [os.fsencode(e.strip("/")) for e in opts.exclude]
    opts.data_map = os.fsencode(os.path.abspath(opts.data_map)) if opts.data_map else None
    if opts.manifest and len(opts.trees) != 1:
        ap.error("--manifest takes exactly one TREE")
    if not opts.manifest and len(opts.trees) != 2:
        ap.error("need exactly two trees A B")
    return opts


def compare_opts(opts, comparer=None):
    """Compares opts.trees[0] (A) with opts.trees[1] (B), both directories, with Comparer or a
    subclass that relaxes some differences; returns it: its ndiffs, diffs (the first max_diffs),
    entries and bytes_compared tell what it found."""
    c = (comparer or Comparer)(Tree("A", opts.trees[0], opts.exclude), Tree("B", opts.trees[1], opts.exclude), opts)
    c.walk()
    c.compare_links()
    return c


def compare(argv, comparer=None):
    """For tests that import this module: compare_opts() of a command line (["A", "B",
    "--no-ctime", ...]). Raises NotADirectoryError if a root is not a directory."""
    opts = parse_args([os.fspath(a) for a in argv])
    for t in opts.trees:
        if not os.path.isdir(t):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", t)
    return compare_opts(opts, comparer)


def main():
    opts = parse_args()
    if opts.manifest:
        try:
            n = manifest(opts.trees[0], opts.exclude, sys.stdout)
        except OSError as e:
            print("compare_trees: %s" % e, file=sys.stderr)
            return 2
        print("# %d entries" % n, file=sys.stderr)
        return 0

    for t in opts.trees:
        if not os.path.isdir(t):
            print("compare_trees: not a directory: %s" % t, file=sys.stderr)
            return 2
    c = compare_opts(opts)
    print("compare_trees: A=%s B=%s" % (opts.trees[0], opts.trees[1]))
    if c.ndiffs:
        print("compare_trees: %d difference(s); first %d:" % (c.ndiffs, len(c.diffs)))
        for d in c.diffs:
            print("  " + d)
    print("compare_trees: %d entries compared, %d bytes of content compared, %s" % (
        c.entries, c.bytes_compared, "DIFFERENT" if c.ndiffs else "identical"))
    return 1 if c.ndiffs else 0


if __name__ == "__main__":
    sys.exit(main())
