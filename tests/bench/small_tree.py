"""small_tree.py DIR: the small-file case's tree (tests/bench/run.sh `small`, small_ab.sh):
20 directories of 100 files of 1-16 KiB (sizes from a fixed seed, content random), made under DIR."""
import os
import random
import sys

root = sys.argv[1]
rnd = random.Random(9)
for d in range(20):
    os.makedirs(f"{root}/d{d:02}")
    for f in range(100):
        with open(f"{root}/d{d:02}/f{f:03}", "wb") as fh:
            fh.write(os.urandom(rnd.randint(1024, 16384)))
