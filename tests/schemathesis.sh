#!/usr/bin/env bash
# (--max-wait-ms keeps generated long-polls short; the document says waits are capped.)
# Checks that the served OpenAPI document says exactly what the agent accepts and answers:
# runs schemathesis (`st run --checks all`) against a fresh embedded agent. Installs
# schemathesis into a virtualenv on first use. Part of tests/run-all.sh.
#   bash tests/schemathesis.sh [extra st run args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SCHEMATHESIS_VENV:-$HOME/.cache/floe-schemathesis}
if [ ! -x "$VENV/bin/st" ]; then
  echo "schemathesis: installing into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis==4.32.5'
fi
FLOE=${FLOE:-target/debug/floe}
[ -x "$FLOE" ] || cargo build -q -p floe
dir=$(mktemp -d)
port=${SCHEMATHESIS_PORT:-7390}
"$FLOE" serve --listen 127.0.0.1:$port --data-dir "$dir" --linger-ms 5 --max-wait-ms 200 >"$dir/agent.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
# A topic so that the operations under /v1/topics/{topic} are reached, not only 404s.
curl -sf -XPOST http://127.0.0.1:$port/v1/topics -H 'content-type: application/json' \
  -d '{"name":"st","partitions":2}' >/dev/null
SCHEMATHESIS_HOOKS=hooks PYTHONPATH="$PWD/tests/schemathesis${PYTHONPATH:+:$PYTHONPATH}" \
  "$VENV/bin/st" --config-file tests/schemathesis/schemathesis.toml run \
  "http://127.0.0.1:$port/openapi.json" --checks all --seed 20261126 --max-examples 25 \
  --no-color "$@"
