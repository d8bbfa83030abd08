#!/usr/bin/env python3
"""make_save_archive.py OUT.tar TAG[,TAG...] SRCDIR...

Writes a minimal `docker save` archive of one image without needing dockerd: manifest.json, the
config named by its sha256, and one <digest>/layer.tar per SRCDIR (base first) holding every
file under it. The same SRCDIR gives the same layer bytes, so images built from a shared base
share that layer. For tests that publish a packed store with `extrafs publish --archive`.
"""
import hashlib
import io
import json
import os
import sys
import tarfile


def layer_tar(src):
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        for dp, dns, fns in os.walk(src):
            dns.sort()
            for n in sorted(dns) + sorted(fns):
                p = os.path.join(dp, n)
                info = t.gettarinfo(p, arcname=os.path.relpath(p, src))
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isfile():
                    with open(p, "rb") as f:
                        t.addfile(info, f)
                else:
                    t.addfile(info)
    return layer.getvalue()


def main():
    out, tags, srcs = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
    layers = [layer_tar(src) for src in srcs]
    diff_ids = ["sha256:" + hashlib.sha256(b).hexdigest() for b in layers]
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_names = [hashlib.sha256(d.encode()).hexdigest() + "/layer.tar" for d in diff_ids]
    manifest = json.dumps([{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]).encode()
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in [(config_name, config), *zip(layer_names, layers), ("manifest.json", manifest)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()
