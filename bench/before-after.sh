#!/usr/bin/env bash
# Before/after on the same machine in one run: two floe binaries (e.g. the previous
# commit's release build and this one's), interleaved REPS times, each on a fresh embedded
# agent (local folder + SQLite): `floe bench` with the README's produce+consume loads and
# `floe bench --queue` (bench/queue.sh's Floe load). Prints each run's summary lines.
# More than two binaries: labels b1, b2, ... Even repetitions reverse the order.
#   bash bench/before-after.sh BEFORE_BINARY AFTER_BINARY [MORE_BINARIES...]
set -euo pipefail
BINS=("$@")
[ ${#BINS[@]} -ge 2 ] || { echo "usage: $0 BEFORE AFTER [MORE...]" >&2; exit 2; }
REPS=${REPS:-3}
SECS=${SECS:-10}
. "$(dirname "$0")/lib.sh"
trap bench_cleanup EXIT
run() { bench_run 7190 "$@"; }
for rep in $(seq 1 "$REPS"); do
  # Odd repetitions run the binaries in the order given, even ones in reverse.
  order=("${!BINS[@]}"); [ $((rep % 2)) = 0 ] && order=($(printf '%s\n' "${order[@]}" | tac))
  for i in "${order[@]}"; do
    bin=${BINS[$i]}
    side=b$((i + 1)); [ ${#BINS[@]} -eq 2 ] && { side=before; [ "$i" = 1 ] && side=after; }
    run "rep $rep $side" "$bin" --seconds "$SECS" --producers 8 --batch 100 --record-bytes 1024
    run "rep $rep $side" "$bin" --seconds "$SECS" --producers 64 --batch 100 --record-bytes 1024
    run "rep $rep $side" "$bin" --queue --partitions 2 --records 50000 --consumers 5 --batch 100
  done
done
