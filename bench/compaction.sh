#!/usr/bin/env bash
# Compactor throughput and what it does to the bucket and to analytics (RFC 0004).
#   bash bench/compaction.sh [BIN]        (BIN: a release `floe`, default target/release/floe)
# 1. An embedded agent without compactor takes SECONDS of `floe bench` produce load
#    (1 KiB records, 8 producers x batch 100, PARTITIONS partitions): many small flush
#    segments.
# 2. DuckDB runs the `floe topics files --duckdb` query (count + GROUP BY key) on that.
# 3. The agent restarts with an eager compactor; the script times it from start until
#    every partition has at most one entry left in flush segments, and reports input
#    MiB/s (floe_compacted_input_bytes_total / time), object counts before/after.
# 4. The same DuckDB query again, on the compacted layout.
# POLICY=compact creates the topic with cleanup.policy=compact first: the compactor then
# *cleans* (keeps the latest record of each of floe bench's 800 keys, "p<producer>-<i>").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/floe}
SECONDS_LOAD=${SECONDS_LOAD:-10}
PARTITIONS=${PARTITIONS:-8}
PORT=${PORT:-7391}
DIR=$(mktemp -d)
URL=http://127.0.0.1:$PORT
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
start() {
  "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$DIR" "$@" >"$DIR/agent.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf $URL/readyz >/dev/null && return; sleep 0.1; done
  echo "agent did not start"; exit 1
}
objects() { find "$DIR/bucket/$1" -name '*.parquet' 2>/dev/null | wc -l; }
bytes() { du -sb "$DIR/bucket/$1" 2>/dev/null | cut -f1; }
query() {
  "$BIN" topics --url $URL files load --duckdb "$DIR/bucket" > "$DIR/q.sql"
  python3 - "$DIR/q.sql" <<'EOF'
import sys, time, duckdb
sql = open(sys.argv[1]).read()
con = duckdb.connect()
t = time.perf_counter()
n = con.sql(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
t1 = time.perf_counter()
k = con.sql(f"SELECT partition, count(*), min(\"offset\"), max(\"offset\") FROM ({sql}) GROUP BY partition").fetchall()
t2 = time.perf_counter()
print(f"duckdb: {n} rows; count(*) {1000*(t1-t):.0f} ms; GROUP BY partition {1000*(t2-t1):.0f} ms; {len(sql.splitlines())} scans in the query")
EOF
}

start --no-compaction
if [ "${POLICY:-delete}" != delete ]; then
  "$BIN" topics --url $URL create load --partitions "$PARTITIONS" --config "cleanup.policy=$POLICY" >/dev/null
fi
"$BIN" bench --url $URL --topic load --partitions "$PARTITIONS" --seconds "$SECONDS_LOAD" --no-consume | grep -E "produced|records/s" || true
echo "before: $(objects segments) segment objects, $(bytes segments) bytes"
query
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
start --compaction-interval-ms 100 --compaction-min-age-ms 0 --compaction-max-wait-ms 0 --compaction-min-entries 2
t0=$(date +%s.%N)
while true; do
  left=$(curl -sf "$URL/v1/topics/load/files" | python3 -c "
import json, sys
d = json.load(sys.stdin)
print(sum(max(0, sum(1 for e in p['entries'] if e['layout'] == 'segment') - 1) for p in d['partitions']))")
  [ "${POLICY:-delete}" != delete ] && [ "$left" = 0 ] && sleep 1  # a last cleaning may be under way
  [ "$left" = 0 ] && break
  sleep 0.2
done
t1=$(date +%s.%N)
m=$(curl -sf $URL/metrics)
in_bytes=$(echo "$m" | awk '/^floe_compacted_input_bytes_total/ {print $2}')
recs=$(echo "$m" | awk '/^floe_compacted_records_total/ {print $2}')
files=$(echo "$m" | awk '/^floe_compactions_total/ {print $2}')
cleaned=$(echo "$m" | awk '/^floe_compaction_cleaned_records_total/ {print $2}')
python3 -c "
t = $t1 - $t0
print(f'compactor: {int(float($recs))} records, {float($in_bytes)/2**20:.1f} MiB in, {int(float($files))} partition files in {t:.1f} s = {float($in_bytes)/2**20/t:.1f} MiB/s (input, compressed as stored); {int(float($cleaned or 0))} records cleaned away')"
echo "agent peak RSS $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
sleep 3  # not needed for the listing; lets the log settle
echo "after: $(objects topics) partition files, $(bytes topics) bytes; $(objects segments) segment objects left (deleted by the sweeper after --orphan-grace-ms)"
query
