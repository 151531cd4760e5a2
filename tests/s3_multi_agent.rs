//! Stateless multi-agent operation on a real S3-compatible server (moto, then LocalStack)
//! and a real PostgreSQL index: three `floe serve` processes share one bucket prefix and
//! one database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{AgentProc, fresh_bucket_url, fresh_pg_db, read_all, rec, test_store};
use floe_api::ProduceRecord;
use floe_client::Client;
use futures::StreamExt;
use object_store::ObjectStoreExt;

const FLAGS: &[&str] = &[
    "--linger-ms",
    "20",
    "--commit-deadline-ms",
    "2000",
    "--orphan-grace-ms",
    "5000",
    "--sweep-interval-ms",
    "500",
    "--topic-cache-ttl-ms",
    "500",
];

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    agents: Vec<Option<AgentProc>>,
    bucket: String,
    index: String,
    extra: Vec<String>,
}

impl Cluster {
    async fn new(n: usize) -> Self {
        Self::with_flags(n, &[]).await
    }
    async fn with_flags(n: usize, extra: &[&str]) -> Self {
        let bucket = fresh_bucket_url();
        let index = fresh_pg_db().await;
        let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut c = Self {
            dirs,
            agents: Vec::new(),
            bucket,
            index,
            extra: extra.iter().map(|s| (*s).to_string()).collect(),
        };
        for i in 0..n {
            let a = c.start_agent(i);
            c.agents.push(Some(a));
        }
        c
    }
    fn start_agent(&self, i: usize) -> AgentProc {
        let id = format!("a{i}");
        let mut flags = FLAGS.to_vec();
        flags.extend(["--agent-id", id.as_str()]);
        flags.extend(self.extra.iter().map(String::as_str));
        AgentProc::start_shared(self.dirs[i].path(), &self.bucket, &self.index, &flags)
    }
    fn client(&self, i: usize) -> Client {
        self.agents[i].as_ref().unwrap().client()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_one_bucket_and_index() {
    let cl = Cluster::new(3).await;
    let _ = cl.client(0).create_topic("shared", 3).await.unwrap();
    // Topic metadata made on agent 0 is visible on the others.
    for i in 1..3 {
        assert_eq!(
            cl.client(i)
                .describe_topic("shared")
                .await
                .unwrap()
                .partitions
                .len(),
            3
        );
    }
    let mut tasks = Vec::new();
    for prod in 0..6 {
        let c = cl.client(prod % 3);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..15 {
                let vals: Vec<String> = (0..10).map(|i| format!("{prod}:{}", b * 10 + i)).collect();
                let recs = vals
                    .iter()
                    .map(|v| ProduceRecord {
                        key: Some(format!("k{prod}")),
                        ..rec(v.clone())
                    })
                    .collect();
                let r = c.produce("shared", recs).await.unwrap();
                acked.extend(r.offsets.into_iter().zip(vals));
            }
            acked
        }));
    }
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (o, v) in t.await.unwrap() {
            assert!(
                acked.insert((o.partition, o.offset), v).is_none(),
                "offset assigned twice"
            );
        }
    }
    assert_eq!(acked.len(), 900);
    // Every agent serves the same log: dense, every acked record at its offset, and each
    // producer's records (one key → one partition) in send order.
    for i in 0..3 {
        let c = cl.client(i);
        for p in 0..3 {
            let got = read_all(&c, "shared", p).await;
            let mut last_seq: BTreeMap<String, i64> = BTreeMap::new();
            for (n, r) in got.iter().enumerate() {
                assert_eq!(r.offset, n as u64);
                let v = r.value.clone().unwrap();
                assert_eq!(
                    acked.get(&(p, r.offset)),
                    Some(&v),
                    "agent {i} partition {p} offset {}",
                    r.offset
                );
                let (prod, seq) = v.split_once(':').unwrap();
                let seq: i64 = seq.parse().unwrap();
                let prev = last_seq.insert(prod.to_string(), seq).unwrap_or(-1);
                assert!(seq > prev, "producer {prod} out of order");
            }
        }
    }
    // A topic deleted on one agent is gone on the others (after the topic cache TTL).
    cl.client(2).delete_topic("shared").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let err = cl
        .client(0)
        .produce("shared", vec![rec("late".into())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("topic_not_found"));
}

/// Consumer groups across two agents: members of one group on different agents share the
/// partitions, commits are fenced through the shared PostgreSQL index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_across_two_agents() {
    let cl = Cluster::new(2).await;
    let cs = [cl.client(0), cl.client(1)];
    common::scenarios::three_groups_each_get_everything(&cs).await;
    common::scenarios::stale_generation_commit_rejected(&cs).await;
    common::scenarios::rebalance_under_load_skips_nothing(&cs).await;
}

/// Transactions across three agents (RFC 0005): the steps of one transaction go through
/// different agents; read_committed consumers of every kind on any agent; the delayed-end
/// anomaly; consume-transform-produce with killed workers; each half-message check-back
/// made by exactly one agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_across_three_agents() {
    let cl = Cluster::with_flags(
        3,
        &[
            "--poll-interval-ms",
            "300",
            "--transaction-check-interval-ms",
            "100",
            "--half-first-check-ms",
            "300",
            "--half-check-interval-ms",
            "300",
            "--half-max-checks",
            "4",
        ],
    )
    .await;
    let cs = [cl.client(0), cl.client(1), cl.client(2)];
    common::txn::transactions_are_atomic_and_aborts_reach_no_consumer(&cs).await;
    common::txn::a_delayed_end_cannot_end_the_next_transaction(&cs).await;
    common::txn::consume_transform_produce_survives_killed_members(&cs, 3).await;
    common::txn::check_backs_once_across_agents(&cs).await;
}

/// Queues across two agents: competing consumers on both agents, redelivery of records a
/// consumer on one agent died holding to a consumer on the other, dead-lettering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_across_two_agents() {
    let cl = Cluster::new(2).await;
    let cs = [cl.client(0), cl.client(1)];
    common::scenarios::queue_competing_consumers_process_once(&cs, 10_000).await;
    common::scenarios::dead_consumer_records_redelivered(&cs).await;
    common::scenarios::poison_goes_to_dead_letter_topic(&cs).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_on_one_agent_wakes_on_commit_through_another() {
    let bucket = fresh_bucket_url();
    let index = fresh_pg_db().await;
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Agent A re-checks only every 60 s: only the NOTIFY from B's commit can wake it in time.
    let a = AgentProc::start_shared(d1.path(), &bucket, &index, &["--poll-interval-ms", "60000"]);
    let b = AgentProc::start_shared(d2.path(), &bucket, &index, &["--linger-ms", "10"]);
    let (ca, cb) = (a.client(), b.client());
    let _ = ca.create_topic("lp", 1).await.unwrap();
    let woke = common::long_poll_wake_time(&ca, &cb, "lp", "across").await;
    assert!(
        woke < Duration::from_secs(2),
        "woken {woke:?} after the produce on the other agent"
    );
}

/// One trial: producers on all three agents; agent `victim` is killed with SIGKILL mid-load.
async fn trial(cl: &mut Cluster, trial: usize, victim: usize) -> BTreeMap<(u32, u64), String> {
    trial_on(cl, "kill", None, trial, victim).await
}

/// [`trial`] on `topic`; with `keys`, record `i` of a batch has key `k{i % keys}`.
async fn trial_on(
    cl: &mut Cluster,
    topic: &'static str,
    keys: Option<usize>,
    trial: usize,
    victim: usize,
) -> BTreeMap<(u32, u64), String> {
    let mut tasks = Vec::new();
    for prod in 0..6 {
        let c = cl.client(prod % 3);
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failures = 0;
            for b in 0..40 {
                let vals: Vec<String> = (0..10)
                    .map(|i| format!("t{trial}-p{prod}-b{b}-{i}"))
                    .collect();
                let records = vals
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ProduceRecord {
                        key: keys.map(|k| format!("k{}", (prod * 10 + i) % k)),
                        ..rec(v.clone())
                    })
                    .collect();
                match c.produce(topic, records).await {
                    Ok(r) => acked.extend(
                        r.offsets
                            .into_iter()
                            .map(|o| (o.partition, o.offset))
                            .zip(vals),
                    ),
                    Err(_) => {
                        failures += 1;
                        if failures > 3 {
                            break;
                        }
                    }
                }
            }
            acked
        }));
    }
    tokio::time::sleep(Duration::from_millis(300 + 200 * (trial as u64 % 4))).await;
    let a = cl.agents[victim].take().unwrap();
    tokio::task::spawn_blocking(move || a.kill9())
        .await
        .unwrap();
    let mut acked = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            assert!(acked.insert(k, v).is_none(), "offset {k:?} acked twice");
        }
    }
    let a = cl.start_agent(victim);
    cl.agents[victim] = Some(a);
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_one_of_three_agents_loses_no_acked_record() {
    let trials = common::kill_trials(3);
    let mut cl = Cluster::new(3).await;
    let _ = cl.client(0).create_topic("kill", 2).await.unwrap();
    let mut acked = BTreeMap::new();
    for t in 0..trials {
        acked.extend(trial(&mut cl, t, t % 3).await);
    }
    // Plant an orphan the sweepers must remove.
    let store = test_store(&cl.bucket);
    let planted = object_store::path::Path::from("segments/00000000-planted-orphan.parquet");
    let _ = store
        .put(&planted, bytes::Bytes::from_static(b"not committed").into())
        .await
        .unwrap();
    let lost = lost_acked(&cl, &acked).await;
    assert_eq!(lost, 0, "acked records lost");
    eprintln!(
        "kill -9 trials: {trials}; acked records: {}; lost: {lost}",
        acked.len()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.head(&planted).await.is_ok() {
        assert!(Instant::now() < deadline, "planted orphan was not swept");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Every object left is referenced by the index.
    let index = floe_index::open(&cl.index).await.unwrap();
    let mut listing = store.list(Some(&object_store::path::Path::from("segments")));
    let cutoff = chrono_like_now() - 7_000;
    while let Some(m) = listing.next().await {
        let m = m.unwrap();
        if m.last_modified.timestamp_millis() < cutoff {
            assert!(
                index.segment_referenced(m.location.as_ref()).await.unwrap(),
                "orphan {} survived",
                m.location
            );
        }
    }
}

/// Read topic `kill` (2 partitions) through every agent: offsets dense, no value twice,
/// every acked record at its offset unchanged. Returns how many acked records are missing.
async fn lost_acked(cl: &Cluster, acked: &BTreeMap<(u32, u64), String>) -> usize {
    let mut lost = 0;
    for i in 0..3 {
        let c = cl.client(i);
        let mut seen = HashSet::new();
        for p in 0..2 {
            let got = read_all(&c, "kill", p).await;
            for (n, r) in got.iter().enumerate() {
                assert_eq!(r.offset, n as u64, "hole in partition {p}");
                assert!(seen.insert(r.value.clone().unwrap()), "duplicate record");
            }
            for ((_, o), v) in acked.iter().filter(|((ap, _), _)| *ap == p) {
                match got.get(*o as usize) {
                    Some(r) => assert_eq!(r.value.as_ref(), Some(v), "acked record changed"),
                    None => lost += 1,
                }
            }
        }
    }
    lost
}

/// One trial with idempotent producers (RFC 0003 part 2): each of 6 named producers
/// starts on one agent and fails over to the others on a retryable error, resending the
/// same request with the same sequences; agent `victim` is killed with SIGKILL mid-load.
/// Returns, per producer, its acked (partition, offset, value) in send order.
async fn idempotent_trial(
    cl: &mut Cluster,
    trial: usize,
    victim: usize,
) -> (Vec<Vec<(u32, u64, String)>>, floe_client::ProducerStats) {
    let mut tasks = Vec::new();
    for prod in 0..6 {
        let clients: Vec<Client> = (0..3).map(|i| cl.client((prod + i) % 3)).collect();
        tasks.push(tokio::spawn(async move {
            let mut it = clients.into_iter();
            let first = it.next().unwrap();
            let mut p = floe_client::IdempotentProducer::new(first, Some(&format!("prod-{prod}")))
                .with_failover(it);
            let mut acked = Vec::new();
            for b in 0..25 {
                let vals: Vec<String> = (0..10)
                    .map(|i| format!("t{trial}-p{prod}-b{b:02}-{i}"))
                    .collect();
                // Keyless: one partition per request, in turn.
                let r = p
                    .send("idem", vals.iter().cloned().map(rec).collect())
                    .await
                    .unwrap_or_else(|e| panic!("producer {prod} batch {b}: {e}"));
                acked.extend(
                    r.offsets
                        .into_iter()
                        .zip(vals)
                        .map(|(o, v)| (o.partition, o.offset, v)),
                );
            }
            (acked, p.stats())
        }));
    }
    tokio::time::sleep(Duration::from_millis(200 + 150 * (trial as u64 % 5))).await;
    let a = cl.agents[victim].take().unwrap();
    tokio::task::spawn_blocking(move || a.kill9())
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut stats = floe_client::ProducerStats::default();
    for t in tasks {
        let (acked, s) = t.await.unwrap();
        out.push(acked);
        stats.retries += s.retries;
        stats.replays += s.replays;
    }
    let a = cl.start_agent(victim);
    cl.agents[victim] = Some(a);
    (out, stats)
}

/// Kill -9 of one of three agents under load from idempotent producers, 10 trials by
/// default (`FLOE_KILL_TRIALS`): every acked record is in the log at its acked offset, no
/// record is in it twice (retries after a lost answer, on another agent, write nothing),
/// and each producer's records keep their send order within each partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_idempotent_producers_loses_nothing_and_duplicates_nothing() {
    let trials = common::kill_trials(10);
    let mut cl = Cluster::new(3).await;
    let _ = cl.client(0).create_topic("idem", 2).await.unwrap();
    let mut acked: Vec<Vec<(u32, u64, String)>> = Vec::new();
    let (mut retries, mut replays) = (0, 0);
    for t in 0..trials {
        let (a, s) = idempotent_trial(&mut cl, t, t % 3).await;
        acked.extend(a);
        retries += s.retries;
        replays += s.replays;
    }
    let c = cl.client(0);
    let mut log: BTreeMap<(u32, u64), String> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for p in 0..2 {
        for (n, r) in read_all(&c, "idem", p).await.iter().enumerate() {
            assert_eq!(r.offset, n as u64, "hole in partition {p}");
            let v = r.value.clone().unwrap();
            if !seen.insert(v.clone()) {
                duplicates += 1;
            }
            let _ = log.insert((p, r.offset), v);
        }
    }
    let (mut lost, mut total) = (0, 0);
    for producer in &acked {
        let mut last: BTreeMap<u32, u64> = BTreeMap::new();
        for (p, o, v) in producer {
            total += 1;
            match log.get(&(*p, *o)) {
                Some(got) => assert_eq!(got, v, "acked record changed"),
                None => lost += 1,
            }
            if let Some(prev) = last.insert(*p, *o) {
                assert!(
                    prev < *o,
                    "producer order broken in partition {p}: {prev} then {o}"
                );
            }
        }
    }
    eprintln!(
        "idempotent kill -9 trials: {trials}; acked records: {total}; in the log: {}; lost: {lost}; duplicates: {duplicates}; retried attempts: {retries}; retries answered as replays of a lost ack: {replays}",
        log.len()
    );
    assert!(retries > 0, "the kills must make producers retry");
    assert_eq!(lost, 0, "acked records lost");
    assert_eq!(duplicates, 0, "records written twice");
    assert_eq!(log.len(), total, "the log holds exactly the acked records");
}

#[allow(clippy::disallowed_methods)] // a test's own wall clock, not the engine's
fn chrono_like_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_failure_gives_503_and_recovers_without_loss() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let bucket = fresh_bucket_url();
    let index_url = fresh_pg_db().await;
    let fault = floe_agent::store::FaultStore::new(test_store(&bucket));
    let switch = fault.switch();
    let index = floe_index::open(&index_url).await.unwrap();
    let config = floe_agent::AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(5),
        ..Default::default()
    };
    let agent = floe_agent::Agent::start_with(config, Arc::new(fault), index)
        .await
        .unwrap();
    let c = Client::new(&format!("http://{}", agent.addr)).unwrap();
    let _ = c.create_topic("f", 1).await.unwrap();
    let _ = c.produce("f", vec![rec("before".into())]).await.unwrap();
    switch.store(true, Ordering::SeqCst);
    let err = c
        .produce("f", vec![rec("during".into())])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("store_unavailable"));
    switch.store(false, Ordering::SeqCst);
    assert_eq!(
        c.produce("f", vec![rec("after".into())])
            .await
            .unwrap()
            .offsets[0]
            .offset,
        1
    );
    let got = read_all(&c, "f", 0).await;
    assert_eq!(
        got.iter()
            .map(|r| r.value.clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["before", "after"]
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_bucket_is_a_clear_startup_error_and_bucket_init_creates_it() {
    let bucket = format!("floe-new-{}", common::unique());
    let url = format!("s3://{bucket}/p");
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_floe"));
        let _ = cmd.args(args);
        for (k, v) in common::s3_env() {
            let _ = cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--bucket",
        &url,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("does not exist") && err.contains(&bucket),
        "{err}"
    );
    let out = run(&["bucket", "init", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["bucket", "check", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = AgentProc::start_env(dir.path(), &["--bucket", &url], &common::s3_env());
    let c = agent.client();
    let _ = c.create_topic("t", 1).await.unwrap();
    assert_eq!(
        c.produce("t", vec![rec("x".into())]).await.unwrap().offsets[0].offset,
        0
    );
}

/// Wait (60 s at most) until every object under `segments/` and `topics/` is referenced by
/// the index: the sweepers deleted every orphan. Returns (partition files, objects).
async fn until_every_object_is_referenced(cl: &Cluster) -> (usize, usize) {
    let store = test_store(&cl.bucket);
    let index = floe_index::open(&cl.index).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut unreferenced = 0;
        let (mut files, mut objects) = (0, 0);
        for prefix in ["segments", "topics"] {
            let mut listing = store.list(Some(&object_store::path::Path::from(prefix)));
            while let Some(m) = listing.next().await {
                let m = m.unwrap();
                objects += 1;
                if prefix == "topics" {
                    files += 1;
                }
                if !index.segment_referenced(m.location.as_ref()).await.unwrap() {
                    unreferenced += 1;
                }
            }
        }
        if unreferenced == 0 {
            return (files, objects);
        }
        assert!(
            Instant::now() < deadline,
            "{unreferenced} unreferenced objects left after the sweepers' passes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Compaction on three agents competing for the same partitions (a lease each), with one
/// agent killed with SIGKILL in every trial — possibly mid-compaction — while producers
/// write and a consumer reads the whole log in a loop through another agent (RFC 0004).
/// No acked record is lost or duplicated, offsets stay dense, the consumer never sees an
/// error or a changed record, and once quiet, the sweepers leave no unreferenced object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_compaction_on_three_agents_loses_nothing() {
    let trials = common::kill_trials(10);
    let mut cl = Cluster::with_flags(
        3,
        &[
            &common::EAGER_COMPACTION[..],
            &["--compaction-target-bytes", "20000"],
        ]
        .concat(),
    )
    .await;
    let _ = cl.client(0).create_topic("kill", 2).await.unwrap();
    let mut acked = BTreeMap::new();
    for t in 0..trials {
        let victim = t % 3;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let c = cl.client((victim + 1) % 3);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut last: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
                let mut passes = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for (p, seen) in last.iter_mut().enumerate() {
                        let got = read_all(&c, "kill", p as u32).await;
                        for (n, r) in got.iter().enumerate() {
                            assert_eq!(r.offset, n as u64, "gap in partition {p}");
                        }
                        let values: Vec<String> =
                            got.into_iter().map(|r| r.value.unwrap()).collect();
                        assert!(
                            values.len() >= seen.len() && values[..seen.len()] == seen[..],
                            "a record changed under a consumer in partition {p}"
                        );
                        *seen = values;
                    }
                    passes += 1;
                }
                passes
            })
        };
        acked.extend(trial(&mut cl, t, victim).await);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let passes = reader.await.unwrap();
        assert!(passes > 0);
    }
    // Quiet: let compaction and the sweepers finish.
    let (files, objects) = until_every_object_is_referenced(&cl).await;
    let lost = lost_acked(&cl, &acked).await;
    assert_eq!(lost, 0, "acked records lost");
    assert!(files > 0, "nothing was compacted");
    let mut compactions = 0;
    let mut lost_swaps = 0;
    for i in 0..3 {
        let m = cl.client(i).metrics().await.unwrap();
        compactions += common::metric(&m, "floe_compactions_total");
        lost_swaps += common::metric(&m, "floe_compactions_lost_total");
    }
    eprintln!(
        "compaction kill -9 trials: {trials}; acked records: {}; lost: {lost}; objects left: {objects} ({files} partition files); compactions since the last restarts: {compactions}, swaps lost: {lost_swaps}",
        acked.len()
    );
}

/// Compacted topics (RFC 0004) on three agents, one killed with SIGKILL per trial while
/// the compactors clean: no acked record is lost unless a later record of its key
/// replaced it, none changes, none is duplicated; consumers reading throughout only ever
/// see records of the log, in order; no unreferenced object is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_cleaning_of_a_compacted_topic_loses_no_latest_record() {
    let trials = common::kill_trials(10);
    let mut cl = Cluster::with_flags(
        3,
        &[
            &common::EAGER_COMPACTION[..],
            &["--compaction-target-bytes", "20000"],
        ]
        .concat(),
    )
    .await;
    let _ = cl
        .client(0)
        .create_topic_with(floe_api::CreateTopicRequest {
            name: "kvkill".into(),
            partitions: 2,
            retention_ms: None,
            config: Some(BTreeMap::from([(
                "cleanup.policy".to_string(),
                "compact".to_string(),
            )])),
        })
        .await
        .unwrap();
    let mut acked = BTreeMap::new();
    for t in 0..trials {
        let victim = t % 3;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let c = cl.client((victim + 1) % 3);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut passes = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for p in 0..2 {
                        let got = read_all(&c, "kvkill", p).await;
                        assert!(got.windows(2).all(|w| w[0].offset < w[1].offset));
                    }
                    passes += 1;
                }
                passes
            })
        };
        acked.extend(trial_on(&mut cl, "kvkill", Some(7), t, victim).await);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.await.unwrap() > 0);
    }
    let (files, _) = until_every_object_is_referenced(&cl).await;
    assert!(files > 0, "nothing was cleaned");
    let mut kept = 0;
    for i in 0..3 {
        let c = cl.client(i);
        let mut seen = HashSet::new();
        for p in 0..2u32 {
            let got = read_all(&c, "kvkill", p).await;
            kept += got.len();
            let at: BTreeMap<u64, (String, String)> = got
                .iter()
                .map(|r| (r.offset, (r.key.clone().unwrap(), r.value.clone().unwrap())))
                .collect();
            for (_, v) in at.values() {
                assert!(seen.insert(v.clone()), "duplicate record {v}");
            }
            let latest: BTreeMap<&str, u64> =
                at.iter().map(|(o, (k, _))| (k.as_str(), *o)).collect();
            for ((_, o), v) in acked.iter().filter(|((ap, _), _)| *ap == p) {
                match at.get(o) {
                    Some((_, got)) => assert_eq!(got, v, "acked record changed"),
                    // Gone: only if a later record of its key is in the log. The key of
                    // an acked record is in its value's batch position (see trial_on).
                    None => {
                        let key = acked_key(v, 7);
                        assert!(
                            latest.get(key.as_str()).is_some_and(|l| l > o),
                            "acked record {v} at {p}/{o} lost without a later record of {key}"
                        );
                    }
                }
            }
        }
    }
    eprintln!(
        "compacted-topic kill -9 trials: {trials}; acked records: {}; kept after cleaning: {} per agent; {files} partition files",
        acked.len(),
        kept / 3
    );
    assert!(
        kept / 3 < acked.len(),
        "cleaning removed superseded records"
    );
}

/// The key [`trial_on`] gave the record with value `t{trial}-p{prod}-b{b}-{i}`.
fn acked_key(value: &str, keys: usize) -> String {
    let mut parts = value.split('-');
    let prod: usize = parts.nth(1).unwrap()[1..].parse().unwrap();
    let i: usize = parts.nth(1).unwrap().parse().unwrap();
    format!("k{}", (prod * 10 + i) % keys)
}

/// Read `kill`/`p` from its current start to its end; a 416 (retention moved the start
/// meanwhile) starts over from the new start, any other error fails. Returns (start,
/// values in offset order), checking the offsets are dense.
async fn read_retained(c: &Client, p: u32) -> (u64, Vec<String>) {
    'again: loop {
        let d = c.describe_topic("kill").await.unwrap();
        let start = d.partitions[p as usize].start_offset;
        let mut offset = start;
        let mut values = Vec::new();
        loop {
            match c
                .fetch(
                    "kill",
                    p,
                    offset,
                    floe_client::FetchOptions {
                        max_records: Some(10_000),
                        ..Default::default()
                    },
                )
                .await
            {
                Ok(r) => {
                    for rec in r.records {
                        assert_eq!(rec.offset, offset, "gap in partition {p}");
                        offset += 1;
                        values.push(rec.value.unwrap());
                    }
                    if offset >= r.end_offset {
                        return (start, values);
                    }
                }
                Err(floe_client::ClientError::Api { status: 416, .. }) => continue 'again,
                Err(e) => panic!("fetch of partition {p} at {offset} failed: {e}"),
            }
        }
    }
}

/// Retention by size and compaction together on three agents, one killed with SIGKILL
/// per trial (RFC 0004; a budget of 2 000 bytes, so that retention runs whatever the volume
/// and the compression): records are dropped only from the front of a partition (below its
/// start offset); every acked record at or above the start is there, unchanged, once;
/// consumers reading from the start never see an error other than the documented 416 (the
/// start moved) nor a gap; the sweepers leave no unreferenced object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_retention_and_compaction_loses_nothing_retained() {
    let trials = common::kill_trials(10);
    let mut cl = Cluster::with_flags(
        3,
        &[
            &common::EAGER_COMPACTION[..],
            &[
                "--compaction-target-bytes",
                "20000",
                "--default-retention-bytes",
                "2000",
            ],
        ]
        .concat(),
    )
    .await;
    let _ = cl.client(0).create_topic("kill", 2).await.unwrap();
    let mut acked = BTreeMap::new();
    let mut moved_starts = 0;
    for t in 0..trials {
        let victim = t % 3;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let c = cl.client((victim + 1) % 3);
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut passes = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for p in 0..2 {
                        let _ = read_retained(&c, p).await;
                    }
                    passes += 1;
                }
                passes
            })
        };
        acked.extend(trial(&mut cl, t, victim).await);
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.await.unwrap() > 0);
    }
    let _ = until_every_object_is_referenced(&cl).await;
    let (mut lost, mut retained, mut dropped) = (0, 0, 0);
    for i in 0..3 {
        let c = cl.client(i);
        let mut seen = HashSet::new();
        for p in 0..2u32 {
            let (start, values) = read_retained(&c, p).await;
            if start > 0 {
                moved_starts += 1;
            }
            for v in &values {
                assert!(seen.insert(v.clone()), "duplicate record");
            }
            for ((_, o), v) in acked.iter().filter(|((ap, _), _)| *ap == p) {
                if *o < start {
                    dropped += 1;
                    continue;
                }
                retained += 1;
                match values.get((*o - start) as usize) {
                    Some(got) => assert_eq!(got, v, "acked record changed"),
                    None => lost += 1,
                }
            }
        }
    }
    assert_eq!(lost, 0, "acked records above the start lost");
    assert!(moved_starts > 0, "retention never ran");
    eprintln!(
        "retention + compaction kill -9 trials: {trials}; acked records: {}; checked above the start (x3 agents): {retained}; dropped by retention: {dropped}; lost: {lost}",
        acked.len()
    );
}

fn bucket_gets(m: &str) -> u64 {
    common::metric(m, r#"floe_object_store_requests_total{op="get"}"#)
}

/// Five produce requests of 20 records to `topic` (one partition) through `c`, one after
/// another (so each is its own segment); returns the values in offset order.
async fn produce_segments(c: &Client, topic: &str) -> Vec<String> {
    let mut all = Vec::new();
    for b in 0..5 {
        let vals: Vec<String> = (0..20).map(|i| format!("{topic}-{b}-{i}")).collect();
        let r = c
            .produce(topic, vals.iter().cloned().map(rec).collect())
            .await
            .unwrap();
        assert_eq!(r.offsets.len(), 20);
        all.extend(vals);
    }
    all
}

async fn values(c: &Client, topic: &str) -> Vec<String> {
    read_all(c, topic, 0)
        .await
        .into_iter()
        .map(|r| r.value.unwrap_or_default())
        .collect()
}

/// Peer reads (RFC 0006): an agent reads the segments another agent wrote from that
/// agent's cache, not from the bucket; when the writer is dead it reads the bucket
/// (connection refused), and when the writer restarted (empty cache) too (404); the
/// records are the same every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_reads_serve_fresh_segments_and_fall_back_to_the_bucket() {
    let mut cl = Cluster::with_flags(3, &["--peer-heartbeat-ms", "2000"]).await;
    let writer = cl.client(0);
    for t in ["hot", "dead", "restarted"] {
        let _ = writer.create_topic(t, 1).await.unwrap();
    }
    let hot = produce_segments(&writer, "hot").await;
    let dead = produce_segments(&writer, "dead").await;
    let restarted = produce_segments(&writer, "restarted").await;

    // Hit: agent 1 reads agent 0's segments from agent 0, no GET on the bucket.
    let before = cl.client(1).metrics().await.unwrap();
    assert_eq!(values(&cl.client(1), "hot").await, hot);
    let after = cl.client(1).metrics().await.unwrap();
    let hits = common::metric(&after, r#"floe_peer_reads_total{outcome="hit"}"#);
    assert!(hits >= 5, "peer hits {hits}:\n{after}");
    assert_eq!(
        bucket_gets(&after),
        bucket_gets(&before),
        "agent 1 read the bucket"
    );
    let served = writer.metrics().await.unwrap();
    assert!(common::metric(&served, r#"floe_peer_served_total{outcome="hit"}"#) >= hits);

    // Error: the writer is dead (its registration still fresh): agent 2 reads the bucket,
    // and asks the dead peer once — then not again for a heartbeat (5 segments, 1 error).
    let a0 = cl.agents[0].take().unwrap();
    tokio::task::spawn_blocking(move || a0.kill9())
        .await
        .unwrap();
    let before = cl.client(2).metrics().await.unwrap();
    assert_eq!(values(&cl.client(2), "dead").await, dead);
    let after = cl.client(2).metrics().await.unwrap();
    assert_eq!(
        common::metric(&after, r#"floe_peer_reads_total{outcome="error"}"#),
        1,
        "{after}"
    );
    assert!(bucket_gets(&after) > bucket_gets(&before));

    // Miss: the writer restarted (new port, empty cache) and registered again; once agent
    // 2 lists the directory again (every heartbeat) it asks the new address: 404.
    cl.agents[0] = Some(cl.start_agent(0));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(values(&cl.client(2), "restarted").await, restarted);
    let after = cl.client(2).metrics().await.unwrap();
    assert!(
        common::metric(&after, r#"floe_peer_reads_total{outcome="miss"}"#) >= 1,
        "{after}"
    );
    let served = cl.client(0).metrics().await.unwrap();
    assert!(common::metric(&served, r#"floe_peer_served_total{outcome="miss"}"#) >= 1);
}
