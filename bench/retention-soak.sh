#!/usr/bin/env bash
# Retention soak: steady produce into a topic with retention_ms and print the bucket's size
# and object count every SAMPLE seconds, so the curve shows whether storage stays bounded.
#   bash bench/retention-soak.sh            # 10 min, retention 60 s, ~1 MiB/s
#   MINUTES=3 RETENTION_MS=20000 bash bench/retention-soak.sh
#   GRACE_MS=60000 EXTRA="--compaction-min-age-ms 20000" bash bench/retention-soak.sh
# Short sweep/grace settings so that deletion keeps up within the run (grace must be at
# least twice the commit deadline).
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
MINUTES=${MINUTES:-10}
RETENTION_MS=${RETENTION_MS:-60000}
SAMPLE=${SAMPLE:-10}
GRACE_MS=${GRACE_MS:-10000}
EXTRA=${EXTRA:-}
PORT=${PORT:-7197}
dir=$(mktemp -d)
"$FLOE" serve --listen 127.0.0.1:$PORT --data-dir "$dir" --sweep-interval-ms 5000 \
  --commit-deadline-ms 5000 --orphan-grace-ms "$GRACE_MS" $EXTRA >"$dir/agent.log" 2>&1 &
pid=$!
gen=
cleanup() { [ -n "$gen" ] && kill "$gen" 2>/dev/null; kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -sf -XPOST "http://127.0.0.1:$PORT/v1/topics" -H 'content-type: application/json' \
  -d "{\"name\":\"soak\",\"partitions\":2,\"retention_ms\":$RETENTION_MS}" >/dev/null
# 100 records of 1 KiB per request, ~10 requests/s: ~1 MiB/s.
value=$(head -c 1024 /dev/zero | tr '\0' 'v')
body=$(python3 -c "import json,sys; print(json.dumps({'records':[{'value':sys.argv[1]}]*100}))" "$value")
( while true; do
    curl -sf -XPOST "http://127.0.0.1:$PORT/v1/topics/soak/records" -H 'content-type: application/json' -d "$body" >/dev/null || true
    sleep 0.1
  done ) &
gen=$!
echo "elapsed_s objects bucket_MiB start_offsets end_offsets index_objects"
end=$(( $(date +%s) + MINUTES * 60 ))
t0=$(date +%s)
while [ "$(date +%s)" -lt "$end" ]; do
  sleep "$SAMPLE"
  objs=$( { find "$dir/bucket/segments" "$dir/bucket/topics" -type f 2>/dev/null || true; } | wc -l)
  mib=$(du -sm "$dir/bucket" 2>/dev/null | cut -f1 || true)
  # A sample that fails (a slow answer under load) prints "?" instead of ending the soak.
  offs=$(curl -sf -m 10 "http://127.0.0.1:$PORT/v1/topics/soak" | python3 -c "import json,sys; d=json.load(sys.stdin); print(','.join(str(p['start_offset']) for p in d['partitions']), ','.join(str(p['end_offset']) for p in d['partitions']))" 2>/dev/null || echo "? ?")
  tracked=$(curl -sf -m 10 "http://127.0.0.1:$PORT/metrics" | awk '/^floe_bucket_objects / {print $2}' || true)
  echo "$(( $(date +%s) - t0 )) $objs $mib $offs ${tracked:-?}"
done
