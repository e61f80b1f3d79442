#!/usr/bin/env bash
# The registry path on a loopback CNCF distribution registry (Debian's
# docker-registry, started here), with the packed layout, each figure with
# its baseline from the same run:
#   - push of 100,000 sources; re-push unchanged (goal: zero uploads, <= 0.1x
#     the push); re-push with 1% of the files changed (goal: <= 5% of the bytes)
#   - mount ready from a fresh cache (goal < 2 s); `find` of every file: blob
#     requests (goal 0); daemon RSS after it (goal < 150 MB)
#   - cold read of one file, median over 200 random files (goal < 3 ms)
#   - cold read of 1% of the files vs a full `pull` (goal >= 20x faster)
#   - cold `grep -r` over one directory: requests and time, vs the local store
#
#   scripts/bench-registry.sh [SOURCES]     (default 100000; root, for the mount)
source "$(dirname "$0")/common.sh"
n="${1:-100000}"
export XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config" SOURCE_DATE_EPOCH=1748345600
ms() { local start=$(date +%s%N); "$@" >/dev/null || { echo "failed: $*" >&2; kill $$; }; echo $((($(date +%s%N) - start) / 1000000)); }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# The registry: its own root and port; its access log counts requests.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/registry"
cat >"$work/registry/config.yml" <<YML
version: 0.1
log: {level: info, formatter: text}
storage: {filesystem: {rootdirectory: $work/registry/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$port, secret: bench}
YML
docker-registry serve "$work/registry/config.yml" >"$work/registry/access.log" 2>"$work/registry/registry.log" &
registry=$!
mnt="$work/mnt"; mkdir -p "$mnt"
trap 'mountpoint -q "$mnt" && "$bin" -q unmount "$mnt"; kill $registry; rm -rf "$work"' EXIT
until curl -sf "http://127.0.0.1:$port/v2/" >/dev/null; do kill -0 $registry; sleep 0.05; done
remote=(--remote "http://127.0.0.1:$port" --scope bench/registry)
requests() { grep -c "\"$1 /v2/mache/bench/registry/$2" "$work/registry/access.log" || true; }
mount_fresh() { rm -rf "$XDG_CACHE_HOME"; "$bin" -q mount --daemon "${remote[@]}" "$mnt"; }
unmount() { "$bin" -q unmount "$mnt"; }

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
ready=$(ms mount_fresh)
found=$(find "$mnt/sources" -type f | wc -l)
find_gets=$(($(requests GET blobs/) - gets))
pid=$(pgrep -f "mount.*$mnt" | head -1)
rss=$(awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status")
echo "mount ready               $ready ms (goal < 2000); find listed $found files with $((find_gets - 2)) chunk requests (2 more: lockfile, pack index); daemon RSS $rss MB (goal < 150)"

# Cold reads of single files, and of 1% of the files.
(cd "$work/tree" && find . -type f | sed 's|^\./||' | shuf -n $((n / 100)) --random-source=<(yes)) >"$work/sample.txt"
cat >"$work/readtime.py" <<'PY'
import statistics, sys, time
root, listing, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for path in open(listing).read().split('\n')[:limit]:
    if path:
        start = time.perf_counter()
        with open(f"{root}/{path}", "rb") as f:
            f.read()
        times.append((time.perf_counter() - start) * 1000)
print(f"{statistics.median(times):.2f} {sum(times):.0f}")
PY
unmount; mount_fresh
gets=$(requests GET blobs/)
read -r one_median _ < <(python3 "$work/readtime.py" "$mnt/sources" "$work/sample.txt" 200)
one_gets=$(($(requests GET blobs/) - gets))
echo "cold read of one file     median $one_median ms over 200 files, $one_gets range requests (goal < 3 ms)"
unmount; mount_fresh
start=$(date +%s%N); python3 "$work/readtime.py" "$mnt/sources" "$work/sample.txt" $((n / 100)) >/dev/null
percent_ms=$((($(date +%s%N) - start) / 1000000))
unmount
rm -rf "$XDG_CACHE_HOME"
pull_ms=$(ms "$bin" -q pull --out-db "$work/pulled.db" "${remote[@]}")
echo "read 1% cold              $percent_ms ms ($((n / 100)) files)   baseline: full pull $pull_ms ms; $(python3 -c "print(f'{$pull_ms/max($percent_ms,1):.1f}')")x faster (goal >= 20x)"

# grep -r over the largest directory, cold, vs the local store.
dir=$(cd "$work/tree" && find . -mindepth 1 -maxdepth 3 -type d -exec sh -c 'echo "$(find "$1" -maxdepth 1 -type f | wc -l) $1"' _ {} \; | sort -n | tail -1 | cut -d' ' -f2-)
files=$(find "$work/tree/$dir" -type f | wc -l)
mount_fresh
gets=$(requests GET blobs/)
grep_ms=$(ms grep -r -c synthetic "$mnt/sources/$dir")
grep_gets=$(($(requests GET blobs/) - gets))
unmount
"$bin" -q mount --daemon --store "$work/local" "$mnt"
local_ms=$(ms grep -r -c synthetic "$mnt/sources/$dir")
unmount
echo "grep -r, $files files      $grep_ms ms with $grep_gets requests   baseline: local store $local_ms ms"

# 1% of the files changed.
sqlite3 "$work/synth.db" "UPDATE _source SET content = CAST(content || x'0a' AS BLOB) WHERE rowid % 100 = 0"
changed=$(push_json)
changed_bytes=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["remote"]["uploaded_bytes"])' "$changed")
echo "re-push, 1% changed       $(python3 -c "print(round($changed_bytes/1e6,2))") MB uploaded   baseline: first push $(python3 -c "print(round($first_bytes/1e6,1))") MB; $(python3 -c "print(f'{100*$changed_bytes/$first_bytes:.1f}')")% (goal <= 5%)"
