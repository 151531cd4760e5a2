#!/usr/bin/env bash
# Queue throughput side by side on this machine: Floe's queue (share group) on the embedded
# default vs a Floe consumer group on the same backlog (printed by `floe bench --queue`)
# vs RabbitMQ (durable classic queue, persistent messages, manual acks) with the same
# number of consumers and batch size. Interleaved REPS times.
# Needs a release build (cargo build --release -p floe), RabbitMQ on 127.0.0.1:5672 and
# Python's pika (installed here if missing).
#   bash bench/queue.sh [--records N] [--consumers C] [--batch B]
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
REPS=${REPS:-3}
RECORDS=50000 CONSUMERS=5 BATCH=100
while [ $# -gt 0 ]; do
  case $1 in
    --records) RECORDS=$2; shift 2;;
    --consumers) CONSUMERS=$2; shift 2;;
    --batch) BATCH=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
python3 -c 'import pika' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check 'pika==1.3.2'
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
for rep in $(seq 1 "$REPS"); do
  dir=$(mktemp -d)
  echo "=== rep $rep: Floe embedded (local folder + SQLite), 2 partitions"
  "$FLOE" serve --listen 127.0.0.1:7180 --data-dir "$dir" >/tmp/floe-qbench.log 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:7180/readyz >/dev/null && break; sleep 0.1; done
  "$FLOE" bench --url http://127.0.0.1:7180 --queue --partitions 2 --records "$RECORDS" --consumers "$CONSUMERS" --batch "$BATCH"
  cleanup; pid=
  rm -rf "$dir"
  echo "=== rep $rep: RabbitMQ"
  python3 bench/rabbitmq_queue.py --records "$RECORDS" --consumers "$CONSUMERS" --batch "$BATCH"
done
