#!/usr/bin/env bash
# The main job end to end on the built-in default (the local store under
# $XDG_CACHE_HOME/mache-cachefs/store, no registry): installs what is
# missing, builds, turns a source tree into a mache.db, pushes it, inspects
# and verifies the bundle, pulls it back into a db with equal rows, then
# mounts it (as root) and reads it through find, diff, python3 and sqlite3.
#
#   scripts/demo.sh [SOURCE_DIR]     (default: Python's standard library)
src="${1:+$(realpath "$1")}"
source "$(dirname "$0")/common.sh"
src="${src:-$python_src}"

echo "== building a mache.db from $src"
python3 scripts/make-sample-db.py "$src" "$work/mache.db" --max-files 3000
sqlite3 "$work/mache.db" 'select count(*) || " sources" from _source; select count(*) || " AST rows" from _ast'

echo "== mache-cachefs push --db mache.db   (default store)"
"$bin" push --db "$work/mache.db"
echo "== again: nothing new is written"
"$bin" push --db "$work/mache.db"

echo "== mache-cachefs inspect"
"$bin" inspect
echo "== mache-cachefs verify"
"$bin" verify

echo "== mache-cachefs pull --out-db restored.db"
"$bin" pull --out-db "$work/restored.db"
query='select id, path, language, hex(content) from _source order by id'
if [ "$(sqlite3 "$work/mache.db" "$query" | md5sum)" = "$(sqlite3 "$work/restored.db" "$query" | md5sum)" ]; then
  echo "restored _source rows equal the original's"
else
  echo "restored rows differ" >&2
  exit 1
fi

echo "== mache-cachefs mount --daemon MNT   (needs root and /dev/fuse)"
mnt="$work/mnt"
mkdir -p "$mnt"
"$bin" mount --daemon "$mnt"
trap '"$bin" -q unmount "$mnt" 2>/dev/null; rm -rf "$work"' EXIT
ls "$mnt"
echo "$(find "$mnt/sources" -type f | wc -l) files under sources/, $(find "$mnt/ast" -type f | wc -l) under ast/"
if diff -rq "$src" "$mnt/sources" | grep -v "^Only in $src" | grep -q .; then
  echo "mounted sources differ from the tree" >&2
  exit 1
fi
echo "every mounted source equals its file in $src"
first_ast=$(find "$mnt/ast" -type f -name '*.py.json' -print -quit)
python3 - "$first_ast" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
print(f"{doc['path']}: {len(doc['ast_nodes'])} AST nodes, language {doc['language']!r}")
PY
sqlite3 "$mnt/mache.db" 'select count(*) || " rows in the mounted mache.db" from _source'
python3 -m json.tool "$mnt/.cachefs/status"
"$bin" unmount "$mnt"
