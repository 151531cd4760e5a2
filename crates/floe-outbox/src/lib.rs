//! The transactional outbox relay (RFC 0005 §2): an application writes its business rows
//! and an *outbox* row (Debezium's layout: `id`, `aggregatetype`, `aggregateid`, `type`,
//! `payload`) in one local transaction; the relay publishes every committed outbox row to
//! a Floe topic exactly once, in per-aggregate order, then deletes it.
//!
//! - **Order.** [`install`] adds a `seq` column filled by a trigger that holds a
//!   transaction-scoped advisory lock per aggregate: rows of one aggregate commit in `seq`
//!   order. The relay keeps no cursor — it reads the rows *present*, ordered by
//!   `(aggregateid, seq)` — so a row that commits late is read later, never skipped, and
//!   never published before an earlier row of its aggregate (those are committed, hence
//!   present or already published).
//! - **Exactly once.** Per hash range of `aggregateid` the relay holds a lease and a
//!   producer session (RFC 0003) in `floe_outbox_relay`. It stores the *intent* — the row
//!   ids of the batch, per topic, with the sequences they get — before producing, and
//!   deletes the rows and clears the intent in one transaction after the acks. A relay
//!   killed in between finds the intent and sends exactly the same requests again; the
//!   index answers them as duplicates. The row id is also a record header.
//! - **Several relays.** Only a range's lease holder reads it (no `SKIP LOCKED`, which
//!   reorders an aggregate's rows); a paused relay whose lease was taken is fenced by the
//!   lease check in its delete transaction and by its producer sequences.
//! - **Wake-up.** An insert trigger `NOTIFY`s; the relay `LISTEN`s and polls as a fallback.
//! - **SQLite** (`sqlite://PATH`, [`sqlite`]): the same relay over an SQLite file, where
//!   one writer at a time makes `seq` (the rowid) commit-ordered; one range, polling.

mod pg;
pub mod sqlite;

pub use pg::{install, write_event};
pub use sqlite::write_event_sqlite;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use floe_api::{ProduceRecord, ProducerSessionInfo};
use floe_client::{Client, ClientError};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_postgres::NoTls;
use tracing::{Instrument, debug, info, info_span, warn};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("floe: {0}")]
    Floe(#[from] ClientError),
    #[error("{0}")]
    Invalid(String),
    #[error("relay state is corrupt: {0}")]
    Corrupt(String),
}

pub type Result<T, E = OutboxError> = std::result::Result<T, E>;

/// How a relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The outbox table (an SQL identifier: letters, digits, `_`).
    pub table: String,
    /// Topic of a row: `{aggregatetype}` is replaced by the row's column.
    pub topic_template: String,
    /// Rows read per batch (one intent, one produce request per topic).
    pub batch: usize,
    /// How long a range's lease lasts without renewal.
    pub lease: Duration,
    /// Poll interval when no notification arrives.
    pub poll: Duration,
    /// This relay's name in the leases.
    pub relay_id: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            table: "outbox".into(),
            topic_template: "{aggregatetype}".into(),
            batch: 1000,
            lease: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            relay_id: "relay".into(),
        }
    }
}

/// An SQL identifier we format into statements: `[A-Za-z_][A-Za-z0-9_]{0,40}`.
pub fn check_table(name: &str) -> Result<()> {
    let ok = name.len() <= 40
        && name
            .chars()
            .enumerate()
            .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()))
        && !name.is_empty();
    if ok {
        Ok(())
    } else {
        Err(OutboxError::Invalid(format!(
            "outbox table {name:?}: use letters, digits and _ (at most 40, not starting with a digit)"
        )))
    }
}

/// The topic of a row.
pub fn topic_for(template: &str, aggregatetype: &str) -> String {
    template.replace("{aggregatetype}", aggregatetype)
}

/// Bytes of record data per produce request at most (the agent's default body limit is
/// 16 MiB; JSON escaping can double a payload).
const REQUEST_BYTES: usize = 4 * 1024 * 1024;
/// Records per produce request at most (the agent's default is 10 000).
const REQUEST_RECORDS: usize = 5000;

/// Split a topic's rows into requests within [`REQUEST_BYTES`] and [`REQUEST_RECORDS`]
/// (a row larger than that alone goes alone; the agent's record limit decides on it).
fn chunks<'a>(rows: &'a [&'a Row]) -> Vec<&'a [&'a Row]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in rows.iter().enumerate() {
        let size = r.payload.len()
            + r.aggregateid.len()
            + r.id.len()
            + r.kind.len()
            + r.aggregatetype.len();
        if i > start && (bytes + size > REQUEST_BYTES || i - start >= REQUEST_RECORDS) {
            out.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < rows.len() {
        out.push(&rows[start..]);
    }
    out
}

/// One produce request of a batch: the rows (by id, in `(aggregateid, seq)` order) that go
/// to `topic`, and the first sequence of the request in each partition it writes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Request {
    topic: String,
    ids: Vec<String>,
    sequences: BTreeMap<u32, i64>,
}

/// A batch about to be published, stored before the first produce.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Intent {
    requests: Vec<Request>,
    /// Next sequence per "topic/partition" once the batch is published.
    next: BTreeMap<String, i64>,
}

/// What a range's state row holds.
#[derive(Debug, Clone)]
pub(crate) struct RangeState {
    session: Option<ProducerSessionInfo>,
    seqs: BTreeMap<String, i64>,
    intent: Option<Intent>,
}

/// A row read from the outbox.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    id: String,
    aggregatetype: String,
    aggregateid: String,
    kind: String,
    payload: String,
}

/// What a relay changes in a range's state row, only while it holds the lease.
#[derive(Debug, Clone)]
pub(crate) enum Update {
    /// A new producer session: sequences start again, no intent.
    NewSession(ProducerSessionInfo),
    /// The session is no longer accepted: the next pass starts a new one.
    DropSession,
    /// The batch about to be published (JSON of [`Intent`]).
    Intent(String),
}

/// The outbox database, as the relay uses it (PostgreSQL or SQLite). Every call that
/// changes relay state checks the lease (`owner`, not expired) in the same statement or
/// transaction, and answers `false` when it is lost.
#[async_trait::async_trait]
pub(crate) trait Db: Send + Sync {
    /// The hash ranges of the table (fixed at install).
    async fn ranges(&self, table: &str) -> Result<Vec<i32>>;
    /// The ranges (of `n`) that have rows.
    async fn busy_ranges(&self, table: &str, n: i32) -> Result<HashSet<i32>>;
    /// Take or renew range `r`'s lease; its state when this relay holds it.
    async fn lease(
        &self,
        table: &str,
        r: i32,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<RangeState>>;
    async fn update(&self, table: &str, r: i32, owner: &str, u: Update) -> Result<bool>;
    /// The next rows of range `r` of `n`, per aggregate in commit order.
    async fn read(&self, table: &str, r: i32, n: i32, limit: i64) -> Result<Vec<Row>>;
    async fn rows_by_id(&self, table: &str, ids: &[String]) -> Result<HashMap<String, Row>>;
    /// Delete the published rows, store the sequences (`next`, JSON) and clear the
    /// intent, in one transaction; `false` (nothing changed) when the lease is lost.
    async fn finish(
        &self,
        table: &str,
        r: i32,
        owner: &str,
        ids: &[String],
        next: &str,
    ) -> Result<bool>;
}

/// Decode a range's state row: (producer id, epoch, seqs JSON, intent JSON).
pub(crate) fn range_state(
    producer_id: Option<i64>,
    epoch: Option<i64>,
    seqs: &str,
    intent: Option<&str>,
) -> Result<RangeState> {
    let session = match (producer_id, epoch) {
        (Some(producer_id), Some(epoch)) => Some(ProducerSessionInfo {
            producer_id,
            epoch: u32::try_from(epoch).map_err(|_| OutboxError::Corrupt("epoch".into()))?,
        }),
        _ => None,
    };
    let seqs =
        serde_json::from_str(seqs).map_err(|e| OutboxError::Corrupt(format!("seqs: {e}")))?;
    let intent = intent
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| OutboxError::Corrupt(format!("intent: {e}")))?;
    Ok(RangeState {
        session,
        seqs,
        intent,
    })
}

/// The relay: takes the leases it can, publishes each held range's rows, waits for a
/// notification (PostgreSQL) or the poll interval, until `shutdown`. `db_url` is
/// `postgres://…` or `sqlite://PATH`.
pub async fn run(
    db_url: &str,
    agent: Client,
    config: RelayConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    check_table(&config.table)?;
    let wake = std::sync::Arc::new(Notify::new());
    if let Some(path) = db_url.strip_prefix("sqlite://") {
        let db = sqlite::SqliteDb::open(path).await?;
        let relay = Relay {
            db: Box::new(db),
            agent,
            config,
            partitions: HashMap::new(),
        };
        return relay.serve(&wake, &mut shutdown).await;
    }
    let (db, driver) = pg::PgDb::connect(db_url, &config.table, wake.clone()).await?;
    let relay = Relay {
        db: Box::new(db),
        agent,
        config,
        partitions: HashMap::new(),
    };
    let result = relay.serve(&wake, &mut shutdown).await;
    driver.abort();
    result
}

/// Create the outbox table and the relay's state (see [`pg::install`] and
/// [`sqlite::install`]) in the database at `db_url` (`postgres://…` or `sqlite://PATH`).
pub async fn install_url(db_url: &str, table: &str, ranges: u32) -> Result<()> {
    if let Some(path) = db_url.strip_prefix("sqlite://") {
        return sqlite::install(path, table).await;
    }
    let (db, conn) = tokio_postgres::connect(db_url, NoTls).await?;
    let driver = tokio::spawn(conn);
    let r = pg::install(&db, table, ranges).await;
    drop(db);
    let _ = driver.await;
    r
}

struct Relay {
    db: Box<dyn Db>,
    agent: Client,
    config: RelayConfig,
    partitions: HashMap<String, u32>,
}

impl Relay {
    async fn serve(mut self, wake: &Notify, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let table = self.config.table.clone();
        let ranges = self.db.ranges(&table).await?;
        if ranges.is_empty() {
            return Err(OutboxError::Invalid(format!(
                "no relay state for table {table:?}: run `floe outbox install` first"
            )));
        }
        let n = ranges.len() as i32;
        info!(table = %table, ranges = n, relay = %self.config.relay_id, "outbox relay running");
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX / 4);
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let mut published = 0usize;
            // Only ranges with rows present are leased and read (one indexed query when
            // idle); an unfinished batch's rows are present until it is finished.
            let busy = self.db.busy_ranges(&table, n).await?;
            for &r in ranges.iter().filter(|r| busy.contains(r)) {
                let Some(state) = self
                    .db
                    .lease(&table, r, &self.config.relay_id, lease_ms)
                    .await?
                else {
                    continue;
                };
                match self
                    .pump(r, n, state)
                    .instrument(info_span!("outbox_range", range = r))
                    .await
                {
                    Ok(k) => published += k,
                    Err(e) => warn!(range = r, error = %e, "outbox batch failed; will retry"),
                }
            }
            if published > 0 {
                continue; // more may be waiting
            }
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(self.config.poll) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Change range `r`'s state while this relay holds its lease.
    async fn guarded(&self, r: i32, u: Update) -> Result<()> {
        if !self
            .db
            .update(&self.config.table, r, &self.config.relay_id, u)
            .await?
        {
            return Err(OutboxError::Invalid(format!(
                "lease of range {r} lost; another relay goes on"
            )));
        }
        Ok(())
    }

    /// Publish range `r`: an unfinished intent first (exactly the same requests), then
    /// the next batch of present rows. Returns the rows published.
    async fn pump(&mut self, r: i32, n: i32, mut st: RangeState) -> Result<usize> {
        let session = match st.session {
            Some(s) => s,
            None => {
                let s = self
                    .agent
                    .init_producer(Some(&format!("outbox.{}.{r}", self.config.table)))
                    .await?;
                // A new session starts at sequence 0; an unfinished batch of the old one is
                // simply read again (its rows are still there).
                self.guarded(r, Update::NewSession(s)).await?;
                st.seqs.clear();
                st.intent = None;
                s
            }
        };
        if let Some(intent) = st.intent.take() {
            info!(
                range = r,
                requests = intent.requests.len(),
                "republishing an unfinished batch"
            );
            let rows = self
                .db
                .rows_by_id(&self.config.table, &intent_ids(&intent))
                .await?;
            self.publish(r, &intent, &rows, session).await?;
            return self.finish(r, &intent).await;
        }
        let limit = i64::try_from(self.config.batch).unwrap_or(1000);
        let rows = self.db.read(&self.config.table, r, n, limit).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let intent = self.plan(&rows, &st.seqs).await?;
        let json =
            serde_json::to_string(&intent).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
        self.guarded(r, Update::Intent(json)).await?;
        let by_id: HashMap<String, Row> = rows.into_iter().map(|x| (x.id.clone(), x)).collect();
        self.publish(r, &intent, &by_id, session).await?;
        self.finish(r, &intent).await
    }

    async fn partitions(&mut self, topic: &str) -> Result<u32> {
        if let Some(p) = self.partitions.get(topic) {
            return Ok(*p);
        }
        let d = self.agent.describe_topic(topic).await?;
        let p = u32::try_from(d.partitions.len()).unwrap_or(1).max(1);
        let _ = self.partitions.insert(topic.to_string(), p);
        Ok(p)
    }

    /// Requests per topic of at most [`REQUEST_BYTES`] / [`REQUEST_RECORDS`] (well under
    /// the agent's default body and request limits); each record goes to its key's
    /// partition and gets the next sequence there.
    async fn plan(&mut self, rows: &[Row], seqs: &BTreeMap<String, i64>) -> Result<Intent> {
        let mut next = seqs.clone();
        let mut by_topic: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
        for row in rows {
            by_topic
                .entry(topic_for(&self.config.topic_template, &row.aggregatetype))
                .or_default()
                .push(row);
        }
        let mut requests = Vec::new();
        for (topic, rows) in by_topic {
            let parts = self.partitions(&topic).await?;
            for rows in chunks(&rows) {
                let mut counts: BTreeMap<u32, i64> = BTreeMap::new();
                for row in rows {
                    *counts
                        .entry(floe_core::partitioner::partition_for_key(
                            row.aggregateid.as_bytes(),
                            parts,
                        ))
                        .or_default() += 1;
                }
                let mut sequences = BTreeMap::new();
                for (p, c) in counts {
                    let k = format!("{topic}/{p}");
                    let first = next.get(&k).copied().unwrap_or(0);
                    let _ = sequences.insert(p, first);
                    let _ = next.insert(k, first + c);
                }
                requests.push(Request {
                    topic: topic.clone(),
                    ids: rows.iter().map(|x| x.id.clone()).collect(),
                    sequences,
                });
            }
        }
        Ok(Intent { requests, next })
    }

    /// Send the intent's requests (a duplicate answer means an earlier attempt landed).
    /// A session the index no longer accepts (fenced by another `outbox.<table>.<range>`
    /// producer, or expired) is dropped: the next pass starts a new one and sends the
    /// batch again — which may then be written twice (logged).
    async fn publish(
        &mut self,
        r: i32,
        intent: &Intent,
        rows: &HashMap<String, Row>,
        session: ProducerSessionInfo,
    ) -> Result<()> {
        for q in &intent.requests {
            let parts = self.partitions(&q.topic).await?;
            let mut records = Vec::with_capacity(q.ids.len());
            for id in &q.ids {
                let row = rows.get(id).ok_or_else(|| {
                    OutboxError::Corrupt(format!("outbox row {id} of an unfinished batch is gone"))
                })?;
                records.push(ProduceRecord {
                    key: Some(row.aggregateid.clone()),
                    value: Some(row.payload.clone()),
                    headers: Some(BTreeMap::from([
                        ("id".to_string(), row.id.clone()),
                        ("type".to_string(), row.kind.clone()),
                        ("aggregatetype".to_string(), row.aggregatetype.clone()),
                    ])),
                    partition: Some(i64::from(floe_core::partitioner::partition_for_key(
                        row.aggregateid.as_bytes(),
                        parts,
                    ))),
                    ..Default::default()
                });
            }
            let sent = self
                .agent
                .produce_sequenced(&q.topic, records, session, &q.sequences)
                .await;
            let (_, replayed) = match sent {
                Err(e) if matches!(e.code(), Some("producer_fenced" | "unknown_producer")) => {
                    warn!(range = r, error = %e, "producer session lost: a new one is started and the batch sent again (it may be written twice)");
                    self.guarded(r, Update::DropSession).await?;
                    return Err(e.into());
                }
                other => other?,
            };
            if replayed {
                debug!(topic = %q.topic, "batch was published before; not written again");
            }
        }
        Ok(())
    }

    /// Delete the published rows, store the sequences and clear the intent — in one
    /// transaction, only while this relay holds the lease.
    async fn finish(&mut self, r: i32, intent: &Intent) -> Result<usize> {
        let ids = intent_ids(intent);
        let next =
            serde_json::to_string(&intent.next).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
        if !self
            .db
            .finish(&self.config.table, r, &self.config.relay_id, &ids, &next)
            .await?
        {
            return Err(OutboxError::Invalid(format!(
                "lease of range {r} lost before the batch was finished; its new holder republishes it"
            )));
        }
        Ok(ids.len())
    }
}

fn intent_ids(intent: &Intent) -> Vec<String> {
    intent
        .requests
        .iter()
        .flat_map(|q| q.ids.iter().cloned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(check_table("outbox").is_ok());
        assert!(check_table("order_events_2").is_ok());
        for bad in ["", "2x", "a-b", "a;drop", "o\"x", &"x".repeat(41)] {
            assert!(check_table(bad).is_err(), "{bad:?}");
        }
        assert_eq!(topic_for("events.{aggregatetype}", "order"), "events.order");
    }

    #[test]
    fn requests_stay_within_their_limits() {
        let row = |n: usize| Row {
            id: "i".into(),
            aggregatetype: String::new(),
            aggregateid: String::new(),
            kind: String::new(),
            payload: "x".repeat(n),
        };
        let big: Vec<Row> = (0..10).map(|_| row(REQUEST_BYTES / 3)).collect();
        let refs: Vec<&Row> = big.iter().collect();
        let sizes: Vec<usize> = chunks(&refs).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [2, 2, 2, 2, 2]);
        let many: Vec<Row> = (0..12_000).map(|_| row(1)).collect();
        let refs: Vec<&Row> = many.iter().collect();
        let sizes: Vec<usize> = chunks(&refs).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [5000, 5000, 2000]);
        let huge = [row(REQUEST_BYTES * 2)];
        let refs: Vec<&Row> = huge.iter().collect();
        assert_eq!(
            chunks(&refs).len(),
            1,
            "a row larger than the limit goes alone"
        );
        assert!(chunks(&[]).is_empty());
    }
}
