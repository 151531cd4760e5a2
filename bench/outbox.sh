#!/usr/bin/env bash
# Outbox relay throughput (RFC 0005 §2): ROWS outbox rows of ~1 KiB payload over AGGS
# aggregates are committed up front (one INSERT .. SELECT, through the seq trigger), then
# RELAYS `floe outbox run` processes drain them into an embedded agent; prints rows/s from
# the relays' start until the table is empty and every record is in the topic.
#   bash bench/outbox.sh [BIN]     (BIN: a release floe; PostgreSQL on 127.0.0.1:5432)
#   LATENCY_ROWS=2000 LATENCY_RATE=200 bash bench/outbox.sh ...   also measures commit -> visible
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/floe}
ROWS=${ROWS:-100000}
AGGS=${AGGS:-1000}
RELAYS=${RELAYS:-1}
BATCH=${BATCH:-1000}
PORT=${PORT:-7393}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
DB=floe_outbox_bench_$$
DIR=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; psql -q "$PG/postgres" -c "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT
psql -q "$PG/postgres" -c "CREATE DATABASE $DB" >/dev/null
"$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DIR" >"$DIR/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
"$BIN" topics --url http://127.0.0.1:$PORT create order --partitions 8 >/dev/null
"$BIN" outbox install --db "$PG/$DB" >/dev/null 2>&1
t0=$(date +%s.%N)
psql -q "$PG/$DB" -c "INSERT INTO outbox (aggregatetype, aggregateid, type, payload)
  SELECT 'order', 'agg-' || (i % $AGGS), 'changed', jsonb_build_object('i', i, 'pad', repeat('x', 1000))
  FROM generate_series(1, $ROWS) i" >/dev/null
t1=$(date +%s.%N)
for r in $(seq 1 "$RELAYS"); do
  "$BIN" outbox run --url http://127.0.0.1:$PORT --db "$PG/$DB" --batch "$BATCH" --relay-id "r$r" >"$DIR/relay$r.log" 2>&1 &
  pids+=($!)
done
while [ "$(psql -tA "$PG/$DB" -c 'SELECT COUNT(*) FROM outbox')" != 0 ]; do sleep 0.1; done
t2=$(date +%s.%N)
n=$(curl -sf http://127.0.0.1:$PORT/v1/topics/order | python3 -c "import json,sys; print(sum(p['end_offset'] for p in json.load(sys.stdin)['partitions']))")
if [ -n "${LATENCY_ROWS:-}" ]; then
  # Commit -> visible, one row per transaction at LATENCY_RATE/s, with the relays running.
  "$BIN" topics --url http://127.0.0.1:$PORT create lat --partitions 1 >/dev/null
  python3 bench/outbox-latency.py "$BIN" http://127.0.0.1:$PORT "$PG/$DB" "$LATENCY_ROWS" "${LATENCY_RATE:-200}"
fi
python3 -c "
ins = $t1 - $t0; relay = $t2 - $t1
print(f'insert: $ROWS rows over $AGGS aggregates in {ins:.1f} s = {$ROWS/ins:.0f} rows/s (one transaction, through the seq trigger)')
print(f'relay: $RELAYS relay(s), batch $BATCH: $ROWS rows published in {relay:.1f} s = {$ROWS/relay:.0f} rows/s; records in the topic: $n')"
