#!/usr/bin/env bash
# The main job end to end on the built-in default (the local store under
# $XDG_CACHE_HOME/mache-cachefs/store, no registry): installs what is
# missing, builds, turns a source tree into a mache.db, pushes it, inspects
# and verifies the bundle, pulls it back into a db with equal rows, then
# mounts it (as root) and reads it through find, diff, rg, jq, python3 and
# sqlite3. Its temporary directory is removed, and the mount unmounted, on
# every exit.
#
#   scripts/demo.sh [SOURCE_DIR]     (default: Python's standard library)
src="${1:+$(realpath "$1")}"
source "$(dirname "$0")/common.sh"
src="${src:-$python_src}"
mnt="$work/mnt"
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then
    "$bin" -q unmount "$mnt" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building a mache.db from $src"
python3 scripts/make-sample-db.py "$src" "$work/mache.db" --max-files 3000
sqlite3 "$work/mache.db" 'select count(*) || " sources" from _source; select count(*) || " AST rows" from _ast'

echo "== mache-cachefs push --db mache.db   (default store)"
"$bin" push --db "$work/mache.db"
echo "== again: the same sources keep the same bundle"
"$bin" push --db "$work/mache.db"

echo "== mache-cachefs inspect"
"$bin" inspect
echo "== mache-cachefs verify"
"$bin" verify

echo "== mache-cachefs pull --out-db restored.db"
"$bin" pull --out-db "$work/restored.db"
# Rows compare with quote(), which tells NULL from '' and text from blob.
# The one documented difference for this db: a NULL language restores as ''.
original='select quote(id), quote(path), quote(ifnull(language, "")), hex(content) from _source order by id;
          select * from _ast order by node_id'
restored='select quote(id), quote(path), quote(language), hex(content) from _source order by id;
          select * from _ast order by node_id'
if [ "$(sqlite3 "$work/mache.db" "$original" | md5sum)" = "$(sqlite3 "$work/restored.db" "$restored" | md5sum)" ]; then
  echo "restored _source and _ast rows equal the original's"
else
  echo "restored rows differ" >&2
  exit 1
fi

echo "== mache-cachefs mount --daemon MNT   (needs root and /dev/fuse)"
mkdir -p "$mnt"
"$bin" mount --daemon "$mnt"
ls "$mnt"
echo "$(find "$mnt/sources" -type f | wc -l) files under sources/, $(find "$mnt/ast" -type f | wc -l) under ast/"
# Only files of the tree left out of the db (past --max-files) may differ.
differences=$(diff -rq "$src" "$mnt/sources" | grep -v "^Only in $src" || true)
if [ -n "$differences" ]; then
  echo "mounted sources differ from the tree:" >&2
  echo "$differences" | head >&2
  exit 1
fi
echo "every mounted source equals its file in $src"
echo "rg: $(rg -l -i 'todo' "$mnt/sources" | wc -l) mounted files mention TODO"
first_ast=$(find "$mnt/ast" -type f -print -quit)
if [ -z "$first_ast" ]; then
  echo "no ast/ files (the bundle has no AST chunks)" >&2
  exit 1
fi
jq -r '"jq: \(.path): \(.ast_nodes | length) AST nodes, language \(.language | @json)"' "$first_ast"
python3 - "$mnt/ast" <<'PY'
import json, pathlib, sys
files = [p for p in pathlib.Path(sys.argv[1]).rglob("*.json")]
nodes = sum(len(json.loads(p.read_bytes())["ast_nodes"]) for p in files)
print(f"python3: {len(files)} ast/ files parse as JSON, {nodes} nodes in all")
PY
sqlite3 "$mnt/mache.db" 'select count(*) || " rows in the mounted mache.db" from _source'
python3 -m json.tool "$mnt/.cachefs/status"
"$bin" unmount "$mnt"
echo "== done: unmounted; the bundle stays in the default store for the next mount"
