#!/usr/bin/env bash
# Re-runs, row by row, every test docs/RELIABILITY.md names: each row of its
# tables whose last column is a test (`BINARY::path::to::test`, BINARY being
# a file of tests/, `mount` for mount-tests/ or `lib` for the unit tests)
# is printed with the test's outcome. Exits non-zero if a test fails or a
# row names a test that does not exist, so the document cannot drift from
# what is tested. The mount tests need root and /dev/fuse.
#
#   scripts/reliability.sh [FILTER]    # only rows whose text contains FILTER
#   scripts/reliability.sh --check     # only that every row's test exists (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
check=""
if [ "${1:-}" = --check ]; then check=1; shift; fi
filter="${1:-}"
doc=docs/RELIABILITY.md
scripts/setup.sh >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Rows: "BINARY TEST<TAB>FAULT" for every table row ending in a test cell.
grep -E '^\|.*\| `[a-z_0-9]+::[a-z_0-9:]+` \|$' "$doc" | grep -F -- "$filter" |
  sed -E 's/^\| *([^|]*)\|.*\| `([a-z_0-9]+)::([a-z_0-9:]+)` \|$/\2 \3\t\1/' >"$work/rows"
[ -s "$work/rows" ] || { echo "reliability: no rows match ${filter:-anything} in $doc" >&2; exit 2; }

for binary in $(cut -d' ' -f1 "$work/rows" | sort -u); do
  tests=$(awk -v b="$binary" -F'\t' '{ split($1, a, " "); if (a[1] == b) print a[2] }' "$work/rows")
  case "$binary" in
    lib) target=(--lib) ;;
    *) target=(--test "$binary") ;;
  esac
  if [ -n "$check" ]; then
    cargo test --release "${target[@]}" -- --list 2>/dev/null |
      sed -n 's/^\(.*\): test$/test \1 ... listed/p' >"$work/out-$binary"
    continue
  fi
  # shellcheck disable=SC2086
  cargo test --release "${target[@]}" -- --exact --test-threads="${TEST_THREADS:-4}" $tests \
    >"$work/out-$binary" 2>&1 || true
done

failed=0
while IFS=$'\t' read -r id fault; do
  binary=${id%% *} name=${id#* }
  if grep -qE "^test $name \.\.\. ok$" "$work/out-$binary"; then
    mark="ok    "
  elif grep -qE "^test $name \.\.\. listed$" "$work/out-$binary"; then
    mark="listed"
  elif grep -qE "^test $name \.\.\. FAILED$" "$work/out-$binary"; then
    mark="FAILED" failed=1
  else
    mark="ABSENT" failed=1
  fi
  printf '%s  %-60.60s  %s::%s\n' "$mark" "$fault" "$binary" "$name"
done <"$work/rows"
if [ "$failed" != 0 ]; then
  echo "reliability: a row's test failed or does not exist (see above)" >&2
  exit 1
fi
if [ -n "$check" ]; then
  echo "reliability: every row names a test that exists ($(wc -l <"$work/rows") tests)"
else
  echo "reliability: every row holds ($(wc -l <"$work/rows") tests)"
fi
