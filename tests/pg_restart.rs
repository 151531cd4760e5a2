//! PostgreSQL restarted mid-load: producers get 503 while it is down, nothing acked is lost,
//! and the agent recovers by itself. Ignored in the main run because it restarts the shared
//! PostgreSQL server; tests/run-all.sh runs it alone afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{AgentProc, fresh_bucket_url, fresh_pg_db, read_all};
use floe_core::api::ProduceRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "restarts PostgreSQL; run alone: cargo nextest run --test pg_restart --run-ignored only"]
async fn postgres_restart_mid_load_loses_nothing_and_recovers() {
    let bucket = fresh_bucket_url();
    let index = fresh_pg_db().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start_shared(dir.path(), &bucket, &index, &["--linger-ms", "10"]);
    let c = agent.client();
    c.create_topic("pg", 1).await.unwrap();
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
                        acked.insert(r.offsets[0].offset, v);
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
    c.produce(
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
