//! Which index entries of a partition a compactor rewrites into one partition file
//! (RFC 0004). Pure: the compactor (floe-broker) feeds it the partition's entries and acts
//! on the answer; the index swap checks that nothing changed in between.

use std::ops::Range;

/// One index entry of a partition, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub base_offset: u64,
    pub records: u32,
    /// Bytes the entry's rows take in its object (compressed).
    pub bytes: u64,
    /// Already in a partition file: never rewritten by this planner.
    pub compacted: bool,
    /// Newest record time in the entry.
    pub max_timestamp_ms: i64,
}

/// When a partition is worth compacting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A partition file is written once this many bytes of small entries are waiting...
    pub target_bytes: u64,
    /// ...or once the oldest waiting entry is this old (so a quiet partition is compacted
    /// too), as long as at least `min_pieces` entries are waiting.
    pub max_wait_ms: i64,
    pub min_pieces: usize,
    /// Entries with a record younger than this are left alone (the hot tail that
    /// consumers are reading from the agents' caches).
    pub min_age_ms: i64,
    /// At most this many records per partition file.
    pub max_records: u64,
}

/// The entries (a range of `pieces`, sorted by offset) to rewrite now, or `None`.
///
/// The range is the first stretch of contiguous, not yet compacted, settled entries, cut
/// at `target_bytes` / `max_records`. It is taken when full, or when it is old enough and
/// has at least `min_pieces` entries; a single entry is never rewritten alone.
pub fn plan(pieces: &[Piece], policy: &Policy, now_ms: i64) -> Option<Range<usize>> {
    let start = pieces.iter().position(|p| !p.compacted)?;
    let settled = now_ms.saturating_sub(policy.min_age_ms);
    let mut bytes = 0u64;
    let mut records = 0u64;
    let mut end = start;
    let mut full = false;
    while let Some(p) = pieces.get(end) {
        if p.compacted || p.max_timestamp_ms >= settled {
            break;
        }
        if end > start
            && pieces[end - 1].base_offset + u64::from(pieces[end - 1].records) != p.base_offset
        {
            break; // a gap: never reach past it
        }
        if end > start && records + u64::from(p.records) > policy.max_records {
            full = true;
            break;
        }
        bytes += p.bytes;
        records += u64::from(p.records);
        end += 1;
        if bytes >= policy.target_bytes || records >= policy.max_records {
            full = true;
            break;
        }
    }
    let count = end - start;
    if count < 2 {
        return None;
    }
    let oldest = pieces[start..end]
        .iter()
        .map(|p| p.max_timestamp_ms)
        .min()
        .unwrap_or(i64::MAX);
    let waited = oldest < now_ms.saturating_sub(policy.max_wait_ms);
    (full || (waited && count >= policy.min_pieces.max(2))).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: Policy = Policy {
        target_bytes: 1000,
        max_wait_ms: 60_000,
        min_pieces: 3,
        min_age_ms: 5_000,
        max_records: 1_000_000,
    };

    fn pieces(spec: &[(u64, bool, i64)]) -> Vec<Piece> {
        let mut at = 0;
        spec.iter()
            .map(|&(bytes, compacted, ts)| {
                let p = Piece {
                    base_offset: at,
                    records: 10,
                    bytes,
                    compacted,
                    max_timestamp_ms: ts,
                };
                at += 10;
                p
            })
            .collect()
    }

    #[test]
    fn takes_small_settled_entries_once_full_or_old() {
        let now = 100_000;
        // Full: 400 + 400 + 400 >= 1000 after three entries.
        let p = pieces(&[
            (400, false, 0),
            (400, false, 0),
            (400, false, 0),
            (400, false, 0),
        ]);
        assert_eq!(plan(&p, &POLICY, now), Some(0..3));
        // Skips what is compacted already.
        let p = pieces(&[(900, true, 0), (600, false, 0), (600, false, 0)]);
        assert_eq!(plan(&p, &POLICY, now), Some(1..3));
        // Not full, not old: wait.
        let p = pieces(&[
            (10, false, 90_000),
            (10, false, 90_000),
            (10, false, 90_000),
        ]);
        assert_eq!(plan(&p, &POLICY, now), None);
        // Not full but old, with enough entries.
        let p = pieces(&[(10, false, 1), (10, false, 2), (10, false, 3)]);
        assert_eq!(plan(&p, &POLICY, now), Some(0..3));
        // Old but too few entries.
        assert_eq!(plan(&p[..2], &POLICY, now), None);
        // The hot tail stays: an entry younger than min_age stops the range.
        let p = pieces(&[(600, false, 0), (600, false, 99_000), (600, false, 0)]);
        assert_eq!(plan(&p, &POLICY, now), None);
        // A single large entry is never rewritten alone.
        let p = pieces(&[(5000, false, 0), (10, true, 0)]);
        assert_eq!(plan(&p, &POLICY, now), None);
        // The record cap cuts the range.
        let capped = Policy {
            max_records: 20,
            ..POLICY
        };
        let p = pieces(&[(1, false, 0), (1, false, 0), (1, false, 0)]);
        assert_eq!(plan(&p, &capped, now), Some(0..2));
    }

    #[test]
    fn never_reaches_past_a_gap() {
        let mut p = pieces(&[(600, false, 0), (600, false, 0), (600, false, 0)]);
        p[1].base_offset += 1;
        p[2].base_offset += 1;
        assert_eq!(plan(&p, &POLICY, 100_000), None);
    }

    proptest! {
        /// Whatever the entries, a plan is a contiguous stretch of at least two settled,
        /// uncompacted entries with dense offsets.
        #[test]
        fn plans_are_contiguous_settled_and_uncompacted(
            spec in proptest::collection::vec((0u64..800, any::<bool>(), 0i64..120_000), 0..20),
            now in 0i64..200_000,
        ) {
            let p = pieces(&spec);
            if let Some(r) = plan(&p, &POLICY, now) {
                prop_assert!(r.len() >= 2);
                for (k, x) in p[r.clone()].iter().enumerate() {
                    prop_assert!(!x.compacted);
                    prop_assert!(x.max_timestamp_ms < now - POLICY.min_age_ms);
                    if k > 0 {
                        let prev = p[r.start + k - 1];
                        prop_assert_eq!(prev.base_offset + u64::from(prev.records), x.base_offset);
                    }
                }
            }
        }
    }
}
