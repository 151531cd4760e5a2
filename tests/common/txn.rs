//! Transaction scenarios (RFC 0005) written against a list of agents: with one agent they
//! test the embedded broker; with several (shared S3 + PostgreSQL) the steps of one
//! transaction go through different agents (begin on A, produce through B, commit
//! through C). Client `i` talks to agent `i % n`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floe_api::{JoinGroupRequest, ProduceRecord, ProducerSessionInfo, ReceiveRequest};
use floe_client::{Client, ClientError, FetchOptions, IdempotentProducer, TransactionOffsets};
use futures::StreamExt;

use super::rec;

fn pick(cs: &[Client], i: usize) -> Client {
    cs[i % cs.len()].clone()
}

fn to(p: u32, v: &str) -> ProduceRecord {
    ProduceRecord {
        partition: Some(i64::from(p)),
        ..rec(v.to_string())
    }
}

fn values(rs: &[floe_api::FetchedRecord]) -> Vec<String> {
    rs.iter().filter_map(|r| r.value.clone()).collect()
}

/// One fetch from `offset` (no wait).
async fn fetch(
    c: &Client,
    topic: &str,
    p: u32,
    offset: u64,
    uncommitted: bool,
) -> floe_api::FetchResponse {
    c.fetch(
        topic,
        p,
        offset,
        FetchOptions {
            max_records: Some(1000),
            read_uncommitted: uncommitted,
            ..FetchOptions::default()
        },
    )
    .await
    .unwrap()
}

fn gopts(wait_ms: u64) -> FetchOptions {
    FetchOptions {
        max_records: Some(100),
        wait_ms: Some(wait_ms),
        ..FetchOptions::default()
    }
}

fn code(e: ClientError) -> String {
    e.code().unwrap_or("?").to_string()
}

/// Collects the values an SSE tail of `topic`/`p` from offset 0 delivers, until dropped.
struct Sse {
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sse {
    async fn open(c: &Client, topic: &str, p: u32) -> Self {
        let url = format!(
            "{}/v1/topics/{topic}/partitions/{p}/stream?offset=0",
            c.base()
        );
        let resp = reqwest::Client::new().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let out = seen.clone();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut buf = String::new();
            while let Some(Ok(chunk)) = body.next().await {
                buf.push_str(std::str::from_utf8(&chunk).unwrap());
                while let Some(end) = buf.find("\n\n") {
                    let event: String = buf.drain(..end + 2).collect();
                    let record = event.lines().any(|l| l.trim() == "event: record");
                    for line in event.lines() {
                        if let (true, Some(v)) = (record, line.strip_prefix("data:")) {
                            let d: serde_json::Value = serde_json::from_str(v.trim()).unwrap();
                            if let Some(s) = d["value"].as_str() {
                                out.lock().unwrap().push(s.to_string());
                            }
                        }
                    }
                }
            }
        });
        Self { seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Wait until `want` values arrived (or 10 s).
    async fn wait_for(&self, want: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.seen().len() < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.seen()
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Committed records appear atomically in every partition and topic a transaction wrote;
/// until then `read_committed` readers of every kind (partition fetch, group member,
/// queue, SSE) stop at the stable offset while `read_uncommitted` sees them; an aborted
/// transaction's records reach no reader, ever, and the offsets around them stay dense.
pub(crate) async fn transactions_are_atomic_and_aborts_reach_no_consumer(cs: &[Client]) {
    let admin = pick(cs, 0);
    let _ = admin.create_topic("orders", 2).await.unwrap();
    let _ = admin.create_topic("audit", 1).await.unwrap();
    let sse = Sse::open(&pick(cs, 1), "orders", 0).await;
    let _ = admin
        .produce("orders", vec![to(0, "plain-0"), to(1, "plain-1")])
        .await
        .unwrap();
    // The transaction's steps go through different agents.
    let mut tx = IdempotentProducer::new(pick(cs, 0), Some("txn-app"))
        .with_failover([pick(cs, 1), pick(cs, 2)]);
    let begun = tx.begin(Some(30_000)).await.unwrap();
    // Produce through agent 1 with the transaction's session (low-level, to pick agents).
    let session = ProducerSessionInfo {
        producer_id: begun.producer_id,
        epoch: begun.epoch,
    };
    let seq0 = BTreeMap::from([(0u32, 0i64)]);
    let _ = pick(cs, 1)
        .produce_session("orders", vec![to(0, "t1-a")], session, &seq0, true)
        .await
        .unwrap();
    let _ = pick(cs, 2)
        .produce_session(
            "orders",
            vec![to(1, "t1-b")],
            session,
            &BTreeMap::from([(1, 0)]),
            true,
        )
        .await
        .unwrap();
    let _ = pick(cs, 0)
        .produce_session("audit", vec![to(0, "t1-c")], session, &seq0, true)
        .await
        .unwrap();
    let _ = admin
        .produce("orders", vec![to(0, "plain-2")])
        .await
        .unwrap();
    // Held back: read_committed stops at the transaction's first offset.
    let f = fetch(&pick(cs, 2), "orders", 0, 0, false).await;
    assert_eq!(values(&f.records), ["plain-0"]);
    assert_eq!((f.next_offset, f.stable_offset, f.end_offset), (1, 1, 3));
    let f = fetch(&pick(cs, 2), "orders", 0, 0, true).await;
    assert_eq!(values(&f.records), ["plain-0", "t1-a", "plain-2"]);
    assert!(values(&fetch(&admin, "audit", 0, 0, false).await.records).is_empty());
    let d = admin.describe_topic("orders").await.unwrap();
    assert_eq!(
        d.partitions
            .iter()
            .map(|p| (p.stable_offset, p.end_offset))
            .collect::<Vec<_>>(),
        [(1, 3), (1, 2)]
    );
    let open = admin.transactions(false).await.unwrap().transactions;
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].producer_name.as_deref(), Some("txn-app"));
    assert_eq!(open[0].partitions.len(), 3);
    // A group member and a queue see only what is stable.
    let member = pick(cs, 1)
        .join_group(
            "orders",
            "g",
            &JoinGroupRequest {
                member_id: Some("m".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut cursor = None;
    let mut group_seen = Vec::new();
    let gf = pick(cs, 1)
        .group_fetch("orders", "g", "m", cursor.as_deref(), gopts(0))
        .await
        .unwrap();
    for p in &gf.partitions {
        group_seen.extend(values(&p.records));
    }
    cursor = Some(gf.cursor);
    group_seen.sort();
    assert_eq!(group_seen, ["plain-0", "plain-1"]);
    let q = |c: Client| async move {
        c.receive(
            "orders",
            "q",
            &ReceiveRequest {
                max_records: Some(100),
                wait_ms: Some(0),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .records
        .into_iter()
        .filter_map(|r| r.record.value)
        .collect::<BTreeSet<String>>()
    };
    let mut queue_seen = q(pick(cs, 2)).await;
    assert_eq!(
        queue_seen,
        BTreeSet::from(["plain-0".to_string(), "plain-1".to_string()])
    );
    assert_eq!(sse.wait_for(1).await, ["plain-0"]);
    // Commit through agent 2: everything appears, in every partition and topic.
    let end = pick(cs, 2)
        .commit_transaction(begun.producer_id, begun.epoch, Vec::new())
        .await
        .unwrap();
    assert_eq!(end.state, floe_api::TransactionState::Committed);
    assert!(!end.repeated);
    let f = fetch(&admin, "orders", 0, 0, false).await;
    assert_eq!(values(&f.records), ["plain-0", "t1-a", "plain-2"]);
    assert_eq!(f.stable_offset, f.end_offset);
    assert_eq!(
        values(&fetch(&admin, "orders", 1, 0, false).await.records),
        ["plain-1", "t1-b"]
    );
    assert_eq!(
        values(&fetch(&admin, "audit", 0, 0, false).await.records),
        ["t1-c"]
    );
    assert_eq!(sse.wait_for(3).await, ["plain-0", "t1-a", "plain-2"]);
    // The next transaction aborts: its records reach nobody.
    let session2 = ProducerSessionInfo {
        producer_id: begun.producer_id,
        epoch: begun.epoch,
    };
    let t2 = pick(cs, 1)
        .begin_transaction(session2.producer_id, session2.epoch, None)
        .await
        .unwrap();
    let s2 = ProducerSessionInfo {
        producer_id: t2.producer_id,
        epoch: t2.epoch,
    };
    let _ = pick(cs, 0)
        .produce_session(
            "orders",
            vec![to(0, "t2-a"), to(0, "t2-a2")],
            s2,
            &seq0,
            true,
        )
        .await
        .unwrap();
    let _ = pick(cs, 1)
        .produce_session("audit", vec![to(0, "t2-c")], s2, &seq0, true)
        .await
        .unwrap();
    let _ = admin
        .produce("orders", vec![to(0, "plain-3")])
        .await
        .unwrap();
    let ab = pick(cs, 2)
        .abort_transaction(s2.producer_id, s2.epoch)
        .await
        .unwrap();
    assert_eq!(ab.state, floe_api::TransactionState::Aborted);
    let _ = admin
        .produce("orders", vec![to(0, "plain-4")])
        .await
        .unwrap();
    for uncommitted in [false, true] {
        let f = fetch(&pick(cs, 1), "orders", 0, 0, uncommitted).await;
        assert_eq!(
            values(&f.records),
            ["plain-0", "t1-a", "plain-2", "plain-3", "plain-4"],
            "aborted records are served to no one (read_uncommitted = {uncommitted})"
        );
        let offsets: Vec<u64> = f.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [0, 1, 2, 5, 6], "the hole keeps its offsets");
        assert_eq!(f.next_offset, 7);
    }
    // A fetch starting inside the hole moves past it.
    let f = fetch(&admin, "orders", 0, 3, false).await;
    assert_eq!(values(&f.records), ["plain-3", "plain-4"]);
    assert!(values(&fetch(&admin, "audit", 0, 0, true).await.records) == ["t1-c"]);
    // The group member and the queue get the committed records and nothing aborted.
    let mut more = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while more.len() < 5 && Instant::now() < deadline {
        let gf = pick(cs, 1)
            .group_fetch("orders", "g", "m", cursor.as_deref(), gopts(200))
            .await
            .unwrap();
        for p in &gf.partitions {
            more.extend(values(&p.records));
        }
        cursor = Some(gf.cursor);
    }
    more.sort();
    assert_eq!(more, ["plain-2", "plain-3", "plain-4", "t1-a", "t1-b"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue_seen.len() < 7 && Instant::now() < deadline {
        queue_seen.extend(q(pick(cs, 0)).await);
    }
    assert_eq!(
        queue_seen,
        [
            "plain-0", "plain-1", "plain-2", "plain-3", "plain-4", "t1-a", "t1-b"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<BTreeSet<_>>()
    );
    assert_eq!(
        sse.wait_for(5).await,
        ["plain-0", "t1-a", "plain-2", "plain-3", "plain-4"]
    );
    assert_eq!(member.member_id, "m");
    let all = admin.transactions(true).await.unwrap().transactions;
    assert_eq!(
        all.iter().map(|t| t.state).collect::<Vec<_>>(),
        [
            floe_api::TransactionState::Committed,
            floe_api::TransactionState::Aborted
        ]
    );
    assert!(
        admin
            .transactions(false)
            .await
            .unwrap()
            .transactions
            .is_empty()
    );
}

/// The Jepsen anomaly (Bufstream/Kafka before KIP-890): a delayed commit or abort of an
/// earlier transaction must not end the current one. Here the earlier transaction's
/// end and produce are held back and delivered after the next transaction began.
pub(crate) async fn a_delayed_end_cannot_end_the_next_transaction(cs: &[Client]) {
    let c = pick(cs, 0);
    let _ = c.create_topic("jepsen", 1).await.unwrap();
    let s0 = c.init_producer(Some("jepsen-app")).await.unwrap();
    let t1 = pick(cs, 1)
        .begin_transaction(s0.producer_id, s0.epoch, None)
        .await
        .unwrap();
    let s1 = ProducerSessionInfo {
        producer_id: t1.producer_id,
        epoch: t1.epoch,
    };
    let seq = BTreeMap::from([(0u32, 0i64)]);
    let _ = c
        .produce_session("jepsen", vec![to(0, "t1")], s1, &seq, true)
        .await
        .unwrap();
    // The producer times out waiting for its commit's answer and aborts; the commit is
    // still in flight ("held back").
    let _ = pick(cs, 2)
        .abort_transaction(s1.producer_id, s1.epoch)
        .await
        .unwrap();
    let t2 = c
        .begin_transaction(s1.producer_id, s1.epoch, None)
        .await
        .unwrap();
    assert_eq!(t2.epoch, t1.epoch + 1, "every transaction is a new epoch");
    let s2 = ProducerSessionInfo {
        producer_id: t2.producer_id,
        epoch: t2.epoch,
    };
    let _ = pick(cs, 1)
        .produce_session("jepsen", vec![to(0, "t2")], s2, &seq, true)
        .await
        .unwrap();
    // The held-back commit of t1 arrives now: refused; it cannot reach t2.
    let late = pick(cs, 1)
        .commit_transaction(s1.producer_id, s1.epoch, Vec::new())
        .await
        .unwrap_err();
    assert_eq!(code(late), "transaction_aborted");
    // A held-back produce of t1: fenced.
    let late = pick(cs, 2)
        .produce_session(
            "jepsen",
            vec![to(0, "t1-late")],
            s1,
            &BTreeMap::from([(0, 1)]),
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(code(late), "producer_fenced");
    // t2 is still open and holds the stable offset.
    // (t1's record at offset 0 is a hole now; t2's at 1 holds the stable offset.)
    let f = fetch(&c, "jepsen", 0, 0, false).await;
    assert!(f.records.is_empty());
    assert_eq!((f.stable_offset, f.end_offset), (1, 2));
    // A repeated (late) abort of t1 answers the same and changes nothing.
    let again = c.abort_transaction(s1.producer_id, s1.epoch).await.unwrap();
    assert!(again.repeated);
    assert_eq!(fetch(&c, "jepsen", 0, 0, false).await.stable_offset, 1);
    // t2 commits; a repeated commit answers the same; an abort after it is refused.
    let done = pick(cs, 2)
        .commit_transaction(s2.producer_id, s2.epoch, Vec::new())
        .await
        .unwrap();
    assert!(!done.repeated);
    assert!(
        c.commit_transaction(s2.producer_id, s2.epoch, Vec::new())
            .await
            .unwrap()
            .repeated
    );
    assert_eq!(
        code(
            c.abort_transaction(s2.producer_id, s2.epoch)
                .await
                .unwrap_err()
        ),
        "transaction_committed"
    );
    let f = fetch(&c, "jepsen", 0, 0, false).await;
    assert_eq!(values(&f.records), ["t2"]);
    // Plain produce from the old epoch: fenced; from the current epoch without the
    // transaction flag while none is open: fine; a transactional one: not open.
    let plain = c
        .produce_session(
            "jepsen",
            vec![to(0, "after")],
            s2,
            &BTreeMap::from([(0, 1)]),
            false,
        )
        .await
        .unwrap();
    assert_eq!(plain.0.offsets[0].offset, 2);
    assert_eq!(
        code(
            c.produce_session(
                "jepsen",
                vec![to(0, "x")],
                s2,
                &BTreeMap::from([(0, 2)]),
                true
            )
            .await
            .unwrap_err()
        ),
        "transaction_not_open"
    );
    // Re-initialising the name aborts an open transaction (the zombie is fenced).
    let t3 = c
        .begin_transaction(s2.producer_id, s2.epoch, None)
        .await
        .unwrap();
    let s3 = ProducerSessionInfo {
        producer_id: t3.producer_id,
        epoch: t3.epoch,
    };
    let _ = c
        .produce_session("jepsen", vec![to(0, "zombie")], s3, &seq, true)
        .await
        .unwrap();
    let s4 = pick(cs, 1).init_producer(Some("jepsen-app")).await.unwrap();
    assert_eq!(s4.producer_id, s3.producer_id);
    assert!(s4.epoch > s3.epoch);
    assert_eq!(
        code(
            c.commit_transaction(s3.producer_id, s3.epoch, Vec::new())
                .await
                .unwrap_err()
        ),
        "transaction_aborted"
    );
    let f = fetch(&c, "jepsen", 0, 0, true).await;
    assert_eq!(values(&f.records), ["t2", "after"]);
    assert_eq!(f.stable_offset, f.end_offset);
}

/// Consume-transform-produce: workers read `in` as a group, write `out` in a transaction
/// that also commits their group offsets; workers are dropped mid-transaction (after
/// producing, before committing) and replaced by a new process with the same
/// transactional name. Afterwards `out` holds every input exactly once and the group's
/// offsets never ran ahead of its outputs.
pub(crate) async fn consume_transform_produce_survives_killed_members(cs: &[Client], kills: usize) {
    let c = pick(cs, 0);
    let _ = c.create_topic("ctp-in", 2).await.unwrap();
    let _ = c.create_topic("ctp-out", 2).await.unwrap();
    let n = 300;
    let inputs: Vec<ProduceRecord> = (0..n)
        .map(|i| ProduceRecord {
            partition: Some(i % 2),
            ..rec(format!("in-{i}"))
        })
        .collect();
    for chunk in inputs.chunks(50) {
        let _ = c.produce("ctp-in", chunk.to_vec()).await.unwrap();
    }
    let mut killed = 0;
    let mut fenced = 0;
    let mut round = 0;
    loop {
        round += 1;
        assert!(round < 200, "no progress");
        // A fresh worker process: one member, transactional name fixed (Kafka's
        // transactional.id), so it fences and aborts its dead predecessor's transaction.
        let w = pick(cs, round);
        let member = format!("worker-{round}");
        let _ = w
            .join_group(
                "ctp-in",
                "ctp",
                &JoinGroupRequest {
                    member_id: Some(member.clone()),
                    session_timeout_ms: Some(1_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut producer = IdempotentProducer::new(w.clone(), Some("ctp-worker"));
        let mut cursor = None;
        let mut idle = 0;
        let mut die_after = if killed < kills {
            1 + round % 3
        } else {
            usize::MAX
        };
        loop {
            let f = match w
                .group_fetch(
                    "ctp-in",
                    "ctp",
                    &member,
                    cursor.as_deref(),
                    FetchOptions {
                        max_records: Some(40),
                        wait_ms: Some(200),
                        ..FetchOptions::default()
                    },
                )
                .await
            {
                Ok(f) => f,
                Err(e) => panic!("group fetch: {e}"),
            };
            cursor = Some(f.cursor.clone());
            let recs: Vec<(u32, u64, String)> = f
                .partitions
                .iter()
                .flat_map(|p| {
                    p.records
                        .iter()
                        .map(move |r| (p.partition, r.offset, r.value.clone().unwrap_or_default()))
                })
                .collect();
            if recs.is_empty() {
                idle += 1;
                if idle > 5 {
                    break;
                }
                let _ = w.heartbeat("ctp-in", "ctp", &member).await;
                continue;
            }
            idle = 0;
            let _ = producer.begin(Some(20_000)).await.unwrap();
            let out: Vec<ProduceRecord> = recs
                .iter()
                .map(|(p, _, v)| ProduceRecord {
                    partition: Some(i64::from(*p)),
                    ..rec(v.replace("in-", "out-"))
                })
                .collect();
            let _ = producer.send("ctp-out", out).await.unwrap();
            die_after = die_after.saturating_sub(1);
            if die_after == 0 {
                // Killed after producing, before committing: the process is gone.
                killed += 1;
                break;
            }
            let mut next: BTreeMap<u32, u64> = BTreeMap::new();
            for (p, o, _) in &recs {
                let e = next.entry(*p).or_default();
                *e = (*e).max(o + 1);
            }
            let offsets = vec![TransactionOffsets {
                topic: "ctp-in".into(),
                group: "ctp".into(),
                member_id: member.clone(),
                generation: f.generation,
                offsets: next
                    .into_iter()
                    .map(|(partition, offset)| floe_api::CommitOffset { partition, offset })
                    .collect(),
            }];
            match producer.commit(offsets).await {
                Ok(_) => {}
                // The group moved on (a dead member expired): this batch's outputs must
                // not count; abort and read again from the committed offsets.
                Err(e) if e.code() == Some("transaction_offsets_fenced") => {
                    fenced += 1;
                    let _ = producer.abort().await.unwrap();
                    let _ = w.heartbeat("ctp-in", "ctp", &member).await.unwrap();
                    cursor = None;
                }
                Err(e) => panic!("commit: {e}"),
            }
        }
        if die_after == 0 {
            continue; // the next worker takes over (its name aborts this transaction)
        }
        let _ = w.leave_group("ctp-in", "ctp", &member).await;
        break;
    }
    assert_eq!(killed, kills);
    println!(
        "consume-transform-produce: {killed} workers killed mid-transaction, {fenced} commits fenced by a rebalance and aborted"
    );
    // Exactly once in the output, per partition in input order.
    for p in 0..2u32 {
        let got = values(&super::read_all(&c, "ctp-out", p).await);
        let want: Vec<String> = (0..n)
            .filter(|i| i % 2 == i64::from(p))
            .map(|i| format!("out-{i}"))
            .collect();
        assert_eq!(got, want, "partition {p}: every input once, in order");
    }
    let d = c.describe_group("ctp-in", "ctp").await.unwrap();
    for p in &d.partitions {
        assert_eq!(p.committed, Some((n / 2) as u64));
    }
}

/// Half-message check-backs with several agents: every check is made by exactly one
/// agent (claimed in the index), the default applies once, one audit record each.
/// Needs agents started with a short `--half-first-check-ms` / `--half-check-interval-ms`
/// and `--half-max-checks 4`.
pub(crate) async fn check_backs_once_across_agents(cs: &[Client]) {
    let server = super::CheckServer::start(vec![Some("unknown")]).await;
    let c = pick(cs, 0);
    let _ = c.create_topic("half-multi", 1).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..3 {
        let h = pick(cs, i)
            .prepare_half("half-multi", vec![to(0, &format!("h{i}"))], &server.url)
            .await
            .unwrap();
        handles.push(h.handle);
    }
    let audit = || async {
        c.fetch("floe-half-audit", 0, 0, FetchOptions::default())
            .await
            .map(|f| f.records)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while audit().await.len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let calls = server.calls();
    for h in &handles {
        let mut checks: Vec<u64> = calls
            .iter()
            .filter(|c| c["handle"] == h.as_str())
            .map(|c| c["check"].as_u64().unwrap())
            .collect();
        checks.sort_unstable();
        assert_eq!(checks, [1, 2, 3, 4], "half-message {h}: each check once");
    }
    let records = audit().await;
    let mut audited: Vec<String> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            v["handle"].as_str().unwrap().to_string()
        })
        .collect();
    audited.sort();
    let mut want = handles.clone();
    want.sort();
    assert_eq!(audited, want, "one audit record per half-message");
    assert!(
        c.fetch("half-multi", 0, 0, FetchOptions::default())
            .await
            .unwrap()
            .records
            .is_empty(),
        "rolled back by the default"
    );
}
