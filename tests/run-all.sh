#!/usr/bin/env bash
# The whole test suite: installs what it needs (tests/setup.sh), checks formatting and
# lints, then runs every unit and integration test. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
