//! Consumer groups, queues and SSE against a real `floe serve` process on the embedded
//! default (local folder + SQLite). The same scenarios run across two agents on S3 +
//! PostgreSQL in `s3_multi_agent.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::scenarios;
use common::{AgentProc, raw, rec};
use floe_api::{ReceiveRequest, SettleRequest};
use floe_client::Client;
use futures::StreamExt;
use reqwest::Method;

fn agent(dir: &std::path::Path) -> AgentProc {
    AgentProc::start(dir, &["--linger-ms", "10", "--poll-interval-ms", "200"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_groups_each_get_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    scenarios::three_groups_each_get_everything(&[a.client()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_under_load_skips_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    scenarios::rebalance_under_load_skips_nothing(&[a.client()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_generation_commit_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    scenarios::stale_generation_commit_rejected(&[a.client()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_five_consumers_process_10k_records_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    scenarios::queue_competing_consumers_process_once(&[a.client()], 10_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_dead_consumer_records_are_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    scenarios::dead_consumer_records_redelivered(&[a.client()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_poison_record_reaches_dead_letter_topic() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    scenarios::poison_goes_to_dead_letter_topic(&[a.client()]).await;
}

/// Queue state lives in the index: records held when the agent is killed come back after a
/// restart (once their visibility timeout passes); acked ones never come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_state_survives_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("restart", 1).await.unwrap();
    let _ = scenarios::produce_values(&c, "restart", "r", 30).await;
    let req = |max: u64| ReceiveRequest {
        max_records: Some(max),
        wait_ms: Some(3_000),
        visibility_timeout_ms: Some(1_000),
        ..Default::default()
    };
    let first = c.receive("restart", "q", &req(20)).await.unwrap();
    assert_eq!(first.records.len(), 20);
    let _ = c
        .ack(
            "restart",
            "q",
            first.records[..10]
                .iter()
                .map(|r| r.receipt.clone())
                .collect(),
        )
        .await
        .unwrap();
    // kill -9: no graceful shutdown; the state must already be durable in the index.
    a.kill9();
    let a = agent(dir.path());
    let c = a.client();
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 20 {
        assert!(Instant::now() < deadline, "got only {got:?}");
        let r = c.receive("restart", "q", &req(100)).await.unwrap();
        let _ = c
            .ack(
                "restart",
                "q",
                r.records.iter().map(|r| r.receipt.clone()).collect(),
            )
            .await
            .ok();
        got.extend(
            r.records
                .into_iter()
                .map(|r| (r.record.offset, r.delivery_count)),
        );
    }
    got.sort();
    let want: Vec<(u64, u32)> = (10..20)
        .map(|o| (o, 2))
        .chain((20..30).map(|o| (o, 1)))
        .collect();
    assert_eq!(
        got, want,
        "unacked come back with delivery_count 2; acked never"
    );
}

/// Read SSE events until `n` records arrived; returns their (id, offset in data).
async fn sse_read(
    url: &str,
    last_event_id: Option<u64>,
    n: usize,
) -> Vec<(u64, serde_json::Value)> {
    let mut req = reqwest::Client::new().get(url);
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline.into(), body.next())
            .await
            .expect("SSE events in time")
            .unwrap()
            .unwrap();
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            let (mut id, mut data, mut kind) = (None, None, None);
            for line in event.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse::<u64>().unwrap());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data = Some(serde_json::from_str::<serde_json::Value>(v.trim()).unwrap());
                } else if let Some(v) = line.strip_prefix("event:") {
                    kind = Some(v.trim().to_string());
                }
            }
            if kind.as_deref() == Some("record") {
                out.push((id.unwrap(), data.unwrap()));
            }
        }
    }
    // Dropping the response closes the connection, like a client going away.
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_with_last_event_id_has_no_gap_and_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("tail", 1).await.unwrap();
    let produce = |c: Client, from: usize, n: usize| async move {
        let recs = (from..from + n).map(|i| rec(format!("e{i}"))).collect();
        let _ = c.produce("tail", recs).await.unwrap();
    };
    produce(c.clone(), 0, 100).await;
    let url = format!("{}/v1/topics/tail/partitions/0/stream?offset=0", a.url);
    let first = sse_read(&url, None, 40).await;
    let last = first.last().unwrap().0;
    assert_eq!(last, 39);
    // More records arrive while disconnected; then resume live and keep tailing.
    produce(c.clone(), 100, 100).await;
    let tailer = {
        let url = url.clone();
        tokio::spawn(async move { sse_read(&url, Some(last), 260 - 40).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(c.clone(), 200, 60).await;
    let second = tailer.await.unwrap();
    let all: Vec<_> = first.into_iter().chain(second).collect();
    for (i, (id, data)) in all.iter().enumerate() {
        assert_eq!(*id, i as u64, "no gap, no duplicate");
        assert_eq!(data["offset"], i as u64);
        assert_eq!(data["value"], format!("e{i}"));
    }
    assert_eq!(all.len(), 260);
    // Without offset or Last-Event-ID the stream starts at the end of the log.
    let url_end = format!("{}/v1/topics/tail/partitions/0/stream", a.url);
    let t = tokio::spawn(async move { sse_read(&url_end, None, 1).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    produce(c.clone(), 260, 1).await;
    assert_eq!(t.await.unwrap()[0].0, 260);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_endpoints_reject_bad_input_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("t", 2).await.unwrap();
    let _ = scenarios::produce_values(&c, "t", "x", 4).await;
    let u = &a.url;
    let json = Some("application/json");
    let long_reason = format!(
        r#"{{"receipts": ["0-0-1"], "reason": "{}"}}"#,
        "x".repeat(2000)
    );
    type Case<'a> = (Method, String, Option<&'a str>, &'a str, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            format!("{u}/v1/topics/t/groups/bad%20name/members"),
            json,
            "{}",
            400,
            "invalid_group_name",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/groups/g/members"),
            json,
            r#"{"session_timeout_ms": 5}"#,
            400,
            "invalid_session_timeout",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/groups/g/members"),
            json,
            r#"{"member_id": "a/b"}"#,
            400,
            "invalid_member_id",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/groups/g/members"),
            json,
            r#"{"bogus": 1}"#,
            400,
            "invalid_json",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/nope/groups/g/members"),
            json,
            "{}",
            404,
            "topic_not_found",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/groups/g/members/ghost/heartbeat"),
            None,
            "",
            409,
            "unknown_member",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/t/groups/g/members/ghost/records"),
            None,
            "",
            409,
            "unknown_member",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/t/groups/g/members/ghost/records?cursor=zz"),
            None,
            "",
            400,
            "invalid_cursor",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/t/groups/g/members/ghost/records?max_records=x"),
            None,
            "",
            400,
            "invalid_parameter",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/t/groups/none"),
            None,
            "",
            404,
            "group_not_found",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/groups/g/commit"),
            json,
            r#"{"member_id":"m","generation":1,"offsets":[{"partition":9,"offset":0}]}"#,
            400,
            "invalid_partition",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/groups/g/commit"),
            json,
            r#"{"member_id":"m","generation":1,"offsets":[{"partition":0,"offset":999}]}"#,
            400,
            "invalid_offset",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/receive"),
            json,
            r#"{"max_records": 0}"#,
            400,
            "invalid_parameter",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/receive"),
            json,
            r#"{"visibility_timeout_ms": 0}"#,
            400,
            "invalid_parameter",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/receive"),
            Some("text/plain"),
            "{}",
            415,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/ack"),
            json,
            r#"{"receipts": []}"#,
            400,
            "invalid_request",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/ack"),
            json,
            r#"{"receipts": ["garbage"]}"#,
            400,
            "invalid_receipt",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/ack"),
            json,
            r#"{"receipts": ["7-0-1"]}"#,
            400,
            "invalid_receipt",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/extend"),
            json,
            r#"{"receipts": ["0-0-1"]}"#,
            400,
            "invalid_parameter",
        ),
        (
            Method::POST,
            format!("{u}/v1/topics/t/queues/q/reject"),
            json,
            &long_reason,
            400,
            "invalid_request",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/t/partitions/0/stream?offset=99"),
            None,
            "",
            416,
            "offset_out_of_range",
        ),
        (
            Method::GET,
            format!("{u}/v1/topics/t/partitions/5/stream"),
            None,
            "",
            400,
            "invalid_partition",
        ),
    ];
    for (m, url, ct, body, status, code) in cases {
        let (s, v) = raw(m.clone(), &url, ct, body.as_bytes().to_vec()).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{m} {url}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Last-Event-ID must be an offset.
    let resp = reqwest::Client::new()
        .get(format!("{u}/v1/topics/t/partitions/0/stream"))
        .header("last-event-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    // A receipt that was never handed out does not settle anything.
    let s = c
        .settle(
            "t",
            "q",
            "ack",
            &SettleRequest {
                receipts: vec!["0-0-1".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((s.settled, s.failed.len()), (0, 1));
    // Nothing was consumed by the bad requests: the queue still hands out all 4 records.
    let r = c
        .receive(
            "t",
            "q",
            &ReceiveRequest {
                max_records: Some(100),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(r.records.len(), 4);
    assert!(c.describe_topic("t").await.is_ok(), "agent healthy");
}

/// `floe consume --group` and `floe queue receive/ack` through the real CLI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_group_consume_and_queue_receive_ack() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("cli", 2).await.unwrap();
    let _ = scenarios::produce_values(&c, "cli", "line", 30).await;
    let floe = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_floe"))
            .args(args)
            .env("FLOE_URL", &a.url)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = floe(&["consume", "cli", "--group", "g1"]);
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    let mut want: Vec<String> = (0..30).map(|i| format!("line-{i}")).collect();
    want.sort();
    assert_eq!(lines, want);
    // Committed: a second run of the same group prints nothing new.
    assert_eq!(floe(&["consume", "cli", "--group", "g1"]), "");
    let d = c.describe_group("cli", "g1").await.unwrap();
    assert_eq!(d.total_lag, 0);
    assert!(d.members.is_empty(), "the CLI left the group on exit");
    // Queue: receive 5 as JSON lines with receipts, ack them with `floe queue ack`.
    let out = floe(&["queue", "receive", "cli", "q", "-n", "5"]);
    let recs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 5);
    let mut args = vec!["queue", "ack", "cli", "q"];
    let receipts: Vec<String> = recs
        .iter()
        .map(|r| r["receipt"].as_str().unwrap().to_string())
        .collect();
    args.extend(receipts.iter().map(String::as_str));
    let out = floe(&args);
    assert!(out.contains("\"settled\": 5"), "{out}");
    let d: serde_json::Value =
        serde_json::from_str(&floe(&["queue", "describe", "cli", "q"])).unwrap();
    let acked: u64 = d["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start_offset"].as_u64().unwrap() + p["acked"].as_u64().unwrap())
        .sum();
    assert_eq!(acked, 5);
}

/// `auto_commit` members commit the previous fetch's positions when they fetch again with
/// its cursor (at-least-once: the last batch is not committed until the next fetch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_commit_commits_the_previous_fetch_on_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("auto", 1).await.unwrap();
    let _ = scenarios::produce_values(&c, "auto", "a", 10).await;
    let m = c
        .join_group(
            "auto",
            "g",
            &floe_api::JoinGroupRequest {
                auto_commit: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let opts = floe_client::FetchOptions {
        max_records: Some(4),
        ..Default::default()
    };
    let r1 = c
        .group_fetch("auto", "g", &m.member_id, None, opts)
        .await
        .unwrap();
    assert_eq!(r1.partitions[0].records.len(), 4);
    let d = c.describe_group("auto", "g").await.unwrap();
    assert_eq!(d.partitions[0].committed, None, "nothing committed yet");
    let r2 = c
        .group_fetch("auto", "g", &m.member_id, Some(&r1.cursor), opts)
        .await
        .unwrap();
    assert_eq!(
        r2.partitions[0].records[0].offset, 4,
        "continues after the cursor"
    );
    let d = c.describe_group("auto", "g").await.unwrap();
    assert_eq!(d.partitions[0].committed, Some(4));
    assert_eq!(d.total_lag, 6);
    // A cursor past the log end is refused before anything is auto-committed.
    let bad = format!("{}:0=999", r2.generation);
    let e = c
        .group_fetch("auto", "g", &m.member_id, Some(&bad), opts)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("invalid_cursor"));
    let d = c.describe_group("auto", "g").await.unwrap();
    assert_eq!(d.partitions[0].committed, Some(4));
    // A member without auto_commit never commits by fetching.
    let m2 = c
        .join_group("auto", "manual", &Default::default())
        .await
        .unwrap();
    let r = c
        .group_fetch("auto", "manual", &m2.member_id, None, opts)
        .await
        .unwrap();
    let _ = c
        .group_fetch("auto", "manual", &m2.member_id, Some(&r.cursor), opts)
        .await
        .unwrap();
    let d = c.describe_group("auto", "manual").await.unwrap();
    assert_eq!(d.partitions[0].committed, None);
    // reset=latest: a group without committed offsets starts at the end of the log.
    let m3 = c
        .join_group("auto", "late", &Default::default())
        .await
        .unwrap();
    let url = format!(
        "{}/v1/topics/auto/groups/late/members/{}/records?reset=latest",
        a.url, m3.member_id
    );
    let (status, v) = raw(Method::GET, &url, None, vec![]).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["partitions"][0]["records"].as_array().unwrap().len(), 0);
    assert_eq!(v["partitions"][0]["next_offset"], 10);
}

/// `extend` keeps held records invisible past their first timeout; `release` with a delay
/// holds a record back until the delay has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_extend_and_delayed_release() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("ext", 1).await.unwrap();
    let _ = scenarios::produce_values(&c, "ext", "e", 2).await;
    let recv = |vis: u64, wait: u64| ReceiveRequest {
        max_records: Some(10),
        visibility_timeout_ms: Some(vis),
        wait_ms: Some(wait),
        ..Default::default()
    };
    let got = c.receive("ext", "q", &recv(500, 0)).await.unwrap().records;
    assert_eq!(got.len(), 2);
    let (first, second) = (got[0].receipt.clone(), got[1].receipt.clone());
    let s = c
        .settle(
            "ext",
            "q",
            "extend",
            &SettleRequest {
                receipts: vec![first.clone()],
                visibility_timeout_ms: Some(10_000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.settled, 1);
    let released_at = Instant::now();
    let s = c
        .settle(
            "ext",
            "q",
            "release",
            &SettleRequest {
                receipts: vec![second],
                delay_ms: Some(1_500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(s.settled, 1);
    // After the first record's original 500 ms: still held (extended); the released one is
    // still delayed.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let again = c
        .receive("ext", "q", &recv(10_000, 5_000))
        .await
        .unwrap()
        .records;
    assert_eq!(again.len(), 1);
    assert_eq!(
        again[0].record.offset, 1,
        "only the released record comes back"
    );
    assert_eq!(again[0].delivery_count, 2);
    assert!(
        released_at.elapsed() >= Duration::from_millis(1_500),
        "not before its delay"
    );
    let s = c
        .ack("ext", "q", vec![first, again[0].receipt.clone()])
        .await
        .unwrap();
    assert_eq!(s.settled, 2, "{:?}", s.failed);
}

/// Topic config `queue.ordering=key`: competing consumers never hold two records of one key
/// at once, and each key's records are processed in offset order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_per_key_ordering() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let (s, v) = raw(
        Method::POST,
        &format!("{}/v1/topics", a.url),
        Some("application/json"),
        br#"{"name":"ordered","partitions":1,"config":{"queue.ordering":"key"}}"#.to_vec(),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let recs = (0..90)
        .map(|i| floe_api::ProduceRecord {
            key: Some(format!("k{}", i % 3)),
            ..rec(format!("{}:{}", i % 3, i / 3))
        })
        .collect();
    let _ = c.produce("ordered", recs).await.unwrap();
    // key → (held now?, last sequence number processed)
    let state: Arc<Mutex<HashMap<String, (bool, i64)>>> = Arc::default();
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (c, state, done) = (c.clone(), state.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while done.load(std::sync::atomic::Ordering::Relaxed) < 90 {
                assert!(Instant::now() < deadline, "not drained");
                let r = c
                    .receive(
                        "ordered",
                        "q",
                        &ReceiveRequest {
                            consumer: Some(format!("c{i}")),
                            max_records: Some(5),
                            wait_ms: Some(200),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                for m in &r.records {
                    let v = m.record.value.clone().unwrap();
                    let (key, seq) = v.split_once(':').unwrap();
                    let seq: i64 = seq.parse().unwrap();
                    {
                        let mut st = state.lock().unwrap();
                        let e = st.entry(key.to_string()).or_insert((false, -1));
                        assert!(!e.0, "two records of key {key} held at once");
                        assert_eq!(seq, e.1 + 1, "key {key} out of order");
                        *e = (true, seq);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                for m in &r.records {
                    let v = m.record.value.clone().unwrap();
                    let key = v.split_once(':').unwrap().0.to_string();
                    // Released before the ack is stored: the next record of the key can
                    // only be handed out after that.
                    state.lock().unwrap().get_mut(&key).unwrap().0 = false;
                    let s = c
                        .ack("ordered", "q", vec![m.receipt.clone()])
                        .await
                        .unwrap();
                    assert_eq!(s.settled, 1);
                    let _ = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = state.lock().unwrap();
    for k in 0..3 {
        assert_eq!(st[&k.to_string()].1, 29, "key {k} fully processed");
    }
}

/// serde reads a JSON array as a struct's fields in order, so `[["0-0-1"]]` once acked a
/// record. Every body documented as an object is refused otherwise, with nothing changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_object_bodies_are_refused_everywhere_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("t", 1).await.unwrap();
    let _ = scenarios::produce_values(&c, "t", "x", 4).await;
    let got = c
        .receive(
            "t",
            "q",
            &ReceiveRequest {
                max_records: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let receipt = got.records[0].receipt.clone();
    let join = c.join_group("t", "g", &Default::default()).await.unwrap();
    let member = join.member_id.clone();
    let u = &a.url;
    let queue_state = || async {
        let q = c.describe_queue("t", "q").await.unwrap();
        (
            q.partitions[0].in_flight,
            q.partitions[0].acked,
            q.partitions[0].next_offset,
        )
    };
    let group_state = || async {
        let g = c.describe_group("t", "g").await.unwrap();
        (g.members.len(), g.partitions[0].committed)
    };
    let (q0, g0) = (queue_state().await, group_state().await);
    assert_eq!(q0, (1, 0, 1));
    assert_eq!(g0, (1, None));

    let q = format!("{u}/v1/topics/t/queues/q");
    let g = format!("{u}/v1/topics/t/groups/g");
    // The findings of the issue, one by one.
    let findings = [
        (format!("{q}/ack"), format!(r#"[["{receipt}"]]"#)),
        (
            format!("{g}/commit"),
            format!(r#"["{member}", {}, [[0, 1]]]"#, join.generation),
        ),
        (format!("{q}/receive"), "[]".to_string()),
        (format!("{g}/members"), "[]".to_string()),
        (format!("{u}/v1/topics"), "[null, null]".to_string()),
        // Arrays of objects must hold objects.
        (
            format!("{g}/commit"),
            format!(
                r#"{{"member_id": "{member}", "generation": {}, "offsets": [[0, 1]]}}"#,
                join.generation
            ),
        ),
        (
            format!("{u}/v1/topics/t/records"),
            r#"{"records": [["k", "v"]]}"#.to_string(),
        ),
    ];
    let endpoints = [
        format!("{u}/v1/topics"),
        format!("{u}/v1/topics/t/records"),
        format!("{g}/members"),
        format!("{g}/commit"),
        format!("{q}/receive"),
        format!("{q}/ack"),
        format!("{q}/release"),
        format!("{q}/reject"),
        format!("{q}/extend"),
    ];
    let mut cases: Vec<(String, String)> = findings.to_vec();
    for e in &endpoints {
        for body in [
            "[]",
            "null",
            "\"x\"",
            "1",
            "true",
            "[null, null]",
            " \n[{}]",
        ] {
            cases.push((e.clone(), body.to_string()));
        }
    }
    for (url, body) in &cases {
        let (status, b) = raw(
            Method::POST,
            url,
            Some("application/json"),
            body.clone().into_bytes(),
        )
        .await;
        assert_eq!(status, 400, "{url} {body}: {b}");
        assert_eq!(b["error"]["code"], "invalid_json", "{url} {body}: {b}");
        assert!(
            b["error"]["message"]
                .as_str()
                .unwrap()
                .contains("JSON object"),
            "{url} {body}: {b}"
        );
    }
    assert_eq!(
        queue_state().await,
        q0,
        "no ack, release or receive happened"
    );
    assert_eq!(
        group_state().await,
        g0,
        "no member joined, nothing committed"
    );
    assert_eq!(
        c.describe_topic("t").await.unwrap().partitions[0].end_offset,
        4,
        "nothing produced"
    );
    assert_eq!(
        c.list_topics().await.unwrap().topics.len(),
        1,
        "no topic created"
    );
}

/// The value-encoding rule: `encoding=auto` (default) gives UTF-8 as `value` and other
/// bytes as `value_b64`; `encoding=base64` always gives `value_b64`/`key_b64`, on every read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_base64_returns_the_bytes_that_were_produced() {
    let dir = tempfile::tempdir().unwrap();
    let a = agent(dir.path());
    let c = a.client();
    let _ = c.create_topic("e", 1).await.unwrap();
    let u = &a.url;
    // "AAEC" = [0, 1, 2] (valid UTF-8, control characters); "/w==" = [255] (not UTF-8);
    // "aGk=" = "hi" (text, sent as base64).
    let (status, _) = raw(
        Method::POST,
        &format!("{u}/v1/topics/e/records"),
        Some("application/json"),
        br#"{"records":[{"value_b64":"/w==","key":"k"},{"value_b64":"aGk="},{"value":"plain"},{"value_b64":"AAEC"}]}"#
            .to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    let get = |q: &'static str| async move {
        raw(
            Method::GET,
            &format!("{u}/v1/topics/e/partitions/0/records?offset=0{q}"),
            None,
            vec![],
        )
        .await
    };
    let (_, auto) = get("").await;
    let r = &auto["records"];
    assert_eq!(
        r[0]["value_b64"], "/w==",
        "auto: bytes that are not UTF-8 as base64"
    );
    assert!(r[0].get("value").is_none());
    assert_eq!(r[0]["key"], "k");
    assert_eq!(r[1]["value"], "hi", "auto: UTF-8 comes back as text");
    assert_eq!(r[2]["value"], "plain");
    assert_eq!(
        r[3]["value"], "\u{0}\u{1}\u{2}",
        "auto: control characters are UTF-8 too"
    );
    let (_, b64) = get("&encoding=base64").await;
    let r = &b64["records"];
    assert_eq!(r[0]["value_b64"], "/w==");
    assert_eq!(r[3]["value_b64"], "AAEC");
    assert_eq!(r[0]["key_b64"], "aw==");
    assert_eq!(
        r[1]["value_b64"], "aGk=",
        "base64: exactly the bytes produced"
    );
    assert_eq!(r[2]["value_b64"], "cGxhaW4=");
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .all(|x| x.get("value").is_none())
    );
    let (status, bad) = get("&encoding=utf16").await;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (400, Some("invalid_parameter"))
    );

    // Queues and groups follow the same rule.
    let got = c
        .receive(
            "e",
            "q",
            &ReceiveRequest {
                max_records: Some(4),
                encoding: Some(floe_api::Encoding::Base64),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let vals: Vec<_> = got
        .records
        .iter()
        .map(|r| r.record.value_b64.clone().unwrap())
        .collect();
    assert_eq!(vals, vec!["/w==", "aGk=", "cGxhaW4=", "AAEC"]);
    let join = c.join_group("e", "g", &Default::default()).await.unwrap();
    let (_, gf) = raw(
        Method::GET,
        &format!(
            "{u}/v1/topics/e/groups/g/members/{}/records?encoding=base64",
            join.member_id
        ),
        None,
        vec![],
    )
    .await;
    assert_eq!(
        gf["partitions"][0]["records"][1]["value_b64"], "aGk=",
        "{gf}"
    );
}
