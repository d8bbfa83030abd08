#!/usr/bin/env python3
"""make_image_meta.py STORE NAME:TAG CACHE_ID... : writes docker image metadata for layers that
already exist as STORE/overlay2/<cache-id> (base first): an image config whose rootfs.diff_ids
are made-up digests, the layerdb chain (diff, size, cache-id, parent) and repositories.json, the
way dockerd lays them out. For tests of commands that read image metadata."""
import hashlib, json, os, sys

store, ref, ids = sys.argv[1], sys.argv[2], sys.argv[3:]
base = os.path.join(store, "image", "overlay2")
diffs = ["sha256:" + hashlib.sha256(("layer-" + i).encode()).hexdigest() for i in ids]
chains = []
for d in diffs:
    chains.append(d if not chains else "sha256:" + hashlib.sha256((chains[-1] + " " + d).encode()).hexdigest())
for i, (cid, d, c) in enumerate(zip(ids, diffs, chains)):
    ldir = os.path.join(base, "layerdb", "sha256", c[7:])
    os.makedirs(ldir, exist_ok=True)
    open(os.path.join(ldir, "diff"), "w").write(d)
    open(os.path.join(ldir, "cache-id"), "w").write(cid)
    open(os.path.join(ldir, "size"), "w").write("0")
    if i:
        open(os.path.join(ldir, "parent"), "w").write(chains[i - 1])
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                     "rootfs": {"type": "layers", "diff_ids": diffs}}, separators=(",", ":")).encode()
image_id = hashlib.sha256(config).hexdigest()
cdir = os.path.join(base, "imagedb", "content", "sha256")
os.makedirs(cdir, exist_ok=True)
open(os.path.join(cdir, image_id), "wb").write(config)
name = ref.rsplit(":", 1)[0]
repos_path = os.path.join(base, "repositories.json")
repos = json.load(open(repos_path)) if os.path.exists(repos_path) else {"Repositories": {}}
repos.setdefault("Repositories", {}).setdefault(name, {})[ref] = "sha256:" + image_id
json.dump(repos, open(repos_path, "w"))
print("sha256:" + image_id)
