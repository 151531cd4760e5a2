//! PostgreSQL index: any number of agents share it.
//!
//! Commits lock the partition rows they touch with `SELECT ... FOR UPDATE` in (topic,
//! partition) order, so concurrent commits from many agents serialize per partition and
//! never deadlock; serialization failures and deadlocks are retried anyway. Each commit
//! sends `NOTIFY floe_commits` (delivered after commit) so long-polls on other agents wake.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use floe_core::idempotency;
use floe_core::producer::SeqState;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::{Instrument, info_span, warn};

use floe_core::txn::{EntryPiece, Outcome, TxnState, punch, stable_offset};

use crate::end_answer;
use crate::replay;
use crate::{
    BeginTxn, CommitSink, Committed, EndTxn, IdempotencyBegin, IdempotencyVerdict, Index,
    IndexError, NewTopic, OffsetCommit, PartitionOffsets, ReplaceRuns, Result, Retention,
    RetentionRun, RunEntry, SegmentCommit, SeqKey, StateKey, StateKind, TopicMeta, TxnEnded,
    TxnError, TxnInfo, Versioned, check_deadline, completion_answer, decode_config, encode_config,
    fence, plan_commit,
};

/// Statements prepared once per pooled connection (deadpool's statement cache), so
/// PostgreSQL neither parses nor plans them again and each call is one round trip instead
/// of two (prepare, then execute). Every query of this backend goes through these.
#[async_trait]
trait Cached: deadpool_postgres::GenericClient {
    async fn cquery(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query(&st, params).await
    }
    async fn cquery_opt(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<Option<tokio_postgres::Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_opt(&st, params).await
    }
    async fn cquery_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<tokio_postgres::Row, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_one(&st, params).await
    }
    async fn cexecute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.execute(&st, params).await
    }
}

impl<C: deadpool_postgres::GenericClient> Cached for C {}

/// NOTIFY channel for commits; payload `topic_id:partition:end_offset` entries joined by `,`.
pub(crate) const CHANNEL: &str = "floe_commits";
/// PostgreSQL limits NOTIFY payloads to 8000 bytes; stay well below.
const MAX_PAYLOAD: usize = 7000;
const COMMIT_ATTEMPTS: usize = 5;

/// FNV-1a (64 bit) of [`SCHEMA`]: stable across builds and Rust versions, changes when
/// the schema text does.
fn schema_fingerprint() -> i64 {
    let h = SCHEMA.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    i64::from_ne_bytes(h.to_ne_bytes())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS floe_schema (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    fingerprint BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS floe_topics (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    retention_ms BIGINT,
    config TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS floe_partitions (
    topic_id BIGINT NOT NULL,
    partition INTEGER NOT NULL,
    start_offset BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic_id, partition)
);
CREATE TABLE IF NOT EXISTS floe_runs (
    topic_id BIGINT NOT NULL,
    partition INTEGER NOT NULL,
    base_offset BIGINT NOT NULL,
    records INTEGER NOT NULL,
    segment_key TEXT NOT NULL,
    segment_size BIGINT NOT NULL,
    rg_first INTEGER NOT NULL,
    rg_count INTEGER NOT NULL,
    byte_start BIGINT NOT NULL,
    byte_end BIGINT NOT NULL,
    min_ts BIGINT NOT NULL,
    max_ts BIGINT NOT NULL,
    row_first INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (topic_id, partition, base_offset)
);
ALTER TABLE floe_runs ADD COLUMN IF NOT EXISTS row_first INTEGER NOT NULL DEFAULT 0;
ALTER TABLE floe_runs ADD COLUMN IF NOT EXISTS row_count INTEGER;
CREATE INDEX IF NOT EXISTS floe_runs_by_segment ON floe_runs (segment_key);
CREATE TABLE IF NOT EXISTS floe_objects (
    key TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    created_ms BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS floe_objects_by_created ON floe_objects (created_ms);
CREATE TABLE IF NOT EXISTS floe_consumer_state (
    kind TEXT NOT NULL,
    topic_id BIGINT NOT NULL,
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    version BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (kind, topic_id, grp, partition)
);
CREATE TABLE IF NOT EXISTS floe_idempotency (
    topic_id BIGINT NOT NULL,
    key TEXT NOT NULL,
    fingerprint BIGINT NOT NULL,
    token BIGINT NOT NULL,
    done BOOLEAN NOT NULL,
    answer TEXT,
    lease_until BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    PRIMARY KEY (topic_id, key)
);
CREATE INDEX IF NOT EXISTS floe_idempotency_by_expiry ON floe_idempotency (expires);
CREATE TABLE IF NOT EXISTS floe_deletion_boundary (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    boundary_ms BIGINT NOT NULL
);
INSERT INTO floe_deletion_boundary (id, boundary_ms) VALUES (0, -9223372036854775808) ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS floe_group_offsets (
    topic_id BIGINT NOT NULL,
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic_id, grp, partition)
);
CREATE TABLE IF NOT EXISTS floe_producers (
    id BIGSERIAL PRIMARY KEY,
    name TEXT UNIQUE,
    epoch INTEGER NOT NULL,
    touched_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS floe_producer_seqs (
    producer_id BIGINT NOT NULL,
    topic_id BIGINT NOT NULL,
    partition INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    next_seq BIGINT NOT NULL,
    recent TEXT NOT NULL,
    touched_ms BIGINT NOT NULL,
    PRIMARY KEY (producer_id, topic_id, partition)
);
CREATE INDEX IF NOT EXISTS floe_producer_seqs_by_touch ON floe_producer_seqs (touched_ms);
ALTER TABLE floe_partitions ADD COLUMN IF NOT EXISTS stable_hold BIGINT;
CREATE TABLE IF NOT EXISTS floe_txns (
    producer_id BIGINT NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_ms BIGINT NOT NULL,
    deadline_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    check_url TEXT,
    checks INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (producer_id, epoch)
);
CREATE INDEX IF NOT EXISTS floe_txns_by_deadline ON floe_txns (state, deadline_ms);
CREATE TABLE IF NOT EXISTS floe_txn_batches (
    producer_id BIGINT NOT NULL,
    epoch INTEGER NOT NULL,
    topic_id BIGINT NOT NULL,
    partition INTEGER NOT NULL,
    base_offset BIGINT NOT NULL,
    records INTEGER NOT NULL,
    PRIMARY KEY (producer_id, epoch, topic_id, partition, base_offset)
);
CREATE INDEX IF NOT EXISTS floe_txn_batches_by_partition ON floe_txn_batches (topic_id, partition, base_offset);
";

pub struct PostgresIndex {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for PostgresIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresIndex")
            .field("pool", &self.pool.status())
            .finish()
    }
}

fn pg(e: tokio_postgres::Error) -> IndexError {
    IndexError::Postgres(e.to_string())
}

fn pool_err(e: deadpool_postgres::PoolError) -> IndexError {
    IndexError::Postgres(format!("connection pool: {e}"))
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| IndexError::Corrupt(format!("{what} {v} out of range")))
}

fn to_u64(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| IndexError::Corrupt(format!("{what} {v} is negative")))
}

fn to_u32(v: i32, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| IndexError::Corrupt(format!("{what} {v} is negative")))
}

impl PostgresIndex {
    /// Connect and apply migrations (under an advisory lock, so agents starting together
    /// do not race).
    pub async fn open(url: &str) -> Result<Self> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| IndexError::BadUrl(format!("{e}")))?;
        let mut cfg = config.clone();
        if cfg.get_connect_timeout().is_none() {
            let _ = cfg.connect_timeout(Duration::from_secs(5));
        }
        let mgr = Manager::from_config(
            cfg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(16)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| IndexError::Postgres(e.to_string()))?;
        let mut c = pool.get().await.map_err(pool_err)?;
        // The schema's DDL (`ADD COLUMN IF NOT EXISTS`, `CREATE INDEX IF NOT EXISTS`) takes
        // table locks even when there is nothing to do — `ACCESS EXCLUSIVE` on the runs and
        // partitions tables — so an agent starting next to live ones stalled their commits
        // and could deadlock with them (seen as a failed start in the multi-agent suite).
        // Once applied, the schema's fingerprint is stored; an open that finds the current
        // one runs no DDL. (No table yet, or another fingerprint: apply, under the lock.)
        let fingerprint = schema_fingerprint();
        let current: Option<i64> = c
            .cquery_opt("SELECT fingerprint FROM floe_schema WHERE id = 0", &[])
            .await
            .ok()
            .flatten()
            .map(|r| r.get(0));
        if current != Some(fingerprint) {
            let tx = c.transaction().await.map_err(pg)?;
            let _ = tx
                .cexecute("SELECT pg_advisory_xact_lock(7340123)", &[])
                .await
                .map_err(pg)?;
            tx.batch_execute(SCHEMA).await.map_err(pg)?;
            let _ = tx
                .cexecute(
                    "INSERT INTO floe_schema (id, fingerprint) VALUES (0, $1)
                     ON CONFLICT (id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint",
                    &[&fingerprint],
                )
                .await
                .map_err(pg)?;
            tx.commit().await.map_err(pg)?;
        }
        Ok(Self { pool, config: cfg })
    }

    /// Whether opening this database would run the schema's DDL (its stored fingerprint
    /// is not this build's). For tests and diagnostics.
    pub async fn schema_is_current(&self) -> Result<bool> {
        let c = self.client().await?;
        let row = c
            .cquery_opt("SELECT fingerprint FROM floe_schema WHERE id = 0", &[])
            .await
            .map_err(pg)?;
        Ok(row.map(|r| r.get::<_, i64>(0)) == Some(schema_fingerprint()))
    }

    /// One retention pass over a topic's partitions in one transaction, partition rows
    /// locked in partition order as a commit does: per partition the new start
    /// (`Retention::new_start`, pure), then its runs below it dropped.
    async fn retain(&self, topic_id: i64, rule: Retention) -> Result<Vec<(u32, u64)>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let parts = tx
            .cquery(
                "SELECT partition, start_offset, next_offset FROM floe_partitions WHERE topic_id = $1 ORDER BY partition FOR UPDATE",
                &[&topic_id],
            )
            .await
            .map_err(pg)?;
        let mut moved = Vec::new();
        for row in parts {
            let p: i32 = row.get(0);
            let (start, next) = (to_u64(row.get(1), "start")?, to_u64(row.get(2), "next")?);
            let (total, count) = match rule {
                Retention::Time { .. } => (0, 0),
                Retention::Size { .. } => {
                    let sum = tx
                        .cquery_one(
                            "SELECT COALESCE(SUM(byte_end - byte_start), 0)::bigint, COUNT(*) FROM floe_runs WHERE topic_id = $1 AND partition = $2",
                            &[&topic_id, &p],
                        )
                        .await
                        .map_err(pg)?;
                    (
                        to_u64(sum.get(0), "total bytes")?,
                        usize::try_from(sum.get::<_, i64>(1)).unwrap_or(usize::MAX),
                    )
                }
            };
            if !rule.may_drop(total) {
                continue;
            }
            let runs = tx
                .cquery(
                    "SELECT base_offset, records, max_ts, byte_end - byte_start FROM floe_runs WHERE topic_id = $1 AND partition = $2 ORDER BY base_offset LIMIT $3",
                    &[&topic_id, &p, &crate::RETENTION_RUNS_PER_PASS],
                )
                .await
                .map_err(pg)?
                .iter()
                .map(|r| {
                    Ok(RetentionRun {
                        base_offset: to_u64(r.get(0), "base_offset")?,
                        records: u32::try_from(r.get::<_, i32>(1))
                            .map_err(|_| IndexError::Corrupt("negative run length".into()))?,
                        max_ts: r.get(2),
                        bytes: to_u64(r.get(3), "run bytes")?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let Some(new_start) = rule.new_start(&runs, total, count) else {
                continue;
            };
            if new_start <= start || new_start > next {
                continue;
            }
            let ns = to_i64(new_start, "start")?;
            let _ = tx
                .cexecute(
                    "DELETE FROM floe_runs WHERE topic_id = $1 AND partition = $2 AND base_offset < $3",
                    &[&topic_id, &p, &ns],
                )
                .await
                .map_err(pg)?;
            let _ = tx
                .cexecute(
                    "UPDATE floe_partitions SET start_offset = $3 WHERE topic_id = $1 AND partition = $2",
                    &[&topic_id, &p, &ns],
                )
                .await
                .map_err(pg)?;
            moved.push((p as u32, new_start));
        }
        tx.commit().await.map_err(pg)?;
        Ok(moved)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_err)
    }

    async fn conn(&self) -> std::result::Result<deadpool_postgres::Object, CommitError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(b) => CommitError::Pg(b),
            other => CommitError::Pool(other.to_string()),
        })
    }

    async fn try_end_txn(&self, e: &EndTxn) -> std::result::Result<TxnEnded, CommitError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let out = end_txn_in(&tx, e).await?;
        if !out.repeated {
            tx.commit().await?;
        }
        Ok(out)
    }

    async fn try_init_producer(
        &self,
        name: Option<&str>,
        now_ms: i64,
    ) -> std::result::Result<(i64, u32), CommitError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        // Re-initialising a name aborts its open transaction (fencing the zombie) in the
        // same index transaction that bumps the epoch (RFC 0005).
        if let Some(r) = tx
            .cquery_opt(
                "SELECT t.producer_id, t.epoch FROM floe_producers p JOIN floe_txns t ON t.producer_id = p.id AND t.epoch = p.epoch
                 WHERE p.name = $1 AND t.state = 'open'",
                &[&name],
            )
            .await?
        {
            let end = EndTxn {
                producer_id: r.get(0),
                epoch: r.get::<_, i32>(1) as u32,
                outcome: Outcome::Abort,
                offsets: Vec::new(),
                now_ms,
            };
            // Partitions, then the producer row, then the transaction row (lock order).
            let parts = txn_partitions(&tx, end.producer_id, end.epoch).await?;
            lock_partitions(&tx, &parts).await?;
            let _ = tx
                .cquery("SELECT 1 FROM floe_producers WHERE id = $1 FOR UPDATE", &[&end.producer_id])
                .await?;
            match end_txn_in(&tx, &end).await {
                Ok(_) | Err(CommitError::Index(IndexError::Txn(_))) => {}
                Err(other) => return Err(other),
            }
        }
        let r = tx
            .cquery_one(
                "INSERT INTO floe_producers (name, epoch, touched_ms) VALUES ($1, 0, $2)
                 ON CONFLICT (name) DO UPDATE SET epoch = floe_producers.epoch + 1, touched_ms = EXCLUDED.touched_ms
                 RETURNING id, epoch",
                &[&name, &now_ms],
            )
            .await?;
        tx.commit().await?;
        Ok((r.get(0), r.get::<_, i32>(1) as u32))
    }

    async fn try_begin_txn(&self, b: &BeginTxn) -> std::result::Result<u32, CommitError> {
        let mut c = self.conn().await?;
        let tx = c.transaction().await?;
        let Some(r) = tx
            .cquery_opt(
                "SELECT epoch FROM floe_producers WHERE id = $1 FOR UPDATE",
                &[&b.producer_id],
            )
            .await?
        else {
            return Err(txn_err(TxnError::UnknownProducer(b.producer_id)));
        };
        let current = r.get::<_, i32>(0) as u32;
        if current != b.epoch {
            return Err(txn_err(TxnError::Fenced {
                producer_id: b.producer_id,
                epoch: b.epoch,
                current,
            }));
        }
        if tx
            .cquery_opt(
                "SELECT 1 FROM floe_txns WHERE producer_id = $1 AND epoch = $2 AND state = 'open'",
                &[&b.producer_id, &(current as i32)],
            )
            .await?
            .is_some()
        {
            return Err(txn_err(TxnError::AlreadyOpen {
                producer_id: b.producer_id,
                epoch: current,
            }));
        }
        let epoch = current
            .checked_add(1)
            .filter(|e| *e <= i32::MAX as u32)
            .ok_or_else(|| {
                CommitError::Index(IndexError::Corrupt("producer epoch overflow".into()))
            })?;
        let _ = tx
            .cexecute(
                "UPDATE floe_producers SET epoch = $2, touched_ms = $3 WHERE id = $1",
                &[&b.producer_id, &(epoch as i32), &b.now_ms],
            )
            .await?;
        let _ = tx
            .cexecute(
                "INSERT INTO floe_txns (producer_id, epoch, state, started_ms, deadline_ms, check_url, checks) VALUES ($1, $2, 'open', $3, $4, $5, 0)",
                &[&b.producer_id, &(epoch as i32), &b.now_ms, &b.deadline_ms, &b.check_url],
            )
            .await?;
        tx.commit().await?;
        Ok(epoch)
    }

    async fn try_commit(&self, seg: &SegmentCommit) -> std::result::Result<Committed, CommitError> {
        let mut c = self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(b) => CommitError::Pg(b),
            other => CommitError::Pool(other.to_string()),
        })?;
        let tx = c.transaction().await?;
        if !seg.runs.is_empty() {
            // FOR SHARE: an advance of the boundary waits for this commit, or this commit
            // sees the advanced boundary — never both sides of it.
            let boundary: i64 = tx
                .cquery_one(
                    "SELECT boundary_ms FROM floe_deletion_boundary WHERE id = 0 FOR SHARE",
                    &[],
                )
                .await?
                .get(0);
            if seg.created_ms < boundary {
                return Err(CommitError::Index(IndexError::SegmentTooOld {
                    created_ms: seg.created_ms,
                    boundary_ms: boundary,
                }));
            }
        }
        let mut keys: Vec<(i64, i32)> = seg
            .runs
            .iter()
            .map(|r| (r.topic_id, r.partition as i32))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let tids: Vec<i64> = keys.iter().map(|k| k.0).collect();
        let parts: Vec<i32> = keys.iter().map(|k| k.1).collect();
        // Lock in (topic, partition) order: no deadlocks between agents.
        let rows = tx
            .cquery(
                "SELECT p.topic_id, p.partition, p.next_offset FROM floe_partitions p
                 JOIN UNNEST($1::bigint[], $2::int[]) AS k(t, p) ON p.topic_id = k.t AND p.partition = k.p
                 ORDER BY p.topic_id, p.partition FOR UPDATE OF p",
                &[&tids, &parts],
            )
            .await?;
        let mut ends: HashMap<(i64, u32), u64> = HashMap::new();
        for r in rows {
            let (t, p, n): (i64, i32, i64) = (r.get(0), r.get(1), r.get(2));
            let _ = ends.insert((t, p as u32), n as u64);
        }
        // Producer epochs (FOR SHARE: a re-initialisation waits for this commit, or this
        // commit sees the new epoch) and sequence states. The states' rows change only in
        // commits holding their partition's row lock, taken above, so they are stable here.
        let mut epochs: HashMap<i64, u32> = HashMap::new();
        let mut seqs: HashMap<SeqKey, SeqState> = HashMap::new();
        if !seg.producers.is_empty() {
            let mut ids: Vec<i64> = seg.producers.iter().map(|p| p.producer_id).collect();
            ids.sort_unstable();
            ids.dedup();
            for r in tx
                .cquery(
                    "SELECT id, epoch FROM floe_producers WHERE id = ANY($1) ORDER BY id FOR SHARE",
                    &[&ids],
                )
                .await?
            {
                let (id, epoch): (i64, i32) = (r.get(0), r.get(1));
                let _ = epochs.insert(id, epoch as u32);
            }
            let (mut k_p, mut k_t, mut k_n) = (vec![], vec![], vec![]);
            for p in &seg.producers {
                for b in &p.batches {
                    k_p.push(p.producer_id);
                    k_t.push(b.topic_id);
                    k_n.push(b.partition as i32);
                }
            }
            for r in tx
                .cquery(
                    "SELECT s.producer_id, s.topic_id, s.partition, s.epoch, s.next_seq, s.recent FROM floe_producer_seqs s
                     JOIN (SELECT DISTINCT * FROM UNNEST($1::bigint[], $2::bigint[], $3::int[])) AS k(p, t, n)
                       ON s.producer_id = k.p AND s.topic_id = k.t AND s.partition = k.n",
                    &[&k_p, &k_t, &k_n],
                )
                .await?
            {
                let key: SeqKey = (r.get(0), r.get(1), r.get::<_, i32>(2) as u32);
                let recent: String = r.get(5);
                let recent = floe_core::producer::decode_recent(&recent).map_err(|e| {
                    CommitError::Index(IndexError::Corrupt(format!("producer state {key:?}: {e}")))
                })?;
                let _ = seqs.insert(
                    key,
                    SeqState {
                        epoch: r.get::<_, i32>(3) as u32,
                        next_seq: r.get(4),
                        recent,
                    },
                );
            }
        }
        // Open transactions of those producers' current epochs (FOR SHARE: an end waits
        // for this commit, or this commit sees it ended). Lock order everywhere:
        // partitions, producers, transactions.
        let mut open_txns = HashSet::new();
        if !epochs.is_empty() {
            let (ids, eps): (Vec<i64>, Vec<i32>) =
                epochs.iter().map(|(id, e)| (*id, *e as i32)).unzip();
            for r in tx
                .cquery(
                    "SELECT t.producer_id FROM floe_txns t JOIN UNNEST($1::bigint[], $2::int[]) AS k(p, e)
                       ON t.producer_id = k.p AND t.epoch = k.e
                     WHERE t.state = 'open' ORDER BY t.producer_id FOR SHARE OF t",
                    &[&ids, &eps],
                )
                .await?
            {
                let _ = open_txns.insert(r.get::<_, i64>(0));
            }
        }
        let plan = plan_commit(&seg.runs, &seg.producers, &ends, &epochs, &seqs, &open_txns)
            .map_err(CommitError::Index)?;
        if !plan.txn_batches.is_empty() {
            let (mut b_p, mut b_e, mut b_t, mut b_n, mut b_b, mut b_r) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for b in &plan.txn_batches {
                b_p.push(b.producer_id);
                b_e.push(b.epoch as i32);
                b_t.push(b.topic_id);
                b_n.push(b.partition as i32);
                b_b.push(b.base_offset as i64);
                b_r.push(b.records as i32);
            }
            let _ = tx
                .cexecute(
                    "INSERT INTO floe_txn_batches (producer_id, epoch, topic_id, partition, base_offset, records)
                     SELECT * FROM UNNEST($1::bigint[], $2::int[], $3::bigint[], $4::int[], $5::bigint[], $6::int[])",
                    &[&b_p, &b_e, &b_t, &b_n, &b_b, &b_r],
                )
                .await?;
            let ht: Vec<i64> = plan.holds.keys().map(|k| k.0).collect();
            let hp: Vec<i32> = plan.holds.keys().map(|k| k.1 as i32).collect();
            let hh: Vec<i64> = plan.holds.values().map(|v| *v as i64).collect();
            let _ = tx
                .cexecute(
                    "UPDATE floe_partitions p SET stable_hold = LEAST(COALESCE(p.stable_hold, u.h), u.h)
                     FROM UNNEST($1::bigint[], $2::int[], $3::bigint[]) AS u(t, p, h)
                     WHERE p.topic_id = u.t AND p.partition = u.p",
                    &[&ht, &hp, &hh],
                )
                .await?;
        }
        let (
            mut c_t,
            mut c_p,
            mut c_b,
            mut c_n,
            mut c_rf,
            mut c_rc,
            mut c_bs,
            mut c_be,
            mut c_mn,
            mut c_mx,
            mut c_first,
        ) = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        for row in &plan.rows {
            let r = &seg.runs[row.run];
            c_t.push(r.topic_id);
            c_p.push(r.partition as i32);
            c_b.push(row.base_offset as i64);
            c_n.push(row.records as i32);
            c_rf.push(r.row_group_first as i32);
            c_rc.push(r.row_group_count as i32);
            c_bs.push(r.byte_start as i64);
            c_be.push(r.byte_end as i64);
            c_mn.push(r.min_timestamp_ms);
            c_mx.push(r.max_timestamp_ms);
            c_first.push(row.row_first as i32);
        }
        // The object is recorded in the same statement as its runs (no extra round trip).
        let _ = tx.cexecute(
            "WITH o AS (INSERT INTO floe_objects (key, size, created_ms) VALUES ($11, $12, $14) ON CONFLICT (key) DO NOTHING)
             INSERT INTO floe_runs (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first)
             SELECT t, p, b, n, $11, $12, rf, rc, bs, be, mn, mx, fr
             FROM UNNEST($1::bigint[], $2::int[], $3::bigint[], $4::int[], $5::int[], $6::int[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $13::int[])
               AS u(t, p, b, n, rf, rc, bs, be, mn, mx, fr)",
            &[&c_t, &c_p, &c_b, &c_n, &c_rf, &c_rc, &c_bs, &c_be, &c_mn, &c_mx, &seg.key, &(seg.size as i64), &c_first, &seg.created_ms],
        )
        .await?;
        let new_ends = &plan.ends;
        if !new_ends.is_empty() {
            let ut: Vec<i64> = new_ends.keys().map(|k| k.0).collect();
            let up: Vec<i32> = new_ends.keys().map(|k| k.1 as i32).collect();
            let un: Vec<i64> = new_ends.values().map(|v| *v as i64).collect();
            let _ = tx.cexecute(
                "UPDATE floe_partitions p SET next_offset = u.n FROM UNNEST($1::bigint[], $2::int[], $3::bigint[]) AS u(t, p, n)
                 WHERE p.topic_id = u.t AND p.partition = u.p",
                &[&ut, &up, &un],
            )
            .await?;
            for payload in notify_payloads(new_ends) {
                let _ = tx
                    .cexecute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                    .await?;
            }
        }
        if !plan.seqs.is_empty() {
            let (mut s_p, mut s_t, mut s_n, mut s_e, mut s_q, mut s_r) =
                (vec![], vec![], vec![], vec![], vec![], vec![]);
            for ((pid, t, n), st) in &plan.seqs {
                s_p.push(*pid);
                s_t.push(*t);
                s_n.push(*n as i32);
                s_e.push(st.epoch as i32);
                s_q.push(st.next_seq);
                s_r.push(floe_core::producer::encode_recent(&st.recent));
            }
            let _ = tx
                .cexecute(
                    "INSERT INTO floe_producer_seqs (producer_id, topic_id, partition, epoch, next_seq, recent, touched_ms)
                     SELECT p, t, n, e, q, r, $7 FROM UNNEST($1::bigint[], $2::bigint[], $3::int[], $4::int[], $5::bigint[], $6::text[]) AS u(p, t, n, e, q, r)
                     ON CONFLICT (producer_id, topic_id, partition) DO UPDATE
                       SET epoch = EXCLUDED.epoch, next_seq = EXCLUDED.next_seq, recent = EXCLUDED.recent, touched_ms = EXCLUDED.touched_ms",
                    &[&s_p, &s_t, &s_n, &s_e, &s_q, &s_r, &seg.created_ms],
                )
                .await?;
        }
        for w in &seg.state_writes {
            if !cas_state(&tx, &w.key, w.expected, &w.data).await? {
                return Err(CommitError::Index(IndexError::StateConflict(w.key.clone())));
            }
        }
        for c in &seg.idempotency {
            let Some(answer) = completion_answer(c, &seg.runs, &plan) else {
                continue;
            };
            let n = tx
                .cexecute(
                    "UPDATE floe_idempotency SET done = TRUE, answer = $4
                     WHERE topic_id = $1 AND key = $2 AND token = $3 AND NOT done",
                    &[&c.topic_id, &c.key, &c.token, &answer],
                )
                .await?;
            if n != 1 {
                return Err(CommitError::Index(IndexError::IdempotencyLost(
                    c.key.clone(),
                )));
            }
        }
        // Last step before COMMIT, on the server's clock: a commit that stalled past its
        // deadline (hung server, lock waits) is rolled back when the transaction drops.
        let now: i64 = tx
            .cquery_one(
                "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )
            .await?
            .get(0);
        check_deadline(seg.deadline_unix_ms, now).map_err(CommitError::Index)?;
        tx.commit().await?;
        Ok(Committed {
            runs: plan.outcomes,
            excluded: plan.excluded,
            producers: plan.verdicts,
        })
    }
}

/// Why one commit attempt failed.
/// Compare-and-swap of one consumer-state blob; false (nothing changed) when the stored
/// version is not `expected`, or when its topic no longer exists (first write; agent
/// rows belong to no topic).
async fn cas_state<C: deadpool_postgres::GenericClient>(
    c: &C,
    key: &StateKey,
    expected: Option<i64>,
    data: &[u8],
) -> std::result::Result<bool, tokio_postgres::Error> {
    let (k, p) = (key.kind.as_str(), key.partition as i32);
    let n = match expected {
        None => {
            c.cexecute(
                "INSERT INTO floe_consumer_state (kind, topic_id, grp, partition, version, data)
                 SELECT $1, $2, $3, $4, 1, $5 WHERE $1 = 'agent' OR EXISTS (SELECT 1 FROM floe_topics WHERE id = $2)
                 ON CONFLICT DO NOTHING",
                &[&k, &key.topic_id, &key.group, &p, &data],
            )
            .await?
        }
        Some(v) => {
            c.cexecute(
                "UPDATE floe_consumer_state SET version = version + 1, data = $5
                 WHERE kind = $1 AND topic_id = $2 AND grp = $3 AND partition = $4 AND version = $6",
                &[&k, &key.topic_id, &key.group, &p, &data, &v],
            )
            .await?
        }
    };
    Ok(n == 1)
}

fn txn_err(e: TxnError) -> CommitError {
    CommitError::Index(IndexError::Txn(e))
}

fn parse_state(s: &str) -> std::result::Result<TxnState, CommitError> {
    TxnState::parse(s)
        .ok_or_else(|| CommitError::Index(IndexError::Corrupt(format!("transaction state {s:?}"))))
}

/// Lock partition rows in (topic, partition) order, as commits do.
async fn lock_partitions(
    tx: &deadpool_postgres::Transaction<'_>,
    keys: &[(i64, u32)],
) -> std::result::Result<(), CommitError> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    let tids: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let parts: Vec<i32> = keys.iter().map(|k| k.1 as i32).collect();
    let _ = tx
        .cquery(
            "SELECT 1 FROM floe_partitions p
             JOIN UNNEST($1::bigint[], $2::int[]) AS k(t, p) ON p.topic_id = k.t AND p.partition = k.p
             ORDER BY p.topic_id, p.partition FOR UPDATE OF p",
            &[&tids, &parts],
        )
        .await?;
    Ok(())
}

async fn txn_partitions(
    tx: &deadpool_postgres::Transaction<'_>,
    pid: i64,
    epoch: u32,
) -> std::result::Result<Vec<(i64, u32)>, CommitError> {
    Ok(tx
        .cquery(
            "SELECT DISTINCT topic_id, partition FROM floe_txn_batches WHERE producer_id = $1 AND epoch = $2",
            &[&pid, &(epoch as i32)],
        )
        .await?
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i32>(1) as u32))
        .collect())
}

/// End a transaction inside `tx` (RFC 0005), locking partitions (those it wrote), then
/// the transaction row — the order commits use, which hold the transaction row shared
/// while they add batches to it.
async fn end_txn_in(
    tx: &deadpool_postgres::Transaction<'_>,
    e: &EndTxn,
) -> std::result::Result<TxnEnded, CommitError> {
    let (pid, epoch) = (e.producer_id, e.epoch);
    let mut locked = txn_partitions(tx, pid, epoch).await?;
    lock_partitions(tx, &locked).await?;
    let stored = tx
        .cquery_opt(
            "SELECT state FROM floe_txns WHERE producer_id = $1 AND epoch = $2 FOR UPDATE",
            &[&pid, &(epoch as i32)],
        )
        .await?
        .map(|r| parse_state(r.get(0)))
        .transpose()?;
    if let Some(repeated) = end_answer(stored, e).map_err(CommitError::Index)? {
        return Ok(repeated);
    }
    // Final now (commits adding batches hold the row shared); lock any partition a
    // commit added since the first read (rare; out of order, so a deadlock is possible
    // and retried).
    let now_parts = txn_partitions(tx, pid, epoch).await?;
    let extra: Vec<(i64, u32)> = now_parts
        .iter()
        .filter(|k| !locked.contains(k))
        .copied()
        .collect();
    if !extra.is_empty() {
        lock_partitions(tx, &extra).await?;
        locked.extend(extra);
    }
    match e.outcome {
        Outcome::Commit => {
            for oc in &e.offsets {
                let k = &oc.group;
                let blob: Option<Vec<u8>> = tx
                    .cquery_opt(
                        "SELECT data FROM floe_consumer_state WHERE kind = $1 AND topic_id = $2 AND grp = $3 AND partition = $4 FOR SHARE",
                        &[&k.kind.as_str(), &k.topic_id, &k.group, &(k.partition as i32)],
                    )
                    .await?
                    .map(|r| r.get(0));
                match fence(blob.as_deref(), oc) {
                    Ok(()) => {}
                    Err(IndexError::Fenced(g)) => return Err(txn_err(TxnError::Offsets(g))),
                    Err(other) => return Err(CommitError::Index(other)),
                }
                for (p, o) in &oc.offsets {
                    let _ = tx
                        .cexecute(
                            "INSERT INTO floe_group_offsets (topic_id, grp, partition, next_offset) VALUES ($1, $2, $3, $4)
                             ON CONFLICT (topic_id, grp, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
                            &[&k.topic_id, &k.group, &(*p as i32), &(*o as i64)],
                        )
                        .await?;
                }
            }
        }
        Outcome::Abort => {
            let batches = tx
                .cquery(
                    "SELECT topic_id, partition, base_offset, records FROM floe_txn_batches WHERE producer_id = $1 AND epoch = $2 ORDER BY topic_id, partition, base_offset",
                    &[&pid, &(epoch as i32)],
                )
                .await?;
            for b in batches {
                punch_hole(
                    tx,
                    b.get(0),
                    b.get::<_, i32>(1) as u32,
                    b.get::<_, i64>(2) as u64,
                    b.get::<_, i32>(3) as u32,
                )
                .await?;
            }
        }
    }
    let _ = tx
        .cexecute(
            "UPDATE floe_txns SET state = $3, ended_ms = $4 WHERE producer_id = $1 AND epoch = $2",
            &[
                &pid,
                &(epoch as i32),
                &e.outcome.state().as_str(),
                &e.now_ms,
            ],
        )
        .await?;
    let _ = tx
        .cexecute(
            "DELETE FROM floe_txn_batches WHERE producer_id = $1 AND epoch = $2",
            &[&pid, &(epoch as i32)],
        )
        .await?;
    let mut partitions = Vec::with_capacity(now_parts.len());
    let mut ends = BTreeMap::new();
    for (t, p) in now_parts {
        if let Some(r) = tx
            .cquery_opt(
                "UPDATE floe_partitions SET stable_hold = (SELECT MIN(base_offset) FROM floe_txn_batches WHERE topic_id = $1 AND partition = $2)
                 WHERE topic_id = $1 AND partition = $2 RETURNING next_offset",
                &[&t, &(p as i32)],
            )
            .await?
        {
            let end = r.get::<_, i64>(0) as u64;
            partitions.push((t, p, end));
            let _ = ends.insert((t, p), end);
        }
    }
    // Readers on other agents wake as on a commit.
    for payload in notify_payloads(&ends) {
        let _ = tx
            .cexecute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await?;
    }
    Ok(TxnEnded {
        repeated: false,
        partitions,
    })
}

/// Turn the aborted batch `base..base + n` of a partition into a hole
/// (`floe_core::txn::punch`); an entry already dropped by retention is left.
async fn punch_hole(
    tx: &deadpool_postgres::Transaction<'_>,
    t: i64,
    p: u32,
    base: u64,
    n: u32,
) -> std::result::Result<(), CommitError> {
    let Some(r) = tx
        .cquery_opt(
            "SELECT base_offset, records, row_first, row_count, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts
             FROM floe_runs WHERE topic_id = $1 AND partition = $2 AND base_offset <= $3 ORDER BY base_offset DESC LIMIT 1",
            &[&t, &(p as i32), &(base as i64)],
        )
        .await?
    else {
        return Ok(());
    };
    let eb = r.get::<_, i64>(0) as u64;
    let records = r.get::<_, i32>(1) as u32;
    if eb + u64::from(records) <= base {
        return Ok(()); // dropped by retention
    }
    let entry = EntryPiece {
        base_offset: eb,
        records,
        row_first: r.get::<_, i32>(2) as u32,
        rows: r.get::<_, Option<i32>>(3).map_or(records, |v| v as u32),
    };
    let pieces = punch(entry, base, n).map_err(|err| {
        CommitError::Index(IndexError::Corrupt(format!(
            "aborting ({t}, {p}) {base}+{n}: {err}"
        )))
    })?;
    let _ = tx
        .cexecute(
            "DELETE FROM floe_runs WHERE topic_id = $1 AND partition = $2 AND base_offset = $3",
            &[&t, &(p as i32), &(eb as i64)],
        )
        .await?;
    let key: String = r.get(4);
    for x in pieces {
        let rows = (x.rows != x.records).then_some(x.rows as i32);
        let _ = tx
            .cexecute(
                "INSERT INTO floe_runs (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first, row_count)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                &[
                    &t, &(p as i32), &(x.base_offset as i64), &(x.records as i32), &key,
                    &r.get::<_, i64>(5), &r.get::<_, i32>(6), &r.get::<_, i32>(7), &r.get::<_, i64>(8),
                    &r.get::<_, i64>(9), &r.get::<_, i64>(10), &r.get::<_, i64>(11), &(x.row_first as i32), &rows,
                ],
            )
            .await?;
    }
    Ok(())
}

fn retryable(e: &CommitError) -> bool {
    matches!(e, CommitError::Pg(e) if matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED))
}

fn final_err(e: CommitError) -> IndexError {
    match e {
        CommitError::Pg(e) => pg(e),
        CommitError::Index(e) => e,
        CommitError::Pool(e) => IndexError::Postgres(format!("connection pool: {e}")),
    }
}

enum CommitError {
    Pg(tokio_postgres::Error),
    Pool(String),
    Index(IndexError),
}

impl From<tokio_postgres::Error> for CommitError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Pg(e)
    }
}

/// Split commit notifications into payloads under PostgreSQL's limit.
pub(crate) fn notify_payloads(ends: &BTreeMap<(i64, u32), u64>) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ((t, p), e) in ends {
        let item = format!("{t}:{p}:{e}");
        if !cur.is_empty() && cur.len() + item.len() + 1 > MAX_PAYLOAD {
            out.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(',');
        }
        cur.push_str(&item);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A run entry from the 11 columns starting at `at` (base offset, records, key, size,
/// row groups first/count, byte start/end, first row, max timestamp, rows).
fn run_entry(r: &tokio_postgres::Row, at: usize) -> Result<RunEntry> {
    Ok(RunEntry {
        base_offset: to_u64(r.get(at), "base_offset")?,
        records: to_u32(r.get(at + 1), "records")?,
        segment_key: r.get(at + 2),
        segment_size: to_u64(r.get(at + 3), "segment_size")?,
        row_group_first: to_u32(r.get(at + 4), "rg_first")?,
        row_group_count: to_u32(r.get(at + 5), "rg_count")?,
        byte_start: to_u64(r.get(at + 6), "byte_start")?,
        byte_end: to_u64(r.get(at + 7), "byte_end")?,
        row_first: to_u32(r.get(at + 8), "row_first")?,
        max_timestamp_ms: r.get(at + 9),
        rows: to_u32(r.get(at + 10), "row_count")?,
    })
}

/// Parse a NOTIFY payload back into (topic_id, partition, end_offset) triples.
pub(crate) fn parse_payload(s: &str) -> Vec<(i64, u32, u64)> {
    s.split(',')
        .filter_map(|item| {
            let mut it = item.split(':');
            Some((
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
                it.next()?.parse().ok()?,
            ))
        })
        .collect()
}

const TOPIC_COLS: &str = "id, name, partitions, retention_ms, config, created_ms";

fn topic_from(r: &tokio_postgres::Row) -> Result<TopicMeta> {
    Ok(TopicMeta {
        id: r.get(0),
        name: r.get(1),
        partitions: to_u32(r.get(2), "partitions")?,
        retention_ms: r.get(3),
        config: decode_config(r.get(4))?,
        created_ms: r.get(5),
    })
}

#[async_trait]
impl Index for PostgresIndex {
    async fn create_topic(&self, t: NewTopic) -> Result<TopicMeta> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Serialize topic creation so the topic-count limit holds across agents.
        let _ = tx
            .cexecute("SELECT pg_advisory_xact_lock(7340124)", &[])
            .await
            .map_err(pg)?;
        let n: i64 = tx
            .cquery_one("SELECT COUNT(*) FROM floe_topics", &[])
            .await
            .map_err(pg)?
            .get(0);
        if n as usize >= t.max_topics {
            return Err(IndexError::TooManyTopics(t.max_topics));
        }
        let row = tx
            .cquery_opt(
                "INSERT INTO floe_topics (name, partitions, retention_ms, config, created_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[&t.name, &(t.partitions as i32), &t.retention_ms, &encode_config(&t.config), &t.created_ms],
            )
            .await
            .map_err(pg)?;
        let Some(row) = row else {
            return Err(IndexError::TopicExists(t.name));
        };
        let id: i64 = row.get(0);
        let _ = tx.cexecute(
            "INSERT INTO floe_partitions (topic_id, partition, start_offset, next_offset) SELECT $1, g, 0, 0 FROM generate_series(0, $2 - 1) g",
            &[&id, &(t.partitions as i32)],
        )
        .await
        .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(TopicMeta {
            id,
            name: t.name,
            partitions: t.partitions,
            retention_ms: t.retention_ms,
            config: t.config,
            created_ms: t.created_ms,
        })
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        let c = self.client().await?;
        let rows = c
            .cquery(
                &format!("SELECT {TOPIC_COLS} FROM floe_topics ORDER BY name"),
                &[],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(topic_from).collect()
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        let c = self.client().await?;
        let row = c
            .cquery_opt(
                &format!("SELECT {TOPIC_COLS} FROM floe_topics WHERE name = $1"),
                &[&name],
            )
            .await
            .map_err(pg)?;
        row.as_ref().map(topic_from).transpose()
    }

    async fn delete_topic(&self, name: &str) -> Result<bool> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let Some(row) = tx
            .cquery_opt(
                "DELETE FROM floe_topics WHERE name = $1 RETURNING id",
                &[&name],
            )
            .await
            .map_err(pg)?
        else {
            return Ok(false);
        };
        let id: i64 = row.get(0);
        let _ = tx
            .cexecute("DELETE FROM floe_partitions WHERE topic_id = $1", &[&id])
            .await
            .map_err(pg)?;
        let _ = tx
            .cexecute("DELETE FROM floe_runs WHERE topic_id = $1", &[&id])
            .await
            .map_err(pg)?;
        let _ = tx
            .cexecute(
                "DELETE FROM floe_consumer_state WHERE topic_id = $1",
                &[&id],
            )
            .await
            .map_err(pg)?;
        let _ = tx
            .cexecute("DELETE FROM floe_group_offsets WHERE topic_id = $1", &[&id])
            .await
            .map_err(pg)?;
        let _ = tx
            .cexecute("DELETE FROM floe_idempotency WHERE topic_id = $1", &[&id])
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    async fn partition_offsets(&self, topic_id: i64) -> Result<Vec<PartitionOffsets>> {
        let c = self.client().await?;
        let rows = c
            .cquery("SELECT partition, start_offset, next_offset, LEAST(COALESCE(stable_hold, next_offset), next_offset) FROM floe_partitions WHERE topic_id = $1 ORDER BY partition", &[&topic_id])
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok(PartitionOffsets {
                    partition: to_u32(r.get(0), "partition")?,
                    start_offset: to_u64(r.get(1), "start_offset")?,
                    end_offset: to_u64(r.get(2), "next_offset")?,
                    stable_offset: to_u64(r.get(3), "stable_offset")?,
                })
            })
            .collect()
    }

    async fn end_offset(&self, topic_id: i64, partition: u32) -> Result<Option<u64>> {
        let c = self.client().await?;
        let row = c
            .cquery_opt(
                "SELECT next_offset FROM floe_partitions WHERE topic_id = $1 AND partition = $2",
                &[&topic_id, &(partition as i32)],
            )
            .await
            .map_err(pg)?;
        row.map(|r| to_u64(r.get(0), "next_offset")).transpose()
    }

    async fn commit_segment(&self, seg: SegmentCommit) -> Result<Committed> {
        let mut last = None;
        for attempt in 0..COMMIT_ATTEMPTS {
            match self.try_commit(&seg).await {
                Ok(out) => return Ok(out),
                Err(CommitError::Pg(e)) if matches!(e.code(), Some(c) if *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED) =>
                {
                    warn!(attempt, error = %e, "commit conflict; retrying");
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    last = Some(pg(e));
                }
                Err(CommitError::Pg(e)) => return Err(pg(e)),
                Err(CommitError::Index(e)) => return Err(e),
                Err(CommitError::Pool(e)) => {
                    return Err(IndexError::Postgres(format!("connection pool: {e}")));
                }
            }
        }
        Err(last.unwrap_or_else(|| IndexError::Postgres("commit retries exhausted".into())))
    }

    async fn init_producer(&self, name: Option<&str>, now_ms: i64) -> Result<(i64, u32)> {
        let mut attempt = 0;
        loop {
            match self.try_init_producer(name, now_ms).await {
                Err(e) if retryable(&e) && attempt + 1 < COMMIT_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                other => return other.map_err(final_err),
            }
        }
    }

    async fn log_ends(&self, topic_id: i64, partition: u32) -> Result<Option<(u64, u64)>> {
        let c = self.client().await?;
        let row = c
            .cquery_opt(
                "SELECT next_offset, stable_hold FROM floe_partitions WHERE topic_id = $1 AND partition = $2",
                &[&topic_id, &(partition as i32)],
            )
            .await
            .map_err(pg)?;
        row.map(|r| {
            let end = to_u64(r.get(0), "next_offset")?;
            let hold = r
                .get::<_, Option<i64>>(1)
                .map(|h| to_u64(h, "stable_hold"))
                .transpose()?;
            Ok((end, stable_offset(end, hold)))
        })
        .transpose()
    }

    async fn begin_txn(&self, b: BeginTxn) -> Result<u32> {
        let mut attempt = 0;
        loop {
            match self.try_begin_txn(&b).await {
                Err(e) if retryable(&e) && attempt + 1 < COMMIT_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                other => return other.map_err(final_err),
            }
        }
    }

    async fn end_txn(&self, e: EndTxn) -> Result<TxnEnded> {
        let mut attempt = 0;
        loop {
            match self.try_end_txn(&e).await {
                Err(err) if retryable(&err) && attempt + 1 < COMMIT_ATTEMPTS => {
                    warn!(attempt, "transaction end conflict; retrying");
                    tokio::time::sleep(Duration::from_millis(5 << attempt)).await;
                    attempt += 1;
                }
                other => return other.map_err(final_err),
            }
        }
    }

    async fn transactions(&self, open_only: bool) -> Result<Vec<TxnInfo>> {
        let c = self.client().await?;
        let rows = c
            .cquery(
                "SELECT t.producer_id, p.name, t.epoch, t.state, t.started_ms, t.deadline_ms, t.check_url, t.checks
                 FROM floe_txns t LEFT JOIN floe_producers p ON p.id = t.producer_id
                 WHERE NOT $1 OR t.state = 'open' ORDER BY t.started_ms, t.producer_id LIMIT 10000",
                &[&open_only],
            )
            .await
            .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (producer_id, epoch): (i64, i32) = (r.get(0), r.get(2));
            let state: String = r.get(3);
            let parts = c
                .cquery(
                    "SELECT topic_id, partition, MIN(base_offset), SUM(records)::bigint FROM floe_txn_batches
                     WHERE producer_id = $1 AND epoch = $2 GROUP BY topic_id, partition ORDER BY topic_id, partition",
                    &[&producer_id, &epoch],
                )
                .await
                .map_err(pg)?;
            out.push(TxnInfo {
                producer_id,
                name: r.get(1),
                epoch: to_u32(epoch, "epoch")?,
                state: TxnState::parse(&state)
                    .ok_or_else(|| IndexError::Corrupt(format!("transaction state {state:?}")))?,
                started_ms: r.get(4),
                deadline_ms: r.get(5),
                check_url: r.get(6),
                checks: to_u32(r.get(7), "checks")?,
                partitions: parts
                    .iter()
                    .map(|q| {
                        Ok((
                            q.get::<_, i64>(0),
                            to_u32(q.get(1), "partition")?,
                            to_u64(q.get(2), "base_offset")?,
                            to_u64(q.get(3), "records")?,
                        ))
                    })
                    .collect::<Result<_>>()?,
            });
        }
        Ok(out)
    }

    async fn due_transactions(&self, now_ms: i64, limit: u32) -> Result<(u64, Vec<TxnInfo>)> {
        let c = self.client().await?;
        let open: i64 = c
            .cquery_one("SELECT COUNT(*) FROM floe_txns WHERE state = 'open'", &[])
            .await
            .map_err(pg)?
            .get(0);
        let rows = c
            .cquery(
                "SELECT producer_id, epoch, started_ms, deadline_ms, check_url, checks FROM floe_txns
                 WHERE state = 'open' AND deadline_ms < $1 ORDER BY deadline_ms LIMIT $2",
                &[&now_ms, &i64::from(limit)],
            )
            .await
            .map_err(pg)?;
        let due = rows
            .iter()
            .map(|r| {
                Ok(TxnInfo {
                    producer_id: r.get(0),
                    name: None,
                    epoch: to_u32(r.get(1), "epoch")?,
                    state: TxnState::Open,
                    started_ms: r.get(2),
                    deadline_ms: r.get(3),
                    check_url: r.get(4),
                    checks: to_u32(r.get(5), "checks")?,
                    partitions: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((to_u64(open, "count")?, due))
    }

    async fn claim_check(
        &self,
        producer_id: i64,
        epoch: u32,
        checks: u32,
        next_deadline_ms: i64,
    ) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .cexecute(
                "UPDATE floe_txns SET checks = checks + 1, deadline_ms = $4
                 WHERE producer_id = $1 AND epoch = $2 AND state = 'open' AND checks = $3",
                &[
                    &producer_id,
                    &(epoch as i32),
                    &(checks as i32),
                    &next_deadline_ms,
                ],
            )
            .await
            .map_err(pg)?;
        Ok(n == 1)
    }

    async fn dedup_state_counts(&self) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let r = c
            .cquery_one(
                "SELECT (SELECT COUNT(*) FROM floe_idempotency), (SELECT COUNT(*) FROM floe_producer_seqs)",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok((to_u64(r.get(0), "count")?, to_u64(r.get(1), "count")?))
    }

    async fn expire_producers(&self, cutoff_ms: i64) -> Result<u64> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let n = tx
            .cexecute(
                "DELETE FROM floe_producer_seqs WHERE touched_ms < $1",
                &[&cutoff_ms],
            )
            .await
            .map_err(pg)?;
        let _ = tx
            .cexecute(
                "DELETE FROM floe_txns WHERE state <> 'open' AND ended_ms < $1",
                &[&cutoff_ms],
            )
            .await
            .map_err(pg)?;
        let _ = tx
            .cexecute(
                "DELETE FROM floe_producers p WHERE touched_ms < $1
                 AND NOT EXISTS (SELECT 1 FROM floe_producer_seqs s WHERE s.producer_id = p.id)
                 AND NOT EXISTS (SELECT 1 FROM floe_txns t WHERE t.producer_id = p.id AND t.state = 'open')",
                &[&cutoff_ms],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(n)
    }

    async fn runs_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<RunEntry>> {
        let c = self.client().await?;
        let rows = c
            .cquery(
                "SELECT base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, row_first, max_ts, COALESCE(row_count, records) FROM floe_runs
                 WHERE topic_id = $1 AND partition = $2 AND base_offset >= COALESCE(
                    (SELECT MAX(base_offset) FROM floe_runs WHERE topic_id = $1 AND partition = $2 AND base_offset <= $3), 0)
                 ORDER BY base_offset LIMIT $4",
                &[&topic_id, &(partition as i32), &to_i64(offset, "offset")?, &i64::from(limit)],
            )
            .await
            .map_err(pg)?;
        rows.iter().map(|r| run_entry(r, 0)).collect()
    }

    async fn read_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> Result<Option<((u64, u64), Vec<RunEntry>)>> {
        let c = self.client().await?;
        // One statement, one snapshot: the runs never reach past the end offset read.
        let rows = c
            .cquery(
                "SELECT p.next_offset, p.stable_hold, r.base_offset, r.records, r.segment_key, r.segment_size, r.rg_first, r.rg_count, r.byte_start, r.byte_end, r.row_first, r.max_ts, COALESCE(r.row_count, r.records)
                 FROM floe_partitions p LEFT JOIN LATERAL (
                    SELECT * FROM floe_runs
                    WHERE topic_id = $1 AND partition = $2 AND base_offset >= COALESCE(
                       (SELECT MAX(base_offset) FROM floe_runs WHERE topic_id = $1 AND partition = $2 AND base_offset <= $3), 0)
                    ORDER BY base_offset LIMIT $4) r ON $3 <= p.next_offset
                 WHERE p.topic_id = $1 AND p.partition = $2
                 ORDER BY r.base_offset",
                // Past the end (any u64): the partition row alone, no runs.
                &[&topic_id, &(partition as i32), &i64::try_from(offset).unwrap_or(i64::MAX), &i64::from(limit)],
            )
            .await
            .map_err(pg)?;
        let Some(first) = rows.first() else {
            return Ok(None);
        };
        let end = to_u64(first.get(0), "next_offset")?;
        let hold = first
            .get::<_, Option<i64>>(1)
            .map(|h| to_u64(h, "stable_hold"))
            .transpose()?;
        let runs = rows
            .iter()
            .filter(|r| r.get::<_, Option<i64>>(2).is_some())
            .map(|r| run_entry(r, 2))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(((end, stable_offset(end, hold)), runs)))
    }

    async fn segment_referenced(&self, key: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.cquery_opt(
            "SELECT 1 FROM floe_runs WHERE segment_key = $1 LIMIT 1",
            &[&key],
        )
        .await
        .map_err(pg)?
        .is_some())
    }

    async fn unreferenced_objects(&self, before_ms: i64, limit: u32) -> Result<Vec<String>> {
        let c = self.client().await?;
        Ok(c.cquery(
            "SELECT key FROM floe_objects o WHERE created_ms < $1
               AND NOT EXISTS (SELECT 1 FROM floe_runs r WHERE r.segment_key = o.key)
             ORDER BY created_ms LIMIT $2",
            &[&before_ms, &i64::from(limit)],
        )
        .await
        .map_err(pg)?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    async fn forget_objects(&self, keys: &[String]) -> Result<()> {
        let c = self.client().await?;
        let _ = c
            .cexecute("DELETE FROM floe_objects WHERE key = ANY($1)", &[&keys])
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn object_totals(&self) -> Result<(u64, u64)> {
        let c = self.client().await?;
        let row = c
            .cquery_one(
                "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM floe_objects",
                &[],
            )
            .await
            .map_err(pg)?;
        Ok((
            to_u64(row.get(0), "objects")?,
            to_u64(row.get(1), "object bytes")?,
        ))
    }

    async fn ping(&self) -> Result<()> {
        let c = self.client().await?;
        let _ = c.cquery_one("SELECT 1", &[]).await.map_err(pg)?;
        Ok(())
    }

    async fn load_state(&self, key: &StateKey) -> Result<Option<Versioned>> {
        let c = self.client().await?;
        let row = c
            .cquery_opt(
                "SELECT version, data FROM floe_consumer_state WHERE kind = $1 AND topic_id = $2 AND grp = $3 AND partition = $4",
                &[&key.kind.as_str(), &key.topic_id, &key.group, &(key.partition as i32)],
            )
            .await
            .map_err(pg)?;
        Ok(row.map(|r| Versioned {
            version: r.get(0),
            data: r.get(1),
        }))
    }

    async fn store_state(
        &self,
        key: &StateKey,
        expected: Option<i64>,
        data: Vec<u8>,
    ) -> Result<bool> {
        let c = self.client().await?;
        cas_state(&c, key, expected, &data).await.map_err(pg)
    }

    async fn apply_retention(&self, topic_id: i64, cutoff_ms: i64) -> Result<Vec<(u32, u64)>> {
        self.retain(topic_id, Retention::Time { cutoff_ms }).await
    }

    async fn apply_size_retention(&self, topic_id: i64, max_bytes: u64) -> Result<Vec<(u32, u64)>> {
        self.retain(topic_id, Retention::Size { max_bytes }).await
    }

    async fn replace_runs(&self, r: ReplaceRuns) -> Result<bool> {
        let entries = r.new_entries()?;
        let (first, end) = match (r.old.first(), entries.last()) {
            (Some(f), Some(l)) => (to_i64(f.0, "first")?, to_i64(l.0 + u64::from(l.1), "end")?),
            _ => return Ok(false),
        };
        let p = i32::try_from(r.partition)
            .map_err(|_| IndexError::Corrupt(format!("partition {} out of range", r.partition)))?;
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // As a commit: the boundary FOR SHARE (an advance waits for this swap, or the swap
        // sees it), then the partition row locked like a commit or retention does.
        let boundary: i64 = tx
            .cquery_one(
                "SELECT boundary_ms FROM floe_deletion_boundary WHERE id = 0 FOR SHARE",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        if r.created_ms < boundary {
            return Err(IndexError::SegmentTooOld {
                created_ms: r.created_ms,
                boundary_ms: boundary,
            });
        }
        if tx
            .cquery_opt(
                "SELECT 1 FROM floe_partitions WHERE topic_id = $1 AND partition = $2 FOR UPDATE",
                &[&r.topic_id, &p],
            )
            .await
            .map_err(pg)?
            .is_none()
        {
            return Ok(false);
        }
        let current = tx
            .cquery(
                "SELECT base_offset, records, segment_key FROM floe_runs WHERE topic_id = $1 AND partition = $2 AND base_offset >= $3 AND base_offset < $4 ORDER BY base_offset",
                &[&r.topic_id, &p, &first, &end],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|row| {
                Ok((
                    to_u64(row.get(0), "base_offset")?,
                    u32::try_from(row.get::<_, i32>(1))
                        .map_err(|_| IndexError::Corrupt("negative run length".into()))?,
                    row.get::<_, String>(2),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        if current != r.old {
            return Ok(false);
        }
        let _ = tx
            .cexecute(
                "DELETE FROM floe_runs WHERE topic_id = $1 AND partition = $2 AND base_offset >= $3 AND base_offset < $4",
                &[&r.topic_id, &p, &first, &end],
            )
            .await
            .map_err(pg)?;
        let size = to_i64(r.size, "size")?;
        for (run, (base, n, rows)) in r.runs.iter().zip(&entries) {
            let vals: [i64; 4] = [
                to_i64(*base, "base")?,
                to_i64(run.byte_start, "byte_start")?,
                to_i64(run.byte_end, "byte_end")?,
                size,
            ];
            let small = |v: u32, what: &str| {
                i32::try_from(v)
                    .map_err(|_| IndexError::Corrupt(format!("{what} {v} out of range")))
            };
            let (rows, n, rf, rc) = (
                (rows != n).then(|| small(*rows, "rows")).transpose()?,
                small(*n, "records")?,
                small(run.row_group_first, "rg_first")?,
                small(run.row_group_count, "rg_count")?,
            );
            let _ = tx
                .cexecute(
                    "INSERT INTO floe_runs (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first, row_count) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 0, $13)",
                    &[&r.topic_id, &p, &vals[0], &n, &r.key, &vals[3], &rf, &rc, &vals[1], &vals[2], &run.min_timestamp_ms, &run.max_timestamp_ms, &rows],
                )
                .await
                .map_err(pg)?;
        }
        let _ = tx
            .cexecute(
                "INSERT INTO floe_objects (key, size, created_ms) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
                &[&r.key, &size, &r.created_ms],
            )
            .await
            .map_err(pg)?;
        tx.commit().await.map_err(pg)?;
        Ok(true)
    }

    async fn advance_deletion_boundary(&self, to_ms: i64) -> Result<i64> {
        let c = self.client().await?;
        let row = c
            .cquery_one(
                "UPDATE floe_deletion_boundary SET boundary_ms = GREATEST(boundary_ms, $1) WHERE id = 0 RETURNING boundary_ms",
                &[&to_ms],
            )
            .await
            .map_err(pg)?;
        Ok(row.get(0))
    }

    async fn idempotency_begin(&self, b: IdempotencyBegin) -> Result<IdempotencyVerdict> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        // Make the row exist (as a dead placeholder the decision replaces) and lock it, so
        // that concurrent attempts with one key decide one after the other.
        let _ = tx
            .cexecute(
                "INSERT INTO floe_idempotency (topic_id, key, fingerprint, token, done, answer, lease_until, expires)
                 VALUES ($1, $2, 0, 0, FALSE, NULL, 0, 0) ON CONFLICT DO NOTHING",
                &[&b.topic_id, &b.key],
            )
            .await
            .map_err(pg)?;
        let r = tx
            .cquery_one(
                "SELECT fingerprint, done, lease_until, expires, answer FROM floe_idempotency
                 WHERE topic_id = $1 AND key = $2 FOR UPDATE",
                &[&b.topic_id, &b.key],
            )
            .await
            .map_err(pg)?;
        let stored = idempotency::Stored {
            fingerprint: r.get::<_, i64>(0) as u64,
            done: r.get(1),
            lease_until_ms: r.get(2),
            expires_ms: r.get(3),
        };
        let verdict = match idempotency::begin(Some(&stored), b.fingerprint, b.now_ms) {
            idempotency::Begin::Start => {
                let _ = tx
                    .cexecute(
                        "UPDATE floe_idempotency SET fingerprint = $3, token = $4, done = FALSE, answer = NULL,
                           lease_until = $5, expires = $6 WHERE topic_id = $1 AND key = $2",
                        &[
                            &b.topic_id,
                            &b.key,
                            &(b.fingerprint as i64),
                            &b.token,
                            &b.lease_until_ms,
                            &b.expires_ms,
                        ],
                    )
                    .await
                    .map_err(pg)?;
                IdempotencyVerdict::Started
            }
            idempotency::Begin::Replay => {
                let answer: Option<String> = r.get(4);
                replay(&b.key, answer.as_deref())?
            }
            idempotency::Begin::Mismatch => IdempotencyVerdict::Mismatch,
            idempotency::Begin::InFlight => IdempotencyVerdict::InFlight,
        };
        tx.commit().await.map_err(pg)?;
        Ok(verdict)
    }

    async fn idempotency_abandon(&self, topic_id: i64, key: &str, token: i64) -> Result<()> {
        let c = self.client().await?;
        let _ = c
            .cexecute(
                "DELETE FROM floe_idempotency WHERE topic_id = $1 AND key = $2 AND token = $3 AND NOT done",
                &[&topic_id, &key, &token],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    async fn expire_idempotency(&self, now_ms: i64) -> Result<u64> {
        let c = self.client().await?;
        let n = c
            .cexecute(
                "DELETE FROM floe_idempotency WHERE expires <= $1 AND (done OR lease_until <= $1)",
                &[&now_ms],
            )
            .await
            .map_err(pg)?;
        Ok(n)
    }

    async fn commit_offsets(&self, oc: OffsetCommit) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(pg)?;
        let k = &oc.group;
        // FOR SHARE: a membership change (which rewrites the blob) waits for this commit,
        // and this commit waits for one in progress, so the fence sees the state the
        // offsets are committed under.
        let blob: Option<Vec<u8>> = tx
            .cquery_opt(
                "SELECT data FROM floe_consumer_state WHERE kind = $1 AND topic_id = $2 AND grp = $3 AND partition = $4 FOR SHARE",
                &[&k.kind.as_str(), &k.topic_id, &k.group, &(k.partition as i32)],
            )
            .await
            .map_err(pg)?
            .map(|r| r.get(0));
        fence(blob.as_deref(), &oc)?;
        let st = tx
            .prepare_cached(
                "INSERT INTO floe_group_offsets (topic_id, grp, partition, next_offset) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (topic_id, grp, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
            )
            .await
            .map_err(pg)?;
        for (p, o) in &oc.offsets {
            let o = i64::try_from(*o)
                .map_err(|_| IndexError::Corrupt(format!("offset {o} exceeds BIGINT")))?;
            let _ = tx
                .execute(&st, &[&k.topic_id, &k.group, &(*p as i32), &o])
                .await
                .map_err(pg)?;
        }
        tx.commit().await.map_err(pg)?;
        Ok(())
    }

    async fn group_offsets(&self, topic_id: i64, group: &str) -> Result<BTreeMap<u32, u64>> {
        let c = self.client().await?;
        let rows = c
            .cquery(
                "SELECT partition, next_offset FROM floe_group_offsets WHERE topic_id = $1 AND grp = $2",
                &[&topic_id, &group],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                let o: i64 = r.get(1);
                Ok((
                    to_u32(r.get(0), "partition")?,
                    u64::try_from(o)
                        .map_err(|_| IndexError::Corrupt(format!("negative offset {o}")))?,
                ))
            })
            .collect()
    }

    async fn list_states(
        &self,
        kind: StateKind,
        topic_id: Option<i64>,
    ) -> Result<Vec<(StateKey, Versioned)>> {
        let c = self.client().await?;
        let rows = c
            .cquery(
                "SELECT topic_id, grp, partition, version, data FROM floe_consumer_state
                 WHERE kind = $1 AND ($2::BIGINT IS NULL OR topic_id = $2) ORDER BY topic_id, grp, partition",
                &[&kind.as_str(), &topic_id],
            )
            .await
            .map_err(pg)?;
        rows.iter()
            .map(|r| {
                Ok((
                    StateKey {
                        kind,
                        topic_id: r.get(0),
                        group: r.get(1),
                        partition: to_u32(r.get(2), "partition")?,
                    },
                    Versioned {
                        version: r.get(3),
                        data: r.get(4),
                    },
                ))
            })
            .collect()
    }

    async fn watch_commits(&self, sink: CommitSink, mut stop: watch::Receiver<bool>) {
        let config = self.config.clone();
        loop {
            let session = listen_once(&config, &sink).instrument(info_span!("pg_listen"));
            tokio::select! {
                r = session => {
                    if let Err(e) = r {
                        warn!(error = %e, "commit listener lost its connection; reconnecting");
                    }
                }
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// One LISTEN session on a dedicated connection; returns when the connection ends.
async fn listen_once(
    config: &tokio_postgres::Config,
    sink: &CommitSink,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (client, mut conn) = config.connect(NoTls).await?;
    // The connection's messages are handled as they arrive (no queue in between):
    // notifications go straight to the sink.
    let driver_sink = sink.clone();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            if let AsyncMessage::Notification(n) = m? {
                for (t, p, e) in parse_payload(n.payload()) {
                    driver_sink(t, p, e);
                }
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // The session lasts as long as the connection; `client` must stay alive meanwhile.
    let r = driver.await.unwrap_or(Ok(()));
    drop(client);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_split_under_limit_and_roundtrip() {
        let ends: BTreeMap<(i64, u32), u64> = (0..2000)
            .map(|i| ((i64::from(i / 10), i % 10), u64::from(i) * 1000))
            .collect();
        let payloads = notify_payloads(&ends);
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= MAX_PAYLOAD));
        let back: BTreeMap<(i64, u32), u64> = payloads
            .iter()
            .flat_map(|p| parse_payload(p))
            .map(|(t, p, e)| ((t, p), e))
            .collect();
        assert_eq!(back, ends);
    }
}
