//! The transactional outbox relay (RFC 0005 §2) against a real PostgreSQL and a real
//! `floe serve`: writers commit business rows with outbox rows (some transactions roll
//! back) while two `floe outbox run` relays are killed with SIGKILL at random points and
//! restarted, again and again. Afterwards each topic holds exactly the committed rows,
//! once each, in per-aggregate order; rolled-back rows never appear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{AgentProc, fresh_pg_db, read_all};

const WRITERS: usize = 4;
const TXNS_PER_WRITER: usize = 500;
const ROWS_PER_TXN: usize = 5;

/// Start a relay; its log is appended to `log`.
fn relay(agent_url: &str, db: &str, id: &str, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(["outbox", "run", "--url", agent_url, "--db", db])
        .args(["--topic", "events.{aggregatetype}", "--batch", "200"])
        .args(["--lease-ms", "1500", "--poll-ms", "200", "--relay-id", id])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start floe outbox run")
}

/// `floe outbox install` on `db`.
fn install(db: &str, ranges: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_floe"))
        .args(["outbox", "install", "--db", db, "--ranges", ranges])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn pg(db: &str) -> tokio_postgres::Client {
    let (c, conn) = tokio_postgres::connect(db, tokio_postgres::NoTls)
        .await
        .unwrap();
    drop(tokio::spawn(conn));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_killed_at_random_publish_every_committed_row_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "5"]);
    let c = agent.client();
    for t in ["events.order", "events.customer"] {
        let _ = c.create_topic(t, 3).await.unwrap();
    }
    let db = fresh_pg_db().await;
    install(&db, "8");
    // A business table next to the outbox, written in the same transactions.
    pg(&db)
        .await
        .batch_execute("CREATE TABLE orders (id bigserial PRIMARY KEY, note text NOT NULL)")
        .await
        .unwrap();

    let log = dir.path().join("relays.log");
    let mut relays = [
        Some(relay(&agent.url, &db, "r0", &log)),
        Some(relay(&agent.url, &db, "r1", &log)),
    ];
    // Writers: each owns its aggregates; per aggregate a counter n that must arrive in
    // order. Every 7th transaction rolls back.
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let db = db.clone();
        writers.push(tokio::spawn(async move {
            let mut client = pg(&db).await;
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            let mut committed = Vec::new();
            for t in 0..TXNS_PER_WRITER {
                let tx = client.transaction().await.unwrap();
                let mut ids = Vec::new();
                let mut staged = next.clone();
                for i in 0..ROWS_PER_TXN {
                    let (kind, agg) = if i % 2 == 0 {
                        ("order", format!("w{w}-o{}", (t + i) % 13))
                    } else {
                        ("customer", format!("w{w}-c{}", (t * 3 + i) % 5))
                    };
                    let n = staged.entry(agg.clone()).or_default();
                    *n += 1;
                    let _ = tx
                        .execute("INSERT INTO orders (note) VALUES ($1)", &[&agg])
                        .await
                        .unwrap();
                    let payload = serde_json::json!({"n": *n, "writer": w});
                    let id =
                        floe_outbox::write_event(&tx, "outbox", kind, &agg, "changed", &payload)
                            .await
                            .unwrap();
                    ids.push(id);
                }
                if t % 7 == 3 {
                    tx.rollback().await.unwrap();
                    committed.push((ids, false));
                } else {
                    tx.commit().await.unwrap();
                    next = staged;
                    committed.push((ids, true));
                }
            }
            committed
        }));
    }
    // Kill a relay every 300-900 ms and start it again, while the writers write and until
    // the outbox is empty.
    let db_client = pg(&db).await;
    let mut kills = 0;
    let mut rng = 7u64;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        tokio::time::sleep(Duration::from_millis(300 + (rng >> 33) % 600)).await;
        let victim = ((rng >> 20) % 2) as usize;
        if let Some(mut r) = relays[victim].take() {
            r.kill().unwrap();
            let _ = r.wait();
            kills += 1;
        }
        relays[victim] = Some(relay(&agent.url, &db, &format!("r{victim}"), &log));
        let done = writers.iter().all(|w| w.is_finished());
        let left: i64 = db_client
            .query_one("SELECT COUNT(*) FROM outbox", &[])
            .await
            .unwrap()
            .get(0);
        if done && left == 0 && kills >= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relays did not drain the outbox: {left} rows left"
        );
    }
    let mut want = HashSet::new();
    let mut rolled_back = HashSet::new();
    for w in writers {
        for (ids, ok) in w.await.unwrap() {
            if ok {
                want.extend(ids);
            } else {
                rolled_back.extend(ids);
            }
        }
    }
    // Let a relay that was publishing when the outbox emptied finish, then stop them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in relays.iter_mut().filter_map(Option::take) {
        let mut r = r;
        r.kill().unwrap();
        let _ = r.wait();
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for topic in ["events.order", "events.customer"] {
        for p in 0..3 {
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            for r in read_all(&c, topic, p).await {
                total += 1;
                let id = r.headers["id"].clone();
                assert!(
                    !rolled_back.contains(&id),
                    "a rolled-back row was published"
                );
                assert!(want.contains(&id), "unknown row {id}");
                assert!(seen.insert(id.clone()), "row {id} published twice");
                let v: serde_json::Value =
                    serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
                let n = v["n"].as_u64().unwrap();
                let key = r.key.clone().unwrap();
                let prev = last.insert(key.clone(), n).unwrap_or(0);
                assert_eq!(n, prev + 1, "aggregate {key} out of order in {topic}/{p}");
            }
        }
    }
    assert_eq!(seen.len(), want.len(), "every committed row was published");
    let republished = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("republishing an unfinished batch")
        .count();
    eprintln!(
        "outbox: {} committed rows published once each ({total} records), {} rolled back, {kills} relay kills, {republished} unfinished batches republished",
        want.len(),
        rolled_back.len()
    );
    assert!(agent.terminate().success());
}

/// `floe serve --outbox-db`: the relay runs inside the agent, publishing through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_runs_inside_floe_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_pg_db().await;
    install(&db, "2");
    let agent = AgentProc::start(dir.path(), &["--outbox-db", &db, "--linger-ms", "5"]);
    let c = agent.client();
    let _ = c.create_topic("invoice", 1).await.unwrap();
    let mut client = pg(&db).await;
    let tx = client.transaction().await.unwrap();
    for n in 1..=3 {
        let _ = floe_outbox::write_event(
            &tx,
            "outbox",
            "invoice",
            "inv-1",
            "issued",
            &serde_json::json!({ "n": n }),
        )
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = read_all(&c, "invoice", 0).await;
        if got.len() == 3 {
            let ns: Vec<u64> = got
                .iter()
                .map(|r| {
                    serde_json::from_str::<serde_json::Value>(r.value.as_deref().unwrap()).unwrap()
                        ["n"]
                        .as_u64()
                        .unwrap()
                })
                .collect();
            assert_eq!(ns, [1, 2, 3]);
            break;
        }
        assert!(
            got.len() < 3 && Instant::now() < deadline,
            "{} records",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(agent.terminate().success());
}
