"""extrafs-attach-listed, the helper extrafs-attach@.service runs at boot, as configured into the
build directory (issue 20 section 7): the list's names are taken literally, and one name that
cannot be attached does not keep the others from being attached. Against a real mount of a
published store and a data-root no dockerd runs on (the boot case).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import xf


def attach_listed(build_dir: Path, extrafs, mnt, listing: Path, root: Path, cwd: Path):
    """Runs the helper as configured into the build directory, with this build's extrafs at the
    sbindir it names (bind-mounted in a private mount namespace)."""
    helper = build_dir / "systemd" / "extrafs-attach-listed"
    text = helper.read_text()
    found = re.search(r"^extrafs=(/.*)/extrafs$", text, re.M) or re.search(r"^exec (/\S*)/extrafs ", text, re.M)
    assert found, f"{helper} names no SBINDIR/extrafs"
    sbindir = found.group(1)
    bindir = root.parent / "sbin"
    bindir.mkdir(exist_ok=True)
    if not (bindir / "extrafs").exists():
        os.symlink(extrafs, bindir / "extrafs")
    return xf.run(["unshare", "-m", "sh", "-c", 'mkdir -p "$2" && mount --bind "$1" "$2" && exec sh "$3" "$4" "$5"',
                   "_", bindir, sbindir, helper, mnt, listing], env={"DATA_ROOT": root}, cwd=cwd, check=False,
                  timeout=300)


def listed_tags(root: Path) -> set[str]:
    repos = json.loads((root / "image/overlay2/repositories.json").read_text())["Repositories"]
    return {t for refs in repos.values() for t in refs}


def test_attach_listed_takes_names_literally(extrafs, build_dir, images, tmp):
    root = tmp / "root"
    cwd = tmp / "cwd"
    cwd.mkdir()
    (cwd / "app-b:1").write_text("a file a glob would find\n")
    listing = tmp / "images"
    listing.write_text("app-a:1\n*\n")
    p = attach_listed(build_dir, extrafs, images.mnt, listing, root, cwd)
    assert p.returncode == 1, f"exit {p.returncode}: {p.stdout} {p.stderr}"
    assert listed_tags(root) == {"app-a:1"}, "the glob was expanded"
    assert p.stderr.rstrip().endswith(": *"), f"the helper does not name '*' as not attached: {p.stderr}"


def test_attach_listed_attaches_what_it_can(extrafs, build_dir, images, tmp):
    root = tmp / "root"
    listing = tmp / "images"
    listing.write_text("# this host\napp-a:1\nnot-there:1   # gone from the store\napp-c:1\n")
    p = attach_listed(build_dir, extrafs, images.mnt, listing, root, tmp)
    assert p.returncode == 1, f"exit {p.returncode}: {p.stdout} {p.stderr}"
    assert listed_tags(root) == {"app-a:1", "app-c:1"}
    assert "not-there:1" in p.stderr, p.stderr
    # All there: exit 0, nothing written again.
    listing.write_text("app-a:1\napp-c:1\n")
    p = attach_listed(build_dir, extrafs, images.mnt, listing, root, tmp)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("already attached") == 2, p.stdout
