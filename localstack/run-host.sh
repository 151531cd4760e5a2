#!/usr/bin/env bash
# Run LocalStack S3 on this host without Docker (Python >= 3.13 from pyenv; 2026.3 uses warnings.deprecated), create the
# test bucket, and print `export ...` lines for the tests:
#   eval "$(bash localstack/run-host.sh)"
# Installs into a virtualenv under ${LOCALSTACK_HOME:-$HOME/.cache/floe-localstack} (~80 s once).
set -euo pipefail
PORT=${LOCALSTACK_PORT:-4566}
BUCKET=${FLOE_TEST_BUCKET:-floe-test}
HOME_DIR=${LOCALSTACK_HOME:-$HOME/.cache/floe-localstack}
LOG=${LOCALSTACK_LOG:-/tmp/floe-localstack.log}
up() { curl -sf "http://127.0.0.1:$PORT/_localstack/health" >/dev/null 2>&1; }
if ! up; then
  PY312=""
  for v in 3.13 3.14 3.12; do
    cand=$(ls -d "$HOME"/.pyenv/versions/$v*/bin/python 2>/dev/null | head -n1 || true)
    [ -n "$cand" ] && { PY312=$cand; break; }
    command -v python$v >/dev/null 2>&1 && { PY312=$(command -v python$v); break; }
  done
  [ -n "$PY312" ] || { echo "localstack: needs Python >= 3.12" >&2; exit 1; }
  if [ ! -x "$HOME_DIR/venv/bin/python" ] || ! "$HOME_DIR/venv/bin/python" -c "import localstack.aws.components" 2>/dev/null; then
    rm -rf "$HOME_DIR/venv"
    echo "localstack: installing into $HOME_DIR/venv" >&2
    "$PY312" -m venv "$HOME_DIR/venv"
    "$HOME_DIR/venv/bin/pip" install --quiet --disable-pip-version-check \
      'localstack-core[runtime]==2026.3.0' 'cbor2<6' 'pyopenssl<26' 'cryptography<47' service_identity boto3 >&2
  fi
  mkdir -p "$HOME_DIR/data"
  GATEWAY_LISTEN=127.0.0.1:$PORT SERVICES=s3 DNS_ADDRESS=0 DISABLE_EVENTS=1 OVERRIDE_IN_DOCKER=0 \
    FILESYSTEM_ROOT="$HOME_DIR/data" SKIP_SSL_CERT_DOWNLOAD=1 \
    nohup "$HOME_DIR/venv/bin/python" -m localstack.runtime.main >"$LOG" 2>&1 &
  for _ in $(seq 1 120); do up && break; sleep 0.5; done
  up || { echo "localstack: did not start (see $LOG)" >&2; tail -20 "$LOG" >&2; exit 1; }
  echo "localstack: started on 127.0.0.1:$PORT" >&2
fi
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$HOME_DIR/venv/bin/python" - "$PORT" "$BUCKET" >&2 <<'PY'
import sys, boto3
port, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
try:
    s3.create_bucket(Bucket=bucket)
except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
    pass
print(f"localstack: bucket {bucket} ready")
PY
echo "export FLOE_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT FLOE_TEST_BUCKET=$BUCKET"
