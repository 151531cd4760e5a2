//! Transactions across requests (RFC 0005 §1), the pure parts both index backends use.
//!
//! A transaction belongs to a producer session and *is* an epoch of it (Kafka's KIP-890
//! lesson): beginning one bumps the producer's epoch, so the transaction is named by
//! `(producer_id, epoch)` and an end naming another epoch can never end it. Its records
//! commit like any others (offsets assigned, data durable) and are recorded per batch;
//! while it is open, each partition it wrote holds its *stable offset* at its first
//! record there, and `read_committed` readers stop below it. An abort turns the index
//! entries of its batches into *holes*: entries that cover the offsets and serve no row,
//! so no reader of any kind ever sees an aborted record, and offsets stay dense.

use serde::{Deserialize, Serialize};

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    Open,
    Committed,
    Aborted,
}

impl TxnState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Committed => "committed",
            Self::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(Self::Open),
            "committed" => Some(Self::Committed),
            "aborted" => Some(Self::Aborted),
            _ => None,
        }
    }
}

/// How a transaction is to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Commit,
    Abort,
}

impl Outcome {
    /// The state a transaction ends in.
    pub fn state(self) -> TxnState {
        match self {
            Self::Commit => TxnState::Committed,
            Self::Abort => TxnState::Aborted,
        }
    }
}

/// The decision on an end request, from the transaction's stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndVerdict {
    /// The transaction is open: end it.
    Apply,
    /// It already ended with this outcome: answer the same, change nothing (a repeated
    /// end, e.g. a retry after a lost answer).
    AlreadyDone,
    /// It ended the other way: refuse (a commit after an abort, or the reverse).
    Conflict(TxnState),
    /// No such transaction.
    Unknown,
}

/// Decide an end request (pure; both backends run it inside their transaction).
pub fn end_verdict(stored: Option<TxnState>, outcome: Outcome) -> EndVerdict {
    match stored {
        None => EndVerdict::Unknown,
        Some(TxnState::Open) => EndVerdict::Apply,
        Some(s) if s == outcome.state() => EndVerdict::AlreadyDone,
        Some(s) => EndVerdict::Conflict(s),
    }
}

/// The offset below which a `read_committed` reader may read: the first offset of the
/// oldest open transaction in the partition (`hold`), else the end of the log.
pub fn stable_offset(end: u64, hold: Option<u64>) -> u64 {
    hold.map_or(end, |h| h.min(end))
}

/// One dense index entry: `records` offsets from `base_offset`, served by rows from
/// `row_first` of its run, and `rows` rows (`rows == records`, or 0 for a hole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryPiece {
    pub base_offset: u64,
    pub records: u32,
    pub row_first: u32,
    pub rows: u32,
}

/// Why a hole cannot be punched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PunchError {
    #[error("the batch {first}..{end} is not inside the entry {base}..{entry_end}")]
    Outside {
        first: u64,
        end: u64,
        base: u64,
        entry_end: u64,
    },
    #[error("the entry at {0} is not dense (a partition file or an earlier hole)")]
    NotDense(u64),
}

/// The entries that replace `entry` once the aborted batch `first..first + count` is
/// taken out: the rows before it, a hole covering its offsets, the rows after it (empty
/// pieces left out). Offsets are unchanged; only rows stop being served.
pub fn punch(entry: EntryPiece, first: u64, count: u32) -> Result<Vec<EntryPiece>, PunchError> {
    let entry_end = entry.base_offset + u64::from(entry.records);
    let end = first + u64::from(count);
    if first < entry.base_offset || end > entry_end || count == 0 {
        return Err(PunchError::Outside {
            first,
            end,
            base: entry.base_offset,
            entry_end,
        });
    }
    if entry.rows != entry.records {
        return Err(PunchError::NotDense(entry.base_offset));
    }
    // Offsets fit u32 inside one entry.
    let before = (first - entry.base_offset) as u32;
    let after = (entry_end - end) as u32;
    let mut out = Vec::with_capacity(3);
    if before > 0 {
        out.push(EntryPiece {
            base_offset: entry.base_offset,
            records: before,
            row_first: entry.row_first,
            rows: before,
        });
    }
    out.push(EntryPiece {
        base_offset: first,
        records: count,
        row_first: entry.row_first + before,
        rows: 0,
    });
    if after > 0 {
        out.push(EntryPiece {
            base_offset: end,
            records: after,
            row_first: entry.row_first + before + count,
            rows: after,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ends_are_idempotent_and_the_other_outcome_is_refused() {
        use EndVerdict::*;
        assert_eq!(end_verdict(None, Outcome::Commit), Unknown);
        assert_eq!(end_verdict(Some(TxnState::Open), Outcome::Abort), Apply);
        assert_eq!(
            end_verdict(Some(TxnState::Committed), Outcome::Commit),
            AlreadyDone
        );
        assert_eq!(
            end_verdict(Some(TxnState::Aborted), Outcome::Commit),
            Conflict(TxnState::Aborted)
        );
        assert_eq!(
            end_verdict(Some(TxnState::Committed), Outcome::Abort),
            Conflict(TxnState::Committed)
        );
        for s in [TxnState::Open, TxnState::Committed, TxnState::Aborted] {
            assert_eq!(TxnState::parse(s.as_str()), Some(s));
        }
    }

    #[test]
    fn the_stable_offset_is_the_oldest_open_first_offset() {
        assert_eq!(stable_offset(10, None), 10);
        assert_eq!(stable_offset(10, Some(4)), 4);
        assert_eq!(stable_offset(10, Some(12)), 10);
    }

    #[test]
    fn punching_refuses_what_is_not_inside_a_dense_entry() {
        let e = EntryPiece {
            base_offset: 10,
            records: 5,
            row_first: 0,
            rows: 5,
        };
        assert!(punch(e, 9, 2).is_err());
        assert!(punch(e, 14, 2).is_err());
        assert!(punch(e, 12, 0).is_err());
        let hole = EntryPiece { rows: 0, ..e };
        assert_eq!(punch(hole, 10, 5), Err(PunchError::NotDense(10)));
    }

    proptest! {
        /// The pieces tile the entry's offsets exactly; every offset outside the batch is
        /// served by the same row as before; none inside it is served.
        #[test]
        fn punched_pieces_keep_every_other_row_where_it_was(
            base in 0u64..1_000, records in 1u32..200, row_first in 0u32..50,
            a_frac in 0.0f64..1.0, n_frac in 0.0f64..1.0,
        ) {
            let e = EntryPiece { base_offset: base, records, row_first, rows: records };
            // A batch inside the entry: a in 0..records, n in 1..=records - a.
            let a = ((f64::from(records) * a_frac) as u32).min(records - 1);
            let n = 1 + ((f64::from(records - a - 1) * n_frac) as u32).min(records - a - 1);
            let first = base + u64::from(a);
            let pieces = punch(e, first, n).unwrap();
            let mut at = base;
            for p in &pieces {
                prop_assert_eq!(p.base_offset, at);
                prop_assert!(p.records > 0);
                at += u64::from(p.records);
                let in_batch = p.base_offset >= first && p.base_offset < first + u64::from(n);
                if in_batch {
                    prop_assert_eq!(p.rows, 0);
                } else {
                    prop_assert_eq!(p.rows, p.records);
                    // Row of offset o stays row_first + (o - base).
                    prop_assert_eq!(u64::from(p.row_first), u64::from(row_first) + p.base_offset - base);
                }
            }
            prop_assert_eq!(at, base + u64::from(records));
            prop_assert_eq!(pieces.iter().filter(|p| p.rows == 0).count(), 1);
        }
    }
}
