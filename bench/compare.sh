#!/usr/bin/env bash
# Side-by-side benchmark on this machine: the embedded default (local folder + SQLite) vs
# 3 agents sharing a moto S3 bucket and a PostgreSQL index. Same `floe bench` load for
# both, interleaved REPS times. Needs a release build: cargo build --release -p floe
#   bash bench/compare.sh [extra floe bench args]
# AGENT_ARGS="--no-peer-reads": extra `floe serve` flags for the 3 agents (e.g. to compare
# peer reads, RFC 0006, on and off in one run).
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
REPS=${REPS:-2}
SECS=${SECS:-10}
LINGER=${LINGER:-100}
ARGS=("$@")
eval "$(bash infra/moto.sh)"
bash infra/postgres.sh >&2
export AWS_ENDPOINT_URL=$FLOE_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
pids=()
# CPU seconds (user + system) of processes: agents by pid, moto and PostgreSQL (every
# backend) by name, summed; printed per phase so the cost of each part is visible.
ticks() { local t=0 p; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14 + $15}' /proc/$p/stat))); done; echo $t; }
moto_pids() { pgrep -f 'moto.server' | tr '\n' ' '; }
pg_pids() { pgrep -x postgres | tr '\n' ' '; }
cpu_line() { # label, agent ticks before, moto before, pg before, agent pids...
  local label=$1 a0=$2 m0=$3 g0=$4; shift 4
  local hz; hz=$(getconf CLK_TCK)
  # shellcheck disable=SC2046
  echo "cpu s over the phase ($label): agents $(python3 -c "print(round(($(ticks "$@") - $a0) / $hz, 1))") moto $(python3 -c "print(round(($(ticks $(moto_pids)) - $m0) / $hz, 1))") postgres $(python3 -c "print(round(($(ticks $(pg_pids)) - $g0) / $hz, 1))")"
}
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
start() { # port, extra args...
  local port=$1; shift
  "$FLOE" serve --listen 127.0.0.1:$port --linger-ms "$LINGER" "$@" >/tmp/floe-bench-$port.log 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && return 0; sleep 0.1; done
  echo "agent on $port did not start" >&2; exit 1
}
for rep in $(seq 1 "$REPS"); do
  dir=$(mktemp -d)
  echo "=== rep $rep: embedded (local folder + SQLite), linger ${LINGER} ms"
  start 7170 --data-dir "$dir/embedded"
  # shellcheck disable=SC2046
  a0=$(ticks "${pids[@]}") m0=$(ticks $(moto_pids)) g0=$(ticks $(pg_pids))
  "$FLOE" bench --url http://127.0.0.1:7170 --seconds "$SECS" "${ARGS[@]}"
  cpu_line embedded "$a0" "$m0" "$g0" "${pids[@]}"
  python3 bench/flush_breakdown.py http://127.0.0.1:7170 || true
  cleanup; pids=()
  db=floe_bench_$(date +%s%N)
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
  echo "=== rep $rep: 3 agents, moto S3 + PostgreSQL, linger ${LINGER} ms"
  for i in 1 2 3; do
    # shellcheck disable=SC2086
    start 717$i --data-dir "$dir/a$i" --agent-id a$i ${AGENT_ARGS:-} --bucket "s3://$FLOE_TEST_BUCKET/bench-$db" --index "postgres://postgres@127.0.0.1/$db"
  done
  # shellcheck disable=SC2046
  a0=$(ticks "${pids[@]}") m0=$(ticks $(moto_pids)) g0=$(ticks $(pg_pids))
  "$FLOE" bench --url http://127.0.0.1:7171 --also http://127.0.0.1:7172,http://127.0.0.1:7173 --seconds "$SECS" "${ARGS[@]}"
  cpu_line "3 agents" "$a0" "$m0" "$g0" "${pids[@]}"
  for port in 7171 7172 7173; do
    curl -sf http://127.0.0.1:$port/metrics | awk -v p=$port '/^floe_(peer_reads|peer_served|object_store_requests)_total/ {printf "%s %s=%s ", p, $1, $2} END {print ""}'
  done
  # Where each agent's flush time went (encode, PUT, PostgreSQL commit; runs per commit).
  python3 bench/flush_breakdown.py http://127.0.0.1:7171 http://127.0.0.1:7172 http://127.0.0.1:7173 || true
  cleanup; pids=()
  rm -rf "$dir"
done
