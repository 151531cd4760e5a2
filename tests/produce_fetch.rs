//! Produce → fetch over real HTTP against a real `floe serve` process (embedded default:
//! local folder bucket + SQLite).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{AgentProc, raw, read_all, rec};
use floe_api::ProduceRecord;
use floe_client::FetchOptions;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_then_fetch_returns_exactly_what_was_produced() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "10"]);
    let c = agent.client();
    let _ = c.create_topic("orders", 3).await.unwrap();
    let mut sent = Vec::new();
    // Where each request's keyless records went (sticky: one partition per request).
    let mut keyless_partitions = Vec::new();
    for batch in 0..5 {
        let recs: Vec<ProduceRecord> = (0..40)
            .map(|i| {
                let n = batch * 40 + i;
                ProduceRecord {
                    key: (n % 4 != 0).then(|| format!("key-{}", n % 7)),
                    value: (n % 5 != 0).then(|| format!("value {n} ✓")),
                    value_b64: (n % 5 == 0).then(|| base64_of(&[0xff, 0xfe, n as u8])),
                    headers: (n % 2 == 0)
                        .then(|| BTreeMap::from([("n".to_string(), n.to_string())])),
                    partition: (n % 3 == 0).then_some(2),
                    ..Default::default()
                }
            })
            .collect();
        let resp = c.produce("orders", recs.clone()).await.unwrap();
        assert_eq!(resp.offsets.len(), recs.len());
        for (r, o) in recs.into_iter().zip(resp.offsets) {
            if r.partition == Some(2) {
                assert_eq!(o.partition, 2);
            } else if let Some(k) = &r.key {
                assert_eq!(
                    o.partition,
                    floe_core::partitioner::partition_for_key(k.as_bytes(), 3)
                );
            }
            if r.key.is_none() && r.partition.is_none() {
                keyless_partitions.push((batch, o.partition));
            }
            sent.push((o, r));
        }
    }
    // Keyless records of one request land in one partition; the next request's in the
    // next partition (this agent serves no other producer, so the turn is exact).
    let per_request: Vec<u32> = (0..5)
        .map(|b| {
            let ps: BTreeSet<u32> = keyless_partitions
                .iter()
                .filter(|(rb, _)| *rb == b)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(ps.len(), 1, "request {b}: keyless records went to {ps:?}");
            ps.into_iter().next().unwrap()
        })
        .collect();
    for w in per_request.windows(2) {
        assert_eq!(
            w[1],
            (w[0] + 1) % 3,
            "keyless partitions by request: {per_request:?}"
        );
    }
    for p in 0..3 {
        let got = read_all(&c, "orders", p).await;
        let want: Vec<_> = sent.iter().filter(|(o, _)| o.partition == p).collect();
        assert_eq!(got.len(), want.len(), "partition {p}");
        for (i, (g, (o, r))) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.offset, i as u64, "dense offsets from 0");
            assert_eq!(g.offset, o.offset);
            assert_eq!(g.key, r.key);
            match (&r.value, &r.value_b64) {
                (Some(v), _) => assert_eq!(g.value.as_ref(), Some(v)),
                (None, Some(b)) => assert_eq!(g.value_b64.as_ref(), Some(b)),
                _ => unreachable!(),
            }
            assert_eq!(g.headers, r.headers.clone().unwrap_or_default());
        }
    }
    // max_records and max_bytes limit a fetch, and a fetch from the middle starts there.
    let r = c
        .fetch(
            "orders",
            2,
            3,
            FetchOptions {
                max_records: Some(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![3, 4, 5, 6, 7]
    );
    assert_eq!(r.next_offset, 8);
    let r = c
        .fetch(
            "orders",
            2,
            0,
            FetchOptions {
                max_bytes: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        r.records.len(),
        1,
        "at least one record even when it exceeds max_bytes"
    );
    // Topics list / describe / delete.
    let list = c.list_topics().await.unwrap();
    assert_eq!(list.topics.len(), 1);
    let d = c.describe_topic("orders").await.unwrap();
    let total: u64 = d.partitions.iter().map(|p| p.end_offset).sum();
    assert_eq!(total, sent.len() as u64);
    c.delete_topic("orders").await.unwrap();
    assert_eq!(
        c.describe_topic("orders").await.unwrap_err().code(),
        Some("topic_not_found")
    );
}

/// (method, url, content type, body, expected status, expected error code)
type Case<'a> = (Method, String, Option<&'a str>, Vec<u8>, u16, &'a str);

fn base64_of(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_get_unique_dense_offsets_in_send_order() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "5"]);
    let c = agent.client();
    let _ = c.create_topic("t", 1).await.unwrap();
    let mut tasks = Vec::new();
    for prod in 0..8 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for b in 0..10 {
                let recs = (0..10)
                    .map(|i| rec(format!("{prod}:{}", b * 10 + i)))
                    .collect();
                let r = c.produce("t", recs).await.unwrap();
                offsets.extend(r.offsets.into_iter().map(|o| o.offset));
            }
            offsets
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let offs = t.await.unwrap();
        assert!(
            offs.windows(2).all(|w| w[0] < w[1]),
            "a producer's offsets increase in send order"
        );
        all.extend(offs);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (0..800).collect::<Vec<u64>>(),
        "offsets unique and dense"
    );
    let got = read_all(&c, "t", 0).await;
    assert_eq!(got.len(), 800);
    let mut next_seq = [0u32; 8];
    for r in got {
        let v = r.value.unwrap();
        let (p, s) = v.split_once(':').unwrap();
        let (p, s): (usize, u32) = (p.parse().unwrap(), s.parse().unwrap());
        assert_eq!(s, next_seq[p], "producer {p} records in its own send order");
        next_seq[p] += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_wakes_on_commit_and_times_out_empty() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "20"]);
    let c = agent.client();
    let _ = c.create_topic("lp", 1).await.unwrap();
    // Nothing comes: returns empty at the deadline.
    let t0 = Instant::now();
    let r = c
        .fetch(
            "lp",
            0,
            0,
            FetchOptions {
                wait_ms: Some(700),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let waited = t0.elapsed();
    assert!(r.records.is_empty());
    assert!(
        waited >= Duration::from_millis(650),
        "returned after {waited:?}, before the wait ended"
    );
    // A waiting fetch is woken by the commit, long before its 10 s wait ends.
    let woke = common::long_poll_wake_time(&c, &c, "lp", "wake").await;
    assert!(
        woke < Duration::from_secs(2),
        "woken {woke:?} after the produce"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_documented_4xx_and_agent_stays_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--linger-ms",
            "5",
            "--max-record-bytes",
            "1000",
            "--max-body-bytes",
            "100000",
            "--max-buffer-bytes",
            "1000000",
            "--max-partitions",
            "16",
        ],
    );
    let u = agent.url.clone();
    let c = agent.client();
    let _ = c.create_topic("ok", 2).await.unwrap();
    let json = Some("application/json");
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            b"{not json".to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": 5, "partitions": 1}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "x", "partitions": "1"}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "../x", "partitions": 1}"#.to_vec(),
            400,
            "invalid_topic_name",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "", "partitions": 1}"#.to_vec(),
            400,
            "invalid_topic_name",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            format!(r#"{{"name": "{}", "partitions": 1}}"#, "a".repeat(300)).into_bytes(),
            400,
            "invalid_topic_name",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            r#"{"name": "tópico", "partitions": 1}"#.as_bytes().to_vec(),
            400,
            "invalid_topic_name",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "..", "partitions": 1}"#.to_vec(),
            400,
            "invalid_topic_name",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "z", "partitions": 0}"#.to_vec(),
            400,
            "invalid_partitions",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "z", "partitions": 17}"#.to_vec(),
            400,
            "invalid_partitions",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "z", "partitions": -1}"#.to_vec(),
            400,
            "invalid_partitions",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            json,
            br#"{"name": "ok", "partitions": 1}"#.to_vec(),
            409,
            "topic_exists",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics"),
            Some("text/plain"),
            br#"{"name": "y", "partitions": 1}"#.to_vec(),
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            br#"{"records": [{"value": 1}]}"#.to_vec(),
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            br#"{"records": []}"#.to_vec(),
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            br#"{"records": [{"key": "k"}]}"#.to_vec(),
            400,
            "invalid_record",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            br#"{"records": [{"value": "a", "value_b64": "YQ=="}]}"#.to_vec(),
            400,
            "invalid_record",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            br#"{"records": [{"value_b64": "***"}]}"#.to_vec(),
            400,
            "invalid_base64",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            br#"{"records": [{"value": "a", "partition": 2}]}"#.to_vec(),
            400,
            "invalid_partition",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            br#"{"records": [{"value": "a", "partition": -1}]}"#.to_vec(),
            400,
            "invalid_partition",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/nope/records"),
            json,
            br#"{"records": [{"value": "a"}]}"#.to_vec(),
            404,
            "topic_not_found",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            format!(r#"{{"records": [{{"value": "{}"}}]}}"#, "v".repeat(2000)).into_bytes(),
            413,
            "record_too_large",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/ok/records"),
            json,
            format!(r#"{{"records": [{{"value": "{}"}}]}}"#, "v".repeat(200_000)).into_bytes(),
            413,
            "request_too_large",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/ok/partitions/2/records"),
            None,
            vec![],
            400,
            "invalid_partition",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/ok/partitions/-1/records"),
            None,
            vec![],
            400,
            "invalid_partition",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/ok/partitions/0/records?offset=-1"),
            None,
            vec![],
            400,
            "invalid_offset",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/ok/partitions/0/records?offset=18446744073709551616"),
            None,
            vec![],
            400,
            "invalid_offset",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/ok/partitions/0/records?offset=18446744073709551615"),
            None,
            vec![],
            416,
            "offset_out_of_range",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/ok/partitions/0/records?max_records=0"),
            None,
            vec![],
            400,
            "invalid_parameter",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/..%2Fetc/partitions/0/records"),
            None,
            vec![],
            400,
            "invalid_topic_name",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/nope"),
            None,
            vec![],
            404,
            "topic_not_found",
        ),
        (
            Method::DELETE,
            format!("{u}/v1/topics/nope"),
            None,
            vec![],
            404,
            "topic_not_found",
        ),
        (
            Method::GET,
            format!("{u}/v2/whatever"),
            None,
            vec![],
            404,
            "route_not_found",
        ),
        (
            Method::PUT,
            format!("{u}/v1/topics"),
            None,
            vec![],
            405,
            "method_not_allowed",
        ),
    ];
    for (m, url, ct, body, status, code) in cases {
        let (got_status, body_json) = raw(m.clone(), &url, ct, body).await;
        assert_eq!(got_status, status, "{m} {url}: {body_json}");
        assert_eq!(body_json["error"]["code"], code, "{m} {url}: {body_json}");
        assert!(
            body_json["error"]["message"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
    }
    // Nothing above was written, and the agent still works.
    let d = c.describe_topic("ok").await.unwrap();
    assert!(
        d.partitions.iter().all(|p| p.end_offset == 0),
        "rejected produce requests wrote nothing"
    );
    assert_eq!(c.list_topics().await.unwrap().topics.len(), 1);
    let r = c
        .produce("ok", vec![rec("still fine".into())])
        .await
        .unwrap();
    assert_eq!(r.offsets.len(), 1);
    let (s, _) = raw(Method::GET, &format!("{u}/healthz"), None, vec![]).await;
    assert_eq!(s, 200);
    let (s, _) = raw(Method::GET, &format!("{u}/readyz"), None, vec![]).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_buffer_and_answers_waiting_producers() {
    let dir = tempfile::tempdir().unwrap();
    // The linger policy with a long linger: the records are still buffered when SIGTERM
    // arrives.
    let agent = AgentProc::start(
        dir.path(),
        &["--flush-policy", "linger", "--linger-ms", "3000"],
    );
    let c = agent.client();
    let _ = c.create_topic("g", 1).await.unwrap();
    let pending = {
        let c = c.clone();
        tokio::spawn(async move { c.produce("g", vec![rec("in flight".into())]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || agent.terminate())
        .await
        .unwrap();
    assert!(status.success(), "clean exit: {status:?}");
    let acked = pending
        .await
        .unwrap()
        .expect("the waiting producer is answered with its offset");
    assert_eq!(acked.offsets[0].offset, 0);
    let agent = AgentProc::start(dir.path(), &[]);
    let got = read_all(&agent.client(), "g", 0).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].value.as_deref(), Some("in flight"));
}

/// Group commit (the default policy): an idle agent flushes at once instead of waiting
/// out the linger, and concurrent producers share flushes (fewer segments than requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_answers_without_the_linger_and_batches_concurrent_producers() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "5000"]);
    let c = agent.client();
    let _ = c.create_topic("gc", 1).await.unwrap();
    let started = Instant::now();
    let _ = c.produce("gc", vec![rec("alone".into())]).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "an idle agent must not wait out the 5 s linger: {:?}",
        started.elapsed()
    );
    let n = 40;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.produce("gc", vec![rec(format!("r{i}"))]).await })
        })
        .collect();
    for t in tasks {
        let _ = t.await.unwrap().unwrap();
    }
    let got = read_all(&c, "gc", 0).await;
    assert_eq!(got.len(), n + 1, "every acked record is readable, once");
    assert!(
        tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap()
            .success()
    );
    let segments = common::segment_files(dir.path()).len();
    assert!(
        segments < n + 1,
        "{segments} segments for {} requests: concurrent requests must share flushes",
        n + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_openapi_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "5"]);
    let c = agent.client();
    let _ = c.create_topic("m", 1).await.unwrap();
    let _ = c
        .produce("m", (0..10).map(|i| rec(format!("{i}"))).collect())
        .await
        .unwrap();
    let _ = read_all(&c, "m", 0).await;
    let text = c.metrics().await.unwrap();
    for name in [
        "floe_records_produced_total 10",
        "floe_records_fetched_total 10",
        "floe_segments_written_total 1",
        "floe_object_store_requests_total{op=\"put\"} 1",
        "floe_flush_seconds_bucket",
        "floe_produce_seconds_bucket",
        "floe_flush_bytes_bucket",
        "floe_bytes_produced_total",
        "floe_bytes_fetched_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    // The served OpenAPI document is the one checked in (docs/openapi.json), and each
    // documented route exists on the agent (no route_not_found).
    let (s, served) = raw(
        Method::GET,
        &format!("{}/openapi.json", agent.url),
        None,
        vec![],
    )
    .await;
    assert_eq!(s, 200);
    let checked_in: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/openapi.json"
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        served, checked_in,
        "docs/openapi.json is stale: regenerate with `floe openapi > docs/openapi.json`"
    );
    for (m, path) in floe_agent::openapi::documented_routes() {
        let url = format!(
            "{}{}",
            agent.url,
            path.replace("{topic}", "m").replace("{partition}", "0")
        );
        let method = Method::from_bytes(m.as_bytes()).unwrap();
        if method == Method::DELETE {
            continue;
        }
        if path.ends_with("/stream") {
            // An SSE stream never ends: check the headers only, then drop it.
            let resp = reqwest::get(&url).await.unwrap();
            assert_eq!(resp.status(), 200, "{m} {path}");
            continue;
        }
        let (_, body) = raw(method, &url, Some("application/json"), b"{}".to_vec()).await;
        assert_ne!(body["error"]["code"], "route_not_found", "{m} {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arrow_ipc_produce_and_fetch_match_json() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &["--linger-ms", "5", "--max-records-per-request", "100"],
    );
    let c = agent.client();
    let _ = c.create_topic("bin", 2).await.unwrap();
    let values: Vec<Vec<u8>> = (0..50u8)
        .map(|i| vec![i, 0xff, i.wrapping_mul(7)])
        .collect();
    let keys: Vec<String> = (0..50).map(|i| format!("key{i}")).collect();
    let recs: Vec<floe_core::ipc::RecordParts<'_>> = values
        .iter()
        .zip(&keys)
        .enumerate()
        .map(|(i, (v, k))| {
            (
                (i % 3 != 0).then_some(k.as_bytes()),
                v.as_slice(),
                Some((i % 2) as i32),
            )
        })
        .collect();
    let body = floe_core::ipc::encode_produce(&recs).unwrap();
    let r = c.produce_arrow("bin", body).await.unwrap();
    assert_eq!(r.offsets.len(), 50);
    for p in 0..2u32 {
        let (arrow, next, end) = c
            .fetch_arrow("bin", p, 0, FetchOptions::default())
            .await
            .unwrap();
        let json = read_all(&c, "bin", p).await;
        assert_eq!((next, end), (25, 25));
        assert_eq!(arrow.len(), 25);
        for (i, (a, j)) in arrow.iter().zip(&json).enumerate() {
            let sent = i * 2 + p as usize;
            assert_eq!(a.offset, i as u64);
            assert_eq!(a.offset, j.offset);
            assert_eq!(a.value, values[sent]);
            assert_eq!(j.value_bytes().unwrap(), values[sent]);
            assert_eq!(a.key.as_deref(), recs[sent].0);
            assert_eq!(a.timestamp_ms, j.timestamp_ms);
        }
        // An Arrow fetch at the end of the log is an empty stream with the offsets in headers.
        let (none, next, _) = c
            .fetch_arrow(
                "bin",
                p,
                25,
                FetchOptions {
                    wait_ms: Some(50),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(none.is_empty());
        assert_eq!(next, 25);
    }
    // Bad Arrow bodies are 4xx with JSON errors and write nothing.
    let u = format!("{}/v1/topics/bin/records", agent.url);
    let arrow = Some(floe_core::ipc::ARROW_STREAM);
    let (s, b) = raw(Method::POST, &u, arrow, b"definitely not arrow".to_vec()).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_arrow"))
    );
    let many: Vec<floe_core::ipc::RecordParts<'_>> =
        (0..101).map(|_| (None, &b"x"[..], None)).collect();
    let (s, b) = raw(
        Method::POST,
        &u,
        arrow,
        floe_core::ipc::encode_produce(&many).unwrap().to_vec(),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("request_too_large"))
    );
    let bad_part: Vec<floe_core::ipc::RecordParts<'_>> = vec![(None, &b"x"[..], Some(7))];
    let (s, b) = raw(
        Method::POST,
        &u,
        arrow,
        floe_core::ipc::encode_produce(&bad_part).unwrap().to_vec(),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_partition"))
    );
    let d = c.describe_topic("bin").await.unwrap();
    assert_eq!(d.partitions.iter().map(|p| p.end_offset).sum::<u64>(), 50);
}

/// `Idempotency-Key` (RFC 0003): a completed key replays its answer and writes nothing,
/// also after a restart; the same key with another body is 422; a malformed key is 400;
/// keys are per topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_refuses_reuse_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "5"]);
    let c = agent.client();
    let _ = c.create_topic("pay", 2).await.unwrap();
    let _ = c.create_topic("other", 1).await.unwrap();
    let body = || vec![rec("a".into()), rec("b".into()), rec("c".into())];
    let (first, replayed) = c.produce_with_key("pay", body(), "k-1").await.unwrap();
    assert!(!replayed);
    let (again, replayed) = c.produce_with_key("pay", body(), "k-1").await.unwrap();
    assert!(replayed, "second request with the key is a replay");
    assert_eq!(
        again.offsets, first.offsets,
        "same offsets, same partitions"
    );
    // Reused for another body: 422 and nothing written.
    let e = c
        .produce_with_key("pay", vec![rec("x".into())], "k-1")
        .await
        .unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(422), Some("idempotency_key_reused"))
    );
    // Per topic: the same key on another topic is a new request.
    let (_, replayed) = c.produce_with_key("other", body(), "k-1").await.unwrap();
    assert!(!replayed);
    let u = format!("{}/v1/topics/pay/records", c.base());
    for bad in ["has space", &"k".repeat(256)] {
        let resp = reqwest::Client::new()
            .post(&u)
            .header("idempotency-key", bad)
            .json(&serde_json::json!({"records": [{"value": "v"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 400, "{bad:?}");
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], "invalid_idempotency_key");
    }
    // Across a restart the key is still remembered (it lives in the index).
    assert!(
        tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap()
            .success()
    );
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "5"]);
    let c = agent.client();
    let (after, replayed) = c.produce_with_key("pay", body(), "k-1").await.unwrap();
    assert!(replayed);
    assert_eq!(after.offsets, first.offsets);
    let mut total = 0;
    for p in 0..2 {
        total += read_all(&c, "pay", p).await.len();
    }
    assert_eq!(total, 3, "one copy of the three records");
}

/// Producer sessions over HTTP (RFC 0003 part 2): a retry racing its first attempt in the
/// same flush is answered with the same offsets and written once (its rows are taken out
/// of the segment's run; the records after them are served at the right offsets, as JSON
/// and as Arrow); strict headers; gaps, unknown producers and zombies refused; the state
/// survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_sessions_dedupe_retries_in_one_flush_and_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    // A linger long enough that concurrent requests share one flush.
    let args = ["--flush-policy", "linger", "--linger-ms", "300"];
    let agent = AgentProc::start(dir.path(), &args);
    let c = agent.client();
    let _ = c.create_topic("ps", 1).await.unwrap();
    let s = c.init_producer(Some("billing")).await.unwrap();
    assert_eq!(s.epoch, 0);
    let seq0 = BTreeMap::from([(0u32, 0i64)]);
    let batch = || {
        (0..3)
            .map(|i| ProduceRecord {
                value: Some(format!("b{i}")),
                partition: Some(0),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    };
    let (a, b, plain) = tokio::join!(
        c.produce_sequenced("ps", batch(), s, &seq0),
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            c.produce_sequenced("ps", batch(), s, &seq0).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            c.produce("ps", vec![rec("plain".into())]).await
        }
    );
    let ((a, a_replayed), (b, b_replayed), plain) = (a.unwrap(), b.unwrap(), plain.unwrap());
    assert!(!a_replayed && b_replayed, "the second is the retry");
    assert_eq!(a.offsets, b.offsets, "the retry gets the first offsets");
    assert_eq!(
        a.offsets.iter().map(|o| o.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        plain.offsets[0].offset, 3,
        "the record after the taken-out rows"
    );
    let got = read_all(&c, "ps", 0).await;
    let values: Vec<_> = got.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(values, vec!["b0", "b1", "b2", "plain"]);
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    // The same as Arrow, from offset 0 and from 3 (the piece after the taken-out rows).
    for (from, want) in [(0u64, vec![0u64, 1, 2, 3]), (3, vec![3])] {
        let (arrow, next, end) = c
            .fetch_arrow("ps", 0, from, FetchOptions::default())
            .await
            .unwrap();
        assert_eq!(arrow.iter().map(|r| r.offset).collect::<Vec<_>>(), want);
        assert_eq!((next, end), (4, 4));
        assert_eq!(
            arrow.last().map(|r| r.value.clone()),
            Some(b"plain".to_vec())
        );
    }

    let metrics = reqwest::get(format!("{}/metrics", c.base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "floe_producer_duplicates_total 1",
        "floe_producer_states_stored 1",
        "floe_producers_initialised_total 1",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    // The read caches report what they hold: the fetches above decoded runs and the
    // agent cached the segments it wrote.
    for cache in ["run_cache", "object_cache"] {
        let held: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("floe_cache_bytes{{cache=\"{cache}\"}} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("floe_cache_bytes for {cache} in:\n{metrics}"));
        assert!(held > 0, "{cache} holds {held} bytes");
    }

    // Strict input: every refusal is a 4xx naming the problem, and writes nothing.
    let u = format!("{}/v1/topics/ps/records", c.base());
    let body = serde_json::json!({"records": [{"value": "v", "partition": 0}]});
    let post = |hs: Vec<(&'static str, String)>, body: serde_json::Value| {
        let mut r = reqwest::Client::new().post(&u).json(&body);
        for (k, v) in hs {
            r = r.header(k, v);
        }
        async move {
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            let v: serde_json::Value = resp.json().await.unwrap();
            (
                status,
                v["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    let id = s.producer_id.to_string();
    let full = |seqs: &str| {
        vec![
            ("producer-id", id.clone()),
            ("producer-epoch", "0".to_string()),
            ("producer-sequences", seqs.to_string()),
        ]
    };
    assert_eq!(
        post(vec![("producer-id", id.clone())], body.clone()).await,
        (400, "invalid_producer".into())
    );
    assert_eq!(
        post(full("0=x"), body.clone()).await,
        (400, "invalid_sequences".into())
    );
    assert_eq!(
        post(full("0=3,0=4"), body.clone()).await,
        (400, "invalid_sequences".into())
    );
    assert_eq!(
        post(full("1=3"), body.clone()).await,
        (400, "invalid_sequences".into()),
        "names a partition the request does not write"
    );
    assert_eq!(
        post(
            full("0=3"),
            serde_json::json!({"records": [{"value": "no key"}]})
        )
        .await,
        (400, "invalid_record".into())
    );
    let mut both = full("0=3");
    both.push(("idempotency-key", "k".into()));
    assert_eq!(
        post(both, body.clone()).await,
        (400, "invalid_request".into())
    );
    assert_eq!(
        post(full("0=7"), body.clone()).await,
        (409, "out_of_order_sequence".into())
    );
    let mut unknown = full("0=0");
    unknown[0].1 = "987654321".into();
    assert_eq!(
        post(unknown, body.clone()).await,
        (409, "unknown_producer".into())
    );
    assert_eq!(
        read_all(&c, "ps", 0).await.len(),
        4,
        "no refusal wrote anything"
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/producers", c.base()))
        .json(&serde_json::json!({"name": "has space"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);

    // Across a restart the sequences are still there (they live in the index).
    assert!(
        tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap()
            .success()
    );
    let agent = AgentProc::start(dir.path(), &args);
    let c = agent.client();
    let (again, replayed) = c.produce_sequenced("ps", batch(), s, &seq0).await.unwrap();
    assert!(replayed);
    assert_eq!(again.offsets, a.offsets);
    let (next, replayed) = c
        .produce_sequenced("ps", batch(), s, &BTreeMap::from([(0u32, 3i64)]))
        .await
        .unwrap();
    assert!(!replayed);
    assert_eq!(next.offsets[0].offset, 4);
    // Re-initialising the name fences the old epoch.
    let s1 = c.init_producer(Some("billing")).await.unwrap();
    assert_eq!((s1.producer_id, s1.epoch), (s.producer_id, 1));
    let e = c
        .produce_sequenced("ps", batch(), s, &BTreeMap::from([(0u32, 6i64)]))
        .await
        .unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(409), Some("producer_fenced")));
    assert_eq!(read_all(&c, "ps", 0).await.len(), 7);
}
