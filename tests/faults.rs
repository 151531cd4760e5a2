//! Fault injection: an object store that fails mid-load. Producers get 503 + Retry-After,
//! nothing is half-written, and the agent recovers by itself when the store returns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use floe_agent::store::FaultStore;
use floe_agent::{Agent, AgentConfig};
use floe_api::ProduceRecord;
use floe_client::{Client, FetchOptions};

fn rec(value: &str) -> ProduceRecord {
    ProduceRecord {
        value: Some(value.to_string()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_failure_gives_503_and_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
        .unwrap()
        .with_fsync(true);
    let fault = FaultStore::new(Arc::new(fs));
    let switch = fault.switch();
    let index = floe_index::open(&format!(
        "sqlite://{}",
        dir.path().join("index.db").display()
    ))
    .await
    .unwrap();
    let config = AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(5),
        ..AgentConfig::default()
    };
    let agent = Agent::start_with(config, Arc::new(fault), index)
        .await
        .unwrap();
    let url = format!("http://{}", agent.addr);
    let c = Client::new(&url).unwrap();
    let _ = c.create_topic("f", 1).await.unwrap();
    assert_eq!(
        c.produce("f", vec![rec("before")]).await.unwrap().offsets[0].offset,
        0
    );

    switch.store(true, Ordering::SeqCst);
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/topics/f/records"))
        .header("content-type", "application/json")
        .body(r#"{"records":[{"value":"during"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(
        resp.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable");
    let ready = reqwest::get(format!("{url}/readyz")).await.unwrap();
    assert_eq!(
        ready.status().as_u16(),
        503,
        "not ready while the bucket is down"
    );
    // The failed flush assigned no offsets.
    assert_eq!(
        c.describe_topic("f").await.unwrap().partitions[0].end_offset,
        1
    );

    switch.store(false, Ordering::SeqCst);
    let r = c.produce("f", vec![rec("after")]).await.unwrap();
    assert_eq!(
        r.offsets[0].offset, 1,
        "offsets stay dense across the outage"
    );
    let got = c.fetch("f", 0, 0, FetchOptions::default()).await.unwrap();
    let values: Vec<_> = got
        .records
        .iter()
        .map(|r| r.value.clone().unwrap())
        .collect();
    assert_eq!(values, vec!["before", "after"]);
    agent.shutdown().await;
}

/// A local-folder bucket in `dir`, fsynced like the agent's default.
fn local_store(dir: &std::path::Path) -> Arc<dyn object_store::ObjectStore> {
    Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir)
            .unwrap()
            .with_fsync(true),
    )
}

/// The flush segments in a bucket.
async fn segment_objects(
    store: &Arc<dyn object_store::ObjectStore>,
) -> Vec<object_store::path::Path> {
    use futures::StreamExt;
    store
        .list(Some(&object_store::path::Path::from("segments")))
        .filter_map(|m| async move { m.ok().map(|m| m.location) })
        .collect::<Vec<_>>()
        .await
}

/// A SQLite index in `dir`.
async fn sqlite_index(dir: &std::path::Path) -> Arc<dyn floe_index::Index> {
    floe_index::open(&format!("sqlite://{}", dir.join("index.db").display()))
        .await
        .unwrap()
}

/// An agent on a local folder + SQLite, behind fault layers, with short deadlines, and the
/// switches of its faults.
struct Faulty {
    agent: Agent,
    url: String,
    client: Client,
    store_hang: Arc<std::sync::atomic::AtomicBool>,
    index_hang: Arc<std::sync::atomic::AtomicBool>,
    lose_answers: Arc<std::sync::atomic::AtomicU32>,
    _dir: tempfile::TempDir,
}

async fn faulty_agent() -> Faulty {
    let dir = tempfile::tempdir().unwrap();
    let fs = object_store::local::LocalFileSystem::new_with_prefix(dir.path())
        .unwrap()
        .with_fsync(true);
    let store = FaultStore::new(Arc::new(fs));
    let index = floe_index::open(&format!(
        "sqlite://{}",
        dir.path().join("index.db").display()
    ))
    .await
    .unwrap();
    let index = floe_agent::faults::FaultIndex::new(index);
    let (store_hang, index_hang) = (store.hang_switch(), index.hang_switch());
    let lose_answers = index.lose_commit_answers();
    let config = AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(5),
        produce_timeout: Duration::from_secs(2),
        index_timeout: Duration::from_secs(1),
        ready_timeout: Duration::from_millis(500),
        dead_letter_retry: Duration::from_millis(200),
        ..AgentConfig::default()
    };
    let agent = Agent::start_with(config, Arc::new(store), Arc::new(index))
        .await
        .unwrap();
    let url = format!("http://{}", agent.addr);
    let client = Client::new(&url).unwrap();
    Faulty {
        agent,
        url,
        client,
        store_hang,
        index_hang,
        lose_answers,
        _dir: dir,
    }
}

/// [`faulty_agent`] with topic `h` holding the record "before" at offset 0.
async fn faulty_agent_with_a_record() -> Faulty {
    let f = faulty_agent().await;
    let _ = f.client.create_topic("h", 1).await.unwrap();
    assert_eq!(produce_raw(&f.url, "before").await.0, 200);
    f
}

/// POST one record; (status, error code, seconds it took).
async fn produce_raw(url: &str, value: &str) -> (u16, String, f64) {
    let started = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/topics/h/records"))
        .header("content-type", "application/json")
        .body(format!(r#"{{"records":[{{"value":"{value}"}}]}}"#))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code, started.elapsed().as_secs_f64())
}

/// GET /readyz; (status, error code, message, seconds).
async fn ready(url: &str) -> (u16, String, String, f64) {
    let started = std::time::Instant::now();
    let resp = reqwest::Client::new()
        .get(format!("{url}/readyz"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
        body["error"]["message"].as_str().unwrap_or("").to_string(),
        started.elapsed().as_secs_f64(),
    )
}

async fn values(c: &Client) -> Vec<String> {
    c.fetch("h", 0, 0, FetchOptions::default())
        .await
        .unwrap()
        .records
        .iter()
        .map(|r| r.value.clone().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_store_answers_within_the_deadline_and_loses_nothing() {
    let f = faulty_agent_with_a_record().await;
    let (url, c, store_hang) = (&f.url, &f.client, &f.store_hang);

    store_hang.store(true, Ordering::SeqCst);
    let (status, code, secs) = produce_raw(url, "during").await;
    assert_eq!((status, code.as_str()), (503, "deadline_exceeded"));
    // The produce deadline is 2 s (plus the 1 s answer grace at most); the store's own
    // per-call timeout (10 s) must not be what ends it.
    assert!(secs < 4.0, "produce answered after {secs:.1} s");
    let (status, code, message, secs) = ready(url).await;
    assert_eq!((status, code.as_str()), (503, "store_unavailable"));
    assert!(
        message.contains("bucket") && message.contains("timed out"),
        "{message}"
    );
    assert!(secs < 2.0, "/readyz answered after {secs:.1} s");

    store_hang.store(false, Ordering::SeqCst);
    assert_eq!(ready(url).await.0, 200);
    let r = c.produce("h", vec![rec("after")]).await.unwrap();
    assert_eq!(
        r.offsets[0].offset, 1,
        "the hung produce assigned no offset"
    );
    assert_eq!(values(c).await, vec!["before", "after"]);
    f.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_index_answers_within_the_deadline_and_commits_nothing_late() {
    let f = faulty_agent_with_a_record().await;
    let (url, c, index_hang) = (&f.url, &f.client, &f.index_hang);

    index_hang.store(true, Ordering::SeqCst);
    let (status, code, secs) = produce_raw(url, "during").await;
    assert_eq!(status, 503, "{code}");
    assert!(
        [
            "deadline_exceeded",
            "commit_outcome_unknown",
            "index_unavailable"
        ]
        .contains(&code.as_str()),
        "{code}"
    );
    assert!(secs < 4.0, "produce answered after {secs:.1} s");
    let (status, code, message, secs) = ready(url).await;
    assert_eq!((status, code.as_str()), (503, "index_unavailable"));
    assert!(message.contains("index"), "{message}");
    assert!(secs < 2.0, "/readyz answered after {secs:.1} s");

    index_hang.store(false, Ordering::SeqCst);
    // Let anything that could still land, land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c.produce("h", vec![rec("after")]).await.unwrap();
    assert_eq!(r.offsets[0].offset, 1, "the abandoned commit never landed");
    assert_eq!(values(c).await, vec!["before", "after"]);
    f.agent.shutdown().await;
}

/// The dead-letter write commits, but its answer is lost. Before the index unit of work,
/// the record was produced to the DLQ first and marked done after, so the retry wrote it a
/// second time. Now both are one commit: the retry finds it done and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_is_written_once_when_the_commit_answer_is_lost() {
    let f = faulty_agent().await;
    let (c, lose_answers) = (&f.client, &f.lose_answers);
    let _ = c.create_topic("j", 1).await.unwrap();
    let _ = c.produce("j", vec![rec("poison")]).await.unwrap();
    let got = c
        .receive(
            "j",
            "w",
            &floe_api::ReceiveRequest {
                max_records: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let receipt = got.records[0].receipt.clone();

    lose_answers.store(1, Ordering::SeqCst);
    let settled = c
        .settle(
            "j",
            "w",
            "reject",
            &floe_api::SettleRequest {
                receipts: vec![receipt],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(settled.settled, 1);
    assert_eq!(lose_answers.load(Ordering::SeqCst), 0, "the fault fired");
    // Past `dead_letter_retry`, receives take over the pending dead letter (if any).
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let r = c
            .receive("j", "w", &floe_api::ReceiveRequest::default())
            .await
            .unwrap();
        assert!(r.records.is_empty());
    }
    let dlq = c
        .fetch("j.dlq", 0, 0, FetchOptions::default())
        .await
        .unwrap();
    let values: Vec<_> = dlq
        .records
        .iter()
        .map(|r| r.value.clone().unwrap())
        .collect();
    assert_eq!(values, vec!["poison"], "dead-lettered exactly once");
    assert_eq!(dlq.records[0].headers["floe.dlq.reason"], "rejected");
    let q = c.describe_queue("j", "w").await.unwrap();
    assert_eq!(
        (q.partitions[0].dead_lettering, q.partitions[0].backlog),
        (0, 0),
        "marked done in the same commit"
    );
    f.agent.shutdown().await;
}

/// The produce commit lands but its answer is lost (the producer gets a 503). Without a
/// key the producer's retry writes the records twice; with an `Idempotency-Key` the retry
/// gets the original offsets back and the log holds one copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_makes_a_retry_after_a_lost_answer_write_nothing() {
    let f = faulty_agent().await;
    let (c, lose_answers) = (&f.client, &f.lose_answers);
    let _ = c.create_topic("idem", 1).await.unwrap();
    lose_answers.store(1, Ordering::SeqCst);
    let first = c
        .produce_with_key("idem", vec![rec("once")], "order-1")
        .await;
    assert!(first.is_err(), "the answer was lost: {first:?}");
    assert_eq!(lose_answers.load(Ordering::SeqCst), 0, "the fault fired");
    let (retry, replayed) = c
        .produce_with_key("idem", vec![rec("once")], "order-1")
        .await
        .unwrap();
    assert!(
        replayed,
        "the retry is answered from the committed first attempt"
    );
    assert_eq!(retry.offsets.len(), 1);
    assert_eq!(retry.offsets[0].offset, 0);
    // The same loss without a key: the retry writes a second copy (what the key prevents).
    lose_answers.store(1, Ordering::SeqCst);
    assert!(c.produce("idem", vec![rec("twice")]).await.is_err());
    let _ = c.produce("idem", vec![rec("twice")]).await.unwrap();
    let got = c
        .fetch("idem", 0, 0, FetchOptions::default())
        .await
        .unwrap();
    let values: Vec<_> = got.records.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(values, vec!["once", "twice", "twice"]);
}

/// The lost-ack case with a producer session (RFC 0003 part 2): the commit lands, the
/// answer is lost twice, and `IdempotentProducer` retries the same request with the same
/// sequences; the retry gets the offsets first assigned and the log holds every record
/// once, in order, also across the requests that follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_session_retry_after_a_lost_answer_writes_nothing() {
    let f = faulty_agent().await;
    let (c, lose_answers) = (&f.client, &f.lose_answers);
    let _ = c.create_topic("seq", 2).await.unwrap();
    let mut p = floe_client::IdempotentProducer::new(c.clone(), Some("orders-service"));
    // "a" records to partition 0, "b" records to partition 1.
    let keyed = |k: &str, v: &str| ProduceRecord {
        value: Some(v.into()),
        partition: Some(i64::from(k != "a")),
        ..Default::default()
    };
    let first = p
        .send("seq", vec![keyed("a", "a0"), keyed("b", "b0")])
        .await
        .unwrap();
    lose_answers.store(2, Ordering::SeqCst);
    let second = p
        .send(
            "seq",
            vec![keyed("a", "a1"), keyed("b", "b1"), keyed("a", "a2")],
        )
        .await
        .unwrap();
    assert_eq!(lose_answers.load(Ordering::SeqCst), 0, "both faults fired");
    let third = p.send("seq", vec![keyed("a", "a3")]).await.unwrap();
    // Offsets continue densely from the first commit of the second request.
    assert_eq!(second.offsets[0].partition, 0);
    assert_eq!(second.offsets[1].partition, 1);
    assert_eq!(second.offsets[1].offset, first.offsets[1].offset + 1);
    assert_eq!(second.offsets[0].offset, first.offsets[0].offset + 1);
    assert_eq!(second.offsets[2].offset, first.offsets[0].offset + 2);
    assert_eq!(third.offsets[0].offset, first.offsets[0].offset + 3);
    let mut all = Vec::new();
    for part in 0..2 {
        let got = c
            .fetch("seq", part, 0, FetchOptions::default())
            .await
            .unwrap();
        all.extend(got.records.iter().filter_map(|r| r.value.clone()));
    }
    all.sort();
    assert_eq!(all, vec!["a0", "a1", "a2", "a3", "b0", "b1"], "each once");
    // A zombie (the same name initialised again elsewhere) is fenced.
    let mut zombie_killer = floe_client::IdempotentProducer::new(c.clone(), Some("orders-service"));
    let _ = zombie_killer
        .send("seq", vec![keyed("a", "new")])
        .await
        .unwrap();
    let e = p.send("seq", vec![keyed("a", "zombie")]).await.unwrap_err();
    assert_eq!(e.code(), Some("producer_fenced"), "{e}");
}

/// The deletion boundary (RFC 0004). A commit stalls (its index call hangs) while the
/// sweeper, on an agent whose clock is ahead of the index's, finds the segment old and
/// unreferenced and deletes it. The index's own deadline check cannot catch this (its
/// clock says the deadline has not passed); the boundary does: the sweeper advanced it
/// before deleting, so the late commit is refused and nobody is acked for a deleted object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_stalled_past_the_deletion_boundary_is_refused_not_acked() {
    use floe_core::clock::{Clock, ManualClock, SystemClock};
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let agent_clock = ManualClock::new(SystemClock.now_ms());
    // The index's clock lags: it never sees the produce deadline pass.
    let index_clock = ManualClock::new(SystemClock.now_ms());
    let inner = floe_index::open_with_clock(
        &format!("sqlite://{}", dir.path().join("index.db").display()),
        Arc::new(index_clock),
    )
    .await
    .unwrap();
    let index = floe_agent::faults::FaultIndex::new(inner.clone());
    let hang = index.hang_switch();
    let config = AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(5),
        produce_timeout: Duration::from_secs(30),
        index_timeout: Duration::from_secs(30),
        ..AgentConfig::default()
    };
    let grace = config.orphan_grace;
    let agent = Agent::start_with_clock(
        config,
        store.clone(),
        Arc::new(index),
        Arc::new(agent_clock.clone()),
    )
    .await
    .unwrap();
    let c = Client::new(&format!("http://{}", agent.addr)).unwrap();
    let _ = c.create_topic("b", 1).await.unwrap();
    let _ = c.produce("b", vec![rec("before")]).await.unwrap();
    let segments = || segment_objects(&store);
    assert_eq!(segments().await.len(), 1);
    // The next commit hangs in the index after its segment is written.
    hang.store(true, Ordering::SeqCst);
    let stalled = {
        let c = c.clone();
        tokio::spawn(async move { c.produce("b", vec![rec("stalled")]).await })
    };
    let t0 = std::time::Instant::now();
    while segments().await.len() < 2 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "segment not written"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the grace on the agent's clock, a sweep (on the index directly: the agent's
    // calls are the ones hanging) advances the boundary and deletes the orphan.
    agent_clock.advance_ms(i64::try_from((grace + Duration::from_secs(60)).as_millis()).unwrap());
    let deleted =
        floe_broker::sweeper::sweep_once(&store, inner.as_ref(), grace, agent_clock.now_ms(), true)
            .await
            .unwrap();
    assert_eq!(deleted, 1, "the uncommitted segment was swept");
    hang.store(false, Ordering::SeqCst);
    let e = stalled.await.unwrap().unwrap_err();
    assert_eq!(e.code(), Some("segment_expired"), "{e}");
    // Nothing acked is missing: the log is exactly what was acked, and readable.
    let got = c.fetch("b", 0, 0, FetchOptions::default()).await.unwrap();
    let values: Vec<_> = got.records.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(values, vec!["before"]);
    assert_eq!(got.end_offset, 1);
    agent.shutdown().await;
}

/// One produce request is atomic across its partitions (RFC 0005's first increment): its
/// records go into one segment and one index transaction, so a failed commit leaves none
/// of them in any partition and a committed one (even with its answer lost) leaves all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_atomic_across_partitions() {
    let f = faulty_agent().await;
    let c = &f.client;
    let _ = c.create_topic("atomic", 2).await.unwrap();
    let placed = |p: i64, v: &str| ProduceRecord {
        value: Some(v.into()),
        partition: Some(p),
        ..Default::default()
    };
    let _ = c
        .produce(
            "atomic",
            vec![placed(0, "a0"), placed(1, "a1"), placed(0, "a2")],
        )
        .await
        .unwrap();
    // The commit hangs past the produce deadline: 503, and neither partition has "b".
    f.index_hang.store(true, Ordering::SeqCst);
    let e = c
        .produce("atomic", vec![placed(0, "b0"), placed(1, "b1")])
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(503), "{e}");
    f.index_hang.store(false, Ordering::SeqCst);
    // The commit lands but its answer is lost: both partitions have "c".
    f.lose_answers.store(1, Ordering::SeqCst);
    assert!(
        c.produce("atomic", vec![placed(0, "c0"), placed(1, "c1")])
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen = Vec::new();
    for p in 0..2 {
        let got = c
            .fetch("atomic", p, 0, FetchOptions::default())
            .await
            .unwrap();
        seen.push(
            got.records
                .iter()
                .filter_map(|r| r.value.clone())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(seen, vec![vec!["a0", "a2", "c0"], vec!["a1", "c1"]]);
}

/// A reader that looked the index up just before compaction swapped the entries and the
/// sweeper deleted their objects (RFC 0004) finds the objects gone: it plans again from the
/// index and answers the same records — no error, no gap. (Deterministic: the fault index
/// hands the reader the pre-compaction snapshot.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_planned_before_compaction_replans_when_its_objects_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let inner = sqlite_index(dir.path()).await;
    let index = floe_agent::faults::FaultIndex::new(inner.clone());
    let stale = index.stale_runs();
    let config = AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(5),
        // No read cache: reads go to the bucket.
        cache_bytes: 8,
        commit_deadline: Duration::from_millis(500),
        orphan_grace: Duration::from_millis(1000),
        sweep_interval: Duration::from_millis(200),
        compaction: floe_agent::CompactionConfig {
            interval: Duration::from_millis(200),
            min_age: Duration::ZERO,
            max_wait: Duration::ZERO,
            min_entries: 3,
            ..floe_agent::CompactionConfig::default()
        },
        ..AgentConfig::default()
    };
    let agent = Agent::start_with(config, store.clone(), Arc::new(index))
        .await
        .unwrap();
    let c = Client::new(&format!("http://{}", agent.addr)).unwrap();
    let _ = c.create_topic("r", 1).await.unwrap();
    let t = inner.get_topic("r").await.unwrap().unwrap();
    // Two entries: with min_entries 3 the compactor leaves them alone, so the snapshot
    // below is taken while every record is still in its flush segment.
    let _ = c
        .produce("r", (0..5).map(|i| rec(&format!("v{i}"))).collect())
        .await
        .unwrap();
    let _ = c.produce("r", vec![rec("v5")]).await.unwrap();
    let snapshot = inner.runs_from(t.id, 0, 0, 100).await.unwrap();
    assert_eq!(snapshot.len(), 2);
    assert!(
        snapshot
            .iter()
            .all(|r| r.segment_key.starts_with("segments/"))
    );
    // The third entry lets the compactor rewrite all three.
    let _ = c.produce("r", vec![rec("v6")]).await.unwrap();
    use object_store::ObjectStoreExt as _;
    let snapshot_keys: Vec<String> = snapshot.iter().map(|r| r.segment_key.clone()).collect();
    // Wait until the entries are swapped and the old segments deleted.
    let t0 = std::time::Instant::now();
    loop {
        let mut gone = true;
        for k in &snapshot_keys {
            gone &= store
                .head(&object_store::path::Path::from(k.as_str()))
                .await
                .is_err();
        }
        if gone {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "segments were not compacted and swept"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    *stale.lock().unwrap() = Some(snapshot);
    let got = c.fetch("r", 0, 0, FetchOptions::default()).await.unwrap();
    let values: Vec<_> = got
        .records
        .iter()
        .map(|r| (r.offset, r.value.clone().unwrap()))
        .collect();
    assert_eq!(
        values,
        (0..7u64).map(|i| (i, format!("v{i}"))).collect::<Vec<_>>()
    );
    assert!(stale.lock().unwrap().is_none(), "the snapshot was used");
    agent.shutdown().await;
}

/// Group commit pipelines (issue #9): a flush that has written its segment and waits for
/// its index commit does not hold the next flush back — that one encodes and writes while
/// the first commits (the linger here is a minute, so only the policy can start it) — and
/// the commits still land in flush order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_writes_the_next_segment_while_the_previous_one_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = local_store(dir.path());
    let inner = sqlite_index(dir.path()).await;
    let index = floe_agent::faults::FaultIndex::new(inner);
    let hang = index.hang_switch();
    let config = AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_secs(60),
        produce_timeout: Duration::from_secs(30),
        index_timeout: Duration::from_secs(30),
        ..AgentConfig::default()
    };
    let agent = Agent::start_with(config, store.clone(), Arc::new(index))
        .await
        .unwrap();
    let c = Client::new(&format!("http://{}", agent.addr)).unwrap();
    let _ = c.create_topic("p", 1).await.unwrap();
    let _ = c.produce("p", vec![rec("a")]).await.unwrap();
    let segments = || async { segment_objects(&store).await.len() };
    let wait_for = |n: usize, what: &'static str| async move {
        let t0 = std::time::Instant::now();
        while segments().await < n {
            assert!(t0.elapsed() < Duration::from_secs(10), "{what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    hang.store(true, Ordering::SeqCst);
    let produce = |v: &'static str| {
        let c = c.clone();
        tokio::spawn(async move { c.produce("p", vec![rec(v)]).await })
    };
    let b = produce("b");
    wait_for(2, "b's segment not written").await;
    let c2 = produce("c");
    wait_for(3, "c's segment not written while b's commit waits").await;
    assert!(
        !b.is_finished() && !c2.is_finished(),
        "nothing acked before its commit"
    );
    hang.store(false, Ordering::SeqCst);
    assert_eq!(b.await.unwrap().unwrap().offsets[0].offset, 1);
    assert_eq!(
        c2.await.unwrap().unwrap().offsets[0].offset,
        2,
        "commits in flush order"
    );
    let got = c.fetch("p", 0, 0, FetchOptions::default()).await.unwrap();
    let values: Vec<_> = got.records.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(values, vec!["a", "b", "c"]);
    agent.shutdown().await;
}
