//! The engine with a controlled clock: group session expiry, queue visibility timeouts,
//! dead-lettering after max deliveries and the orphan sweeper's grace are decided by the
//! agent's injected `Clock`, so these tests move time instead of sleeping through it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::CheckServer;

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

/// Transactions (RFC 0005) with a fast keeper: the engine's clock decides deadlines.
fn txn_config(max_checks: u32) -> AgentConfig {
    AgentConfig {
        transactions: floe_agent::TxnConfig {
            check_interval: Duration::from_millis(30),
            half_max_checks: max_checks,
            ..floe_agent::TxnConfig::default()
        },
        ..AgentConfig::default()
    }
}

fn values(rs: &[floe_api::FetchedRecord]) -> Vec<String> {
    rs.iter().filter_map(|r| r.value.clone()).collect()
}

/// Wait (real time, up to 5 s) until `f` holds.
async fn eventually<F: std::future::Future<Output = bool>>(mut f: impl FnMut() -> F) -> bool {
    for _ in 0..250 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// A producer that never ends its transaction holds `read_committed` readers for at most
/// its timeout: then the engine aborts it, a waiting reader moves on past the hole, and
/// the late commit is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_transaction_is_aborted_and_readers_move_on() {
    let h = harness(txn_config(15)).await;
    let c = &h.client;
    let _ = c.create_topic("t", 1).await.unwrap();
    let _ = c.produce("t", vec![rec("a")]).await.unwrap();
    let s = c.init_producer(Some("stuck")).await.unwrap();
    let t = c
        .begin_transaction(s.producer_id, s.epoch, Some(5_000))
        .await
        .unwrap();
    let session = floe_api::ProducerSessionInfo {
        producer_id: t.producer_id,
        epoch: t.epoch,
    };
    let seq = BTreeMap::from([(0u32, 0i64)]);
    let _ = c
        .produce_session(
            "t",
            vec![ProduceRecord {
                partition: Some(0),
                ..rec("x")
            }],
            session,
            &seq,
            true,
        )
        .await
        .unwrap();
    let _ = c.produce("t", vec![rec("b")]).await.unwrap();
    let opts = |wait| FetchOptions {
        wait_ms: Some(wait),
        ..FetchOptions::default()
    };
    let f = c.fetch("t", 0, 0, opts(0)).await.unwrap();
    assert_eq!(values(&f.records), ["a"]);
    // A reader long-polls at the stable offset.
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move { c.fetch("t", 0, 1, opts(20_000)).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "held while the transaction is open");
    assert_eq!(c.transactions(false).await.unwrap().transactions.len(), 1);
    h.clock.advance_ms(4_999);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "not before its timeout");
    h.clock.advance_ms(2);
    let f = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the reader moves on once the transaction times out")
        .unwrap();
    assert_eq!(values(&f.records), ["b"]);
    assert_eq!(f.records[0].offset, 2, "x's offset is a hole");
    let late = c
        .commit_transaction(t.producer_id, t.epoch, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(late.code(), Some("transaction_aborted"));
    let m = c
        .metric("floe_transactions_ended_total{by=\"timeout\",outcome=\"aborted\"}")
        .await
        .unwrap();
    assert_eq!(m, 1.0);
    h.agent.shutdown().await;
}

/// Half-messages (RFC 0005 §3): invisible until committed; commit and rollback are
/// idempotent and exclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_messages_commit_and_rollback() {
    let h = harness(txn_config(15)).await;
    let c = &h.client;
    let _ = c.create_topic("h", 2).await.unwrap();
    let check = "http://127.0.0.1:9/never-called";
    let keyed = |k: &str, v: &str| ProduceRecord {
        key: Some(k.into()),
        ..rec(v)
    };
    let m1 = c
        .prepare_half("h", vec![keyed("k1", "m1-a"), keyed("k2", "m1-b")], check)
        .await
        .unwrap();
    let m2 = c.prepare_half("h", vec![rec("m2")], check).await.unwrap();
    let visible = |c: Client| async move {
        let mut out = Vec::new();
        for p in 0..2 {
            out.extend(values(
                &c.fetch("h", p, 0, FetchOptions::default())
                    .await
                    .unwrap()
                    .records,
            ));
        }
        out.sort();
        out
    };
    assert!(
        visible(c.clone()).await.is_empty(),
        "invisible until committed"
    );
    let done = c.end_half(&m1.handle, true).await.unwrap();
    assert_eq!(done.state, floe_api::TransactionState::Committed);
    assert!(c.end_half(&m1.handle, true).await.unwrap().repeated);
    assert_eq!(
        c.end_half(&m1.handle, false).await.unwrap_err().code(),
        Some("transaction_committed")
    );
    let rb = c.end_half(&m2.handle, false).await.unwrap();
    assert_eq!(rb.state, floe_api::TransactionState::Aborted);
    assert!(c.end_half(&m2.handle, false).await.unwrap().repeated);
    assert_eq!(
        c.end_half(&m2.handle, true).await.unwrap_err().code(),
        Some("transaction_aborted")
    );
    assert_eq!(visible(c.clone()).await, ["m1-a", "m1-b"]);
    assert_eq!(
        c.end_half("12.x", true).await.unwrap_err().code(),
        Some("invalid_handle")
    );
    assert_eq!(
        c.end_half("999999.3", true).await.unwrap_err().code(),
        Some("transaction_not_found")
    );
    assert_eq!(
        c.prepare_half("h", vec![rec("x")], "ftp://nope")
            .await
            .unwrap_err()
            .code(),
        Some("invalid_check_url")
    );
    h.agent.shutdown().await;
}

/// Check-backs: none before the first check time; the producer's answer decides
/// (commit, rollback, or unknown → asked again after the interval); an endpoint that
/// never answers gets the configured number of checks, then the default (rollback)
/// applies and an audit record says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_message_check_backs_decide_or_the_default_applies() {
    let h = harness(txn_config(3)).await;
    let c = &h.client;
    let _ = c.create_topic("hc", 1).await.unwrap();
    let commit = CheckServer::start(vec![Some("commit")]).await;
    let rollback = CheckServer::start(vec![Some("rollback")]).await;
    let later = CheckServer::start(vec![Some("unknown"), Some("commit")]).await;
    let down = CheckServer::start(vec![None]).await;
    let a = c
        .prepare_half("hc", vec![rec("a")], &commit.url)
        .await
        .unwrap();
    let b = c
        .prepare_half("hc", vec![rec("b")], &rollback.url)
        .await
        .unwrap();
    let l = c
        .prepare_half("hc", vec![rec("l")], &later.url)
        .await
        .unwrap();
    let d = c
        .prepare_half("hc", vec![rec("d")], &down.url)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        commit.calls().is_empty(),
        "no check before 6 s of clock time"
    );
    h.clock.advance_ms(6_001);
    let all_once = || async {
        commit.calls().len() == 1
            && rollback.calls().len() == 1
            && later.calls().len() == 1
            && down.calls().len() == 1
    };
    assert!(
        eventually(all_once).await,
        "every half-message checked once"
    );
    let call = &commit.calls()[0];
    assert_eq!(call["handle"], a.handle.as_str());
    assert_eq!(call["check"], 1);
    let stable = |c: Client| async move {
        values(
            &c.fetch("hc", 0, 0, FetchOptions::default())
                .await
                .unwrap()
                .records,
        )
    };
    assert!(
        eventually(|| async { stable(c.clone()).await == ["a"] }).await,
        "the commit answer made `a` visible, nothing else yet"
    );
    assert_eq!(
        c.end_half(&b.handle, true).await.unwrap_err().code(),
        Some("transaction_aborted"),
        "rolled back by its check-back"
    );
    // 30 s later: `later` answers commit; `down` fails again.
    h.clock.advance_ms(30_001);
    assert!(eventually(|| async { later.calls().len() == 2 && down.calls().len() == 2 }).await);
    assert!(eventually(|| async { stable(c.clone()).await == ["a", "l"] }).await);
    assert_eq!(later.calls()[1]["check"], 2);
    // `down`: third check, then (after another interval) the default.
    h.clock.advance_ms(30_001);
    assert!(eventually(|| async { down.calls().len() == 3 }).await);
    h.clock.advance_ms(30_001);
    let audit = || async {
        c.fetch("floe-half-audit", 0, 0, FetchOptions::default())
            .await
            .map(|f| f.records)
            .unwrap_or_default()
    };
    assert!(
        eventually(|| async { audit().await.len() == 1 }).await,
        "an audit record once the default applied"
    );
    let rec0 = &audit().await[0];
    let v: serde_json::Value = serde_json::from_str(rec0.value.as_deref().unwrap()).unwrap();
    assert_eq!(v["handle"], d.handle.as_str());
    assert_eq!(v["outcome"], "aborted");
    assert_eq!(v["checks"], 3);
    assert_eq!(down.calls().len(), 3, "no check beyond the maximum");
    assert_eq!(
        c.end_half(&d.handle, true).await.unwrap_err().code(),
        Some("transaction_aborted")
    );
    assert_eq!(stable(c.clone()).await, ["a", "l"]);
    assert!(c.transactions(false).await.unwrap().transactions.is_empty());
    let _ = l;
    h.agent.shutdown().await;
}
