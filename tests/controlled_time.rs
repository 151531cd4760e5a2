//! The engine with a controlled clock: group session expiry, queue visibility timeouts,
//! dead-lettering after max deliveries and the orphan sweeper's grace are decided by the
//! agent's injected `Clock`, so these tests move time instead of sleeping through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use floe_agent::{Agent, AgentConfig};
use floe_api::{JoinGroupRequest, ProduceRecord, ReceiveRequest, SettleRequest};
use floe_client::{Client, FetchOptions};
use floe_core::clock::{Clock, ManualClock, SystemClock};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

struct Harness {
    agent: Agent,
    client: Client,
    clock: ManualClock,
    store: Arc<dyn ObjectStore>,
    _dir: tempfile::TempDir,
}

async fn harness(config: AgentConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir.path())
            .unwrap()
            .with_fsync(true),
    );
    // Start at the real time: object modification times come from the filesystem.
    let clock = ManualClock::new(SystemClock.now_ms());
    let index = floe_index::open_with_clock(
        &format!("sqlite://{}", dir.path().join("index.db").display()),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let config = AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(2),
        ..config
    };
    let agent = Agent::start_with_clock(config, store.clone(), index, Arc::new(clock.clone()))
        .await
        .unwrap();
    let client = Client::new(&format!("http://{}", agent.addr)).unwrap();
    Harness {
        agent,
        client,
        clock,
        store,
        _dir: dir,
    }
}

fn rec(v: &str) -> ProduceRecord {
    ProduceRecord {
        value: Some(v.into()),
        ..Default::default()
    }
}

fn receive_one() -> ReceiveRequest {
    ReceiveRequest {
        max_records: Some(1),
        visibility_timeout_ms: Some(30_000),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_expires_after_its_session_timeout_of_clock_time() {
    let h = harness(AgentConfig::default()).await;
    let c = &h.client;
    let _ = c.create_topic("t", 2).await.unwrap();
    let join = |_| JoinGroupRequest {
        session_timeout_ms: Some(10_000),
        ..Default::default()
    };
    let a = c.join_group("t", "g", &join(())).await.unwrap();
    let b = c.join_group("t", "g", &join(())).await.unwrap();
    let gen_both = c.describe_group("t", "g").await.unwrap().generation;
    assert_eq!(c.describe_group("t", "g").await.unwrap().members.len(), 2);

    h.clock.advance_ms(6_000);
    let _ = c.heartbeat("t", "g", &b.member_id).await.unwrap();
    // 9.999 s after A was last seen: still a member.
    h.clock.advance_ms(3_999);
    assert_eq!(c.describe_group("t", "g").await.unwrap().members.len(), 2);
    // 12 s: A is gone, B (seen 6 s ago) stays and owns every partition.
    h.clock.advance_ms(2_001);
    let g = c.describe_group("t", "g").await.unwrap();
    let members: Vec<_> = g.members.iter().map(|m| m.member_id.clone()).collect();
    assert_eq!(members, vec![b.member_id.clone()]);
    assert!(
        g.generation > gen_both,
        "removing a member bumps the generation"
    );
    assert_eq!(g.members[0].partitions, vec![0, 1]);
    let err = c.heartbeat("t", "g", &a.member_id).await.unwrap_err();
    assert_eq!(err.code(), Some("unknown_member"));
    h.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_record_comes_back_after_its_visibility_timeout_of_clock_time() {
    let h = harness(AgentConfig::default()).await;
    let c = &h.client;
    let _ = c.create_topic("q", 1).await.unwrap();
    let _ = c.produce("q", vec![rec("job")]).await.unwrap();
    let first = c.receive("q", "w", &receive_one()).await.unwrap();
    assert_eq!(first.records[0].delivery_count, 1);
    h.clock.advance_ms(29_999);
    assert!(
        c.receive("q", "w", &receive_one())
            .await
            .unwrap()
            .records
            .is_empty(),
        "invisible until the timeout"
    );
    h.clock.advance_ms(2);
    let again = c.receive("q", "w", &receive_one()).await.unwrap();
    assert_eq!(again.records.len(), 1);
    assert_eq!(again.records[0].delivery_count, 2);
    assert_eq!(again.records[0].record.offset, 0);
    let stale = c
        .settle(
            "q",
            "w",
            "ack",
            &SettleRequest {
                receipts: vec![first.records[0].receipt.clone()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(stale.settled, 0);
    assert_eq!(stale.failed[0].code, "stale_receipt");
    h.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_is_dead_lettered_after_max_deliveries_of_clock_time() {
    let h = harness(AgentConfig {
        max_deliveries: 2,
        ..AgentConfig::default()
    })
    .await;
    let c = &h.client;
    let _ = c.create_topic("d", 1).await.unwrap();
    let _ = c.produce("d", vec![rec("poison")]).await.unwrap();
    for delivery in 1..=2 {
        let r = c.receive("d", "w", &receive_one()).await.unwrap();
        assert_eq!(r.records[0].delivery_count, delivery);
        h.clock.advance_ms(30_001);
    }
    // The second delivery timed out too: the next receive dead-letters instead of
    // delivering a third time.
    assert!(
        c.receive("d", "w", &receive_one())
            .await
            .unwrap()
            .records
            .is_empty()
    );
    let dlq = c
        .fetch("d.dlq", 0, 0, FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(dlq.records.len(), 1);
    let h0 = &dlq.records[0].headers;
    assert_eq!(h0["floe.dlq.reason"], "max_deliveries");
    assert_eq!(h0["floe.dlq.delivery_count"], "2");
    assert_eq!(
        dlq.records[0].timestamp_ms,
        h.clock.now_ms(),
        "stamped by the clock"
    );
    let q = c.describe_queue("d", "w").await.unwrap();
    assert_eq!(
        (q.partitions[0].backlog, q.partitions[0].start_offset),
        (0, 1)
    );
    h.agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweeper_deletes_an_orphan_only_after_its_grace_of_clock_time() {
    let h = harness(AgentConfig {
        sweep_interval: Duration::from_millis(50),
        orphan_grace: Duration::from_secs(600),
        commit_deadline: Duration::from_secs(30),
        ..AgentConfig::default()
    })
    .await;
    let c = &h.client;
    let _ = c.create_topic("s", 1).await.unwrap();
    let _ = c.produce("s", vec![rec("kept")]).await.unwrap();
    let orphan = object_store::path::Path::from("segments/orphan-test.parquet");
    let _ = h
        .store
        .put(&orphan, PutPayload::from_static(b"not committed"))
        .await
        .unwrap();
    let count = || async {
        h.client
            .metric("floe_orphan_segments_deleted_total")
            .await
            .unwrap_or(0.0)
    };
    // Several sweeps run (50 ms apart) while the orphan is younger than its grace.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(h.store.head(&orphan).await.is_ok(), "young orphan kept");
    assert_eq!(count().await, 0.0);

    h.clock.advance_ms(601_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.store.head(&orphan).await.is_ok() {
        assert!(std::time::Instant::now() < deadline, "orphan not swept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    while count().await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "sweep not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count().await, 1.0, "only the orphan");
    let got = c.fetch("s", 0, 0, FetchOptions::default()).await.unwrap();
    assert_eq!(
        got.records[0].value.as_deref(),
        Some("kept"),
        "committed segment kept"
    );
    h.agent.shutdown().await;
}

/// Committed offsets are index rows (RFC 0001): a commit does not rewrite the group's state
/// blob, and offsets that an older agent kept inside the blob still count where no row
/// exists yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_offsets_are_rows_and_legacy_blob_offsets_still_count() {
    let h = harness(AgentConfig::default()).await;
    let c = &h.client;
    let _ = c.create_topic("t", 2).await.unwrap();
    let recs: Vec<ProduceRecord> = (0..10)
        .map(|i| ProduceRecord {
            partition: Some(i % 2),
            ..rec(&format!("r{i}"))
        })
        .collect();
    let _ = c.produce("t", recs).await.unwrap();
    let a = c
        .join_group("t", "g", &JoinGroupRequest::default())
        .await
        .unwrap();
    let index = &h.agent.broker.index;
    let topic = index.get_topic("t").await.unwrap().unwrap();
    let key = floe_index::StateKey {
        kind: floe_index::StateKind::Group,
        topic_id: topic.id,
        group: "g".into(),
        partition: 0,
    };
    let before = index.load_state(&key).await.unwrap().unwrap();
    c.commit("t", "g", &a.member_id, a.generation, &[(0, 3)])
        .await
        .unwrap();
    let after = index.load_state(&key).await.unwrap().unwrap();
    assert_eq!(
        after.version, before.version,
        "a commit does not rewrite the group blob"
    );
    assert_eq!(
        index.group_offsets(topic.id, "g").await.unwrap(),
        std::collections::BTreeMap::from([(0, 3)])
    );
    // An older agent's blob: offsets inside it (partition 1 at 4), no row for partition 1.
    let mut g: floe_core::group::GroupState = floe_core::stored::decode(&after.data).unwrap();
    let _ = g.offsets.insert(1, 4);
    let _ = g.offsets.insert(0, 1); // the row (3) wins over the blob for partition 0
    assert!(
        index
            .store_state(
                &key,
                Some(after.version),
                floe_core::stored::encode(&g).unwrap()
            )
            .await
            .unwrap()
    );
    let d = c.describe_group("t", "g").await.unwrap();
    let committed: Vec<_> = d
        .partitions
        .iter()
        .map(|p| (p.partition, p.committed))
        .collect();
    assert_eq!(committed, vec![(0, Some(3)), (1, Some(4))]);
    let f = c
        .group_fetch("t", "g", &a.member_id, None, FetchOptions::default())
        .await
        .unwrap();
    let firsts: Vec<_> = f
        .partitions
        .iter()
        .map(|p| (p.partition, p.records.first().map(|r| r.offset)))
        .collect();
    assert_eq!(firsts, vec![(0, Some(3)), (1, Some(4))]);
}

/// Retention by record time (RFC 0004): once records are older than the topic's
/// `retention_ms` on the engine's clock, the sweeper drops them (whole runs), the
/// partition's start offset advances, a fetch below it is 416, and consumer groups and
/// queues positioned below it move on to what is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_drops_old_records_and_consumers_move_on() {
    let h = harness(AgentConfig {
        sweep_interval: Duration::from_millis(50),
        ..AgentConfig::default()
    })
    .await;
    let c = &h.client;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/topics", c.base()))
        .json(&serde_json::json!({"name": "r", "partitions": 1, "retention_ms": 60_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    let _ = c
        .produce("r", vec![rec("old-1"), rec("old-2")])
        .await
        .unwrap();
    // A group member that committed before retention, at offset 1.
    let a = c
        .join_group("r", "g", &JoinGroupRequest::default())
        .await
        .unwrap();
    c.commit("r", "g", &a.member_id, a.generation, &[(0, 1)])
        .await
        .unwrap();
    h.clock.advance_ms(120_000);
    let _ = c.produce("r", vec![rec("new")]).await.unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let d = c.describe_topic("r").await.unwrap();
        if d.partitions[0].start_offset == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "retention did not run: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = c
        .fetch("r", 0, 0, FetchOptions::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("offset_out_of_range"), "{e}");
    let got = c.fetch("r", 0, 2, FetchOptions::default()).await.unwrap();
    assert_eq!(got.records[0].value.as_deref(), Some("new"));
    // The group moves from its committed offset 1 to the start (one record skipped). (Its
    // member's session ended while the clock moved: it joins again, same id.)
    let a = c
        .join_group(
            "r",
            "g",
            &JoinGroupRequest {
                member_id: Some(a.member_id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let f = c
        .group_fetch("r", "g", &a.member_id, None, FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(f.partitions[0].records[0].offset, 2);
    assert!(
        c.metric("floe_retention_skipped_records_total")
            .await
            .unwrap()
            >= 1.0
    );
    // A queue starts at what is left.
    let q = c
        .receive("r", "w", &ReceiveRequest::default())
        .await
        .unwrap();
    let offsets: Vec<u64> = q.records.iter().map(|r| r.record.offset).collect();
    assert_eq!(offsets, vec![2]);
}

/// Idempotency keys (RFC 0003) are remembered for `idempotency_ttl` of the engine's clock:
/// within it a reused key is refused, after it the key is forgotten (past its expiry it no
/// longer counts; the sweeper also deletes the row) and a new request may use it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_are_forgotten_after_their_ttl_of_clock_time() {
    let h = harness(AgentConfig {
        sweep_interval: Duration::from_millis(50),
        idempotency_ttl: Duration::from_secs(60),
        ..AgentConfig::default()
    })
    .await;
    let c = &h.client;
    let _ = c.create_topic("k", 1).await.unwrap();
    let (first, _) = c
        .produce_with_key("k", vec![rec("a")], "key-1")
        .await
        .unwrap();
    // Sweeps run meanwhile; within the TTL the key still counts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.clock.advance_ms(59_000);
    let e = c
        .produce_with_key("k", vec![rec("b")], "key-1")
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("idempotency_key_reused"));
    let (again, replayed) = c
        .produce_with_key("k", vec![rec("a")], "key-1")
        .await
        .unwrap();
    assert!(replayed);
    assert_eq!(again.offsets, first.offsets);
    h.clock.advance_ms(2_000);
    let (r, replayed) = c
        .produce_with_key("k", vec![rec("b")], "key-1")
        .await
        .unwrap();
    assert!(!replayed, "past the TTL the key is forgotten");
    assert_eq!(r.offsets[0].offset, 1, "a new request, written");
}

/// Producer sessions (RFC 0003 part 2) are forgotten after `producer_ttl` of the engine's
/// clock without a produce: within it a retry is replayed; after it the sweeper has
/// forgotten the sequences and the producer, and the session is refused as unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_producer_sessions_expire_after_their_ttl_of_clock_time() {
    let h = harness(AgentConfig {
        sweep_interval: Duration::from_millis(50),
        producer_ttl: Duration::from_secs(60),
        ..AgentConfig::default()
    })
    .await;
    let c = &h.client;
    let _ = c.create_topic("ttl", 1).await.unwrap();
    let s = c.init_producer(None).await.unwrap();
    let seq = std::collections::BTreeMap::from([(0u32, 0i64)]);
    let placed = |v: &str| floe_api::ProduceRecord {
        value: Some(v.into()),
        partition: Some(0),
        ..Default::default()
    };
    let (first, _) = c
        .produce_sequenced("ttl", vec![placed("a")], s, &seq)
        .await
        .unwrap();
    // Sweeps run meanwhile; within the TTL the state still counts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.clock.advance_ms(59_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (again, replayed) = c
        .produce_sequenced("ttl", vec![placed("a")], s, &seq)
        .await
        .unwrap();
    assert!(replayed);
    assert_eq!(again.offsets, first.offsets);
    h.clock.advance_ms(2_000);
    // Let a sweep run with the clock past the TTL.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.produce_sequenced("ttl", vec![placed("a")], s, &seq).await;
        match r {
            Err(e) if e.code() == Some("unknown_producer") => break,
            Ok((_, true)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected unknown_producer after the TTL, got {other:?}"),
        }
    }
    let got = c.fetch("ttl", 0, 0, FetchOptions::default()).await.unwrap();
    assert_eq!(got.records.len(), 1, "nothing written twice");
}
