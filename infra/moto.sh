#!/usr/bin/env bash
# Start a moto S3 server (PyPI moto[server]) on 127.0.0.1:${MOTO_PORT:-5011} if none runs,
# and create the test bucket. Prints `export ...` lines for the test environment:
#   eval "$(bash infra/moto.sh)"
set -euo pipefail
PORT=${MOTO_PORT:-5011}
BUCKET=${FLOE_TEST_BUCKET:-floe-test}
PY=${PYTHON:-python3}
LOG=${MOTO_LOG:-/tmp/floe-moto.log}
if ! "$PY" -c 'import moto.server' 2>/dev/null; then
  echo "moto: installing moto[server]==5.2.5" >&2
  "$PY" -m pip install --quiet --disable-pip-version-check 'moto[server]==5.2.5' >&2
fi
up() { curl -s -o /dev/null "http://127.0.0.1:$PORT/" ; }
if ! up; then
  nohup "$PY" -m moto.server -H 127.0.0.1 -p "$PORT" >"$LOG" 2>&1 &
  for _ in $(seq 1 100); do up && break; sleep 0.1; done
  up || { echo "moto: did not start (see $LOG)" >&2; exit 1; }
  echo "moto: started on 127.0.0.1:$PORT" >&2
fi
AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test "$PY" - "$PORT" "$BUCKET" >&2 <<'PY'
import sys, boto3
port, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1")
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
print(f"moto: bucket {bucket} ready")
PY
echo "export FLOE_TEST_S3_ENDPOINT=http://127.0.0.1:$PORT FLOE_TEST_BUCKET=$BUCKET"
