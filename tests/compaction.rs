//! Compaction and analytics on the embedded default (RFC 0004), with real `floe serve`
//! processes, DuckDB and pyarrow (installed by tests/setup.sh):
//!
//! - before compaction, `floe topics files --duckdb` gives a query that reads exactly the
//!   committed log out of the shared multi-topic segments;
//! - the compactor rewrites every partition into partition files while consumers read the
//!   whole log in a loop: they never see an error, a gap or a changed record, and the
//!   sweeper deletes the replaced segments under them;
//! - afterwards fetches are identical, the same query still reads exactly the log, and a
//!   plain DuckDB glob / pyarrow dataset over `topics/<topic>/` reads the partition files:
//!   absolute dense offsets, sorted, with row-group statistics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{AgentProc, metric, read_all, segment_files};
use floe_api::{FileLayout, ProduceRecord};
use floe_client::Client;

const PARTITIONS: u32 = 3;
const REQUESTS: usize = 30;
const PER_REQUEST: usize = 20;

/// (offset, key, value) of every record of one partition.
type Records = Vec<(u64, String, String)>;
/// Per partition.
type Log = Vec<Records>;

async fn log_of(c: &Client, topic: &str, partitions: u32) -> Log {
    let mut out = Vec::new();
    for p in 0..partitions {
        out.push(
            read_all(c, topic, p)
                .await
                .into_iter()
                .map(|r| {
                    (
                        r.offset,
                        r.key.clone().unwrap_or_default(),
                        r.value.clone().unwrap_or_default(),
                    )
                })
                .collect(),
        );
    }
    out
}

/// Run the DuckDB/pyarrow check on the query the CLI prints for `topic`.
fn duckdb_check(agent_url: &str, bucket: &std::path::Path, topic: &str) -> serde_json::Value {
    duckdb_check_range(agent_url, bucket, topic, &[])
}

/// [`duckdb_check`] of a compacted topic: its files' offsets increase with gaps.
fn duckdb_check_compacted(
    agent_url: &str,
    bucket: &std::path::Path,
    topic: &str,
) -> serde_json::Value {
    duckdb_check_args(agent_url, bucket, topic, &[], true)
}

/// [`duckdb_check`] of the query for part of the log (`--partition`, `--from`, `--to`).
fn duckdb_check_range(
    agent_url: &str,
    bucket: &std::path::Path,
    topic: &str,
    range: &[&str],
) -> serde_json::Value {
    duckdb_check_args(agent_url, bucket, topic, range, false)
}

fn duckdb_check_args(
    agent_url: &str,
    bucket: &std::path::Path,
    topic: &str,
    range: &[&str],
    compacted: bool,
) -> serde_json::Value {
    let sql = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(["topics", "--url", agent_url, "files", topic])
        .args(range)
        .arg("--duckdb")
        .arg(bucket)
        .output()
        .unwrap();
    assert!(
        sql.status.success(),
        "floe topics files: {}",
        String::from_utf8_lossy(&sql.stderr)
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &sql.stdout).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/duckdb_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(file.path())
        .arg(bucket)
        .arg(topic)
        .args(compacted.then_some("compacted"))
        .output()
        .expect("python3 must be installed (tests/setup.sh)");
    assert!(
        out.status.success(),
        "duckdb check failed (run tests/setup.sh):\n{}\nquery:\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&sql.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What DuckDB must return: every record, and per key (count, sum of amounts).
fn assert_reads_exactly(report: &serde_json::Value, log: &Log) {
    assert_reads_exactly_parts(report, log.iter().enumerate().collect());
}

/// [`assert_reads_exactly`] for (partition, records) pairs.
fn assert_reads_exactly_parts(report: &serde_json::Value, log: Vec<(usize, &Records)>) {
    let mut want_rows = Vec::new();
    let mut by_key: BTreeMap<String, (u64, i64)> = BTreeMap::new();
    for (p, recs) in log {
        for (o, k, v) in recs {
            want_rows.push(serde_json::json!([p, o, k, v]));
            let amount: serde_json::Value = serde_json::from_str(v).unwrap();
            let e = by_key.entry(k.clone()).or_default();
            e.0 += 1;
            e.1 += amount["amount"].as_i64().unwrap();
        }
    }
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), want_rows.len(), "count(*) = end - start");
    assert!(rows == &want_rows, "DuckDB reads exactly the committed log");
    let want_keys: Vec<serde_json::Value> = by_key
        .iter()
        .map(|(k, (n, t))| serde_json::json!([k, n, t]))
        .collect();
    assert_eq!(
        report["by_key"].as_array().unwrap(),
        &want_keys,
        "GROUP BY key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_the_log_and_duckdb_reads_exactly_it() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    // Phase 1: no compactor. Many small multi-topic segments, listed 7 entries a page.
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--no-compaction",
            "--linger-ms",
            "5",
            "--max-file-entries",
            "7",
        ],
    );
    let c = agent.client();
    let _ = c.create_topic("orders", PARTITIONS).await.unwrap();
    let _ = c.create_topic("other", 1).await.unwrap();
    for i in 0..REQUESTS {
        let orders: Vec<ProduceRecord> = (0..PER_REQUEST)
            .map(|j| {
                let n = i * PER_REQUEST + j;
                ProduceRecord {
                    key: Some(format!("customer-{}", n % 7)),
                    value: Some(format!("{{\"n\": {n}, \"amount\": {}}}", n % 13 + 1)),
                    ..Default::default()
                }
            })
            .collect();
        let other = vec![ProduceRecord {
            key: Some(format!("o{i}")),
            value: Some(format!("{{\"n\": {i}, \"amount\": 1}}")),
            ..Default::default()
        }];
        // Concurrent: the two requests usually share a segment.
        let (a, b) = tokio::join!(c.produce("orders", orders), c.produce("other", other));
        let _ = (a.unwrap(), b.unwrap());
    }
    let orders = log_of(&c, "orders", PARTITIONS).await;
    let other = log_of(&c, "other", 1).await;
    assert_eq!(
        orders.iter().map(Vec::len).sum::<usize>(),
        REQUESTS * PER_REQUEST
    );
    let page = c.topic_files("orders", None, None, None).await.unwrap();
    let listed: usize = page.partitions.iter().map(|p| p.entries.len()).sum();
    assert!(listed <= 7 && page.partitions.iter().any(|p| p.to < p.end_offset));
    // The CLI pages through the listing: its query reads the whole log.
    let before = duckdb_check(&agent.url, &bucket, "orders");
    assert_reads_exactly(&before, &orders);
    // Part of one partition: entries are cut to exactly offsets 7..93.
    let slice: Vec<_> = orders[1]
        .iter()
        .filter(|(o, _, _)| (7..93).contains(o))
        .cloned()
        .collect();
    assert_eq!(slice.len(), 86);
    let part = duckdb_check_range(
        &agent.url,
        &bucket,
        "orders",
        &["--partition", "1", "--from", "7", "--to", "93"],
    );
    assert_reads_exactly_parts(&part, vec![(1, &slice)]);
    assert_eq!(before["partition_files"], 0);
    let segments_before = segment_files(dir.path()).len();
    assert!(
        segments_before >= REQUESTS,
        "one segment per flush: {segments_before}"
    );
    assert!(agent.terminate().success());

    // Phase 2: the compactor runs while consumers read the whole log in a loop, and the
    // sweeper deletes what was replaced under them.
    let agent = AgentProc::start(
        dir.path(),
        &[
            &common::EAGER_COMPACTION[..],
            &[
                "--compaction-target-bytes",
                "4000",
                "--compaction-row-group-bytes",
                "1500",
                "--commit-deadline-ms",
                "1000",
                "--orphan-grace-ms",
                "2000",
                "--sweep-interval-ms",
                "300",
                // No read cache: every consumer read goes to the bucket, so reads race the
                // sweeper's deletions of replaced segments for real.
                "--cache-bytes",
                "8",
            ],
        ]
        .concat(),
    );
    let c = agent.client();
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let reader = {
        let (c, stop, reads, orders) = (c.clone(), stop.clone(), reads.clone(), orders.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // read_all panics on any error; a gap or a changed record fails the equality.
                assert!(
                    log_of(&c, "orders", PARTITIONS).await == orders,
                    "a consumer saw the log change during compaction"
                );
                let _ = reads.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let files = c.topic_files("orders", None, None, None).await.unwrap();
        let left: usize = files
            .partitions
            .iter()
            .map(|p| {
                p.entries
                    .iter()
                    .filter(|e| e.layout == FileLayout::Segment)
                    .count()
            })
            .sum();
        // A single trailing entry is never rewritten alone.
        let referenced: std::collections::BTreeSet<String> = files
            .partitions
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.key.clone()))
            .chain(
                c.topic_files("other", None, None, None)
                    .await
                    .unwrap()
                    .partitions
                    .iter()
                    .flat_map(|p| p.entries.iter().map(|e| e.key.clone()))
                    .collect::<Vec<_>>(),
            )
            .filter(|k| k.starts_with("segments/"))
            .collect();
        let on_disk = segment_files(dir.path()).len();
        if left <= PARTITIONS as usize && on_disk == referenced.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction did not finish: {left} segment entries left, {on_disk} segment objects for {} referenced",
            referenced.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the consumers go on for a moment over the compacted layout.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    assert!(
        reads.load(Ordering::Relaxed) >= 2,
        "consumers read during compaction"
    );

    assert_eq!(
        log_of(&c, "orders", PARTITIONS).await,
        orders,
        "fetches unchanged"
    );
    assert_eq!(log_of(&c, "other", 1).await, other, "the other topic too");
    let after = duckdb_check(&agent.url, &bucket, "orders");
    assert_reads_exactly(&after, &orders);
    let part = duckdb_check_range(
        &agent.url,
        &bucket,
        "orders",
        &["--partition", "1", "--from", "7", "--to", "93"],
    );
    assert_reads_exactly_parts(&part, vec![(1, &slice)]);
    assert_eq!(after["layout_ok"], true, "{}", after["problems"]);
    let files = after["partition_files"].as_u64().unwrap();
    assert!(files >= u64::from(PARTITIONS), "{files} partition files");
    // The plain glob over topics/orders/ (the README's query): dense absolute offsets.
    let listing = c.topic_files("orders", None, None, None).await.unwrap();
    for (p, g) in after["glob"].as_array().unwrap().iter().enumerate() {
        let in_files: u64 = listing.partitions[p]
            .entries
            .iter()
            .filter(|e| e.layout == FileLayout::Partition)
            .map(|e| u64::from(e.records))
            .sum();
        let (n, lo, hi, distinct) = (
            g[1].as_u64().unwrap(),
            g[2].as_u64().unwrap(),
            g[3].as_u64().unwrap(),
            g[4].as_u64().unwrap(),
        );
        assert_eq!(g[0].as_u64().unwrap(), p as u64);
        assert_eq!((n, distinct), (in_files, in_files), "partition {p}");
        assert_eq!((lo, hi - lo + 1), (0, n), "partition {p}: dense from 0");
    }
    assert_eq!(
        after["pyarrow_rows"].as_u64().unwrap(),
        after["glob"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g[1].as_u64().unwrap())
            .sum::<u64>()
    );
    let m = c.metrics().await.unwrap();
    assert!(metric(&m, "floe_compactions_total") >= u64::from(PARTITIONS));
    assert_eq!(metric(&m, "floe_compactions_lost_total"), 0);
    let segments_after = segment_files(dir.path()).len();
    eprintln!(
        "compaction: {} segment objects before, {segments_after} after + {files} partition files; {} consumer passes; DuckDB query {} ms before, {} ms after",
        segments_before,
        reads.load(Ordering::Relaxed),
        before["query_ms"],
        after["query_ms"]
    );
    assert!(segments_after < segments_before);
    assert!(agent.terminate().success());
}

/// Retention by size (RFC 0004) on a real agent: a topic's `retention.bytes` and the
/// agent's `--default-retention-bytes` for a topic without one keep each partition within
/// its budget (whole runs, the newest always kept), fetches below the start get 416, and
/// the sweeper deletes the objects nothing refers to any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_size_keeps_partitions_within_their_budget() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--no-compaction",
            "--linger-ms",
            "5",
            "--default-retention-bytes",
            "12000",
            "--commit-deadline-ms",
            "1000",
            "--orphan-grace-ms",
            "2000",
            "--sweep-interval-ms",
            "300",
        ],
    );
    let c = agent.client();
    // Own budget: 5 000 bytes per partition (a run here is ~430 bytes of lz4).
    let out = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args([
            "topics",
            "--url",
            &agent.url,
            "create",
            "sized",
            "--retention-bytes",
            "5000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = c.create_topic("defaulted", 1).await.unwrap();
    // A bad value is refused, naming the key.
    let (status, body) = common::raw(
        reqwest::Method::POST,
        &format!("{}/v1/topics", agent.url),
        Some("application/json"),
        br#"{"name":"bad","partitions":1,"config":{"retention.bytes":"-5"}}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_topic_config");
    // 40 segments of ~2 KiB of incompressible-ish values per topic.
    for i in 0..40u32 {
        let recs = |t: &str| -> Vec<ProduceRecord> {
            (0..4)
                .map(|j| ProduceRecord {
                    value: Some(format!(
                        "{t}-{i}-{j}-{}",
                        (0..500)
                            .map(|k| char::from(b'a' + ((i * 7 + j * 13 + k) % 26) as u8))
                            .collect::<String>()
                    )),
                    ..Default::default()
                })
                .collect()
        };
        let _ = c.produce("sized", recs("s")).await.unwrap();
        let _ = c.produce("defaulted", recs("d")).await.unwrap();
    }
    let budget_of = |t: &str| if t == "sized" { 5_000u64 } else { 12_000 };
    // The agent's own index (SQLite allows a second reader): what it holds per partition.
    let index = floe_index::open(&format!(
        "sqlite://{}",
        dir.path().join("index.db").display()
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    for topic in ["sized", "defaulted"] {
        let t = index.get_topic(topic).await.unwrap().unwrap();
        loop {
            let d = c.describe_topic(topic).await.unwrap();
            let start = d.partitions[0].start_offset;
            // Retention may have run while records were still coming: wait for the sweep
            // after the last produce.
            let runs = index.runs_from(t.id, 0, start, 1000).await.unwrap();
            let held: u64 = runs.iter().map(|r| r.byte_end - r.byte_start).sum();
            if start > 0 && (held <= budget_of(topic) || runs.len() == 1) {
                assert_eq!(d.partitions[0].end_offset, 160);
                assert!(
                    runs.len() >= 2,
                    "{topic}: the budget holds more than one run"
                );
                eprintln!(
                    "{topic}: {held} bytes in {} runs kept, start offset {start}",
                    runs.len()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: retention by size did not run"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let start = c.describe_topic("sized").await.unwrap().partitions[0].start_offset;
    let below = c
        .fetch("sized", 0, 0, floe_client::FetchOptions::default())
        .await;
    assert!(
        below.is_err(),
        "fetch below the start offset must fail (416)"
    );
    let got = read_all_from(&c, "sized", start).await;
    assert_eq!(got.first().map(|r| r.offset), Some(start));
    assert_eq!(
        got.last().map(|r| r.offset),
        Some(159),
        "the newest records stay"
    );
    // The sweeper deletes segments of dropped runs (both topics' runs are gone from them).
    let deadline = Instant::now() + Duration::from_secs(30);
    while segment_files(dir.path()).len() >= 80 {
        assert!(
            Instant::now() < deadline,
            "dropped segments were not deleted"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.terminate().success());
}

async fn read_all_from(c: &Client, topic: &str, from: u64) -> Vec<floe_api::FetchedRecord> {
    let r = c
        .fetch(
            topic,
            0,
            from,
            floe_client::FetchOptions {
                max_records: Some(10_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    r.records
}

/// The latest value per key (an empty value deletes the key), replaying `log` in order.
fn table_of(log: &Records) -> BTreeMap<String, String> {
    let mut t = BTreeMap::new();
    for (_, k, v) in log {
        if v.is_empty() {
            let _ = t.remove(k);
        } else {
            let _ = t.insert(k.clone(), v.clone());
        }
    }
    t
}

/// Compacted topics (`cleanup.policy=compact`, RFC 0004): the compactor keeps the latest
/// record per key at its own offset (gaps where the others were), drops tombstones once
/// past `delete.retention.ms` (never the log's last record), and retention leaves a
/// compact-only topic alone. Fetches, queues and DuckDB read exactly the cleaned log, and
/// replaying it rebuilds the same table as replaying the full log; consumers reading
/// throughout only ever see records of the original log, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_topic_keeps_the_latest_record_per_key() {
    let dir = tempfile::tempdir().unwrap();
    let bucket = dir.path().join("bucket");
    let agent = AgentProc::start(dir.path(), &["--no-compaction", "--linger-ms", "5"]);
    let c = agent.client();
    let config = |policy: &str| floe_api::CreateTopicRequest {
        name: "kv".into(),
        partitions: 2,
        retention_ms: None,
        config: Some(BTreeMap::from([
            ("cleanup.policy".to_string(), policy.to_string()),
            ("delete.retention.ms".to_string(), "0".to_string()),
        ])),
    };
    let e = c.create_topic_with(config("compacted")).await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(400), Some("invalid_topic_config"))
    );
    let _ = c.create_topic_with(config("compact")).await.unwrap();
    let _ = c.create_topic("plain", 1).await.unwrap();
    let keyless = ProduceRecord {
        value: Some("v".into()),
        ..Default::default()
    };
    let e = c.produce("kv", vec![keyless.clone()]).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(400), Some("key_required")));
    // 30 requests of 20 records over 9 keys; every 11th record deletes its key; key k8 is
    // deleted for good at the end, and the last record is an ordinary one.
    for i in 0..REQUESTS {
        let recs: Vec<ProduceRecord> = (0..PER_REQUEST)
            .map(|j| {
                let n = i * PER_REQUEST + j;
                let tombstone = n.is_multiple_of(11) || (n % 9 == 8 && i + 1 == REQUESTS);
                ProduceRecord {
                    key: Some(format!("k{}", n % 9)),
                    value: Some(if tombstone {
                        String::new()
                    } else {
                        format!("{{\"n\": {n}, \"amount\": {}}}", n % 5 + 1)
                    }),
                    ..Default::default()
                }
            })
            .collect();
        let (a, b) = tokio::join!(
            c.produce("kv", recs),
            c.produce("plain", vec![keyless.clone()])
        );
        let _ = (a.unwrap(), b.unwrap());
    }
    let full = log_of(&c, "kv", 2).await;
    assert_eq!(
        full.iter().map(Vec::len).sum::<usize>(),
        REQUESTS * PER_REQUEST
    );
    // What cleaning must leave: each key's latest record, tombstones expired (retention 0)
    // unless one is the partition's last record.
    let want: Log = full
        .iter()
        .map(|recs| {
            let last: BTreeMap<&str, u64> = recs.iter().map(|(o, k, _)| (k.as_str(), *o)).collect();
            recs.iter()
                .filter(|(o, k, v)| {
                    last[k.as_str()] == *o
                        && (!v.is_empty() || Some(o) == recs.last().map(|r| &r.0))
                })
                .cloned()
                .collect()
        })
        .collect();
    assert!(agent.terminate().success());

    // The compactor cleans the whole log at once (the waiting entries fit one target);
    // retention by default would drop everything older than 1 ms — but not here.
    let agent = AgentProc::start(
        dir.path(),
        &[
            &common::EAGER_COMPACTION[..],
            &[
                "--compaction-target-bytes",
                "10000000",
                "--compaction-row-group-bytes",
                "1500",
                "--default-retention-ms",
                "1",
                "--commit-deadline-ms",
                "1000",
                "--orphan-grace-ms",
                "2000",
                "--sweep-interval-ms",
                "300",
                "--cache-bytes",
                "8",
            ],
        ]
        .concat(),
    );
    let c = agent.client();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (c, stop, full) = (c.clone(), stop.clone(), full.clone());
        tokio::spawn(async move {
            let mut passes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (p, seen) in log_of(&c, "kv", 2).await.iter().enumerate() {
                    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "offsets increase");
                    for r in seen {
                        assert!(full[p].binary_search(r).is_ok(), "{r:?} is not in the log");
                    }
                }
                passes += 1;
            }
            passes
        })
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let files = c.topic_files("kv", None, None, None).await.unwrap();
        let segments = files
            .partitions
            .iter()
            .flat_map(|p| &p.entries)
            .filter(|e| e.layout == FileLayout::Segment)
            .count();
        let plain = &c.describe_topic("plain").await.unwrap().partitions[0];
        if segments == 0 && plain.start_offset == plain.end_offset {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not cleaned: {segments} segment entries left; plain {plain:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    assert!(reader.await.unwrap() >= 1, "consumers read during cleaning");

    let cleaned = log_of(&c, "kv", 2).await;
    assert_eq!(
        cleaned, want,
        "exactly the latest record per key, at its offset"
    );
    for p in 0..2 {
        assert_eq!(table_of(&cleaned[p]), table_of(&full[p]), "same table");
        assert!(!table_of(&cleaned[p]).contains_key("k8"), "k8 was deleted");
    }
    let kv = c.describe_topic("kv").await.unwrap();
    for (p, info) in kv.partitions.iter().enumerate() {
        assert_eq!(
            info.start_offset, 0,
            "retention leaves a compact-only topic alone"
        );
        assert_eq!(
            info.end_offset,
            full[p].last().unwrap().0 + 1,
            "offsets never move"
        );
    }
    // Fetching inside a gap continues at the next record kept.
    let p0 = &cleaned[0];
    let gap = p0.windows(2).find(|w| w[1].0 > w[0].0 + 1).expect("a gap");
    let f = c
        .fetch("kv", 0, gap[0].0 + 1, floe_client::FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(f.records[0].offset, gap[1].0);
    // A queue over the cleaned log hands out exactly the kept records.
    let mut got = std::collections::BTreeSet::new();
    for _ in 0..200 {
        let r = c
            .receive(
                "kv",
                "workers",
                &floe_api::ReceiveRequest {
                    max_records: Some(50),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        if !r.records.is_empty() {
            let receipts = r.records.iter().map(|q| q.receipt.clone()).collect();
            let _ = c.ack("kv", "workers", receipts).await.unwrap();
        }
        got.extend(
            r.records
                .iter()
                .map(|q| (q.partition as usize, q.record.offset)),
        );
        if got.len() == cleaned.iter().map(Vec::len).sum::<usize>() {
            break;
        }
    }
    let want_q: std::collections::BTreeSet<(usize, u64)> = cleaned
        .iter()
        .enumerate()
        .flat_map(|(p, recs)| recs.iter().map(move |r| (p, r.0)))
        .collect();
    assert_eq!(got, want_q, "the queue delivers exactly the kept records");
    // DuckDB over the files listing reads exactly the cleaned log.
    let report = duckdb_check_compacted(&agent.url, &bucket, "kv");
    assert_reads_exactly(&report, &cleaned);
    assert_eq!(report["layout_ok"], true, "{}", report["problems"]);
    let m = c.metrics().await.unwrap();
    assert_eq!(
        metric(&m, "floe_compaction_cleaned_records_total"),
        (REQUESTS * PER_REQUEST - cleaned.iter().map(Vec::len).sum::<usize>()) as u64
    );
    // The index's record of objects matches the bucket once the sweeper caught up (no
    // crash here, so every object in the bucket was committed at some point).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on_disk = parquet_files(&bucket);
        let m = c.metrics().await.unwrap();
        let tracked = (
            metric(&m, "floe_bucket_objects"),
            metric(&m, "floe_bucket_bytes"),
        );
        let disk = (
            on_disk.len() as u64,
            on_disk
                .iter()
                .map(|p| p.metadata().unwrap().len())
                .sum::<u64>(),
        );
        if tracked == disk {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "index records {tracked:?}, bucket holds {disk:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(agent.terminate().success());
}

/// Every Parquet object under a bucket folder.
fn parquet_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(parquet_files(&p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p);
        }
    }
    out
}

/// A quiet partition (RFC 0004's second level): each trickle of records waits out
/// `max_wait` and is compacted into a small file; the next trickle is merged with that
/// file instead of adding another, so the partition keeps one small file, and its log
/// never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_partition_keeps_one_small_file() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &[
            &common::EAGER_COMPACTION[..],
            &["--linger-ms", "5", "--compaction-target-bytes", "1000000"],
        ]
        .concat(),
    );
    let c = agent.client();
    let _ = c.create_topic("quiet", 1).await.unwrap();
    let mut want = Vec::new();
    for round in 0..4 {
        for i in 0..3 {
            let v = format!("{{\"round\": {round}, \"i\": {i}, \"amount\": 1}}");
            let r = c
                .produce(
                    "quiet",
                    vec![ProduceRecord {
                        key: Some(format!("k{i}")),
                        value: Some(v.clone()),
                        ..Default::default()
                    }],
                )
                .await
                .unwrap();
            want.push((r.offsets[0].offset, format!("k{i}"), v));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let files = c.topic_files("quiet", None, None, None).await.unwrap();
            let entries = &files.partitions[0].entries;
            if entries.iter().all(|e| e.layout == FileLayout::Partition) {
                let keys: std::collections::BTreeSet<&str> =
                    entries.iter().map(|e| e.key.as_str()).collect();
                assert_eq!(keys.len(), 1, "round {round}: one file, merged: {keys:?}");
                break;
            }
            assert!(Instant::now() < deadline, "round {round} not compacted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(log_of(&c, "quiet", 1).await, vec![want.clone()]);
    }
    assert!(agent.terminate().success());
}
