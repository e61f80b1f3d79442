# Sourced by the demo and benchmark scripts: installs what is missing,
# builds the release binary, and sets
#   bin          the built mache-cachefs
#   python_src   Python's standard library (the default sample source tree)
#   work         a temporary directory, removed on exit
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --quiet
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/release/mache-cachefs"
python_src="$(python3 -c 'import os, sysconfig; print(os.path.realpath(sysconfig.get_paths()["stdlib"]))')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
