//! PostgreSQL restarted mid-load: producers get 503 while it is down, nothing acked is lost,
//! and the agent recovers by itself. Ignored in the main run because it restarts the shared
//! PostgreSQL server; tests/run-all.sh runs it alone afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{AgentProc, fresh_bucket_url, fresh_pg_db, read_all};
use floe_api::ProduceRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts PostgreSQL; run alone: cargo nextest run --test pg_restart --run-ignored only"]
async fn postgres_restart_mid_load_loses_nothing_and_recovers() {
    let bucket = fresh_bucket_url();
    let index = fresh_pg_db().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start_shared(dir.path(), &bucket, &index, &["--linger-ms", "10"]);
    let c = agent.client();
    let _ = c.create_topic("pg", 1).await.unwrap();
    let producer = {
        let c = c.clone();
        tokio::spawn(async move {
            let mut acked = BTreeMap::new();
            let (mut ok, mut failed) = (0, 0);
            let end = Instant::now() + Duration::from_secs(12);
            let mut n = 0;
            while Instant::now() < end {
                n += 1;
                let v = format!("r{n}");
                match c
                    .produce(
                        "pg",
                        vec![ProduceRecord {
                            value: Some(v.clone()),
                            ..Default::default()
                        }],
                    )
                    .await
                {
                    Ok(r) => {
                        let _ = acked.insert(r.offsets[0].offset, v);
                        ok += 1;
                    }
                    Err(e) => {
                        assert!(e.is_retryable(), "unexpected error {e}");
                        failed += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            (acked, ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ver = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let st = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            ver.to_str().unwrap(),
            "main",
            "restart",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let (acked, ok, failed) = producer.await.unwrap();
    eprintln!("postgres restart: {ok} produces acked, {failed} failed with 503 during the restart");
    assert!(ok > 0);
    // Recovered: a produce after the restart works.
    let _ = c
        .produce(
            "pg",
            vec![ProduceRecord {
                value: Some("after".into()),
                ..Default::default()
            }],
        )
        .await
        .unwrap();
    let got = read_all(&c, "pg", 0).await;
    for (o, v) in &acked {
        assert_eq!(
            got.get(*o as usize).and_then(|r| r.value.as_ref()),
            Some(v),
            "acked offset {o} lost"
        );
    }
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
    }
}

/// Stops (SIGSTOP) PostgreSQL processes and resumes them when dropped, even when an
/// assertion fails.
struct Frozen(Vec<i32>);

impl Frozen {
    fn signal(pids: &[i32], sig: &str) {
        for pid in pids {
            let _ = std::process::Command::new("kill")
                .args([sig, &pid.to_string()])
                .status();
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        Self::signal(&self.0, "-CONT");
    }
}

/// PostgreSQL hung (its processes stopped, not down) while a producer waits: the producer
/// gets a 503 within the produce deadline, `/readyz` answers 503 within about a second
/// naming the index, and the commit the agent abandoned does not land when PostgreSQL
/// wakes up (the index checks the commit deadline inside the transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops PostgreSQL; run alone: cargo nextest run --test pg_restart --run-ignored only"]
async fn postgres_hung_answers_within_deadlines_and_commits_nothing_late() {
    let index = fresh_pg_db().await;
    let db = index.rsplit_once('/').unwrap().1.to_string();
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(
        dir.path(),
        &[
            "--index",
            &index,
            "--linger-ms",
            "10",
            "--produce-timeout-ms",
            "3000",
        ],
    );
    let c = agent.client();
    let _ = c.create_topic("hang", 1).await.unwrap();
    let rec = |v: &str| ProduceRecord {
        value: Some(v.into()),
        ..Default::default()
    };
    assert_eq!(
        c.produce("hang", vec![rec("before")])
            .await
            .unwrap()
            .offsets[0]
            .offset,
        0
    );

    let admin_url = std::env::var("FLOE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (admin, conn) = tokio_postgres::connect(&admin_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    drop(tokio::spawn(conn));
    let mut pids: Vec<i32> = admin
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!pids.is_empty(), "the agent's connections");
    let data_dir: String = admin
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let postmaster: i32 = std::fs::read_to_string(format!("{data_dir}/postmaster.pid"))
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // The postmaster too, so that a fresh connection cannot route around the hang.
    pids.push(postmaster);
    let hung_at = Instant::now();
    Frozen::signal(&pids, "-STOP");
    let frozen = Frozen(pids);

    let http = reqwest::Client::new();
    let started = Instant::now();
    let resp = http
        .post(format!("{}/v1/topics/hang/records", agent.url))
        .header("content-type", "application/json")
        .body(r#"{"records":[{"value":"during"}]}"#)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        [
            "deadline_exceeded",
            "commit_outcome_unknown",
            "index_unavailable"
        ]
        .contains(&body["error"]["code"].as_str().unwrap()),
        "{body}"
    );
    assert!(
        took < Duration::from_secs(6),
        "produce answered after {took:?}"
    );

    let started = Instant::now();
    let resp = http
        .get(format!("{}/readyz", agent.url))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "index_unavailable", "{body}");
    assert!(
        took < Duration::from_millis(2500),
        "/readyz answered after {took:?}"
    );

    // Stay hung well past the produce deadline, then wake PostgreSQL up.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(hung_at.elapsed())).await;
    drop(frozen);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Recovered, and the abandoned commit never landed: "after" takes offset 1.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        match c.produce("hang", vec![rec("after")]).await {
            Ok(r) => break r.offsets[0].offset,
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("produce after the hang: {e}"),
        }
    };
    let got: Vec<String> = read_all(&c, "hang", 0)
        .await
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(got, vec!["before", "after"], "nothing committed late");
    assert_eq!(after, 1);
}

/// The lost ack across agents (RFC 0003 part 2): agent A commits a producer's request in
/// the shared PostgreSQL index but its answer is lost (fault hook after the commit); the
/// producer fails over to agent B with the same sequences and is answered with A's offsets
/// — a replay, nothing written. Not ignored: it leaves the server running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answer_on_one_agent_is_replayed_by_another() {
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    let index_url = fresh_pg_db().await;
    let dir = tempfile::tempdir().unwrap();
    let store = || -> Arc<dyn object_store::ObjectStore> {
        Arc::new(
            object_store::local::LocalFileSystem::new_with_prefix(dir.path())
                .unwrap()
                .with_fsync(true),
        )
    };
    let config = |id: &str| floe_agent::AgentConfig {
        listen: "127.0.0.1:0".into(),
        linger: Duration::from_millis(5),
        agent_id: id.into(),
        ..floe_agent::AgentConfig::default()
    };
    let faulty = floe_agent::faults::FaultIndex::new(floe_index::open(&index_url).await.unwrap());
    let lose = faulty.lose_commit_answers();
    let a = floe_agent::Agent::start_with(config("a"), store(), Arc::new(faulty))
        .await
        .unwrap();
    let b = floe_agent::Agent::start_with(
        config("b"),
        store(),
        floe_index::open(&index_url).await.unwrap(),
    )
    .await
    .unwrap();
    let ca = floe_client::Client::new(&format!("http://{}", a.addr)).unwrap();
    let cb = floe_client::Client::new(&format!("http://{}", b.addr)).unwrap();
    let _ = ca.create_topic("x", 1).await.unwrap();
    let mut p =
        floe_client::IdempotentProducer::new(ca.clone(), Some("svc")).with_failover([cb.clone()]);
    let rec = |v: &str| ProduceRecord {
        value: Some(v.into()),
        ..Default::default()
    };
    let first = p.send("x", vec![rec("0"), rec("1")]).await.unwrap();
    lose.store(1, Ordering::SeqCst);
    let second = p.send("x", vec![rec("2"), rec("3")]).await.unwrap();
    assert_eq!(lose.load(Ordering::SeqCst), 0, "the fault fired on agent A");
    let stats = p.stats();
    assert_eq!(
        (stats.retries, stats.replays),
        (1, 1),
        "one retry, on B, a replay"
    );
    assert_eq!(
        second.offsets.iter().map(|o| o.offset).collect::<Vec<_>>(),
        vec![2, 3],
        "the offsets A committed"
    );
    assert_eq!(first.offsets[1].offset, 1);
    let third = p.send("x", vec![rec("4")]).await.unwrap();
    assert_eq!(third.offsets[0].offset, 4);
    let got = read_all(&cb, "x", 0).await;
    let values: Vec<_> = got.iter().filter_map(|r| r.value.clone()).collect();
    assert_eq!(values, vec!["0", "1", "2", "3", "4"], "each record once");
}
