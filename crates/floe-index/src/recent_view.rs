//! The SQLite index's recent tables as one connection sees them (RFC 0002 amendment 10).
//!
//! `runs_recent` and `runs_recent_b` take every commit's entries in commit order and have
//! no index: a commit appends a few pages instead of touching one index leaf per partition.
//! Lookups go through a [`RecentView`]: the tables' rows in memory, ordered per partition,
//! brought up to date from SQLite inside the read transaction that answers the lookup.
//! Two facts make that exact and cheap:
//! - rows get ever-increasing `seq` numbers (AUTOINCREMENT: never reused), and are never
//!   changed in place, so between deletions the rows above the highest `seq` seen are
//!   exactly what is new;
//! - every deletion from a recent table appends a [`Deletion`] to `recent_deletions` in the
//!   same transaction, numbered by generation; a view applies the ones after its
//!   generation before it reads new rows (and reloads if the log was trimmed past it).
//!
//! The part here holds no I/O but [`sync`]; the rest is plain data, unit-tested below.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use rusqlite::{Connection, params};

use crate::{IndexError, Result, RunEntry};

/// Deletions kept in `recent_deletions`: a view further behind reloads the tables (4 in
/// unit tests, so that they reach the reload).
#[cfg(not(test))]
pub(crate) const DELETIONS_KEPT: i64 = 1024;
#[cfg(test)]
pub(crate) const DELETIONS_KEPT: i64 = 4;

/// One row of a recent table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecentRow {
    /// 0: `runs_recent`, 1: `runs_recent_b`.
    pub table: usize,
    pub seq: i64,
    pub topic_id: i64,
    pub partition: u32,
    pub base_offset: u64,
    pub records: u32,
    pub segment_key: Arc<str>,
    pub segment_size: u64,
    pub rg_first: u32,
    pub rg_count: u32,
    pub byte_start: u64,
    pub byte_end: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub row_first: u32,
    /// `None`: dense (rows = records).
    pub row_count: Option<u32>,
}

impl RecentRow {
    pub(crate) fn entry(&self) -> RunEntry {
        RunEntry {
            base_offset: self.base_offset,
            records: self.records,
            rows: self.row_count.unwrap_or(self.records),
            segment_key: self.segment_key.to_string(),
            segment_size: self.segment_size,
            row_group_first: self.rg_first,
            row_group_count: self.rg_count,
            byte_start: self.byte_start,
            byte_end: self.byte_end,
            row_first: self.row_first,
            max_timestamp_ms: self.max_ts,
        }
    }

    /// The row's key in `runs`.
    pub(crate) fn key(&self) -> (i64, i64, i64) {
        (
            self.topic_id,
            i64::from(self.partition),
            self.base_offset as i64,
        )
    }
}

/// Rows taken out of the recent tables: `table` None = both, `topic_id` None = every
/// topic, `partition` None = every partition of the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Deletion {
    pub table: Option<usize>,
    pub topic_id: Option<i64>,
    pub partition: Option<u32>,
}

impl Deletion {
    fn covers(&self, r: &RecentRow) -> bool {
        self.table.is_none_or(|t| t == r.table)
            && self.topic_id.is_none_or(|t| t == r.topic_id)
            && self.partition.is_none_or(|p| p == r.partition)
    }
}

/// The two recent tables as of one snapshot: rows per partition by base offset.
#[derive(Debug, Default)]
pub(crate) struct RecentView {
    loaded: bool,
    /// Generation of the last deletion applied.
    generation: i64,
    /// Highest `seq` read per table.
    tail: [i64; 2],
    /// Rows per table.
    len: [usize; 2],
    parts: BTreeMap<(i64, u32), BTreeMap<u64, RecentRow>>,
}

impl RecentView {
    /// Forget everything: the next [`sync`] reloads (after a write transaction that changed
    /// the view and then did not commit).
    pub(crate) fn invalidate(&mut self) {
        *self = Self::default();
    }

    pub(crate) fn len(&self, table: usize) -> usize {
        self.len[table]
    }

    /// Add a row; `Err` with its key if the partition already had an entry at its base
    /// offset — offsets are assigned once (the end offset's compare-and-set), so that is
    /// corruption (the recent tables have no unique index to refuse it at commit).
    pub(crate) fn insert(&mut self, r: RecentRow) -> std::result::Result<(), (i64, i64, i64)> {
        self.tail[r.table] = self.tail[r.table].max(r.seq);
        let (table, key) = (r.table, r.key());
        let old = self
            .parts
            .entry((r.topic_id, r.partition))
            .or_default()
            .insert(r.base_offset, r);
        self.len[table] += 1;
        match old {
            None => Ok(()),
            Some(old) => {
                self.len[old.table] -= 1;
                Err(key)
            }
        }
    }

    /// Take the rows `d` covers out of the view.
    pub(crate) fn apply(&mut self, d: Deletion) {
        let range = match (d.topic_id, d.partition) {
            (None, _) => (Bound::Unbounded, Bound::Unbounded),
            (Some(t), None) => (Bound::Included((t, 0)), Bound::Included((t, u32::MAX))),
            (Some(t), Some(p)) => (Bound::Included((t, p)), Bound::Included((t, p))),
        };
        let mut emptied = Vec::new();
        for (k, rows) in self.parts.range_mut(range) {
            rows.retain(|_, r| {
                let gone = d.covers(r);
                if gone {
                    self.len[r.table] -= 1;
                }
                !gone
            });
            if rows.is_empty() {
                emptied.push(*k);
            }
        }
        for k in emptied {
            let _ = self.parts.remove(&k);
        }
    }

    /// Record that this connection applied deletion `generation` itself.
    pub(crate) fn applied(&mut self, generation: i64) {
        self.generation = self.generation.max(generation);
    }

    /// A partition's entries from the one holding `offset` (the largest base at or below
    /// it; the first when none is), in offset order, at most `limit`.
    pub(crate) fn entries_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: usize,
    ) -> Vec<RunEntry> {
        let Some(rows) = self.parts.get(&(topic_id, partition)) else {
            return Vec::new();
        };
        let start = rows
            .range(..=offset)
            .next_back()
            .map_or(0, |(base, _)| *base);
        rows.range(start..)
            .take(limit)
            .map(|(_, r)| r.entry())
            .collect()
    }

    /// The rows of one topic (`partition` None) or one partition, both tables, in key order.
    pub(crate) fn rows_of(&self, topic_id: i64, partition: Option<u32>) -> Vec<RecentRow> {
        let (lo, hi) = partition.map_or((0, u32::MAX), |p| (p, p));
        self.parts
            .range((topic_id, lo)..=(topic_id, hi))
            .flat_map(|(_, rows)| rows.values().cloned())
            .collect()
    }

    /// Up to `n` rows of `table` in key order after the key `after` (`(-1, -1, -1)`: from
    /// the first), and whether more follow them.
    pub(crate) fn chunk_after(
        &self,
        table: usize,
        after: (i64, i64, i64),
        n: usize,
    ) -> (Vec<RecentRow>, bool) {
        let start = if after.0 < 0 {
            Bound::Unbounded
        } else {
            Bound::Included((after.0, u32::try_from(after.1.max(0)).unwrap_or(u32::MAX)))
        };
        let mut out = Vec::new();
        for ((t, p), rows) in self.parts.range((start, Bound::Unbounded)) {
            let same = *t == after.0 && i64::from(*p) == after.1;
            let from = if same && after.2 >= 0 {
                Bound::Excluded(after.2 as u64)
            } else {
                Bound::Unbounded
            };
            for r in rows
                .range((from, Bound::Unbounded))
                .map(|(_, r)| r)
                .filter(|r| r.table == table)
            {
                if out.len() == n {
                    return (out, true);
                }
                out.push(r.clone());
            }
        }
        (out, false)
    }
}

/// Bring `view` up to what `c` sees now: the deletions after its generation (or a reload
/// when the log no longer has them all), then the rows above its tails. Call it in the
/// transaction that then reads from the view — and in a write transaction, before that
/// transaction changes the recent tables (its own changes are the caller's to apply).
pub(crate) fn sync(view: &mut RecentView, c: &Connection, tables: [&str; 2]) -> Result<()> {
    if view.loaded {
        let mut st = c.prepare_cached(
            "SELECT generation, tbl, topic_id, partition FROM recent_deletions WHERE generation > ?1 ORDER BY generation",
        )?;
        let dels = st
            .query_map([view.generation], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    Deletion {
                        table: r.get::<_, Option<i64>>(1)?.map(|t| usize::from(t == 1)),
                        topic_id: r.get(2)?,
                        partition: r.get(3)?,
                    },
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for (g, d) in dels {
            if g != view.generation + 1 {
                view.invalidate();
                break;
            }
            view.apply(d);
            view.generation = g;
        }
    }
    if !view.loaded {
        view.generation = c
            .prepare_cached("SELECT COALESCE(MAX(generation), 0) FROM recent_deletions")?
            .query_row([], |r| r.get(0))?;
        view.loaded = true;
    }
    for (table, name) in tables.iter().enumerate() {
        let mut st = c.prepare_cached(&format!(
            "SELECT seq, topic_id, partition, base_offset, records, segment_key, segment_size, rg_first, rg_count, byte_start, byte_end, min_ts, max_ts, row_first, row_count
             FROM {name} WHERE seq > ?1 ORDER BY seq"
        ))?;
        let mut rows = st.query(params![view.tail[table]])?;
        // Rows of one segment come together: share its key.
        let mut last_key: Arc<str> = Arc::from("");
        while let Some(r) = rows.next()? {
            let key: String = r.get(5)?;
            if *last_key != *key {
                last_key = Arc::from(key);
            }
            let row = RecentRow {
                table,
                seq: r.get(0)?,
                topic_id: r.get(1)?,
                partition: r.get(2)?,
                base_offset: r.get(3)?,
                records: r.get(4)?,
                segment_key: last_key.clone(),
                segment_size: r.get(6)?,
                rg_first: r.get(7)?,
                rg_count: r.get(8)?,
                byte_start: r.get(9)?,
                byte_end: r.get(10)?,
                min_ts: r.get(11)?,
                max_ts: r.get(12)?,
                row_first: r.get(13)?,
                row_count: r.get(14)?,
            };
            if let Err(key) = view.insert(row) {
                view.invalidate();
                return Err(IndexError::Corrupt(format!(
                    "two recent entries at (topic, partition, base) {key:?}"
                )));
            }
        }
    }
    Ok(())
}

/// Log a deletion from the recent tables (in the transaction that deletes) and trim the
/// log; returns its generation.
pub(crate) fn log_deletion(c: &Connection, d: Deletion) -> Result<i64> {
    let generation: i64 = c
        .prepare_cached(
            "INSERT INTO recent_deletions (generation, tbl, topic_id, partition)
             SELECT COALESCE(MAX(generation), 0) + 1, ?1, ?2, ?3 FROM recent_deletions
             RETURNING generation",
        )?
        .query_row(
            params![d.table.map(|t| t as i64), d.topic_id, d.partition],
            |r| r.get(0),
        )?;
    let _ = c
        .prepare_cached("DELETE FROM recent_deletions WHERE generation <= ?1")?
        .execute([generation - DELETIONS_KEPT])?;
    Ok(generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(table: usize, seq: i64, partition: u32, base: u64) -> RecentRow {
        RecentRow {
            table,
            seq,
            topic_id: 1,
            partition,
            base_offset: base,
            records: 2,
            segment_key: Arc::from(format!("s{seq}").as_str()),
            segment_size: 10,
            rg_first: 0,
            rg_count: 1,
            byte_start: 0,
            byte_end: 1,
            min_ts: 0,
            max_ts: 0,
            row_first: 0,
            row_count: None,
        }
    }

    fn view(rows: Vec<RecentRow>) -> RecentView {
        let mut v = RecentView {
            loaded: true,
            ..RecentView::default()
        };
        for r in rows {
            v.insert(r).unwrap();
        }
        v
    }

    fn bases(e: &[RunEntry]) -> Vec<u64> {
        e.iter().map(|e| e.base_offset).collect()
    }

    #[test]
    fn entries_start_at_the_holder_of_the_offset() {
        let v = view(vec![row(0, 1, 0, 10), row(0, 2, 0, 12), row(1, 3, 0, 14)]);
        assert_eq!(bases(&v.entries_from(1, 0, 0, 10)), [10, 12, 14]);
        assert_eq!(bases(&v.entries_from(1, 0, 13, 10)), [12, 14]);
        assert_eq!(bases(&v.entries_from(1, 0, 99, 10)), [14]);
        assert_eq!(bases(&v.entries_from(1, 0, 11, 1)), [10]);
        assert!(v.entries_from(1, 1, 0, 10).is_empty());
        assert!(v.entries_from(2, 0, 0, 10).is_empty());
    }

    #[test]
    fn deletions_take_out_exactly_their_scope() {
        let all = || {
            view(vec![
                row(0, 1, 0, 0),
                row(0, 2, 1, 0),
                row(1, 3, 0, 2),
                row(1, 4, 1, 2),
            ])
        };
        let mut v = all();
        v.apply(Deletion {
            table: Some(0),
            topic_id: None,
            partition: None,
        });
        assert_eq!((v.len(0), v.len(1)), (0, 2));
        assert_eq!(bases(&v.entries_from(1, 0, 0, 10)), [2]);
        let mut v = all();
        v.apply(Deletion {
            table: None,
            topic_id: Some(1),
            partition: Some(1),
        });
        assert_eq!((v.len(0), v.len(1)), (1, 1));
        assert!(v.entries_from(1, 1, 0, 10).is_empty());
        assert_eq!(bases(&v.entries_from(1, 0, 0, 10)), [0, 2]);
        let mut v = all();
        v.apply(Deletion {
            table: None,
            topic_id: Some(2),
            partition: None,
        });
        assert_eq!((v.len(0), v.len(1)), (2, 2));
        v.apply(Deletion {
            table: None,
            topic_id: Some(1),
            partition: None,
        });
        assert_eq!((v.len(0), v.len(1)), (0, 0));
        assert!(v.parts.is_empty());
    }

    #[test]
    fn a_second_entry_at_one_base_offset_is_refused() {
        let mut v = view(vec![row(0, 1, 0, 10)]);
        assert_eq!(v.insert(row(1, 2, 0, 10)), Err((1, 0, 10)));
    }

    #[test]
    fn chunks_walk_one_table_in_key_order() {
        let v = view(vec![
            row(0, 1, 1, 0),
            row(0, 2, 0, 0),
            row(1, 3, 0, 2),
            row(0, 4, 0, 4),
            row(0, 5, 2, 0),
        ]);
        let keys = |rows: &[RecentRow]| rows.iter().map(RecentRow::key).collect::<Vec<_>>();
        let (c, more) = v.chunk_after(0, (-1, -1, -1), 2);
        assert_eq!((keys(&c), more), (vec![(1, 0, 0), (1, 0, 4)], true));
        let (c, more) = v.chunk_after(0, (1, 0, 4), 2);
        assert_eq!((keys(&c), more), (vec![(1, 1, 0), (1, 2, 0)], false));
        let (c, more) = v.chunk_after(0, (1, 0, 0), 10);
        assert_eq!(
            (keys(&c), more),
            (vec![(1, 0, 4), (1, 1, 0), (1, 2, 0)], false)
        );
        let (c, more) = v.chunk_after(1, (-1, -1, -1), 10);
        assert_eq!((keys(&c), more), (vec![(1, 0, 2)], false));
        let (c, more) = v.chunk_after(0, (1, 2, 0), 10);
        assert!(c.is_empty() && !more);
    }
}
