#!/usr/bin/env bash
# Soak test of a mount: READS random reads (default 1,000,000), each of 1 B
# to 1 MiB at a random offset of a random file, over a bundle of SOURCES
# (default 10,000) synthetic sources mounted from a local store with a
# memory cache (--memory-cache, default 16M) smaller than its chunks, so
# chunks are evicted and read again all along (each file's pages are
# dropped from the kernel's cache after its read, so every read reaches
# the daemon). Every read is compared with
# the original bytes (the db's _source rows). The daemon's RSS and open fds
# are sampled every 1,000 reads.
#
#   scripts/soak.sh [READS]
#
# Environment:
#   SOAK_SOURCES=N       sources in the bundle (default 10000)
#   SOAK_MEMORY_CACHE=S  the mount's --memory-cache (default 16M)
#   SOAK_SECONDS=S       stop after S seconds even if READS are not done
#                        (the figures say how many were made)
#   SOAK_RSS_LIMIT_MB=M  the RSS bound (default 256)
#   SOAK_SEED=N          the reads' seed (default 16)
#   MACHE_CACHEFS_BIN=B  use this binary; skip setup and build (the mount
#                        test's short run)
# Needs root (it mounts). Exits 0 only with zero errors, zero mismatches,
# the RSS under its bound throughout and no growth in open fds (the last
# sample at most the first, plus 2 for fds the daemon opens once, such as
# a log); it prints the figures either way.
set -euo pipefail
cd "$(dirname "$0")/.."
reads="${1:-1000000}"
sources="${SOAK_SOURCES:-10000}"
memory_cache="${SOAK_MEMORY_CACHE:-16M}"
if [ -n "${MACHE_CACHEFS_BIN:-}" ]; then
  bin="$MACHE_CACHEFS_BIN"
  work="$(mktemp -d)"
else
  source scripts/common.sh
fi
mnt="$work/mnt"
mkdir -p "$mnt"
export XDG_CACHE_HOME="$work/cache" XDG_CONFIG_HOME="$work/config"
trap 'mountpoint -q "$mnt" && "$bin" -q unmount "$mnt"; rm -rf "$work"' EXIT

python3 scripts/make-sample-db.py --synthetic "$sources" --seed 1 "$work/soak.db" >/dev/null
"$bin" -q push --db "$work/soak.db" "$work/store" >/dev/null
said="$("$bin" mount "$work/store" --memory-cache "$memory_cache" --daemon "$mnt" 2>&1)"
daemon="$(sed -n 's/.*daemon pid \([0-9]*\).*/\1/p' <<<"$said")"
[ -n "$daemon" ] || { echo "no daemon pid in: $said" >&2; exit 1; }

python3 - "$work/soak.db" "$mnt" "$daemon" "$reads" "${SOAK_SECONDS:-0}" \
  "${SOAK_RSS_LIMIT_MB:-256}" "${SOAK_SEED:-16}" "$memory_cache" <<'PY'
import json, os, random, sqlite3, sys, time

db, mnt, pid, reads, seconds, rss_limit_mb, seed, memory_cache = sys.argv[1:]
reads, seconds, rss_limit_mb, seed = int(reads), float(seconds), int(rss_limit_mb), int(seed)
rows = sqlite3.connect(db).execute(
    "SELECT path, content FROM _source WHERE length(content) > 0").fetchall()
originals = [(os.path.join(mnt, "sources", path), bytes(content)) for path, content in rows]
data_bytes = sum(len(c) for _, c in originals)

def rss_mb():
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")

def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))

rng = random.Random(seed)
errors = mismatches = done = bytes_read = 0
first_error = None
rss_samples, fd_samples = [rss_mb()], [fds()]
started = time.monotonic()
while done < reads and not (seconds and time.monotonic() - started > seconds):
    path, original = originals[rng.randrange(len(originals))]
    offset = rng.randrange(len(original))
    length = rng.randint(1, 1 << 20)
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            got = os.pread(fd, length, offset)
            # Drop the file's pages from the kernel's cache, so that a file
            # read again reaches the daemon (and its memory cache) again.
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        bytes_read += len(got)
        if got != original[offset:offset + length]:
            mismatches += 1
            first_error = first_error or f"mismatch: {path} at {offset}+{length}"
    except OSError as e:
        errors += 1
        first_error = first_error or f"{path} at {offset}+{length}: {e}"
    done += 1
    if done % 1000 == 0:
        rss_samples.append(rss_mb())
        fd_samples.append(fds())
elapsed = time.monotonic() - started
with open(os.path.join(mnt, ".cachefs/status")) as f:
    status = json.load(f)
rss_ok = max(rss_samples) <= rss_limit_mb
fds_ok = fd_samples[-1] <= fd_samples[0] + 2
print(f"soak: {done} of {reads} reads in {elapsed:.1f}s ({done / elapsed:.0f} reads/s, "
      f"{bytes_read / 2**20:.1f} MiB) over {len(originals)} files ({data_bytes / 2**20:.1f} MiB), "
      f"memory cache {memory_cache}, seed {seed}")
print(f"errors {errors}, mismatches {mismatches}" + (f" (first: {first_error})" if first_error else ""))
print(f"daemon RSS MiB: start {rss_samples[0]:.1f}, max {max(rss_samples):.1f}, "
      f"end {rss_samples[-1]:.1f} ({len(rss_samples)} samples; bound {rss_limit_mb})")
tenths = [rss_samples[len(rss_samples) * i // 10] for i in range(1, 10)]
print("daemon RSS MiB at each tenth of the run: " + ", ".join(f"{r:.1f}" for r in tenths))
print(f"daemon open fds: start {fd_samples[0]}, max {max(fd_samples)}, end {fd_samples[-1]}")
print(f"daemon: chunks fetched {status['chunks_fetched']}, cache hits {status['cache']['hits']}, "
      f"misses {status['cache']['misses']}, errors {status['errors']}, "
      f"verification failures {status['verification_failures']}")
ok = errors == 0 and mismatches == 0 and rss_ok and fds_ok and status["errors"] == 0
print("soak: " + ("PASS" if ok else "FAIL"))
sys.exit(0 if ok else 1)
PY
