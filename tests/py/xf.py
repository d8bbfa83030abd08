"""Helpers for extrafs's pytest integration tests: running commands with bounds, real mounts,
a private nfs-ganesha and private dockerds. Fixtures that hand these out are in conftest.py.

Every wait is bounded; every process or mount a helper starts is registered with the object
that started it and undone by its close() (the fixtures call it at teardown, even after a
failure). Nothing here kills or unmounts what it did not start.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent  # tests/
GANESHA_SH = TESTS / "nfs" / "ganesha.sh"
DOCKERD_SH = TESTS / "docker" / "dockerd.sh"
MAKE_ODD_STORE = TESTS / "integration" / "make_odd_store.sh"
COMPARE_TREES = TESTS / "integration" / "compare_trees.py"
MAKE_SAVE_ARCHIVE = TESTS / "integration" / "make_save_archive.py"


# ---------------------------------------------------------------------------------------------
# Commands


def run(cmd, *, timeout=120, check=True, env=None, input=None, cwd=None) -> subprocess.CompletedProcess:
    """Runs cmd (a list), output captured as text (undecodable bytes escaped). Raises
    AssertionError naming the command and its stderr if check and it exits non-zero, or if it
    runs longer than timeout seconds (killed; a hang is a failure, never a wait)."""
    cmd = [str(c) for c in cmd]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update({k: str(v) for k, v in env.items()})
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, errors="backslashreplace",
                           timeout=timeout, env=full_env, input=input, cwd=cwd,
                           stdin=None if input is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"hung: {' '.join(cmd)} still running after {timeout} s; "
                             f"stderr so far: {(e.stderr or b'')[:2000]!r}") from None
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {p.returncode}\nstdout: {p.stdout[:3000]}\n"
                             f"stderr: {p.stderr[:3000]}")
    return p


def expect_fail(cmd, code: int, *needles: str, timeout=20, env=None, no_stdout=False) -> str:
    """Runs cmd and checks the project's error contract: exit status `code` (1 runtime, 2 usage),
    never a hang or a signal, exactly one line on stderr, which contains one of `needles` (if
    any are given), and with no_stdout nothing on stdout. Returns that line."""
    p = run(cmd, timeout=timeout, check=False, env=env)
    where = f"{' '.join(str(c) for c in cmd)}"
    assert p.returncode >= 0, f"{where}: killed by signal {-p.returncode}; stderr: {p.stderr[:2000]}"
    assert p.returncode == code, f"{where}: exit {p.returncode}, expected {code}; stderr: {p.stderr[:2000]}"
    assert not (no_stdout and p.stdout), f"{where}: wrote to stdout: {p.stdout[:2000]!r}"
    lines = p.stderr.rstrip("\n").split("\n") if p.stderr.strip() else []
    assert len(lines) == 1, f"{where}: {len(lines)} lines on stderr, expected 1: {p.stderr[:2000]!r}"
    if needles:
        assert any(n in lines[0] for n in needles), f"{where}: stderr {lines[0]!r} names none of {needles}"
    return lines[0]


def wait_until(pred, timeout: float, what: str, interval: float = 0.05):
    """Polls pred() until it returns a true value (returned) or timeout seconds pass
    (AssertionError naming `what`)."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def d_state_tasks(pid: int) -> list[int]:
    """The task ids of pid that are in state D (uninterruptible sleep) now."""
    out = []
    for t in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (t / "stat").read_text().rsplit(")", 1)[1].split()[0] == "D":
                out.append(int(t.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            pass
    return out


def read_file_errno(path, timeout: float = 30) -> str:
    """Reads path whole in a child process killed after timeout: "OK", "TIMEOUT" or the errno
    name (EIO, ...). A reader the kernel keeps in state D past the timeout reads as TIMEOUT."""
    code = ("import errno,sys\n"
            "try:\n"
            "  f=open(sys.argv[1],'rb',buffering=0)\n"
            "  while f.read(1<<20): pass\n"
            "  print('OK')\n"
            "except OSError as e:\n"
            "  print(errno.errorcode.get(e.errno,str(e.errno)))\n")
    p = subprocess.Popen(["/usr/bin/python3", "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        try:
            p.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        return "TIMEOUT"
    return out.strip().splitlines()[-1] if out.strip() else f"exit {p.returncode}"


# ---------------------------------------------------------------------------------------------
# Mounts


def mountpoints() -> set[str]:
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mp))
    return out


def is_mounted(path) -> bool:
    return os.path.realpath(str(path)) in mountpoints()


def unmount_under(root):
    """Lazily unmounts every mount at or below root (deepest first). For cleanup only."""
    root = os.path.realpath(str(root)).rstrip("/")
    for _ in range(5):
        left = sorted((m for m in mountpoints() if m == root or m.startswith(root + "/")),
                      key=len, reverse=True)
        if not left:
            return
        for m in left:
            subprocess.run(["umount", "-l", "--", m], capture_output=True, timeout=30)


def thread_stacks(pid: int) -> str:
    """Every thread of process pid: its name, state, kernel wait channel and kernel stack, and the
    user-space backtraces from gdb (scripts/setup installs it). For the report of a hung daemon,
    before it is killed; never raises."""
    out = []
    try:
        for t in sorted(Path(f"/proc/{pid}/task").iterdir(), key=lambda p: int(p.name)):
            def read(name):
                try:
                    return (t / name).read_text().strip()
                except OSError as e:
                    return f"({e.strerror})"
            state = next((line for line in read("status").splitlines() if line.startswith("State:")), "")
            out.append(f"thread {t.name} {read('comm')} {state} wchan={read('wchan')}")
            out.extend("    " + line for line in read("stack").splitlines())
    except OSError as e:
        out.append(f"/proc/{pid}/task: {e.strerror}")
    if shutil.which("gdb"):
        try:
            p = subprocess.run(["gdb", "-p", str(pid), "-batch", "-nx", "-ex", "thread apply all bt"],
                               capture_output=True, text=True, timeout=60)
            out.append(p.stdout[-60000:])
        except subprocess.TimeoutExpired:
            out.append("gdb: no backtrace within 60 s")
    return "\n".join(out)


def daemon_pids(mnt) -> list[int]:
    """Pids of extrafs processes whose command line names mnt."""
    mnt = str(mnt)
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            exe = os.readlink(p / "exe").removesuffix(" (deleted)")
            if not os.path.basename(exe).startswith("extrafs"):
                continue
            args = (p / "cmdline").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if mnt.encode() in args:
            out.append(int(p.name))
    return out


@dataclass
class Mount:
    """One `extrafs mount` of `source` on `path` (background mode), with its own cache."""
    extrafs: Path
    source: str
    path: Path
    cache: Path
    options: str
    pid: int = 0

    def stats(self) -> dict:
        return json.loads(run([self.extrafs, "stats", self.path, "--json"], timeout=30).stdout)

    def unmount(self, timeout: float = 30):
        """`extrafs unmount`; checks the mount is gone and the daemon exited. If either hangs,
        the daemon's threads are printed (thread_stacks) before the failure."""
        try:
            run([self.extrafs, "unmount", self.path], timeout=timeout)
            assert not is_mounted(self.path), f"{self.path} still mounted after extrafs unmount"
            if self.pid:
                wait_until(lambda: not process_alive(self.pid), 10, f"daemon {self.pid} to exit")
        except AssertionError:
            if self.pid and process_alive(self.pid):
                print(f"daemon {self.pid}, still running:\n{thread_stacks(self.pid)}")
            raise


class Mounts:
    """Makes mounts for a test and undoes them all at close()."""

    def __init__(self, extrafs: Path, tmp: Path):
        self.extrafs = extrafs
        self.tmp = tmp
        self.made: list[Mount] = []

    def __call__(self, source, path=None, *, cache=None, options: str = "", cache_size="512M",
                 log_level="warn", timeout=60, env=None) -> Mount:
        """env: variables added to the environment of `extrafs mount` (and so of its daemon)."""
        n = len(self.made)
        path = Path(path) if path else self.tmp / f"mnt{n}"
        cache = Path(cache) if cache else self.tmp / f"cache{n}"
        path.mkdir(parents=True, exist_ok=True)
        opts = ",".join(o for o in (f"cache={cache}", f"cache_size={cache_size}",
                                    f"log_level={log_level}", options) if o)
        m = Mount(self.extrafs, str(source), path, cache, opts)
        self.made.append(m)
        run([self.extrafs, "mount", source, path, "-o", opts], timeout=timeout, env=env)
        assert is_mounted(path), f"extrafs mount {source} {path} returned 0 but nothing is mounted"
        assert (path / "overlay2").is_dir(), f"{path} does not serve overlay2/ right after mount"
        pids = daemon_pids(path)
        m.pid = pids[0] if pids else 0
        return m

    def close(self):
        for m in reversed(self.made):
            if is_mounted(m.path):
                subprocess.run([str(self.extrafs), "unmount", str(m.path)], capture_output=True, timeout=60)
            if is_mounted(m.path):
                subprocess.run(["umount", "-l", "--", str(m.path)], capture_output=True, timeout=30)
            if m.pid and process_alive(m.pid):
                os.kill(m.pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# Stores


@dataclass
class Store:
    path: Path
    cids: list[str] = field(default_factory=list)  # base, mid, top for the odd store


def make_odd_store(extrafs: Path, path: Path, busybox: str | None = None, template: Path | None = None) -> Store:
    """tests/integration/make_odd_store.sh into path, then `extrafs index` it. With template (a
    store make_odd_store.sh built, not indexed, with the same busybox), path is an exact copy of
    it instead (`cp -a`: types, modes, owners, xattrs, capabilities, hard links, holes and mtimes;
    only inode numbers, ctimes and the blocks under a hole differ, as between two runs of the
    script), then indexed: the same store in ~1 s instead of ~6 s."""
    if template is None:
        cmd = [MAKE_ODD_STORE, path] + (["--busybox", busybox] if busybox else [])
        run(cmd, timeout=600)
    else:
        assert not (template / "extrafs").exists(), f"{template} is indexed; a template must not be"
        run(["cp", "-a", "--", template, path], timeout=600)
    run([extrafs, "index", path], timeout=600)
    return Store(path, (path / ".layers").read_text().split())


# ---------------------------------------------------------------------------------------------
# Small real images (busybox-static) as `docker save` archives, and what a store or mount says
# about them


def pseudo_random(n: int, seed: int | str) -> bytes:
    """n bytes that do not compress (so a blob stores them as they are), the same for a seed."""
    import random
    return random.Random(seed).randbytes(n)


@dataclass
class SavedImages:
    layers: dict[str, Path]         # layer name -> its source tree
    images: dict[str, list[str]]    # tag -> its layers' names, base first
    archives: dict[str, Path]       # tag -> `docker save` archive of that one image

    def sources(self, tag: str) -> list[Path]:
        return [self.layers[n] for n in self.images[tag]]


def make_images(dir: Path, layers: dict[str, dict[str, bytes]], images: dict[str, list[str]]) -> SavedImages:
    """Layer trees under dir/layers/<name> from {name: {relpath: content}} (the content b"@busybox"
    copies /bin/busybox, which must be busybox-static; a str content makes a symlink), and one
    archive per tag (tests/integration/make_save_archive.py) of the layers named, base first."""
    out = SavedImages({}, dict(images), {})
    for name, files in layers.items():
        root = dir / "layers" / name
        for rel, content in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, str):
                p.symlink_to(content)
            elif content == b"@busybox":
                shutil.copyfile("/bin/busybox", p)
                p.chmod(0o755)
            else:
                p.write_bytes(content)
        out.layers[name] = root
    for tag, names in images.items():
        archive = dir / (tag.replace(":", "_").replace("/", "_") + ".tar")
        run(["/usr/bin/python3", MAKE_SAVE_ARCHIVE, archive, tag, *[out.layers[n] for n in names]], timeout=120)
        out.archives[tag] = archive
    return out


def three_images(dir: Path) -> SavedImages:
    """a:1 (a busybox-static base), b:1 (base + 1 MiB of its own), c:1 (base + 3 MiB of its own):
    one layer shared by all three, one only b:1 has, one only c:1 has."""
    return make_images(dir, {
        "base": {"bin/busybox": b"@busybox", "bin/sh": "busybox", "etc/base-marker": b"base\n"},
        "b": {"b/data": pseudo_random(1 << 20, 2), "b/marker": b"b:1\n"},
        "c": {"c/data": pseudo_random(3 << 20, 3), "c/marker": b"c:1\n"},
    }, {"a:1": ["base"], "b:1": ["base", "b"], "c:1": ["base", "c"]})


def layer_chain(root, image_id: str) -> list[tuple[str, str]]:
    """(chain id hex, cache-id) of each layer of the image `image_id` ("sha256:..."), base first,
    from ROOT/image/overlay2 (a data-root, a store or a mount)."""
    import hashlib
    meta = Path(root) / "image" / "overlay2"
    cfg = json.loads((meta / "imagedb" / "content" / "sha256" / image_id.split(":")[-1]).read_bytes())
    chain, out = None, []
    for d in cfg["rootfs"]["diff_ids"]:
        chain = d if chain is None else "sha256:" + hashlib.sha256(f"{chain} {d}".encode()).hexdigest()
        out.append((chain[7:], (meta / "layerdb" / "sha256" / chain[7:] / "cache-id").read_text().strip()))
    return out


def image_layer_ids(root, tag: str) -> list[str]:
    """The cache-ids of the layers of `tag` (base first), from ROOT/image/overlay2 (a store, a
    mount or a data-root)."""
    repos = json.loads((Path(root) / "image" / "overlay2" / "repositories.json").read_text())["Repositories"]
    return [cache_id for _, cache_id in layer_chain(root, repos[tag.rsplit(":", 1)[0]][tag])]


def check_layer_served(mnt, cache_id: str, src: Path):
    """Every file, symlink and directory of the source tree `src` is served under
    MNT/overlay2/<cache_id>/diff with the same bytes (read through the mount, no EIO) and target."""
    served = Path(mnt) / "overlay2" / cache_id / "diff"
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        q = served / rel
        if p.is_symlink():
            assert os.readlink(q) == os.readlink(p), f"{q}: symlink target differs"
        elif p.is_dir():
            assert q.is_dir(), f"{q} is not a directory"
        else:
            assert read_file_errno(q) == "OK", f"reading {q}: {read_file_errno(q)}"
            assert q.read_bytes() == p.read_bytes(), f"{q} differs from {p}"


def tree_state(root) -> dict[str, tuple]:
    """Every entry under root (not following symlinks): type and mode, size, mtime, inode, and the
    SHA-256 of regular files or the target of symlinks; to show that nothing changed."""
    import hashlib
    out = {}
    root = Path(root)
    for dp, dns, fns in os.walk(root):
        for n in dns + fns:
            p = Path(dp) / n
            st = p.lstat()
            extra = ""
            if p.is_symlink():
                extra = os.readlink(p)
            elif p.is_file():
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size if not p.is_dir() else 0, st.st_mtime_ns,
                                             st.st_ino, extra)
    return out


# ---------------------------------------------------------------------------------------------
# nfs-ganesha


class Ganesha:
    """A private nfs-ganesha on 127.0.0.1 exporting one directory (tests/nfs/ganesha.sh)."""

    def __init__(self, state: Path, export: Path, protocols: str = "4", access: str = "RO"):
        self.state, self.export, self.protocols, self.access = state, Path(export), protocols, access
        self.port = 0
        self.url4 = self.url3 = ""
        self.pid = 0

    def _env(self):
        return {"GANESHA_PROTOCOLS": self.protocols, "GANESHA_ACCESS": self.access,
                "GANESHA_MNT_PORT": str(self.port + 1)}

    def start(self):
        """Starts on a free random port pair (the same port again after a stop)."""
        self.state.mkdir(parents=True, exist_ok=True)
        import random
        last = ""
        for _ in range(20):
            if not self.port:
                self.port = 31000 + random.randrange(8000) * 2
            p = run([GANESHA_SH, "start", self.state, self.export, self.port], timeout=60, check=False,
                    env=self._env())
            if p.returncode == 0:
                kv = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
                self.url4, self.url3 = kv.get("NFS4_URL", ""), kv.get("NFS3_URL", "")
                self.pid = int(kv.get("PID", "0"))
                return self
            last = p.stderr
            if p.returncode != 3:  # 3: port in use
                raise AssertionError(f"ganesha.sh start failed ({p.returncode}): {p.stderr[-2000:]}")
            if self.url4:  # a restart on our own port: it is still being released
                time.sleep(0.5)
            else:
                self.port = 0
        raise AssertionError(f"nfs-ganesha did not start: {last[-2000:]}")

    def stop(self):
        run([GANESHA_SH, "stop", self.state], timeout=60, check=False)

    def pause(self):
        run([GANESHA_SH, "pause", self.state], timeout=30)

    def resume(self):
        run([GANESHA_SH, "resume", self.state], timeout=30)

    def close(self):
        subprocess.run([str(GANESHA_SH), "resume", str(self.state)], capture_output=True, timeout=30)
        self.stop()


# ---------------------------------------------------------------------------------------------
# dockerd


class Dockerd:
    """A private dockerd (with its own containerd, exec-root and socket) on data_root
    (tests/docker/dockerd.sh). `state` must be short (unix socket paths)."""

    def __init__(self, state: Path, data_root: Path, live_restore: bool = True, extra_args: str = "",
                 cwd: Path | None = None):
        self.state, self.data_root = Path(state), Path(data_root)
        self.extra = ("--live-restore " if live_restore else "") + extra_args
        self.cwd = cwd  # the working directory dockerd is started in (default: the test's)
        self.host = ""
        self.pid = 0

    @property
    def log(self) -> Path:
        """The file dockerd's stdout and stderr are appended to."""
        return self.state / "dockerd.log"

    def start(self):
        p = run([DOCKERD_SH, "start", self.state.resolve(), self.data_root.resolve()], timeout=90,
                env={"DOCKERD_EXTRA_ARGS": self.extra}, cwd=self.cwd)
        kv = dict(line.split("=", 1) for line in p.stdout.splitlines() if "=" in line)
        self.host, self.pid = kv["DOCKER_HOST"], int(kv["PID"])
        return self

    def stop(self, check: bool = False):
        """Stops it (SIGTERM, bounded wait, SIGKILL); with check, fails the test unless the stop
        went cleanly and the dockerd is gone."""
        run([DOCKERD_SH, "stop", self.state], timeout=120, check=check)
        if check:
            assert run([DOCKERD_SH, "status", self.state], timeout=30, check=False).returncode != 0, \
                f"dockerd on {self.data_root} still running after stop"

    def docker(self, *args, timeout=120, check=True) -> subprocess.CompletedProcess:
        return run(["/usr/bin/docker", "-H", self.host, *args], timeout=timeout, check=check)

    def current_pid(self) -> int:
        """The pid in dockerd's pid file now (another process after a --restart)."""
        try:
            return int((self.state / "dockerd.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def answers(self) -> bool:
        """Whether its API answers now (`docker version` within 10 s)."""
        return self.docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False).returncode == 0

    def close(self):
        self.stop()


# What a container that must live through a test runs: ends on SIGTERM. A bare `sleep` as the
# container's PID 1 ignores it, so every stop of its dockerd (10 s without live-restore) or of a
# machine holding it (systemd's 90 s stop timeout) waited it out.
KEEPER_CMD = ("/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; /bin/busybox sleep 600 & wait")


def dockerd_with_keeper(extrafs: Path, images: "Images", dockerd, root: Path, **kw):
    """app-a:1 attached into `root` (extrafs docker attach), a dockerd started there by the
    `dockerd` fixture (kw: its options, e.g. live_restore=False), and a container "keeper" of
    app-a:1 running in it. Returns (dockerd, the container's pid)."""
    run([extrafs, "docker", "attach", "app-a:1", "--mount", images.mnt, "--data-root", root], timeout=180)
    d = dockerd(root, **kw)
    d.docker("run", "-d", "--network", "none", "--name", "keeper", "app-a:1", *KEEPER_CMD)
    return d, container_pid(d)


def container_pid(d: Dockerd, name="keeper") -> int:
    """The pid of the running container `name` (fails if it is not running)."""
    out = d.docker("inspect", "-f", "{{.State.Running}} {{.State.Pid}}", name).stdout.split()
    assert out[0] == "true", f"container {name} is not running: {out}"
    return int(out[1])


def docker_tags(d: Dockerd) -> set[str]:
    """The name:tag references the dockerd lists."""
    return set(d.docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())


def short_tmpdir(prefix="xf-") -> Path:
    """A new directory directly under /tmp (short enough for unix socket paths)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def remove_tree(path: Path):
    """Removes a test's temporary tree once nothing is mounted below it; leaves it (and says
    so) if something still is."""
    unmount_under(path)
    left = [m for m in mountpoints() if m.startswith(str(path) + "/")]
    if left:
        print(f"leaving {path}: still mounted below it: {left}")
        return
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Small stores made on the spot (issue 20)

MAKE_SAVE_ARCHIVE = TESTS / "integration" / "make_save_archive.py"


def publish_images(extrafs: Path, store: Path, images: dict, work: Path) -> Store:
    """A packed store holding `images` ({"name:tag[,name:tag...]": [layer_dir, ...]}, base
    first), published one `docker save` archive at a time (make_save_archive.py): the same
    directory gives the same layer, so images share layers the way their lists do. Returns the
    Store; its cids are the cache-ids in the order the catalog lists them."""
    work.mkdir(parents=True, exist_ok=True)
    for n, (tags, dirs) in enumerate(images.items()):
        archive = work / f"image{n}.tar"
        run(["/usr/bin/python3", MAKE_SAVE_ARCHIVE, archive, tags, *dirs], timeout=120)
        run([extrafs, "publish", "--archive", archive, "--to", store], timeout=300)
    catalog = json.loads((store / "extrafs" / "catalog").read_text())
    return Store(store, [l["cache_id"] for l in catalog["layers"]])


IMAGE_TOPS = ("b", "c", "d", "e", "f", "g")


@dataclass
class Images:
    """A published store of images sharing a busybox base, and a mount of it: app-a:1 is the
    base alone; app-b:1, app-c:1, ... (IMAGE_TOPS) the base and a top layer holding /etc/marker
    ("app-b-marker\n", ...). For the docker tests."""
    store: Path
    mnt: Path


def publish_busybox_images(extrafs: Path, tmp: Path, store: Path, tweak_after_first=None):
    """Publishes app-a:1, then app-b:1, ... (see Images) into `store` with publish_images.
    tweak_after_first(store), if given, runs after the first publish: the next one carries the
    store's image/ tree as tweaked into its new image/ index, so a mount serves it."""
    src = tmp / "src"
    (src / "base" / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", src / "base" / "bin" / "busybox")
    os.symlink("busybox", src / "base" / "bin" / "sh")
    for name in IMAGE_TOPS:
        (src / name / "etc").mkdir(parents=True)
        (src / name / "etc" / "marker").write_text(f"app-{name}-marker\n")
    publish_images(extrafs, store, {"app-a:1": [src / "base"]}, tmp / "work")
    if tweak_after_first:
        tweak_after_first(store)
    publish_images(extrafs, store, {f"app-{n}:1": [src / "base", src / n] for n in IMAGE_TOPS}, tmp / "work")


def make_many_layer_store(extrafs: Path, store: Path, images: int, layers_per_image: int) -> dict:
    """A Hermes-style store of images x layers_per_image tiny layers (one small file each, no
    layer shared), with docker's image metadata for each image "img<N>:1", indexed with
    `extrafs index`: what a large store looks like to `extrafs stats`, cheaply. Returns
    {cache_id: "img<N>:1"}."""
    import hashlib
    meta = store / "image" / "overlay2"
    repos = {}
    owner = {}
    for i in range(images):
        ref = f"img{i}:1"
        diffs, cids = [], []
        for k in range(layers_per_image):
            cid = hashlib.sha256(f"many-layers {i} {k}".encode()).hexdigest()
            diff = store / "overlay2" / cid / "diff"
            diff.mkdir(parents=True)
            (diff / f"file{k}").write_text(f"image {i} layer {k}\n")
            diffs.append("sha256:" + hashlib.sha256(f"diff {i} {k}".encode()).hexdigest())
            cids.append(cid)
            owner[cid] = ref
        chain = []
        for d in diffs:
            chain.append(d if not chain else "sha256:" + hashlib.sha256(f"{chain[-1]} {d}".encode()).hexdigest())
        for k, (cid, d, c) in enumerate(zip(cids, diffs, chain)):
            ldir = meta / "layerdb" / "sha256" / c[7:]
            ldir.mkdir(parents=True)
            (ldir / "diff").write_text(d)
            (ldir / "cache-id").write_text(cid)
            (ldir / "size").write_text(str(len(f"image {i} layer {k}\n")))
            if k:
                (ldir / "parent").write_text(chain[k - 1])
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                             "rootfs": {"type": "layers", "diff_ids": diffs}}, separators=(",", ":")).encode()
        image_id = hashlib.sha256(config).hexdigest()
        cdir = meta / "imagedb" / "content" / "sha256"
        cdir.mkdir(parents=True, exist_ok=True)
        (cdir / image_id).write_bytes(config)
        repos.setdefault(f"img{i}", {})[ref] = "sha256:" + image_id
    (meta / "repositories.json").write_text(json.dumps({"Repositories": repos}))
    run([extrafs, "index", store], timeout=1200)
    return owner


def mount_dev(path) -> str:
    """The device ("MAJOR:MINOR") of the top mount at path, from /proc/self/mountinfo ("" if
    none)."""
    real = os.path.realpath(str(path))
    dev = ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mp = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            if mp == real:
                dev = fields[2]
    return dev


def stats_socket(path) -> Path:
    """Where the daemon of the extrafs mount at path answers `extrafs stats` (root's daemons)."""
    return Path("/run/extrafs") / f"{mount_dev(path)}.sock"


# ---------------------------------------------------------------------------------------------
# Trees, files and images compared (the ports of the shell tests, issue 19 item 7)


def _module(path: Path):
    """The Python file at path imported as a module (once), for the engines the shell tests run
    as scripts (compare_trees.py, dataroot_listing.py)."""
    import importlib.util
    import sys
    name = f"_xf_{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def compare_trees_engine():
    """tests/integration/compare_trees.py as a module (to subclass its Comparer)."""
    return _module(COMPARE_TREES)


def compare_trees(a, b, *options: str, comparer=None) -> str:
    """compare_trees.py's engine, in this process: A and B entry by entry (type, mode, owner,
    size, nlink, rdev, times with ctime, xattrs, d_type, d_ino, hard-link groups, every byte;
    `options` as on its command line, e.g. "--no-ctime", "--exclude", "data/x"; comparer: a
    subclass of its Comparer). Fails the test with the differences found; returns a summary."""
    c = compare_trees_engine().compare([a, b, *options], comparer)
    assert c.ndiffs == 0, (f"A={a} and B={b} differ ({c.ndiffs} differences; first {len(c.diffs)}):\n  "
                           + "\n  ".join(c.diffs))
    return f"{c.entries} entries, {c.bytes_compared} bytes identical"


def tree_manifest(root, *exclude: str) -> list[str]:
    """compare_trees.py --manifest ROOT: one line per entry (type, mode, owner, size, nlink, rdev,
    mtime, ctime, inode, link target, xattrs; no content), to show that a tree did not change."""
    import io
    out = io.StringIO()
    compare_trees_engine().manifest(str(root), [os.fsencode(e.strip("/")) for e in exclude], out)
    return out.getvalue().splitlines()


def snapshot(root) -> list[str]:
    """Every file (and symlink to a directory) under root: path, size, mtime, ctime, inode and the
    SHA-256 of its content, one line each in path order; equal snapshots mean nothing was written,
    replaced or touched."""
    import hashlib
    out = []
    for dp, dns, fns in sorted(os.walk(root)):
        dns.sort()
        for n in sorted(fns) + [d for d in dns if os.path.islink(os.path.join(dp, d))]:
            p = os.path.join(dp, n)
            st = os.lstat(p)
            h = "-"
            if os.path.isfile(p) and not os.path.islink(p):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for b in iter(lambda: f.read(1 << 20), b""):
                        h.update(b)
                h = h.hexdigest()
            out.append(f"{os.path.relpath(p, root)} {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {h}")
    return out


def assert_unchanged(before: list[str], after: list[str], what: str):
    """Two snapshot()s (or manifests) of `what`: fails naming the first lines that differ."""
    if before != after:
        import difflib
        d = [l for l in difflib.unified_diff(before, after, "before", "after", lineterm="", n=0)][2:22]
        raise AssertionError(f"{what} changed:\n" + "\n".join(d))


def random_file(path, size: int, seed: str) -> Path:
    """A file of `size` bytes of pseudo_random() (which lz4 leaves as they are), the same for a seed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pseudo_random(size, seed))
    return path


def flip_byte(path, offset: int):
    """Inverts every bit of the byte at offset (so the file surely changes)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert len(b) == 1, f"{path} has no byte at {offset}"
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xff]))


def busybox_rootfs(root, applets: str, *dirs: str) -> Path:
    """A root file system for `docker import`: bin/busybox (busybox-static), a symlink to it for
    each of the space-separated `applets`, and the empty directories `dirs`."""
    root = Path(root)
    for d in ("bin", *dirs):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for a in applets.split():
        (root / "bin" / a).symlink_to("busybox")
    return root


def catalog_layers(store) -> list[dict]:
    """The layers a store's catalog lists (each a dict with cache_id, ...), in its order."""
    return json.loads((Path(store) / "extrafs" / "catalog").read_text())["layers"]


def layer_cached(stats: dict, cache_id: str) -> int:
    """bytes_cached of one layer in `extrafs stats --json` output."""
    return sum(l["bytes_cached"] for l in stats["layers"] if l["cache_id"] == cache_id)


def dataroot_listing(root, nomtime: bool = False) -> list[str]:
    """What attach writes under a data-root (tests/docker/dataroot_listing.py), one line per entry."""
    return _module(TESTS / "docker" / "dataroot_listing.py").listing(root, nomtime)
