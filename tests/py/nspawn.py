"""A real systemd as PID 1 for tests: a Debian rootfs booted with systemd-nspawn, for the units,
fstab mounts at boot, docker.service and the Debian package. The recipe and why each flag is
there: section 4 of the shared design brief ("A real systemd as PID 1").

The rootfs (`debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,fuse3,
ca-certificates,docker.io bookworm`, ~590 MB) is built once per machine into
ROOTFS_CACHE/rootfs-bookworm (about 80 s) and reused; it is rebuilt only if it is incomplete
(no stamp naming this recipe). It is never written after it is built: each Machine boots an
overlayfs whose lower layer is that rootfs and whose upper layer lies in the test's temporary
directory, so what a test changes survives `reboot()` of its machine (as on a real host: a
package installed, fstab edited, then a boot) and nothing reaches the cache or the next test.
nspawn's `--volatile=overlay` would keep the cache as clean, but it loses every change at a
reboot, and a test of what happens at boot needs its changes there.

Readers of the cache hold a shared flock on ROOTFS_CACHE/rootfs-bookworm.lock for the life of
their machines, a builder an exclusive one, so concurrent test runs never boot a rootfs that is
being rebuilt (or rebuild one that is booted).

Nothing here needs a systemd on the host: nspawn runs with `--register=no --keep-unit` in a
cgroup of its own (made under /sys/fs/cgroup/{systemd,unified} and removed after), the
container's init is found as nspawn's child process named systemd, and commands run in the
container's namespaces through nsenter (they keep the host's capabilities and cgroup: code that
must run as a service is run with `systemd-run --wait --pipe` inside).

Used through conftest.py's `nspawn` fixture; every wait is bounded, every machine is powered off
and its overlay, cgroups and temporary files removed at teardown, even after a failure.
Requires root, systemd-nspawn (systemd-container), debootstrap and /dev/fuse.
"""
from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import xf

ROOTFS_CACHE = Path(os.environ.get("EXTRAFS_TEST_CACHE", "/var/cache/extrafs-tests"))
SUITE = "bookworm"
INCLUDE = "systemd,systemd-sysv,dbus,fuse3,ca-certificates,docker.io"
# Written into the rootfs as its last step; a rootfs without it (an interrupted build) or with
# another recipe is rebuilt.
RECIPE = f"debootstrap --variant=minbase --include={INCLUDE} {SUITE} (extrafs tests, v1)"
STAMP = ".extrafs-test-rootfs"
# Files a usable rootfs has: init, the unit manager's client, dockerd, FUSE's helper.
KEY_FILES = ("lib/systemd/systemd", "bin/systemctl", "usr/sbin/dockerd", "bin/fusermount3",
             "usr/bin/docker")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))


# ---------------------------------------------------------------------------------------------
# The rootfs


def debian_mirror() -> str:
    """The Debian mirror apt on this machine is configured with (debootstrap's source)."""
    for f in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = f.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for m in re.finditer(r"(?m)^\s*(?:URIs:|deb)\s+(?:\[[^]]*\]\s+)?(https?://\S*/debian)/?\s*$", text):
            return m.group(1)
    return "http://deb.debian.org/debian"


def rootfs_complete(root: Path) -> bool:
    try:
        if (root / STAMP).read_text().strip() != RECIPE:
            return False
    except OSError:
        return False
    return all(os.path.lexists(root / f) for f in KEY_FILES)


def _build_rootfs(root: Path):
    """debootstrap into root.new, stamp it, then put it in root's place (so root is whole or
    absent). Called with the exclusive lock held."""
    for tool in ("debootstrap", "systemd-nspawn"):
        if not shutil.which(tool):
            raise AssertionError(f"{tool} not installed (scripts/setup installs it)")
    new = root.with_name(root.name + ".new")
    shutil.rmtree(new, ignore_errors=True)
    log = root.with_name(root.name + ".debootstrap.log")
    mirror = debian_mirror()
    print(f"nspawn: building the test rootfs in {root} from {mirror} (once per machine)", flush=True)
    with open(log, "w") as out:
        try:
            p = subprocess.run(["debootstrap", "--variant=minbase", f"--include={INCLUDE}", SUITE,
                                str(new), mirror], stdout=out, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, timeout=1500)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"debootstrap did not finish in 1500 s (log: {log})") from None
    if p.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-5:]
        raise AssertionError(f"debootstrap failed (exit {p.returncode}, log {log}): {' | '.join(tail)}")
    for deb in (new / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # The machines get their identity from nspawn at each boot; an empty machine-id is what a
    # Debian image ships so that every boot makes one.
    (new / "etc/machine-id").write_text("")
    (new / STAMP).write_text(RECIPE + "\n")
    missing = [f for f in KEY_FILES if not os.path.lexists(new / f)]
    if missing:
        raise AssertionError(f"debootstrap left no {', '.join(missing)} in {new} (log: {log})")
    shutil.rmtree(root, ignore_errors=True)
    os.rename(new, root)


def acquire_rootfs(cache: Path = ROOTFS_CACHE) -> tuple[Path, int]:
    """The cached rootfs, built first if it is absent or incomplete. Returns (path, fd of the
    lock file holding a shared lock): keep the fd open while a machine boots from the path, then
    os.close() it."""
    cache.mkdir(parents=True, exist_ok=True)
    root = cache / f"rootfs-{SUITE}"
    fd = os.open(cache / f"rootfs-{SUITE}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        for _ in range(3):
            _flock(fd, fcntl.LOCK_SH, 1800, "a shared lock on the test rootfs")
            if rootfs_complete(root):
                return root, fd
            _flock(fd, fcntl.LOCK_EX, 1800, "the exclusive lock to build the test rootfs")
            if not rootfs_complete(root):
                _build_rootfs(root)
            fcntl.flock(fd, fcntl.LOCK_UN)
        raise AssertionError(f"{root} is still incomplete after building it")
    except BaseException:
        os.close(fd)
        raise


def _flock(fd: int, how: int, timeout: float, what: str):
    end = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}") from None
            time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# Machines


def _remove_cgroup(path: Path):
    """rmdir of a cgroup and everything below it, deepest first (cgroups are removed with
    rmdir, never with their files)."""
    if not path.is_dir():
        return
    for dirpath, _, _ in sorted(os.walk(path), key=lambda t: -len(t[0])):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def _systemd_child(pid: int) -> int:
    """The pid of the process named systemd whose parent is pid (nspawn's container init), or 0."""
    p = subprocess.run(["pgrep", "-P", str(pid), "-x", "systemd"], capture_output=True, text=True,
                       timeout=10)
    pids = p.stdout.split()
    return int(pids[0]) if len(pids) == 1 else 0


def _wait(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


class Machine:
    """One container: a systemd as PID 1 on an overlay of the cached rootfs.

    name     machine and host name (also the cgroup's)
    state    the machine's own directory: upper/ and work/ of its overlay, root/ (the overlay;
             what the container sees as /), docker/ (bound at /var/lib/docker), console.log
    binds    (host path, container path, read_only) triples bound at every boot
    init     the pid of the container's systemd (0 while it is off)

    Not thread-safe: one test drives it. Start with boot(); close() powers off and undoes
    everything (idempotent).
    """

    def __init__(self, name: str, state: Path, rootfs: Path, binds=(), docker_dir: Path | None = None,
                 extra_args=()):
        self.name = name
        self.state = Path(state)
        self.rootfs = rootfs
        self.root = self.state / "root"
        self.docker_dir = Path(docker_dir) if docker_dir else self.state / "docker"
        self.binds = [(Path(h), c, ro) for h, c, ro in binds]
        self.extra_args = list(extra_args)
        self.console = self.state / "console.log"
        self.cgroup = f"extrafs-nspawn-{name}"
        self.proc: subprocess.Popen | None = None
        self.init = 0
        self.boots = 0
        self._console_f = None

    # -- lifecycle ----------------------------------------------------------------------------

    def _mount_overlay(self):
        if xf.is_mounted(self.root):
            return
        for d in ("upper", "work", "root"):
            (self.state / d).mkdir(parents=True, exist_ok=True)
        self.docker_dir.mkdir(parents=True, exist_ok=True)
        xf.run(["mount", "-t", "overlay", f"overlay-{self.name}", "-o",
                f"lowerdir={self.rootfs},upperdir={self.state / 'upper'},workdir={self.state / 'work'}",
                self.root], timeout=30)
        # debootstrap copies the host's /etc/hostname, and systemd would set that name at boot.
        (self.root / "etc" / "hostname").write_text(self.name + "\n")

    def _nspawn_cmd(self) -> list[str]:
        cmd = ["systemd-nspawn", "-D", str(self.root), "-b", "-M", self.name, f"--hostname={self.name}",
               "--register=no", "--keep-unit", "--private-network", "--console=read-only",
               "--bind=/dev/fuse", "--system-call-filter=@keyring bpf",
               f"--bind={self.docker_dir}:/var/lib/docker"]
        for host, cont, ro in self.binds:
            cmd.append(f"--bind{'-ro' if ro else ''}={host}:{cont}")
        return cmd + self.extra_args

    def boot(self, timeout: float = 120):
        """Starts the container and waits until systemd reports the system running. Fails
        (naming the failed units and the end of the console) if it comes up degraded or not at
        all."""
        assert self.proc is None, f"{self.name} is already booted"
        self._mount_overlay()
        # nspawn's own cgroup in both hierarchies: without a host systemd nobody else gives it
        # one, and --keep-unit makes it use (and fill) the one it runs in.
        for r in CGROUP_ROOTS:
            (r / self.cgroup).mkdir(exist_ok=True)
        self.boots += 1
        self._console_f = open(self.console, "a")
        self._console_f.write(f"--- boot {self.boots}: {' '.join(self._nspawn_cmd())}\n")
        self._console_f.flush()
        env = dict(os.environ, SYSTEMD_NSPAWN_UNIFIED_HIERARCHY="1")
        # The launcher moves itself into the cgroups, then becomes nspawn (same pid).
        enter = " ".join(f"echo $$ > {r / self.cgroup / 'cgroup.procs'} &&" for r in CGROUP_ROOTS)
        self.proc = subprocess.Popen(["sh", "-c", f'{enter} exec "$@"', "sh", *self._nspawn_cmd()],
                                     stdin=subprocess.DEVNULL, stdout=self._console_f,
                                     stderr=subprocess.STDOUT, env=env)
        end = time.monotonic() + timeout
        try:
            self.init = xf.wait_until(self._find_init, timeout, f"{self.name}: systemd started by nspawn")
        except AssertionError as e:
            raise AssertionError(f"{e}{self._console_tail()}") from None
        # systemctl answers once PID 1 has opened its private socket. Before PID 1 has made
        # /run/systemd/system it says "offline" (not booted with systemd) at once: that is early
        # boot, not an end state (on a loaded machine the test saw it, with the console at
        # "Initializing machine ID"), so it is waited out like "starting".
        while True:
            left = max(1.0, end - time.monotonic())
            last = self.run(["systemctl", "is-system-running", "--wait"], timeout=left, check=False)
            state = last.stdout.strip()
            if state in ("running", "degraded", "maintenance", "stopping") or \
                    time.monotonic() > end:
                break
            time.sleep(0.2)
        if state != "running":
            failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
            raise AssertionError(f"{self.name}: boot {self.boots} ended {state or last.stderr.strip()!r}, "
                                 f"not 'running'; failed units: {failed.strip() or 'none'}{self._console_tail()}")
        return self

    def _find_init(self) -> int:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name}: systemd-nspawn exited {self.proc.returncode} while "
                                 f"booting{self._console_tail()}")
        return _systemd_child(self.proc.pid)

    def _stop(self, sig: int, expect: tuple[int, ...], timeout: float, what: str):
        """Sends sig to the container's systemd and waits for nspawn to exit with one of
        `expect`; kills the container if it does not within timeout."""
        assert self.proc is not None, f"{self.name} is not booted"
        try:
            os.kill(self.init, sig)
        except ProcessLookupError:
            pass
        rc = _wait(self.proc, timeout)
        if rc is None:
            self._kill()
            raise AssertionError(f"{self.name}: {what} took over {timeout} s; killed{self._console_tail()}")
        self._exited()
        if rc not in expect:
            raise AssertionError(f"{self.name}: systemd-nspawn exited {rc} on {what}, expected "
                                 f"{expect}{self._console_tail()}")

    def poweroff(self, timeout: float = 60):
        """Powers the container off (SIGRTMIN+4 to its systemd, as `poweroff` does) and waits
        for nspawn to exit 0. Its overlay stays: boot() starts it again as it was left."""
        self._stop(signal.SIGRTMIN + 4, (0,), timeout, "poweroff")

    def reboot(self, timeout: float = 120):
        """A clean reboot (SIGINT to its systemd: ctrl-alt-del.target, which nspawn answers by
        exiting 133), then boot() again with the same binds; what the test wrote stays."""
        self._stop(signal.SIGINT, (133, 0), timeout, "reboot")
        return self.boot(timeout)

    def _kill(self):
        """SIGKILL to the container's systemd (which ends its whole pid namespace), then to
        nspawn if it is still there."""
        init = self.init or _systemd_child(self.proc.pid)
        if init:
            try:
                os.kill(init, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if _wait(self.proc, 15) is None:
            self.proc.kill()
            _wait(self.proc, 15)
        self._exited()

    def _exited(self):
        """nspawn is gone: forget it and remove the cgroups it left (supervisor/, payload/)."""
        self.proc, self.init = None, 0
        if self._console_f:
            self._console_f.close()
            self._console_f = None
        for r in CGROUP_ROOTS:
            _remove_cgroup(r / self.cgroup)

    def close(self):
        """Powers off (or kills, if that fails) and removes the overlay mount and cgroups. The
        state directory itself is the test's temporary directory's to remove."""
        try:
            if self.proc is not None:
                self.poweroff(timeout=60)
        except AssertionError as e:
            print(f"nspawn teardown: {e}")
        finally:
            if self.proc is not None:
                self._kill()
            for r in CGROUP_ROOTS:
                _remove_cgroup(r / self.cgroup)
            if xf.is_mounted(self.root):
                subprocess.run(["umount", "--", str(self.root)], capture_output=True, timeout=30)
            if xf.is_mounted(self.root):
                subprocess.run(["umount", "-l", "--", str(self.root)], capture_output=True, timeout=30)

    # -- inside -------------------------------------------------------------------------------

    def _enter(self) -> list[str]:
        assert self.init, f"{self.name} is not running"
        return ["nsenter", "-t", str(self.init), "-a", "env", "-i", f"PATH={PATH}", "LANG=C.UTF-8"]

    def run(self, cmd, *, timeout: float = 120, check: bool = True, input=None, env=None):
        """Runs cmd (a list, or a string for sh -c) in the container's namespaces with a clean
        environment (plus env, a dict). xf.run's contract: output as text, AssertionError on a
        non-zero exit if check, or on a hang past timeout."""
        if isinstance(cmd, str):
            cmd = ["sh", "-c", cmd]
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return xf.run(self._enter() + extra + [str(c) for c in cmd], timeout=timeout, check=check,
                      input=input)

    def copy_in(self, src, dest: str, mode: int | None = None):
        """Copies the host file or directory src to the container path dest (the file's or the
        directory's new name; parents are made). Done by tar/cat inside the container's mount
        namespace, so its mounts and absolute symlinks resolve there and never on the host.
        A file keeps its mode unless mode is given."""
        src = Path(src)
        if src.is_dir():
            tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "."], stdout=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL)
            try:
                p = subprocess.run(self._enter() + ["sh", "-c", 'mkdir -p "$1" && tar -C "$1" -xf -', "sh",
                                                    dest], stdin=tar.stdout, capture_output=True,
                                   timeout=300)
            finally:
                tar.stdout.close()
                tar.wait(timeout=60)
            if p.returncode != 0 or tar.returncode != 0:
                raise AssertionError(f"{self.name}: copy_in {src} -> {dest} failed: "
                                     f"{p.stderr.decode(errors='replace')[-2000:]}")
            return
        with open(src, "rb") as f:
            data = f.read()
        self.write(dest, data, mode if mode is not None else src.stat().st_mode & 0o7777)

    def write(self, dest: str, data, mode: int = 0o644):
        """Writes data (bytes or str) to the container path dest (parents made, replaced whole)."""
        if isinstance(data, str):
            data = data.encode()
        p = subprocess.run(self._enter() + ["sh", "-c", 'mkdir -p "$(dirname "$1")" && cat >"$1.xf-new" '
                                            '&& chmod "$2" "$1.xf-new" && mv -f "$1.xf-new" "$1"', "sh",
                                            dest, f"{mode:o}"], input=data, capture_output=True, timeout=120)
        if p.returncode != 0:
            raise AssertionError(f"{self.name}: writing {dest} failed: {p.stderr.decode(errors='replace')}")

    def read(self, path: str) -> str:
        """The text of the container file path."""
        return self.run(["cat", path]).stdout

    def install_program(self, program, dest: str):
        """Copies a dynamically linked host program (e.g. the build's extrafs) to dest inside,
        with the shared libraries it needs that the rootfs lacks (into /usr/local/lib, then
        ldconfig): host and rootfs are the same Debian release, so the rootfs's own copies of
        the others serve. For tests that run the build before it is packaged."""
        program = Path(program).resolve()
        out = xf.run(["ldd", program], timeout=30).stdout
        libs = re.findall(r"=>\s+(/\S+)\s+\(0x", out)
        have = set(self.run(["ldconfig", "-p"]).stdout.split())
        for lib in libs:
            name = os.path.basename(lib)
            if name not in have and not name.startswith(("libc.so", "libm.so", "ld-linux")):
                self.copy_in(Path(lib).resolve(), f"/usr/local/lib/{name}", mode=0o644)
        self.run(["ldconfig"])
        self.copy_in(program, dest, mode=0o755)
        missing = self.run(["sh", "-c", f"ldd {dest} | grep 'not found' || true"]).stdout.strip()
        assert not missing, f"{self.name}: {dest} still lacks libraries: {missing}"

    def _console_tail(self, lines: int = 25) -> str:
        try:
            tail = self.console.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nconsole (last lines):\n  " + "\n  ".join(tail)


class Machines:
    """What the `nspawn` fixture hands out: machines(binds=..., name=None, docker_dir=None) boots
    one and returns it; close() powers every one off and releases the rootfs."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.made: list[Machine] = []
        self.rootfs: Path | None = None
        self.lock_fd = -1

    def __call__(self, binds=(), *, name: str | None = None, docker_dir=None, boot_timeout=120,
                 extra_args=()) -> Machine:
        """binds: a mapping {host path: container path} or (host, container[, read_only])
        tuples, bound at every boot; /dev/fuse and a private /var/lib/docker always are."""
        for tool in ("systemd-nspawn", "nsenter", "pgrep"):
            if not shutil.which(tool):
                raise AssertionError(f"{tool} not installed (scripts/setup installs it)")
        if self.rootfs is None:
            self.rootfs, self.lock_fd = acquire_rootfs()
        if isinstance(binds, dict):
            binds = list(binds.items())
        triples = [(b[0], b[1], b[2] if len(b) > 2 else False) for b in binds]
        name = name or f"xf-{secrets.token_hex(4)}"
        m = Machine(name, self.tmp / f"nspawn-{name}", self.rootfs, triples, docker_dir, extra_args)
        self.made.append(m)
        return m.boot(boot_timeout)

    def close(self):
        for m in reversed(self.made):
            m.close()
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1
