#!/usr/bin/env bash
# Floe side by side with its peers on this machine, in one run: the same load generator
# (bench/peers, Rust) against Floe's embedded default (a fresh agent: local folder + SQLite,
# fsync), NATS JetStream (file store), Redis Streams (AOF with `appendfsync always`, set
# for the run and restored after) and RabbitMQ (durable classic queue, persistent
# messages, publisher confirms), all on their standard local ports. REPS interleaved
# repetitions; prints every run and the medians.
#   bash bench/peers.sh                      # 8 producers, batch 100, 200 000 x 1 KiB
#   PRODUCERS="8 64" REPS=3 bash bench/peers.sh
#   FLOE_BEFORE=/tmp/floe-old BROKERS="floe-before floe nats redis rabbitmq" bash bench/peers.sh
#                                            # a previous floe build in the same run
# Needs a release build of floe (cargo build --release -p floe) and the three peers running.
set -euo pipefail
cd "$(dirname "$0")/.."
FLOE=${FLOE:-target/release/floe}
REPS=${REPS:-3}
PRODUCERS=${PRODUCERS:-8}
RECORDS=${RECORDS:-200000}
RATE=${RATE:-2000}
SECS=${SECS:-10}
BROKERS=${BROKERS:-"floe nats redis rabbitmq"}
FLOE_ARGS=${FLOE_ARGS:-}
cargo build -q --release --manifest-path bench/peers/Cargo.toml
PEERS=bench/peers/target/release/floe-peers
out=$(mktemp)
floe_pid= floe_dirs=()
aof=$(redis-cli config get appendonly | tail -1)
fsync=$(redis-cli config get appendfsync | tail -1)
cleanup() {
  [ -n "$floe_pid" ] && kill "$floe_pid" 2>/dev/null; wait 2>/dev/null || true
  redis-cli config set appendfsync "$fsync" >/dev/null || true
  redis-cli config set appendonly "$aof" >/dev/null || true
  # Floe's data folders go at the end: deleting one between runs slowed the next run.
  [ ${#floe_dirs[@]} -gt 0 ] && rm -rf "${floe_dirs[@]}"
  return 0
}
trap cleanup EXIT
redis-cli config set appendonly yes >/dev/null
redis-cli config set appendfsync always >/dev/null
start_floe() { # binary
  local dir; dir=$(mktemp -d); floe_dirs+=("$dir")
  sync; sleep 1
  # shellcheck disable=SC2086
  "$1" serve --listen 127.0.0.1:7191 --data-dir "$dir" $FLOE_ARGS >/tmp/floe-peers.log 2>&1 &
  floe_pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:7191/readyz >/dev/null && return 0; sleep 0.1; done
  echo "floe did not start" >&2; exit 1
}
stop_floe() { kill "$floe_pid" 2>/dev/null; wait "$floe_pid" 2>/dev/null || true; floe_pid=; }
pid_of() {
  case $1 in
    floe|floe-before) echo "$floe_pid" ;;
    nats) pgrep -x nats-server | head -1 ;;
    redis) pgrep -x redis-server | head -1 ;;
    rabbitmq) pgrep -f 'beam.smp.*rabbit' | head -1 ;;
  esac
}
run() { # broker mode producers [extra args]
  local b=$1 mode=$2 p=$3 url=() kind=$1 bin=$FLOE
  shift 3
  [ "$b" = floe-before ] && { kind=floe; bin=${FLOE_BEFORE:?set FLOE_BEFORE}; }
  [ "$kind" = floe ] && { start_floe "$bin"; url=(--url http://127.0.0.1:7191); }
  "$PEERS" --broker "$kind" --mode "$mode" --producers "$p" --records "$RECORDS" \
    --rate "$RATE" --seconds "$SECS" --broker-pid "$(pid_of "$b")" "${url[@]}" "$@" |
    { if [ "$b" = floe-before ]; then sed 's/broker=Floe/broker=FloeBefore/'; else cat; fi; } | tee -a "$out"
  [ "$kind" = floe ] && stop_floe
  return 0
}
for rep in $(seq 1 "$REPS"); do
  # Even repetitions run the brokers in reverse order.
  order=$BROKERS; [ $((rep % 2)) = 0 ] && order=$(tr ' ' '\n' <<<"$BROKERS" | tac | tr '\n' ' ')
  for b in $order; do
    for p in $PRODUCERS; do run "$b" throughput "$p"; done
    run "$b" latency 8
    # Floe also with Arrow IPC produce bodies (FLOE_ARROW=0 to skip).
    if [ "$b" = floe ] && [ "${FLOE_ARROW:-1}" = 1 ]; then
      for p in $PRODUCERS; do run "$b" throughput "$p" --floe-format arrow; done
    fi
  done
done
echo "== medians of $REPS (throughput: batch-ack latency; latency: single records at $RATE/s)"
python3 - "$out" <<'PY'
import sys, statistics, collections
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if not line.startswith("RESULT"): continue
    f = dict(kv.split("=", 1) for kv in line.split()[1:])
    runs[(f["broker"], f["mode"], f["producers"])].append(f)
print(f"{'broker':11} {'mode':10} {'prod':>4} {'rec/s':>9} {'MiB/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'cpu %':>6}")
for (b, m, p), fs in sorted(runs.items()):
    med = lambda k: statistics.median(float(x[k]) for x in fs if x[k] != "-") if any(x[k] != "-" for x in fs) else float("nan")
    print(f"{b:11} {m:10} {p:>4} {med('rec_s'):9.0f} {med('mib_s'):7.1f} {med('p50_ms'):7.2f} {med('p99_ms'):7.2f} {med('broker_cpu_pct'):6.0f}")
PY
