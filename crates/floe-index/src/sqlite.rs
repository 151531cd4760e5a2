//! SQLite index: the embedded default. One writer connection serializes commits; a separate
//! reader connection serves lookups (WAL mode lets it read while a commit is running).
//! `synchronous=FULL` makes every commit durable before it returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use floe_core::clock::SharedClock;
use floe_core::idempotency;
use floe_core::producer::SeqState;
use rusqlite::{Connection, OptionalExtension, params};

use floe_core::txn::{EntryPiece, Outcome, TxnState, punch, stable_offset};

use crate::end_answer;
use crate::recent_view::{Deletion, RecentRow, RecentView, log_deletion, sync};
use crate::replay;
use crate::{
    BeginTxn, Committed, EndTxn, IdempotencyBegin, IdempotencyVerdict, Index, IndexError, NewTopic,
    OffsetCommit, PartitionOffsets, ReplaceRuns, Result, Retention, RetentionRun, RunEntry,
    SegmentCommit, SeqKey, StateKey, StateKind, TopicMeta, TxnEnded, TxnError, TxnInfo, Versioned,
    check_deadline, completion_answer, decode_config, encode_config, fence, plan_commit,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS topics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER,
    config TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS partitions (
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition)
) WITHOUT ROWID;
-- `runs`: one row per committed entry, in key order (`RUN_TABLE`, made in `open`).
-- Entries of recent commits (issue #9; RFC 0002 amendments 2 and 7) live in two tables,
-- `runs_recent` and `runs_recent_b`, made from one definition (`RUN_TABLE`, the
-- columns of `runs`): a commit appends its entries to the active one (`active`: 0 or 1)
-- in commit order, so a flush touching hundreds of partitions writes a few pages instead
-- of one leaf of `runs` per partition. Once it holds `recent_limit` entries the roles
-- swap and the full one is copied to `runs` a chunk at a time in key order (up to and
-- including the key `moved_*`; by the background copier, or by commits once it falls
-- behind), then emptied in one go. The recent tables have no index: each connection
-- keeps them in memory (`recent_view`, amendment 10).
CREATE TABLE IF NOT EXISTS recent_state (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    active INTEGER NOT NULL CHECK (active IN (0, 1)),
    moved_topic INTEGER NOT NULL,
    moved_partition INTEGER NOT NULL,
    moved_base INTEGER NOT NULL
);
INSERT OR IGNORE INTO recent_state (id, active, moved_topic, moved_partition, moved_base) VALUES (0, 0, -1, -1, -1);
-- Every deletion from a recent table, numbered (`recent_view`, RFC 0002 amendment 10):
-- connections keep the recent tables in memory and apply these to follow them.
-- NULL: every table / topic / partition.
CREATE TABLE IF NOT EXISTS recent_deletions (
    generation INTEGER PRIMARY KEY,
    tbl INTEGER,
    topic_id INTEGER,
    partition INTEGER
);
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_created ON objects (created_ms);
CREATE TABLE IF NOT EXISTS consumer_state (
    kind TEXT NOT NULL,
    topic_id INTEGER NOT NULL,
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    version INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, topic_id, grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    topic_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    fingerprint INTEGER NOT NULL,
    token INTEGER NOT NULL,
    done INTEGER NOT NULL,
    answer TEXT,
    lease_until INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    PRIMARY KEY (topic_id, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_by_expiry ON idempotency (expires);
CREATE TABLE IF NOT EXISTS deletion_boundary (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    boundary_ms INTEGER NOT NULL
);
INSERT OR IGNORE INTO deletion_boundary (id, boundary_ms) VALUES (0, -9223372036854775808);
CREATE TABLE IF NOT EXISTS group_offsets (
    topic_id INTEGER NOT NULL,
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic_id, grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS producers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT UNIQUE,
    epoch INTEGER NOT NULL,
    touched_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS producer_seqs (
    producer_id INTEGER NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    next_seq INTEGER NOT NULL,
    recent TEXT NOT NULL,
    touched_ms INTEGER NOT NULL,
    PRIMARY KEY (producer_id, topic_id, partition)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS producer_seqs_by_touch ON producer_seqs (touched_ms);
CREATE TABLE IF NOT EXISTS txns (
    producer_id INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    deadline_ms INTEGER NOT NULL,
    ended_ms INTEGER,
    check_url TEXT,
    checks INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (producer_id, epoch)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS txns_by_deadline ON txns (state, deadline_ms);
CREATE TABLE IF NOT EXISTS txn_batches (
    producer_id INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    records INTEGER NOT NULL,
    PRIMARY KEY (producer_id, epoch, topic_id, partition, base_offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS txn_batches_by_partition ON txn_batches (topic_id, partition, base_offset);
";

/// The columns of `runs` and of the two recent tables (`{t}`: the table; `{end}`: what
/// closes the definition; `{seq}`: the recent tables' row number — `runs` is keyed by
/// (topic, partition, base offset) without a rowid, the recent tables are tables in commit
/// order by a never-reused `seq`, with no other index: lookups use the connections' views).
/// Only `runs` has an index by segment key: the sweeper's questions read the recent tables
/// whole (at most twice the recent limit of entries; once per batch of keys,
/// `segments_referenced`), where an index would cost every commit a B-tree insert per
/// entry (commit_cost 256 x 1 000 partitions: mean 7.47 -> 6.2-6.5 ms without it, RFC
/// 0002 amendment 8).
const RUN_TABLE: &str = "
CREATE TABLE IF NOT EXISTS {t} ({seq}
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    records INTEGER NOT NULL,
    segment_key TEXT NOT NULL,
    segment_size INTEGER NOT NULL,
    rg_first INTEGER NOT NULL,
    rg_count INTEGER NOT NULL,
    byte_start INTEGER NOT NULL,
    byte_end INTEGER NOT NULL,
    min_ts INTEGER NOT NULL,
    max_ts INTEGER NOT NULL,
    row_first INTEGER NOT NULL DEFAULT 0,
    row_count INTEGER{end};
";

/// `runs`, keyed by (topic, partition, base offset), with its by-segment index.
fn runs_table() -> String {
    let mut ddl = RUN_TABLE
        .replace("{t}", "runs")
        .replace("{seq}", "")
        .replace(
            "{end}",
            ",\n    PRIMARY KEY (topic_id, partition, base_offset)\n) WITHOUT ROWID",
        );
    ddl += "CREATE INDEX IF NOT EXISTS runs_by_segment ON runs (segment_key);\n";
    ddl
}

/// The two recent tables: rows numbered by a `seq` that is never reused, no other index
/// (`recent_view`).
fn recent_tables() -> String {
    let mut ddl = String::new();
    for t in RECENT {
        ddl += &RUN_TABLE
            .replace("{t}", t)
            .replace("{seq}", "\n    seq INTEGER PRIMARY KEY AUTOINCREMENT,")
            .replace("{end}", "\n)");
    }
    ddl
}

/// Recent tables from before amendment 10 (a by-partition index, no `seq`): their entries
/// move to `runs` and the tables are made anew (the caller then creates them).
fn migrate_recent(c: &mut Connection) -> Result<()> {
    let mut old = Vec::new();
    for t in RECENT {
        let exists = c
            .prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")?
            .exists([t])?;
        let has_seq = c
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{t}') WHERE name = 'seq'"
            ))?
            .exists([])?;
        if exists && !has_seq {
            let has_row_count = c
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{t}') WHERE name = 'row_count'"
                ))?
                .exists([])?;
            old.push((t, has_row_count));
        }
    }
    if old.is_empty() {
        return Ok(());
    }
    let tx = c.transaction()?;
    for (t, has_row_count) in old {
        let cols = if has_row_count {
            RUN_COLS.to_string()
        } else {
            RUN_COLS.replace("row_count", "NULL")
        };
        let _ = tx.execute(
            &format!(
                "INSERT OR IGNORE INTO runs ({RUN_COLS}) SELECT {cols} FROM {t} ORDER BY topic_id, partition, base_offset"
            ),
            [],
        )?;
        tx.execute_batch(&format!("DROP TABLE {t}"))?;
    }
    set_recent_state(&tx, 0, BEFORE_ALL)?;
    tx.commit()?;
    Ok(())
}

/// Columns added after the first release, for index files created before them.
fn migrate(c: &Connection) -> Result<()> {
    let has_row_first: bool = c
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'row_first'")?
        .exists([])?;
    if !has_row_first {
        c.execute_batch("ALTER TABLE runs ADD COLUMN row_first INTEGER NOT NULL DEFAULT 0")?;
    }
    // NULL: the entry is dense (rows = records).
    let has_row_count: bool = c
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'row_count'")?
        .exists([])?;
    if !has_row_count {
        c.execute_batch("ALTER TABLE runs ADD COLUMN row_count INTEGER")?;
    }
    // NULL: no open transaction holds the partition's stable offset (RFC 0005).
    let has_hold: bool = c
        .prepare("SELECT 1 FROM pragma_table_info('partitions') WHERE name = 'stable_hold'")?
        .exists([])?;
    if !has_hold {
        c.execute_batch("ALTER TABLE partitions ADD COLUMN stable_hold INTEGER")?;
    }
    // Index files from before amendment 8 have a by-segment index on the recent tables.
    for t in RECENT {
        c.execute_batch(&format!("DROP INDEX IF EXISTS {t}_by_segment"))?;
    }
    Ok(())
}

fn txn_err(e: TxnError) -> IndexError {
    IndexError::Txn(e)
}

/// End a transaction inside `tx` (RFC 0005): the verdict, then the offsets (commit) or
/// the holes (abort), then the holds it released.
fn end_txn_in(
    tx: &rusqlite::Transaction<'_>,
    view: &mut WriterView<'_>,
    e: &EndTxn,
) -> Result<TxnEnded> {
    let (pid, epoch) = (e.producer_id, e.epoch);
    let stored: Option<String> = tx
        .prepare_cached("SELECT state FROM txns WHERE producer_id = ?1 AND epoch = ?2")?
        .query_row(params![pid, epoch], |r| r.get(0))
        .optional()?;
    let stored = stored
        .map(|s| {
            TxnState::parse(&s)
                .ok_or_else(|| IndexError::Corrupt(format!("transaction state {s:?}")))
        })
        .transpose()?;
    if let Some(repeated) = end_answer(stored, e)? {
        return Ok(repeated);
    }
    let batches: Vec<(i64, u32, u64, u32)> = tx
        .prepare_cached("SELECT topic_id, partition, base_offset, records FROM txn_batches WHERE producer_id = ?1 AND epoch = ?2 ORDER BY topic_id, partition, base_offset")?
        .query_map(params![pid, epoch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    match e.outcome {
        Outcome::Commit => {
            for oc in &e.offsets {
                let k = &oc.group;
                let blob: Option<Vec<u8>> = tx
                    .prepare_cached("SELECT data FROM consumer_state WHERE kind = ?1 AND topic_id = ?2 AND grp = ?3 AND partition = ?4")?
                    .query_row(params![k.kind.as_str(), k.topic_id, k.group, k.partition], |r| r.get(0))
                    .optional()?;
                match fence(blob.as_deref(), oc) {
                    Ok(()) => {}
                    Err(IndexError::Fenced(g)) => return Err(txn_err(TxnError::Offsets(g))),
                    Err(other) => return Err(other),
                }
                let mut st = tx.prepare_cached(
                    "INSERT INTO group_offsets (topic_id, grp, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (topic_id, grp, partition) DO UPDATE SET next_offset = excluded.next_offset",
                )?;
                for (p, o) in &oc.offsets {
                    let _ = st.execute(params![k.topic_id, k.group, p, o])?;
                }
            }
        }
        Outcome::Abort => {
            for &(t, p, base, n) in &batches {
                merge_recent_of(tx, view, t, Some(p))?;
                punch_hole(tx, t, p, base, n)?;
            }
        }
    }
    let _ = tx
        .prepare_cached(
            "UPDATE txns SET state = ?3, ended_ms = ?4 WHERE producer_id = ?1 AND epoch = ?2",
        )?
        .execute(params![pid, epoch, e.outcome.state().as_str(), e.now_ms])?;
    let _ = tx
        .prepare_cached("DELETE FROM txn_batches WHERE producer_id = ?1 AND epoch = ?2")?
        .execute(params![pid, epoch])?;
    let mut touched: Vec<(i64, u32)> = batches.iter().map(|b| (b.0, b.1)).collect();
    touched.dedup();
    let mut partitions = Vec::with_capacity(touched.len());
    for (t, p) in touched {
        let end: Option<u64> = tx
            .prepare_cached(
                "UPDATE partitions SET stable_hold = (SELECT MIN(base_offset) FROM txn_batches WHERE topic_id = ?1 AND partition = ?2)
                 WHERE topic_id = ?1 AND partition = ?2 RETURNING next_offset",
            )?
            .query_row(params![t, p], |r| r.get(0))
            .optional()?;
        if let Some(end) = end {
            partitions.push((t, p, end));
        }
    }
    Ok(TxnEnded {
        repeated: false,
        partitions,
    })
}

const RUN_COLS: &str = "topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first, row_count";

/// The two tables of recent entries. Commits append to the active one; the other is
/// being copied to `runs` (or is empty).
const RECENT: [&str; 2] = ["runs_recent", "runs_recent_b"];

/// A key of `runs` below every real one (topic ids start at 1, offsets at 0).
const BEFORE_ALL: (i64, i64, i64) = (-1, -1, -1);

/// Which recent table takes appends, and the last key of the other one already copied to
/// `runs`.
fn recent_state(tx: &rusqlite::Transaction<'_>) -> Result<(usize, (i64, i64, i64))> {
    let (active, t, p, b): (i64, i64, i64, i64) = tx
        .prepare_cached(
            "SELECT active, moved_topic, moved_partition, moved_base FROM recent_state WHERE id = 0",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
    Ok((usize::from(active == 1), (t, p, b)))
}

fn set_recent_state(
    tx: &rusqlite::Transaction<'_>,
    active: usize,
    moved: (i64, i64, i64),
) -> Result<()> {
    let _ = tx
        .prepare_cached(
            "UPDATE recent_state SET active = ?1, moved_topic = ?2, moved_partition = ?3, moved_base = ?4 WHERE id = 0",
        )?
        .execute(params![active as i64, moved.0, moved.1, moved.2])?;
    Ok(())
}

/// Insert recent rows into `runs` (`INSERT OR IGNORE`: an entry copied by an earlier chunk
/// is in `runs` already, unchanged — whatever rewrites a partition's entries in `runs`
/// first takes that partition out of both recent tables, [`merge_recent_of`]).
fn insert_into_runs(tx: &rusqlite::Transaction<'_>, rows: &[RecentRow]) -> Result<()> {
    let mut ins = tx.prepare_cached(&format!(
        "INSERT OR IGNORE INTO runs ({RUN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    ))?;
    for r in rows {
        let _ = ins.execute(params![
            r.topic_id,
            r.partition,
            r.base_offset,
            r.records,
            &*r.segment_key,
            r.segment_size,
            r.rg_first,
            r.rg_count,
            r.byte_start,
            r.byte_end,
            r.min_ts,
            r.max_ts,
            r.row_first,
            r.row_count
        ])?;
    }
    Ok(())
}

/// Copy the next `chunk` entries (all, with `None`) of the inactive recent table, in key
/// order after `moved`, to `runs`, taking them from the writer's view (synced at the
/// start of the transaction; nothing is appended to the inactive table). Returns the last
/// key copied while entries remain after it; `None` once the table is copied to its end
/// and emptied.
fn copy_recent_chunk(
    tx: &rusqlite::Transaction<'_>,
    view: &mut WriterView<'_>,
    inactive: usize,
    moved: (i64, i64, i64),
    chunk: Option<u32>,
) -> Result<Option<(i64, i64, i64)>> {
    let n = chunk.map_or(usize::MAX, |n| n.max(1) as usize);
    let (rows, more) = view.chunk_after(inactive, moved, n);
    insert_into_runs(tx, &rows)?;
    if more && let Some(last) = rows.last() {
        return Ok(Some(last.key()));
    }
    let _ = tx
        .prepare_cached(&format!("DELETE FROM {}", RECENT[inactive]))?
        .execute([])?;
    let d = Deletion {
        table: Some(inactive),
        topic_id: None,
        partition: None,
    };
    let generation = log_deletion(tx, d)?;
    view.own_deletions.push((generation, d));
    Ok(None)
}

/// After a commit appended its entries: copy the next chunk of the inactive recent table
/// to `runs` (a `recent_limit / 8` share, at least twice the entries just appended, so the
/// copy ends before the active table fills again) — with the background copier only once
/// it has fallen behind (`background`); when the active table reaches
/// `recent_limit`, finish the copy if it has not ended and swap the tables' roles. Each
/// commit then writes a bounded part of the move, where one commit in ~32 used to move
/// everything (≈ 80 ms at 1 000 partitions). Writes that read, rewrite or delete a
/// partition's entries (retention, compaction, aborts, topic deletion) first take that
/// partition's or topic's entries out of both tables ([`merge_recent_of`]), so they work
/// on `runs` alone. Invariant: per partition, every entry of the inactive table precedes
/// every entry of the active one, and every entry of `runs` not also in the inactive
/// table precedes both. Returns whether a copy is left for later (to wake the copier).
fn advance_recent(
    tx: &rusqlite::Transaction<'_>,
    view: &mut WriterView<'_>,
    (active, moved): (usize, (i64, i64, i64)),
    recent_limit: i64,
    appended: usize,
    background: bool,
) -> Result<bool> {
    let inactive = 1 - active;
    let copying = view.len(inactive) > 0;
    let pending = (view.len(active) + appended) as i64;
    // Where the copy stands after this commit: `Some(key)` while entries remain.
    let mut left = copying.then_some(moved);
    // With the background copier the commit copies only once the copy has fallen behind
    // (the active table half full): the copy is then off the flush's path.
    if copying && (!background || 2 * pending >= recent_limit) {
        // At least twice what this commit appended: the copy keeps ahead of the appends
        // and ends before the active table fills, whatever the entries per commit.
        let share = (recent_limit / 8).max(2 * appended as i64).max(1);
        let chunk = u32::try_from(share).unwrap_or(u32::MAX);
        left = copy_recent_chunk(tx, view, inactive, moved, Some(chunk))?;
    }
    if pending >= recent_limit {
        if let Some(k) = left {
            // The copy fell behind (a limit of a few commits' entries): finish it here.
            let _ = copy_recent_chunk(tx, view, inactive, k, None)?;
        }
        set_recent_state(tx, 1 - active, BEFORE_ALL)?;
        // The full table is now the one to copy.
        return Ok(true);
    }
    if copying && left != Some(moved) {
        set_recent_state(tx, active, left.unwrap_or(BEFORE_ALL))?;
    }
    Ok(left.is_some())
}

/// Entries the background copier moves to `runs` per transaction: small enough that a
/// commit waiting for the writer waits a few milliseconds at most.
const BACKGROUND_CHUNK: u32 = 512;

/// One step of the background copy: the next chunk of the inactive recent table to `runs`
/// in its own transaction. `Ok(true)` while entries remain.
fn background_copy_step(c: &mut Connection, view: &Mutex<RecentView>) -> Result<bool> {
    let tx = c.transaction()?;
    let mut view = WriterView::begin(view, &tx)?;
    let (active, moved) = recent_state(&tx)?;
    let inactive = 1 - active;
    if view.len(inactive) == 0 {
        return Ok(false);
    }
    let left = copy_recent_chunk(&tx, &mut view, inactive, moved, Some(BACKGROUND_CHUNK))?;
    set_recent_state(&tx, active, left.unwrap_or(BEFORE_ALL))?;
    tx.commit()?;
    view.committed();
    Ok(left.is_some())
}

/// The background copier (RFC 0002 amendment 10): woken after a commit that leaves a copy
/// pending, it copies a chunk whenever the writer is free, pausing a millisecond between
/// chunks so that commits get the writer first, until the inactive table is empty. It
/// holds the index only weakly and ends when the index is dropped.
fn background_copier(
    wake: std::sync::mpsc::Receiver<()>,
    writer: std::sync::Weak<Mutex<Connection>>,
    view: std::sync::Weak<Mutex<RecentView>>,
) {
    while wake.recv().is_ok() {
        let _span = tracing::debug_span!("recent_copy").entered();
        loop {
            let (Some(w), Some(v)) = (writer.upgrade(), view.upgrade()) else {
                return;
            };
            let more = match w.try_lock() {
                Ok(mut c) => background_copy_step(&mut c, &v).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "background copy of recent entries failed; commits copy instead");
                    false
                }),
                Err(std::sync::TryLockError::WouldBlock) => true,
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    background_copy_step(&mut p.into_inner(), &v).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "background copy of recent entries failed; commits copy instead");
                        false
                    })
                }
            };
            drop((w, v));
            if !more {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// The entries of one table (`runs` or `runs_recent`) from the one holding `offset` (the
/// largest base at or below it; the first entry when none is), in offset order.
fn entries_from(
    c: &Connection,
    table: &str,
    topic_id: i64,
    partition: u32,
    offset: u64,
    limit: u32,
) -> Result<Vec<RunEntry>> {
    let rows = c
        .prepare_cached(&format!(
            "SELECT base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, row_first, max_ts, COALESCE(row_count, records) FROM {table}
             WHERE topic_id = ?1 AND partition = ?2 AND base_offset >= COALESCE(
                (SELECT MAX(base_offset) FROM {table} WHERE topic_id = ?1 AND partition = ?2 AND base_offset <= ?3), 0)
             ORDER BY base_offset LIMIT ?4"
        ))?
        .query_map(params![topic_id, partition, offset, limit], |r| {
            Ok(RunEntry {
                base_offset: r.get(0)?,
                records: r.get(1)?,
                segment_key: r.get(2)?,
                segment_size: r.get(3)?,
                row_group_first: r.get(4)?,
                row_group_count: r.get(5)?,
                byte_start: r.get(6)?,
                byte_end: r.get(7)?,
                row_first: r.get(8)?,
                max_timestamp_ms: r.get(9)?,
                rows: r.get(10)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

/// Take one topic's (`partition` None) or one partition's entries out of both recent
/// tables into `runs`: the entries of the others stay where they are, so a compaction of
/// one partition does not undo the batching of all the others. Entries of the inactive
/// table already copied are in `runs` (`INSERT OR IGNORE`). The writer's view follows at
/// once (a transaction may take the same partition out twice); the caller's
/// [`WriterView`] forgets it should the transaction not commit.
fn merge_recent_of(
    tx: &rusqlite::Transaction<'_>,
    view: &mut WriterView<'_>,
    topic_id: i64,
    partition: Option<u32>,
) -> Result<()> {
    let rows = view.rows_of(topic_id, partition);
    if rows.is_empty() {
        return Ok(());
    }
    view.changed = true;
    insert_into_runs(tx, &rows)?;
    for (i, table) in RECENT.iter().enumerate() {
        let mut del = tx.prepare_cached(&format!("DELETE FROM {table} WHERE seq = ?1"))?;
        for r in rows.iter().filter(|r| r.table == i) {
            let _ = del.execute([r.seq])?;
        }
    }
    let d = Deletion {
        table: None,
        topic_id: Some(topic_id),
        partition,
    };
    let generation = log_deletion(tx, d)?;
    view.apply(d);
    view.applied(generation);
    Ok(())
}

/// The writer's view for one write transaction, synced at its start. If the transaction
/// changed the view (`changed`) and did not commit (`committed` not called), the view is
/// forgotten and reloaded by the next transaction.
struct WriterView<'a> {
    view: std::sync::MutexGuard<'a, RecentView>,
    changed: bool,
    committed: bool,
    /// What the transaction appended and the deletions it logged without applying them:
    /// the view takes them once the transaction has committed (instead of reading them
    /// back at the next sync).
    own_rows: Vec<RecentRow>,
    own_deletions: Vec<(i64, Deletion)>,
}

impl<'a> WriterView<'a> {
    fn begin(m: &'a Mutex<RecentView>, tx: &rusqlite::Transaction<'_>) -> Result<Self> {
        let mut view = lock(m);
        let synced = sync(&mut view, tx, RECENT);
        if synced.is_err() {
            view.invalidate();
        }
        synced?;
        Ok(Self {
            view,
            changed: false,
            committed: false,
            own_rows: Vec::new(),
            own_deletions: Vec::new(),
        })
    }

    fn committed(mut self) {
        self.committed = true;
        for (generation, d) in std::mem::take(&mut self.own_deletions) {
            self.view.apply(d);
            self.view.applied(generation);
        }
        for r in std::mem::take(&mut self.own_rows) {
            if let Err(key) = self.view.insert(r) {
                // Committed already: the next sync reloads and reports it as corruption.
                tracing::error!(?key, "two recent entries at one (topic, partition, base)");
                self.view.invalidate();
                return;
            }
        }
    }
}

impl std::ops::Deref for WriterView<'_> {
    type Target = RecentView;
    fn deref(&self) -> &RecentView {
        &self.view
    }
}

impl std::ops::DerefMut for WriterView<'_> {
    fn deref_mut(&mut self) -> &mut RecentView {
        &mut self.view
    }
}

impl Drop for WriterView<'_> {
    fn drop(&mut self) {
        if self.changed && !self.committed {
            self.view.invalidate();
        }
    }
}

/// Turn the aborted batch `base..base + n` of a partition into a hole: the entry holding
/// it is split (`floe_core::txn::punch`). An entry already dropped by retention is left.
fn punch_hole(tx: &rusqlite::Transaction<'_>, t: i64, p: u32, base: u64, n: u32) -> Result<()> {
    type Row = (
        u64,
        u32,
        u32,
        Option<u32>,
        String,
        u64,
        u32,
        u32,
        u64,
        u64,
        i64,
        i64,
    );
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT base_offset, records, row_first, row_count, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts
             FROM runs WHERE topic_id = ?1 AND partition = ?2 AND base_offset <= ?3 ORDER BY base_offset DESC LIMIT 1",
        )?
        .query_row(params![t, p, base], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?))
        })
        .optional()?;
    let Some((eb, records, row_first, row_count, key, size, rgf, rgc, bs, be, mn, mx)) = row else {
        return Ok(());
    };
    if eb + u64::from(records) <= base {
        return Ok(()); // dropped by retention
    }
    let entry = EntryPiece {
        base_offset: eb,
        records,
        row_first,
        rows: row_count.unwrap_or(records),
    };
    let pieces = punch(entry, base, n)
        .map_err(|err| IndexError::Corrupt(format!("aborting ({t}, {p}) {base}+{n}: {err}")))?;
    let _ = tx
        .prepare_cached(
            "DELETE FROM runs WHERE topic_id = ?1 AND partition = ?2 AND base_offset = ?3",
        )?
        .execute(params![t, p, eb])?;
    let mut ins = tx.prepare_cached(
        "INSERT INTO runs (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first, row_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for x in pieces {
        let _ = ins.execute(params![
            t,
            p,
            x.base_offset,
            x.records,
            key,
            size,
            rgf,
            rgc,
            bs,
            be,
            mn,
            mx,
            x.row_first,
            (x.rows != x.records).then_some(x.rows)
        ])?;
    }
    Ok(())
}

/// One retention pass over a topic's partitions in one transaction: per partition the new
/// start offset (`Retention::new_start`, pure), then its runs below it dropped.
fn retain(
    c: &mut Connection,
    view: &Mutex<RecentView>,
    topic_id: i64,
    rule: Retention,
) -> Result<Vec<(u32, u64)>> {
    let tx = c.transaction()?;
    let mut view = WriterView::begin(view, &tx)?;
    merge_recent_of(&tx, &mut view, topic_id, None)?;
    let parts: Vec<(u32, u64, u64)> = tx
        .prepare_cached("SELECT partition, start_offset, next_offset FROM partitions WHERE topic_id = ?1 ORDER BY partition")?
        .query_map([topic_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut moved = Vec::new();
    for (p, start, next) in parts {
        let (total, count): (u64, usize) = match rule {
            Retention::Time { .. } => (0, 0),
            Retention::Size { .. } => tx
                .prepare_cached("SELECT COALESCE(SUM(byte_end - byte_start), 0), COUNT(*) FROM runs WHERE topic_id = ?1 AND partition = ?2")?
                .query_row(params![topic_id, p], |r| Ok((r.get(0)?, r.get(1)?)))?,
        };
        if !rule.may_drop(total) {
            continue;
        }
        let runs: Vec<RetentionRun> = tx
            .prepare_cached("SELECT base_offset, records, max_ts, byte_end - byte_start FROM runs WHERE topic_id = ?1 AND partition = ?2 ORDER BY base_offset LIMIT ?3")?
            .query_map(params![topic_id, p, crate::RETENTION_RUNS_PER_PASS], |r| {
                Ok(RetentionRun { base_offset: r.get(0)?, records: r.get(1)?, max_ts: r.get(2)?, bytes: r.get(3)? })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let Some(new_start) = rule.new_start(&runs, total, count) else {
            continue;
        };
        if new_start <= start || new_start > next {
            continue;
        }
        let _ = tx
            .prepare_cached(
                "DELETE FROM runs WHERE topic_id = ?1 AND partition = ?2 AND base_offset < ?3",
            )?
            .execute(params![topic_id, p, new_start])?;
        let _ = tx
            .prepare_cached(
                "UPDATE partitions SET start_offset = ?3 WHERE topic_id = ?1 AND partition = ?2",
            )?
            .execute(params![topic_id, p, new_start])?;
        moved.push((p, new_start));
    }
    tx.commit()?;
    view.committed();
    Ok(moved)
}

#[derive(Debug, Clone)]
pub struct SqliteIndex {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    /// The recent tables as each connection last saw them (`recent_view`); each is used
    /// only while its connection's lock is held.
    writer_view: Arc<Mutex<RecentView>>,
    reader_view: Arc<Mutex<RecentView>>,
    /// Commit deadlines are checked against this clock (same process as the agent).
    clock: SharedClock,
    /// Entries `runs_recent` may hold before a commit moves them to `runs`.
    recent_limit: u32,
    /// Wakes the background copier (`None`: commits copy, as with
    /// [`SqliteIndex::without_background_copy`]).
    copier: Option<std::sync::mpsc::SyncSender<()>>,
}

/// Default for [`SqliteIndex::with_recent_limit`]: at 1 000 partitions a flush carries
/// ~250 entries, so the tables swap about every 130 commits and each move brings ~32
/// entries per partition to `runs` (each one a leaf write there, so fewer, larger moves
/// cost less). With an index on the recent tables 16 384 was best (amendment 8); without
/// one (amendment 10) 32 768: commit_cost 256 x 1 000, mean 2.77 ms at 32 768 vs 3.42 ms
/// for the indexed tables at 16 384; 65 536 was no better on the mean and doubled the p99
/// (the copy chunk, an eighth of the limit, is the commit's p99).
pub const RECENT_RUNS_LIMIT: u32 = 32768;

/// Page caches of the SQLite index's two connections (writer, reader) and their views of
/// the recent tables; part of the agent's memory budget (`index_cache`).
pub const SQLITE_CACHE_BYTES: u64 = WRITER_CACHE_BYTES + READER_CACHE_BYTES + RECENT_VIEW_BYTES;
/// Two views (writer, reader), each of two tables of up to about the recent limit of
/// entries, at ≈ 200 bytes an entry in memory (a `RecentRow` in an ordered map; segment keys
/// shared).
const RECENT_VIEW_BYTES: u64 = 2 * 2 * RECENT_RUNS_LIMIT as u64 * 200;
const WRITER_CACHE_BYTES: u64 = 16 * 1024 * 1024;
/// SQLite's default (`cache_size = -2000`, KiB).
const READER_CACHE_BYTES: u64 = 2000 * 1024;

fn connect(path: &Path, cache_bytes: u64) -> Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    c.pragma_update(None, "foreign_keys", "ON")?;
    // The writer's commits touch one leaf of `runs` per partition they carry: with many
    // partitions a small page cache rereads them (pread) at every commit, and a WAL
    // checkpoint every 1 000 pages rewrites the same leaves again and again. A larger
    // cache and a checkpoint every 16 Ki pages (64 MiB of WAL) cut the commit time of a
    // 400-partition flush by about a third (issue #9, `bench/partitions.sh`).
    c.pragma_update(None, "cache_size", -((cache_bytes / 1024) as i64))?;
    c.pragma_update(None, "wal_autocheckpoint", 16 * 1024)?;
    // Statement journals (the move to `runs`, multi-row statements) and sorts in memory,
    // not in temporary files: commit_cost 325 entries x 1 000 partitions, mean 3.2 -> 2.8 ms.
    c.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(c)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a half-applied transaction behind
    // (rusqlite rolls back on drop), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SqliteIndex {
    pub async fn open(path: &Path) -> Result<Self> {
        Self::open_with_clock(path, floe_core::clock::system()).await
    }

    pub async fn open_with_clock(path: &Path, clock: SharedClock) -> Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| IndexError::Task(format!("create {}: {e}", dir.display())))?;
            }
            let mut w = connect(&path, WRITER_CACHE_BYTES)?;
            w.execute_batch(SCHEMA)?;
            w.execute_batch(&runs_table())?;
            migrate(&w)?;
            migrate_recent(&mut w)?;
            w.execute_batch(&recent_tables())?;
            let r = connect(&path, READER_CACHE_BYTES)?;
            let writer = Arc::new(Mutex::new(w));
            let writer_view: Arc<Mutex<RecentView>> = Arc::default();
            let (wake, woken) = std::sync::mpsc::sync_channel(1);
            let (ww, wv) = (Arc::downgrade(&writer), Arc::downgrade(&writer_view));
            let _ = std::thread::Builder::new()
                .name("floe-sqlite-copy".into())
                .spawn(move || background_copier(woken, ww, wv))
                .map_err(|e| IndexError::Task(format!("start the background copier: {e}")))?;
            Ok(Self {
                writer,
                reader: Arc::new(Mutex::new(r)),
                writer_view,
                reader_view: Arc::default(),
                clock,
                recent_limit: RECENT_RUNS_LIMIT,
                copier: Some(wake),
            })
        })
        .await
        .map_err(|e| IndexError::Task(e.to_string()))?
    }

    /// How many entries of recent commits `runs_recent` holds before a commit moves them
    /// to `runs` (at least 1: 1 moves them at every commit). Tests run the conformance
    /// suite with small limits so that both tables and the move are exercised.
    #[must_use]
    pub fn with_recent_limit(mut self, limit: u32) -> Self {
        self.recent_limit = limit.max(1);
        self
    }

    /// Commits copy recent entries to `runs` themselves, a share each, instead of the
    /// background copier (which then stops once this handle's clones are gone — it holds
    /// the index weakly, and no one wakes it). Tests that count rows per table use it.
    #[must_use]
    pub fn without_background_copy(mut self) -> Self {
        self.copier = None;
        self
    }

    async fn with<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&conn)))
            .await
            .map_err(|e| IndexError::Task(e.to_string()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        Self::with(&self.reader, f).await
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        Self::with(&self.writer, f).await
    }
}

fn topic_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(i64, String, u32, Option<i64>, String, i64)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn to_meta(t: (i64, String, u32, Option<i64>, String, i64)) -> Result<TopicMeta> {
    let config: BTreeMap<String, String> = decode_config(&t.4)?;
    Ok(TopicMeta {
        id: t.0,
        name: t.1,
        partitions: t.2,
        retention_ms: t.3,
        config,
        created_ms: t.5,
    })
}

const TOPIC_COLS: &str = "id, name, partitions, retention_ms, config, created_ms";

#[async_trait]
impl Index for SqliteIndex {
    async fn create_topic(&self, t: NewTopic) -> Result<TopicMeta> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let n: i64 = tx.query_row("SELECT COUNT(*) FROM topics", [], |r| r.get(0))?;
            if n as usize >= t.max_topics {
                return Err(IndexError::TooManyTopics(t.max_topics));
            }
            let inserted = tx.execute(
                "INSERT INTO topics (name, partitions, retention_ms, config, created_ms) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(name) DO NOTHING",
                params![t.name, t.partitions, t.retention_ms, encode_config(&t.config), t.created_ms],
            )?;
            if inserted == 0 {
                return Err(IndexError::TopicExists(t.name));
            }
            let id = tx.last_insert_rowid();
            {
                let mut st = tx.prepare("INSERT INTO partitions (topic_id, partition, start_offset, next_offset) VALUES (?1, ?2, 0, 0)")?;
                for p in 0..t.partitions {
                    let _ = st.execute(params![id, p])?;
                }
            }
            tx.commit()?;
            Ok(TopicMeta { id, name: t.name, partitions: t.partitions, retention_ms: t.retention_ms, config: t.config, created_ms: t.created_ms })
        })
        .await
    }

    async fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        self.read(|c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {TOPIC_COLS} FROM topics ORDER BY name"))?;
            let rows = st
                .query_map([], topic_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter().map(to_meta).collect()
        })
        .await
    }

    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        let name = name.to_string();
        self.read(move |c| {
            let mut st =
                c.prepare_cached(&format!("SELECT {TOPIC_COLS} FROM topics WHERE name = ?1"))?;
            st.query_row([name], topic_row)
                .optional()?
                .map(to_meta)
                .transpose()
        })
        .await
    }

    async fn delete_topic(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.write(move |c| {
            let tx = c.transaction()?;
            let id: Option<i64> = tx
                .query_row("SELECT id FROM topics WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?;
            let Some(id) = id else { return Ok(false) };
            let _ = tx.execute("DELETE FROM runs WHERE topic_id = ?1", [id])?;
            for t in RECENT {
                let _ = tx.execute(&format!("DELETE FROM {t} WHERE topic_id = ?1"), [id])?;
            }
            let _ = log_deletion(
                &tx,
                Deletion {
                    table: None,
                    topic_id: Some(id),
                    partition: None,
                },
            )?;
            let _ = tx.execute("DELETE FROM partitions WHERE topic_id = ?1", [id])?;
            let _ = tx.execute("DELETE FROM consumer_state WHERE topic_id = ?1", [id])?;
            let _ = tx.execute("DELETE FROM group_offsets WHERE topic_id = ?1", [id])?;
            let _ = tx.execute("DELETE FROM idempotency WHERE topic_id = ?1", [id])?;
            let _ = tx.execute("DELETE FROM topics WHERE id = ?1", [id])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn partition_offsets(&self, topic_id: i64) -> Result<Vec<PartitionOffsets>> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT partition, start_offset, next_offset, MIN(COALESCE(stable_hold, next_offset), next_offset) FROM partitions WHERE topic_id = ?1 ORDER BY partition")?;
            let rows = st
                .query_map([topic_id], |r| Ok(PartitionOffsets { partition: r.get(0)?, start_offset: r.get(1)?, end_offset: r.get(2)?, stable_offset: r.get(3)? }))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn end_offset(&self, topic_id: i64, partition: u32) -> Result<Option<u64>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT next_offset FROM partitions WHERE topic_id = ?1 AND partition = ?2",
            )?;
            Ok(st
                .query_row(params![topic_id, partition], |r| r.get(0))
                .optional()?)
        })
        .await
    }

    async fn log_ends(&self, topic_id: i64, partition: u32) -> Result<Option<(u64, u64)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT next_offset, stable_hold FROM partitions WHERE topic_id = ?1 AND partition = ?2",
            )?;
            Ok(st
                .query_row(params![topic_id, partition], |r| {
                    let end: u64 = r.get(0)?;
                    Ok((end, stable_offset(end, r.get(1)?)))
                })
                .optional()?)
        })
        .await
    }

    async fn begin_txn(&self, b: BeginTxn) -> Result<u32> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let current: Option<u32> = tx
                .prepare_cached("SELECT epoch FROM producers WHERE id = ?1")?
                .query_row([b.producer_id], |r| r.get(0))
                .optional()?;
            let Some(current) = current else {
                return Err(txn_err(TxnError::UnknownProducer(b.producer_id)));
            };
            if current != b.epoch {
                return Err(txn_err(TxnError::Fenced { producer_id: b.producer_id, epoch: b.epoch, current }));
            }
            if tx
                .prepare_cached("SELECT 1 FROM txns WHERE producer_id = ?1 AND epoch = ?2 AND state = 'open'")?
                .exists(params![b.producer_id, current])?
            {
                return Err(txn_err(TxnError::AlreadyOpen { producer_id: b.producer_id, epoch: current }));
            }
            let epoch = current.checked_add(1).ok_or_else(|| IndexError::Corrupt("producer epoch overflow".into()))?;
            let _ = tx
                .prepare_cached("UPDATE producers SET epoch = ?2, touched_ms = ?3 WHERE id = ?1")?
                .execute(params![b.producer_id, epoch, b.now_ms])?;
            let _ = tx
                .prepare_cached("INSERT INTO txns (producer_id, epoch, state, started_ms, deadline_ms, check_url, checks) VALUES (?1, ?2, 'open', ?3, ?4, ?5, 0)")?
                .execute(params![b.producer_id, epoch, b.now_ms, b.deadline_ms, b.check_url])?;
            tx.commit()?;
            Ok(epoch)
        })
        .await
    }

    async fn end_txn(&self, e: EndTxn) -> Result<TxnEnded> {
        let view = self.writer_view.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            let mut view = WriterView::begin(&view, &tx)?;
            let out = end_txn_in(&tx, &mut view, &e)?;
            if !out.repeated {
                tx.commit()?;
                view.committed();
            }
            Ok(out)
        })
        .await
    }

    async fn transactions(&self, open_only: bool) -> Result<Vec<TxnInfo>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT t.producer_id, p.name, t.epoch, t.state, t.started_ms, t.deadline_ms, t.check_url, t.checks
                 FROM txns t LEFT JOIN producers p ON p.id = t.producer_id
                 WHERE ?1 = 0 OR t.state = 'open' ORDER BY t.started_ms, t.producer_id LIMIT 10000",
            )?;
            let rows: Vec<(i64, Option<String>, u32, String, i64, i64, Option<String>, u32)> = st
                .query_map([i64::from(open_only)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut parts = c.prepare_cached(
                "SELECT topic_id, partition, MIN(base_offset), SUM(records) FROM txn_batches WHERE producer_id = ?1 AND epoch = ?2
                 GROUP BY topic_id, partition ORDER BY topic_id, partition",
            )?;
            rows.into_iter()
                .map(|(producer_id, name, epoch, state, started_ms, deadline_ms, check_url, checks)| {
                    let state = TxnState::parse(&state)
                        .ok_or_else(|| IndexError::Corrupt(format!("transaction state {state:?}")))?;
                    let partitions = parts
                        .query_map(params![producer_id, epoch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                        .collect::<rusqlite::Result<_>>()?;
                    Ok(TxnInfo { producer_id, name, epoch, state, started_ms, deadline_ms, check_url, checks, partitions })
                })
                .collect()
        })
        .await
    }

    async fn due_transactions(&self, now_ms: i64, limit: u32) -> Result<(u64, Vec<TxnInfo>)> {
        self.read(move |c| {
            let open: i64 = c
                .prepare_cached("SELECT COUNT(*) FROM txns WHERE state = 'open'")?
                .query_row([], |r| r.get(0))?;
            let mut st = c.prepare_cached(
                "SELECT producer_id, epoch, started_ms, deadline_ms, check_url, checks FROM txns
                 WHERE state = 'open' AND deadline_ms < ?1 ORDER BY deadline_ms LIMIT ?2",
            )?;
            let due = st
                .query_map(params![now_ms, limit], |r| {
                    Ok(TxnInfo {
                        producer_id: r.get(0)?,
                        name: None,
                        epoch: r.get(1)?,
                        state: TxnState::Open,
                        started_ms: r.get(2)?,
                        deadline_ms: r.get(3)?,
                        check_url: r.get(4)?,
                        checks: r.get(5)?,
                        partitions: Vec::new(),
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((open.max(0) as u64, due))
        })
        .await
    }

    async fn claim_check(
        &self,
        producer_id: i64,
        epoch: u32,
        checks: u32,
        next_deadline_ms: i64,
    ) -> Result<bool> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "UPDATE txns SET checks = checks + 1, deadline_ms = ?4
                     WHERE producer_id = ?1 AND epoch = ?2 AND state = 'open' AND checks = ?3",
                )?
                .execute(params![producer_id, epoch, checks, next_deadline_ms])?;
            Ok(n == 1)
        })
        .await
    }

    async fn commit_segment(&self, seg: SegmentCommit) -> Result<Committed> {
        let clock = self.clock.clone();
        let recent_limit = i64::from(self.recent_limit);
        let view = self.writer_view.clone();
        let copier = self.copier.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            let mut view = WriterView::begin(&view, &tx)?;
            if !seg.runs.is_empty() {
                let boundary: i64 = tx
                    .prepare_cached("SELECT boundary_ms FROM deletion_boundary WHERE id = 0")?
                    .query_row([], |r| r.get(0))?;
                if seg.created_ms < boundary {
                    return Err(IndexError::SegmentTooOld {
                        created_ms: seg.created_ms,
                        boundary_ms: boundary,
                    });
                }
            }
            let mut ends: HashMap<(i64, u32), u64> = HashMap::new();
            {
                let mut st = tx.prepare_cached("SELECT next_offset FROM partitions WHERE topic_id = ?1 AND partition = ?2")?;
                for r in &seg.runs {
                    if !ends.contains_key(&(r.topic_id, r.partition))
                        && let Some(n) = st.query_row(params![r.topic_id, r.partition], |row| row.get(0)).optional()?
                    {
                        let _ = ends.insert((r.topic_id, r.partition), n);
                    }
                }
            }
            let mut epochs: HashMap<i64, u32> = HashMap::new();
            let mut seqs: HashMap<SeqKey, SeqState> = HashMap::new();
            if !seg.producers.is_empty() {
                let mut ep = tx.prepare_cached("SELECT epoch FROM producers WHERE id = ?1")?;
                let mut sq = tx.prepare_cached("SELECT epoch, next_seq, recent FROM producer_seqs WHERE producer_id = ?1 AND topic_id = ?2 AND partition = ?3")?;
                for p in &seg.producers {
                    if !epochs.contains_key(&p.producer_id)
                        && let Some(e) = ep.query_row([p.producer_id], |r| r.get(0)).optional()?
                    {
                        let _ = epochs.insert(p.producer_id, e);
                    }
                    for b in &p.batches {
                        let key = (p.producer_id, b.topic_id, b.partition);
                        if seqs.contains_key(&key) {
                            continue;
                        }
                        let row: Option<(u32, i64, String)> = sq
                            .query_row(params![key.0, key.1, key.2], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                            .optional()?;
                        if let Some((epoch, next_seq, recent)) = row {
                            let recent = floe_core::producer::decode_recent(&recent)
                                .map_err(|e| IndexError::Corrupt(format!("producer state {key:?}: {e}")))?;
                            let _ = seqs.insert(key, SeqState { epoch, next_seq, recent });
                        }
                    }
                }
            }
            let mut open_txns = HashSet::new();
            {
                let mut st = tx.prepare_cached("SELECT 1 FROM txns WHERE producer_id = ?1 AND epoch = ?2 AND state = 'open'")?;
                for (pid, e) in &epochs {
                    if st.exists(params![pid, e])? {
                        let _ = open_txns.insert(*pid);
                    }
                }
            }
            let recent = recent_state(&tx)?;
            let plan = plan_commit(&seg.runs, &seg.producers, &ends, &epochs, &seqs, &open_txns)?;
            {
                let mut ins = tx.prepare_cached("INSERT INTO txn_batches (producer_id, epoch, topic_id, partition, base_offset, records) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")?;
                for b in &plan.txn_batches {
                    let _ = ins.execute(params![b.producer_id, b.epoch, b.topic_id, b.partition, b.base_offset, b.records])?;
                }
                let mut hold = tx.prepare_cached("UPDATE partitions SET stable_hold = MIN(COALESCE(stable_hold, ?3), ?3) WHERE topic_id = ?1 AND partition = ?2")?;
                for ((t, p), h) in &plan.holds {
                    let _ = hold.execute(params![t, p, h])?;
                }
            }
            {
                let mut ins = tx.prepare_cached(&format!(
                    "INSERT INTO {} (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                    RECENT[recent.0]
                ))?;
                let key: Arc<str> = Arc::from(seg.key.as_str());
                view.own_rows.reserve(plan.rows.len());
                for row in &plan.rows {
                    let r = &seg.runs[row.run];
                    let _ = ins.execute(params![
                        r.topic_id, r.partition, row.base_offset, row.records, seg.key, seg.size, r.row_group_first,
                        r.row_group_count, r.byte_start, r.byte_end, r.min_timestamp_ms, r.max_timestamp_ms, row.row_first
                    ])?;
                    view.own_rows.push(RecentRow {
                        table: recent.0,
                        seq: tx.last_insert_rowid(),
                        topic_id: r.topic_id,
                        partition: r.partition,
                        base_offset: row.base_offset,
                        records: row.records,
                        segment_key: key.clone(),
                        segment_size: seg.size,
                        rg_first: r.row_group_first,
                        rg_count: r.row_group_count,
                        byte_start: r.byte_start,
                        byte_end: r.byte_end,
                        min_ts: r.min_timestamp_ms,
                        max_ts: r.max_timestamp_ms,
                        row_first: row.row_first,
                        row_count: None,
                    });
                }
                let mut upd = tx.prepare_cached("UPDATE partitions SET next_offset = ?3 WHERE topic_id = ?1 AND partition = ?2 AND next_offset = ?4")?;
                for ((t, p), end) in &plan.ends {
                    let before = ends.get(&(*t, *p)).copied().unwrap_or_default();
                    // Compare-and-set on the end offset: the assertion that no other writer
                    // moved it (there is one writer connection, so this must hold).
                    if upd.execute(params![t, p, end, before])? != 1 {
                        return Err(IndexError::Corrupt(format!("end offset of ({t}, {p}) moved during commit")));
                    }
                }
                let mut put = tx.prepare_cached(
                    "INSERT OR REPLACE INTO producer_seqs (producer_id, topic_id, partition, epoch, next_seq, recent, touched_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?;
                for ((pid, t, p), st) in &plan.seqs {
                    let _ = put.execute(params![
                        pid, t, p, st.epoch, st.next_seq, floe_core::producer::encode_recent(&st.recent), seg.created_ms
                    ])?;
                }
            }
            for w in &seg.state_writes {
                if !cas_state(&tx, &w.key, w.expected, &w.data)? {
                    return Err(IndexError::StateConflict(w.key.clone()));
                }
            }
            for c in &seg.idempotency {
                let Some(answer) = completion_answer(c, &seg.runs, &plan) else {
                    continue;
                };
                let n = tx
                    .prepare_cached(
                        "UPDATE idempotency SET done = 1, answer = ?4
                         WHERE topic_id = ?1 AND key = ?2 AND token = ?3 AND done = 0",
                    )?
                    .execute(params![c.topic_id, c.key, c.token, answer])?;
                if n != 1 {
                    return Err(IndexError::IdempotencyLost(c.key.clone()));
                }
            }
            let _ = tx
                .prepare_cached("INSERT OR IGNORE INTO objects (key, size, created_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![seg.key, seg.size, seg.created_ms])?;
            let copy_pending = advance_recent(&tx, &mut view, recent, recent_limit, plan.rows.len(), copier.is_some())?;
            // Last step before the commit is durable: too late means roll back (the
            // transaction is dropped), so a stalled commit never lands after its deadline.
            check_deadline(seg.deadline_unix_ms, clock.now_ms())?;
            tx.commit()?;
            view.committed();
            if copy_pending && let Some(wake) = &copier {
                // Full: a wake-up is queued already.
                let _ = wake.try_send(());
            }
            Ok(Committed {
                runs: plan.outcomes,
                excluded: plan.excluded,
                producers: plan.verdicts,
            })
        })
        .await
    }

    async fn init_producer(&self, name: Option<&str>, now_ms: i64) -> Result<(i64, u32)> {
        let name = name.map(str::to_string);
        let view = self.writer_view.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            let mut view = WriterView::begin(&view, &tx)?;
            // Re-initialising a name aborts its open transaction (fencing the zombie) in
            // the same index transaction that bumps the epoch (RFC 0005).
            let open: Option<(i64, u32)> = tx
                .prepare_cached(
                    "SELECT t.producer_id, t.epoch FROM producers p JOIN txns t ON t.producer_id = p.id AND t.epoch = p.epoch
                     WHERE p.name = ?1 AND t.state = 'open'",
                )?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            if let Some((producer_id, epoch)) = open {
                let _ = end_txn_in(&tx, &mut view, &EndTxn { producer_id, epoch, outcome: Outcome::Abort, offsets: Vec::new(), now_ms })?;
            }
            let row = tx
                .prepare_cached(
                    "INSERT INTO producers (name, epoch, touched_ms) VALUES (?1, 0, ?2)
                     ON CONFLICT (name) DO UPDATE SET epoch = epoch + 1, touched_ms = excluded.touched_ms
                     RETURNING id, epoch",
                )?
                .query_row(params![name, now_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
            tx.commit()?;
            view.committed();
            Ok(row)
        })
        .await
    }

    async fn dedup_state_counts(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            let keys: i64 = c.query_row("SELECT COUNT(*) FROM idempotency", [], |r| r.get(0))?;
            let seqs: i64 = c.query_row("SELECT COUNT(*) FROM producer_seqs", [], |r| r.get(0))?;
            Ok((keys.max(0) as u64, seqs.max(0) as u64))
        })
        .await
    }

    async fn expire_producers(&self, cutoff_ms: i64) -> Result<u64> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM producer_seqs WHERE touched_ms < ?1",
                [cutoff_ms],
            )?;
            let _ = tx.execute(
                "DELETE FROM txns WHERE state <> 'open' AND ended_ms < ?1",
                [cutoff_ms],
            )?;
            let _ = tx.execute(
                "DELETE FROM producers WHERE touched_ms < ?1
                 AND NOT EXISTS (SELECT 1 FROM producer_seqs s WHERE s.producer_id = producers.id)
                 AND NOT EXISTS (SELECT 1 FROM txns t WHERE t.producer_id = producers.id AND t.state = 'open')",
                [cutoff_ms],
            )?;
            tx.commit()?;
            Ok(n as u64)
        })
        .await
    }

    async fn runs_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<RunEntry>> {
        let view = self.reader_view.clone();
        self.read(move |c| {
            // One read transaction: the view of the recent tables is brought up to this
            // snapshot, and `runs` is read in the same one. Per partition every entry of
            // the recent tables follows every entry of `runs` that is not a copy of one of
            // them, so when the view holds the entry holding `offset`, `runs` has nothing
            // to add.
            let tx = c.transaction()?;
            let mut recent = {
                let mut v = lock(&view);
                sync(&mut v, &tx, RECENT)?;
                v.entries_from(topic_id, partition, offset, limit as usize)
            };
            if recent.first().is_some_and(|e| e.base_offset <= offset) {
                return Ok(recent);
            }
            let mut rows = entries_from(&tx, "runs", topic_id, partition, offset, limit)?;
            rows.append(&mut recent);
            rows.sort_by_key(|e| e.base_offset);
            rows.dedup_by_key(|e| e.base_offset);
            rows.truncate(limit as usize);
            Ok(rows)
        })
        .await
    }

    async fn segment_referenced(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT 1 FROM runs WHERE segment_key = ?1
                 UNION ALL SELECT 1 FROM runs_recent WHERE segment_key = ?1
                 UNION ALL SELECT 1 FROM runs_recent_b WHERE segment_key = ?1 LIMIT 1",
            )?;
            Ok(st.query_row([key], |_| Ok(())).optional()?.is_some())
        })
        .await
    }

    async fn segments_referenced(&self, keys: &[String]) -> Result<Vec<bool>> {
        let keys = keys.to_vec();
        self.read(move |c| {
            // The recent tables have no by-segment index: their keys are read once here,
            // first — entries leave them only once they are in `runs`, read after.
            let mut recent = HashSet::new();
            for t in RECENT {
                let mut st = c.prepare_cached(&format!("SELECT DISTINCT segment_key FROM {t}"))?;
                for k in st.query_map([], |r| r.get::<_, String>(0))? {
                    let _ = recent.insert(k?);
                }
            }
            let mut st = c.prepare_cached("SELECT 1 FROM runs WHERE segment_key = ?1 LIMIT 1")?;
            keys.iter()
                .map(|k| Ok(recent.contains(k) || st.exists([k])?))
                .collect()
        })
        .await
    }

    async fn unreferenced_objects(&self, before_ms: i64, limit: u32) -> Result<Vec<String>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT key FROM objects o WHERE created_ms < ?1
                   AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.segment_key = o.key)
                   AND o.key NOT IN (SELECT segment_key FROM runs_recent)
                   AND o.key NOT IN (SELECT segment_key FROM runs_recent_b)
                 ORDER BY created_ms LIMIT ?2",
            )?;
            let keys = st
                .query_map(params![before_ms, limit], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(keys)
        })
        .await
    }

    async fn forget_objects(&self, keys: &[String]) -> Result<()> {
        let keys = keys.to_vec();
        self.write(move |c| {
            let tx = c.transaction()?;
            {
                let mut del = tx.prepare_cached("DELETE FROM objects WHERE key = ?1")?;
                for k in &keys {
                    let _ = del.execute([k])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn object_totals(&self) -> Result<(u64, u64)> {
        self.read(|c| {
            Ok(
                c.prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM objects")?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?,
            )
        })
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn load_state(&self, key: &StateKey) -> Result<Option<Versioned>> {
        let key = key.clone();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT version, data FROM consumer_state WHERE kind = ?1 AND topic_id = ?2 AND grp = ?3 AND partition = ?4",
            )?;
            Ok(st
                .query_row(
                    params![key.kind.as_str(), key.topic_id, key.group, key.partition],
                    |r| {
                        Ok(Versioned {
                            version: r.get(0)?,
                            data: r.get(1)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn store_state(
        &self,
        key: &StateKey,
        expected: Option<i64>,
        data: Vec<u8>,
    ) -> Result<bool> {
        let key = key.clone();
        self.write(move |c| cas_state(c, &key, expected, &data))
            .await
    }

    async fn apply_retention(&self, topic_id: i64, cutoff_ms: i64) -> Result<Vec<(u32, u64)>> {
        let view = self.writer_view.clone();
        self.write(move |c| retain(c, &view, topic_id, Retention::Time { cutoff_ms }))
            .await
    }

    async fn apply_size_retention(&self, topic_id: i64, max_bytes: u64) -> Result<Vec<(u32, u64)>> {
        let view = self.writer_view.clone();
        self.write(move |c| retain(c, &view, topic_id, Retention::Size { max_bytes }))
            .await
    }

    async fn replace_runs(&self, r: ReplaceRuns) -> Result<bool> {
        let entries = r.new_entries()?;
        let view = self.writer_view.clone();
        self.write(move |c| {
            let tx = c.transaction()?;
            let mut view = WriterView::begin(&view, &tx)?;
            let boundary: i64 = tx
                .prepare_cached("SELECT boundary_ms FROM deletion_boundary WHERE id = 0")?
                .query_row([], |row| row.get(0))?;
            if r.created_ms < boundary {
                return Err(IndexError::SegmentTooOld {
                    created_ms: r.created_ms,
                    boundary_ms: boundary,
                });
            }
            merge_recent_of(&tx, &mut view, r.topic_id, Some(r.partition))?;
            let (first, end) = match (r.old.first(), entries.last()) {
                (Some(f), Some(l)) => (f.0, l.0 + u64::from(l.1)),
                _ => return Ok(false),
            };
            let current: Vec<(u64, u32, String)> = tx
                .prepare_cached("SELECT base_offset, records, segment_key FROM runs WHERE topic_id = ?1 AND partition = ?2 AND base_offset >= ?3 AND base_offset < ?4 ORDER BY base_offset")?
                .query_map(params![r.topic_id, r.partition, first, end], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<_>>()?;
            if current != r.old {
                return Ok(false);
            }
            let _ = tx
                .prepare_cached("DELETE FROM runs WHERE topic_id = ?1 AND partition = ?2 AND base_offset >= ?3 AND base_offset < ?4")?
                .execute(params![r.topic_id, r.partition, first, end])?;
            {
                let mut ins = tx.prepare_cached(
                    "INSERT INTO runs (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first, row_count) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, 0, ?13)",
                )?;
                for (run, (base, n, rows)) in r.runs.iter().zip(&entries) {
                    let _ = ins.execute(params![
                        r.topic_id, r.partition, base, n, r.key, r.size, run.row_group_first,
                        run.row_group_count, run.byte_start, run.byte_end, run.min_timestamp_ms, run.max_timestamp_ms,
                        (rows != n).then_some(*rows)
                    ])?;
                }
            }
            let _ = tx
                .prepare_cached("INSERT OR IGNORE INTO objects (key, size, created_ms) VALUES (?1, ?2, ?3)")?
                .execute(params![r.key, r.size, r.created_ms])?;
            tx.commit()?;
            view.committed();
            Ok(true)
        })
        .await
    }

    async fn advance_deletion_boundary(&self, to_ms: i64) -> Result<i64> {
        self.write(move |c| {
            Ok(c.prepare_cached(
                "UPDATE deletion_boundary SET boundary_ms = MAX(boundary_ms, ?1) WHERE id = 0 RETURNING boundary_ms",
            )?
            .query_row([to_ms], |r| r.get(0))?)
        })
        .await
    }

    async fn idempotency_begin(&self, b: IdempotencyBegin) -> Result<IdempotencyVerdict> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let row: Option<(i64, i64, i64, i64, Option<String>)> = tx
                .prepare_cached(
                    "SELECT fingerprint, done, lease_until, expires, answer FROM idempotency WHERE topic_id = ?1 AND key = ?2",
                )?
                .query_row(params![b.topic_id, b.key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()?;
            let stored = row.as_ref().map(|r| idempotency::Stored {
                fingerprint: r.0 as u64,
                done: r.1 != 0,
                lease_until_ms: r.2,
                expires_ms: r.3,
            });
            let verdict = match idempotency::begin(stored.as_ref(), b.fingerprint, b.now_ms) {
                idempotency::Begin::Start => {
                    let _ = tx
                        .prepare_cached(
                            "INSERT INTO idempotency (topic_id, key, fingerprint, token, done, answer, lease_until, expires)
                             VALUES (?1, ?2, ?3, ?4, 0, NULL, ?5, ?6)
                             ON CONFLICT (topic_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
                               token = excluded.token, done = 0, answer = NULL,
                               lease_until = excluded.lease_until, expires = excluded.expires",
                        )?
                        .execute(params![
                            b.topic_id,
                            b.key,
                            b.fingerprint as i64,
                            b.token,
                            b.lease_until_ms,
                            b.expires_ms
                        ])?;
                    IdempotencyVerdict::Started
                }
                idempotency::Begin::Replay => {
                    replay(&b.key, row.as_ref().and_then(|r| r.4.as_deref()))?
                }
                idempotency::Begin::Mismatch => IdempotencyVerdict::Mismatch,
                idempotency::Begin::InFlight => IdempotencyVerdict::InFlight,
            };
            tx.commit()?;
            Ok(verdict)
        })
        .await
    }

    async fn idempotency_abandon(&self, topic_id: i64, key: &str, token: i64) -> Result<()> {
        let key = key.to_string();
        self.write(move |c| {
            let _ = c
                .prepare_cached(
                    "DELETE FROM idempotency WHERE topic_id = ?1 AND key = ?2 AND token = ?3 AND done = 0",
                )?
                .execute(params![topic_id, key, token])?;
            Ok(())
        })
        .await
    }

    async fn expire_idempotency(&self, now_ms: i64) -> Result<u64> {
        self.write(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM idempotency WHERE expires <= ?1 AND (done = 1 OR lease_until <= ?1)",
                )?
                .execute(params![now_ms])?;
            Ok(n as u64)
        })
        .await
    }

    async fn commit_offsets(&self, oc: OffsetCommit) -> Result<()> {
        self.write(move |c| {
            let tx = c.transaction()?;
            let k = &oc.group;
            let blob: Option<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT data FROM consumer_state WHERE kind = ?1 AND topic_id = ?2 AND grp = ?3 AND partition = ?4",
                )?
                .query_row(
                    params![k.kind.as_str(), k.topic_id, k.group, k.partition],
                    |r| r.get(0),
                )
                .optional()?;
            fence(blob.as_deref(), &oc)?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO group_offsets (topic_id, grp, partition, next_offset) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (topic_id, grp, partition) DO UPDATE SET next_offset = excluded.next_offset",
                )?;
                for (p, o) in &oc.offsets {
                    let _ = st.execute(params![k.topic_id, k.group, p, o])?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn group_offsets(&self, topic_id: i64, group: &str) -> Result<BTreeMap<u32, u64>> {
        let group = group.to_string();
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT partition, next_offset FROM group_offsets WHERE topic_id = ?1 AND grp = ?2",
            )?;
            let rows = st
                .query_map(params![topic_id, group], |r| {
                    Ok((r.get::<_, u32>(0)?, r.get::<_, u64>(1)?))
                })?
                .collect::<rusqlite::Result<BTreeMap<_, _>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn list_states(
        &self,
        kind: StateKind,
        topic_id: Option<i64>,
    ) -> Result<Vec<(StateKey, Versioned)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT kind, topic_id, grp, partition, version, data FROM consumer_state
                 WHERE kind = ?1 AND (?2 IS NULL OR topic_id = ?2) ORDER BY topic_id, grp, partition",
            )?;
            let rows = st
                .query_map(params![kind.as_str(), topic_id], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, u32>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Vec<u8>>(5)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.into_iter()
                .map(|(k, topic_id, group, partition, version, data)| {
                    Ok((
                        StateKey {
                            kind: StateKind::parse(&k)?,
                            topic_id,
                            group,
                            partition,
                        },
                        Versioned { version, data },
                    ))
                })
                .collect()
        })
        .await
    }
}

/// Compare-and-swap of one consumer-state blob; false (nothing changed) when the stored
/// version is not `expected`, or when its topic no longer exists (first write; agent
/// rows belong to no topic).
fn cas_state(c: &Connection, key: &StateKey, expected: Option<i64>, data: &[u8]) -> Result<bool> {
    let (k, t, g, p) = (key.kind.as_str(), key.topic_id, &key.group, key.partition);
    let changed = match expected {
        None => c
            .prepare_cached(
                "INSERT INTO consumer_state (kind, topic_id, grp, partition, version, data)
                 SELECT ?1, ?2, ?3, ?4, 1, ?5 WHERE ?1 = 'agent' OR EXISTS (SELECT 1 FROM topics WHERE id = ?2)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![k, t, g, p, data])?,
        Some(v) => c
            .prepare_cached(
                "UPDATE consumer_state SET version = version + 1, data = ?5
                 WHERE kind = ?1 AND topic_id = ?2 AND grp = ?3 AND partition = ?4 AND version = ?6",
            )?
            .execute(params![k, t, g, p, data, v])?,
    };
    Ok(changed == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic_id: i64, partition: u32, records: u32) -> crate::RunCommit {
        crate::RunCommit {
            topic_id,
            partition,
            records,
            row_group_first: 0,
            row_group_count: 1,
            byte_start: 4,
            byte_end: 100,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
        }
    }

    /// A partition's entries in the two recent tables.
    fn recent_rows(ix: &SqliteIndex, partition: u32) -> i64 {
        lock(&ix.reader)
            .query_row(
                "SELECT (SELECT COUNT(*) FROM runs_recent WHERE partition = ?1)
                      + (SELECT COUNT(*) FROM runs_recent_b WHERE partition = ?1)",
                [partition],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// A SQLite index in a temporary folder with a `recent_limit`, commits copying (no
    /// background copier), and a topic "t".
    async fn index_with_topic(
        recent_limit: u32,
        partitions: u32,
    ) -> (tempfile::TempDir, SqliteIndex, crate::TopicMeta) {
        index_with_topic_and_copier(recent_limit, partitions, false).await
    }

    /// The same, with the background copier running when `background`.
    async fn index_with_topic_and_copier(
        recent_limit: u32,
        partitions: u32,
        background: bool,
    ) -> (tempfile::TempDir, SqliteIndex, crate::TopicMeta) {
        let d = tempfile::tempdir().unwrap();
        let mut ix = SqliteIndex::open(&d.path().join("i.db"))
            .await
            .unwrap()
            .with_recent_limit(recent_limit);
        if !background {
            ix = ix.without_background_copy();
        }
        let t = ix
            .create_topic(NewTopic {
                name: "t".into(),
                partitions,
                retention_ms: None,
                config: BTreeMap::new(),
                created_ms: 1,
                max_topics: 10,
            })
            .await
            .unwrap();
        (d, ix, t)
    }

    /// A segment commit of `runs` and nothing else.
    fn segment(key: String, runs: Vec<crate::RunCommit>) -> SegmentCommit {
        SegmentCommit {
            key,
            size: 100,
            runs,
            deadline_unix_ms: i64::MAX,
            created_ms: 0,
            state_writes: Vec::new(),
            idempotency: Vec::new(),
            producers: Vec::new(),
        }
    }

    fn table_rows(ix: &SqliteIndex, table: &str) -> i64 {
        lock(&ix.reader)
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// A commit appends to `runs_recent`; compacting one partition moves only that
    /// partition's recent entries to `runs` (the others keep their batching); a commit
    /// that reaches the limit moves all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recent_entries_move_per_partition_or_all_at_the_limit() {
        let (_d, ix, t) = index_with_topic(8, 2).await;
        let commit = |n: u32| segment(format!("s{n}"), vec![entry(t.id, 0, 2), entry(t.id, 1, 2)]);
        for n in 0..3 {
            let _ = ix.commit_segment(commit(n)).await.unwrap();
        }
        assert_eq!((recent_rows(&ix, 0), recent_rows(&ix, 1)), (3, 3));
        // Compact partition 0's entries 0..6 into one.
        let swapped = ix
            .replace_runs(ReplaceRuns {
                topic_id: t.id,
                partition: 0,
                old: (0..3u32)
                    .map(|n| (u64::from(n) * 2, 2, format!("s{n}")))
                    .collect(),
                key: "file".into(),
                size: 100,
                runs: vec![entry(t.id, 0, 6)],
                rows: vec![],
                created_ms: 0,
            })
            .await
            .unwrap();
        assert!(swapped);
        assert_eq!((recent_rows(&ix, 0), recent_rows(&ix, 1)), (0, 3));
        let p0 = ix.runs_from(t.id, 0, 0, 10).await.unwrap();
        assert_eq!(p0.len(), 1);
        assert_eq!(
            (p0[0].base_offset, p0[0].records, p0[0].segment_key.as_str()),
            (0, 6, "file")
        );
        assert_eq!(ix.runs_from(t.id, 1, 0, 10).await.unwrap().len(), 3);
        // 3 rows left in runs_recent; the commits that bring it to 8 rows (5 commits of 2
        // → 3 + 2 + 2 = 7, then 9) swap the tables.
        for n in 3..5 {
            let _ = ix.commit_segment(commit(n)).await.unwrap();
        }
        assert_eq!((recent_rows(&ix, 0), recent_rows(&ix, 1)), (2, 5));
        let _ = ix.commit_segment(commit(5)).await.unwrap();
        assert_eq!(
            (
                table_rows(&ix, "runs_recent"),
                table_rows(&ix, "runs_recent_b")
            ),
            (9, 0)
        );
        // Then each commit appends 2 entries to runs_recent_b and copies at least 4 of
        // runs_recent to `runs` (twice what it appended); once copied to its end,
        // runs_recent is emptied. Every lookup answers the same all along.
        let mut copied = false;
        for n in 6..10u64 {
            let _ = ix.commit_segment(commit(n as u32)).await.unwrap();
            let p1 = ix.runs_from(t.id, 1, 0, 100).await.unwrap();
            let bases: Vec<u64> = p1.iter().map(|e| e.base_offset).collect();
            assert_eq!(
                bases,
                (0..=n).map(|i| i * 2).collect::<Vec<_>>(),
                "after commit {n}"
            );
            for from in 0..(n + 1) * 2 {
                let e = ix.runs_from(t.id, 1, from, 2).await.unwrap();
                assert_eq!(
                    e[0].base_offset,
                    from - from % 2,
                    "from {from} after commit {n}"
                );
            }
            copied |= table_rows(&ix, "runs_recent") == 0;
        }
        assert!(copied, "runs_recent was copied and emptied");
        assert_eq!(table_rows(&ix, "runs_recent_b"), 8);
    }

    /// A commit that fills the active table while the other is still being copied
    /// finishes the copy itself before the roles swap: nothing is lost or left behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_active_table_finishes_the_copy_first() {
        let (_d, ix, t) = index_with_topic(4, 24).await;
        let commit = |n: u32, parts: std::ops::Range<u32>| {
            segment(format!("s{n}"), parts.map(|p| entry(t.id, p, 1)).collect())
        };
        // 20 entries fill runs_recent past its limit of 4: the roles swap.
        let _ = ix.commit_segment(commit(0, 0..20)).await.unwrap();
        let rows = |ix: &SqliteIndex| {
            (
                table_rows(ix, "runs_recent"),
                table_rows(ix, "runs_recent_b"),
                table_rows(ix, "runs"),
            )
        };
        assert_eq!(rows(&ix), (20, 0, 0));
        // 4 entries: this commit copies 8 of the 20 (twice what it appended), then fills
        // runs_recent_b, so it copies the other 12 and empties runs_recent before swapping.
        let _ = ix.commit_segment(commit(1, 20..24)).await.unwrap();
        assert_eq!(rows(&ix), (0, 4, 20));
        let _ = ix.commit_segment(commit(2, 0..1)).await.unwrap();
        for p in 0..24u32 {
            let e = ix.runs_from(t.id, p, 0, 10).await.unwrap();
            let got: Vec<(u64, &str)> = e
                .iter()
                .map(|e| (e.base_offset, e.segment_key.as_str()))
                .collect();
            let want: Vec<(u64, &str)> = match p {
                0 => vec![(0, "s0"), (1, "s2")],
                1..20 => vec![(0, "s0")],
                _ => vec![(0, "s1")],
            };
            assert_eq!(got, want, "partition {p}");
        }
    }

    /// Every lookup of a partition, from offset 0 and from each offset, as (base, key).
    async fn answers(ix: &SqliteIndex, t: i64, partitions: u32) -> Vec<Vec<(u64, String)>> {
        let mut out = Vec::new();
        for p in 0..partitions {
            let all = ix.runs_from(t, p, 0, 1000).await.unwrap();
            let end = all
                .last()
                .map_or(0, |e| e.base_offset + u64::from(e.records));
            out.push(
                all.iter()
                    .map(|e| (e.base_offset, e.segment_key.clone()))
                    .collect(),
            );
            for from in 0..end {
                let e = ix.runs_from(t, p, from, 1).await.unwrap();
                out.push(
                    e.iter()
                        .map(|e| (e.base_offset, e.segment_key.clone()))
                        .collect(),
                );
            }
        }
        out
    }

    /// A second connection to the same file (a second `SqliteIndex`: its own reader, its
    /// own view) follows the first one's commits, copies, swaps, compactions, retention
    /// and topic deletion — through the deletion log, which the test build trims to 4
    /// entries, so it also reloads when it fell behind the log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_connection_follows_every_change_of_the_recent_tables() {
        let (d, ix, t) = index_with_topic(6, 3).await;
        let other = SqliteIndex::open(&d.path().join("i.db")).await.unwrap();
        for step in 0..40u32 {
            // Commits of one to three partitions.
            let parts: Vec<u32> = (0..3)
                .filter(|p| (step + p) % 3 != 2 || step % 5 == 0)
                .collect();
            let _ = ix
                .commit_segment(segment(
                    format!("s{step}"),
                    parts.iter().map(|p| entry(t.id, *p, 2)).collect(),
                ))
                .await
                .unwrap();
            // Now and then compact a partition's first two entries into one.
            if step % 7 == 3 {
                let p = step % 3;
                let cur = ix.runs_from(t.id, p, 0, 2).await.unwrap();
                if cur.len() == 2 && cur[0].records == 2 && cur[1].records == 2 {
                    let swapped = ix
                        .replace_runs(ReplaceRuns {
                            topic_id: t.id,
                            partition: p,
                            old: cur
                                .iter()
                                .map(|e| (e.base_offset, e.records, e.segment_key.clone()))
                                .collect(),
                            key: format!("c{step}"),
                            size: 100,
                            runs: vec![entry(t.id, p, 4)],
                            rows: vec![],
                            created_ms: 0,
                        })
                        .await
                        .unwrap();
                    assert!(swapped, "step {step}");
                }
            }
            // Only check the other connection every few steps, so that it falls behind the
            // (trimmed) deletion log in between.
            if step % 3 == 0 || step % 11 == 10 {
                assert_eq!(
                    answers(&other, t.id, 3).await,
                    answers(&ix, t.id, 3).await,
                    "step {step}"
                );
            }
        }
        // Retention by time drops everything (every entry has max_ts 0): both agree.
        let _ = ix.apply_retention(t.id, 1).await.unwrap();
        assert_eq!(answers(&other, t.id, 3).await, answers(&ix, t.id, 3).await);
        // Every partition keeps at most its newest entries after retention; then more
        // commits, and the topic deleted: the other connection sees nothing left.
        for k in 0..5u32 {
            let _ = ix
                .commit_segment(segment(format!("after{k}"), vec![entry(t.id, k % 3, 1)]))
                .await
                .unwrap();
        }
        assert_eq!(answers(&other, t.id, 3).await, answers(&ix, t.id, 3).await);
        assert!(ix.delete_topic("t").await.unwrap());
        for p in 0..3 {
            assert!(other.runs_from(t.id, p, 0, 10).await.unwrap().is_empty());
        }
    }

    /// An index file whose recent tables are of the earlier kind (a by-partition index, no
    /// `seq`) opens with their entries moved to `runs` and the tables made anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recent_tables_from_before_the_views_migrate() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("old.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch(&runs_table()).unwrap();
            for t in RECENT {
                c.execute_batch(
                    &RUN_TABLE
                        .replace("{t}", t)
                        .replace("{seq}", "")
                        .replace("{end}", "\n)"),
                )
                .unwrap();
                c.execute_batch(&format!(
                    "CREATE UNIQUE INDEX {t}_by_partition ON {t} (topic_id, partition, base_offset)"
                ))
                .unwrap();
            }
            c.execute_batch(
                "INSERT INTO topics (id, name, partitions, retention_ms, config, created_ms) VALUES (1, 't', 1, NULL, '{}', 0);
                 INSERT INTO partitions (topic_id, partition, start_offset, next_offset) VALUES (1, 0, 0, 6);
                 INSERT INTO runs (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts) VALUES (1, 0, 0, 2, 'a', 10, 0, 1, 4, 9, 0, 0);
                 INSERT INTO runs_recent (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts) VALUES (1, 0, 2, 2, 'b', 10, 0, 1, 4, 9, 0, 0);
                 INSERT INTO runs_recent_b (topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts) VALUES (1, 0, 4, 2, 'c', 10, 0, 1, 4, 9, 0, 0);
                 UPDATE recent_state SET active = 1;",
            )
            .unwrap();
        }
        let ix = SqliteIndex::open(&path).await.unwrap();
        let got: Vec<(u64, String)> = ix
            .runs_from(1, 0, 0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.base_offset, e.segment_key))
            .collect();
        assert_eq!(got, [(0, "a".into()), (2, "b".into()), (4, "c".into())]);
        assert_eq!(table_rows(&ix, "runs"), 3);
        let _ = ix
            .commit_segment(segment("d".into(), vec![entry(1, 0, 2)]))
            .await
            .unwrap();
        assert_eq!(table_rows(&ix, "runs_recent"), 1);
        assert_eq!(ix.runs_from(1, 0, 7, 10).await.unwrap()[0].segment_key, "d");
    }

    /// With the background copier, a commit that fills the active table swaps the roles
    /// and the copier alone moves the full table to `runs` (in chunks of
    /// `BACKGROUND_CHUNK`), with no further commit; lookups answer the same throughout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_background_copier_moves_the_full_table_without_commits() {
        let (_d, ix, t) = index_with_topic_and_copier(1200, 4, true).await;
        for n in 0..300u32 {
            let _ = ix
                .commit_segment(segment(
                    format!("s{n}"),
                    (0..4).map(|p| entry(t.id, p, 1)).collect(),
                ))
                .await
                .unwrap();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            for p in 0..4u32 {
                let e = ix.runs_from(t.id, p, 0, 1000).await.unwrap();
                let bases: Vec<u64> = e.iter().map(|e| e.base_offset).collect();
                assert_eq!(bases, (0..300).collect::<Vec<u64>>(), "partition {p}");
            }
            if table_rows(&ix, "runs_recent") == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the copier did not empty the full table"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(table_rows(&ix, "runs"), 1200);
        assert_eq!(table_rows(&ix, "runs_recent_b"), 0);
    }
}
