"""Read a Floe segment with pyarrow and print a JSON summary (used by tests/pyarrow.rs)."""
import collections
import json
import sys

import pyarrow.parquet as pq

path = sys.argv[1]
pf = pq.ParquetFile(path)
table = pf.read()
d = table.to_pydict()
print(json.dumps({
    "rows": table.num_rows,
    "row_groups": pf.num_row_groups,
    "columns": table.column_names,
    "topics": sorted(set(d["topic"])),
    "partition_rows": {str(k): v for k, v in sorted(collections.Counter(d["partition"]).items())},
    "values": [v.decode() for v in d["value"]],
    "first_headers": d["headers"][0],
}))
