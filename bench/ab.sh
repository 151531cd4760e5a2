#!/usr/bin/env bash
# A/B of two floe builds on one machine, built to avoid order and file-system bias:
# repetitions alternate the order (A B, B A, A B, ...), one load generator drives both
# (B's `floe bench`, so only the agent differs), every agent gets a fresh data folder, and
# the folders are deleted only after the last run (deleting thousands of segment files
# between runs slowed the next run's inode allocation in perf profiles). `sync` and a
# pause between runs. Prints each run and, per side, the median and spread of records/s.
#   REPS=4 bash bench/ab.sh A_BINARY B_BINARY [floe bench args...]
#   e.g. bash bench/ab.sh /tmp/floe-old target/release/floe --partitions 1 --no-consume
# Defaults for the bench args: --producers 8 --batch 100 --record-bytes 1024 --seconds 10.
# Also reports the agent's CPU (user + system) per MiB produced over the run.
# A_ENV / B_ENV: environment for that side's agent only (e.g. A_ENV="MIMALLOC_PURGE_DELAY=0").
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 A_BINARY B_BINARY [floe bench args...]" >&2; exit 2; }
A=$1 B=$2; shift 2
ARGS=("$@"); [ ${#ARGS[@]} -gt 0 ] || ARGS=(--producers 8 --batch 100 --record-bytes 1024 --seconds 10)
REPS=${REPS:-4}
PORT=${PORT:-7393}
SERVE_ARGS=${SERVE_ARGS:-}
out=$(mktemp) dirs=() pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true
  [ ${#dirs[@]} -gt 0 ] && rm -rf "${dirs[@]}"
  return 0
}
trap cleanup EXIT
run() { # side binary rep
  local side=$1 bin=$2 rep=$3 dir; dir=$(mktemp -d); dirs+=("$dir")
  local envs; if [ "$side" = A ]; then envs=${A_ENV:-}; else envs=${B_ENV:-}; fi
  sync; sleep 2
  # shellcheck disable=SC2086
  env $envs "$bin" serve --listen 127.0.0.1:$PORT --data-dir "$dir" $SERVE_ARGS >"$dir.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
  local line; line=$("$B" bench --url http://127.0.0.1:$PORT "${ARGS[@]}" | grep '^produced')
  local rss; rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$pid/status)
  # Agent CPU (user + system, clock ticks) over the whole run, per MiB produced.
  local ticks; ticks=$(awk '{print $14 + $15}' /proc/$pid/stat)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  rm -f "$dir.log"
  local rate; rate=$(sed -E 's/.*: ([0-9]+) records\/s.*/\1/' <<<"$line")
  local cpu; cpu=$(python3 -c "import re,sys; l=sys.argv[1]; s=float(re.search(r'in ([0-9.]+)s', l).group(1)); m=float(re.search(r'([0-9.]+) MiB/s', l).group(1)); print(round($ticks * 1000 / $(getconf CLK_TCK) / (s * m), 2))" "$line")
  echo "RESULT rep=$rep side=$side rec_s=$rate rss_mib=$rss cpu_ms_per_mib=$cpu | $line" | tee -a "$out"
}
for rep in $(seq 1 "$REPS"); do
  if [ $((rep % 2)) = 1 ]; then run A "$A" "$rep"; run B "$B" "$rep"; else run B "$B" "$rep"; run A "$A" "$rep"; fi
done
echo "== floe bench ${ARGS[*]}; A=$A B=$B; $REPS reps, order alternated"
python3 - "$out" <<'PY'
import sys, statistics, collections
r = collections.defaultdict(list); m = collections.defaultdict(list); c = collections.defaultdict(list)
for line in open(sys.argv[1]):
    f = dict(kv.split("=", 1) for kv in line.split("|")[0].split()[1:])
    r[f["side"]].append(float(f["rec_s"])); m[f["side"]].append(float(f["rss_mib"])); c[f["side"]].append(float(f["cpu_ms_per_mib"]))
for s in sorted(r):
    v = sorted(r[s])
    print(f"{s}: median {statistics.median(v):.0f} records/s (runs {' '.join(f'{x:.0f}' for x in v)}), peak RSS median {statistics.median(m[s]):.0f} MiB, agent CPU median {statistics.median(c[s]):.2f} ms/MiB (runs {' '.join(f'{x:.2f}' for x in sorted(c[s]))})")
if len(r) == 2:
    print(f"B/A = {statistics.median(r['B']) / statistics.median(r['A']):.2f}x records/s, {statistics.median(c['B']) / statistics.median(c['A']):.2f}x CPU per MiB")
PY
