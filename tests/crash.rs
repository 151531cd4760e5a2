//! Durability: restarts and kill -9 under load lose no acked record, leave no holes, and
//! the sweeper removes segment objects that were never committed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::{AgentProc, read_all, rec, segment_files};
use floe_index::Index;

const FLAGS: &[&str] = &[
    "--linger-ms",
    "10",
    "--commit-deadline-ms",
    "1000",
    "--orphan-grace-ms",
    "2500",
    "--sweep-interval-ms",
    "200",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_every_acked_record() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), FLAGS);
    let c = agent.client();
    let _ = c.create_topic("r", 2).await.unwrap();
    let mut acked = BTreeMap::new();
    for b in 0..10 {
        let r = c
            .produce("r", (0..25).map(|i| rec(format!("{b}-{i}"))).collect())
            .await
            .unwrap();
        for (i, o) in r.offsets.into_iter().enumerate() {
            let _ = acked.insert((o.partition, o.offset), format!("{b}-{i}"));
        }
    }
    assert!(
        tokio::task::spawn_blocking(move || agent.terminate())
            .await
            .unwrap()
            .success()
    );
    let agent = AgentProc::start(dir.path(), FLAGS);
    let c = agent.client();
    for p in 0..2 {
        for r in read_all(&c, "r", p).await {
            assert_eq!(
                acked.remove(&(p, r.offset)),
                r.value,
                "partition {p} offset {}",
                r.offset
            );
        }
    }
    assert!(
        acked.is_empty(),
        "acked but missing after restart: {acked:?}"
    );
}

/// One kill -9 trial: producers run until the agent dies; returns what was acked.
async fn load_until_killed(
    agent: AgentProc,
    trial: usize,
    kill_after: Duration,
) -> BTreeMap<(u32, u64), String> {
    let c = agent.client();
    let mut tasks = Vec::new();
    for prod in 0..4 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            for b in 0..10_000 {
                let values: Vec<String> = (0..20)
                    .map(|i| format!("t{trial}-p{prod}-b{b}-{i}"))
                    .collect();
                match c
                    .produce("crash", values.iter().cloned().map(rec).collect())
                    .await
                {
                    Ok(r) => acked.extend(
                        r.offsets
                            .into_iter()
                            .zip(values)
                            .map(|(o, v)| ((o.partition, o.offset), v)),
                    ),
                    Err(_) => break,
                }
            }
            acked
        }));
    }
    tokio::time::sleep(kill_after).await;
    tokio::task::spawn_blocking(move || agent.kill9())
        .await
        .unwrap();
    let mut all = BTreeMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            assert!(all.insert(k, v).is_none(), "offset {k:?} acked twice");
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_loses_nothing_acked_and_orphans_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let agent = AgentProc::start(dir.path(), FLAGS);
        let _ = agent.client().create_topic("crash", 2).await.unwrap();
        agent.kill9();
    }
    let mut acked_total = BTreeMap::new();
    let trials = 3;
    for trial in 0..trials {
        let agent = AgentProc::start(dir.path(), FLAGS);
        let acked = load_until_killed(
            agent,
            trial,
            Duration::from_millis(400 + 350 * trial as u64),
        )
        .await;
        assert!(
            !acked.is_empty(),
            "trial {trial}: nothing was acked before the kill"
        );
        acked_total.extend(acked);
    }
    // Plant an orphan: a valid segment object that no index entry refers to.
    let files = segment_files(dir.path());
    assert!(!files.is_empty());
    let planted = dir
        .path()
        .join("bucket/segments/00000000-planted-orphan.parquet");
    let _ = std::fs::copy(&files[0], &planted).unwrap();

    let agent = AgentProc::start(dir.path(), FLAGS);
    let c = agent.client();
    let mut seen = HashSet::new();
    for p in 0..2 {
        let got = read_all(&c, "crash", p).await;
        for (i, r) in got.iter().enumerate() {
            assert_eq!(
                r.offset, i as u64,
                "partition {p} has a hole before offset {}",
                r.offset
            );
            let v = r.value.clone().unwrap();
            assert!(seen.insert(v.clone()), "record {v} appears twice");
        }
        for ((ap, ao), v) in acked_total.iter().filter(|((ap, _), _)| *ap == p) {
            let g = got
                .get(*ao as usize)
                .unwrap_or_else(|| panic!("acked ({ap}, {ao}) missing after kill -9"));
            assert_eq!(g.value.as_ref(), Some(v), "acked ({ap}, {ao}) changed");
        }
    }
    // The sweeper deletes the planted orphan (and any orphan the kills left) after the grace.
    let deadline = Instant::now() + Duration::from_secs(20);
    while planted.exists() {
        assert!(Instant::now() < deadline, "planted orphan not swept");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every segment object older than the grace that is left is referenced by the index.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let index = floe_index::SqliteIndex::open(&dir.path().join("index.db"))
        .await
        .unwrap();
    let grace = Duration::from_millis(2500);
    for f in segment_files(dir.path()) {
        let age = std::fs::metadata(&f)
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap_or_default();
        let key = format!("segments/{}", f.file_name().unwrap().to_str().unwrap());
        if age > grace + Duration::from_millis(1000) {
            assert!(
                index.segment_referenced(&key).await.unwrap(),
                "orphan {key} survived the sweeper"
            );
        }
    }
    // All acked records are still there after sweeping.
    for p in 0..2 {
        let got = read_all(&c, "crash", p).await;
        let n = acked_total.keys().filter(|(ap, _)| *ap == p).count();
        assert!(got.len() >= n);
    }
    eprintln!(
        "kill -9: {trials} trials, {} acked records, all present",
        acked_total.len()
    );
}
