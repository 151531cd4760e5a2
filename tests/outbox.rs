//! The transactional outbox relay (RFC 0005 §2) against a real PostgreSQL and a real
//! `floe serve`: writers commit business rows with outbox rows (some transactions roll
//! back) while two `floe outbox run` relays are killed with SIGKILL at random points and
//! restarted, again and again. Afterwards each topic holds exactly the committed rows,
//! once each, in per-aggregate order; rolled-back rows never appear.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::outbox::{
    check_published, install, kill_relays_until_drained, three_invoices_arrive_in_order, txn_rows,
};
use common::{AgentProc, fresh_pg_db};

const WRITERS: usize = 4;
const TXNS_PER_WRITER: usize = 500;
const ROWS_PER_TXN: usize = 5;

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
                for (kind, agg) in txn_rows(w, t, ROWS_PER_TXN) {
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
    let kills = kill_relays_until_drained(
        &agent.url,
        &db,
        &log,
        || writers.iter().all(|w| w.is_finished()),
        || async {
            db_client
                .query_one("SELECT COUNT(*) FROM outbox", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
        },
    )
    .await;
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    check_published(&c, written, kills, &log).await;
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
    three_invoices_arrive_in_order(&c).await;
    assert!(agent.terminate().success());
}
