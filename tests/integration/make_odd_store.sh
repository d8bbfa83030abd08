#!/bin/bash
# make_odd_store.sh STORE [--busybox FILE]
#
# Builds a Hermes-style store (a hand copy of /var/lib/docker/{image,overlay2})
# with three layers base <- mid <- top whose diff/ trees hold every odd case a
# layer can hold: hard links across directories (pairs, a 3-link group, linked
# empty files, fifos and symlinks), relative/absolute/dangling/looping/long
# symlinks, whiteouts (char 0:0) and opaque directories (trusted.overlay.opaque=y)
# in the upper layers, fifos, sockets, char/block devices with large
# major/minor, setuid/setgid/sticky bits, odd owners, user.*/trusted.* xattrs
# (binary, empty, ~4 KiB, several per file), file capabilities, empty files,
# files around the 1 MiB chunk size, a 5 GiB sparse file, odd names (spaces,
# newlines, UTF-8, invalid UTF-8, 255 bytes), 10,000 entries in one directory,
# 60-deep nesting, odd mtimes (ns, 1969, 1970, 2100, 2400) and odd modes.
#
# Content and metadata are deterministic except ctimes and inode numbers.
# --busybox FILE copies FILE (a static busybox) to base:/bin/busybox with
# applet symlinks sh, cat, echo, ls.
#
# Must run as root (mknod, chown, trusted.* xattrs, setcap). STORE must not
# exist or be empty. Prints the layer cache-ids (base first) on stdout, one per
# line, and writes them to STORE/.layers (not part of the docker layout; used
# by the tests, and outside image/ and overlay2/ so it is not compared).
set -euo pipefail

usage() { echo "usage: $0 STORE [--busybox FILE]" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
STORE=$1; shift
BUSYBOX=
while [[ $# -gt 0 ]]; do
  case $1 in
    --busybox) BUSYBOX=${2:?--busybox needs a file}; shift 2 ;;
    *) usage ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "$0: must run as root" >&2; exit 1; }
command -v setcap >/dev/null || { echo "$0: setcap missing (apt-get install libcap2-bin)" >&2; exit 1; }
mkdir -p "$STORE"
if [[ -n $(ls -A "$STORE") ]]; then echo "$0: $STORE is not empty" >&2; exit 1; fi

exec python3 - "$STORE" "$BUSYBOX" <<'PY'
import hashlib, base64, json, os, random, shutil, stat, subprocess, sys, time

STORE = os.path.abspath(sys.argv[1])
BUSYBOX = sys.argv[2]
MiB = 1 << 20
GiB = 1 << 30
T_DEFAULT = 1700000000_123456789          # every entry without an odd mtime gets this
rng = random.Random(20240517)

def cache_id(name):
    return hashlib.sha256(b"extrafs-odd-store:" + name.encode()).hexdigest()

def link_id(cid):
    # docker: 26 chars of base32 of random bytes; here derived from the cache-id
    return base64.b32encode(hashlib.sha256(cid.encode()).digest()).decode()[:26]

LAYERS = ["base", "mid", "top"]
CIDS = {n: cache_id(n) for n in LAYERS}
LINKS = {n: link_id(CIDS[n]) for n in LAYERS}

times = {}   # absolute path -> mtime ns (odd ones); applied last, bottom-up

class Layer:
    def __init__(self, name):
        self.name = name
        self.root = os.path.join(STORE, "overlay2", CIDS[name], "diff")
        os.makedirs(self.root)
    def p(self, rel):
        return os.path.join(self.root, rel) if isinstance(rel, str) else os.path.join(os.fsencode(self.root), rel)
    def dir(self, rel, mode=0o755, uid=0, gid=0):
        path = self.p(rel)
        os.makedirs(path, exist_ok=True)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return path
    def parent(self, rel):
        d = os.path.dirname(rel)
        if d and not os.path.isdir(self.p(d)):
            os.makedirs(self.p(d))
    def file(self, rel, data=b"", mode=0o644, uid=0, gid=0):
        self.parent(rel)
        path = self.p(rel)
        with open(path, "wb") as f:
            f.write(data)
        os.chown(path, uid, gid)       # chown before chmod: chown clears setuid/setgid
        os.chmod(path, mode)
        return path
    def symlink(self, rel, target, uid=0, gid=0):
        self.parent(rel)
        path = self.p(rel)
        os.symlink(target, path)
        os.lchown(path, uid, gid)
        return path
    def node(self, rel, kind, major=0, minor=0, mode=0o644, uid=0, gid=0):
        self.parent(rel)
        path = self.p(rel)
        os.mknod(path, kind | mode, os.makedev(major, minor))
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return path
    def whiteout(self, rel):
        return self.node(rel, stat.S_IFCHR, 0, 0, mode=0o000)
    def opaque(self, rel, mode=0o755):
        path = self.dir(rel, mode)
        os.setxattr(path, "trusted.overlay.opaque", b"y")
        return path
    def hardlink(self, src, dst):
        self.parent(dst)
        os.link(self.p(src), self.p(dst), follow_symlinks=False)

def rand(n):
    return rng.randbytes(n)

t0 = time.monotonic()
os.makedirs(os.path.join(STORE, "overlay2", "l"))

# ----------------------------------------------------------------- base layer
L = Layer("base")
os.chmod(L.root, 0o755)
L.dir("bin"); L.dir("etc"); L.dir("data")
if BUSYBOX:
    shutil.copyfile(BUSYBOX, L.p("bin/busybox"))
    os.chmod(L.p("bin/busybox"), 0o755)
    for applet in ("sh", "cat", "echo", "ls"):
        L.symlink("bin/" + applet, "busybox")
L.file("etc/greeting", b"hello from the base layer\n")
L.file("etc/overridden", b"base\n")
L.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")

# chunk boundaries (chunk size 1 MiB)
L.file("data/empty")
L.file("data/one_byte", b"x")
for name, size in [("chunk_minus1", MiB - 1), ("chunk_exact", MiB), ("chunk_plus1", MiB + 1),
                   ("chunk_x2", 2 * MiB), ("chunk_x3_plus7", 3 * MiB + 7)]:
    L.file("data/" + name, rand(size))
with open(L.p("data/chunk_exact"), "rb") as f:
    L.file("data/dup_of_chunk_exact", f.read())   # identical content, separate inode

# sparse files
def sparse(rel, size, writes):
    path = L.file(rel)
    with open(path, "r+b") as f:
        f.truncate(size)
        for off, n in writes:
            f.seek(off)
            f.write(rand(n))
    return path
sparse("data/sparse_5g", 5 * GiB, [
    (0, 65536),                              # start
    (3 * GiB // 2 - 1000, 8192),             # crosses the chunk boundary at 1.5 GiB
    (4 * GiB - 2048, 4096),                  # crosses 2^32
    (int(4.2 * GiB) // 4096 * 4096, 4096),   # 4.2 GiB
    (5 * GiB - 4097, 4097),                  # the very end
])
sparse("data/sparse_middle_only", 3 * MiB + 5, [(MiB + 100, 5000)])
sparse("data/sparse_all_hole", 10 * MiB, [])

# hard links
L.file("links/a/target", b"hard-linked pair\n", mode=0o640, uid=12345, gid=12345)
L.hardlink("links/a/target", "links/b/target_link")
L.file("links/g1/one", b"three-link group\n", mode=0o600)
os.setxattr(L.p("links/g1/one"), "user.group", b"three")
L.hardlink("links/g1/one", "links/g2/two")
L.hardlink("links/g1/one", "links/g3/sub/three")
L.file("links/empty_a")
L.hardlink("links/empty_a", "links/other/empty_b")
L.node("links/fifo_a", stat.S_IFIFO, mode=0o640)
L.hardlink("links/fifo_a", "links/other/fifo_b")
L.symlink("links/sym_a", "a/target")
L.hardlink("links/sym_a", "links/other/sym_b")      # hard link to a symlink
L.file("links/big_a", rand(MiB + 3))
L.hardlink("links/big_a", "links/other/big_b")

# symlinks
L.symlink("symlinks/rel", "../etc/greeting")
L.symlink("symlinks/abs", "/etc/greeting")
L.symlink("symlinks/dangling", "does/not/exist")
L.symlink("symlinks/dangling_abs", "/nonexistent/path")
L.symlink("symlinks/loop1", "loop2")
L.symlink("symlinks/loop2", "loop1")
L.symlink("symlinks/self", "self")
L.symlink("symlinks/dirlink", "../data")
L.symlink("symlinks/dotdot", "..")
L.symlink("symlinks/dot", ".")
L.symlink("symlinks/long", "a/" * 2047 + "a")        # 4095 bytes, PATH_MAX - 1
L.symlink("symlinks/utf8", "日本語/ファイル")
L.symlink("symlinks/newline", "a\nb")
L.symlink("symlinks/spacey", "with space ")
L.symlink("symlinks/owned", "target", uid=12345, gid=65534)

# special files
L.node("specials/fifo", stat.S_IFIFO, mode=0o644)
L.node("specials/chr_4_64", stat.S_IFCHR, 4, 64, mode=0o620, gid=5)
L.node("specials/chr_1_3", stat.S_IFCHR, 1, 3, mode=0o666)
L.node("specials/chr_max", stat.S_IFCHR, 4095, 1048575, mode=0o600)
L.node("specials/chr_0_5", stat.S_IFCHR, 0, 5, mode=0o600)          # major 0 but not a whiteout
L.node("specials/blk_8_1", stat.S_IFBLK, 8, 1, mode=0o660, gid=6)
L.node("specials/blk_259_65536", stat.S_IFBLK, 259, 65536, mode=0o640)
L.node("specials/sock", stat.S_IFSOCK, mode=0o755)
os.setxattr(L.p("specials/chr_4_64"), "trusted.note", b"a device with an xattr")

# permission bits
L.dir("perms")
L.file("perms/setuid", b"#!/bin/sh\n", mode=0o4755)
L.file("perms/setgid", b"#!/bin/sh\n", mode=0o2755, gid=50)
L.file("perms/setuidgid", b"#!/bin/sh\n", mode=0o6755, uid=12345, gid=12345)
L.file("perms/sticky_file", b"", mode=0o1644)
L.file("perms/all_bits", b"x", mode=0o7777)
L.file("perms/mode0000", b"nobody may read this\n", mode=0o000)
L.file("perms/mode0777", b"", mode=0o777)
L.dir("perms/dir_setgid", mode=0o2775, gid=50)
L.dir("perms/dir_sticky", mode=0o1777)
L.file("perms/dir_sticky/inside", b"in a sticky dir\n", uid=65534, gid=65534)
L.dir("perms/dir_0700", mode=0o700)
L.file("perms/dir_0700/inside", b"private\n")
L.dir("perms/dir_0555", mode=0o555)
L.file("perms/dir_0000/inside", b"behind a 0000 dir\n")
os.chmod(L.p("perms/dir_0000"), 0o000)
os.chmod(L.p("perms/dir_0555"), 0o555)

# owners
try:
    L.file("owners/u_4294967294", b"uid (uid_t)-2\n", uid=4294967294, gid=4294967294)
except OSError as e:
    print("make_odd_store: uid 4294967294 not allowed here (%s), skipped" % e, file=sys.stderr)
L.file("owners/u12345", b"", uid=12345, gid=12345)
L.file("owners/nobody", b"", uid=65534, gid=65534)
L.file("owners/root_g12345", b"", uid=0, gid=12345)
L.file("owners/u12345_groot", b"", uid=12345, gid=0)
L.node("owners/fifo_nobody", stat.S_IFIFO, mode=0o600, uid=65534, gid=65534)
L.dir("owners/dir12345", mode=0o750, uid=12345, gid=12345)
L.file("owners/dir12345/nobody_inside", b"", uid=65534, gid=65534)
os.chown(L.p("owners"), 0, 0)

# xattrs and capabilities
L.file("xattrs/binary", b"binary xattrs\n")
os.setxattr(L.p("xattrs/binary"), "user.bin", bytes(range(256)))
os.setxattr(L.p("xattrs/binary"), "user.nul", b"\x00\x01\x00\xff")
L.file("xattrs/long", b"long xattr\n")
for n in (4000, 3000, 2000):
    try:
        os.setxattr(L.p("xattrs/long"), "user.long", rand(n))
        break
    except OSError:
        continue
L.file("xattrs/several", b"several xattrs\n")
for i, k in enumerate("abcde"):
    os.setxattr(L.p("xattrs/several"), "user." + k, ("value-%d" % i).encode() * (i + 1))
os.setxattr(L.p("xattrs/several"), "user.empty", b"")
os.setxattr(L.p("xattrs/several"), "trusted.t1", b"trusted value")
os.setxattr(L.p("xattrs/several"), "user.utf8", "ünïcödé ✓".encode())
L.dir("xattrs/xdir")
os.setxattr(L.p("xattrs/xdir"), "user.dirattr", b"on a directory")
L.symlink("xattrs/symlink", "binary")
os.setxattr(L.p("xattrs/symlink"), "trusted.linkattr", b"on a symlink", follow_symlinks=False)
L.file("xattrs/cap_net_raw", b"\x7fELF-ish but not really\n", mode=0o755)
subprocess.run(["setcap", "cap_net_raw+ep", L.p("xattrs/cap_net_raw")], check=True)
L.file("xattrs/cap_multi", b"more caps\n", mode=0o750, gid=12345)
subprocess.run(["setcap", "cap_net_admin,cap_sys_ptrace+eip", L.p("xattrs/cap_multi")], check=True)
os.setxattr(L.p("xattrs/cap_multi"), "user.also", b"and a user xattr")

# names
nd = os.fsencode(L.p("names"))
os.makedirs(nd)
odd_names = [b"with space", b" leading space", b"trailing space ", b"new\nline", b"\nstarts-with-newline",
             b"tab\tname", "utf8-é-日本語-🙂".encode(), b"\xff\xfe-not-utf8", b"a" * 255,
             ("é" * 127 + "x").encode(),   # 255 bytes of UTF-8
             b"-dash", b"...", b".hidden", b"back\\slash", b"quote\"'", b"glob*?[]",
             b"colon:comma,eq=", b"\x01control\x7f"]
assert len(b"a" * 255) == 255 and len(("é" * 127 + "x").encode()) == 255
for i, n in enumerate(odd_names):
    p = nd + b"/" + n
    with open(p, "wb") as f:
        f.write(b"name %d\n" % i)
os.makedirs(nd + b"/dir with spaces/and\nnewline")
with open(nd + b"/dir with spaces/and\nnewline/" + b"z" * 255, "wb") as f:
    f.write(b"deep odd name\n")

# a directory with 10,000 entries
bd = L.p("bigdir")
os.makedirs(bd)
for i in range(10000):
    with open(os.path.join(bd, "f%05d" % i), "wb") as f:
        if i % 1000 == 0:
            f.write(b"entry %d\n" % i)

# 60-deep nesting
deep = L.p("deep")
for i in range(1, 61):
    deep = os.path.join(deep, "d%02d" % i)
os.makedirs(deep)
with open(os.path.join(deep, "bottom.txt"), "wb") as f:
    f.write(b"60 levels down\n")

# odd mtimes
L.file("times/ns", b"ns")
times[L.p("times/ns")] = 1234567890_123456789
L.file("times/epoch0", b"1970")
times[L.p("times/epoch0")] = 0
L.file("times/pre1970", b"1969")
times[L.p("times/pre1970")] = -1_250_000_000
L.file("times/y2100", b"2100")
times[L.p("times/y2100")] = 4102444800_500000000
L.file("times/y2400", b"2400")
times[L.p("times/y2400")] = 13569465600_000000001
L.symlink("times/link_ns", "ns")
times[L.p("times/link_ns")] = 1111111111_111111111
L.dir("times/dir_ns")
L.file("times/dir_ns/inner", b"")
times[L.p("times/dir_ns")] = 999999999_999999999
times[L.p("times")] = 1500000000_000000001

# things the upper layers hide / replace
L.file("wh_targets/file1", b"base file1, whited out in mid\n")
L.file("wh_targets/file2", b"base file2, whited out in top\n")
L.file("wh_targets/dir1/x", b"x\n")
L.file("wh_targets/dir1/y", b"y\n")
L.symlink("wh_targets/link1", "file1")
L.file("wh_targets/keep", b"base keep, stays visible\n")
L.file("wh_targets/hl_keep", b"hard-linked, one name whited out\n")
L.hardlink("wh_targets/hl_keep", "wh_targets/hl_hidden")
L.file("opq/a", b"base opq/a, hidden by opaque opq in mid\n")
L.file("opq/b", b"base opq/b\n")
L.file("opq/sub/c", b"base opq/sub/c\n")
L.file("opq2/deep/old", b"base opq2/deep/old, hidden by opaque opq2/deep in top\n")
L.file("opq2/base_only", b"base opq2/base_only, stays visible\n")
L.file("typechange", b"a file in base, a directory in mid\n")
L.file("typechange_dir/inner", b"a directory in base, a file in mid\n")

# ------------------------------------------------------------------ mid layer
M = Layer("mid")
os.chmod(M.root, 0o755)
M.dir("etc"); M.file("etc/overridden", b"mid\n")
M.dir("wh_targets")
M.whiteout("wh_targets/file1")
M.whiteout("wh_targets/dir1")
M.whiteout("wh_targets/link1")
M.whiteout("wh_targets/hl_hidden")
M.file("wh_targets/newfile", b"added in mid, whited out in top\n")
M.opaque("opq")
M.file("opq/new", b"mid opq/new\n")
M.dir("typechange")
M.file("typechange/inner", b"mid typechange/inner\n")
M.file("typechange_dir", b"a file in mid\n")
M.whiteout("orphan_whiteout")                          # hides nothing
M.node("mid_odd/fifo", stat.S_IFIFO, mode=0o600)
M.node("mid_odd/chr_10_200", stat.S_IFCHR, 10, 200, mode=0o640, uid=12345)
M.file("mid_odd/pair_a", b"mid pair\n", mode=0o4750, gid=12345)
M.hardlink("mid_odd/pair_a", "mid_odd/sub/pair_b")
M.file("mid_odd/xattrs", b"x\n")
os.setxattr(M.p("mid_odd/xattrs"), "user.mid", bytes(range(255, -1, -1)))
M.file("mid_odd/chunk_plus1", rand(MiB + 1))
path = M.file("mid_odd/sparse")
with open(path, "r+b") as f:
    f.truncate(3 * MiB)
    f.seek(2 * MiB - 10)
    f.write(rand(20))
M.file("mid_odd/" + "m" * 255, b"long name in mid\n")
M.dir("mid_odd/dir_1777", mode=0o1777)

# ------------------------------------------------------------------ top layer
T = Layer("top")
os.chmod(T.root, 0o755)
T.dir("etc"); T.file("etc/overridden", b"top\n")
T.dir("wh_targets")
T.file("wh_targets/file1", b"reborn in top\n")         # over mid's whiteout
T.whiteout("wh_targets/file2")                          # hides a base file through mid
T.whiteout("wh_targets/newfile")                        # hides mid's file
T.dir("opq2")
T.opaque("opq2/deep")
T.file("opq2/deep/top_file", b"top opq2/deep/top_file\n")
T.file("opq2/extra", b"top opq2/extra\n")
T.dir("data")
T.whiteout("data/one_byte")
T.file("top_odd/setgid_dir/file", b"top\n")
os.chown(T.p("top_odd/setgid_dir"), 0, 12345)
os.chmod(T.p("top_odd/setgid_dir"), 0o2770)
T.file("top_odd/utf8-ファイル", b"top utf8\n", uid=65534)

# ------------------------------------------------- link, lower, l/ symlinks
chain = []
for name in LAYERS:
    base = os.path.join(STORE, "overlay2", CIDS[name])
    with open(os.path.join(base, "link"), "w") as f:
        f.write(LINKS[name])
    if chain:
        with open(os.path.join(base, "lower"), "w") as f:
            f.write(":".join("l/" + LINKS[n] for n in reversed(chain)))
    os.symlink("../%s/diff" % CIDS[name], os.path.join(STORE, "overlay2", "l", LINKS[name]))
    chain.append(name)

# ----------------------------------------------------------- image metadata
img = os.path.join(STORE, "image", "overlay2")
diff_ids = ["sha256:" + hashlib.sha256(b"diffid:" + n.encode()).hexdigest() for n in LAYERS]
config = {"architecture": "amd64", "os": "linux",
          "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
          "rootfs": {"type": "layers", "diff_ids": diff_ids}}
config_bytes = json.dumps(config, sort_keys=True).encode()
image_id = hashlib.sha256(config_bytes).hexdigest()
os.makedirs(os.path.join(img, "imagedb", "content", "sha256"))
os.makedirs(os.path.join(img, "imagedb", "metadata", "sha256"))
os.makedirs(os.path.join(img, "distribution"))
with open(os.path.join(img, "imagedb", "content", "sha256", image_id), "wb") as f:
    f.write(config_bytes)
with open(os.path.join(img, "repositories.json"), "w") as f:
    json.dump({"Repositories": {"odd": {"odd:latest": "sha256:" + image_id}}}, f)
chain_id = None
parent = None
for n, did in zip(LAYERS, diff_ids):
    chain_id = did if chain_id is None else "sha256:" + hashlib.sha256(
        (chain_id + " " + did).encode()).hexdigest()
    d = os.path.join(img, "layerdb", "sha256", chain_id.split(":")[1])
    os.makedirs(d)
    for fname, val in (("diff", did), ("cache-id", CIDS[n]), ("size", "1234")):
        with open(os.path.join(d, fname), "w") as f:
            f.write(val)
    if parent:
        with open(os.path.join(d, "parent"), "w") as f:
            f.write(parent)
    parent = chain_id

# ------------------------------------------------------ mtimes, bottom-up
for top in (os.path.join(STORE, "overlay2"), os.path.join(STORE, "image")):
    for dirpath, dirnames, filenames in os.walk(os.fsencode(top), topdown=False):
        for n in filenames + dirnames:
            p = os.path.join(dirpath, n)
            ns = times.get(os.fsdecode(p), T_DEFAULT)
            os.utime(p, ns=(ns, ns), follow_symlinks=False)
        ns = times.get(os.fsdecode(dirpath), T_DEFAULT)
        os.utime(dirpath, ns=(ns, ns), follow_symlinks=False)

with open(os.path.join(STORE, ".layers"), "w") as f:
    f.write("".join(CIDS[n] + "\n" for n in LAYERS))
for n in LAYERS:
    print(CIDS[n])
print("make_odd_store: built %s (layers %s) in %.1f s" % (
    STORE, " <- ".join("%s=%s..(%s)" % (n, CIDS[n][:12], LINKS[n]) for n in LAYERS),
    time.monotonic() - t0), file=sys.stderr)
PY
