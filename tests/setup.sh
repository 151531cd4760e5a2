#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: Python's pyarrow (segments must be
# readable by analytics tools as they are). Idempotent; safe to run on a fresh machine.
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -c 'import pyarrow, yaml' 2>/dev/null; then
  echo "setup: installing pyarrow and PyYAML from PyPI"
  "$PY" -m pip install --quiet --disable-pip-version-check 'pyarrow>=15' 'PyYAML>=6'
fi
"$PY" -c 'import pyarrow; print("setup: pyarrow", pyarrow.__version__)'
command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
