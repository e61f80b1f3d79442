#!/usr/bin/env bash
# `serve` under load and abuse, each figure with its baseline from the same run:
#   - 200 clients pulling (manifest, then a whole blob, re-hashed) while 4
#     push (a fresh blob in a session of two PATCHes, a manifest naming it,
#     both read back), for SECS seconds over kept-alive connections: whole-
#     blob GET latency p50/p99 against one client alone (the unloaded
#     baseline, measured first), and the ratio. Any error or corrupt blob
#     fails the run. The load is the test
#     `two_hundred_pullers_and_four_pushers_get_no_error_and_no_corrupt_blob`
#     of tests/serve.rs, run longer and harder through MACHE_LOAD_*.
#   - 900 connections that send half a request head: the server's open
#     files with them, and once --header-timeout (3 s here) has passed.
#     BEFORE_BIN=path/to/an/older/mache-cachefs measures that one too.
#
#   scripts/bench-serve-load.sh [SECS [PULLERS [PUSHERS]]]   (defaults 60 200 4)
source "$(dirname "$0")/common.sh"
secs="${1:-60}" pullers="${2:-200}" pushers="${3:-4}"

echo "== load: $pullers pullers, $pushers pushers, $secs s (plus the unloaded baseline)"
out="$(MACHE_LOAD_SECS="$secs" MACHE_LOAD_PULLERS="$pullers" MACHE_LOAD_PUSHERS="$pushers" \
  cargo test --release --quiet --test serve -- --exact --nocapture \
  two_hundred_pullers_and_four_pushers_get_no_error_and_no_corrupt_blob 2>&1)" ||
  { echo "$out" >&2; echo "the load run failed" >&2; exit 1; }
line="$(grep '^serve-load:' <<<"$out")"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$line"; }
printf '%-28s %s\n' "blobs pulled (re-hashed)" "$(field pulls)" \
  "blobs pushed (read back)" "$(field pushes)" \
  "errors / corrupt blobs" "$(field errors) / $(field corrupt)" \
  "unloaded GET p50 / p99 ms" "$(field baseline_p50_ms) / $(field baseline_p99_ms)" \
  "loaded GET p50 / p99 ms" "$(field loaded_p50_ms) / $(field loaded_p99_ms)" \
  "loaded / unloaded p50, p99" "$(field ratio_p50)x, $(field ratio_p99)x"

half_open() { # binary [serve flags...]: open files with 900 half-head connections, and after 3 s + 5 s
  python3 - "$work/half-open-store" "$@" <<'PY'
import os, resource, socket, subprocess, sys, time
resource.setrlimit(resource.RLIMIT_NOFILE, (8192, 8192))
store, binary, flags = sys.argv[1], sys.argv[2], sys.argv[3:]
server = subprocess.Popen([binary, "serve", store, "--listen", "127.0.0.1:0"] + flags,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
port = int(server.stdout.readline().decode().strip().rsplit(":", 1)[1])
fds = lambda: len(os.listdir(f"/proc/{server.pid}/fd"))
baseline = fds()
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(900)]
for c in conns:
    c.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nUser-Agent: slow")
deadline = time.time() + 20
while fds() < baseline + 900 and time.time() < deadline:
    time.sleep(0.05)
held = fds()
time.sleep(8)  # the measurement's interval: 3 s of header timeout and 5 s to spare
print(f"{baseline} {held} {fds()}")
server.terminate()
server.wait()
PY
}
echo "== 900 half-open connections: open files (idle server / with them / 8 s later)"
read -r base held after < <(half_open "$bin" --header-timeout 3s)
printf '%-28s %s / %s / %s\n' "this build (--header-timeout 3s)" "$base" "$held" "$after"
if [ -n "${BEFORE_BIN:-}" ]; then
  read -r base held after < <(half_open "$BEFORE_BIN")
  printf '%-28s %s / %s / %s\n' "BEFORE_BIN" "$base" "$held" "$after"
fi
