#!/usr/bin/env bash
# The mount at scale: a bundle of SOURCES small raw sources (default
# 1,000,000, 200 to 300 random bytes each, in 997 x 101 directories) in a
# local store, against the same files copied out of the mount onto the
# local disk, in the same run:
#   - mount ready (daemon start until the first `ls` answers)
#   - daemon RSS right after mount and after `find`
#   - `find sources -type f | wc -l`, first pass (kernel caches dropped)
#   - `ls -lR sources`, first pass
#   - chunk reads during both (goal: none)
#   - `stat mache.db`: its recorded size, nothing built
# The issue's goal: keep ready < 1 s and RSS < 300 MB at this size, `find`
# and `ls -lR` within 2x of native.
#
#   scripts/bench-mount-scale.sh [SOURCES]
# Needs root (it mounts and drops the kernel caches); about 2 GB of disk and
# 5 minutes at the default size.
sources="${1:-1000000}"
case "$sources" in -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;; esac
source "$(dirname "$0")/common.sh"
export SOURCE_DATE_EPOCH=1748345600 XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config"
mnt="$work/mnt"
mkdir -p "$mnt"
source scripts/bench-lib.sh
trap 'unmount; rm -rf "$work"' EXIT

# The db; the native tree is copied out of the mount once it is measured.
raw_db "$work/scale.db" "$sources" 200
push_s=$( { /usr/bin/time -f '%e %M' "$bin" -q push --db "$work/scale.db" "$work/store" >/dev/null; } 2>&1 | tail -1)
echo "bundle: $sources sources; push ${push_s% *} s, peak RSS $((${push_s#* } / 1024)) MB; $(nproc) CPUs"

read -r ready_ms ready_all < <(mount_ready "$work/store" "$work/mount.err")
pid=$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' "$work/mount.err")
rss_mounted=$(rss_mb "$pid")
printf 'mount ready            %6s ms (median of 3: %s)          goal < 1000 ms\n' "$ready_ms" "$ready_all"

drop_caches
find_mnt=$(timed find "$mnt/sources" -type f)
rss_find=$(rss_mb "$pid")
count=$(find "$mnt/sources" -type f | wc -l)
drop_caches
lsr_mnt=$(timed ls -lR "$mnt/sources")
db_size=$(stat -c %s "$mnt/mache.db")
fetched=$(status 'd["chunks_fetched"]')
db_state=$(status 'd["mache_db"]["state"]')
cp -r "$mnt/sources" "$work/tree"
unmount
drop_caches
find_nat=$(timed find "$work/tree" -type f)
drop_caches
lsr_nat=$(timed ls -lR "$work/tree")
printf 'daemon RSS             %6s MB after mount, %s MB after find   goal < 300 MB\n' "$rss_mounted" "$rss_find"
python3 - "$find_mnt" "$find_nat" "$lsr_mnt" "$lsr_nat" "$count" <<'PY'
import sys
fm, fn, lm, ln, count = (int(x) for x in sys.argv[1:])
print(f"find, first pass       {fm:6d} ms ({count} files)           baseline: native {fn} ms, ratio {fm / fn:.2f}x; goal <= 2x")
print(f"ls -lR, first pass     {lm:6d} ms                         baseline: native {ln} ms, ratio {lm / ln:.2f}x; goal <= 2x")
PY
printf 'chunk reads            %6s during find and ls -lR; mache.db shows %s bytes (%s)\n' "$fetched" "$db_size" "$db_state"
