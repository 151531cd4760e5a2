#!/usr/bin/env bash
# The whole test suite. Installs and starts what it needs (pyarrow/PyYAML, cargo-nextest,
# PostgreSQL, a moto S3 server, LocalStack on the host), checks formatting and lints, then
# runs every test in two tiers (.config/nextest.toml): the fast tier needs no external
# service; the services tier runs the index conformance suite on PostgreSQL and the S3 +
# PostgreSQL multi-agent suite on moto; that suite runs again against LocalStack; the
# PostgreSQL restart and hang tests run alone at the end. CI runs exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
echo "== fast tier: no external service (profile fast in .config/nextest.toml)"
cargo nextest run --workspace --profile fast --no-fail-fast
echo "== OpenAPI document vs the server: schemathesis --checks all"
bash tests/schemathesis.sh
echo "== services tier: PostgreSQL + moto S3"
bash infra/postgres.sh
eval "$(bash infra/moto.sh)"
cargo nextest run --workspace --profile services --no-fail-fast
echo "== S3 multi-agent suite against LocalStack"
eval "$(bash localstack/run-host.sh)"
FLOE_KILL_TRIALS=3 cargo nextest run --workspace -E 'binary(s3_multi_agent)' --no-fail-fast
echo "== PostgreSQL restart and hang (alone, one at a time: they restart and stop the shared server)"
cargo nextest run --workspace -E 'binary(pg_restart)' --run-ignored only --test-threads 1
