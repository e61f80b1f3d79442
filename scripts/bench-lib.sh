# Sourced by the mount benchmarks: timing, kernel caches and the mount under
# test. Expects $bin (the mache-cachefs binary) and $mnt (the mountpoint).

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
timed() { # COMMAND... -> its milliseconds on stdout, its output discarded
  local start
  start=$(date +%s%N)
  "$@" >/dev/null
  ms_since "$start"
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# status EXPR: a Python expression over the status document `d`.
status() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$mnt/.cachefs/status" "$1"; }
unmount() { "$bin" -q unmount "$mnt" 2>/dev/null || true; }
# mount_ready STORE ERR_FILE: mounts STORE three times, each from the
# daemon's start until the first `ls` answers; prints the median and the
# three, in ms. The last mount stays, its stderr in ERR_FILE.
mount_ready() {
  local ready=() start
  for _ in 1 2 3; do
    unmount
    start=$(date +%s%N)
    "$bin" mount "$1" --daemon "$mnt" 2>"$2"
    ls "$mnt" >/dev/null
    ready+=("$(ms_since "$start")")
  done
  echo "$(printf '%s\n' "${ready[@]}" | sort -n | sed -n 2p) ${ready[*]}"
}
