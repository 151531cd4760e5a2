"""Outbox relay latency (RFC 0005 §2): commit of an outbox row -> record visible to a consumer.

usage: outbox-latency.py FLOE_BIN AGENT_URL DB_URL ROWS RATE
Inserts ROWS outbox rows, one per transaction (autocommit), RATE per second, through psql
(aggregatetype 'lat', so topic 'lat'); each payload carries its insert time (ms, the
database's clock). A `floe consume lat --follow --json` reader prints records as they
arrive; latency = arrival (this host's clock; the database runs on the same host) -
insert time. Prints p50 / p99 / max in ms.
"""
import json
import subprocess
import sys
import threading
import time

floe, url, db, rows, rate = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
lat = []
done = threading.Event()


def read():
    p = subprocess.Popen([floe, "consume", "--url", url, "lat", "--from-beginning", "--follow", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        now = time.time() * 1000
        try:
            rec = json.loads(line)
            t = json.loads(rec["value"])["t"]
        except (ValueError, KeyError):
            continue
        lat.append(now - t)
        if len(lat) >= rows:
            break
    p.kill()
    done.set()


threading.Thread(target=read, daemon=True).start()
time.sleep(0.5)
psql = subprocess.Popen(["psql", "-q", db], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
start = time.time()
for i in range(rows):
    psql.stdin.write(
        "INSERT INTO outbox (aggregatetype, aggregateid, type, payload) VALUES "
        f"('lat', 'a{i % 50}', 'tick', jsonb_build_object('i', {i}, 't', (extract(epoch from clock_timestamp()) * 1000)::bigint));\n")
    psql.stdin.flush()
    delay = start + (i + 1) / rate - time.time()
    if delay > 0:
        time.sleep(delay)
psql.stdin.close()
psql.wait()
done.wait(60)
lat.sort()
if not lat:
    sys.exit("no records arrived")
q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
print(f"outbox latency, commit -> visible: {len(lat)} rows at {rate:.0f}/s: p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, max {lat[-1]:.1f} ms")
