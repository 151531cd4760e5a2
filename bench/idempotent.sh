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
. "$(dirname "$0")/lib.sh"
trap bench_cleanup EXIT
run() { bench_run 7191 "$@"; }
for rep in $(seq 1 "$REPS"); do
  for p in 8 64; do
    args=(--seconds "$SECS" --producers "$p" --batch 100 --record-bytes 1024)
    [ -n "$BEFORE" ] && run "rep $rep before plain" "$BEFORE" "${args[@]}"
    run "rep $rep plain" "$BIN" "${args[@]}"
    run "rep $rep idempotent" "$BIN" "${args[@]}" --idempotent
  done
done
