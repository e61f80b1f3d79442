#!/usr/bin/env bash
# The mount's performance on a generated 100,000-source bundle in the local
# store, each figure printed with its baseline from the same run:
#   - mount ready (daemon start until the first `ls` answers)   goal < 0.5 s
#   - daemon RSS after `find`                                   goal < 150 MB
#   - `find sources -type f | wc -l`, `ls -lR sources`: first pass on a
#     fresh mount vs the native tree, and the chunk reads they caused
#     (goal: zero chunk reads; <= 2x native)
#   - cold read of 1,000 random files, median                   goal < 0.5 ms
#   - warm `tar -cf - sources | wc -c` (third pass), before and after
#     mache.db is opened, and (for the cost of stateful opens) before it is
#     opened on the same bundle without the push's db record   goal >= 0.9x native
#   - mache.db build for a 10,000-source AST bundle, rows/s     goal >= 100,000 rows/s
#   - mache.db read cold through the mount vs the same file read natively
#     (what FUSE passthrough could at best approach)
#   - with --sweep: cold reads, warm tar and ls -lR for 1, 2, 4 and 8 FUSE
#     threads, and for 16, 64 and 256 I/O threads (= max_background)
#
#   scripts/bench-mount.sh [--sweep] [SOURCES] [WORK_DIR]
# SOURCES defaults to 100000. WORK_DIR (default /tmp/mache-bench-mount) keeps
# the generated trees, dbs and stores between runs; delete it to start over.
# Needs root (it mounts, and drops the kernel caches for the cold figures).
set -euo pipefail
cd "$(dirname "$0")/.."
sweep=false
if [ "${1:-}" = --sweep ]; then
  sweep=true
  shift
fi
n="${1:-100000}"
work="${2:-/tmp/mache-bench-mount}"
scripts/setup.sh
cargo build --release --quiet
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/release/mache-cachefs"
mkdir -p "$work"
export XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config" SOURCE_DATE_EPOCH=1748345600
mnt="$work/mnt"
mkdir -p "$mnt"

source scripts/bench-lib.sh
trap unmount EXIT
unmount

mount_fresh() { # STORE [MOUNT OPTIONS...] -> the daemon's pid
  unmount
  "$bin" mount "$@" --daemon "$mnt" 2>"$work/mount.err"
  sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.err"
}
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }

# The bundles: N synthetic sources (with the same tree written natively),
# and a 10,000-source one for the db build.
if [ ! -f "$work/store-$n/mache.lock.bin" ]; then
  echo "generating $n sources (once; kept in $work)..." >&2
  rm -rf "$work/tree-$n" "$work/store-$n"
  python3 scripts/make-sample-db.py --synthetic "$n" "$work/synth-$n.db" --write-tree "$work/tree-$n" --force 2>/dev/null
  "$bin" -q push --db "$work/synth-$n.db" "$work/store-$n" >/dev/null
  rm -f "$work/synth-$n.db"
fi
if [ ! -f "$work/store-10k/mache.lock.bin" ]; then
  python3 scripts/make-sample-db.py --synthetic 10000 "$work/synth-10k.db" --force 2>/dev/null
  "$bin" -q push --db "$work/synth-10k.db" "$work/store-10k" >/dev/null
fi
tree="$work/tree-$n"
store="$work/store-$n"
files=$(find "$tree" -type f | wc -l)
dirs=$(find "$tree" -type d | wc -l)
echo "bundle: $files sources in $dirs directories ($(du -sh "$tree" | cut -f1)); $(nproc) CPUs"
echo

# 1. Mount ready: from starting the daemon to the first `ls` answering.
rm -rf "$XDG_CACHE_HOME"
native_ls=$(timed ls "$tree")
read -r ready_ms ready_all < <(mount_ready "$store" "$work/mount.err")
printf 'mount ready            %5s ms (median of 3: %s)        baseline: native ls %s ms; goal < 500 ms\n' \
  "$ready_ms" "$ready_all" "$native_ls"

# 2-3. find and ls -lR, each on a fresh mount with the kernel caches dropped
# (first pass) and again (warm), vs the native tree dropped and warm.
pid=$(mount_fresh "$store")
rss_mounted=$(rss_mb "$pid")
drop_caches
find_mnt=$(timed find "$mnt/sources" -type f)
find_mnt2=$(timed find "$mnt/sources" -type f)
rss_find=$(rss_mb "$pid")
count=$(find "$mnt/sources" -type f | wc -l)
fetched_find=$(status 'd["chunks_fetched"]')
drop_caches
find_nat=$(timed find "$tree" -type f)
find_nat2=$(timed find "$tree" -type f)
pid=$(mount_fresh "$store")
drop_caches
lsr_mnt=$(timed ls -lR "$mnt/sources")
lsr_mnt2=$(timed ls -lR "$mnt/sources")
fetched_ls=$(status 'd["chunks_fetched"]')
requests=$(status 'd["requests"]')
db_state=$(status 'd["mache_db"]["state"]')
drop_caches
lsr_nat=$(timed ls -lR "$tree")
lsr_nat2=$(timed ls -lR "$tree")
printf 'daemon RSS after find  %5s MB (right after mount: %s MB)   goal < 150 MB\n' "$rss_find" "$rss_mounted"
printf 'find | wc -l           %5s ms first, %s ms warm (%s files)   baseline: native %s ms cold, %s ms warm; goal <= 2x\n' \
  "$find_mnt" "$find_mnt2" "$count" "$find_nat" "$find_nat2"
printf 'ls -lR                 %5s ms first, %s ms warm              baseline: native %s ms cold, %s ms warm; goal <= 2x\n' \
  "$lsr_mnt" "$lsr_mnt2" "$lsr_nat" "$lsr_nat2"
printf 'chunk reads            %5s during find, %s during ls -lR (mache.db: %s); goal 0\n' "$fetched_find" "$fetched_ls" "$db_state"
echo "  FUSE requests of the ls -lR mount: $requests"

# 4. Cold read of 1,000 random files: nothing cached anywhere (fresh mount,
# kernel caches dropped), each open+read timed alone; native likewise.
(cd "$tree" && find . -type f | sed 's|^\./||' | shuf -n 1000 --random-source=<(yes)) >"$work/sample.txt"
cat >"$work/readtime.py" <<'PY'
import statistics, sys, time
root, listing = sys.argv[1], sys.argv[2]
times = []
for path in open(listing).read().split('\n'):
    if not path:
        continue
    start = time.perf_counter()
    with open(f"{root}/{path}", "rb") as f:
        f.read()
    times.append((time.perf_counter() - start) * 1000)
times.sort()
print(f"{statistics.median(times):.3f} {times[len(times) * 9 // 10]:.3f}")
PY
cold_reads() { # ROOT -> "median p90" in ms
  drop_caches
  python3 "$work/readtime.py" "$1" "$work/sample.txt"
}
pid=$(mount_fresh "$store")
read -r cold_med cold_p90 < <(cold_reads "$mnt/sources")
read -r nat_med nat_p90 < <(cold_reads "$tree")
printf 'cold read, 1000 files  %5s ms median (p90 %s ms)           baseline: native cold %s ms (p90 %s ms); goal < 0.5 ms\n' \
  "$cold_med" "$cold_p90" "$nat_med" "$nat_p90"

# 5. Warm tar: the second pass over the whole tree, mount vs native; before
# mache.db is opened, after, and on the bundle without its db record.
tar_of() { tar -cf - -C "$1" . | wc -c; }
warm_tar() { # ROOT -> ms of the third pass (two warm it: pages read once
  # are the first the kernel reclaims when memory is short)
  tar_of "$1" >/dev/null
  tar_of "$1" >/dev/null
  timed tar_of "$1"
}
bytes=$(tar_of "$tree")
tar_nat=$(warm_tar "$tree")
opens() { status 'd["requests"]["open"]'; }
tar_line() { # LABEL MS OPENS
  python3 - "$bytes" "$2" "$tar_nat" "$1" "$3" <<'PY'
import sys
b, m, n, label, opens = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
print(f"warm tar, {label:<22} {b / 1e6 / (m / 1000):5.0f} MB/s ({m} ms, {opens} OPEN requests)  "
      f"baseline: native {b / 1e6 / (n / 1000):.0f} MB/s ({n} ms); ratio {n / m:.2f}x, goal >= 0.9x")
PY
}
pid=$(mount_fresh "$store")
tar_before=$(warm_tar "$mnt/sources")
tar_line "mache.db not opened" "$tar_before" "$(opens)"
sqlite3 "$mnt/mache.db" 'select count(*) from _source' >/dev/null
tar_after=$(warm_tar "$mnt/sources")
tar_line "mache.db opened" "$tar_after" "$(opens)"
echo "  daemon RSS after tar: $(rss_mb "$pid") MB (memory cache $(status 'd["cache"]["bytes"] // 1048576') MiB of $(status 'd["cache"]["capacity"] // 1048576') MiB)"
# The same bundle as an older push left it: its sizes index without the
# db record (restored afterwards), so the mount answers OPEN statefully.
sizes_file=$(ls "$store"/lockfiles/*.sizes.json)
cp "$sizes_file" "$work/sizes.json.orig"
restore_sizes() { cp "$work/sizes.json.orig" "$sizes_file"; }
trap 'restore_sizes; unmount' EXIT
python3 - "$sizes_file" <<'PY'
import json, sys
index = json.load(open(sys.argv[1]))
index.pop("db", None)
json.dump(index, open(sys.argv[1], "w"))
PY
pid=$(mount_fresh "$store")
tar_stateful=$(warm_tar "$mnt/sources")
tar_line "no record, not opened" "$tar_stateful" "$(opens)"
restore_sizes
trap unmount EXIT

# 6. mache.db build for the 10,000-source AST bundle (its first read builds
# it), vs pull (same work, no mount).
pid=$(mount_fresh "$work/store-10k")
start=$(date +%s%N)
rows=$(sqlite3 "$mnt/mache.db" 'select (select count(*) from _source) + (select count(*) from _ast)')
build_ms=$(ms_since "$start")
rm -f "$work/pulled.db"
pull_ms=$(timed "$bin" -q pull --out-db "$work/pulled.db" "$work/store-10k")
python3 - "$rows" "$build_ms" "$pull_ms" <<'PY'
import sys
rows, b, p = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"mache.db build         {rows / (b / 1000):7.0f} rows/s ({rows} rows in {b} ms)  "
      f"baseline: pull {rows / (p / 1000):.0f} rows/s ({p} ms); goal >= 100000 rows/s")
PY

# 7. The built mache.db read whole with the kernel caches dropped: through
# the mount vs the cache file itself (native). FUSE passthrough would at
# best bring the first to the second, but only for files whose OPEN reaches
# the daemon, so never with stateless opens.
db_file=$(status 'd["mache_db"]["path"]')
db_bytes=$(stat -c %s "$db_file")
drop_caches
db_mnt=$(timed cat "$mnt/mache.db")
db_mnt_warm=$(timed cat "$mnt/mache.db")
drop_caches
db_nat=$(timed cat "$db_file")
python3 - "$db_bytes" "$db_mnt" "$db_nat" "$db_mnt_warm" <<'PY'
import sys
b, m, n, w = (int(x) for x in sys.argv[1:])
print(f"mache.db read, cold    {b / 1e6 / (m / 1000):5.0f} MB/s ({m} ms for {b / 1e6:.0f} MB)      "
      f"baseline: native cold {b / 1e6 / (n / 1000):.0f} MB/s ({n} ms), ratio {n / m:.2f}x; warm through the mount {w} ms")
PY
unmount

# 8. FUSE threads and max_background: cold reads, warm tar, first ls -lR.
if $sweep; then
  echo
  echo "sweep (native: cold read $nat_med ms median, warm tar $tar_nat ms, ls -lR cold $lsr_nat ms)"
  sweep_one() { # LABEL MOUNT OPTIONS...
    local label="$1"
    shift
    mount_fresh "$store" "$@" >/dev/null
    local cold warm lsr
    read -r cold _ < <(cold_reads "$mnt/sources")
    warm=$(warm_tar "$mnt/sources")
    mount_fresh "$store" "$@" >/dev/null
    drop_caches
    lsr=$(timed ls -lR "$mnt/sources")
    printf '  %-22s cold read %s ms, warm tar %s ms (%s), ls -lR first %s ms\n' "$label" "$cold" "$warm" \
      "$(python3 -c "print(f'{$tar_nat / $warm:.2f}x')")" "$lsr"
  }
  for threads in 1 2 4 8; do
    sweep_one "--threads $threads" --threads "$threads"
  done
  for io in 16 64 256; do
    sweep_one "--io-threads $io" --io-threads "$io"
  done
fi
