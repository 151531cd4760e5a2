//! Consumer scenarios (groups, queues, SSE) written against a list of agents: with one
//! agent they test the embedded broker, with several (shared S3 + PostgreSQL) they test
//! that any agent serves any consumer. Client `i` talks to agent `i % n`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use floe_api::{JoinGroupRequest, ProduceRecord, ReceiveRequest, SettleRequest};
use floe_client::{Client, FetchOptions};
use tokio::sync::Mutex;

use super::rec;

fn pick(cs: &[Client], i: usize) -> Client {
    cs[i % cs.len()].clone()
}

/// Produce `n` records `"{prefix}-{i}"` spread over partitions by key, in batches.
pub(crate) async fn produce_values(c: &Client, topic: &str, prefix: &str, n: usize) -> Vec<String> {
    let vals: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in vals.chunks(1000) {
        let recs: Vec<ProduceRecord> = chunk
            .iter()
            .map(|v| ProduceRecord {
                key: Some(v.clone()),
                ..rec(v.clone())
            })
            .collect();
        let _ = c.produce(topic, recs).await.unwrap();
    }
    vals
}

/// One member's loop: fetch → process → commit, until `stop`. Returns what it processed as
/// (value, committed) — `committed` is false when the commit after processing was rejected.
async fn member_loop(
    c: Client,
    topic: String,
    group: String,
    member: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(String, String, bool)>>>,
    crash_after: Option<Instant>,
) -> bool {
    let mut cursor: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let r = match c
            .group_fetch(
                &topic,
                &group,
                &member,
                cursor.as_deref(),
                FetchOptions {
                    max_records: Some(50),
                    wait_ms: Some(300),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(r) => r,
            Err(e) if e.code() == Some("unknown_member") => return false,
            Err(e) => panic!("group fetch: {e}"),
        };
        let mut values = Vec::new();
        let mut commits = Vec::new();
        for p in &r.partitions {
            for rec in &p.records {
                values.push(rec.value.clone().unwrap());
            }
            if !p.records.is_empty() {
                commits.push((p.partition, p.next_offset));
            }
        }
        if crash_after.is_some_and(|t| Instant::now() >= t) {
            // Crash after processing, before committing: these records were not committed.
            let mut s = seen.lock().await;
            s.extend(values.into_iter().map(|v| (v, member.clone(), false)));
            return true;
        }
        if commits.is_empty() {
            cursor = Some(r.cursor);
            continue;
        }
        let ok = match c
            .commit(&topic, &group, &member, r.generation, &commits)
            .await
        {
            Ok(()) => true,
            Err(e)
                if matches!(
                    e.code(),
                    Some("stale_generation" | "not_owner" | "unknown_member")
                ) =>
            {
                false
            }
            Err(e) => panic!("commit: {e}"),
        };
        seen.lock()
            .await
            .extend(values.into_iter().map(|v| (v, member.clone(), ok)));
        cursor = ok.then_some(r.cursor);
    }
    false
}

/// Three groups on one topic each get every record exactly once (members commit after
/// processing; all members join before consuming).
pub(crate) async fn three_groups_each_get_everything(cs: &[Client]) {
    let topic = format!("fanout-{}", super::unique());
    let _ = cs[0].create_topic(&topic, 3).await.unwrap();
    let vals = produce_values(&cs[0], &topic, "v", 900).await;
    let mut tasks = Vec::new();
    let mut stops = Vec::new();
    let mut seens = Vec::new();
    for g in 0..3 {
        let group = format!("g{g}");
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut members = Vec::new();
        for m in 0..2 {
            let c = pick(cs, g + m);
            let a = c
                .join_group(&topic, &group, &JoinGroupRequest::default())
                .await
                .unwrap();
            members.push((c, a.member_id));
        }
        for (c, member) in members {
            tasks.push(tokio::spawn(member_loop(
                c,
                topic.clone(),
                group.clone(),
                member,
                stop.clone(),
                seen.clone(),
                None,
            )));
        }
        stops.push(stop);
        seens.push(seen);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (g, seen) in seens.iter().enumerate() {
        loop {
            let d = cs[0]
                .describe_group(&topic, &format!("g{g}"))
                .await
                .unwrap();
            if d.total_lag == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "group g{g} did not catch up: {d:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stops[g].store(true, Ordering::Relaxed);
        let _ = seen;
    }
    for t in tasks {
        let _ = t.await.unwrap();
    }
    for (g, seen) in seens.iter().enumerate() {
        let seen = seen.lock().await;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (v, _, committed) in seen.iter() {
            assert!(
                committed,
                "no rebalance happened, so every commit must succeed"
            );
            *counts.entry(v.as_str()).or_default() += 1;
        }
        for v in &vals {
            assert_eq!(counts.get(v.as_str()), Some(&1), "group g{g}: {v}");
        }
        assert_eq!(counts.len(), vals.len());
    }
}

/// Members join, leave and crash while records are produced: no record is skipped, and a
/// record is processed more than once only when an earlier processing was never committed.
pub(crate) async fn rebalance_under_load_skips_nothing(cs: &[Client]) {
    let topic = format!("rebal-{}", super::unique());
    let group = "workers".to_string();
    let _ = cs[0].create_topic(&topic, 4).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let join = |i: usize, leave_at: Option<Duration>, crash_at: Option<Duration>| {
        let (c, topic, group, stop, seen) = (
            pick(cs, i),
            topic.clone(),
            group.clone(),
            stop.clone(),
            seen.clone(),
        );
        async move {
            let a = c
                .join_group(
                    &topic,
                    &group,
                    &JoinGroupRequest {
                        member_id: Some(format!("m{i}")),
                        session_timeout_ms: Some(2_000),
                        auto_commit: false,
                    },
                )
                .await
                .unwrap();
            let my_stop = Arc::new(AtomicBool::new(false));
            let crash = crash_at.map(|d| Instant::now() + d);
            let h = tokio::spawn(member_loop(
                c.clone(),
                topic.clone(),
                group.clone(),
                a.member_id.clone(),
                my_stop.clone(),
                seen,
                crash,
            ));
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if stop.load(Ordering::Relaxed) || h.is_finished() {
                    break;
                }
                if leave_at.is_some_and(|d| started.elapsed() >= d) {
                    break;
                }
            }
            my_stop.store(true, Ordering::Relaxed);
            let crashed = h.await.unwrap();
            if !crashed {
                c.leave_group(&topic, &group, &a.member_id).await.unwrap();
            }
        }
    };
    let producer = {
        let (c, topic) = (cs[0].clone(), topic.clone());
        tokio::spawn(async move {
            let mut vals = Vec::new();
            for b in 0..60 {
                let batch: Vec<String> = (0..50).map(|i| format!("r-{}", b * 50 + i)).collect();
                let recs = batch
                    .iter()
                    .map(|v| ProduceRecord {
                        key: Some(v.clone()),
                        ..rec(v.clone())
                    })
                    .collect();
                let _ = c.produce(&topic, recs).await.unwrap();
                vals.extend(batch);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            vals
        })
    };
    let a = tokio::spawn(join(0, None, None));
    let b = tokio::spawn(join(1, Some(Duration::from_millis(2_500)), None));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let c_ = tokio::spawn(join(2, None, Some(Duration::from_millis(2_000))));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let d = tokio::spawn(join(3, None, None));
    let vals = producer.await.unwrap();
    // Wait until the group has committed everything (the crashed member is expired by then).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let desc = cs[0].describe_group(&topic, &group).await.unwrap();
        if desc.total_lag == 0 && desc.partitions.iter().all(|p| p.committed.is_some()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "group did not catch up: {desc:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for h in [a, b, c_, d] {
        h.await.unwrap();
    }
    let seen = seen.lock().await;
    let mut committed: HashMap<&str, usize> = HashMap::new();
    let mut total: HashMap<&str, usize> = HashMap::new();
    let mut members = std::collections::BTreeSet::new();
    for (v, m, ok) in seen.iter() {
        *total.entry(v.as_str()).or_default() += 1;
        if *ok {
            *committed.entry(v.as_str()).or_default() += 1;
        }
        let _ = members.insert(m.clone());
    }
    for v in &vals {
        assert_eq!(
            committed.get(v.as_str()).copied().unwrap_or(0),
            1,
            "{v}: every record is processed-and-committed exactly once (processed {} times)",
            total.get(v.as_str()).copied().unwrap_or(0)
        );
    }
    let dups: usize = total.values().map(|n| n - 1).sum();
    eprintln!(
        "rebalance: {} records, {} processings, {dups} duplicates (all uncommitted), members {members:?}",
        vals.len(),
        seen.len()
    );
    assert!(members.len() >= 3, "several members took part: {members:?}");
}

/// A commit from an older generation, for a partition not owned, or from an unknown member
/// is rejected with 409 and changes nothing.
pub(crate) async fn stale_generation_commit_rejected(cs: &[Client]) {
    let topic = format!("fence-{}", super::unique());
    let _ = cs[0].create_topic(&topic, 2).await.unwrap();
    let _ = produce_values(&cs[0], &topic, "f", 20).await;
    let m1 = pick(cs, 0)
        .join_group(&topic, "g", &JoinGroupRequest::default())
        .await
        .unwrap();
    assert_eq!(m1.partitions, vec![0, 1]);
    pick(cs, 0)
        .commit(&topic, "g", &m1.member_id, m1.generation, &[(0, 1)])
        .await
        .unwrap();
    let m2 = pick(cs, 1)
        .join_group(&topic, "g", &JoinGroupRequest::default())
        .await
        .unwrap();
    assert_eq!(m2.generation, m1.generation + 1);
    let e = pick(cs, 0)
        .commit(&topic, "g", &m1.member_id, m1.generation, &[(0, 2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("stale_generation"), "{e}");
    let hb = pick(cs, 0)
        .heartbeat(&topic, "g", &m1.member_id)
        .await
        .unwrap();
    assert_eq!(hb.generation, m2.generation);
    let theirs = m2.partitions[0];
    let e = pick(cs, 0)
        .commit(&topic, "g", &m1.member_id, hb.generation, &[(theirs, 2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("not_owner"), "{e}");
    let e = pick(cs, 0)
        .commit(&topic, "g", "nobody", hb.generation, &[(0, 2)])
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("unknown_member"), "{e}");
    let d = pick(cs, 1).describe_group(&topic, "g").await.unwrap();
    assert_eq!(
        d.partitions[0].committed,
        Some(1),
        "rejected commits changed nothing"
    );
    assert_eq!(d.members.len(), 2);
    // Lag is exported as a metric.
    let lag = pick(cs, 1)
        .metric(&format!(
            "floe_group_lag{{group=\"g\",partition=\"0\",topic=\"{topic}\"}}"
        ))
        .await
        .unwrap();
    assert_eq!(lag as u64, d.partitions[0].lag);
    assert!(lag > 0.0);
}

/// Competing consumers on a queue: every record processed exactly once with acks.
pub(crate) async fn queue_competing_consumers_process_once(cs: &[Client], records: usize) {
    let topic = format!("jobs-{}", super::unique());
    let _ = cs[0].create_topic(&topic, 2).await.unwrap();
    let vals = produce_values(&cs[0], &topic, "job", records).await;
    let acked = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::<(String, u32, usize)>::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (c, topic, acked, seen) = (pick(cs, i), topic.clone(), acked.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            while acked.load(Ordering::Relaxed) < records {
                assert!(Instant::now() < deadline, "queue not drained in time");
                let r = c
                    .receive(
                        &topic,
                        "workers",
                        &ReceiveRequest {
                            consumer: Some(format!("c{i}")),
                            max_records: Some(100),
                            wait_ms: Some(500),
                            visibility_timeout_ms: Some(60_000),
                            ..Default::default()
                        },
                    )
                    .await
                    .unwrap();
                if r.records.is_empty() {
                    continue;
                }
                let receipts: Vec<String> = r.records.iter().map(|r| r.receipt.clone()).collect();
                seen.lock().await.extend(
                    r.records
                        .iter()
                        .map(|r| (r.record.value.clone().unwrap(), r.delivery_count, i)),
                );
                let s = c.ack(&topic, "workers", receipts.clone()).await.unwrap();
                assert!(s.failed.is_empty(), "{:?}", s.failed);
                assert_eq!(s.settled as usize, receipts.len());
                let _ = acked.fetch_add(receipts.len(), Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut per_consumer = [0usize; 5];
    for (v, dc, who) in seen.iter() {
        assert_eq!(*dc, 1, "{v} was redelivered");
        *counts.entry(v.as_str()).or_default() += 1;
        per_consumer[*who] += 1;
    }
    assert_eq!(seen.len(), records);
    for v in &vals {
        assert_eq!(counts.get(v.as_str()), Some(&1), "{v}");
    }
    eprintln!("queue: {records} records, per consumer {per_consumer:?}");
    assert!(
        per_consumer.iter().filter(|n| **n > 0).count() >= 3,
        "work was shared: {per_consumer:?}"
    );
    let d = cs[0].describe_queue(&topic, "workers").await.unwrap();
    for p in &d.partitions {
        assert_eq!(
            (p.start_offset, p.in_flight, p.backlog),
            (p.end_offset, 0, 0),
            "{p:?}"
        );
    }
}

/// A consumer that dies holding records: they come back after the visibility timeout with
/// `delivery_count` 2, and the dead consumer's receipts no longer settle them.
pub(crate) async fn dead_consumer_records_redelivered(cs: &[Client]) {
    let topic = format!("redeliver-{}", super::unique());
    let _ = cs[0].create_topic(&topic, 1).await.unwrap();
    let _ = produce_values(&cs[0], &topic, "x", 20).await;
    let dead = pick(cs, 0)
        .receive(
            &topic,
            "q",
            &ReceiveRequest {
                consumer: Some("dies".into()),
                max_records: Some(10),
                visibility_timeout_ms: Some(1_500),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(dead.records.len(), 10);
    let held: Vec<String> = dead
        .records
        .iter()
        .map(|r| r.record.value.clone().unwrap())
        .collect();
    let live = pick(cs, 1);
    let req = ReceiveRequest {
        consumer: Some("lives".into()),
        max_records: Some(100),
        wait_ms: Some(5_000),
        ..Default::default()
    };
    let first = live.receive(&topic, "q", &req).await.unwrap();
    assert_eq!(first.records.len(), 10, "only the records nobody holds");
    assert!(
        first
            .records
            .iter()
            .all(|r| !held.contains(r.record.value.as_ref().unwrap()))
    );
    let _ = live
        .ack(
            &topic,
            "q",
            first.records.iter().map(|r| r.receipt.clone()).collect(),
        )
        .await
        .unwrap();
    let t = Instant::now();
    let again = live.receive(&topic, "q", &req).await.unwrap();
    let waited = t.elapsed();
    let mut got: Vec<String> = again
        .records
        .iter()
        .map(|r| r.record.value.clone().unwrap())
        .collect();
    got.sort();
    let mut want = held.clone();
    want.sort();
    assert_eq!(got, want, "the dead consumer's records come back");
    assert!(again.records.iter().all(|r| r.delivery_count == 2));
    assert!(
        waited < Duration::from_millis(4_000),
        "redelivered soon after the timeout: {waited:?}"
    );
    // The dead consumer's receipts are stale now.
    let late = pick(cs, 0)
        .ack(
            &topic,
            "q",
            dead.records.iter().map(|r| r.receipt.clone()).collect(),
        )
        .await
        .unwrap();
    assert_eq!((late.settled, late.failed.len()), (0, 10));
    assert_eq!(late.failed[0].code, "stale_receipt");
    let s = live
        .ack(
            &topic,
            "q",
            again.records.iter().map(|r| r.receipt.clone()).collect(),
        )
        .await
        .unwrap();
    assert_eq!(s.settled, 10);
    let d = live.describe_queue(&topic, "q").await.unwrap();
    assert_eq!(d.partitions[0].backlog, 0);
}

/// A poison record (released / timing out every time) goes to `<topic>.dlq` after
/// max_deliveries with headers saying why; a rejected record goes there at once.
pub(crate) async fn poison_goes_to_dead_letter_topic(cs: &[Client]) {
    let topic = format!("poison-{}", super::unique());
    let _ = cs[0].create_topic(&topic, 1).await.unwrap();
    let _ = cs[0]
        .produce(
            &topic,
            vec![
                ProduceRecord {
                    key: Some("k".into()),
                    headers: Some(BTreeMap::from([("trace".to_string(), "t1".to_string())])),
                    ..rec("poison".into())
                },
                rec("good".into()),
                rec("bad-schema".into()),
            ],
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let dlq = format!("{topic}.dlq");
    loop {
        assert!(Instant::now() < deadline, "poison never dead-lettered");
        let c = pick(cs, deliveries);
        let r = c
            .receive(
                &topic,
                "q",
                &ReceiveRequest {
                    max_records: Some(10),
                    wait_ms: Some(1_000),
                    visibility_timeout_ms: Some(300),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        for m in &r.records {
            match m.record.value.as_deref().unwrap() {
                "good" => {
                    let _ = c.ack(&topic, "q", vec![m.receipt.clone()]).await.unwrap();
                }
                "bad-schema" => {
                    let s = c
                        .settle(
                            &topic,
                            "q",
                            "reject",
                            &SettleRequest {
                                receipts: vec![m.receipt.clone()],
                                reason: Some("schema mismatch".into()),
                                ..Default::default()
                            },
                        )
                        .await
                        .unwrap();
                    assert_eq!(s.settled, 1);
                }
                "poison" => {
                    deliveries += 1;
                    assert_eq!(m.delivery_count as usize, deliveries);
                    // Alternate: nack now, or let the visibility timeout pass (a crash).
                    if deliveries % 2 == 1 {
                        let s = c
                            .settle(
                                &topic,
                                "q",
                                "release",
                                &SettleRequest {
                                    receipts: vec![m.receipt.clone()],
                                    ..Default::default()
                                },
                            )
                            .await
                            .unwrap();
                        assert_eq!(s.settled, 1);
                    }
                }
                other => panic!("unexpected {other}"),
            }
        }
        let d = cs[0].describe_queue(&topic, "q").await.unwrap();
        if d.partitions[0].backlog == 0 {
            assert_eq!(d.dead_letter_topic, dlq);
            assert_eq!(d.max_deliveries, 5);
            break;
        }
    }
    assert_eq!(
        deliveries, 5,
        "delivered max_deliveries times, then dead-lettered"
    );
    let got = super::read_all(&cs[0], &dlq, 0).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let by_value: HashMap<&str, &floe_api::FetchedRecord> = got
        .iter()
        .map(|r| (r.value.as_deref().unwrap(), r))
        .collect();
    let p = by_value["poison"];
    assert_eq!(p.key.as_deref(), Some("k"));
    assert_eq!(p.headers["trace"], "t1", "original headers kept");
    assert_eq!(p.headers["floe.dlq.reason"], "max_deliveries");
    assert_eq!(p.headers["floe.dlq.source_topic"], topic);
    assert_eq!(p.headers["floe.dlq.source_partition"], "0");
    assert_eq!(p.headers["floe.dlq.source_offset"], "0");
    assert_eq!(p.headers["floe.dlq.delivery_count"], "5");
    let b = by_value["bad-schema"];
    assert_eq!(b.headers["floe.dlq.reason"], "rejected");
    assert_eq!(b.headers["floe.dlq.message"], "schema mismatch");
    assert_eq!(b.headers["floe.dlq.source_offset"], "2");
    assert_eq!(b.headers["floe.dlq.delivery_count"], "1");
}
