"""Issue 20 §2: nothing a store holds can forge a line of extrafs's output.

A store whose repositories.json holds tags docker would never write (hostile.forged_tags: a
newline followed by a Prometheus sample, terminal escapes and a CR, a C1 control, bad names, a
bad image id, a repository that is no object): `extrafs stats --prometheus` stays parseable by
the real Prometheus parser with no injected sample and only the valid tags as image labels, over
a local and an NFS mount; `extrafs ls` of the mount and of the store prints no control character
and no forged row, with one warning line per entry left out; `extrafs docker attach --all`
attaches the valid images and none of the forged tags.
"""
import json
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

import hostile
import xf

VALID = {"app:1", "web:1"}


@pytest.fixture
def forged_store(extrafs, tmp):
    """A packed store: app:1 = base, web:1 = base + top; then the forged tags, re-indexed."""
    base, top = tmp / "base", tmp / "top"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "name").write_text("base\n")
    (top / "app").mkdir(parents=True)
    (top / "app" / "main").write_bytes(b"top" * 1000)
    store = xf.publish_images(extrafs, tmp / "store", {"app:1": [base], "web:1": [base, top]}, tmp / "work")
    forged = hostile.forged_tags(store.path)
    xf.run([extrafs, "index", store.path], timeout=300)
    return store, forged


def control_chars(text: str) -> list[str]:
    """The control characters (C0 but newline, DEL, C1) in text."""
    return sorted({c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7f <= ord(c) <= 0x9f})


@pytest.mark.parametrize("where", ["local", "nfs"])
def test_prometheus_output_holds_no_forged_sample(forged_store, mount, ganesha, extrafs, where):
    store, _ = forged_store
    m = mount(store.path if where == "local" else ganesha(store.path).url4)
    p = xf.run([extrafs, "stats", m.path, "--prometheus"], timeout=60)
    out = p.stdout
    assert not control_chars(out), f"control characters in the output: {control_chars(out)}"
    for line in out.splitlines():
        assert not line.startswith(hostile.INJECTED_METRIC), f"injected sample: {line!r}"
        assert re.fullmatch(r"# .*|extrafs_[a-z_]+(\{.*\})? \S+", line), f"not a comment or an extrafs sample: {line!r}"
    families = {f.name: f for f in text_string_to_metric_families(out)}
    assert not [n for n in families if "injected" in n], sorted(families)
    # The real parser sees exactly one size sample per layer, labelled with the valid tags only.
    samples = [s for s in families["extrafs_layer_size_bytes"].samples if s.name == "extrafs_layer_size_bytes"]
    assert sorted(s.labels["cache_id"] for s in samples) == sorted(store.cids)
    labels = {s.labels["cache_id"]: set(s.labels["image"].split(",")) for s in samples}
    base = [c for c, tags in labels.items() if tags == VALID]
    top = [c for c, tags in labels.items() if tags == {"web:1"}]
    assert len(base) == 1 and len(top) == 1, f"image labels: {labels}"


def test_ls_prints_store_strings_escaped_and_leaves_forged_tags_out(forged_store, mount, extrafs):
    store, forged = forged_store
    m = mount(store.path)
    for target in (m.path, store.path):
        p = xf.run([extrafs, "ls", target], timeout=60)
        assert not control_chars(p.stdout), f"ls {target}: control characters {control_chars(p.stdout)}"
        assert "FORGED" not in p.stdout and "injected" not in p.stdout, p.stdout
        rows = [l for l in p.stdout.splitlines() if re.match(r"[0-9a-f]{12}  ", l)]
        assert len(rows) == 2, p.stdout
        assert {t for r in rows for t in re.findall(r"[a-z]+:1", r)} == VALID, p.stdout
        # One warning line per forged entry (the bad id's tag and the misfiled one included).
        warnings = p.stderr.splitlines()
        assert len(warnings) == len(forged), p.stderr
        assert all("repositories.json: skipping" in w for w in warnings), p.stderr
        assert not control_chars(p.stderr), f"stderr: {control_chars(p.stderr)}"


def test_docker_attach_all_attaches_the_valid_tags_only(forged_store, mount, extrafs, tmp):
    store, _ = forged_store
    m = mount(store.path)
    root = tmp / "data-root"
    p = xf.run([extrafs, "docker", "attach", "--all", "--mount", m.path, "--data-root", root], timeout=120)
    assert not control_chars(p.stdout + p.stderr)
    repos = json.loads((root / "image" / "overlay2" / "repositories.json").read_text())["Repositories"]
    assert {t for tags in repos.values() for t in tags} == VALID, repos
