#!/usr/bin/env bash
# Fan-out on 3 agents sharing a moto S3 bucket and a PostgreSQL index (issue #9: "10
# consumer groups reading the same recent data -> object GETs <= 1.1 x segments read per
# agent; report the cluster-wide figure"). READERS readers (as that many consumer groups
# would) each read every partition from offset 0 to the end, reader i through agent i mod 3,
# one thread per partition. MODE=tail (default): the readers start with the producers and
# follow the log (long-polls) while it is written — recent data; MODE=backlog: the readers
# start after SECS of producing and read the whole backlog (more than the agents' caches
# hold at these rates). Prints, per agent, the object GETs it made against the segments it
# had to read (every segment another agent wrote: the writer keeps its own in its cache),
# and the cluster-wide GETs per segment.
# Peer reads (RFC 0006) are on by default: segments another agent wrote come from that
# agent's cache first; the peer hits and misses are printed too. AGENT_ARGS=--no-peer-reads
# measures the bucket-only path.
#   FLOE=target/release/floe READERS=10 MODE=tail bash bench/fanout.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
READERS=${READERS:-10}
SECS=${SECS:-5}
MODE=${MODE:-tail}
eval "$(bash infra/moto.sh)"
bash infra/postgres.sh >&2
export AWS_ENDPOINT_URL=$FLOE_TEST_S3_ENDPOINT AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
pids=() dir=$(mktemp -d)
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
db=floe_fanout_$(date +%s%N)
psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE $db" >/dev/null
for i in 1 2 3; do
  "$FLOE" serve --listen 127.0.0.1:718$i --data-dir "$dir/a$i" --agent-id a$i \
    --bucket "s3://$FLOE_TEST_BUCKET/fanout-$db" --index "postgres://postgres@127.0.0.1/$db" ${AGENT_ARGS:-} >"$dir/a$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:718$i/readyz >/dev/null && break; sleep 0.1; done
done
topic=fanout-$(date +%s)
"$FLOE" topics create "$topic" --partitions 8 --url http://127.0.0.1:7181 >/dev/null
produce() {
  "$FLOE" bench --url http://127.0.0.1:7181 --also http://127.0.0.1:7182,http://127.0.0.1:7183 \
    --topic "$topic" --partitions 8 --producers 24 --seconds "$SECS" --no-consume --distinct-values | grep -E '^produced'
}
if [ "$MODE" = backlog ]; then produce; touch "$dir/done"; else (produce; touch "$dir/done") & fi
python3 - "$topic" "$READERS" "$dir/done" <<'PY'
import json, os, sys, threading, time, urllib.request
topic, readers, done = sys.argv[1], int(sys.argv[2]), sys.argv[3]
agents = [f"http://127.0.0.1:718{i}" for i in (1, 2, 3)]
def metric(url, name, label=None):
    text = urllib.request.urlopen(url + "/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name) and (label is None or label in line):
            return float(line.split()[-1])
    return 0.0
gets = lambda: [metric(a, "floe_object_store_requests_total", 'op="get"') for a in agents]
peer = lambda outcome: [metric(a, "floe_peer_reads_total", f'outcome="{outcome}"') for a in agents]
before = gets()
peer_before = {o: peer(o) for o in ("hit", "miss", "error")}
n_parts = json.load(urllib.request.urlopen(f"{agents[0]}/v1/topics/{topic}", timeout=10))["partitions"]
n_parts = n_parts if isinstance(n_parts, int) else len(n_parts)
read = [0] * readers
lock = threading.Lock()
def follow(i, p):
    a, off = agents[i % 3], 0
    while True:
        r = json.load(urllib.request.urlopen(
            f"{a}/v1/topics/{topic}/partitions/{p}/records?offset={off}&max_records=1000&wait_ms=500", timeout=60))
        with lock:
            read[i] += len(r["records"])
        off = r["next_offset"]
        if off >= r["end_offset"] and os.path.exists(done) and not r["records"]:
            end = json.load(urllib.request.urlopen(
                f"{a}/v1/topics/{topic}/partitions/{p}/records?offset={off}&max_records=1&wait_ms=0", timeout=60))["end_offset"]
            if off >= end:
                break
t0 = time.time()
ts = [threading.Thread(target=follow, args=(i, p)) for i in range(readers) for p in range(n_parts)]
[t.start() for t in ts]; [t.join() for t in ts]
secs = time.time() - t0
after = gets()
written = [metric(a, "floe_segments_written_total") for a in agents]
total = sum(written)
print(f"segments written: {int(total)} ({', '.join(str(int(w)) for w in written)} by agents 1-3); {readers} readers read {min(read)}-{max(read)} records each ({secs:.1f} s)")
for k, a in enumerate(agents):
    need = total - written[k]
    d = after[k] - before[k]
    pr = {o: int(peer(o)[k] - peer_before[o][k]) for o in ("hit", "miss", "error")}
    print(f"agent {k + 1}: {int(d)} GETs for {int(need)} segments it did not write = {d / need if need else 0:.2f} per segment; peer reads hit {pr['hit']} miss {pr['miss']} error {pr['error']}")
d = sum(after) - sum(before)
print(f"cluster: {int(d)} GETs for {int(total)} segments = {d / total if total else 0:.2f} per segment ({d / total / 3 if total else 0:.2f} per segment per agent)")
PY
