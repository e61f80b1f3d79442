# Sourced by the demo and benchmark scripts: installs what is missing,
# builds the release binary, and sets
#   bin          the built mache-cachefs
#   python_src   Python's standard library (the default sample source tree)
#   work         a temporary directory, removed on exit
# and defines free_port and registry_config (a local docker-registry's config).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
cargo build --release --quiet
bin="$(realpath "${CARGO_TARGET_DIR:-target}")/release/mache-cachefs"
python_src="$(python3 -c 'import os, sysconfig; print(os.path.realpath(sysconfig.get_paths()["stdlib"]))')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Writes DIR/config.yml for a CNCF distribution registry (docker-registry)
# keeping its data in DIR/data and listening on 127.0.0.1:PORT.
registry_config() {
  mkdir -p "$1"
  cat >"$1/config.yml" <<YML
version: 0.1
log: {level: info, formatter: text}
storage: {filesystem: {rootdirectory: $1/data}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$2, secret: bench}
YML
}

# raw_db DB N MIN_BYTES: a mache db of N raw sources (no `_ast`), ids and
# paths by counter in 997 x 101 directories, content MIN_BYTES to
# MIN_BYTES + 100 random bytes.
raw_db() {
  sqlite3 "$1" >/dev/null <<SQL
PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
CREATE TABLE _source(id TEXT PRIMARY KEY, path TEXT, language TEXT, content BLOB);
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $2)
INSERT INTO _source
SELECT printf('pkg%03d/dir%03d/file%07d.go', i % 997, i % 101, i),
       printf('pkg%03d/dir%03d/file%07d.go', i % 997, i % 101, i),
       'go',
       randomblob($3 + i % 101)
FROM n;
SQL
}
