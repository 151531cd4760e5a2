//! The outbox in an SQLite database (RFC 0005 §2): for applications whose database is an
//! SQLite file. SQLite runs one write transaction at a time, so the table's `seq INTEGER
//! PRIMARY KEY AUTOINCREMENT` grows in commit order: ordering the rows *present* by `seq`
//! keeps every aggregate's rows in commit order without a trigger or a cursor. There is
//! one hash range (relays on one file share one lease: one works, the others stand by)
//! and no notifications: the relay polls (`--poll-ms`), one indexed query when idle.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Db, OutboxError, RangeState, Result, Row, Update, check_table, range_state};

/// Milliseconds on the machine's clock (SQLite is local: every relay of a file shares it).
const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

fn connect(path: &str) -> Result<Connection> {
    if path.is_empty() {
        return Err(OutboxError::Invalid(
            "sqlite:// needs a file path, e.g. sqlite:///var/lib/app/app.db".into(),
        ));
    }
    let c = Connection::open(PathBuf::from(path))?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| OutboxError::Invalid(format!("sqlite task: {e}")))?
}

/// Create the outbox table (if missing) and the relay's state in the SQLite file at
/// `path` (created if missing). Idempotent.
pub async fn install(path: &str, table: &str) -> Result<()> {
    check_table(table)?;
    let (path, table) = (path.to_string(), table.to_string());
    blocking(move || {
        let c = connect(&path)?;
        c.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT NOT NULL UNIQUE DEFAULT (lower(hex(randomblob(16)))),
                aggregatetype TEXT NOT NULL,
                aggregateid TEXT NOT NULL,
                type TEXT NOT NULL,
                payload TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS floe_outbox_relay (
                tbl TEXT NOT NULL,
                range INTEGER NOT NULL,
                owner TEXT NOT NULL DEFAULT '',
                lease_until INTEGER NOT NULL DEFAULT 0,
                producer_id INTEGER,
                epoch INTEGER,
                seqs TEXT NOT NULL DEFAULT '{{}}',
                intent TEXT,
                PRIMARY KEY (tbl, range)
             );"
        ))?;
        let _ = c.execute(
            "INSERT OR IGNORE INTO floe_outbox_relay (tbl, range) VALUES (?1, 0)",
            [&table],
        )?;
        Ok(())
    })
    .await
}

/// Write one outbox row in the caller's own SQLite transaction (with its business rows):
/// it is published if and only if that transaction commits. Returns the row's id.
pub fn write_event_sqlite(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    aggregatetype: &str,
    aggregateid: &str,
    event_type: &str,
    payload: &serde_json::Value,
) -> Result<String> {
    check_table(table)?;
    Ok(tx.query_row(
        &format!(
            "INSERT INTO {table} (aggregatetype, aggregateid, type, payload) VALUES (?1, ?2, ?3, ?4) RETURNING id"
        ),
        params![aggregatetype, aggregateid, event_type, payload.to_string()],
        |r| r.get(0),
    )?)
}

/// The relay's SQLite connection.
pub(crate) struct SqliteDb {
    conn: Arc<Mutex<Connection>>,
}

impl SqliteDb {
    pub(crate) async fn open(path: &str) -> Result<Self> {
        let path = path.to_string();
        let c = blocking(move || connect(&path)).await?;
        Ok(Self {
            conn: Arc::new(Mutex::new(c)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        blocking(move || {
            let mut c = conn
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            f(&mut c)
        })
        .await
    }
}

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        id: r.get(0)?,
        aggregatetype: r.get(1)?,
        aggregateid: r.get(2)?,
        kind: r.get(3)?,
        payload: r.get(4)?,
    })
}

#[async_trait::async_trait]
impl Db for SqliteDb {
    async fn ranges(&self, table: &str) -> Result<Vec<i32>> {
        let table = table.to_string();
        self.with(move |c| {
            Ok(
                c.prepare("SELECT range FROM floe_outbox_relay WHERE tbl = ?1 ORDER BY range")?
                    .query_map([&table], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?,
            )
        })
        .await
    }

    async fn busy_ranges(&self, table: &str, _n: i32) -> Result<HashSet<i32>> {
        let table = table.to_string();
        self.with(move |c| {
            let any: bool = c
                .prepare_cached(&format!("SELECT EXISTS (SELECT 1 FROM {table})"))?
                .query_row([], |r| r.get(0))?;
            Ok(if any {
                HashSet::from([0])
            } else {
                HashSet::new()
            })
        })
        .await
    }

    async fn lease(
        &self,
        table: &str,
        r: i32,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<RangeState>> {
        let (table, owner) = (table.to_string(), owner.to_string());
        self.with(move |c| {
            let row: Option<(Option<i64>, Option<i64>, String, Option<String>)> = c
                .prepare_cached(&format!(
                    "UPDATE floe_outbox_relay SET owner = ?3, lease_until = {NOW_MS} + ?4
                     WHERE tbl = ?1 AND range = ?2 AND (owner = ?3 OR lease_until < {NOW_MS})
                     RETURNING producer_id, epoch, seqs, intent"
                ))?
                .query_row(params![table, r, owner, lease_ms], |x| {
                    Ok((x.get(0)?, x.get(1)?, x.get(2)?, x.get(3)?))
                })
                .optional()?;
            row.map(|(p, e, s, i)| range_state(p, e, &s, i.as_deref()))
                .transpose()
        })
        .await
    }

    async fn update(&self, table: &str, r: i32, owner: &str, u: Update) -> Result<bool> {
        let (table, owner) = (table.to_string(), owner.to_string());
        self.with(move |c| {
            let guard = format!("WHERE tbl = ?1 AND range = ?2 AND owner = ?3 AND lease_until > {NOW_MS}");
            let n = match u {
                Update::NewSession(s) => c.execute(
                    &format!("UPDATE floe_outbox_relay SET producer_id = ?4, epoch = ?5, seqs = '{{}}', intent = NULL {guard}"),
                    params![table, r, owner, s.producer_id, s.epoch],
                )?,
                Update::DropSession => c.execute(
                    &format!("UPDATE floe_outbox_relay SET producer_id = NULL, epoch = NULL {guard}"),
                    params![table, r, owner],
                )?,
                Update::Intent(json) => c.execute(
                    &format!("UPDATE floe_outbox_relay SET intent = ?4 {guard}"),
                    params![table, r, owner, json],
                )?,
            };
            Ok(n == 1)
        })
        .await
    }

    async fn read(&self, table: &str, _r: i32, _n: i32, limit: i64) -> Result<Vec<Row>> {
        let table = table.to_string();
        self.with(move |c| {
            Ok(c.prepare_cached(&format!(
                "SELECT id, aggregatetype, aggregateid, type, payload FROM {table} ORDER BY seq LIMIT ?1"
            ))?
            .query_map([limit], row_of)?
            .collect::<rusqlite::Result<_>>()?)
        })
        .await
    }

    async fn rows_by_id(&self, table: &str, ids: &[String]) -> Result<HashMap<String, Row>> {
        let (table, ids) = (table.to_string(), ids.to_vec());
        self.with(move |c| {
            let mut st = c.prepare_cached(&format!(
                "SELECT id, aggregatetype, aggregateid, type, payload FROM {table} WHERE id = ?1"
            ))?;
            let mut out = HashMap::with_capacity(ids.len());
            for id in &ids {
                if let Some(row) = st.query_row([id], row_of).optional()? {
                    let _ = out.insert(row.id.clone(), row);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn finish(
        &self,
        table: &str,
        r: i32,
        owner: &str,
        ids: &[String],
        next: &str,
    ) -> Result<bool> {
        let (table, owner, ids, next) = (
            table.to_string(),
            owner.to_string(),
            ids.to_vec(),
            next.to_string(),
        );
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let held = tx.execute(
                &format!(
                    "UPDATE floe_outbox_relay SET intent = NULL, seqs = ?4
                     WHERE tbl = ?1 AND range = ?2 AND owner = ?3 AND lease_until > {NOW_MS}"
                ),
                params![table, r, owner, next],
            )?;
            if held != 1 {
                return Ok(false);
            }
            {
                let mut del = tx.prepare_cached(&format!("DELETE FROM {table} WHERE id = ?1"))?;
                for id in &ids {
                    let _ = del.execute([id])?;
                }
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}
