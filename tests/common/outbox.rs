//! The outbox relay's kill test (RFC 0005 §2), shared by the PostgreSQL (`outbox.rs`) and
//! SQLite (`outbox_sqlite.rs`) versions: relay processes, the kill loop, the check.

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use floe_client::Client;

use super::read_all;

/// Start `floe outbox run` on `db`; its log is appended to `log`.
pub(crate) fn relay(agent_url: &str, db: &str, id: &str, log: &std::path::Path) -> Child {
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
pub(crate) fn install(db: &str, ranges: &str) {
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

/// The rows the writers wrote: their ids per transaction, and whether it committed.
pub(crate) type Written = Vec<(Vec<String>, bool)>;

/// Two relays on `db`, one killed (SIGKILL) every 0.3–0.9 s and started again, until the
/// writers are done, `left()` (rows still in the outbox) is 0 and at least 10 kills
/// happened. Returns the number of kills.
pub(crate) async fn kill_relays_until_drained<F, Fut>(
    agent_url: &str,
    db: &str,
    log: &std::path::Path,
    writers_done: impl Fn() -> bool,
    left: F,
) -> usize
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = i64>,
{
    let mut relays = [
        Some(relay(agent_url, db, "r0", log)),
        Some(relay(agent_url, db, "r1", log)),
    ];
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
        relays[victim] = Some(relay(agent_url, db, &format!("r{victim}"), log));
        let n = left().await;
        if writers_done() && n == 0 && kills >= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relays did not drain the outbox: {n} rows left"
        );
    }
    // Let a relay that was publishing when the outbox emptied finish, then stop them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in relays.iter_mut().filter_map(Option::take) {
        let mut r = r;
        r.kill().unwrap();
        let _ = r.wait();
    }
    kills
}

/// Every committed row published exactly once, none rolled back, per aggregate in order
/// (payload `{"n": k}` counts 1, 2, … per aggregate) over `events.order` and
/// `events.customer` (3 partitions each). Prints a summary line.
pub(crate) async fn check_published(
    c: &Client,
    written: Written,
    kills: usize,
    log: &std::path::Path,
) {
    let mut want = HashSet::new();
    let mut rolled_back = HashSet::new();
    for (ids, ok) in written {
        if ok {
            want.extend(ids);
        } else {
            rolled_back.extend(ids);
        }
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for topic in ["events.order", "events.customer"] {
        for p in 0..3 {
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            for r in read_all(c, topic, p).await {
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
    let republished = std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches("republishing an unfinished batch")
        .count();
    eprintln!(
        "outbox: {} committed rows published once each ({total} records), {} rolled back, {kills} relay kills, {republished} unfinished batches republished",
        want.len(),
        rolled_back.len()
    );
}

/// The rows of writer `w`'s transaction `t`: (kind, aggregate id) of each of its `rows`.
pub(crate) fn txn_rows(w: usize, t: usize, rows: usize) -> Vec<(&'static str, String)> {
    (0..rows)
        .map(|i| {
            if i % 2 == 0 {
                ("order", format!("w{w}-o{}", (t + i) % 13))
            } else {
                ("customer", format!("w{w}-c{}", (t * 3 + i) % 5))
            }
        })
        .collect()
}

/// Wait (up to 30 s) until topic `invoice` partition 0 holds exactly three records whose
/// payloads count `{"n": 1}`, 2, 3 — in that order.
pub(crate) async fn three_invoices_arrive_in_order(c: &Client) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ns: Vec<u64> = read_all(c, "invoice", 0)
            .await
            .iter()
            .map(|r| {
                serde_json::from_str::<serde_json::Value>(r.value.as_deref().unwrap()).unwrap()["n"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        if ns.len() == 3 {
            assert_eq!(ns, [1, 2, 3]);
            return;
        }
        assert!(ns.len() < 3 && Instant::now() < deadline, "{ns:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
