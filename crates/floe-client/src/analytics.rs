//! Reading a topic's committed log straight from the bucket with a query engine.
//!
//! [`duckdb_sql`] turns a files listing (`GET /v1/topics/{topic}/files`) into one DuckDB
//! query whose rows are exactly the committed records — `offset`, `partition`,
//! `timestamp`, `key`, `value`, `headers` — however the log is laid out today (flush
//! segments shared by many topics, partition files written by the compactor, rows taken out
//! at commit). Pure: no I/O.

use std::fmt::Write as _;

use floe_api::{FileLayout, TopicFiles};

/// Quote a string as an SQL literal.
fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One `SELECT ... UNION ALL ...` over the listed objects under `bucket` (a local folder
/// such as `/srv/floe-data/bucket`, or `s3://bucket/prefix` with DuckDB's httpfs), ordered
/// by partition and offset. A listing with no entries gives a query with no rows.
pub fn duckdb_sql(files: &TopicFiles, bucket: &str) -> String {
    let base = bucket.trim_end_matches('/');
    let cols = "partition, timestamp, key, value, headers";
    let mut parts: Vec<String> = Vec::new();
    for p in &files.partitions {
        // Consecutive entries of one partition file: one scan with an offset range.
        let mut i = 0;
        while i < p.entries.len() {
            let e = &p.entries[i];
            let path = lit(&format!("{base}/{}", e.key));
            match e.layout {
                FileLayout::Partition => {
                    let mut end = e.base_offset + u64::from(e.records);
                    let mut j = i + 1;
                    while let Some(n) = p.entries.get(j) {
                        if n.key != e.key || n.base_offset != end {
                            break;
                        }
                        end += u64::from(n.records);
                        j += 1;
                    }
                    parts.push(format!(
                        "SELECT \"offset\", CAST(partition AS INTEGER) AS partition, timestamp, key, value, headers FROM read_parquet({path}, hive_partitioning = false) WHERE \"offset\" >= {} AND \"offset\" < {end}",
                        e.base_offset
                    ));
                    i = j;
                }
                FileLayout::Segment => {
                    let lo = e.row_first;
                    let hi = u64::from(e.row_first) + u64::from(e.records);
                    parts.push(format!(
                        "SELECT run_offset - {lo} + {} AS \"offset\", {cols} FROM read_parquet({path}, hive_partitioning = false) WHERE topic = {} AND partition = {} AND run_offset >= {lo} AND run_offset < {hi}",
                        e.base_offset,
                        lit(&files.topic),
                        e.partition
                    ));
                    i += 1;
                }
            }
        }
    }
    if parts.is_empty() {
        return "SELECT CAST(NULL AS BIGINT) AS \"offset\", CAST(NULL AS INTEGER) AS partition, CAST(NULL AS TIMESTAMP WITH TIME ZONE) AS timestamp, CAST(NULL AS BLOB) AS key, CAST(NULL AS BLOB) AS value, NULL AS headers WHERE false".into();
    }
    let mut sql = String::new();
    for (k, part) in parts.iter().enumerate() {
        if k > 0 {
            sql.push_str("\nUNION ALL ");
        }
        let _ = write!(sql, "{part}");
    }
    sql.push_str("\nORDER BY partition, \"offset\"");
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_api::{FileEntryInfo, PartitionFilesInfo};

    fn entry(
        key: &str,
        layout: FileLayout,
        base: u64,
        records: u32,
        row_first: u32,
    ) -> FileEntryInfo {
        FileEntryInfo {
            partition: 1,
            key: key.into(),
            size: 10,
            layout,
            base_offset: base,
            records,
            row_first,
            row_group_first: 0,
            row_group_count: 1,
        }
    }

    #[test]
    fn one_scan_per_segment_entry_and_per_partition_file() {
        let files = TopicFiles {
            topic: "o'rders".into(),
            partitions: vec![PartitionFilesInfo {
                partition: 1,
                start_offset: 0,
                end_offset: 30,
                from: 0,
                to: 30,
                entries: vec![
                    entry("topics/f.parquet", FileLayout::Partition, 0, 10, 0),
                    entry("topics/f.parquet", FileLayout::Partition, 10, 5, 0),
                    entry("segments/s.parquet", FileLayout::Segment, 15, 15, 2),
                ],
            }],
        };
        let sql = duckdb_sql(&files, "/data/bucket/");
        assert_eq!(sql.matches("SELECT").count(), 2, "{sql}");
        assert!(sql.contains("read_parquet('/data/bucket/topics/f.parquet', hive_partitioning = false) WHERE \"offset\" >= 0 AND \"offset\" < 15"), "{sql}");
        assert!(sql.contains("run_offset - 2 + 15 AS \"offset\""), "{sql}");
        assert!(
            sql.contains(
                "topic = 'o''rders' AND partition = 1 AND run_offset >= 2 AND run_offset < 17"
            ),
            "{sql}"
        );
        let empty = TopicFiles {
            topic: "t".into(),
            partitions: vec![],
        };
        assert!(duckdb_sql(&empty, "/b").contains("WHERE false"));
    }
}
