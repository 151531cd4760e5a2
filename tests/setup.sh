#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: Python's pyarrow and DuckDB (segments must be
# readable by analytics tools as they are). Idempotent; safe to run on a fresh machine.
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -c 'import pyarrow, yaml, duckdb' 2>/dev/null; then
  echo "setup: installing pyarrow, DuckDB and PyYAML from PyPI"
  "$PY" -m pip install --quiet --disable-pip-version-check 'pyarrow>=15' 'PyYAML>=6' 'duckdb>=1.1'
fi
"$PY" -c 'import pyarrow, duckdb; print("setup: pyarrow", pyarrow.__version__, "duckdb", duckdb.__version__)'
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
