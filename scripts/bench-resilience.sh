#!/usr/bin/env bash
# When the registry fails: a loopback CNCF distribution registry (Debian's
# docker-registry, started here) is killed, hung and brought back under a
# mounted bundle (packed layout, SOURCES synthetic sources), and each figure
# is printed with its baseline or target from the same run:
#   1. push, mount, a few files read warm
#   2. registry killed (port refuses), three rounds, medians: the first cold
#      read (expected about --offline-after, bounded by --retry-budget), then
#      restarted: time until a cold read succeeds on the untouched mount
#      (probe ceiling 10 s); the cold reads after the first failure (goal
#      < 0.2 s each) and reads of files in the disk cache; 4 readers of
#      different cold files at the first failure
#   3. registry hung (SIGSTOP: connections accepted by the kernel, never
#      answered), --retry-budget $budget: 32 concurrent `cat`s of cold files;
#      meanwhile stat, listdir, .cachefs/status and statfs on the mount,
#      p50/p99/max (goal < 10 ms), in alternation with the same on a healthy
#      mount of a second registry (the baseline, under the same load); when
#      the 32 end (goal <= --retry-budget)
#   4. recovery: SIGCONT, time until a cold read succeeds (polled every 50 ms)
#   5. mount start with the registry down, a tag resolved before (goal
#      <= 1 s; baseline the registry up) and hung; with a cold cache (fails:
#      time, message, exit code); refs, verify, pull: time and exit code;
#      the registry back: time until the offline-started mount reads again
#   6. packets dropped (an nftables DROP rule in a network namespace of its
#      own, with a registry and the mount's daemon inside): the first cold
#      read, a mount start from the disk cache, a cold-cache mount
#      (scripts/setup.sh installs nftables)
# A summary table (markdown) comes last. Unexpected outcomes (a read that
# should fail succeeds, a cached read fails) are flagged and make the exit
# code 1; a step that cannot run stops the script at once.
#
#   scripts/bench-resilience.sh [SOURCES]   (default 20000; root: it mounts, and step 6 makes a network namespace)
source "$(dirname "$0")/common.sh"
n="${1:-20000}"
budget=10 # --retry-budget of step 3
[ "$(id -u)" = 0 ] || { echo "bench-resilience: needs root (it mounts)" >&2; exit 1; }
export XDG_CONFIG_HOME="$work/config" SOURCE_DATE_EPOCH=1748345600
trap 'echo "bench-resilience: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR
die() { echo "bench-resilience: FAILED: $*" >&2; exit 1; }
began=$(date +%s%N)
note() { echo "-- [$((($(date +%s%N) - began) / 1000000000)) s] $*" >&2; }
now() { date +%s%N; }
ms_since() { echo $((($(now) - $1) / 1000000)); }
py() { python3 "$work/helper.py" "$@"; }

# Every figure is printed as it comes and kept for the summary table.
rows=()
unexpected=0
row() { # figure, measured, baseline or target, verdict
  rows+=("| $1 | $2 | $3 | $4 |")
  printf '%-58s %s   [%s] %s\n' "$1" "$2" "$3" "$4"
}
verdict() { if python3 -c "import sys; sys.exit(0 if $1 else 1)"; then echo met; else echo "**not met**"; fi; }
# approx MS EXPECTED BOUND: within BOUND; "≈ EXPECTED" taken as at most 1.5x.
approx() {
  local ratio
  ratio=$(python3 -c "print(f'{$1/$2:.1f}')")
  if [ "$(verdict "$1 <= $3")" != met ]; then echo "**not met** (> $(($3 / 1000)) s)"
  elif [ "$(verdict "$1 <= 1.5 * $2")" = met ]; then echo "met (${ratio}×)"
  else echo "bound met; ≈ **not met** (${ratio}×)"; fi
}
flag() { unexpected=$((unexpected + 1)); echo "UNEXPECTED: $*" >&2; }

# The registry: its own root and port, started and stopped by this script.
port=$(free_port)
url="http://127.0.0.1:$port"
registry_config "$work/registry" "$port"
registry="" registry2="" ns="" ns_registry="" cats=() par_maxes=()
mnt="$work/mnt" other="$work/other"; mkdir -p "$mnt" "$other"
daemons() { pgrep -f "mount .*$1" || true; }
cleanup() {
  set +e
  note "cleaning up"
  trap - ERR
  for pid in "${cats[@]}"; do kill "$pid" 2>/dev/null; done
  local pids
  pids="$(daemons "$mnt") $(daemons "$other")"
  mountpoint -q "$mnt" && "$bin" -q unmount "$mnt"
  mountpoint -q "$other" && "$bin" -q unmount "$other"
  for pid in $pids; do for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done; done
  [ -n "$registry" ] && kill -CONT "$registry" 2>/dev/null && kill -KILL "$registry" 2>/dev/null
  [ -n "$registry2" ] && kill -CONT "$registry2" 2>/dev/null && kill -KILL "$registry2" 2>/dev/null
  [ -n "$ns_registry" ] && kill -KILL "$ns_registry" 2>/dev/null
  if [ -n "$ns" ]; then
    # Whatever this script started in its namespace and is still there.
    for pid in $(ip netns pids "$ns"); do kill -KILL "$pid"; done
    ip netns del "$ns"
  fi
  rm -rf "$work"
  note "cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
answers() { curl -s -o /dev/null --max-time 1 "$url/v2/"; }
start_registry() {
  local start
  start=$(now)
  docker-registry serve "$work/registry/config.yml" >>"$work/registry/access.log" 2>>"$work/registry/registry.log" &
  registry=$!
  until answers; do kill -0 "$registry" 2>/dev/null || die "the registry did not start (see its log)"; sleep 0.02; done
  registry_start_ms=$(ms_since "$start")
}
kill_registry() {
  kill -KILL "$registry"
  wait "$registry" 2>/dev/null || true
  registry=""
  # curl exit 7: could not connect (refused).
  local rc=0
  curl -s -o /dev/null --max-time 2 "$url/v2/" || rc=$?
  [ "$rc" = 7 ] || die "the registry's port should refuse connections now (curl exit $rc)"
}
remote=(--remote "$url" --scope bench/resilience)
mount_remote() { "$bin" -q mount --daemon "${remote[@]}" --ref latest "$@" "$mnt"; }
# Unmounts (default: $mnt), then waits for the daemon to exit.
unmount() {
  local pids at=${1:-$mnt}
  pids=$(daemons "$at")
  "$bin" -q unmount "$at"
  for pid in $pids; do while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done; done
}
status() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$mnt/.cachefs/status" "$1"; }
# run NAME COMMAND...: runs a command expected to finish (maybe failing);
# sets rc, took (ms) and msg (its first stderr line).
run() {
  local start
  start=$(now)
  rc=0
  "${@:2}" >"$work/$1.out" 2>"$work/$1.err" || rc=$?
  took=$(ms_since "$start")
  msg=$(grep -v '^[[:space:]]*$' "$work/$1.err" | head -1 || true)
}

cat >"$work/helper.py" <<'PY'
import collections, errno, os, random, sqlite3, statistics, sys, threading, time

def read(path):
    """(ms, "ok" | errno name) of reading a whole file."""
    start = time.perf_counter()
    try:
        with open(path, "rb") as f:
            while f.read(1 << 20):
                pass
        outcome = "ok"
    except OSError as e:
        outcome = errno.errorcode.get(e.errno, str(e.errno))
    return (time.perf_counter() - start) * 1000, outcome

def listing(root, name):
    return [os.path.join(root, p) for p in open(name).read().split("\n") if p]

def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "lists":
    # lists DB OUT ROLE:COUNT:f|d...: files (or their directories) of the
    # db's sources, one per leaf directory, each role disjoint from the others.
    db, out, roles = args[0], args[1], args[2:]
    paths = [r[0] for r in sqlite3.connect(db).execute("SELECT path FROM _source ORDER BY path")]
    random.Random(1).shuffle(paths)
    one_per_dir = {}
    for p in paths:
        one_per_dir.setdefault(os.path.dirname(p), p)
    groups = list(one_per_dir.items())
    i = 0
    for role in roles:
        name, count, kind = role.split(":")
        chosen = groups[i:i + int(count)]
        if len(chosen) < int(count):
            sys.exit(f"not enough directories for {name}: make more sources")
        with open(f"{out}/{name}", "w") as f:
            f.writelines((p if kind == "f" else d) + "\n" for d, p in chosen)
        i += int(count)
elif cmd == "read":
    # read ROOT LISTING [all]: reads each file, one after the other or all at
    # once (one thread each, released together); a line "ms outcome" each.
    files = listing(args[0], args[1])
    if len(args) > 2:
        barrier, results = threading.Barrier(len(files)), [None] * len(files)
        def run(i):
            barrier.wait()
            results[i] = read(files[i])
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(files))]
        for t in threads: t.start()
        for t in threads: t.join()
    else:
        results = [read(f) for f in files]
    for ms, outcome in results:
        print(f"{ms:.2f} {outcome}")
elif cmd == "summary":
    # summary < "ms outcome" lines: median max count ok failed outcomes
    lines = [l.split() for l in sys.stdin if l.strip()]
    ms = [float(l[0]) for l in lines]
    outcomes = collections.Counter(l[1] for l in lines)
    ok = outcomes.pop("ok", 0)
    print(f"{statistics.median(ms):.1f} {max(ms):.1f} {len(ms)} {ok} {sum(outcomes.values())} "
          + (",".join(f"{k}x{v}" for k, v in outcomes.items()) or "-"))
elif cmd == "poll":
    # poll PATH START_NS LIMIT_S: reads PATH every 50 ms until it succeeds;
    # prints ms since START_NS and the attempts (exit 1 past LIMIT_S).
    path, start, limit = args[0], int(args[1]), float(args[2])
    attempts = 0
    while True:
        attempts += 1
        if read(path)[1] == "ok":
            print(f"{(time.time_ns() - start) / 1e6:.0f} {attempts}")
            break
        if time.time_ns() - start > limit * 1e9:
            sys.exit(f"no successful read within {limit} s ({attempts} attempts)")
        time.sleep(0.05)
elif cmd == "meta":
    # meta MNT OTHER FILES DIRS ROUNDS UNTIL_NS: rounds of stat (a file not
    # looked up before), listdir (a directory not listed before), read of
    # .cachefs/status and statfs, on MNT ("hung") and then OTHER ("healthy",
    # unless "-"), 5 ms apart; stops at UNTIL_NS (0: never). A line per
    # mount and operation: mount name count p50 p99 max (ms); "window ms".
    mounts = [("hung", args[0])] + ([("healthy", args[1])] if args[1] != "-" else [])
    rounds, until = int(args[4]), int(args[5])
    times = {(m, op): [] for m, _ in mounts for op in ("stat", "listdir", "status", "statfs")}
    def status(mnt):
        with open(mnt + "/.cachefs/status", "rb") as f:
            f.read()
    plans = []
    for name, mnt in mounts:
        files, dirs = listing(mnt + "/sources", args[2]), listing(mnt + "/sources", args[3])
        plans.append((name, mnt, files, dirs))
    started = time.time_ns()
    for i in range(min(rounds, len(plans[0][2]), len(plans[0][3]))):
        if until and time.time_ns() >= until:
            break
        for name, mnt, files, dirs in plans:
            for op, run in (("stat", lambda: os.stat(files[i])), ("listdir", lambda: os.listdir(dirs[i])),
                            ("status", lambda: status(mnt)), ("statfs", lambda: os.statvfs(mnt))):
                t = time.perf_counter()
                run()
                times[(name, op)].append((time.perf_counter() - t) * 1000)
        time.sleep(0.005)
    for (name, op), xs in times.items():
        print(f"{name} {op} {len(xs)} {pct(xs, 0.5):.2f} {pct(xs, 0.99):.2f} {max(xs):.2f}")
    print(f"window {(time.time_ns() - started) / 1e6:.0f}")
PY

# 1. A sample bundle, pushed; the file lists (disjoint, one file per leaf
# directory, so every stat and listdir below reaches the mount).
note "1. sample of $n synthetic sources, push to $url"
python3 scripts/make-sample-db.py --synthetic "$n" "$work/synth.db" >/dev/null 2>&1
start_registry
push_start=$(now)
"$bin" -q push --db "$work/synth.db" "$work/local" "${remote[@]}" >/dev/null
push_ms=$(ms_since "$push_start")
mkdir -p "$work/lists"
py lists "$work/synth.db" "$work/lists" \
  warm:10:f healthy:20:f first:3:f cold:20:f poll1:3:f parallel:12:f \
  cats:32:f meta_stat:1500:f meta_dirs:1500:d poll2:1:f \
  offline_cold:1:f drop_first:1:f drop_cold:20:f
l="$work/lists"
row "push, $n sources (packed)" "$((push_ms / 1000)).$((push_ms % 1000 / 100)) s" "—" ""

# 2. The registry killed under a mount. Three rounds (mount, kill, the
# first cold read, restart, time until a cold read succeeds), medians; the
# first round also times the cold reads after the first failure and the
# files in the disk cache. Then three rounds of 4 readers at the first failure.
note "2. registry killed (SIGKILL: the port refuses)"
export XDG_CACHE_HOME="$work/cache-a"
mount_remote
read -r healthy_med healthy_max _ healthy_ok _ _ < <(py read "$mnt/sources" "$l/healthy" | py summary)
[ "$healthy_ok" = 20 ] || die "cold reads fail with the registry up"
py read "$mnt/sources" "$l/warm" | py summary >/dev/null
# A new daemon below: the warm files are in the disk cache only.
unmount
firsts=() recoveries=() recovery_notes=()
for round in 1 2 3; do
  mount_remote
  kill_registry
  read -r first_ms first_out < <(py read "$mnt/sources" <(sed -n "${round}p" "$l/first"))
  [ "$first_out" = EIO ] || flag "first cold read with the registry killed: $first_out"
  firsts+=("$(printf %.0f "$first_ms")")
  if [ "$round" = 1 ]; then
    read -r cold_med cold_max cold_n _ cold_failed cold_outs < <(py read "$mnt/sources" "$l/cold" | py summary)
    [ "$cold_failed" = "$cold_n" ] || flag "cold reads with the registry down: $cold_outs, $((cold_n - cold_failed)) ok"
    read -r warm_med warm_max warm_n warm_ok _ warm_outs < <(py read "$mnt/sources" "$l/warm" | py summary)
    [ "$warm_ok" = "$warm_n" ] || flag "reads of files in the disk cache with the registry down: $warm_outs"
  fi
  state=$(status 'd["remote"]["health"]["state"]')
  [ "$state" = down ] || flag "status says the registry is $state after the failures"
  probes=$(status 'd["remote"]["health"]["probes"]')
  down_for=$(status 'round(__import__("time").time() - __import__("datetime").datetime.fromisoformat(d["remote"]["health"]["since"].replace("Z","+00:00")).timestamp(), 1)')
  start_registry
  up=$(now)
  read -r recover_ms recover_tries < <(py poll "$mnt/sources/$(sed -n "${round}p" "$l/poll1")" "$up" 30)
  recoveries+=("$recover_ms")
  recovery_notes+=("$recover_ms ms: down ${down_for} s, $probes probes, $recover_tries reads, registry start $registry_start_ms ms")
  unmount
done
median() { printf '%s\n' "$@" | sort -n | sed -n "$((($# + 1) / 2))p"; }
first_median=$(median "${firsts[@]}")
row "killed: first cold read (fails), median of 3" "$first_median ms (runs ${firsts[*]}), EIO" "≈ --offline-after 5 s; ≤ --retry-budget 30 s" \
  "$(approx "$first_median" 5000 30000)"
row "killed: next $cold_n cold reads (fail)" "median $cold_med ms, max $cold_max ms ($cold_outs)" "goal < 200 ms each; healthy cold read: median $healthy_med ms" \
  "$(verdict "$cold_max < 200")"
row "killed: $warm_n files in the disk cache (new daemon)" "median $warm_med ms, max $warm_max ms, $warm_ok/$warm_n read" "all read" \
  "$([ "$warm_ok" = "$warm_n" ] && echo met || echo '**not met**')"
recover_median=$(median "${recoveries[@]}")
row "killed → restarted: a cold read succeeds, median of 3" "$recover_median ms after it answered (runs ${recoveries[*]})" \
  "probe backoff ceiling 10 s, no remount" "$(verdict "$recover_median <= 10500")"
printf '    recovery %s\n' "${recovery_notes[@]}"
pars=()
for round in 1 2 3; do
  mount_remote
  kill_registry
  py read "$mnt/sources" <(sed -n "$((round * 4 - 3)),$((round * 4))p" "$l/parallel") all >"$work/parallel.txt"
  read -r _ par_max par_n _ par_failed par_outs < <(py summary <"$work/parallel.txt")
  [ "$par_failed" = "$par_n" ] || flag "parallel cold reads with the registry killed: $par_outs"
  pars+=("$(awk '{printf "%s%.0f", (NR > 1 ? "/" : ""), $1}' "$work/parallel.txt")")
  par_maxes+=("$(printf %.0f "$par_max")")
  unmount
  start_registry
done
par_median=$(median "${par_maxes[@]}")
row "killed: 4 readers of cold files at the first failure, 3 rounds" "slowest: median $par_median ms (rounds ${pars[*]} ms), all EIO" \
  "≈ --offline-after 5 s; ≤ --retry-budget 30 s" "$(approx "$par_median" 5000 30000)"

# 3. The registry hung: SIGSTOP; 32 cold readers; metadata meanwhile, on
# this mount and, in alternation, on a healthy one (a second registry over
# the same data, a mount of its own): the baseline under the same load.
note "3. registry hung (SIGSTOP), --retry-budget $budget, 32 cold readers"
port2=$(free_port)
sed "s/127.0.0.1:$port/127.0.0.1:$port2/" "$work/registry/config.yml" >"$work/registry/config2.yml"
docker-registry serve "$work/registry/config2.yml" >>"$work/registry/access.log" 2>>"$work/registry/registry.log" &
registry2=$!
until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$port2/v2/"; do kill -0 "$registry2" 2>/dev/null || die "the second registry did not start"; sleep 0.02; done
XDG_CACHE_HOME="$work/cache-b2" "$bin" -q mount --daemon --remote "http://127.0.0.1:$port2" --scope bench/resilience --ref latest --retry-budget "$budget" "$other"
export XDG_CACHE_HOME="$work/cache-b"
mount_remote --retry-budget "$budget"
kill -STOP "$registry"
mkdir -p "$work/cats"
hang=${EPOCHREALTIME/./}
i=0
while read -r path; do
  { rc=0; cat "$mnt/sources/$path" >/dev/null 2>"$work/cats/$i.err" || rc=$?; echo "$rc ${EPOCHREALTIME/./}" >"$work/cats/$i.end"; } &
  cats+=($!)
  i=$((i + 1))
done <"$l/cats"
sleep 0.3
py meta "$mnt" "$other" "$l/meta_stat" "$l/meta_dirs" 100000 $(((hang + (budget - 1) * 1000000) * 1000)) >"$work/meta.txt"
meta_window=$(awk '/^window/ {print $2}' "$work/meta.txt")
hung_state=$(status 'd["remote"]["health"]["state"]')
for pid in "${cats[@]}"; do wait "$pid" || true; done
cats=()
unmount "$other"
kill -KILL "$registry2"
wait "$registry2" 2>/dev/null || true
registry2=""
cat_ends=$(cat "$work"/cats/*.end | awk -v h="$hang" '{printf "%.0f %s\n", ($2 - h) / 1e3, $1}' | sort -n)
cat_first=$(head -1 <<<"$cat_ends" | cut -d' ' -f1)
cat_last=$(tail -1 <<<"$cat_ends" | cut -d' ' -f1)
cat_failed=$(awk '$2 != 0' <<<"$cat_ends" | wc -l)
eio=$(grep -l "Input/output error" "$work"/cats/*.err 2>/dev/null | wc -l)
[ "$cat_failed" = 32 ] || flag "$((32 - cat_failed)) of the 32 readers succeeded with the registry stopped"
for op in stat listdir status statfs; do
  read -r _ _ hn hp50 hp99 hmax < <(grep "^hung $op " "$work/meta.txt")
  read -r _ _ bn bp50 bp99 bmax < <(grep "^healthy $op " "$work/meta.txt")
  goal=$(verdict "$hp99 < 10")
  [ "$goal" = met ] || [ "$(verdict "$bp99 < 10")" = met ] || goal="$goal (the healthy mount's neither)"
  row "hung: $op during the 32 reads, $hn samples" "p50 $hp50 / p99 $hp99 / max $hmax ms" "goal p99 < 10 ms; healthy mount at the same time: p50 $bp50 / p99 $bp99 / max $bmax ms" "$goal"
done
row "hung: the 32 cold readers end" "first at $cat_first ms, last at $cat_last ms; $cat_failed failed ($eio with EIO)" "≤ --retry-budget $budget s" \
  "$(verdict "$cat_last <= $budget * 1000 + 500")"
note "metadata sampled for $meta_window ms while the readers waited; health then: $hung_state, after: $(status 'd["remote"]["health"]["state"]')"

# 4. Recovery: SIGCONT, the mount untouched.
note "4. recovery: SIGCONT"
probes_before=$(status 'd["remote"]["health"]["probes"]')
resumed=$(now)
kill -CONT "$registry"
read -r resume_ms resume_tries < <(py poll "$mnt/sources/$(cat "$l/poll2")" "$resumed" 30)
row "hung → SIGCONT: cold read succeeds again" "$resume_ms ms ($resume_tries reads, $probes_before probes before)" "probe backoff ceiling 10 s, no remount" \
  "$(verdict "$resume_ms <= 10500")"
unmount

# 5. Mount start with the registry down; the other commands.
note "5. mount start with the registry down (tag resolved before: cache-b)"
# Three mount starts (the last stays mounted): ready (median) and runs.
ready_rounds() {
  local times=() i
  for i in 1 2 3; do
    run mount "$bin" mount --daemon "${remote[@]}" --ref latest "$mnt"
    [ "$rc" = 0 ] || die "mount failed ($rc): $msg"
    times+=("$took")
    [ "$i" = 3 ] || unmount
  done
  ready=$(printf '%s\n' "${times[@]}" | sort -n | sed -n 2p)
  runs="${times[*]}"
}
ready_rounds
up_ready=$ready up_runs=$runs
unmount
kill -STOP "$registry"
run mount "$bin" mount --daemon "${remote[@]}" --ref latest "$mnt"
[ "$rc" = 0 ] || flag "mount from the disk cache with the registry hung failed ($rc): $msg"
hung_ready=$took
hung_msg=$msg
mountpoint -q "$mnt" && unmount
kill -CONT "$registry"
kill_registry
ready_rounds
down_ready=$ready down_runs=$runs
down_msg=$(grep -v '^[[:space:]]*$' "$work/mount.err" | head -1 || true)
[ -n "$down_msg" ] || flag "no warning from a mount that came up from the disk cache"
offline_state=$(status 'd["remote"]["health"]["state"]')
read -r ocached_ms ocached_out < <(py read "$mnt/sources" "$l/poll2")
read -r ocold_ms ocold_out < <(py read "$mnt/sources" "$l/offline_cold")
[ "$ocached_out" = ok ] || flag "a cached file does not read on a mount started offline: $ocached_out"
[ "$ocold_out" = EIO ] || flag "an uncached file on a mount started offline: $ocold_out"
offline_up=$(now)
row "mount start, registry killed, tag in the disk cache" "median $down_ready ms (runs $down_runs); health $offline_state" "goal ≤ 1 s; registry up: median $up_ready ms (runs $up_runs)" \
  "$(verdict "$down_ready <= 1000")"
row "mount started offline: a cached / an uncached read" "$ocached_ms ms $ocached_out / $ocold_ms ms $ocold_out" "ok / EIO at once" \
  "$([ "$ocached_out" = ok ] && [ "$ocold_out" = EIO ] && echo met || echo '**not met**')"
row "mount start, registry hung (SIGSTOP), tag in the disk cache" "$hung_ready ms" "goal: the connect timeout (5 s; the one attempt waits no longer for a first byte)" \
  "$(verdict "$hung_ready <= 5500")"
# That mount stays while the other commands run (on another mountpoint).
XDG_CACHE_HOME="$work/cache-c" run coldmount "$bin" mount --daemon "${remote[@]}" --ref latest "$other"
mountpoint -q "$other" && { flag "a cold-cache mount with the registry down succeeded"; unmount "$other"; }
row "mount start, registry killed, cold cache (fails)" "$took ms, exit $rc" "a few seconds, exit 8" "$(verdict "$took <= 10000 and $rc == 8")"
coldmount_msg=$msg
for command in refs verify pull; do
  case $command in
    refs) run refs "$bin" -q refs "${remote[@]}" ;;
    verify) run verify "$bin" -q verify "${remote[@]}" --ref latest ;;
    pull) run pull "$bin" -q pull "${remote[@]}" --ref latest --out-db "$work/pulled.db" ;;
  esac
  [ "$rc" != 0 ] || flag "$command succeeded with the registry killed"
  row "$command, registry killed (warm cache)" "$took ms, exit $rc" "a few seconds, exit 8" "$(verdict "$took <= 10000 and $rc == 8")"
  eval "${command}_msg=\$msg"
done
# The mount that started offline recovers by itself once the registry is back.
offline_probes=$(status 'd["remote"]["health"]["probes"]')
offline_for=$((($(now) - offline_up) / 1000000000))
start_registry
up=$(now)
read -r orecover_ms orecover_tries < <(py poll "$mnt/sources/$(cat "$l/offline_cold")" "$up" 30)
row "mount started offline, down ${offline_for} s, registry restarted: a cold read succeeds" "$orecover_ms ms after it answered ($orecover_tries reads, $offline_probes probes before)" \
  "probe backoff ceiling 10 s, no remount" "$(verdict "$orecover_ms <= 10500")"
unmount
kill_registry

# 6. Packets dropped: a network namespace with its own loopback, a registry
# over the same data and the mount's daemon inside; an nftables rule drops
# every packet to the registry's port.
note "6. packets dropped (nftables in a network namespace)"
drop_note=""
if ! command -v nft >/dev/null; then
  drop_note="skipped: no nft (apt-get install nftables)"
  row "packets dropped" "—" "$drop_note" ""
else
  ns="mache-bench-$$"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  inns() { nsenter --net="/run/netns/$ns" "$@"; }
  # Not through inns: $! must be the registry itself.
  nsenter --net="/run/netns/$ns" docker-registry serve "$work/registry/config.yml" >>"$work/registry/access.log" 2>>"$work/registry/registry.log" &
  ns_registry=$!
  until inns curl -s -o /dev/null --max-time 1 "$url/v2/"; do kill -0 "$ns_registry" || die "the registry in $ns did not start"; sleep 0.02; done
  export XDG_CACHE_HOME="$work/cache-d"
  inns "$bin" -q mount --daemon "${remote[@]}" --ref latest "$mnt"
  read -r _ _ drop_warm_n drop_warm_ok _ _ < <(py read "$mnt/sources" "$l/warm" | py summary)
  [ "$drop_warm_n" = "$drop_warm_ok" ] || die "reads fail in $ns before any packet is dropped"
  inns nft -f - <<NFT
table inet bench {
  chain out { type filter hook output priority 0; tcp dport $port drop; }
}
NFT
  read -r drop_first_ms drop_first_out < <(py read "$mnt/sources" "$l/drop_first")
  read -r drop_med drop_max drop_n _ drop_failed drop_outs < <(py read "$mnt/sources" "$l/drop_cold" | py summary)
  [ "$drop_first_out" = EIO ] && [ "$drop_failed" = "$drop_n" ] || flag "cold reads with packets dropped: $drop_first_out, then $drop_outs"
  row "dropped: first cold read (pooled connection)" "$(printf %.0f "$drop_first_ms") ms, $drop_first_out" "≈ --read-timeout 10 s, ≤ --retry-budget 30 s" "$(verdict "$drop_first_ms <= 30000")"
  row "dropped: next $drop_n cold reads" "median $drop_med ms, max $drop_max ms" "goal < 200 ms each" "$(verdict "$drop_max < 200")"
  unmount
  run dropmount inns "$bin" mount --daemon "${remote[@]}" --ref latest "$mnt"
  [ "$rc" = 0 ] || flag "mount from the disk cache with packets dropped failed ($rc): $msg"
  drop_mount_msg=$msg
  mountpoint -q "$mnt" && unmount
  row "dropped: mount start, tag in the disk cache" "$took ms, exit $rc" "goal: the connect timeout (5 s)" "$(verdict "$took <= 5500")"
  XDG_CACHE_HOME="$work/cache-e" run dropcold inns "$bin" mount --daemon "${remote[@]}" --ref latest "$mnt"
  mountpoint -q "$mnt" && { flag "a cold-cache mount with packets dropped succeeded"; unmount; }
  row "dropped: mount start, cold cache (fails)" "$took ms, exit $rc" "a few seconds, exit 8" "$(verdict "$took <= 10000 and $rc == 8")"
  drop_cold_msg=$msg
  kill -KILL "$ns_registry"
  wait "$ns_registry" 2>/dev/null || true
  ns_registry=""
  ip netns del "$ns"
  ns=""
fi

echo
echo "Messages:"
echo "  mount, registry killed, tag cached:  $down_msg"
echo "  mount, registry hung, tag cached:    $hung_msg"
echo "  mount, registry killed, cold cache:  $coldmount_msg"
echo "  refs:    $refs_msg"
echo "  verify:  $verify_msg"
echo "  pull:    $pull_msg"
if [ -z "$drop_note" ]; then
  echo "  mount, packets dropped, tag cached:  $drop_mount_msg"
  echo "  mount, packets dropped, cold cache:  $drop_cold_msg"
fi
echo
note "done"
echo "Summary ($n sources, loopback docker-registry $(dpkg-query -W -f '${Version}' docker-registry 2>/dev/null || echo '?'), $(nproc) CPUs):"
echo
echo "| figure | measured | baseline / target | goal |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if ((unexpected)); then
  echo "bench-resilience: $unexpected unexpected outcomes (above)" >&2
  exit 1
fi
