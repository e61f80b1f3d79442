#!/usr/bin/env bash
# The registry path on a loopback CNCF distribution registry (Debian's
# docker-registry, started here), with the packed layout, each figure with
# its baseline from the same run:
#   - push of 100,000 sources; re-push unchanged (goal: zero uploads, <= 0.1x
#     the push); re-push with 1% of the files changed (goal: <= 5% of the bytes)
#   - mount ready from a fresh cache (goal < 2 s); `find` of every file: blob
#     requests (goal 0); daemon RSS after it (goal < 150 MB)
#   - cold read of one file, median over 200 random files (goal < 3 ms)
#   - cold read of 1% of the files vs a full `pull` (goal >= 20x faster), by
#     one reader and by 8 at once
#   - cold `grep -r` over one directory: requests and time, vs the local store
#   - full cold read with --prefetch (mount, prefetch, read every file) vs a
#     full `pull` (goal <= 1.5x)
#   - the peer, casync, on the same tree, its store served over loopback HTTP:
#     lazy mount (ready, `find` requests, 1% cold reads) and `extract` vs pull
#
#   scripts/bench-registry.sh [SOURCES]     (default 100000; root, for the mount)
source "$(dirname "$0")/common.sh"
n="${1:-100000}"
export XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config" SOURCE_DATE_EPOCH=1748345600
ms() { local start=$(date +%s%N); "$@" >/dev/null || { echo "failed: $*" >&2; kill $$; }; echo $((($(date +%s%N) - start) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The registry: its own root and port; its access log counts requests.
port=$(free_port)
registry_config "$work/registry" "$port"
docker-registry serve "$work/registry/config.yml" >"$work/registry/access.log" 2>"$work/registry/registry.log" &
registry=$!
mnt="$work/mnt"; mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && "$bin" -q unmount "$mnt"; kill $registry; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$port/v2/" >/dev/null; do kill -0 $registry; sleep 0.05; done
remote=(--remote "http://127.0.0.1:$port" --scope bench/registry)
requests() { grep -c "\"$1 /v2/mache/bench/registry/$2" "$work/registry/access.log" || true; }
# Each cold run gets a cache directory of its own: deleting one of 100,000
# files would slow ext4's file creation for the runs after it.
caches=0
fresh_cache() { caches=$((caches + 1)); export XDG_CACHE_HOME="$work/cache-$caches"; }
mount_fresh() { "$bin" -q mount --daemon "${remote[@]}" "$mnt"; }
# Unmounts, then waits for the daemon to exit (a prefetch stops between batches).
unmount() {
  local daemons
  daemons=$(pgrep -f "mount .*$mnt" || true)
  "$bin" -q unmount "$mnt"
  for pid in $daemons; do while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done; done
}

python3 scripts/make-sample-db.py --synthetic "$n" "$work/synth.db" --write-tree "$work/tree" 2>/dev/null
push_json() { "$bin" -q push --db "$work/synth.db" "$work/local" "${remote[@]}" --json; }
start=$(date +%s%N); first=$(push_json); push_ms=$((($(date +%s%N) - start) / 1000000))
first_bytes=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["remote"]["uploaded_bytes"])' "$first")
uploads=$(requests POST blobs/uploads)
start=$(date +%s%N); push_json >/dev/null; repush_ms=$((($(date +%s%N) - start) / 1000000))
repush_uploads=$(($(requests POST blobs/uploads) - uploads))
echo "push, $n sources          $push_ms ms, $(python3 -c "print(round($first_bytes/1e6,1))") MB uploaded (packed)"
echo "re-push unchanged         $repush_ms ms, $repush_uploads uploads   baseline: the push; $(python3 -c "print(f'{$repush_ms/$push_ms:.2f}')")x (goal 0 uploads, <= 0.1x)"

# Mount ready and find, from a fresh cache.
gets=$(requests GET blobs/)
fresh_cache; ready=$(ms mount_fresh)
found=$(find "$mnt/sources" -type f | wc -l)
find_gets=$(($(requests GET blobs/) - gets))
pid=$(pgrep -f "mount.*$mnt" | head -1)
rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
echo "mount ready               $ready ms (goal < 2000); find listed $found files with $((find_gets - 2)) chunk requests (2 more: lockfile, pack index); daemon RSS $rss MB (goal < 150)"

# Cold reads of single files, and of 1% of the files.
(cd "$work/tree" && find . -type f | sed 's|^\./||' | shuf -n $((n / 100)) --random-source=<(yes)) >"$work/sample.txt"
unmount; fresh_cache; mount_fresh
gets=$(requests GET blobs/)
read -r one_median _ < <(python3 scripts/readtime.py "$mnt/sources" "$work/sample.txt" 200 1)
one_gets=$(($(requests GET blobs/) - gets))
echo "cold read of one file     median $one_median ms over 200 files, $one_gets range requests (goal < 3 ms)"
unmount; fresh_cache; mount_fresh
read -r _ percent_ms < <(python3 scripts/readtime.py "$mnt/sources" "$work/sample.txt" $((n / 100)) 1)
unmount; fresh_cache; mount_fresh
read -r _ percent8_ms < <(python3 scripts/readtime.py "$mnt/sources" "$work/sample.txt" $((n / 100)) 8)
unmount
# A full pull (the baseline), a full cold read with --prefetch (mount, then
# read every file at once: the reads join the prefetch's fetches), and the
# prefetch alone to its end (every chunk in the disk cache, mache.db built):
# three alternating rounds, medians. (The status is polled with grep: a
# Python per poll would take a core from what is measured.)
prefetched() { grep -q '"finished": true' "$mnt/.cachefs/status" && grep -q '"state": "ready"' "$mnt/.cachefs/status"; }
full_read() {
  "$bin" -q mount --daemon --prefetch "${remote[@]}" "$mnt"
  tar -C "$mnt/sources" -cf - . | wc -c
}
prefetch_done() {
  "$bin" -q mount --daemon --prefetch "${remote[@]}" "$mnt"
  until prefetched; do sleep 0.05; done
}
pulls=(); reads=(); dones=()
for round in 1 2 3; do
  fresh_cache; pulls+=("$(ms "$bin" -q pull --out-db "$work/pulled.db" "${remote[@]}")"); rm -f "$work/pulled.db"
  fresh_cache; reads+=("$(ms full_read)"); unmount
  fresh_cache; dones+=("$(ms prefetch_done)"); unmount
done
pull_ms=$(printf '%s\n' "${pulls[@]}" | median)
prefetch_ms=$(printf '%s\n' "${reads[@]}" | median)
prefetch_done_ms=$(printf '%s\n' "${dones[@]}" | median)
ratio() { python3 -c "print(f'{$1/max($2,1):.1f}')"; }
echo "read 1% cold, 1 reader    $percent_ms ms ($((n / 100)) files)   baseline: full pull $pull_ms ms; $(ratio "$pull_ms" "$percent_ms")x faster (goal >= 20x)"
echo "read 1% cold, 8 readers   $percent8_ms ms   $(ratio "$pull_ms" "$percent8_ms")x faster than the pull"
# The registry's own floor for those reads: the same chunks' Range GETs sent
# straight to it (keep-alive connections, no FUSE, no verification).
"$bin" -q mount --daemon "${remote[@]}" "$mnt"
cat >"$work/floor.py" <<'PY'
import http.client, json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
port, repo, root, listing, limit, readers = sys.argv[1:7]
limit, readers = int(limit), int(readers)
def get(conn, path, headers={}):
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    return response.read()
conn = http.client.HTTPConnection("127.0.0.1", int(port))
manifest = json.loads(get(conn, f"/v2/{repo}/manifests/latest", {"Accept": "application/vnd.oci.image.manifest.v1+json"}))
index_layer = [l for l in manifest["layers"] if "packindex" in l["mediaType"]][0]
index = json.loads(get(conn, f"/v2/{repo}/blobs/{index_layer['digest']}"))
where = {c[0]: (index["packs"][c[1]], c[2], c[3]) for c in index["chunks"]}
paths = [p for p in open(listing).read().split("\n")[:limit] if p]
wanted = [where[os.getxattr(f"{root}/{p}", "user.mache.chunk_hash").decode()] for p in paths]
local = __import__("threading").local()
def fetch(w):
    if not hasattr(local, "conn"):
        local.conn = http.client.HTTPConnection("127.0.0.1", int(port))
    pack, offset, length = w
    get(local.conn, f"/v2/{repo}/blobs/{pack}", {"Range": f"bytes={offset}-{offset + length - 1}"})
start = time.perf_counter()
with ThreadPoolExecutor(readers) as pool:
    list(pool.map(fetch, wanted))
print(f"{(time.perf_counter() - start) * 1000:.0f}")
PY
floor() { python3 "$work/floor.py" "$port" mache/bench/registry "$mnt/sources" "$work/sample.txt" $((n / 100)) "$1"; }
floor1=$(floor 1); floor8=$(floor 8)
unmount
echo "registry floor            the same $((n / 100)) Range GETs sent straight to the registry: $floor1 ms one at a time, $floor8 ms 8 at once (best case for any lazy client; pull/20 = $((pull_ms / 20)) ms)"

echo "full cold read, prefetch  $prefetch_ms ms (mount --prefetch, then tar of every file; runs ${reads[*]})   baseline: full pull $pull_ms ms (runs ${pulls[*]}); $(python3 -c "print(f'{$prefetch_ms/$pull_ms:.2f}')")x (goal <= 1.5x)"
echo "prefetch to its end       $prefetch_done_ms ms (every chunk in the disk cache, mache.db built; runs ${dones[*]})   $(python3 -c "print(f'{$prefetch_done_ms/$pull_ms:.2f}')")x the pull"

# grep -r over the largest directory, cold, vs the local store.
dir=$(cd "$work/tree" && find . -mindepth 1 -maxdepth 3 -type d -exec sh -c 'echo "$(find "$1" -maxdepth 1 -type f | wc -l) $1"' _ {} \; | sort -n | tail -1 | cut -d' ' -f2-)
files=$(find "$work/tree/$dir" -type f | wc -l)
fresh_cache; mount_fresh
gets=$(requests GET blobs/)
grep_ms=$(ms grep -r -c synthetic "$mnt/sources/$dir")
grep_gets=$(($(requests GET blobs/) - gets))
unmount
"$bin" -q mount --daemon "$work/local" "$mnt"
local_ms=$(ms grep -r -c synthetic "$mnt/sources/$dir")
unmount
echo "grep -r, $files files      $grep_ms ms with $grep_gets requests   baseline: local store $local_ms ms"

# 1% of the files changed.
sqlite3 "$work/synth.db" "UPDATE _source SET content = CAST(content || x'0a' AS BLOB) WHERE rowid % 100 = 0"
changed=$(push_json)
changed_bytes=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["remote"]["uploaded_bytes"])' "$changed")
echo "re-push, 1% changed       $(python3 -c "print(round($changed_bytes/1e6,2))") MB uploaded   baseline: first push $(python3 -c "print(round($first_bytes/1e6,1))") MB; $(python3 -c "print(f'{100*$changed_bytes/$first_bytes:.1f}')")% (goal <= 5%)"

# The peer: casync on the same tree, its chunk store and index served over
# loopback HTTP by Python's http.server; a lazy `casync mount` of it.
mkdir -p "$work/casync/www" "$work/casync/mnt"
start=$(date +%s%N)
casync make --store="$work/casync/www/store.castr" "$work/casync/www/index.caidx" "$work/tree" >/dev/null
casync_make_ms=$((($(date +%s%N) - start) / 1000000))
cas_port=$(free_port)
(cd "$work/casync/www" && exec python3 -m http.server "$cas_port" --bind 127.0.0.1) >"$work/casync/access.log" 2>&1 &
http_server=$!
cas_mnt="$work/casync/mnt"
trap 'mountpoint -q "$cas_mnt" && fusermount3 -u "$cas_mnt"; kill $http_server; mountpoint -q "$mnt" && "$bin" -q unmount "$mnt"; kill $registry; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$cas_port/index.caidx" -o /dev/null; do kill -0 $http_server; sleep 0.05; done
cas_url="http://127.0.0.1:$cas_port"
cas_requests() { grep -c '"GET /store.castr/' "$work/casync/access.log" || true; }
cas_mount() {
  casync mount --store="$cas_url/store.castr" "$cas_url/index.caidx" "$cas_mnt" >/dev/null 2>&1 &
  until mountpoint -q "$cas_mnt"; do sleep 0.01; done
}
cas_unmount() {
  fusermount3 -u "$cas_mnt"
  while pgrep -f "casync mount .*$cas_mnt" >/dev/null; do sleep 0.01; done
}
ready=$(ms cas_mount)
cas_at_mount=$(cas_requests)
find "$cas_mnt" -type f | wc -l >/dev/null
cas_find=$(($(cas_requests) - cas_at_mount))
cas_unmount
echo "casync: make $casync_make_ms ms, store $(du -sm "$work/casync/www/store.castr" | cut -f1) MB of $(find "$work/casync/www/store.castr" -type f | wc -l) chunks; mount ready $ready ms ($cas_at_mount chunk requests); find made $cas_find chunk requests"
before=$(cas_requests)
cas_mount
read -r cas_median _ < <(python3 scripts/readtime.py "$cas_mnt" "$work/sample.txt" 200 1)
cas_one=$(($(cas_requests) - before))
cas_unmount
cas_mount
read -r _ cas_percent_ms < <(python3 scripts/readtime.py "$cas_mnt" "$work/sample.txt" $((n / 100)) 1)
cas_unmount
cas_mount
read -r _ cas_percent8_ms < <(python3 scripts/readtime.py "$cas_mnt" "$work/sample.txt" $((n / 100)) 8)
cas_unmount
echo "casync: cold read of one file median $cas_median ms ($cas_one chunk requests for 200 files); 1% cold: $cas_percent_ms ms by 1 reader, $cas_percent8_ms ms by 8   ours: $percent_ms / $percent8_ms ms"
rm -rf "$work/casync/out"
extract_ms=$(ms casync extract --store="$cas_url/store.castr" "$cas_url/index.caidx" "$work/casync/out")
echo "casync extract            $extract_ms ms   ours: full pull $pull_ms ms (a db of sources and ASTs)"
