//! Segments are plain Parquet: pyarrow (installed by the test setup) reads a segment object
//! straight from the data folder and finds the expected rows and columns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::{AgentProc, segment_files};
use floe_api::ProduceRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_segments_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "200"]);
    let c = agent.client();
    let _ = c.create_topic("analytics", 2).await.unwrap();
    let recs: Vec<ProduceRecord> = (0..50)
        .map(|i| ProduceRecord {
            key: Some(format!("k{i}")),
            value: Some(format!("{{\"n\": {i}}}")),
            headers: Some(BTreeMap::from([("source".to_string(), "test".to_string())])),
            partition: Some(i % 2),
            ..Default::default()
        })
        .collect();
    let _ = c.produce("analytics", recs).await.unwrap();
    assert!(
        tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap()
            .success()
    );
    let files = segment_files(dir.path());
    assert_eq!(
        files.len(),
        1,
        "one produce request within one linger is one segment"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/pyarrow_check.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&files[0])
        .output()
        .expect("python3 must be installed (tests/setup.sh)");
    assert!(
        out.status.success(),
        "pyarrow check failed (is pyarrow installed? run tests/setup.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["rows"], 50);
    assert_eq!(
        report["columns"],
        serde_json::json!([
            "topic",
            "partition",
            "run_offset",
            "timestamp",
            "key",
            "value",
            "headers"
        ])
    );
    assert_eq!(report["topics"], serde_json::json!(["analytics"]));
    assert_eq!(
        report["partition_rows"],
        serde_json::json!({"0": 25, "1": 25})
    );
    assert_eq!(
        report["row_groups"], 1,
        "the runs of a flush share row groups (RFC 0002, amendment)"
    );
    let values: Vec<String> = report["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut want: Vec<String> = (0..50).map(|i| format!("{{\"n\": {i}}}")).collect();
    want.sort();
    let mut got = values.clone();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(
        report["first_headers"],
        serde_json::json!([{"key": "source", "value": "test"}])
    );
}
