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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use floe_api::{ProduceRecord, ProducerSessionInfo};
use floe_client::{Client, ClientError};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{Instrument, debug, info, info_span, warn};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
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

/// The range of a row among `n`: the same expression in the index and in the relay's
/// query, so the planner uses the index.
fn range_expr(n: i64) -> String {
    format!("((hashtext(aggregateid) & 2147483647) % {n})")
}

fn notify_channel(table: &str) -> String {
    format!("floe_outbox_{table}")
}

/// Milliseconds on the database's clock (leases use one clock for every relay).
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Create the outbox table (if missing), its ordering trigger and wake-up trigger, and
/// the relay's state with `ranges` hash ranges of `aggregateid`. Idempotent; the number
/// of ranges is fixed by the first install.
pub async fn install(db: &tokio_postgres::Client, table: &str, ranges: u32) -> Result<()> {
    check_table(table)?;
    if !(1..=1024).contains(&ranges) {
        return Err(OutboxError::Invalid(format!(
            "ranges must be between 1 and 1024, got {ranges}"
        )));
    }
    let ch = notify_channel(table);
    db.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            aggregatetype text NOT NULL,
            aggregateid text NOT NULL,
            type text NOT NULL,
            payload jsonb NOT NULL,
            seq bigint NOT NULL DEFAULT 0
         );
         CREATE INDEX IF NOT EXISTS {table}_by_aggregate ON {table} (aggregateid, seq);
         CREATE OR REPLACE FUNCTION {table}_floe_seq() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           -- One writer per aggregate at a time, to the end of its transaction: rows of
           -- an aggregate commit in seq order.
           PERFORM pg_advisory_xact_lock(hashtext('floe_outbox.{table}'), hashtext(NEW.aggregateid));
           SELECT COALESCE(MAX(seq), 0) + 1 INTO NEW.seq FROM {table} WHERE aggregateid = NEW.aggregateid;
           RETURN NEW;
         END $f$;
         DROP TRIGGER IF EXISTS {table}_floe_seq ON {table};
         CREATE TRIGGER {table}_floe_seq BEFORE INSERT ON {table}
           FOR EACH ROW EXECUTE FUNCTION {table}_floe_seq();
         CREATE OR REPLACE FUNCTION {table}_floe_notify() RETURNS trigger LANGUAGE plpgsql AS $f$
         BEGIN
           PERFORM pg_notify('{ch}', '');
           RETURN NULL;
         END $f$;
         DROP TRIGGER IF EXISTS {table}_floe_notify ON {table};
         CREATE TRIGGER {table}_floe_notify AFTER INSERT ON {table}
           FOR EACH STATEMENT EXECUTE FUNCTION {table}_floe_notify();
         CREATE TABLE IF NOT EXISTS floe_outbox_relay (
            tbl text NOT NULL,
            range integer NOT NULL,
            owner text NOT NULL DEFAULT '',
            lease_until bigint NOT NULL DEFAULT 0,
            producer_id bigint,
            epoch integer,
            seqs text NOT NULL DEFAULT '{{}}',
            intent text,
            PRIMARY KEY (tbl, range)
         );"
    ))
    .await?;
    let n: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM floe_outbox_relay WHERE tbl = $1",
            &[&table],
        )
        .await?
        .get(0);
    if n == 0 {
        let _ = db.execute(
            "INSERT INTO floe_outbox_relay (tbl, range) SELECT $1, r FROM generate_series(0, $2 - 1) r ON CONFLICT DO NOTHING",
            &[&table, &(ranges as i32)],
        )
        .await?;
    }
    // A relay reads one range in (aggregateid, seq) order: an index on exactly that
    // expression (the range count is fixed from the first install on).
    let n = if n == 0 { i64::from(ranges) } else { n };
    db.batch_execute(&format!(
        "CREATE INDEX IF NOT EXISTS {table}_by_range ON {table} ({expr}, aggregateid, seq)",
        expr = range_expr(n)
    ))
    .await?;
    Ok(())
}

/// [`install`] on a fresh connection to `db_url`.
pub async fn install_url(db_url: &str, table: &str, ranges: u32) -> Result<()> {
    let (db, conn) = tokio_postgres::connect(db_url, NoTls).await?;
    let driver = tokio::spawn(conn);
    let r = install(&db, table, ranges).await;
    drop(db);
    let _ = driver.await;
    r
}

/// Write one outbox row in the caller's own transaction (with its business rows): it is
/// published if and only if that transaction commits. Returns the row's id.
pub async fn write_event(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
    aggregatetype: &str,
    aggregateid: &str,
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<String> {
    check_table(table)?;
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO {table} (aggregatetype, aggregateid, type, payload) VALUES ($1, $2, $3, $4::text::jsonb) RETURNING id::text"
            ),
            &[&aggregatetype, &aggregateid, &event_type, &payload.to_string()],
        )
        .await?;
    Ok(row.get(0))
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
struct RangeState {
    session: Option<ProducerSessionInfo>,
    seqs: BTreeMap<String, i64>,
    intent: Option<Intent>,
}

/// A row read from the outbox.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    aggregatetype: String,
    aggregateid: String,
    kind: String,
    payload: String,
}

/// The relay: takes the leases it can, publishes each held range's rows, waits for a
/// notification or the poll interval, until `shutdown`.
pub async fn run(
    db_url: &str,
    agent: Client,
    config: RelayConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    check_table(&config.table)?;
    let (db, conn) = tokio_postgres::connect(db_url, NoTls).await?;
    // Notifications wake the loop; the connection is driven here.
    let wake = std::sync::Arc::new(Notify::new());
    let w = wake.clone();
    let driver = tokio::spawn(async move {
        let mut conn = conn;
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(_)) => w.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "outbox database connection ended");
                    break;
                }
            }
        }
    });
    db.batch_execute(&format!("LISTEN {}", notify_channel(&config.table)))
        .await?;
    let relay = Relay {
        db,
        agent,
        config,
        partitions: HashMap::new(),
    };
    let result = relay.serve(&wake, &mut shutdown).await;
    driver.abort();
    result
}

struct Relay {
    db: tokio_postgres::Client,
    agent: Client,
    config: RelayConfig,
    partitions: HashMap<String, u32>,
}

impl Relay {
    async fn serve(mut self, wake: &Notify, shutdown: &mut watch::Receiver<bool>) -> Result<()> {
        let ranges: Vec<i32> = self
            .db
            .query(
                "SELECT range FROM floe_outbox_relay WHERE tbl = $1 ORDER BY range",
                &[&self.config.table],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ranges.is_empty() {
            return Err(OutboxError::Invalid(format!(
                "no relay state for table {:?}: run `floe outbox install` first",
                self.config.table
            )));
        }
        let n = ranges.len() as i32;
        info!(table = %self.config.table, ranges = n, relay = %self.config.relay_id, "outbox relay running");
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let mut published = 0usize;
            // Only ranges with rows present are leased and read (one indexed query when
            // idle); an unfinished batch's rows are present until it is finished.
            let busy = self.busy_ranges(n).await?;
            for &r in ranges.iter().filter(|r| busy.contains(r)) {
                let Some(state) = self.lease(r).await? else {
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

    /// The ranges (of `n`) that have rows.
    async fn busy_ranges(&self, n: i32) -> Result<std::collections::HashSet<i32>> {
        let t = &self.config.table;
        Ok(self
            .db
            .query(
                &format!(
                    "SELECT DISTINCT {range}::integer FROM {t}",
                    range = range_expr(i64::from(n))
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Take or renew range `r`'s lease; its state when this relay holds it.
    async fn lease(&self, r: i32) -> Result<Option<RangeState>> {
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX / 4);
        let row = self
            .db
            .query_opt(
                &format!(
                    "UPDATE floe_outbox_relay SET owner = $3, lease_until = {NOW_MS} + $4
                     WHERE tbl = $1 AND range = $2 AND (owner = $3 OR lease_until < {NOW_MS})
                     RETURNING producer_id, epoch, seqs, intent"
                ),
                &[&self.config.table, &r, &self.config.relay_id, &lease_ms],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let session = match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i32>>(1)) {
            (Some(producer_id), Some(epoch)) => Some(ProducerSessionInfo {
                producer_id,
                epoch: u32::try_from(epoch).map_err(|_| OutboxError::Corrupt("epoch".into()))?,
            }),
            _ => None,
        };
        let seqs = serde_json::from_str(row.get::<_, &str>(2))
            .map_err(|e| OutboxError::Corrupt(format!("seqs: {e}")))?;
        let intent = row
            .get::<_, Option<&str>>(3)
            .map(serde_json::from_str)
            .transpose()
            .map_err(|e| OutboxError::Corrupt(format!("intent: {e}")))?;
        Ok(Some(RangeState {
            session,
            seqs,
            intent,
        }))
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
                self.guarded(
                    r,
                    "UPDATE floe_outbox_relay SET producer_id = $4, epoch = $5, seqs = '{}', intent = NULL WHERE tbl = $1 AND range = $2 AND owner = $3",
                    &[&s.producer_id, &(s.epoch as i32)],
                )
                .await?;
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
            let rows = self.rows_by_id(&intent).await?;
            self.publish(r, &intent, &rows, session).await?;
            return self.finish(r, &intent).await;
        }
        let rows = self.read(r, n).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let intent = self.plan(&rows, &st.seqs).await?;
        let json =
            serde_json::to_string(&intent).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
        self.guarded(
            r,
            "UPDATE floe_outbox_relay SET intent = $4 WHERE tbl = $1 AND range = $2 AND owner = $3",
            &[&json],
        )
        .await?;
        let by_id: HashMap<String, Row> = rows.into_iter().map(|x| (x.id.clone(), x)).collect();
        self.publish(r, &intent, &by_id, session).await?;
        self.finish(r, &intent).await
    }

    /// Run `sql` (parameters: table, range, owner, then `more`) only while this relay
    /// still holds the lease.
    async fn guarded(
        &self,
        r: i32,
        sql: &str,
        more: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
            vec![&self.config.table, &r, &self.config.relay_id];
        params.extend_from_slice(more);
        let sql = format!("{sql} AND lease_until > {NOW_MS}");
        if self.db.execute(&sql, &params).await? != 1 {
            return Err(OutboxError::Invalid(format!(
                "lease of range {r} lost; another relay goes on"
            )));
        }
        Ok(())
    }

    /// The next rows of range `r` of `n`, per aggregate in `seq` order.
    async fn read(&self, r: i32, n: i32) -> Result<Vec<Row>> {
        let t = &self.config.table;
        let limit = i64::try_from(self.config.batch).unwrap_or(1000);
        Ok(self
            .db
            .query(
                &format!(
                    "SELECT id::text, aggregatetype, aggregateid, type, payload::text FROM {t}
                     WHERE {range} = $1
                     ORDER BY {range}, aggregateid, seq LIMIT $2",
                    range = range_expr(i64::from(n))
                ),
                &[&r, &limit],
            )
            .await?
            .iter()
            .map(|x| Row {
                id: x.get(0),
                aggregatetype: x.get(1),
                aggregateid: x.get(2),
                kind: x.get(3),
                payload: x.get(4),
            })
            .collect())
    }

    async fn rows_by_id(&self, intent: &Intent) -> Result<HashMap<String, Row>> {
        let ids: Vec<&str> = intent
            .requests
            .iter()
            .flat_map(|q| q.ids.iter().map(String::as_str))
            .collect();
        let t = &self.config.table;
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT id::text, aggregatetype, aggregateid, type, payload::text FROM {t} WHERE id = ANY($1::text[]::uuid[])"
                ),
                &[&ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|x| {
                let row = Row {
                    id: x.get(0),
                    aggregatetype: x.get(1),
                    aggregateid: x.get(2),
                    kind: x.get(3),
                    payload: x.get(4),
                };
                (row.id.clone(), row)
            })
            .collect())
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
                    self.guarded(
                        r,
                        "UPDATE floe_outbox_relay SET producer_id = NULL, epoch = NULL WHERE tbl = $1 AND range = $2 AND owner = $3",
                        &[],
                    )
                    .await?;
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
        let ids: Vec<&str> = intent
            .requests
            .iter()
            .flat_map(|q| q.ids.iter().map(String::as_str))
            .collect();
        let next =
            serde_json::to_string(&intent.next).map_err(|e| OutboxError::Corrupt(e.to_string()))?;
        let t = self.config.table.clone();
        let tx = self.db.transaction().await?;
        let held = tx
            .execute(
                &format!(
                    "UPDATE floe_outbox_relay SET intent = NULL, seqs = $4
                     WHERE tbl = $1 AND range = $2 AND owner = $3 AND lease_until > {NOW_MS}"
                ),
                &[&t, &r, &self.config.relay_id, &next],
            )
            .await?;
        if held != 1 {
            return Err(OutboxError::Invalid(format!(
                "lease of range {r} lost before the batch was finished; its new holder republishes it"
            )));
        }
        let _ = tx
            .execute(
                &format!("DELETE FROM {t} WHERE id = ANY($1::text[]::uuid[])"),
                &[&ids],
            )
            .await?;
        tx.commit().await?;
        Ok(ids.len())
    }
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
