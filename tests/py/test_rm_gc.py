"""Issue 18: a store that shrinks. `extrafs rm` takes images out of the catalog (deleting nothing
a host may read), `extrafs gc` deletes what no catalog of the grace period names; what stays is
served byte for byte (over NFS too) and runs under a real dockerd; a dry run deletes nothing; an
unknown name changes nothing; a publish racing gc never loses what it wrote; a Hermes-style store
copied from a real data-root shrinks the same way, and `extrafs index` never takes back a layer
rm removed."""
import hashlib
import json
import os
import random
import re
import stat
import subprocess
import time

import xf


def publish_all(extrafs, images, store):
    for tag in images.archives:
        xf.run([extrafs, "publish", "--archive", images.archives[tag], "--to", store], timeout=300)


def catalog(store):
    return json.loads((store / "extrafs" / "catalog").read_text())


def catalog_ids(store):
    return {l["cache_id"] for l in catalog(store)["layers"]}


def store_bytes(store):
    return sum(p.lstat().st_size for p in store.rglob("*") if p.is_file() and not p.is_symlink())


def holding(store, needle: bytes):
    """The files under store whose bytes contain needle."""
    return [p for p in store.rglob("*") if p.is_file() and not p.is_symlink() and needle in p.read_bytes()]


def check_image(mnt, images, tag):
    for cid, src in zip(xf.image_layer_ids(mnt, tag), images.sources(tag)):
        xf.check_layer_served(mnt, cid, src)


def test_rm_then_gc_frees_the_removed_image_and_the_rest_still_runs(extrafs, tmp, three_images, ganesha, mount, dockerd):
    store = tmp / "store"
    publish_all(extrafs, three_images, store)
    first = catalog(store)
    assert re.fullmatch(r"[0-9a-f]{32}", first["store_id"]), first.get("store_id")
    base, b_top = xf.image_layer_ids(store, "b:1")
    c_top = xf.image_layer_ids(store, "c:1")[1]
    assert xf.image_layer_ids(store, "c:1")[0] == base
    c_data = (three_images.layers["c"] / "c" / "data").read_bytes()
    sample = c_data[1 << 20:(1 << 20) + 4096]
    assert holding(store, sample), "the sample of c:1's own layer is not in the store to begin with"
    before = xf.tree_state(store)
    size_before = store_bytes(store)

    out = xf.run([extrafs, "rm", "c:1", "--from", store]).stdout
    assert "removed image" in out and "(c:1)" in out, out
    assert "1 layer (3.0 MiB) out of the catalog" in out, out
    cat = catalog(store)
    assert {l["cache_id"] for l in cat["layers"]} == {base, b_top}
    assert cat["store_id"] == first["store_id"], "rm changed the store id"
    assert cat["generation"] == first["generation"] + 1
    # rm deleted nothing a host may read: every file of extrafs/ and overlay2/ is as it was.
    after = xf.tree_state(store)
    for rel, state in before.items():
        if rel.startswith(("extrafs/", "overlay2/")) and rel != "extrafs/catalog" and not stat.S_ISDIR(state[0]):
            assert after.get(rel) == state, f"rm changed {rel}"
    assert (store / "extrafs" / "removed" / c_top).exists()

    out = xf.run([extrafs, "gc", store, "--grace", "0"]).stdout
    assert "deleted layer blobs" in out, out
    m = re.search(r"^freed (\d+) files?, ", out, re.M)
    assert m and int(m.group(1)) > 0, out
    # The bytes of c:1's own layer are gone; the shared base and b:1's layer stay.
    assert not holding(store, sample), f"c:1's bytes are still in {holding(store, sample)}"
    for cid in (c_top,):
        assert not (store / "extrafs" / "layers" / f"{cid}.blob").exists()
        assert not (store / "extrafs" / "layers" / f"{cid}.index").exists()
        assert not (store / "overlay2" / cid).exists()
    for cid in (base, b_top):
        assert (store / "extrafs" / "layers" / f"{cid}.blob").exists()
    assert size_before - store_bytes(store) >= len(c_data), (size_before, store_bytes(store))
    assert catalog(store)["store_id"] == first["store_id"]
    xf.run([extrafs, "verify", store], timeout=120)

    # A host mounting over NFS now sees a:1 and b:1 whole, and not c:1.
    g = ganesha(store)
    m = mount(g.url4)
    for tag in ("a:1", "b:1"):
        check_image(m.path, three_images, tag)
    assert c_top not in set(p.name for p in (m.path / "overlay2").iterdir())
    repos = json.loads((m.path / "image" / "overlay2" / "repositories.json").read_text())["Repositories"]
    assert set(repos) == {"a", "b"}, repos

    # ... and both run under a real dockerd.
    root = tmp / "dataroot"
    (root / "overlay2" / "l").mkdir(parents=True)
    xf.run([extrafs, "docker", "attach", "a:1", "b:1", "--mount", m.path, "--data-root", root], timeout=120)
    d = dockerd(root)
    assert d.docker("run", "--rm", "--network", "none", "b:1", "/bin/busybox", "cat", "/b/marker").stdout == "b:1\n"
    digest = d.docker("run", "--rm", "--network", "none", "b:1", "/bin/busybox", "sha256sum", "/b/data").stdout.split()[0]
    assert digest == hashlib.sha256((three_images.layers["b"] / "b" / "data").read_bytes()).hexdigest()
    assert d.docker("run", "--rm", "--network", "none", "a:1", "/bin/sh", "-c", "cat /etc/base-marker").stdout == "base\n"


def test_a_dry_run_deletes_nothing_and_names_what_gc_then_deletes(extrafs, tmp, three_images):
    store = tmp / "store"
    publish_all(extrafs, three_images, store)
    xf.run([extrafs, "rm", "c:1", "--from", store])
    before = xf.tree_state(store)
    dry = xf.run([extrafs, "gc", store, "--grace", "0", "--dry-run"])
    assert xf.tree_state(store) == before, "gc --dry-run changed the store"
    assert "warning: --grace 0" in dry.stderr, dry.stderr
    planned = re.search(r"^would free (\d+) files?, (.*?);", dry.stdout, re.M)
    assert planned and int(planned.group(1)) > 0, dry.stdout
    # Within the default grace period (7d) nothing at all goes.
    kept = xf.run([extrafs, "gc", store])
    assert "freed 0 files, 0 B" in kept.stdout, kept.stdout
    assert xf.tree_state(store) == before, "gc within the grace period changed the store"
    real = xf.run([extrafs, "gc", store, "--grace", "0"])
    done = re.search(r"^freed (\d+) files?, (.*?);", real.stdout, re.M)
    assert done and done.groups() == planned.groups(), (dry.stdout, real.stdout)
    assert [l.split()[2:] for l in dry.stdout.splitlines() if l.startswith("would delete")] == \
           [l.split()[1:] for l in real.stdout.splitlines() if l.startswith("deleted")]


def test_rm_of_an_unknown_name_is_one_line_and_changes_nothing(extrafs, tmp, three_images):
    store = tmp / "store"
    publish_all(extrafs, three_images, store)
    before = xf.tree_state(store)
    xf.expect_fail([extrafs, "rm", "nope:1", "--from", store], 1, "no image nope:1")
    xf.expect_fail([extrafs, "rm", "b:1", "nope:2", "--from", store], 1, "no image nope:2")
    xf.expect_fail([extrafs, "rm", "sha256:" + "0" * 64, "--from", store], 1, "no image with id")
    assert xf.tree_state(store) == before, "a refused rm changed the store"
    xf.expect_fail([extrafs, "rm", "Bad:1", "--from", store], 2, "Bad:1")
    xf.expect_fail([extrafs, "rm", "--from", store], 2, "--all-untagged")
    xf.expect_fail([extrafs, "rm", "a:1", "--all-untagged", "--from", store], 2, "--all-untagged")
    xf.expect_fail([extrafs, "gc", store, "--grace", "7"], 2, "--grace")
    xf.expect_fail([extrafs, "gc", store, "--grace", "1.5d"], 2, "--grace")
    xf.expect_fail([extrafs, "gc", tmp / "no-store"], 1, "no-store")
    assert xf.tree_state(store) == before, "a refused command changed the store"


def test_a_publish_racing_gc_never_loses_its_new_objects(extrafs, tmp, three_images, mount):
    """gc and publish hold the store's writers' lock: whichever starts second is refused with one
    line (publish can be run again); nothing either writes is lost to the other."""
    store = tmp / "store"
    publish_all(extrafs, three_images, store)
    rng = random.Random(18)
    races = {"publish refused": 0, "gc refused": 0}
    published = ["a:1", "b:1"]
    xf.run([extrafs, "rm", "c:1", "--from", store])
    for i in range(6):
        tag = f"new{i}:1"
        size = (96 if i % 2 else 4) << 20
        new = xf.make_images(tmp / f"new{i}", {"base": {"bin/busybox": b"@busybox", "bin/sh": "busybox",
                                                          "etc/base-marker": b"base\n"},
                                                 "top": {f"new/{i}": xf.pseudo_random(size, 100 + i)}},
                             {tag: ["base", "top"]})
        env = {"EXTRAFS_GC_TEST_PAUSE_MS": "40"}
        gc_cmd = [extrafs, "gc", store, "--grace", "0"]
        pub_cmd = [extrafs, "publish", "--archive", new.archives[tag], "--to", store]
        if i % 2 == 0:  # gc first, publish into it
            # Something to collect each round: the previous round's image, removed.
            if i:
                xf.run([extrafs, "rm", f"new{i - 1}:1", "--from", store])
                published.remove(f"new{i - 1}:1")
            first, second = gc_cmd, pub_cmd
        else:           # a big publish first, gc into it
            first, second = pub_cmd, gc_cmd
        p = subprocess.Popen([str(c) for c in first], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, **env})
        time.sleep(rng.uniform(0.05, 0.25))
        r = xf.run(second, check=False, env=env, timeout=300)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"{first}: exit {p.returncode}: {err}"
        if r.returncode != 0:
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 1 and len(lines) == 1 and "being written by another extrafs" in lines[0], r.stderr
            races["publish refused" if second is pub_cmd else "gc refused"] += 1
            xf.run(second, env=env, timeout=300)  # once the other is done, it runs
        published.append(tag)
        # Nothing the catalog names is missing; what was published reads right from a fresh mount.
        xf.run([extrafs, "gc", store, "--grace", "0"])
        xf.run([extrafs, "verify", store], timeout=300)
        m = mount(store)
        check_image(m.path, new, tag)
        m.unmount()
    print(f"6 rounds: {races}")
    assert races["publish refused"] >= 1 and races["gc refused"] >= 1, f"the writers never met: {races}"
    m = mount(store)
    for tag in ("a:1", "b:1"):
        check_image(m.path, three_images, tag)
    assert set(json.loads((m.path / "image" / "overlay2" / "repositories.json").read_text())["Repositories"]) == \
        {t.split(":")[0] for t in published}


def test_a_hermes_store_copied_from_a_data_root_shrinks_the_same_way(extrafs, tmp, three_images, dockerd, mount):
    """The images loaded into a real dockerd, its image/ and overlay2/ copied with cp -a (a
    Hermes-style store), indexed; rm c:1; `extrafs index` again does not take its layer back;
    gc deletes its plain tree and its l/ link; a:1 and b:1 still read right and run."""
    src_root = tmp / "src-root"
    d = dockerd(src_root)
    for tag in ("a:1", "b:1", "c:1"):
        d.docker("load", "-i", three_images.archives[tag], timeout=120)
    d.stop()
    store = tmp / "store"
    store.mkdir()
    for part in ("image", "overlay2"):
        xf.run(["cp", "-a", src_root / part, store / part])
    xf.run([extrafs, "index", store], timeout=300)
    c_top = xf.image_layer_ids(store, "c:1")[1]
    c_link = (store / "overlay2" / c_top / "link").read_text().strip()
    assert (store / "overlay2" / "l" / c_link).is_symlink()
    m = mount(store)  # a host mounted before the rm

    xf.run([extrafs, "rm", "c:1", "--from", store])
    # (The mounted host moves to the new catalog within a second or two: with --grace 0 below, gc
    # would otherwise delete the image/ tree it still reads.)
    xf.wait_until(lambda: '"c"' not in (m.path / "image" / "overlay2" / "repositories.json").read_text(), 10,
                  "the mounted host to load the catalog without c:1")
    again = xf.run([extrafs, "index", store]).stdout
    assert "1 removed by extrafs rm (left for gc)" in again, again
    assert c_top not in catalog_ids(store), "extrafs index took back the layer rm removed"
    assert (store / "overlay2" / c_top / "diff" / "c" / "data").exists(), "rm deleted the plain tree"
    # Within the grace period the plain tree stays.
    xf.run([extrafs, "gc", store])
    assert (store / "overlay2" / c_top / "diff" / "c" / "data").exists()
    out = xf.run([extrafs, "gc", store, "--grace", "0"]).stdout
    assert "deleted overlay2 layer directories" in out and "deleted overlay2/l links" in out, out
    assert not (store / "overlay2" / c_top).exists()
    assert not (store / "overlay2" / "l" / c_link).exists()
    again = xf.run([extrafs, "index", store]).stdout
    assert "removed by extrafs rm" not in again and c_top not in catalog_ids(store), again
    xf.run([extrafs, "verify", store], timeout=120)

    # The host mounted before, and a fresh one, serve a:1 and b:1; docker runs them.
    m2 = mount(store)
    for mnt in (m.path, m2.path):
        for tag in ("a:1", "b:1"):
            check_image(mnt, three_images, tag)
    root = tmp / "dataroot"
    (root / "overlay2" / "l").mkdir(parents=True)
    xf.run([extrafs, "docker", "attach", "a:1", "b:1", "--mount", m2.path, "--data-root", root], timeout=120)
    d2 = dockerd(root)
    assert d2.docker("run", "--rm", "--network", "none", "b:1", "/bin/busybox", "cat", "/b/marker").stdout == "b:1\n"
