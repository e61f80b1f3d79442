#!/usr/bin/env bash
# Over a simulated slow link: what bytes on the wire cost. A loopback CNCF
# distribution registry (Debian's docker-registry, started here) sits behind
# scripts/linksim.py (a TCP proxy adding an RTT and a bandwidth cap shared by
# all connections), and casync's HTTP store (Python's http.server) behind an
# identical link in the same run. For each link profile (100 Mbit/s with
# 30 ms RTT, 20 Mbit/s with 80 ms RTT) and each bundle, every figure is
# printed with its baselines from the same run: the floor (the bytes that
# crossed the link, counted by the proxy, divided by the bandwidth; plus the
# round trips a figure cannot avoid, where it says so) and casync:
#   - `pull` from a fresh cache: bytes, time, ratio to the floor; casync
#     `extract` behind its link
#   - mount ready, then 1% of the files (at least 20) read cold by one
#     reader, in a random order; casync's lazy mount, the same files
#   - cold `grep -r` of one directory of 100+ files: time and requests (the
#     registry's access log; goal <= 10 round trips). Not for casync: its
#     lazy mount reads its archive from the start to find a path, so this
#     costs it what its 1% reads do
#   - `mount --prefetch` to its end (.cachefs/status says finished, ready)
#   - mount to the first `sqlite3 MNT/mache.db` answer, vs the pull
# Per bundle also: its chunk bytes, `zstd -3` of all its chunks concatenated
# (path order) and of each chunk alone, casync's store, and the bytes a full
# pull downloaded (goal <= 1.2x the zstd -3 figure). The link itself is
# checked first, per profile: `linksim.py --self-check` (50 MB through one
# connection and through 8, the RTT of a small request).
#
# The bundles (real code, not synthetic text): the crate sources under
# ~/.cargo/registry/src, copied here so the tree is fixed, first 5,000 files
# (sorted by path) as raw chunks (`make-sample-db.py --no-ast`); and the
# Python standard library's .py files (site-packages left out), first 400,
# with ASTs. casync gets a tree of the same bytes: each source's chunk under
# the source's path. Everything runs on a fresh ext4 filesystem of its own
# (a loop-mounted image), and each cold run gets a cache directory of its own.
#
#   scripts/bench-wan.sh [--tree DIR [--ast]] [--max-files N] [--quick]   (root, for the mount)
# --tree DIR benchmarks that tree alone (raw chunks; --ast: with ASTs);
# --max-files N takes the first N files of each tree; --quick runs the
# 100 Mbit/s profile only, on the first 2,000 crate files and 100 stdlib
# files (a few minutes; the full run takes about 15).
tree=""
ast=0
max_files=""
quick=0
while (($#)); do
  case "$1" in
    --tree) tree="$(realpath "${2:?--tree needs a directory}")"; shift 2 ;;
    --ast) ast=1; shift ;;
    --max-files) max_files="${2:?--max-files needs a number}"; shift 2 ;;
    --quick) quick=1; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench-wan: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -z "$tree" ] || [ -d "$tree" ] || { echo "bench-wan: not a directory: $tree" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "bench-wan: run as root (it mounts)" >&2; exit 2; }
setup_started=$(date +%s)
source "$(dirname "$0")/common.sh"
shopt -s inherit_errexit
set -E
trap 'echo "bench-wan: failed (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR

# Everything goes on a fresh ext4 filesystem of our own (a loop-mounted
# image): cold runs create a file per chunk in the disk cache, and on a
# filesystem where thousands of files were deleted lately, ext4 scans for
# recently freed inodes on every create (a cold pull of 5,000 crate files
# straight from the registry took 3.5 s on this machine's busy disk, 0.8 s
# on a fresh one).
top="$work"
trap 'mountpoint -q "$top/fs" && umount "$top/fs"; rm -rf "$top"' EXIT
truncate -s 12G "$top/fs.img"
mkfs.ext4 -q -F "$top/fs.img"
mkdir "$top/fs"
mount -o loop "$top/fs.img" "$top/fs"
work="$top/fs"
export XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config" SOURCE_DATE_EPOCH=1748345600
if ((quick)); then profiles=("100mbit 30ms"); else profiles=("100mbit 30ms" "20mbit 80ms"); fi

# Polls COMMAND every 20 ms until it succeeds; fails after SECONDS.
wait_until() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@"; do
    (($(date +%s) < deadline)) || { echo "bench-wan: gave up after waiting for: $*" >&2; return 1; }
    sleep 0.02
  done
}
py() { python3 -c "$@"; }
mb() { py "print(f'{$1/1e6:.1f}')"; }
secs() { py "print(f'{$1/1000:.2f}')"; }

# Everything started here is stopped on exit, whatever the exit.
mnt="$work/mnt"
cas_mnt="$work/cas-mnt"
mkdir -p "$mnt" "$cas_mnt"
registry="" http_server=""
declare -A link_pid=() link_port=()
cas_daemons() { pgrep -f "casync mount .* $cas_mnt\$" || true; }
# Sends PIDs SIGTERM, gives them 10 s to exit, then SIGKILL.
stop_pids() {
  local pid i alive
  (($#)) || return 0
  kill "$@" 2>/dev/null || true
  for ((i = 0; i < 500; i++)); do
    alive=0
    for pid; do [ -e "/proc/$pid" ] && [ "$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null)" != Z ] && alive=1; done
    ((alive)) || break
    sleep 0.02
  done
  kill -9 "$@" 2>/dev/null || true
  wait "$@" 2>/dev/null || true
}
cleanup() {
  set +e
  mountpoint -q "$mnt" && "$bin" -q unmount "$mnt"
  mountpoint -q "$cas_mnt" && fusermount3 -u "$cas_mnt"
  stop_pids $(cas_daemons) "${link_pid[@]}" $http_server $registry
  umount "$top/fs" || umount -l "$top/fs"
  rm -rf "$top"
}
trap cleanup EXIT

# The registry (direct port: pushes do not cross the link) and casync's
# HTTP server (HTTP/1.1, so casync can keep its connections).
reg_port=$(free_port)
registry_config "$work/registry" "$reg_port"
docker-registry serve "$work/registry/config.yml" >"$work/registry/access.log" 2>"$work/registry/registry.log" &
registry=$!
wait_until 30 curl -sf "http://127.0.0.1:$reg_port/v2/" -o /dev/null
mkdir -p "$work/casync"
cas_port=$(free_port)
(cd "$work/casync" && exec python3 -m http.server "$cas_port" --bind 127.0.0.1 --protocol HTTP/1.1) >"$work/casync/access.log" 2>&1 &
http_server=$!
wait_until 30 curl -sf "http://127.0.0.1:$cas_port/" -o /dev/null

# A link: linksim in front of 127.0.0.1:TARGET; sets link_port[NAME].
start_link() {
  local name=$1 target=$2 rate=$3 rtt=$4
  rm -f "$work/link-$name.json"
  python3 scripts/linksim.py --listen 127.0.0.1:0 --to "127.0.0.1:$target" --rate "$rate" --rtt "$rtt" \
    --stats "$work/link-$name.json" >"$work/link-$name.out" 2>"$work/link-$name.err" &
  link_pid[$name]=$!
  wait_until 10 grep -qs '^listening on ' "$work/link-$name.out"
  link_port[$name]=$(awk '/^listening on / { print $3 }' "$work/link-$name.out")
}
stop_link() { stop_pids "${link_pid[$1]}"; unset "link_pid[$1]"; }
# The bytes the link NAME carried from the server so far: SIGUSR1, then
# wait for the stats file to be rewritten (its seq goes up).
seq_above() { [ -f "$1" ] && [ "$(jq .seq "$1")" -gt "$2" ]; }
link_down() {
  local stats="$work/link-$1.json" seq=0
  [ -f "$stats" ] && seq=$(jq .seq "$stats")
  kill -USR1 "${link_pid[$1]}"
  wait_until 10 seq_above "$stats" "$seq"
  jq .bytes_down "$stats"
}

# Each cold run gets a cache directory of its own, kept until the end (no
# deletes while measuring: see above).
caches=0
fresh_cache() {
  caches=$((caches + 1))
  export XDG_CACHE_HOME="$work/cache-$caches"
}
# Unmounts, then waits for the daemon to exit (a prefetch stops between batches).
unmount() {
  local daemons pid
  daemons=$(pgrep -f "mount .*$mnt\$" || true)
  "$bin" -q unmount "$mnt"
  for pid in $daemons; do wait_until 60 eval "! kill -0 $pid 2>/dev/null"; done
}
cas_mount() { # URL NAME
  casync mount --store="$1/$2/store.castr" "$1/$2/index.caidx" "$cas_mnt" >/dev/null 2>"$work/casync/mount.err" &
  wait_until 120 mountpoint -q "$cas_mnt"
}
cas_unmount() {
  fusermount3 -u "$cas_mnt"
  wait_until 60 eval '[ -z "$(cas_daemons)" ]'
}
prefetched() { grep -q '"finished": true' "$mnt/.cachefs/status" && grep -q '"state": "ready"' "$mnt/.cachefs/status"; }

# casync's tree: each source's chunk (from STORE, found by the mount's
# chunk_hash xattr) under the source's path; LISTING gets the paths, sorted.
cat >"$work/chunktree.py" <<'PY'
import os, sys
mnt, store, out, listing = sys.argv[1:5]
paths = []
for dirpath, _, names in os.walk(f"{mnt}/sources"):
    for name in names:
        paths.append(os.path.relpath(os.path.join(dirpath, name), f"{mnt}/sources"))
paths.sort()
for p in paths:
    h = os.getxattr(f"{mnt}/sources/{p}", "user.mache.chunk_hash").decode()
    os.makedirs(os.path.dirname(f"{out}/{p}"), exist_ok=True)
    os.link(f"{store}/objects/{h[:2]}/{h[2:]}", f"{out}/{p}")
open(listing, "w").write("".join(p + "\n" for p in paths))
PY
# The directory for `grep -r`: of those holding 100 to 400 files (at any
# depth), the one with the most files directly in it; else the largest.
cat >"$work/grepdir.py" <<'PY'
import collections, sys
paths = [p for p in open(sys.argv[1]).read().split("\n") if p]
total, direct = collections.Counter(), collections.Counter()
for p in paths:
    parts = p.split("/")[:-1]
    if parts:
        direct["/".join(parts)] += 1
    for i in range(1, len(parts) + 1):
        total["/".join(parts[:i])] += 1
fit = [d for d in total if 100 <= total[d] <= 400]
best = min(fit, key=lambda d: (-direct[d], d)) if fit else min(total, key=lambda d: (-total[d], d))
print(total[best], best)
PY

# The bundles: NAME|TREE|AST|MAX_FILES.
bundles=()
if [ -n "$tree" ]; then
  bundles+=("tree|$tree|$ast|$max_files")
else
  crates_src=("${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/)
  if [ -d "${crates_src[0]}" ]; then
    mkdir -p "$work/trees/crates"
    for d in "${crates_src[@]}"; do cp -a "$d." "$work/trees/crates/"; done
    bundles+=("crates|$work/trees/crates|0|${max_files:-$( ((quick)) && echo 2000 || echo 5000)}")
  else
    echo "bench-wan: no crate sources under ${CARGO_HOME:-$HOME/.cargo}/registry/src: the crates bundle is left out" >&2
  fi
  mkdir -p "$work/trees/stdlib"
  (cd "$python_src" && find . -path ./site-packages -prune -o -name '*.py' -type f -print0 | xargs -0 cp --parents -t "$work/trees/stdlib")
  bundles+=("stdlib|$work/trees/stdlib|1|${max_files:-$( ((quick)) && echo 100 || echo 400)}")
fi

# Each bundle: its db, pushed (packed layout) to the local store and straight
# to the registry; casync's tree of the same chunks, `casync make`; zstd.
declare -A summary=() grep_dir=() grep_files=() sample_n=() sample_chunks=() chunk_bytes=() zstd_cat=() pull_bytes=()
for b in "${bundles[@]}"; do
  IFS='|' read -r name dir with_ast max <<<"$b"
  mkdir -p "$work/$name"
  python3 scripts/make-sample-db.py "$dir" "$work/$name/mache.db" ${max:+--max-files "$max"} \
    $( ((with_ast)) || echo --no-ast) 2>"$work/$name/db.log" >/dev/null
  "$bin" -q push --db "$work/$name/mache.db" "$work/$name/store" --remote "http://127.0.0.1:$reg_port" --scope "bench/$name" >/dev/null
  "$bin" -q mount --daemon "$work/$name/store" "$mnt"
  python3 "$work/chunktree.py" "$mnt" "$work/$name/store" "$work/$name/chunks" "$work/$name/files.txt"
  unmount
  files=$(wc -l <"$work/$name/files.txt")
  chunk_bytes[$name]=$(find "$work/$name/chunks" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
  zstd_cat[$name]=$( (cd "$work/$name/chunks" && tr '\n' '\0' <"$work/$name/files.txt" | xargs -0 cat) | zstd -3 -q -c | wc -c)
  zstd -3 -q -r "$work/$name/chunks" --output-dir-mirror "$work/$name/zst"
  zstd_each=$(find "$work/$name/zst" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
  mkdir -p "$work/casync/$name"
  casync make --store="$work/casync/$name/store.castr" "$work/casync/$name/index.caidx" "$work/$name/chunks" >/dev/null
  cas_store=$(find "$work/casync/$name/store.castr" -type f -printf '%s\n' | awk '{ s += $1 } END { print s }')
  read -r grep_files[$name] grep_dir[$name] < <(python3 "$work/grepdir.py" "$work/$name/files.txt")
  n=$((files / 100 > 20 ? files / 100 : 20))
  sample_n[$name]=$n
  py "import random, sys; paths = open(sys.argv[1]).read().split('\n')[:-1]; print('\n'.join(random.Random(1).sample(paths, $n)))" \
    "$work/$name/files.txt" >"$work/$name/sample.txt"
  # Reading them cold takes a round trip per distinct non-empty chunk
  # (casync's tree hard-links each file to its chunk: one inode a chunk).
  sample_chunks[$name]=$( (cd "$work/$name/chunks" && xargs -d '\n' stat -c '%s %i' <"$work/$name/sample.txt") | awk '$1 > 0 { print $2 }' | sort -u | wc -l)
  kind=$( ((with_ast)) && echo "AST chunks" || echo "raw chunks")
  summary[$name]="$name: $files sources from $dir ($(sed 's/^.*: //' "$work/$name/db.log")), $kind: $(mb "${chunk_bytes[$name]}") MB; zstd -3 of all chunks concatenated $(mb "${zstd_cat[$name]}") MB ($(py "print(f'{${chunk_bytes[$name]}/${zstd_cat[$name]}:.1f}')")x smaller), of each chunk alone $(mb "$zstd_each") MB; casync store $(mb "$cas_store") MB"
  echo "${summary[$name]}"
done

ratio() { py "print(f'{$1/max($2,1e-9):.2f}')"; }
rows="$work/rows.md"
: >"$rows"
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@" >>"$rows"; }
# Blob GETs of bundle NAME in the registry's access log; chunk GETs in casync's.
requests_reg() { grep -c "\"GET /v2/mache/bench/$1/blobs/" "$work/registry/access.log" || true; }
requests_cas() { grep -c "\"GET /$1/store.castr/" "$work/casync/access.log" || true; }
# measure LINK COMMAND...: runs it (bundle $name) in this shell; sets m_ms,
# m_bytes (the link's bytes towards us) and m_gets (blob or chunk GETs).
measure() {
  local link=$1 bytes gets start
  shift
  bytes=$(link_down "$link")
  gets=$("requests_$link" "$name")
  start=$(date +%s%N)
  "$@" >/dev/null || { echo "failed: $*" >&2; exit 1; }
  m_ms=$((($(date +%s%N) - start) / 1000000))
  m_bytes=$(($(link_down "$link") - bytes))
  m_gets=$(($("requests_$link" "$name") - gets))
}
# Reads the sample of bundle $name under ROOT, one reader: sets m_median
# (one read, ms) and m_wall (all of them, ms, without Python's start).
read_sample() {
  read -r m_median m_wall < <(timeout 1800 python3 scripts/readtime.py "$1" "$work/$name/sample.txt" "${sample_n[$name]}" 1)
}

echo "bench-wan: set up in $(($(date +%s) - setup_started)) s"
started=$(date +%s)
for profile in "${profiles[@]}"; do
  read -r rate rtt <<<"$profile"
  bps=$(($(sed 's/mbit$//' <<<"$rate") * 1000000))
  rtt_ms=${rtt%ms}
  floor_ms() { py "print(round($1 * 8 / $bps * 1000 + ${2:-0} * $rtt_ms))"; } # BYTES [ROUND TRIPS]
  echo
  echo "== link: $rate, RTT $rtt =="
  python3 scripts/linksim.py --self-check --rate "$rate" --rtt "$rtt" ||
    echo "bench-wan: the link is off its profile (above): take the figures below with care" >&2
  start_link reg "$reg_port" "$rate" "$rtt"
  start_link cas "$cas_port" "$rate" "$rtt"
  cas_url="http://127.0.0.1:${link_port[cas]}"
  for b in "${bundles[@]}"; do
    IFS='|' read -r name _ <<<"$b"
    remote=(--remote "http://127.0.0.1:${link_port[reg]}" --scope "bench/$name")
    mount_fresh() { "$bin" -q mount --daemon "${remote[@]}" "$mnt"; }
    prefetch_done() { "$bin" -q mount --daemon --prefetch "${remote[@]}" "$mnt" && wait_until 1800 prefetched; }
    first_sql() { mount_fresh && sqlite3 "$mnt/mache.db" 'select count(*) from _source'; }
    # against_pull LABEL ROW COMMAND: COMMAND from a fresh cache, then
    # unmounted; printed and tabled against the floor and the pull.
    against_pull() {
      fresh_cache
      measure reg "$3"
      unmount
      local floor
      floor=$(floor_ms "$m_bytes")
      printf '%-21s %s\n' "$1" "$(secs "$m_ms") s, $(mb "$m_bytes") MB, $m_gets requests   floor $(secs "$floor") s: $(ratio "$m_ms" "$floor")x   pull: $(ratio "$m_ms" "$pull_ms")x"
      row "$name" "$2" "$(secs "$m_ms") s, $(mb "$m_bytes") MB, $m_gets requests" "$(secs "$floor") s" "$(ratio "$m_ms" "$floor")" "—"
    }
    echo "-- $name ($rate, RTT $rtt)"

    # pull, and casync extract.
    fresh_cache
    measure reg "$bin" -q pull --out-db "$work/pulled-$caches.db" "${remote[@]}"
    pull_ms=$m_ms pull_bytes[$name]=$m_bytes pull_gets=$m_gets
    measure cas timeout 1800 casync extract --store="$cas_url/$name/store.castr" "$cas_url/$name/index.caidx" "$work/extract-$caches"
    floor=$(floor_ms "${pull_bytes[$name]}")
    echo "pull                  $(secs "$pull_ms") s, $(mb "${pull_bytes[$name]}") MB, $pull_gets requests   floor $(secs "$floor") s: $(ratio "$pull_ms" "$floor")x   casync extract $(secs "$m_ms") s, $(mb "$m_bytes") MB, $m_gets requests (floor $(secs "$(floor_ms "$m_bytes")") s)"
    row "$name" "\`pull\`, fresh cache" "$(secs "$pull_ms") s, $(mb "${pull_bytes[$name]}") MB, $pull_gets requests" "$(secs "$floor") s" "$(ratio "$pull_ms" "$floor")" "\`extract\` $(secs "$m_ms") s, $(mb "$m_bytes") MB, $m_gets requests"

    # Mount ready, then the sample read cold by one reader; casync the same.
    fresh_cache
    measure reg mount_fresh
    ready_ms=$m_ms ready_bytes=$m_bytes ready_gets=$m_gets
    measure reg read_sample "$mnt/sources"
    unmount
    reads_ms=$m_wall reads_bytes=$m_bytes reads_gets=$m_gets median=$m_median
    measure cas cas_mount "$cas_url" "$name"
    cas_ready_ms=$m_ms cas_ready_bytes=$m_bytes
    measure cas read_sample "$cas_mnt"
    cas_unmount
    floor=$(floor_ms "$ready_bytes" 3)
    echo "mount ready           $(secs "$ready_ms") s, $(mb "$ready_bytes") MB, $ready_gets blob requests   floor $(secs "$floor") s (3 round trips + bytes): $(ratio "$ready_ms" "$floor")x   casync mount $(secs "$cas_ready_ms") s, $(mb "$cas_ready_bytes") MB"
    row "$name" "mount ready, fresh cache" "$(secs "$ready_ms") s, $(mb "$ready_bytes") MB, $ready_gets blob requests" "$(secs "$floor") s (3 RTTs + bytes)" "$(ratio "$ready_ms" "$floor")" "$(secs "$cas_ready_ms") s, $(mb "$cas_ready_bytes") MB"
    n=${sample_n[$name]} k=${sample_chunks[$name]}
    floor=$(floor_ms "$reads_bytes" "$k")
    echo "read $n files cold    $(secs "$reads_ms") s (median $median ms a file), $(mb "$reads_bytes") MB, $reads_gets requests   floor $(secs "$floor") s ($k round trips: distinct non-empty chunks; + bytes): $(ratio "$reads_ms" "$floor")x   casync $(secs "$m_wall") s (median $m_median ms), $(mb "$m_bytes") MB, $m_gets requests"
    row "$name" "then $n random files read cold, one reader" "$(secs "$reads_ms") s, $(mb "$reads_bytes") MB, $reads_gets requests" "$(secs "$floor") s ($k RTTs + bytes)" "$(ratio "$reads_ms" "$floor")" "$(secs "$m_wall") s, $(mb "$m_bytes") MB, $m_gets requests"

    # grep -r over one cold directory (the mount made beforehand).
    fresh_cache
    mount_fresh
    measure reg grep -r -c -e '' "$mnt/sources/${grep_dir[$name]}"
    unmount
    floor=$(floor_ms "$m_bytes" 1)
    echo "grep -r, ${grep_files[$name]} files   $(secs "$m_ms") s, $(mb "$m_bytes") MB, $m_gets requests (goal <= 10) in ${grep_dir[$name]}   floor $(secs "$floor") s (1 round trip + bytes): $(ratio "$m_ms" "$floor")x"
    row "$name" "\`grep -r\`, a cold directory of ${grep_files[$name]} files" "$(secs "$m_ms") s, $(mb "$m_bytes") MB, $m_gets requests" "$(secs "$floor") s (1 RTT + bytes)" "$(ratio "$m_ms" "$floor")" "—"

    # --prefetch to its end, and mount to the first sqlite3 answer on
    # mache.db: each against its floor and the pull.
    against_pull "--prefetch to its end" "\`mount --prefetch\` to its end" prefetch_done
    against_pull "mount to first sqlite" "mount to the first \`sqlite3 mache.db\` answer" first_sql
  done
  stop_link reg
  stop_link cas
  {
    echo
    echo "$rate, RTT $rtt:"
    echo
    echo "| bundle | scenario | ours | floor | ours ÷ floor | casync (same link) |"
    echo "|---|---|---|---|---|---|"
    cat "$rows"
  } >>"$work/tables.md"
  : >"$rows"
done

echo
echo "== bytes: a full pull against zstd -3 of the same chunks =="
for b in "${bundles[@]}"; do
  IFS='|' read -r name _ <<<"$b"
  echo "$name: a full pull downloaded $(mb "${pull_bytes[$name]}") MB; zstd -3 of all its chunks concatenated $(mb "${zstd_cat[$name]}") MB: $(ratio "${pull_bytes[$name]}" "${zstd_cat[$name]}")x (goal <= 1.2x); raw chunks $(mb "${chunk_bytes[$name]}") MB"
done
cat "$work/tables.md"
echo
echo "bench-wan: measured in $(($(date +%s) - started)) s"
