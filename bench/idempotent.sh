#!/usr/bin/env bash
# Producer sessions (RFC 0003 part 2) vs plain produce, side by side in one run: the same
# release binary, a fresh embedded agent per run (local folder + SQLite), `floe bench`
# with and without `--idempotent` (every request carries its per-partition sequences,
# checked in the commit), 8 and 64 producers, REPS interleaved repetitions. With a second
# binary (e.g. the previous commit's build), its plain runs are interleaved too, so a
# regression of the plain path shows in the same run.
#   bash bench/idempotent.sh BINARY [BEFORE_BINARY]
set -euo pipefail
BIN=$1
BEFORE=${2:-}
REPS=${REPS:-3}
SECS=${SECS:-8}
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT
run() { # label binary args...
  local label=$1 bin=$2; shift 2
  local dir; dir=$(mktemp -d)
  "$bin" serve --listen 127.0.0.1:7191 --data-dir "$dir" >/tmp/floe-idem.log 2>&1 &
  pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:7191/readyz >/dev/null && break; sleep 0.1; done
  echo "--- $label: floe bench $*"
  "$bin" bench --url http://127.0.0.1:7191 "$@"
  echo "agent peak RSS $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
  cleanup; pid=
  rm -rf "$dir"
}
for rep in $(seq 1 "$REPS"); do
  for p in 8 64; do
    args=(--seconds "$SECS" --producers "$p" --batch 100 --record-bytes 1024)
    [ -n "$BEFORE" ] && run "rep $rep before plain" "$BEFORE" "${args[@]}"
    run "rep $rep plain" "$BIN" "${args[@]}"
    run "rep $rep idempotent" "$BIN" "${args[@]}" --idempotent
  done
done
