//! Producer sessions (RFC 0003 part 2, Kafka KIP-98 semantics): the sequence checks both
//! index backends take inside the commit transaction, kept pure here.
//!
//! A producer session is `(producer_id, epoch)`. Per (producer, topic, partition) the
//! index keeps a [`SeqState`]: the epoch it belongs to, the next expected sequence and the
//! base offsets of the last [`MAX_RECENT`] batches. A batch names the sequence of its first
//! record; it is appended when that is the next expected one, answered with its original
//! offsets when it is one of the recent batches (a retry), and refused otherwise. A newer
//! epoch (the same producer name re-initialised) fences every older one and starts its
//! sequences at 0.

use serde::{Deserialize, Serialize};

/// Batches remembered per (producer, partition) for replaying retries (Kafka keeps 5).
pub const MAX_RECENT: usize = 5;

/// One committed batch: sequences `first_seq..first_seq + count` at `base_offset..`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recent {
    pub first_seq: i64,
    pub count: u32,
    pub base_offset: u64,
}

/// What the index holds per (producer, topic, partition).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SeqState {
    pub epoch: u32,
    pub next_seq: i64,
    /// Oldest first, at most [`MAX_RECENT`].
    pub recent: Vec<Recent>,
}

/// A producer's batch for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub epoch: u32,
    pub first_seq: i64,
    pub count: u32,
}

/// The verdict on one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The next batch: append it.
    Append,
    /// A retry of a committed batch: its records are at `base_offset..`; write nothing.
    Duplicate { base_offset: u64 },
    /// Not the next sequence and not a recent batch: `expected` is the next sequence.
    OutOfOrder { expected: i64 },
    /// The batch's epoch is not the producer's current one (`current`): a newer session
    /// of the same producer exists (or the batch names an epoch never handed out).
    Fenced { current: u32 },
}

/// Decide `b` against the stored state, given the producer's current epoch.
pub fn check(state: Option<&SeqState>, current_epoch: u32, b: &Batch) -> Check {
    if b.epoch != current_epoch {
        return Check::Fenced {
            current: current_epoch,
        };
    }
    // State of an older epoch does not count: a new epoch starts at sequence 0.
    let state = state.filter(|s| s.epoch == b.epoch);
    let next = state.map_or(0, |s| s.next_seq);
    if b.first_seq == next {
        return Check::Append;
    }
    if let Some(r) = state.and_then(|s| {
        s.recent
            .iter()
            .find(|r| r.first_seq == b.first_seq && r.count == b.count)
    }) {
        return Check::Duplicate {
            base_offset: r.base_offset,
        };
    }
    Check::OutOfOrder { expected: next }
}

/// The state after appending `b` (which [`check`] answered `Append`) at `base_offset`.
pub fn apply(state: Option<&SeqState>, b: &Batch, base_offset: u64) -> SeqState {
    let mut recent = state
        .filter(|s| s.epoch == b.epoch)
        .map(|s| s.recent.clone())
        .unwrap_or_default();
    recent.push(Recent {
        first_seq: b.first_seq,
        count: b.count,
        base_offset,
    });
    if recent.len() > MAX_RECENT {
        let _ = recent.drain(..recent.len() - MAX_RECENT);
    }
    SeqState {
        epoch: b.epoch,
        next_seq: b.first_seq + i64::from(b.count),
        recent,
    }
}

/// The verdict on a whole request (its batches, one per partition it writes): a request
/// is atomic, so it is appended only if every batch is, and replayed only if every batch
/// is a retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestCheck {
    Append,
    /// Base offset of each batch, in the order given.
    Duplicate(Vec<u64>),
    /// Refused; nothing of the request is written.
    Refused(Refusal),
}

/// Why a producer request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `(partition, expected, got)` of the first batch out of order.
    OutOfOrder {
        partition: u32,
        expected: i64,
        got: i64,
    },
    /// Part of the request was committed before and part was not: not a retry of one
    /// request.
    PartlyDuplicate {
        partition: u32,
    },
    Fenced {
        current: u32,
    },
    /// The producer id is unknown (never created, or expired after its idle time).
    UnknownProducer,
    /// A transactional request (RFC 0005), but the producer's epoch has no open
    /// transaction (never begun, or already committed, aborted or timed out).
    TransactionNotOpen,
    /// A plain request from an epoch whose transaction is open: it must be marked
    /// transactional (or the transaction ended first).
    TransactionOpen,
}

/// Combine per-batch checks `(partition, first_seq, check)` into the request's verdict.
pub fn combine(checks: &[(u32, i64, Check)]) -> RequestCheck {
    if let Some((_, _, Check::Fenced { current })) = checks
        .iter()
        .find(|(_, _, c)| matches!(c, Check::Fenced { .. }))
    {
        return RequestCheck::Refused(Refusal::Fenced { current: *current });
    }
    if let Some((p, got, Check::OutOfOrder { expected })) = checks
        .iter()
        .find(|(_, _, c)| matches!(c, Check::OutOfOrder { .. }))
    {
        return RequestCheck::Refused(Refusal::OutOfOrder {
            partition: *p,
            expected: *expected,
            got: *got,
        });
    }
    let dups: Vec<u64> = checks
        .iter()
        .filter_map(|(_, _, c)| match c {
            Check::Duplicate { base_offset } => Some(*base_offset),
            _ => None,
        })
        .collect();
    if dups.is_empty() {
        RequestCheck::Append
    } else if dups.len() == checks.len() {
        RequestCheck::Duplicate(dups)
    } else {
        let p = checks
            .iter()
            .find(|(_, _, c)| matches!(c, Check::Append))
            .map_or(0, |(p, _, _)| *p);
        RequestCheck::Refused(Refusal::PartlyDuplicate { partition: p })
    }
}

/// The rows of a run that stay once `excluded` rows (refused or duplicate batches, as
/// `(first row, count)`, any order, non-overlapping) are taken out: `(first row, count)`
/// pieces in row order, each committed as its own index entry.
pub fn kept_pieces(records: u32, excluded: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut ex: Vec<(u32, u32)> = excluded.iter().copied().filter(|(_, n)| *n > 0).collect();
    ex.sort_unstable();
    let mut out = Vec::new();
    let mut at = 0u32;
    for (first, n) in ex {
        if first > at {
            out.push((at, first - at));
        }
        at = at.max(first.saturating_add(n));
    }
    if records > at {
        out.push((at, records - at));
    }
    out
}

/// The offset of row `pos` of a run whose first kept row got `base`, with `excluded` rows
/// taken out; `None` if `pos` itself is excluded.
pub fn offset_at(base: u64, excluded: &[(u32, u32)], pos: u64) -> Option<u64> {
    let mut before = 0u64;
    for (first, n) in excluded {
        let (first, end) = (u64::from(*first), u64::from(*first) + u64::from(*n));
        if pos >= first && pos < end {
            return None;
        }
        if end <= pos {
            before += end - first;
        }
    }
    Some(base + pos - before)
}

/// The stored form of [`SeqState::recent`].
pub fn encode_recent(r: &[Recent]) -> String {
    serde_json::to_string(r).unwrap_or_else(|_| "[]".into())
}

pub fn decode_recent(s: &str) -> Result<Vec<Recent>, serde_json::Error> {
    serde_json::from_str(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn b(epoch: u32, first_seq: i64, count: u32) -> Batch {
        Batch {
            epoch,
            first_seq,
            count,
        }
    }

    #[test]
    fn next_sequence_appends_recent_replays_others_refused() {
        assert_eq!(check(None, 0, &b(0, 0, 3)), Check::Append);
        assert_eq!(
            check(None, 0, &b(0, 1, 3)),
            Check::OutOfOrder { expected: 0 }
        );
        let s = apply(None, &b(0, 0, 3), 100);
        assert_eq!(check(Some(&s), 0, &b(0, 3, 2)), Check::Append);
        assert_eq!(
            check(Some(&s), 0, &b(0, 0, 3)),
            Check::Duplicate { base_offset: 100 }
        );
        assert_eq!(
            check(Some(&s), 0, &b(0, 0, 2)),
            Check::OutOfOrder { expected: 3 },
            "same first sequence, other size: not a retry"
        );
        assert_eq!(
            check(Some(&s), 1, &b(0, 3, 1)),
            Check::Fenced { current: 1 }
        );
        // A new epoch starts over at 0; the old epoch's batches are no longer replayed.
        assert_eq!(check(Some(&s), 1, &b(1, 0, 3)), Check::Append);
        let s1 = apply(Some(&s), &b(1, 0, 3), 200);
        assert_eq!(s1.recent.len(), 1);
    }

    #[test]
    fn only_the_last_five_batches_are_replayed() {
        let mut s: Option<SeqState> = None;
        for i in 0..7i64 {
            s = Some(apply(s.as_ref(), &b(0, i, 1), 10 + i as u64));
        }
        let s = s.unwrap();
        assert_eq!(s.recent.len(), MAX_RECENT);
        assert_eq!(
            check(Some(&s), 0, &b(0, 6, 1)),
            Check::Duplicate { base_offset: 16 }
        );
        assert_eq!(
            check(Some(&s), 0, &b(0, 1, 1)),
            Check::OutOfOrder { expected: 7 }
        );
    }

    #[test]
    fn requests_are_all_or_nothing() {
        use Check::*;
        assert_eq!(
            combine(&[(0, 0, Append), (1, 5, Append)]),
            RequestCheck::Append
        );
        assert_eq!(
            combine(&[
                (0, 0, Duplicate { base_offset: 4 }),
                (1, 5, Duplicate { base_offset: 9 })
            ]),
            RequestCheck::Duplicate(vec![4, 9])
        );
        assert_eq!(
            combine(&[(0, 0, Duplicate { base_offset: 4 }), (1, 5, Append)]),
            RequestCheck::Refused(Refusal::PartlyDuplicate { partition: 1 })
        );
        assert_eq!(
            combine(&[(0, 0, Append), (1, 5, OutOfOrder { expected: 2 })]),
            RequestCheck::Refused(Refusal::OutOfOrder {
                partition: 1,
                expected: 2,
                got: 5
            })
        );
        assert_eq!(
            combine(&[
                (0, 0, OutOfOrder { expected: 2 }),
                (1, 5, Fenced { current: 3 })
            ]),
            RequestCheck::Refused(Refusal::Fenced { current: 3 })
        );
    }

    #[test]
    fn pieces_and_offsets_skip_excluded_rows() {
        assert_eq!(kept_pieces(10, &[]), vec![(0, 10)]);
        assert_eq!(kept_pieces(10, &[(3, 2), (8, 2)]), vec![(0, 3), (5, 3)]);
        assert_eq!(kept_pieces(10, &[(0, 10)]), Vec::<(u32, u32)>::new());
        assert_eq!(kept_pieces(10, &[(0, 0)]), vec![(0, 10)]);
        let ex = [(3, 2), (8, 2)];
        assert_eq!(offset_at(100, &ex, 0), Some(100));
        assert_eq!(offset_at(100, &ex, 2), Some(102));
        assert_eq!(offset_at(100, &ex, 3), None);
        assert_eq!(offset_at(100, &ex, 5), Some(103));
        assert_eq!(offset_at(100, &ex, 7), Some(105));
        assert_eq!(offset_at(100, &ex, 9), None);
    }

    /// One step a client (or a zombie, or time) can take.
    #[derive(Debug, Clone)]
    enum Step {
        /// Send the next batch of `count` records (first attempt).
        Send(u32),
        /// Resend one of the batches sent so far (a retry after a lost answer).
        Retry(usize),
        /// Re-initialise the producer: a new epoch.
        Reinit,
        /// Send a batch with a sequence ahead of the next one.
        Skip(i64),
        /// The producer's state expires.
        Expire,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1u32..5).prop_map(Step::Send),
            3 => (0usize..12).prop_map(Step::Retry),
            1 => Just(Step::Reinit),
            1 => (1i64..4).prop_map(Step::Skip),
            1 => Just(Step::Expire),
        ]
    }

    proptest! {
        /// Against a model that remembers *every* batch ever committed: a batch is appended
        /// iff it carries the next sequence of the current epoch, a retry of one of the
        /// last five batches of the current epoch gets exactly its first offsets, and
        /// nothing is ever written twice.
        #[test]
        fn checker_matches_the_model(steps in proptest::collection::vec(step(), 1..60)) {
            let mut state: Option<SeqState> = None;
            let mut epoch = 0u32;
            let mut log_end = 0u64;
            // Model: every batch sent, with its epoch and where it was committed (if it was).
            let mut sent: Vec<(Batch, Option<u64>, u32)> = Vec::new();
            let mut era = 0u32;
            let mut next: HashMap<u32, i64> = HashMap::new();
            let mut written = 0u64;
            for s in steps {
                let batch = match s {
                    Step::Send(n) => {
                        let seq = *next.get(&epoch).unwrap_or(&0);
                        b(epoch, seq, n)
                    }
                    Step::Retry(i) if !sent.is_empty() => sent[i % sent.len()].0,
                    Step::Retry(_) => continue,
                    Step::Reinit => { epoch += 1; continue; }
                    Step::Skip(k) => b(epoch, *next.get(&epoch).unwrap_or(&0) + k, 1),
                    Step::Expire => { state = None; next.clear(); era += 1; continue; }
                };
                let got = check(state.as_ref(), epoch, &batch);
                let model_next = *next.get(&epoch).unwrap_or(&0);
                // The last five committed batches of this epoch since the last expiry.
                let recent: Vec<&(Batch, Option<u64>, u32)> = sent.iter()
                    .filter(|(sb, at, e)| sb.epoch == epoch && *e == era && at.is_some())
                    .collect();
                let recent = &recent[recent.len().saturating_sub(MAX_RECENT)..];
                if batch.epoch != epoch {
                    prop_assert_eq!(got, Check::Fenced { current: epoch });
                } else if batch.first_seq == model_next {
                    prop_assert_eq!(got, Check::Append);
                    state = Some(apply(state.as_ref(), &batch, log_end));
                    sent.push((batch, Some(log_end), era));
                    log_end += u64::from(batch.count);
                    written += u64::from(batch.count);
                    let _ = next.insert(epoch, batch.first_seq + i64::from(batch.count));
                } else if let Some((_, at, _)) = recent.iter().rev()
                    .find(|(sb, _, _)| sb.first_seq == batch.first_seq && sb.count == batch.count)
                {
                    prop_assert_eq!(got, Check::Duplicate { base_offset: at.unwrap_or(u64::MAX) });
                } else {
                    prop_assert_eq!(got, Check::OutOfOrder { expected: model_next });
                    if !sent.iter().any(|(sb, _, _)| *sb == batch) {
                        sent.push((batch, None, era));
                    }
                }
            }
            // Nothing written twice: the log holds exactly the appended batches.
            prop_assert_eq!(written, log_end);
        }
    }
}
