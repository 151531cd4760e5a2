#!/usr/bin/env python3
"""Where one agent's flush time goes (issue #9): reads /metrics of each URL given and prints,
per flush histogram (encode, PUT, index commit, whole flush) the count, mean and p50/p99
(upper bound of the histogram bucket holding the quantile), and runs per commit.
    python3 bench/flush_breakdown.py http://127.0.0.1:7070 [more agents...]"""
import re
import sys
import urllib.request

HISTS = [
    ("floe_flush_encode_seconds", "encode", 1000, "ms"),
    ("floe_flush_put_seconds", "PUT", 1000, "ms"),
    ("floe_flush_commit_seconds", "index commit", 1000, "ms"),
    ("floe_flush_seconds", "whole flush", 1000, "ms"),
    ("floe_flush_commit_runs", "runs per commit", 1, ""),
]


def parse(text):
    h = {}
    for line in text.splitlines():
        m = re.match(r'^(\w+)_bucket\{le="([^"]+)"\} (\S+)$', line)
        if m:
            h.setdefault(m.group(1), {"b": []})["b"].append((float(m.group(2)), float(m.group(3))))
            continue
        m = re.match(r"^(\w+)_(sum|count) (\S+)$", line)
        if m:
            h.setdefault(m.group(1), {"b": []})[m.group(2)] = float(m.group(3))
    return h


def quantile(buckets, count, q):
    for le, c in sorted(buckets):
        if c >= q * count:
            return le
    return float("inf")


for url in sys.argv[1:]:
    text = urllib.request.urlopen(url.rstrip("/") + "/metrics", timeout=5).read().decode()
    h = parse(text)
    parts = []
    for name, label, scale, unit in HISTS:
        x = h.get(name)
        if not x or not x.get("count"):
            continue
        n = x["count"]
        mean = x["sum"] / n * scale
        p50 = quantile(x["b"], n, 0.5) * scale
        p99 = quantile(x["b"], n, 0.99) * scale
        parts.append(f"{label} n={n:.0f} mean {mean:.1f}{unit} p50<={p50:g}{unit} p99<={p99:g}{unit}")
    print(f"{url}: " + " | ".join(parts))
