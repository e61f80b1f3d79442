#!/usr/bin/env bash
# Builds every fuzz target in fuzz/ with libFuzzer on the stable toolchain
# and runs each for SECONDS (default 60), one after another. Prints, per
# target, the executions and the findings (crashes, leaks, timeouts,
# out-of-memory); exits non-zero if any target found anything.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# FUZZ_PROFILE=smoke (CI) builds unoptimized, in less than half the time
# of the default release build, and runs some 20 times slower.
#
# Needs a C++ compiler (libfuzzer-sys builds libFuzzer) and the stable
# toolchain. No cargo-fuzz and no nightly: the targets are ordinary binaries linked
# against libfuzzer-sys, built with the coverage flags cargo-fuzz passes
# with `--sanitizer none`. Findings are kept in fuzz/artifacts/<target>/;
# the corpus grows in fuzz/corpus/<target>/ (neither is committed), seeded
# by the `seeds` binary (conformance vectors and values the library
# encodes) and by the inputs of past findings in fuzz/regressions/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

profile=${FUZZ_PROFILE:-release}
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(lockfile_binary lockfile_toml chunk pack_index pack_frame oci_manifest oci_names
    registry_envelope www_authenticate mount_tree serve_requests)
fi
triple=$(rustc -vV | sed -n 's/^host: //p')
flags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-sanitizer-coverage-stack-depth
  -Cdebug-assertions
  -Coverflow-checks
  --cfg fuzzing
)
# An explicit --target keeps the flags off build scripts and proc macros.
RUSTFLAGS="${flags[*]}" cargo build --locked --profile "$profile" --target "$triple" \
  --target-dir target --bins
bin=target/$triple/$profile

rm -rf seeds
"$bin/seeds" seeds

failures=0
summary=()
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "artifacts/$target" "regressions/$target"
  log=artifacts/$target.log
  status=0
  # -timeout: an input taking 10 s is a finding; -rss_limit_mb and
  # -malloc_limit_mb: so is a run past 2 GiB or one allocation past 1 GiB.
  "$bin/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
    "corpus/$target" "seeds/$target" "regressions/$target" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  findings=$(find "artifacts/$target" -type f \( -name 'crash-*' -o -name 'leak-*' \
    -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  corpus=$(find "corpus/$target" -type f | wc -l)
  if [ "$status" -ne 0 ] || [ "$findings" -ne 0 ]; then
    failures=$((failures + 1))
    echo "== $target FAILED (exit $status); the end of $log:" >&2
    tail -n 40 "$log" >&2
  fi
  summary+=("$(printf '%-18s %12s %9s %8s' "$target" "${execs:-?}" "$findings" "$corpus")")
done

echo
echo "fuzzed for ${seconds}s each ($profile build, $(rustc --version)):"
printf '%-18s %12s %9s %8s\n' target executions findings corpus
printf '%s\n' "${summary[@]}"
echo "fuzz: $((${#targets[@]} - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
