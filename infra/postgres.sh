#!/usr/bin/env bash
# Make sure a PostgreSQL server answers on 127.0.0.1:5432 (trust auth), installing and
# starting Debian's package if needed. Used by tests/run-all.sh and CI.
set -euo pipefail
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "postgres: already running on 127.0.0.1:5432"
  exit 0
fi
if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
  echo "postgres: installing from Debian packages"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  ver=$(ls /etc/postgresql | head -n1)
  conf=/etc/postgresql/$ver/main
  sed -i 's/^\(host.*\)scram-sha-256/\1trust/; s/^\(host.*\)md5/\1trust/; s/^\(local.*\)peer/\1trust/' "$conf/pg_hba.conf"
fi
ver=$(ls /etc/postgresql | head -n1)
pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
for _ in $(seq 1 60); do
  pg_isready -q -h 127.0.0.1 -p 5432 && { echo "postgres: started"; exit 0; }
  sleep 0.5
done
echo "postgres: did not come up on 127.0.0.1:5432" >&2
exit 1
