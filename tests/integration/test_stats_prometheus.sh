#!/bin/bash
# test_stats_prometheus.sh EXTRAFS — `extrafs stats --prometheus` read by a real Prometheus
# text-format parser (python3-prometheus-client), consistent with `--json` (issue 8, item 5).
#
# A packed store with two images sharing a base layer (one:1 = base; two:1 and two:latest =
# base + top), mounted from the local directory; after reading files through the mount:
# every family has HELP and TYPE, counters are extrafs_*_total and equal the --json values, the
# fetch latency histogram is well formed and counts every backend read, the per-layer gauges
# carry cache_id and the image references of each layer, and --json keeps the fields DESIGN.md
# requires.
set -euo pipefail
EXTRAFS=$1
source "$(dirname "$0")/lib.sh"
require_env
# The parser comes from Debian's python3-prometheus-client (scripts/setup), so the system python.
PY=/usr/bin/python3
$PY -c 'import prometheus_client.parser' 2>/dev/null \
  || { echo "FATAL: $PY cannot import prometheus_client (install python3-prometheus-client)"; exit 1; }
setup_tmp
# This test checks the mode without FUSE passthrough, where files open without an OPEN round trip.
export EXTRAFS_PASSTHROUGH=0

MiB=$((1024 * 1024))
step "a packed store: one:1 = base, two:1/two:latest = base + top"
mkdir -p "$T/base/data" "$T/top/app" "$T/mnt"
head -c $((3 * MiB + 5)) /dev/urandom >"$T/base/data/blob"
echo base >"$T/base/data/name"
head -c $((2 * MiB)) /dev/urandom >"$T/top/app/main"
seq 1 100000 >"$T/top/app/text"
python3 "$HERE/make_save_archive.py" "$T/one.tar" one:1 "$T/base"
python3 "$HERE/make_save_archive.py" "$T/two.tar" two:1,two:latest "$T/base" "$T/top"
for a in one two; do
  "$EXTRAFS" publish --archive "$T/$a.tar" --to "$T/store" >"$T/publish.out" 2>&1 \
    || die "publish $a.tar failed: $(cat "$T/publish.out")"
done
pass "published"

step "mount and read through it"
mount_extrafs "$T/store" "$T/mnt"
BASE= TOP=
for d in "$T"/mnt/overlay2/*/; do
  id=$(basename "$d")
  [[ $id == l ]] && continue
  if [[ -e $d/lower ]]; then TOP=$id; else BASE=$id; fi
done
[[ -n $BASE && -n $TOP ]] || die "cannot tell the base and top layers apart: $(ls "$T/mnt/overlay2")"
cmp -s "$T/base/data/blob" "$T/mnt/overlay2/$BASE/diff/data/blob" && pass "base blob reads right" || fail "base blob differs"
cmp -s "$T/top/app/main" "$T/mnt/overlay2/$TOP/diff/app/main" && pass "top main reads right" || fail "top main differs"
head -c 1000 "$T/mnt/overlay2/$TOP/diff/app/text" >/dev/null
# Opens cost the daemon nothing without passthrough (EXTRAFS_PASSTHROUGH=0 for this mount, set at
# the top; test_passthrough.sh covers the other mode): after the first OPEN (answered "not
# needed") the kernel opens files by itself, so open_requests stays at 1 (below) after these 40 opens.
for _ in $(seq 1 20); do
  cat "$T/mnt/overlay2/$TOP/diff/app/main" "$T/mnt/overlay2/$BASE/diff/data/blob" >/dev/null || fail "re-reading failed"
done
# Directories too: after the first OPENDIR (answered "not needed") the kernel opens and lists
# them by itself, so these walks leave opendir_requests at 1 (below).
for _ in 1 2 3; do
  [[ $(find "$T/mnt" | wc -l) -gt 10 ]] || fail "walking the mount failed"
done

step "stats --json, --prometheus, --json while nothing reads"
ok=0
for _ in $(seq 1 20); do
  "$EXTRAFS" stats "$T/mnt" --json >"$T/j1.json"
  "$EXTRAFS" stats "$T/mnt" --prometheus >"$T/prom.txt"
  "$EXTRAFS" stats "$T/mnt" --json >"$T/j2.json"
  # Readahead may still be finishing: take a triple in which the counters did not move.
  if $PY -c '
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
keys = [k for k, v in a.items() if isinstance(v, int)]
sys.exit(0 if all(a[k] == b[k] for k in keys) and a.get("fetch_seconds") == b.get("fetch_seconds") else 1)' "$T/j1.json" "$T/j2.json"; then
    ok=1
    break
  fi
  sleep 0.5
done
[[ $ok -eq 1 ]] && pass "counters steady across the three calls" || die "counters never steady"
sed -n '1,60{s/^/    /;p}' "$T/prom.txt"  # not piped into head: sed would die of SIGPIPE once the output outgrows it

step "parse and check"
if $PY - "$T/prom.txt" "$T/j1.json" "$BASE" "$TOP" >"$T/check.out" 2>&1 <<'PY'; then
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families

text = open(sys.argv[1]).read()
j = json.load(open(sys.argv[2]))
base, top = sys.argv[3], sys.argv[4]
problems = []
def check(cond, what):
    print(("ok: " if cond else "PROBLEM: ") + what)
    if not cond:
        problems.append(what)

fams = {f.name: f for f in text_string_to_metric_families(text)}
check(len(fams) >= 10, f"{len(fams)} metric families parsed")
# Raw text: every sample's family announced with HELP and TYPE before its first sample.
helped, typed = set(), {}
for line in text.splitlines():
    if line.startswith("# HELP "):
        helped.add(line.split()[2])
    elif line.startswith("# TYPE "):
        typed[line.split()[2]] = line.split()[3]
    elif line and not line.startswith("#"):
        name = line.split("{")[0].split(" ")[0]
        fam = next((n for n in typed if name == n or (typed[n] == "histogram" and name in (n + "_bucket", n + "_sum", n + "_count"))), None)
        if fam is None or fam not in helped:
            problems.append(f"sample {name} without HELP/TYPE")
check(not [p for p in problems if p.startswith("sample")], "every sample follows HELP and TYPE lines of its family")
for f in fams.values():
    check(f.type in ("counter", "gauge", "histogram"), f"{f.name}: type {f.type}")
    check(bool(f.documentation), f"{f.name}: has help text")
    check(f.name.startswith("extrafs_"), f"{f.name}: extrafs_ prefix")
    if f.type == "counter":
        check(all(s.name.endswith("_total") for s in f.samples), f"{f.name}: counter samples named *_total")
for f in fams.values():
    if f.type == "gauge":
        check(not f.name.endswith("_total"), f"{f.name}: a gauge not named *_total")

def one(name):
    for f in fams.values():
        for s in f.samples:
            if s.name == name and not s.labels:
                return s.value
    return None

required = ["bytes_fetched", "bytes_served", "chunks_fetched", "cache_hits", "cache_misses", "cache_bytes",
            "backend_errors", "cache_write_errors", "removed_layer_errors", "layers"]
check(all(k in j for k in required), "--json has every field DESIGN.md requires")
check(all({"cache_id", "bytes_total", "bytes_cached"} <= set(l) for l in j["layers"]), "--json layers have cache_id, bytes_total, bytes_cached")
for k in ["bytes_fetched", "bytes_served", "chunks_fetched", "cache_hits", "cache_misses", "merged_waits",
          "prefetches", "backend_errors", "corrupt_fetches", "cache_write_errors", "removed_layer_errors"]:
    v = one(f"extrafs_{k}_total")
    check(v is not None and v == j[k], f"extrafs_{k}_total {v} == --json {k} {j[k]}")
    check(fams.get(f"extrafs_{k}") is not None and fams[f"extrafs_{k}"].type == "counter", f"extrafs_{k} is a counter family")
check(one("extrafs_cache_bytes") == j["cache_bytes"], f"extrafs_cache_bytes == --json cache_bytes {j['cache_bytes']}")
check(j["bytes_fetched"] >= 5 << 20 and j["bytes_served"] >= 5 << 20, "the reads are counted (>= 5 MiB fetched and served)")
check(j.get("open_requests") == 1, f"open_requests {j.get('open_requests')} after 40+ opens: the kernel opens without asking")
check(one("extrafs_open_requests_total") == j.get("open_requests"), "extrafs_open_requests_total == --json open_requests")
check(j.get("opendir_requests") == 1, f"opendir_requests {j.get('opendir_requests')} after 3 walks: the kernel opens directories without asking")
check(one("extrafs_opendir_requests_total") == j.get("opendir_requests"), "extrafs_opendir_requests_total == --json opendir_requests")

h = fams.get("extrafs_fetch_seconds")
check(h is not None and h.type == "histogram", "extrafs_fetch_seconds is a histogram")
if h is not None:
    buckets = [(float(s.labels["le"]), s.value) for s in h.samples if s.name == "extrafs_fetch_seconds_bucket"]
    count = next(s.value for s in h.samples if s.name == "extrafs_fetch_seconds_count")
    total = next(s.value for s in h.samples if s.name == "extrafs_fetch_seconds_sum")
    les = [b[0] for b in buckets]
    check(len(buckets) >= 8 and les == sorted(les) and math.isinf(les[-1]), f"{len(buckets)} buckets in order, ending at +Inf")
    check(all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:])), "bucket counts are cumulative")
    check(buckets[-1][1] == count, "the +Inf bucket equals _count")
    check(count == j["fetch_seconds"]["count"], f"_count {count} == --json fetch_seconds.count")
    # Every chunk fetched is one backend read measured (failed reads would add to the count).
    check(count >= j["chunks_fetched"] > 0, f"_count {count} >= chunks_fetched {j['chunks_fetched']} > 0")
    check(total > 0, f"_sum {total} > 0")

def layer_samples(name):
    f = fams.get(name)
    return {} if f is None else {s.labels["cache_id"]: s for s in f.samples}
size, cached = layer_samples("extrafs_layer_size_bytes"), layer_samples("extrafs_layer_cached_bytes")
check(fams.get("extrafs_layer_size_bytes") is not None and fams["extrafs_layer_size_bytes"].type == "gauge", "extrafs_layer_size_bytes is a gauge")
check(set(size) == set(cached) == {l["cache_id"] for l in j["layers"]} == {base, top}, "one sample per layer, by cache_id")
for l in j["layers"]:
    cid = l["cache_id"]
    if cid in size:
        check(size[cid].value == l["bytes_total"] and cached[cid].value == l["bytes_cached"], f"{cid[:12]}: values equal --json")
want = {base: "one:1,two:1,two:latest", top: "two:1,two:latest"}
for cid, s in size.items():
    check(s.labels.get("image") == want.get(cid), f"{cid[:12]}: image=\"{s.labels.get('image')}\" (want {want.get(cid)})")
    check(cached[cid].labels.get("image") == want.get(cid), f"{cid[:12]}: the cached gauge has the same image label")
sys.exit(1 if problems else 0)
PY
  sed 's/^/    /' "$T/check.out"
  pass "the Prometheus output parses and agrees with --json"
else
  sed 's/^/    /' "$T/check.out"
  fail "the Prometheus output: $(grep -c PROBLEM "$T/check.out" || true) problem(s) (see above)"
fi

"$EXTRAFS" unmount "$T/mnt" || fail "unmount failed"
finish
