#!/usr/bin/env bash
# Transactional vs idempotent vs plain produce (RFC 0005), side by side in one run: the
# same release binary, a fresh embedded agent per run (local folder + SQLite), `floe
# bench` plain, `--idempotent` (producer sessions) and `--transactional` (transactions of
# TXN_REQUESTS requests: begin, produce, commit; records count as produced at commit and
# consumers read committed data only), 8 and 64 producers, REPS interleaved repetitions.
#   bash bench/transactions.sh BINARY
set -euo pipefail
BIN=$1
REPS=${REPS:-3}
SECS=${SECS:-8}
TXN_REQUESTS=${TXN_REQUESTS:-10}
. "$(dirname "$0")/lib.sh"
trap bench_cleanup EXIT
run() { bench_run 7192 "$@"; }
for rep in $(seq 1 "$REPS"); do
  for p in 8 64; do
    args=(--seconds "$SECS" --producers "$p" --batch 100 --record-bytes 1024)
    run "rep $rep plain" "$BIN" "${args[@]}"
    run "rep $rep idempotent" "$BIN" "${args[@]}" --idempotent
    run "rep $rep transactional" "$BIN" "${args[@]}" --transactional --transaction-requests "$TXN_REQUESTS"
  done
done
