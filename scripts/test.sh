#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, checks
# formatting and lints, then runs every test (unit tests in a debug build,
# then unit, conformance, property, CLI and the mount tests optimized; the
# mount tests really mount and therefore need root and /dev/fuse).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --release -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --quiet
# Unit tests in a debug build too: overflow checks and debug assertions on.
cargo test --lib
cargo test --release --all-targets -- --test-threads="${TEST_THREADS:-4}"
(cd tests/fixtures/build-cache-v1 && sha256sum --quiet -c VECTORS.sha256)
# docs/RELIABILITY.md names only tests that exist (they all ran above).
scripts/reliability.sh --check >/dev/null
echo "all tests passed"
