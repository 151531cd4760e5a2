//! The outbox in PostgreSQL (RFC 0005 §2): install (table, per-aggregate ordering
//! trigger, NOTIFY trigger, relay state), `write_event`, and the relay's queries.

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::warn;

use crate::{Db, OutboxError, RangeState, Result, Row, Update, check_table, range_state};

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

/// The relay's PostgreSQL connection (notifications wake the relay).
pub(crate) struct PgDb {
    db: tokio_postgres::Client,
}

impl PgDb {
    /// Connect, drive the connection (notifications → `wake`) and `LISTEN`.
    pub(crate) async fn connect(
        db_url: &str,
        table: &str,
        wake: std::sync::Arc<Notify>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>)> {
        let (db, conn) = tokio_postgres::connect(db_url, NoTls).await?;
        let driver = tokio::spawn(async move {
            let mut conn = conn;
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "outbox database connection ended");
                        break;
                    }
                }
            }
        });
        db.batch_execute(&format!("LISTEN {}", notify_channel(table)))
            .await?;
        Ok((Self { db }, driver))
    }
}

fn row_of(x: &tokio_postgres::Row) -> Row {
    Row {
        id: x.get(0),
        aggregatetype: x.get(1),
        aggregateid: x.get(2),
        kind: x.get(3),
        payload: x.get(4),
    }
}

#[async_trait::async_trait]
impl Db for PgDb {
    async fn ranges(&self, table: &str) -> Result<Vec<i32>> {
        Ok(self
            .db
            .query(
                "SELECT range FROM floe_outbox_relay WHERE tbl = $1 ORDER BY range",
                &[&table],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn busy_ranges(&self, table: &str, n: i32) -> Result<HashSet<i32>> {
        Ok(self
            .db
            .query(
                &format!(
                    "SELECT DISTINCT {range}::integer FROM {table}",
                    range = range_expr(i64::from(n))
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn lease(
        &self,
        table: &str,
        r: i32,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<RangeState>> {
        let row = self
            .db
            .query_opt(
                &format!(
                    "UPDATE floe_outbox_relay SET owner = $3, lease_until = {NOW_MS} + $4
                     WHERE tbl = $1 AND range = $2 AND (owner = $3 OR lease_until < {NOW_MS})
                     RETURNING producer_id, epoch::bigint, seqs, intent"
                ),
                &[&table, &r, &owner, &lease_ms],
            )
            .await?;
        row.map(|row| range_state(row.get(0), row.get(1), row.get(2), row.get(3)))
            .transpose()
    }

    async fn update(&self, table: &str, r: i32, owner: &str, u: Update) -> Result<bool> {
        let guard =
            format!("WHERE tbl = $1 AND range = $2 AND owner = $3 AND lease_until > {NOW_MS}");
        let n = match u {
            Update::NewSession(s) => {
                self.db
                    .execute(
                        &format!("UPDATE floe_outbox_relay SET producer_id = $4, epoch = $5, seqs = '{{}}', intent = NULL {guard}"),
                        &[&table, &r, &owner, &s.producer_id, &(s.epoch as i32)],
                    )
                    .await?
            }
            Update::DropSession => {
                self.db
                    .execute(
                        &format!("UPDATE floe_outbox_relay SET producer_id = NULL, epoch = NULL {guard}"),
                        &[&table, &r, &owner],
                    )
                    .await?
            }
            Update::Intent(json) => {
                self.db
                    .execute(
                        &format!("UPDATE floe_outbox_relay SET intent = $4 {guard}"),
                        &[&table, &r, &owner, &json],
                    )
                    .await?
            }
        };
        Ok(n == 1)
    }

    async fn read(&self, table: &str, r: i32, n: i32, limit: i64) -> Result<Vec<Row>> {
        Ok(self
            .db
            .query(
                &format!(
                    "SELECT id::text, aggregatetype, aggregateid, type, payload::text FROM {table}
                     WHERE {range} = $1
                     ORDER BY {range}, aggregateid, seq LIMIT $2",
                    range = range_expr(i64::from(n))
                ),
                &[&r, &limit],
            )
            .await?
            .iter()
            .map(row_of)
            .collect())
    }

    async fn rows_by_id(&self, table: &str, ids: &[String]) -> Result<HashMap<String, Row>> {
        let rows = self
            .db
            .query(
                &format!(
                    "SELECT id::text, aggregatetype, aggregateid, type, payload::text FROM {table} WHERE id = ANY($1::text[]::uuid[])"
                ),
                &[&ids],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|x| {
                let row = row_of(x);
                (row.id.clone(), row)
            })
            .collect())
    }

    async fn finish(
        &self,
        table: &str,
        r: i32,
        owner: &str,
        ids: &[String],
        next: &str,
    ) -> Result<bool> {
        // `transaction` needs `&mut`; a plain BEGIN/COMMIT on this connection is the same.
        self.db.batch_execute("BEGIN").await?;
        let outcome = async {
            let held = self
                .db
                .execute(
                    &format!(
                        "UPDATE floe_outbox_relay SET intent = NULL, seqs = $4
                         WHERE tbl = $1 AND range = $2 AND owner = $3 AND lease_until > {NOW_MS}"
                    ),
                    &[&table, &r, &owner, &next],
                )
                .await?;
            if held != 1 {
                return Ok(false);
            }
            let _ = self
                .db
                .execute(
                    &format!("DELETE FROM {table} WHERE id = ANY($1::text[]::uuid[])"),
                    &[&ids],
                )
                .await?;
            Ok::<_, OutboxError>(true)
        }
        .await;
        match outcome {
            Ok(true) => {
                self.db.batch_execute("COMMIT").await?;
                Ok(true)
            }
            other => {
                let _ = self.db.batch_execute("ROLLBACK").await;
                other
            }
        }
    }
}
