#!/usr/bin/env bash
# serve and store upkeep, each figure with its baseline from the same run:
#   - pull of a 10,000-source bundle through `serve` (fresh disk cache each
#     run) vs the same pull from the local store it serves, medians of 3.
#     (The issue's other baseline, the CNCF distribution registry, cannot
#     hold this bundle: it refuses BLAKE3 digests behind sha256:.)
#   - push of a 100,000-source bundle through `serve` (one layer per
#     source: 100,000 HEADs and uploads) vs the local push alone.
#     Then, as root, that bundle mounted from serve: mount ready, and the
#     chunks a `find` of every file fetches (goal 0).
#   - gc of a store of 100,000 unreachable objects: time and peak memory,
#     vs a gc with nothing to remove (the mark phase alone).
#
#   [BEFORE_BIN=<older build>] scripts/bench-serve.sh [WORK_DIR]
# WORK_DIR (default: a temporary directory) keeps the generated dbs.
# BEFORE_BIN adds, in the same run, the pull through that build's `serve`
# (the client is this build), to tell a change in serve from one in pull.
#
# Every fresh disk cache is a new directory, and nothing is deleted until
# the end: on an ext4 without a journal, creating files within minutes of
# deleting many scans past every recently deleted inode, and a pull into a
# cache `rm -rf`'d just before ran 2-3x slower than into a new one.
source "$(dirname "$0")/common.sh"
[ -n "${1:-}" ] && work="$1" && mkdir -p "$work"
export XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config" SOURCE_DATE_EPOCH=1748345600

ms() { # command... -> milliseconds on stdout, the command's output discarded; a failure ends the script
  local start=$(date +%s%N)
  "$@" >/dev/null || { echo "failed: $*" >&2; kill $$; }
  echo $((($(date +%s%N) - start) / 1000000))
}
median() { printf '%s\n' "$@" | sort -n | sed -n "$(((${#@} + 1) / 2))p"; }
# Peak RSS (MB) and milliseconds of one command.
measure() {
  python3 - "$@" <<'PY'
import resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
ms = (time.perf_counter() - start) * 1000
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"{ms:.0f} {rss:.0f}")
PY
}
server=""
start_serve() { # store [binary]: serves it in the background; sets $server and $addr
  : >"$work/serve.out"
  "${2:-$bin}" -q serve "$1" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
  server=$!
  until grep -q listening "$work/serve.out"; do
    kill -0 "$server" || { cat "$work/serve.err" >&2; exit 1; }
    sleep 0.05
  done
  addr=$(sed -n 's|listening on http://||p' "$work/serve.out")
}
stop_serve() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }
trap '[ -n "$server" ] && kill "$server"; rm -rf "$work"' EXIT

for n in 10000 100000; do
  [ -f "$work/synth-$n.db" ] || python3 scripts/make-sample-db.py --synthetic "$n" "$work/synth-$n.db" 2>/dev/null
done

fresh_cache() { caches=$((caches + 1)) && export XDG_CACHE_HOME="$work/cache-$caches"; }
caches=0

# 1. Pull through serve vs from the local store.
"$bin" -q push --db "$work/synth-10000.db" "$work/store-10k" >/dev/null
pull_through() { # run number: one pull from $addr into $XDG_CACHE_HOME, in ms
  ms "$bin" -q pull --out-db "$work/served-$1-$caches.db" --remote "http://$addr" --scope bench/pull
}
local_runs=() serve_runs=() before_runs=()
for i in 1 2 3; do
  local_runs+=("$(ms "$bin" -q pull --out-db "$work/local-$i.db" "$work/store-10k")")
  start_serve "$work/store-10k"
  fresh_cache && serve_runs+=("$(pull_through "$i")")
  stop_serve
  if [ -n "${BEFORE_BIN:-}" ]; then
    start_serve "$work/store-10k" "$BEFORE_BIN"
    fresh_cache && before_runs+=("$(pull_through "$i")")
    stop_serve
  fi
done
l=$(median "${local_runs[@]}") r=$(median "${serve_runs[@]}")
echo "pull, 10,000 sources      through serve $r ms (runs: ${serve_runs[*]})   baseline: local store $l ms (${local_runs[*]}); $(python3 -c "print(f'{$r/$l:.2f}')")x"
if [ -n "${BEFORE_BIN:-}" ]; then
  b=$(median "${before_runs[@]}")
  echo "                          through BEFORE_BIN's serve $b ms (runs: ${before_runs[*]}); this serve is $(python3 -c "print(f'{$r/$b:.2f}')")x it"
fi

# 2. Push of 100,000 sources through serve vs the local push alone.
local_push=$(ms "$bin" -q push --db "$work/synth-100000.db" "$work/store-100k-local")
start_serve "$work/served-100k"
remote_push=$(ms "$bin" -q push --db "$work/synth-100000.db" "$work/store-100k" --remote "http://$addr" --scope bench/push)
# ... and mounts from it (root only): ready after the manifest, lockfile and
# sizes index; `find` lists every file without a chunk.
if [ "$(id -u)" = 0 ]; then
  mnt="$work/mnt" && mkdir -p "$mnt"
  fresh_cache
  ready=$(ms "$bin" -q mount --daemon --remote "http://$addr" --scope bench/push "$mnt")
  found=$(find "$mnt/sources" -type f | wc -l)
  fetched=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["chunks_fetched"])' "$mnt/.cachefs/status")
  "$bin" -q unmount "$mnt"
  echo "mount, 100,000 sources    ready in $ready ms from serve; find listed $found files with $fetched chunk fetches"
fi
stop_serve
echo "push, 100,000 sources     through serve $remote_push ms (local push + 100,002 HEADs and uploads)   baseline: local push $local_push ms; $(python3 -c "print(f'{$remote_push/$local_push:.2f}')")x"

# 3. gc of 100,000 objects: nothing to remove, then everything.
store="$work/store-100k-local"
read -r mark_ms mark_mb < <(measure "$bin" -q gc "$store" --grace 0)
"$bin" -q push --db "$work/synth-10000.db" "$store" >/dev/null   # latest moves to a small bundle
objects=$(find "$store/objects" -type f | wc -l)
read -r sweep_ms sweep_mb < <(measure "$bin" -q gc "$store" --grace 0)
left=$(find "$store/objects" -type f | wc -l)
echo "gc, $objects objects          removed $((objects - left)) in $sweep_ms ms, peak RSS $sweep_mb MB   baseline: nothing to remove $mark_ms ms, $mark_mb MB"
