"""The comparison of a tree published from a `docker save` archive (A) with the data-root layer
it came from (B): compare_trees.py --no-ctime --no-dir-size --no-blocks, relaxed further for what
a docker layer tar does not carry, which is so not compared:
  * st_ctime (never in the tar), directory st_size and every st_blocks (not in the tar);
  * sub-second mtimes: docker writes layer tars with whole-second mtimes, so A's mtime must
    equal B's truncated to the second;
  * the attributes of the layer root itself (mode, owner, mtime): a layer tar has no entry for
    it (publish gives it 0755 root:root at the epoch, see extrafs-publish(8));
  * the mtime of whiteouts: docker writes a `.wh.NAME` header of its own for an overlay2
    whiteout rather than the device's attributes (seen: a whiteout made at 596.01 s came out of
    `docker save` as 595 s), so only A's whiteout (a 0/0 character device) is checked to exist;
  * overlayfs's private bookkeeping xattrs in B (trusted.overlay.origin, impure, uuid, nlink):
    the kernel adds them when dockerd mounts a layer (e.g. for docker save), they name file
    handles of the local file system, and docker's tar export leaves them out.
Everything else (presence, types, modes, owners, sizes, nlink, rdev, xattrs, symlink targets,
hard-link groups, content, d_type) is compared exactly.
"""
import os
import re

import xf

PRIVATE = re.compile(r"^xattr trusted\.overlay\.(origin|impure|uuid|nlink) only in B ")
MTIME = re.compile(r"^st_mtime_ns A=(\d+) B=(\d+)$")
ROOT_ATTRS = ("st_mode", "st_mtime_ns", "st_uid", "st_gid")


def is_whiteout(path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o020000 and st.st_rdev == 0


class ArchiveComparer(xf.compare_trees_engine().Comparer):
    def __init__(self, *args):
        super().__init__(*args)
        self.relaxed = 0

    def diff(self, rel, msg):
        m = MTIME.match(msg)
        if (PRIVATE.match(msg)
                or (m and int(m.group(1)) == int(m.group(2)) // 10**9 * 10**9)
                or (m and is_whiteout(self.a.path(rel)))
                or (rel == b"" and msg.startswith(ROOT_ATTRS))):
            self.relaxed += 1
            return
        super().diff(rel, msg)


def compare(published, source) -> str:
    """Fails the test with the differences between the published tree and its source layer
    beyond what a tar does not carry; returns a summary."""
    return xf.compare_trees(published, source, "--no-ctime", "--no-dir-size", "--no-blocks",
                            comparer=ArchiveComparer)
