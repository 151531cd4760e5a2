//! Which index entries of a partition a compactor rewrites into one partition file
//! (RFC 0004). Pure: the compactor (floe-broker) feeds it the partition's entries and acts
//! on the answer; the index swap checks that nothing changed in between.

use std::collections::HashMap;
use std::ops::Range;

/// One index entry of a partition, as the planner sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub base_offset: u64,
    pub records: u32,
    /// Bytes the entry's rows take in its object (compressed).
    pub bytes: u64,
    /// In a partition file of at least half the target size: never rewritten.
    pub compacted: bool,
    /// In a smaller partition file (a quiet partition's, written after `max_wait_ms`):
    /// merged with the entries that wait after it, never rewritten on its own.
    pub in_file: bool,
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
/// at `target_bytes` / `max_records`. It is taken when full, or when its oldest entry not
/// in a file has waited `max_wait_ms` and it has at least `min_pieces` entries; a single
/// entry is never rewritten alone, nor a stretch of small files alone (so a quiet
/// partition's small files are merged with what arrives next, once it has waited: a
/// second level without rewriting a file more often than every `max_wait_ms`).
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
    if count < 2 || pieces[start..end].iter().all(|p| p.in_file) {
        return None;
    }
    let oldest = pieces[start..end]
        .iter()
        .filter(|p| !p.in_file)
        .map(|p| p.max_timestamp_ms)
        .min()
        .unwrap_or(i64::MAX);
    let waited = oldest < now_ms.saturating_sub(policy.max_wait_ms);
    (full || (waited && count >= policy.min_pieces.max(2))).then_some(start..end)
}

/// A topic's `cleanup.policy` (Kafka's names): `delete` (the default: retention by time
/// and size drops old records), `compact` (the compactor keeps the latest record per key),
/// or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: Self = Self {
        delete: true,
        compact: false,
    };

    /// `delete`, `compact`, `compact,delete` or `delete,compact`; `None` otherwise.
    pub fn parse(v: &str) -> Option<Self> {
        match v {
            "delete" => Some(Self::DELETE),
            "compact" => Some(Self {
                delete: false,
                compact: true,
            }),
            "compact,delete" | "delete,compact" => Some(Self {
                delete: true,
                compact: true,
            }),
            _ => None,
        }
    }
}

/// Whether a record is a tombstone in a compacted topic: a key with an empty value (Floe's
/// values are never null; Kafka's null value is Floe's empty one).
pub fn is_tombstone(key: Option<&[u8]>, value: &[u8]) -> bool {
    key.is_some() && value.is_empty()
}

/// The latest offset of each key in a stretch of a compacted topic's log (pass one of a
/// cleaning; pass two keeps what [`KeyMap::keeps`] says).
#[derive(Debug, Default)]
pub struct KeyMap {
    latest: HashMap<Vec<u8>, u64>,
    bytes: usize,
    last: Option<u64>,
}

/// Tombstones are dropped only by a cleaning that starts at the log's start (so no older
/// record of the key survives before it), once older than `delete.retention.ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleaning {
    /// Drop tombstones with a timestamp before this; `None`: keep every latest tombstone.
    pub tombstones_before_ms: Option<i64>,
}

impl KeyMap {
    /// Records are observed in offset order.
    pub fn observe(&mut self, key: Option<&[u8]>, offset: u64) {
        self.last = Some(offset);
        if let Some(k) = key {
            match self.latest.get_mut(k) {
                Some(o) => *o = offset,
                None => {
                    self.bytes += k.len() + 48;
                    let _ = self.latest.insert(k.to_vec(), offset);
                }
            }
        }
    }

    /// Approximate memory held.
    pub fn memory_size(&self) -> usize {
        self.bytes
    }

    /// Distinct keys seen.
    pub fn keys(&self) -> usize {
        self.latest.len()
    }

    /// Whether the record at `offset` stays: keyless records stay; a keyed one only as its
    /// key's latest record, and a latest tombstone only until it expires — except the
    /// stretch's very last record, which always stays (a cleaning never empties a stretch).
    pub fn keeps(
        &self,
        offset: u64,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        rule: Cleaning,
    ) -> bool {
        let Some(k) = key else {
            return true;
        };
        if self.latest.get(k).is_some_and(|o| *o != offset) {
            return false;
        }
        let expired = rule
            .tombstones_before_ms
            .is_some_and(|before| timestamp_ms < before);
        !(is_tombstone(key, value) && expired && self.last != Some(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cleanup_policies_parse_as_kafka_names_them() {
        assert_eq!(CleanupPolicy::parse("delete"), Some(CleanupPolicy::DELETE));
        assert_eq!(
            CleanupPolicy::parse("delete,compact"),
            CleanupPolicy::parse("compact,delete")
        );
        let c = CleanupPolicy::parse("compact").unwrap();
        assert!(c.compact && !c.delete);
        for bad in ["", "Compact", "compact,", "delete, compact", "none"] {
            assert_eq!(CleanupPolicy::parse(bad), None, "{bad:?}");
        }
    }

    /// One record of a model log: (key, value, timestamp).
    type Rec = (Option<u8>, Vec<u8>, i64);

    /// Clean `log` (offsets `base..`) and return what stays, with offsets.
    fn clean(log: &[Rec], base: u64, rule: Cleaning) -> Vec<(u64, Rec)> {
        let mut m = KeyMap::default();
        let key = |r: &Rec| r.0.map(|k| vec![k]);
        for (i, r) in log.iter().enumerate() {
            m.observe(key(r).as_deref(), base + i as u64);
        }
        log.iter()
            .enumerate()
            .filter(|(i, r)| m.keeps(base + *i as u64, key(r).as_deref(), &r.1, r.2, rule))
            .map(|(i, r)| (base + i as u64, r.clone()))
            .collect()
    }

    #[test]
    fn keeps_the_latest_record_per_key_and_expires_tombstones() {
        let log: Vec<Rec> = vec![
            (Some(1), b"a".to_vec(), 10),
            (None, b"x".to_vec(), 11),
            (Some(2), b"b".to_vec(), 12),
            (Some(1), b"c".to_vec(), 13),
            (Some(2), vec![], 14), // tombstone of 2
            (Some(3), b"d".to_vec(), 15),
        ];
        let keep = |rule| -> Vec<u64> { clean(&log, 100, rule).iter().map(|r| r.0).collect() };
        let none = Cleaning {
            tombstones_before_ms: None,
        };
        assert_eq!(keep(none), [101, 103, 104, 105]);
        let expire = Cleaning {
            tombstones_before_ms: Some(20),
        };
        assert_eq!(keep(expire), [101, 103, 105], "the expired tombstone goes");
        let young = Cleaning {
            tombstones_before_ms: Some(14),
        };
        assert_eq!(keep(young), [101, 103, 104, 105]);
        // The stretch's last record stays even as an expired tombstone.
        assert_eq!(
            clean(&log[..5], 100, expire)
                .iter()
                .map(|r| r.0)
                .collect::<Vec<_>>(),
            [101, 103, 104]
        );
    }

    proptest! {
        /// Cleaning keeps exactly the latest record of every key (and every keyless one),
        /// at its own offset and in log order, and cleaning twice changes nothing — so a
        /// consumer replaying the cleaned log rebuilds the same table as from the full log.
        #[test]
        fn cleaning_keeps_exactly_the_latest_per_key(
            log in proptest::collection::vec(
                (proptest::option::of(0u8..6), proptest::collection::vec(any::<u8>(), 0..3), 0i64..100),
                1..60,
            ),
            before in proptest::option::of(0i64..120),
        ) {
            let rule = Cleaning { tombstones_before_ms: before };
            let kept = clean(&log, 7, rule);
            let mut table = std::collections::BTreeMap::new();
            for r in &log {
                if let Some(k) = r.0 {
                    let _ = table.insert(k, r.1.clone());
                }
            }
            let mut rebuilt = std::collections::BTreeMap::new();
            for (_, r) in &kept {
                if let Some(k) = r.0 {
                    let _ = rebuilt.insert(k, r.1.clone());
                }
            }
            // Expired tombstones may vanish: then the key is simply absent, like deleted.
            table.retain(|_, v| !v.is_empty());
            rebuilt.retain(|_, v| !v.is_empty());
            prop_assert_eq!(&table, &rebuilt);
            prop_assert!(kept.windows(2).all(|w| w[0].0 < w[1].0));
            prop_assert_eq!(kept.last().map(|r| r.0), Some(7 + log.len() as u64 - 1));
            prop_assert_eq!(
                kept.iter().filter(|(_, r)| r.0.is_none()).count(),
                log.iter().filter(|r| r.0.is_none()).count()
            );
            let keyed: Vec<u8> = kept.iter().filter_map(|(_, r)| r.0).collect();
            let mut uniq = keyed.clone();
            uniq.sort_unstable();
            uniq.dedup();
            prop_assert_eq!(uniq.len(), keyed.len(), "one record per key");
            // Idempotent: cleaning the cleaned log (its offsets kept) keeps it whole.
            let mut m = KeyMap::default();
            for (o, r) in &kept {
                m.observe(r.0.map(|k| vec![k]).as_deref(), *o);
            }
            let again: Vec<u64> = kept
                .iter()
                .filter(|(o, r)| m.keeps(*o, r.0.map(|k| vec![k]).as_deref(), &r.1, r.2, rule))
                .map(|(o, _)| *o)
                .collect();
            prop_assert_eq!(again, kept.iter().map(|(o, _)| *o).collect::<Vec<_>>());
        }
    }

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
                    in_file: false,
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
    fn small_files_merge_with_what_waits_after_them() {
        let now = 100_000;
        let small = |mut p: Vec<Piece>, n: usize| {
            for x in &mut p[..n] {
                x.in_file = true;
            }
            p
        };
        // An old small file and two fresh entries: the entries have not waited.
        let p = small(
            pieces(&[(10, false, 1), (10, false, 90_000), (10, false, 90_000)]),
            1,
        );
        assert_eq!(plan(&p, &POLICY, now), None);
        // Once they have, the file is merged with them.
        let p = small(pieces(&[(10, false, 1), (10, false, 2), (10, false, 3)]), 1);
        assert_eq!(plan(&p, &POLICY, now), Some(0..3));
        // Small files alone are never rewritten, however old.
        let p = small(pieces(&[(10, false, 1), (10, false, 2), (10, false, 3)]), 3);
        assert_eq!(plan(&p, &POLICY, now), None);
        // Full: taken at once, small files included.
        let p = small(pieces(&[(600, false, 1), (600, false, 99_000 - 6_000)]), 1);
        assert_eq!(plan(&p, &POLICY, now), Some(0..2));
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
            files in proptest::collection::vec(any::<bool>(), 20),
            now in 0i64..200_000,
        ) {
            let mut p = pieces(&spec);
            for (x, f) in p.iter_mut().zip(&files) {
                x.in_file = *f && !x.compacted;
            }
            if let Some(r) = plan(&p, &POLICY, now) {
                prop_assert!(r.len() >= 2);
                prop_assert!(p[r.clone()].iter().any(|x| !x.in_file), "not small files alone");
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
