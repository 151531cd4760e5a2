"""Reads a topic's committed log from the bucket the way a user would (tests/compaction.rs).

usage: duckdb_check.py SQL_FILE BUCKET_DIR TOPIC [compacted]

- runs the query `floe topics files TOPIC --duckdb BUCKET_DIR` printed (SQL_FILE) in DuckDB:
  every row (partition, offset, key, value) and a GROUP BY key aggregate;
- reads the partition files under BUCKET_DIR/topics/TOPIC/ with a plain DuckDB glob (the
  README's query) and with pyarrow.dataset (Hive partitioning), and checks their layout:
  columns, offsets sorted, row-group statistics on offset and timestamp; offsets dense,
  or (a compacted topic) increasing with gaps.
Prints one JSON object.
"""
import glob
import json
import os
import sys
import time

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

sql_file, bucket, topic = sys.argv[1:4]
compacted = sys.argv[4:5] == ["compacted"]
sql = open(sql_file).read()
con = duckdb.connect()
t0 = time.perf_counter()
rows = con.sql(
    f"SELECT partition, \"offset\", decode(key) AS k, decode(value) AS v FROM ({sql})"
).fetchall()
query_ms = (time.perf_counter() - t0) * 1000
agg = con.sql(
    f"SELECT decode(key) AS k, count(*) AS n, sum(CAST(json_extract_string(decode(value), '$.amount') AS BIGINT)) AS total FROM ({sql}) GROUP BY k ORDER BY k"
).fetchall()
out = {
    "rows": [[p, o, k, v] for (p, o, k, v) in rows],
    "by_key": [[k, n, int(t)] for (k, n, t) in agg],
    "query_ms": round(query_ms, 1),
}

files = sorted(glob.glob(os.path.join(bucket, "topics", topic, "**", "*.parquet"), recursive=True))
out["partition_files"] = len(files)
if files:
    pattern = os.path.join(bucket, "topics", topic, "**", "*.parquet")
    glob_rows = con.sql(
        f"SELECT partition, count(*), min(\"offset\"), max(\"offset\"), count(DISTINCT \"offset\") FROM read_parquet('{pattern}') GROUP BY partition ORDER BY partition"
    ).fetchall()
    out["glob"] = [list(r) for r in glob_rows]
    dataset = ds.dataset(os.path.join(bucket, "topics", topic), format="parquet", partitioning="hive")
    out["pyarrow_rows"] = dataset.count_rows()
    layout_ok = True
    problems = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        names = pq.ParquetFile(f).schema_arrow.names
        if names != ["topic", "partition", "offset", "timestamp", "key", "value", "headers"]:
            layout_ok = False
            problems.append(f"{f}: columns {names}")
        prev = None
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            st = rg.column(2).statistics
            ts = rg.column(3).statistics
            if st is None or not st.has_min_max or ts is None or not ts.has_min_max:
                layout_ok = False
                problems.append(f"{f}: row group {g} without statistics")
                continue
            if prev is not None and (st.min <= prev if compacted else st.min != prev + 1):
                layout_ok = False
                problems.append(f"{f}: row group {g} starts at {st.min} after {prev}")
            if st.max - st.min + 1 < rg.num_rows or (not compacted and st.max - st.min + 1 != rg.num_rows):
                layout_ok = False
                problems.append(f"{f}: row group {g} offsets not dense")
            prev = st.max
    out["layout_ok"] = layout_ok
    out["problems"] = problems[:5]
print(json.dumps(out))
