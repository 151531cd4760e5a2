//! The transactional outbox relay on SQLite (RFC 0005 §2): an application whose database
//! is an SQLite file. Four writer threads commit business rows with outbox rows (every 7th
//! transaction rolls back) while two `floe outbox run --db sqlite://…` relays are killed
//! with SIGKILL at random points and restarted. Afterwards each topic holds exactly the
//! committed rows, once each, in per-aggregate order; rolled-back rows never appear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::AgentProc;
use common::outbox::{
    check_published, install, kill_relays_until_drained, three_invoices_arrive_in_order, txn_rows,
};

const WRITERS: usize = 4;
const TXNS_PER_WRITER: usize = 300;
const ROWS_PER_TXN: usize = 5;

fn open(path: &std::path::Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(30)).unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_relays_killed_at_random_publish_every_committed_row_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let agent = AgentProc::start(dir.path(), &["--linger-ms", "5"]);
    let c = agent.client();
    for t in ["events.order", "events.customer"] {
        let _ = c.create_topic(t, 3).await.unwrap();
    }
    let file = dir.path().join("app.db");
    let db = format!("sqlite://{}", file.display());
    install(&db, "16");
    open(&file)
        .execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
        .unwrap();
    let log = dir.path().join("relays.log");
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let file = file.clone();
        writers.push(std::thread::spawn(move || {
            let mut conn = open(&file);
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            let mut written = Vec::new();
            for t in 0..TXNS_PER_WRITER {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .unwrap();
                let mut ids = Vec::new();
                let mut staged = next.clone();
                for (kind, agg) in txn_rows(w, t, ROWS_PER_TXN) {
                    let n = staged.entry(agg.clone()).or_default();
                    *n += 1;
                    let _ = tx
                        .execute("INSERT INTO orders (note) VALUES (?1)", [&agg])
                        .unwrap();
                    let payload = serde_json::json!({"n": *n, "writer": w});
                    ids.push(
                        floe_outbox::write_event_sqlite(
                            &tx, "outbox", kind, &agg, "changed", &payload,
                        )
                        .unwrap(),
                    );
                }
                if t % 7 == 3 {
                    tx.rollback().unwrap();
                    written.push((ids, false));
                } else {
                    tx.commit().unwrap();
                    next = staged;
                    written.push((ids, true));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            written
        }));
    }
    let counter = open(&file);
    let counter = std::sync::Mutex::new(counter);
    let kills = kill_relays_until_drained(
        &agent.url,
        &db,
        &log,
        || writers.iter().all(|w| w.is_finished()),
        || async {
            counter
                .lock()
                .unwrap()
                .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
                .unwrap()
        },
    )
    .await;
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.join().unwrap());
    }
    check_published(&c, written, kills, &log).await;
    assert!(agent.terminate().success());
}

/// `floe serve --outbox-db sqlite://…`: the relay runs inside the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_relay_runs_inside_floe_serve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.db");
    let db = format!("sqlite://{}", file.display());
    install(&db, "1");
    let agent = AgentProc::start(dir.path(), &["--outbox-db", &db, "--linger-ms", "5"]);
    let c = agent.client();
    let _ = c.create_topic("invoice", 1).await.unwrap();
    let mut conn = open(&file);
    let tx = conn.transaction().unwrap();
    for n in 1..=3 {
        let _ = floe_outbox::write_event_sqlite(
            &tx,
            "outbox",
            "invoice",
            "inv-1",
            "issued",
            &serde_json::json!({ "n": n }),
        )
        .unwrap();
    }
    tx.commit().unwrap();
    three_invoices_arrive_in_order(&c).await;
    assert!(agent.terminate().success());
}
