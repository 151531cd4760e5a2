# Shared by the bench scripts: `bench_run PORT LABEL BINARY ARGS...` starts BINARY as a
# fresh embedded agent (local folder + SQLite) on PORT, runs `floe bench` against it with
# ARGS, prints the agent's peak RSS (VmHWM) and stops it. Callers set `trap bench_cleanup EXIT`.
# Data folders are deleted at exit, not between runs: deleting a run's thousands of segment
# files slowed the next run by up to 40 % (bench/results/2026-11-27-ab-one-partition.txt).
bench_pid=
bench_dirs=()
bench_stop() { [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null; wait 2>/dev/null || true; bench_pid=; }
bench_cleanup() {
  bench_stop
  [ ${#bench_dirs[@]} -gt 0 ] && rm -rf "${bench_dirs[@]}"
  return 0
}
bench_run() {
  local port=$1 label=$2 bin=$3; shift 3
  local dir; dir=$(mktemp -d); bench_dirs+=("$dir")
  sync; sleep 1
  "$bin" serve --listen 127.0.0.1:$port --data-dir "$dir" >/tmp/floe-bench-$port.log 2>&1 &
  bench_pid=$!
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
  echo "--- $label: floe bench $*"
  "$bin" bench --url http://127.0.0.1:$port "$@"
  echo "agent peak RSS $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$bench_pid/status)"
  bench_stop
}
