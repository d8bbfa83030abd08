#!/usr/bin/env python3
"""live_publish.py: readers and checks for tests that publish into a store under running mounts.

  live_publish.py files OUT MNT STORE_IMAGE_DIR [CACHE_ID SRCDIR]...
      Writes the list of files a reader loops over (one mount path per line): every regular file
      of the store's image/ tree (as MNT/image/...) and every regular file of each layer
      (MNT/overlay2/CACHE_ID/diff/..., whose bytes are those of SRCDIR).
  live_publish.py read LIST STOP OUT LIMIT_S
      Reads every file of LIST (shuffled, whole, page cache dropped after each read so that the
      next read reaches the daemon) again and again until file STOP exists (or LIMIT_S seconds,
      then exits 1). Writes OUT (JSON): reads, failures (path and error), and for each path the
      sha256 of each distinct content read with its count.
  live_publish.py allowed OUT IMAGE_BEFORE IMAGE_AFTER MNT [CACHE_ID SRCDIR]...
      The contents a reader may see (JSON: mount path -> sha256 list): an image/ file as it was
      before or after the publish (copies of the store's image/ tree), a layer file as its source.
  live_publish.py check ALLOWED OUT...
      Fails (exit 1) unless every reader's output exists, has reads and no failures, and every
      content read is allowed; prints one line per problem and a summary.
  live_publish.py visible LIMIT_S MNT TAG CONFIG_ID CACHE_ID SRCDIR
      Polls (every 20 ms) until MNT/image/overlay2/repositories.json lists TAG, the image config
      CONFIG_ID is in MNT/image/overlay2/imagedb, and every file of SRCDIR reads identical under
      MNT/overlay2/CACHE_ID/diff; prints the seconds taken, or fails after LIMIT_S.
"""
import hashlib
import json
import os
import random
import sys
import time


def sha_of(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        h = hashlib.sha256()
        while True:
            b = os.read(fd, 1 << 20)
            if not b:
                break
            h.update(b)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError:
            pass
        return h.hexdigest()
    finally:
        os.close(fd)


def walk_files(root):
    for dp, dns, fns in os.walk(root):
        dns.sort()
        for n in sorted(fns):
            p = os.path.join(dp, n)
            if os.path.isfile(p) and not os.path.islink(p):
                yield os.path.relpath(p, root)


def layer_pairs(args):
    if len(args) % 2:
        sys.exit("CACHE_ID SRCDIR come in pairs")
    return [(args[i], args[i + 1]) for i in range(0, len(args), 2)]


def cmd_files(out, mnt, image_dir, *layers):
    paths = [os.path.join(mnt, "image", r) for r in walk_files(image_dir)]
    for cid, src in layer_pairs(layers):
        paths += [os.path.join(mnt, "overlay2", cid, "diff", r) for r in walk_files(src)]
    if not paths:
        sys.exit("no files to read")
    with open(out, "w") as f:
        f.write("".join(p + "\n" for p in paths))


def cmd_read(listfile, stop, out, limit):
    paths = [l.rstrip("\n") for l in open(listfile) if l.strip()]
    rng = random.Random(os.getpid())
    seen, failures, reads = {}, [], 0
    end = time.monotonic() + float(limit)
    timed_out = False
    while not os.path.exists(stop):
        if time.monotonic() > end:
            timed_out = True
            break
        rng.shuffle(paths)
        for p in paths:
            try:
                d = sha_of(p)
            except OSError as e:
                failures.append("%s: %s" % (p, os.strerror(e.errno) if e.errno else e))
                continue
            reads += 1
            c = seen.setdefault(p, {})
            c[d] = c.get(d, 0) + 1
    with open(out, "w") as f:
        json.dump({"reads": reads, "failures": failures[:100], "failed": len(failures), "seen": seen,
                   "timed_out": timed_out}, f)
    sys.exit(1 if timed_out else 0)


def cmd_allowed(out, before, after, mnt, *layers):
    allowed = {}
    for tree in (before, after):
        for r in walk_files(tree):
            allowed.setdefault(os.path.join(mnt, "image", r), set()).add(sha_of(os.path.join(tree, r)))
    for cid, src in layer_pairs(layers):
        for r in walk_files(src):
            allowed.setdefault(os.path.join(mnt, "overlay2", cid, "diff", r), set()).add(sha_of(os.path.join(src, r)))
    with open(out, "w") as f:
        json.dump({k: sorted(v) for k, v in allowed.items()}, f)


def cmd_check(allowed_file, *outs):
    allowed = json.load(open(allowed_file))
    problems, total = [], 0
    for o in outs:
        try:
            r = json.load(open(o))
        except (OSError, ValueError) as e:
            problems.append("%s: no reader output (%s)" % (o, e))
            continue
        total += r["reads"]
        if r["reads"] == 0:
            problems.append("%s: the reader read nothing" % o)
        if r["timed_out"]:
            problems.append("%s: the reader was never told to stop" % o)
        if r["failed"]:
            problems.append("%s: %d failed reads, first: %s" % (o, r["failed"], "; ".join(r["failures"][:3])))
        for p, digests in r["seen"].items():
            for d, n in digests.items():
                if d not in allowed.get(p, []):
                    problems.append("%s: %s read %d time(s) with content %s.. that is neither its old nor "
                                    "its new content" % (o, p, n, d[:16]))
    for p in problems:
        print(p)
    print("%d readers, %d reads, %d problems" % (len(outs), total, len(problems)))
    sys.exit(1 if problems else 0)


def cmd_visible(limit, mnt, tag, config_id, cid, src):
    t0 = time.monotonic()
    want = [(os.path.join(mnt, "overlay2", cid, "diff", r), sha_of(os.path.join(src, r))) for r in walk_files(src)]
    repo = os.path.join(mnt, "image/overlay2/repositories.json")
    config = os.path.join(mnt, "image/overlay2/imagedb/content/sha256", config_id)
    last = "nothing checked yet"
    while time.monotonic() - t0 <= float(limit):
        try:
            name, t = tag.rsplit(":", 1)
            with open(repo) as f:
                repos = json.load(f).get("Repositories", {})
            if tag not in repos.get(name, {}):
                last = "repositories.json does not list " + tag
            elif not os.path.isfile(config):
                last = "no image config " + config_id[:12]
            else:
                bad = [p for p, d in want if sha_of(p) != d]
                if not bad:
                    print("%.2f" % (time.monotonic() - t0))
                    return
                last = "%s reads other bytes than its source" % bad[0]
        except (OSError, ValueError) as e:
            last = str(e)
        time.sleep(0.02)
    print("not visible within %s s: %s" % (limit, last))
    sys.exit(1)


if __name__ == "__main__":
    cmds = {"files": cmd_files, "read": cmd_read, "allowed": cmd_allowed, "check": cmd_check, "visible": cmd_visible}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])
