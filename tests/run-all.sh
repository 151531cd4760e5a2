#!/usr/bin/env bash
# The whole test suite. Installs and starts what it needs (pyarrow/PyYAML, cargo-nextest,
# PostgreSQL, a moto S3 server, LocalStack on the host), checks formatting and lints, then
# runs every test: the main run uses moto; the S3 multi-agent suite runs again against
# LocalStack; the PostgreSQL-restart test runs alone at the end. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
bash infra/postgres.sh
eval "$(bash infra/moto.sh)"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo nextest run --workspace --no-fail-fast
echo "== S3 multi-agent suite against LocalStack"
eval "$(bash localstack/run-host.sh)"
cargo nextest run -p floe --test s3_multi_agent --no-fail-fast
echo "== PostgreSQL restart and hang (alone, one at a time: they restart and stop the shared server)"
cargo nextest run -p floe --test pg_restart --run-ignored only --test-threads 1
