#!/usr/bin/env bash
# Push at scale: time and peak RSS of a push into a fresh local store, of
#   - a db of SOURCES raw sources (default 1,000,000, about 2,100 bytes of
#     content each: 2.1 GB), and
#   - a db of AST_ROWS `_ast` rows (default 10,000,000; 100 rows a source),
# each against the same push by a baseline binary in the same run
# (--baseline BIN, e.g. a build of an earlier commit), and against the
# floor of reading the same rows with sqlite3. Goal (issue 15): peak RSS
# under 500 MB for both, and the raw push no slower than the baseline.
#
#   scripts/bench-push-scale.sh [--baseline BIN] [--sources N] [--ast-rows N]
# The dbs are generated with sqlite3 (random content: push stores chunks
# as they are, so what they hold does not matter here). Root measures on
# a fresh ext4 image of its own; needs about 3x the content in free space.
baseline=""
sources=1000000
ast_rows=10000000
while (($#)); do
  case "$1" in
    --baseline) baseline="$(realpath "${2:?--baseline needs a binary}")"; shift 2 ;;
    --sources) sources="${2:?}"; shift 2 ;;
    --ast-rows) ast_rows="${2:?}"; shift 2 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "bench-push-scale: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
source "$(dirname "$0")/common.sh"
export SOURCE_DATE_EPOCH=1748345600

if [ "$(id -u)" = 0 ]; then
  truncate -s 24G "$work/fs.img"
  # An inode per 4 KiB: each store of the raw db holds a million files.
  mkfs.ext4 -q -F -i 4096 "$work/fs.img"
  mkdir "$work/fs"
  mount -o loop "$work/fs.img" "$work/fs"
  top="$work"
  trap 'umount "$top/fs"; rm -rf "$top"' EXIT
  work="$top/fs"
fi

# The raw db: content 2,048 to 2,148 random bytes.
raw_db "$work/raw.db" "$sources" 2048
# The AST db: AST_ROWS / 100 sources of about 200 random bytes, 100 rows each.
ast_sources=$((ast_rows / 100))
sqlite3 "$work/ast.db" >/dev/null <<SQL
PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
CREATE TABLE _source(id TEXT PRIMARY KEY, path TEXT, language TEXT, content BLOB);
CREATE TABLE _ast(node_id TEXT PRIMARY KEY, source_id TEXT NOT NULL, node_kind TEXT NOT NULL,
  start_byte INTEGER, end_byte INTEGER, start_row INTEGER, start_col INTEGER, end_row INTEGER, end_col INTEGER);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $ast_sources)
INSERT INTO _source
SELECT printf('m%03d/f%07d.py', i % 211, i), printf('m%03d/f%07d.py', i % 211, i), 'python',
       randomblob(192 + i % 17)
FROM n;
WITH RECURSIVE k(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM k WHERE j + 1 < 100)
INSERT INTO _ast
SELECT s.id || printf('/Module/n%03d', k.j), s.id, 'Node', k.j, k.j + 1, k.j, 0, k.j, 1
FROM _source s, k;
SQL
raw_mb=$(sqlite3 "$work/raw.db" 'select round(sum(length(content))/1e6) from _source')
echo "raw db: $sources sources, $raw_mb MB of content; AST db: $ast_sources sources, $(sqlite3 "$work/ast.db" 'select count(*) from _ast') _ast rows"

# push_once BIN DB NAME: a push into a fresh store; prints "SECONDS PEAK_MB".
push_once() {
  sync
  /usr/bin/time -f '%e %M' -o "$work/time-$3" "$1" -q push --db "$2" "$work/store-$3" >/dev/null
  awk '{ printf "%.1f %.0f\n", $1, $2 / 1024 }' "$work/time-$3"
}
# floor DB: sqlite3 reading every row of the db's tables.
floor() {
  sync
  local start=$(date +%s%N)
  sqlite3 "$1" 'select sum(length(content)) from _source' >/dev/null
  sqlite3 "$1" "select count(*) from sqlite_master where name = '_ast'" | grep -q 1 &&
    sqlite3 "$1" 'select sum(length(node_id) + length(source_id)) from _ast' >/dev/null
  python3 -c "print(f'{($(date +%s%N) - $start) / 1e9:.1f}')"
}

for db in raw ast; do
  read -r secs mb < <(push_once "$bin" "$work/$db.db" "$db")
  line="$db push: ${secs} s, peak RSS ${mb} MB (floor: sqlite3 reads it in $(floor "$work/$db.db") s)"
  if [ -n "$baseline" ]; then
    read -r b_secs b_mb < <(push_once "$baseline" "$work/$db.db" "$db-baseline")
    line+="; baseline ${b_secs} s, ${b_mb} MB: time $(python3 -c "print(f'{$secs/$b_secs:.2f}')")x, RSS $(python3 -c "print(f'{$mb/$b_mb:.2f}')")x"
  fi
  echo "$line"
  # The bundles must be the same.
  if [ -n "$baseline" ]; then
    cmp -s "$work/store-$db/mache.lock.bin" "$work/store-$db-baseline/mache.lock.bin" ||
      { echo "bench-push-scale: the $db bundles differ" >&2; exit 1; }
  fi
  # Room for the next db's stores (and the db each push builds to record).
  rm -rf "$work/store-$db" "$work/store-$db-baseline"
done
