#!/usr/bin/env bash
# Push and pull throughput on a db of real source files with AST rows,
# each figure with its baseline from the same run:
#   - floor: sqlite3 reading every content row and writing it to a file
#   - push (fresh store) vs the floor          goal <= 2x
#   - re-push of the unchanged db vs the push  goal <= 0.2x
#   - pull vs the push                         goal <= 2x
#
#   [MAX_FILES=3000] scripts/bench-push-pull.sh [SOURCE_DIR] [RUNS]
# SOURCE_DIR defaults to Python's standard library (thousands of .py files,
# parsed into _ast rows by scripts/make-sample-db.py).
src="${1:+$(realpath "$1")}"
source "$(dirname "$0")/common.sh"
src="${src:-$python_src}"
runs="${2:-5}"
export SOURCE_DATE_EPOCH=1748345600

# Measure on a fresh ext4 filesystem of our own (a loop-mounted image): on a
# filesystem where thousands of files were deleted in the last minutes, ext4
# scans for recently freed inodes on every create, which swamps the figures.
if [ "$(id -u)" = 0 ]; then
  truncate -s 12G "$work/fs.img"
  mkfs.ext4 -q -F "$work/fs.img"
  mkdir "$work/fs"
  mount -o loop "$work/fs.img" "$work/fs"
  top="$work"
  trap 'umount "$top/fs"; rm -rf "$top"' EXIT
  work="$top/fs"
else
  echo "not root: measuring in $work on the default filesystem" >&2
fi

python3 scripts/make-sample-db.py "$src" "$work/mache.db" --max-files "${MAX_FILES:-3000}" >/dev/null
sources=$(sqlite3 "$work/mache.db" 'select count(*) from _source')
ast_rows=$(sqlite3 "$work/mache.db" 'select count(*) from _ast')
content_mb=$(sqlite3 "$work/mache.db" 'select round(sum(length(content))/1e6, 1) from _source')

# Each run writes into a directory of its own and nothing is deleted while
# measuring, each starts after a `sync`, and the floor and the push alternate: on ext4, creating files
# soon after deleting thousands makes inode allocation scan for recently
# freed inodes, and alternating puts both under the same conditions.
ms() { # command... -> milliseconds on stdout, the command's output discarded
  # Start each measurement with nothing dirty in the page cache, so no run
  # pays for flushing what the previous one wrote (push and pull sync).
  sync
  local start=$(date +%s%N)
  "$@" >/dev/null
  echo $((($(date +%s%N) - start) / 1000000))
}
floor_run() {
  local d
  d=$(mktemp -d -p "$work")
  sqlite3 "$work/mache.db" "select writefile('$d/' || rowid, content) from _source"
}
push_run() { "$bin" -q push --db "$work/$1" "$(mktemp -d -p "$work")"; }
# The same rows without _ast: raw chunks, the very bytes the floor writes.
cp "$work/mache.db" "$work/raw.db"
sqlite3 "$work/raw.db" 'drop table _ast; vacuum'
durable_floor_run() { floor_run && sync -f "$work"; }
floors=() durable_floors=() pushes=() raw_pushes=() repushes=() pulls=()
"$bin" -q push --db "$work/mache.db" "$work/store" >/dev/null # warm the page cache once
for _ in $(seq "$runs"); do
  floors+=("$(ms floor_run)")
  durable_floors+=("$(ms durable_floor_run)")
  pushes+=("$(ms push_run mache.db)")
  raw_pushes+=("$(ms push_run raw.db)")
  repushes+=("$(ms "$bin" -q push --db "$work/mache.db" "$work/store")")
  pulls+=("$(ms "$bin" -q pull --out-db "$(mktemp -u -p "$work").db" "$work/store")")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2) / 1000}'; }
durable_floor=$(median "${durable_floors[@]}")
floor=$(median "${floors[@]}") push=$(median "${pushes[@]}") raw_push=$(median "${raw_pushes[@]}")
repush=$(median "${repushes[@]}") pull=$(median "${pulls[@]}")
chunk_bytes=$("$bin" -q push --db "$work/mache.db" "$work/store" --json |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["chunk_bytes"])')

python3 - "$sources" "$ast_rows" "$content_mb" "$chunk_bytes" "$floor" "$push" "$repush" "$pull" "$runs" "$raw_push" "$durable_floor" <<'PY'
import sys
sources, ast_rows, content_mb, chunk_bytes = sys.argv[1:5]
floor, push, repush, pull = map(float, sys.argv[5:9])
runs = sys.argv[9]
raw_push = float(sys.argv[10])
durable_floor = float(sys.argv[11])
mb = int(chunk_bytes) / 1e6
print(f"db: {sources} sources, {ast_rows} AST rows, {content_mb} MB of content, {mb:.1f} MB of chunks; median of {runs} alternating runs")
print(f"floor (sqlite3 rows -> files) {floor*1000:8.1f} ms")
print(f"push, fresh store             {push*1000:8.1f} ms  {mb/push:7.1f} MB/s of chunks  {push/floor:5.2f}x the floor's time   (goal <= 2x)")
print(f"                                         floor: {float(content_mb)/floor:7.1f} MB/s of content")
print(f"floor + sync (durable, as push) {durable_floor*1000:6.1f} ms  push is {push/durable_floor:5.2f}x, raw push {raw_push/durable_floor:5.2f}x")
print(f"push, same rows without _ast  {raw_push*1000:8.1f} ms  {float(content_mb)/raw_push:7.1f} MB/s (raw chunks = the floor's bytes)  {raw_push/floor:5.2f}x floor")
print(f"re-push, unchanged db         {repush*1000:8.1f} ms  {repush/push:5.2f}x push    (goal <= 0.2x)")
print(f"pull, verified                {pull*1000:8.1f} ms  {pull/push:5.2f}x push    (goal <= 2x)")
PY
