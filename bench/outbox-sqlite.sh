#!/usr/bin/env bash
# Outbox relay throughput on SQLite (RFC 0005 §2): ROWS outbox rows of ~1 KiB payload over
# AGGS aggregates are committed up front into an SQLite file (one transaction), then one
# `floe outbox run --db sqlite://…` drains them into an embedded agent; prints rows/s from
# the relay's start until the table is empty.
#   bash bench/outbox-sqlite.sh [BIN]     (BIN: a release floe)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/floe}
ROWS=${ROWS:-100000}
AGGS=${AGGS:-1000}
BATCH=${BATCH:-1000}
PORT=${PORT:-7394}
DIR=$(mktemp -d)
DB="sqlite://$DIR/app.db"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
"$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DIR/agent" >"$DIR/agent.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
"$BIN" topics --url http://127.0.0.1:$PORT create order --partitions 8 >/dev/null
"$BIN" outbox install --db "$DB" >/dev/null 2>&1
t0=$(date +%s.%N)
python3 - "$DIR/app.db" "$ROWS" "$AGGS" <<'PY'
import json, sqlite3, sys
db, rows, aggs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(db)
with c:
    c.executemany("INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES ('order', ?, 'changed', ?)",
                  ((f"agg-{i % aggs}", json.dumps({"i": i, "pad": "x" * 1000})) for i in range(1, rows + 1)))
PY
t1=$(date +%s.%N)
"$BIN" outbox run --url http://127.0.0.1:$PORT --db "$DB" --batch "$BATCH" --relay-id r1 >"$DIR/relay.log" 2>&1 &
pids+=($!)
left() { python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT COUNT(*) FROM outbox').fetchone()[0])" "$DIR/app.db"; }
while [ "$(left)" != 0 ]; do sleep 0.1; done
t2=$(date +%s.%N)
n=$(curl -sf http://127.0.0.1:$PORT/v1/topics/order | python3 -c "import json,sys; print(sum(p['end_offset'] for p in json.load(sys.stdin)['partitions']))")
python3 -c "
ins = $t1 - $t0; relay = $t2 - $t1
print(f'insert: $ROWS rows over $AGGS aggregates in {ins:.1f} s = {$ROWS/ins:.0f} rows/s (one SQLite transaction)')
print(f'relay (SQLite): batch $BATCH: $ROWS rows published in {relay:.1f} s = {$ROWS/relay:.0f} rows/s; records in the topic: $n')"
