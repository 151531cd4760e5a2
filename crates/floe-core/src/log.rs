//! Pure log logic: offset assignment at commit and fetch planning over runs.
//! Both index backends and the fetch path use these, so the rules live in one place.

/// A committed run as the index describes it: `records` offsets starting at `base_offset`.
pub trait RunSpan {
    fn base_offset(&self) -> u64;
    fn records(&self) -> u32;
    fn end_offset(&self) -> u64 {
        self.base_offset() + u64::from(self.records())
    }
}

/// Assign base offsets to runs committed together, given each run's partition end before
/// the commit. Runs of the same partition inside one commit get consecutive ranges in the
/// order given. `end_of` returns the current end for a partition key and is advanced here.
///
/// Invariant: offsets are dense and strictly increasing per partition.
pub fn assign_offsets<K: PartialEq + Clone>(
    runs: &[(K, u32)],
    mut end_of: impl FnMut(&K) -> u64,
) -> Vec<(K, u64, u64)> {
    let mut out: Vec<(K, u64, u64)> = Vec::with_capacity(runs.len());
    for (k, n) in runs {
        let base = match out.iter().rev().find(|(ok, _, _)| ok == k) {
            Some((_, b, len)) => b + len,
            None => end_of(k),
        };
        out.push((k.clone(), base, u64::from(*n)));
    }
    out
}

/// One slice of a run that a fetch returns: positions `from..to` within the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub run: usize,
    pub from: usize,
    pub to: usize,
}

/// Plan which rows of `runs` (sorted by base offset, contiguous) a fetch at `offset`
/// returns, up to `max_records`. Returns the slices and the next offset.
/// Runs that end at or before `offset` are skipped. A gap between runs ends the plan
/// (the index never has gaps; a gap means a run is missing and nothing past it is served).
pub fn plan_fetch<R: RunSpan>(runs: &[R], offset: u64, max_records: usize) -> (Vec<Slice>, u64) {
    let mut next = offset;
    let mut left = max_records;
    let mut out = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        if left == 0 {
            break;
        }
        if r.end_offset() <= next {
            continue;
        }
        if r.base_offset() > next {
            break;
        }
        let from = (next - r.base_offset()) as usize;
        let to = (r.records() as usize).min(from + left);
        out.push(Slice { run: i, from, to });
        left -= to - from;
        next = r.base_offset() + to as u64;
    }
    (out, next)
}

/// Retention by record time (RFC 0004): the partition's new start offset once the runs
/// whose **newest** record is older than `cutoff_ms` are dropped — a prefix of the runs
/// (sorted by base offset) only, so the log stays contiguous. `None`: nothing expires.
/// A run expires whole, so no record younger than the cutoff is ever dropped.
pub fn retention_start(runs: &[(u64, u32, i64)], cutoff_ms: i64) -> Option<u64> {
    let mut start = None;
    for (base, records, max_ts) in runs {
        if *max_ts >= cutoff_ms {
            break;
        }
        if start.is_some_and(|s| s != *base) {
            break; // a gap: never reach past it
        }
        start = Some(base + u64::from(*records));
    }
    start
}

/// Retention by size (RFC 0004): the partition's new start offset once the oldest runs
/// are dropped until the partition holds at most `max_bytes` — a prefix of whole runs,
/// never the newest run. `runs` (base, records, bytes) is a prefix of the partition's runs
/// sorted by base offset, `total_bytes` the size of all of them. `None`: nothing to drop.
pub fn size_retention_start(
    runs: &[(u64, u32, u64)],
    total_bytes: u64,
    max_bytes: u64,
    total_runs: usize,
) -> Option<u64> {
    let mut left = total_bytes;
    let mut start = None;
    for (k, (base, records, bytes)) in runs.iter().enumerate() {
        if left <= max_bytes || k + 1 >= total_runs {
            break;
        }
        if start.is_some_and(|s| s != *base) {
            break; // a gap: never reach past it
        }
        left = left.saturating_sub(*bytes);
        start = Some(base + u64::from(*records));
    }
    start
}

#[cfg(test)]
mod tests {
    #[test]
    fn size_retention_drops_the_oldest_whole_runs_but_never_the_newest() {
        // (base, records, bytes): 100 + 200 + 50 + 300 = 650 bytes.
        let runs = [(0, 3, 100), (3, 2, 200), (5, 1, 50), (6, 4, 300)];
        assert_eq!(size_retention_start(&runs, 650, 1000, 4), None);
        assert_eq!(size_retention_start(&runs, 650, 650, 4), None);
        assert_eq!(size_retention_start(&runs, 650, 600, 4), Some(3));
        assert_eq!(size_retention_start(&runs, 650, 350, 4), Some(5));
        assert_eq!(size_retention_start(&runs, 650, 300, 4), Some(6));
        assert_eq!(
            size_retention_start(&runs, 650, 0, 4),
            Some(6),
            "the newest run stays"
        );
        // Only a prefix was read: drop within it only.
        assert_eq!(size_retention_start(&runs[..2], 650, 0, 4), Some(5));
        assert_eq!(
            size_retention_start(&[(0, 1, 10), (2, 1, 10)], 20, 0, 2),
            Some(1),
            "gap"
        );
    }

    #[test]
    fn retention_drops_a_prefix_of_whole_expired_runs() {
        // (base, records, newest timestamp)
        let runs = [(0, 3, 10), (3, 2, 20), (5, 4, 40), (9, 1, 15)];
        assert_eq!(retention_start(&runs, 5), None);
        assert_eq!(retention_start(&runs, 11), Some(3));
        assert_eq!(
            retention_start(&runs, 30),
            Some(5),
            "stops at the first live run"
        );
        assert_eq!(retention_start(&runs, 100), Some(10));
        assert_eq!(
            retention_start(&[(0, 3, 1), (4, 1, 1)], 100),
            Some(3),
            "gap"
        );
        assert_eq!(retention_start(&[], 100), None);
    }

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug)]
    struct R(u64, u32);
    impl RunSpan for R {
        fn base_offset(&self) -> u64 {
            self.0
        }
        fn records(&self) -> u32 {
            self.1
        }
    }

    #[test]
    fn assigns_consecutive_ranges_per_partition() {
        let runs = [("a", 3), ("b", 2), ("a", 4)];
        let out = assign_offsets(&runs, |k| if *k == "a" { 10 } else { 0 });
        assert_eq!(out, vec![("a", 10, 3), ("b", 0, 2), ("a", 13, 4)]);
    }

    #[test]
    fn plan_skips_and_limits() {
        let runs = [R(0, 5), R(5, 5), R(10, 5)];
        let (p, next) = plan_fetch(&runs, 3, 4);
        assert_eq!(
            p,
            vec![
                Slice {
                    run: 0,
                    from: 3,
                    to: 5
                },
                Slice {
                    run: 1,
                    from: 0,
                    to: 2
                }
            ]
        );
        assert_eq!(next, 7);
        let (p, next) = plan_fetch(&runs, 15, 10);
        assert!(p.is_empty());
        assert_eq!(next, 15);
    }

    #[test]
    fn plan_stops_at_gap() {
        let runs = [R(0, 5), R(7, 5)];
        let (p, next) = plan_fetch(&runs, 0, 100);
        assert_eq!(p.len(), 1);
        assert_eq!(next, 5);
    }

    proptest! {
        #[test]
        fn plan_returns_dense_offsets(sizes in proptest::collection::vec(1u32..20, 1..20), offset in 0u64..300, max in 1usize..100) {
            let mut runs = Vec::new();
            let mut b = 0;
            for s in sizes { runs.push(R(b, s)); b += u64::from(s); }
            let end = b;
            let (plan, next) = plan_fetch(&runs, offset, max);
            let mut o = offset;
            let mut count = 0;
            for s in &plan {
                prop_assert_eq!(runs[s.run].0 + s.from as u64, o);
                o += (s.to - s.from) as u64;
                count += s.to - s.from;
            }
            prop_assert_eq!(o, next);
            prop_assert!(count <= max);
            if offset < end { prop_assert_eq!(count, max.min((end - offset) as usize)); }
        }
    }
}
