#!/usr/bin/env bash
# Side-by-side benchmark on this machine: the embedded default (local folder + SQLite) vs
# 3 agents sharing a moto S3 bucket and a PostgreSQL index. Same `floe bench` load for
# both, interleaved REPS times. Needs a release build: cargo build --release -p floe
#   bash bench/compare.sh [extra floe bench args]
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
  "$FLOE" bench --url http://127.0.0.1:7170 --seconds "$SECS" "${ARGS[@]}"
  python3 bench/flush_breakdown.py http://127.0.0.1:7170 || true
  cleanup; pids=()
  db=floe_bench_$(date +%s%N)
  psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
  echo "=== rep $rep: 3 agents, moto S3 + PostgreSQL, linger ${LINGER} ms"
  for i in 1 2 3; do
    start 717$i --data-dir "$dir/a$i" --agent-id a$i --bucket "s3://$FLOE_TEST_BUCKET/bench-$db" --index "postgres://postgres@127.0.0.1/$db"
  done
  "$FLOE" bench --url http://127.0.0.1:7171 --also http://127.0.0.1:7172,http://127.0.0.1:7173 --seconds "$SECS" "${ARGS[@]}"
  # Where each agent's flush time went (encode, PUT, PostgreSQL commit; runs per commit).
  python3 bench/flush_breakdown.py http://127.0.0.1:7171 http://127.0.0.1:7172 http://127.0.0.1:7173 || true
  cleanup; pids=()
  rm -rf "$dir"
done
