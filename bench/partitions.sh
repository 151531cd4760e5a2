#!/usr/bin/env bash
# Produce throughput and object PUTs per second with 1 partition vs many (issue #9: "1 000
# partitions within 10 % of 1 partition at the same load"), interleaved repetitions on one
# machine. Each run: a fresh embedded agent, `floe bench` produce-only (8 producers x
# batch 100, 1 KiB records keyed p<producer>-<i>: each request's 100 keys hash over
# the partitions, ~95 of 1 000 per request, so a flush touches ~250), then
# floe_segments_written_total / duration from the agent.
# Repetitions alternate the order (1, MANY / MANY, 1) and data folders are deleted only after
# the last run: deleting a run's thousands of segment files before the next run slowed that
# run by up to 40 % (bench/results/2026-11-27-ab-one-partition.txt vs the earlier figures).
# KEYLESS=1: records without keys (each request's records go to one partition, in turn).
# RATE=N: the same offered load for both (`floe bench --rate N`, records/s over all
# producers) instead of a closed loop, so "at the same load" compares PUTs/s and ack
# latency at a load both sustain; the closed loop compares saturation throughput.
#   bash bench/partitions.sh [BIN] [MANY]      (defaults: target/release/floe, 1000)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/floe}
MANY=${2:-1000}
SECONDS_LOAD=${SECONDS_LOAD:-10}
REPS=${REPS:-3}
PORT=${PORT:-7392}
pid= dirs=()
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true
  [ ${#dirs[@]} -gt 0 ] && rm -rf "${dirs[@]}"
  return 0
}
trap cleanup EXIT
run() {
  local parts=$1 dir; dir=$(mktemp -d); dirs+=("$dir")
  sync; sleep 2
  "$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$dir" --max-partitions "$parts" --no-compaction >"$dir/agent.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
  local rate=(); [ -n "${RATE:-}" ] && rate=(--rate "$RATE")
  [ -n "${KEYLESS:-}" ] && rate+=(--keyless)
  local out; out=$("$BIN" bench --url http://127.0.0.1:$PORT --partitions "$parts" --seconds "$SECONDS_LOAD" --no-consume "${rate[@]}" | grep -E '^produce' | tr -s ' ' | paste -sd '|' -)
  local segs; segs=$(curl -sf http://127.0.0.1:$PORT/metrics | awk '/^floe_segments_written_total/ {print $2}')
  python3 bench/flush_breakdown.py http://127.0.0.1:$PORT 2>/dev/null | sed "s|^|  partitions=$parts flush breakdown: |" || true
  local rss; rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$pid/status)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  echo "partitions=$parts $out | segments $segs = $(python3 -c "print(round($segs/$SECONDS_LOAD,1))") PUT/s | peak RSS $rss MiB"
}
for r in $(seq 1 "$REPS"); do
  echo "--- repetition $r"
  if [ $((r % 2)) = 1 ]; then run 1; run "$MANY"; else run "$MANY"; run 1; fi
done
