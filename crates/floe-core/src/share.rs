//! Share groups (queues): the delivery state of one partition for one group, in the spirit
//! of Kafka's KIP-932 share-partition state. Pure state machine; the agent keeps it in the
//! index and changes it with compare-and-swap.
//!
//! Offsets below `start` are done (acknowledged or dead-lettered). Offsets in
//! `start..next` are *in flight*: each has a [`Delivery`]. Offsets from `next` on were never
//! handed out. The in-flight window `next - start` is bounded, so the state stays small.
//!
//! A delivery's `count` is how many times it was handed out; a receipt names
//! (partition, offset, count), so a receipt from an earlier delivery can no longer settle a
//! record that was redelivered to someone else.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a record went to the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeadReason {
    /// Handed out `max_deliveries` times without an acknowledgement.
    MaxDeliveries,
    /// A consumer rejected it, with an optional message.
    Rejected(Option<String>),
}

impl DeadReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MaxDeliveries => "max_deliveries",
            Self::Rejected(_) => "rejected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Can be handed out once `not_before_ms` has passed.
    Available { not_before_ms: i64 },
    /// Handed out; invisible to others until `deadline_ms`.
    Acquired { deadline_ms: i64, consumer: String },
    /// Done.
    Acked,
    /// Must be written to the dead-letter topic; `since_ms` is when an agent took the job
    /// (another agent takes it over if it is not finished within the retry time).
    DeadLetter { reason: DeadReason, since_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub count: u32,
    pub state: State,
    /// Hash of the record's key, kept only for queues with per-key ordering.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<u32>,
}

/// Per-key ordering: the key hash of each record from `next` on, as far as the caller read
/// them (`None` inside: the record has no key and is not ordered).
pub type KeyHashes = BTreeMap<u64, Option<u32>>;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharePartition {
    pub start: u64,
    pub next: u64,
    /// Stored as ranges of consecutive offsets sharing one delivery (format 2, as KIP-932
    /// does); the per-offset map of formats 0 and 1 still decodes.
    #[serde(with = "ranges")]
    pub records: BTreeMap<u64, Delivery>,
}

/// The stored form of [`SharePartition::records`]: `[{"from", "to", ...delivery}]` with
/// `to` exclusive, one entry per run of consecutive offsets whose deliveries are equal. A
/// receive of many records with one visibility deadline is one entry, not one per record.
mod ranges {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::Delivery;

    #[derive(Serialize, Deserialize)]
    struct Range<D> {
        from: u64,
        to: u64,
        #[serde(flatten)]
        delivery: D,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        /// Format 2.
        Ranges(Vec<Range<Delivery>>),
        /// Formats 0 and 1: offset (as a JSON object key) → delivery.
        Map(BTreeMap<String, Delivery>),
    }

    pub(super) fn serialize<S: Serializer>(
        records: &BTreeMap<u64, Delivery>,
        ser: S,
    ) -> Result<S::Ok, S::Error> {
        let mut out: Vec<Range<&Delivery>> = Vec::new();
        for (offset, d) in records {
            match out.last_mut() {
                Some(r) if r.to == *offset && r.delivery == d => r.to += 1,
                _ => out.push(Range {
                    from: *offset,
                    to: offset + 1,
                    delivery: d,
                }),
            }
        }
        out.serialize(ser)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        de: D,
    ) -> Result<BTreeMap<u64, Delivery>, D::Error> {
        use serde::de::Error;
        match Stored::deserialize(de)? {
            Stored::Map(m) => m
                .into_iter()
                .map(|(k, d)| {
                    k.parse::<u64>()
                        .map(|o| (o, d))
                        .map_err(|_| D::Error::custom(format!("offset key {k:?} is not a number")))
                })
                .collect(),
            Stored::Ranges(rs) => {
                let mut out = BTreeMap::new();
                for r in rs {
                    if r.to <= r.from || r.to - r.from > super::MAX_STORED_RANGE {
                        return Err(D::Error::custom(format!(
                            "invalid delivery range {}..{}",
                            r.from, r.to
                        )));
                    }
                    for o in r.from..r.to {
                        if out.insert(o, r.delivery.clone()).is_some() {
                            return Err(D::Error::custom(format!(
                                "offset {o} is in two delivery ranges"
                            )));
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// Longest delivery range a stored blob may hold: far above any in-flight window, low
/// enough that a corrupt blob cannot make a decoder allocate without bound.
const MAX_STORED_RANGE: u64 = 10_000_000;

/// A receipt: proof of one delivery of one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Receipt {
    pub partition: u32,
    pub offset: u64,
    pub count: u32,
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.partition, self.offset, self.count)
    }
}

impl std::str::FromStr for Receipt {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("receipt {s:?} is malformed (expected PARTITION-OFFSET-COUNT)");
        let mut it = s.splitn(3, '-');
        let mut next = || it.next().ok_or_else(bad);
        let partition = next()?.parse().map_err(|_| bad())?;
        let offset = next()?.parse().map_err(|_| bad())?;
        let count = next()?.parse().map_err(|_| bad())?;
        Ok(Self {
            partition,
            offset,
            count,
        })
    }
}

/// What a consumer does with a record it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    Ack,
    /// Make it available again after `delay_ms` (0: now).
    Release {
        delay_ms: u64,
    },
    /// Dead-letter it now.
    Reject {
        reason: Option<String>,
    },
    /// Keep holding it for `visibility_ms` more from now.
    Extend {
        visibility_ms: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettleError {
    #[error(
        "receipt {0} is no longer valid: the record was redelivered, settled, or its visibility timeout passed"
    )]
    Stale(Receipt),
}

/// Records handed out by [`SharePartition::acquire`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// (offset, delivery count), ascending offsets.
    pub records: Vec<(u64, u32)>,
    /// Earliest time something held or delayed becomes available again (for long-polls).
    pub next_change_ms: Option<i64>,
}

/// A dead-letter job: write record `offset` (delivered `count` times) to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterJob {
    pub offset: u64,
    pub count: u32,
    pub reason: DeadReason,
}

fn ms(d: u64) -> i64 {
    i64::try_from(d).unwrap_or(i64::MAX)
}

impl SharePartition {
    /// A fresh state starting at `offset` (reset policy applied by the caller).
    pub fn starting_at(offset: u64) -> Self {
        Self {
            start: offset,
            next: offset,
            records: BTreeMap::new(),
        }
    }

    /// Return timed-out deliveries (dead-lettering those out of attempts) and claim
    /// dead-letter jobs that nobody finished within `dlq_retry_ms`. Returns the jobs the
    /// caller must now perform.
    pub fn expire(
        &mut self,
        now_ms: i64,
        max_deliveries: u32,
        dlq_retry_ms: u64,
    ) -> Vec<DeadLetterJob> {
        let mut jobs = Vec::new();
        for (offset, d) in &mut self.records {
            match &d.state {
                State::Acquired { deadline_ms, .. } if *deadline_ms <= now_ms => {
                    if d.count >= max_deliveries {
                        d.state = State::DeadLetter {
                            reason: DeadReason::MaxDeliveries,
                            since_ms: now_ms,
                        };
                        jobs.push(DeadLetterJob {
                            offset: *offset,
                            count: d.count,
                            reason: DeadReason::MaxDeliveries,
                        });
                    } else {
                        d.state = State::Available { not_before_ms: 0 };
                    }
                }
                State::DeadLetter { reason, since_ms }
                    if since_ms.saturating_add(ms(dlq_retry_ms)) <= now_ms =>
                {
                    let reason = reason.clone();
                    d.state = State::DeadLetter {
                        reason: reason.clone(),
                        since_ms: now_ms,
                    };
                    jobs.push(DeadLetterJob {
                        offset: *offset,
                        count: d.count,
                        reason,
                    });
                }
                _ => {}
            }
        }
        jobs
    }

    /// Hand out up to `max` records to `consumer` for `visibility_ms`: first records made
    /// available again (lowest offsets first), then new ones below `end_offset` while the
    /// in-flight window allows.
    ///
    /// With `ordered` (per-key ordering), a record is handed out only when no earlier record
    /// with the same key is still pending (held, waiting for redelivery or dead-lettering),
    /// so records of one key are processed one at a time, in offset order. New records
    /// whose key is blocked enter the window as available; new records are taken only as
    /// far as `ordered` knows their keys.
    #[allow(clippy::too_many_arguments)]
    pub fn acquire(
        &mut self,
        now_ms: i64,
        max: usize,
        end_offset: u64,
        window: u64,
        consumer: &str,
        visibility_ms: u64,
        ordered: Option<&KeyHashes>,
    ) -> Acquired {
        let mut out = Acquired::default();
        let deadline_ms = now_ms.saturating_add(ms(visibility_ms));
        let acquired = |d: &mut Delivery| {
            d.count += 1;
            d.state = State::Acquired {
                deadline_ms,
                consumer: consumer.to_string(),
            };
            d.count
        };
        let mut blocked = std::collections::HashSet::new();
        for (offset, d) in &mut self.records {
            if d.state == State::Acked {
                continue;
            }
            let free = ordered.is_none() || d.key.is_none_or(|k| !blocked.contains(&k));
            if free
                && out.records.len() < max
                && matches!(d.state, State::Available { not_before_ms } if not_before_ms <= now_ms)
            {
                out.records.push((*offset, acquired(d)));
            }
            if let (Some(_), Some(k)) = (ordered, d.key) {
                let _ = blocked.insert(k);
            }
        }
        while out.records.len() < max && self.next < end_offset && self.next - self.start < window {
            let key = match ordered {
                None => None,
                Some(keys) => match keys.get(&self.next) {
                    Some(k) => *k,
                    None => break,
                },
            };
            let mut d = Delivery {
                count: 0,
                state: State::Available { not_before_ms: 0 },
                key,
            };
            if key.is_none_or(|k| blocked.insert(k)) {
                out.records.push((self.next, acquired(&mut d)));
            }
            let _ = self.records.insert(self.next, d);
            self.next += 1;
        }
        out.records.sort_unstable();
        out.next_change_ms = self
            .records
            .values()
            .filter_map(|d| match &d.state {
                State::Acquired { deadline_ms, .. } => Some(*deadline_ms),
                State::Available { not_before_ms } if *not_before_ms > now_ms => {
                    Some(*not_before_ms)
                }
                _ => None,
            })
            .min();
        out
    }

    /// Give back a delivery that was never sent to a consumer (the response was full):
    /// it does not count as an attempt. Returns whether anything changed.
    pub fn unacquire(&mut self, offset: u64, count: u32) -> bool {
        if let Some(d) = self.records.get_mut(&offset)
            && d.count == count
            && matches!(d.state, State::Acquired { .. })
        {
            d.count -= 1;
            d.state = State::Available { not_before_ms: 0 };
            return true;
        }
        false
    }

    /// Apply a consumer's decision for the delivery named by `receipt`. A dead-letter job is
    /// returned when the record must go to the DLQ.
    pub fn settle(
        &mut self,
        receipt: Receipt,
        action: &Settle,
        now_ms: i64,
        max_deliveries: u32,
    ) -> Result<Option<DeadLetterJob>, SettleError> {
        let d = self
            .records
            .get_mut(&receipt.offset)
            .filter(|d| d.count == receipt.count && matches!(d.state, State::Acquired { .. }))
            .ok_or(SettleError::Stale(receipt))?;
        let dead = |reason: DeadReason, d: &mut Delivery| {
            d.state = State::DeadLetter {
                reason: reason.clone(),
                since_ms: now_ms,
            };
            Some(DeadLetterJob {
                offset: receipt.offset,
                count: d.count,
                reason,
            })
        };
        let job = match action {
            Settle::Ack => {
                d.state = State::Acked;
                None
            }
            Settle::Release { .. } if d.count >= max_deliveries => {
                dead(DeadReason::MaxDeliveries, d)
            }
            Settle::Release { delay_ms } => {
                d.state = State::Available {
                    not_before_ms: now_ms.saturating_add(ms(*delay_ms)),
                };
                None
            }
            Settle::Reject { reason } => dead(DeadReason::Rejected(reason.clone()), d),
            Settle::Extend { visibility_ms } => {
                if let State::Acquired { deadline_ms, .. } = &mut d.state {
                    *deadline_ms = now_ms.saturating_add(ms(*visibility_ms));
                }
                None
            }
        };
        self.advance();
        Ok(job)
    }

    /// An acquired record turned out not to exist (a compacted topic's cleaning removed
    /// its offset): it is done without a delivery. Returns whether anything changed.
    pub fn gone(&mut self, offset: u64, count: u32) -> bool {
        if let Some(d) = self.records.get_mut(&offset)
            && d.count == count
            && matches!(d.state, State::Acquired { .. })
        {
            d.state = State::Acked;
            self.advance();
            return true;
        }
        false
    }

    /// A dead-letter job finished: the record is written to the DLQ. Returns whether
    /// anything changed (false when another agent already finished the job).
    pub fn dead_lettered(&mut self, offset: u64, count: u32) -> bool {
        if let Some(d) = self.records.get_mut(&offset)
            && d.count == count
            && matches!(d.state, State::DeadLetter { .. })
        {
            d.state = State::Acked;
            self.advance();
            return true;
        }
        false
    }

    /// The log's start moved to `offset` (retention): records below it are gone, whatever
    /// their delivery state (their receipts go stale). Returns how many undelivered or
    /// unfinished records were skipped.
    pub fn skip_below(&mut self, offset: u64) -> u64 {
        if offset <= self.start {
            return 0;
        }
        let mut skipped = offset.saturating_sub(self.next.max(self.start));
        let kept = self.records.split_off(&offset);
        skipped += self
            .records
            .values()
            .filter(|d| d.state != State::Acked)
            .count() as u64;
        self.records = kept;
        self.start = offset;
        self.next = self.next.max(offset);
        self.advance();
        skipped
    }

    /// Move `start` past the acknowledged prefix.
    fn advance(&mut self) {
        while let Some(d) = self.records.get(&self.start) {
            if d.state != State::Acked {
                break;
            }
            let _ = self.records.remove(&self.start);
            self.start += 1;
        }
    }

    /// (acquired, available, acked-but-not-yet-contiguous, dead-lettering) counts.
    pub fn counts(&self) -> (u64, u64, u64, u64) {
        let mut c = (0, 0, 0, 0);
        for d in self.records.values() {
            match d.state {
                State::Acquired { .. } => c.0 += 1,
                State::Available { .. } => c.1 += 1,
                State::Acked => c.2 += 1,
                State::DeadLetter { .. } => c.3 += 1,
            }
        }
        c
    }

    /// Verify the invariants; `Err` names the first one broken.
    pub fn check(&self, window: u64) -> Result<(), String> {
        if self.start > self.next {
            return Err(format!("start {} > next {}", self.start, self.next));
        }
        if self.next - self.start > window {
            return Err(format!("window {} exceeded", window));
        }
        if self.records.len() as u64 != self.next - self.start
            || self.records.keys().next().is_some_and(|k| *k != self.start)
        {
            return Err("every in-flight offset must have exactly one delivery".into());
        }
        if self
            .records
            .get(&self.start)
            .is_some_and(|d| d.state == State::Acked)
        {
            return Err("start not advanced past an acked record".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn skip_below_drops_what_retention_removed_and_keeps_the_rest() {
        let mut s = SharePartition::starting_at(0);
        assert_eq!(s.acquire(0, 4, 10, 100, "c", 1000, None).records.len(), 4);
        let _ = s.settle(r(0, 1), &Settle::Ack, 1, 5).unwrap();
        // 1..4 in flight; the log now starts at 2: 1 is lost, 2 and 3 stay held.
        assert_eq!(s.skip_below(2), 1);
        assert_eq!((s.start, s.next), (2, 4));
        s.check(100).unwrap();
        assert!(
            s.settle(r(1, 1), &Settle::Ack, 2, 5).is_err(),
            "receipt below start is stale"
        );
        let _ = s.settle(r(2, 1), &Settle::Ack, 2, 5).unwrap();
        // Past everything delivered: 3 in flight and 4..7 never delivered are skipped.
        assert_eq!(s.skip_below(7), 4);
        assert_eq!((s.start, s.next), (7, 7));
        s.check(100).unwrap();
        assert_eq!(s.skip_below(3), 0, "never backwards");
    }

    use super::*;
    use proptest::prelude::*;

    fn r(offset: u64, count: u32) -> Receipt {
        Receipt {
            partition: 0,
            offset,
            count,
        }
    }

    #[test]
    fn receipts_round_trip_and_reject_garbage() {
        let x = Receipt {
            partition: 3,
            offset: 99,
            count: 2,
        };
        assert_eq!(x.to_string().parse::<Receipt>().unwrap(), x);
        for bad in ["", "1-2", "a-b-c", "1-2-3-4", "-1-2-3"] {
            assert!(bad.parse::<Receipt>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ack_advances_and_redelivery_invalidates_old_receipts() {
        let mut s = SharePartition::starting_at(10);
        let a = s.acquire(0, 3, 20, 100, "c1", 1000, None);
        assert_eq!(a.records, vec![(10, 1), (11, 1), (12, 1)]);
        let _ = s.settle(r(11, 1), &Settle::Ack, 1, 5).unwrap();
        assert_eq!(s.start, 10, "10 is still held");
        let _ = s.settle(r(10, 1), &Settle::Ack, 1, 5).unwrap();
        assert_eq!(s.start, 12);
        // 12 times out and goes to another consumer; the old receipt is stale.
        assert!(s.expire(1000, 5, 30_000).is_empty());
        let b = s.acquire(1000, 1, 20, 100, "c2", 1000, None);
        assert_eq!(b.records, vec![(12, 2)]);
        assert_eq!(
            s.settle(r(12, 1), &Settle::Ack, 1001, 5),
            Err(SettleError::Stale(r(12, 1)))
        );
        let _ = s.settle(r(12, 2), &Settle::Ack, 1001, 5).unwrap();
        assert_eq!((s.start, s.next), (13, 13));
        s.check(100).unwrap();
    }

    #[test]
    fn poison_is_dead_lettered_after_max_deliveries() {
        let mut s = SharePartition::starting_at(0);
        for n in 1..=3 {
            let a = s.acquire(0, 1, 1, 10, "c", 10, None);
            assert_eq!(a.records, vec![(0, n)]);
            let job = s
                .settle(r(0, n), &Settle::Release { delay_ms: 0 }, 0, 3)
                .unwrap();
            assert_eq!(job.is_some(), n == 3);
        }
        assert!(s.acquire(0, 1, 1, 10, "c", 10, None).records.is_empty());
        // The job is reclaimed if nobody finishes it.
        assert!(s.expire(5, 3, 100).is_empty());
        assert_eq!(s.expire(100, 3, 100).len(), 1);
        let _ = s.dead_lettered(0, 3);
        assert_eq!((s.start, s.next), (1, 1));
    }

    #[test]
    fn window_bounds_in_flight_and_release_delay_holds_back() {
        let mut s = SharePartition::starting_at(0);
        assert_eq!(s.acquire(0, 100, 1000, 4, "c", 10, None).records.len(), 4);
        assert!(s.acquire(0, 100, 1000, 4, "c", 10, None).records.is_empty());
        let _ = s
            .settle(r(1, 1), &Settle::Release { delay_ms: 50 }, 0, 5)
            .unwrap();
        assert!(
            s.acquire(10, 100, 1000, 4, "c", 10, None)
                .records
                .is_empty()
        );
        assert_eq!(
            s.acquire(50, 100, 1000, 4, "c", 10, None).records,
            vec![(1, 2)]
        );
        let _ = s
            .settle(
                r(1, 2),
                &Settle::Extend {
                    visibility_ms: 1000,
                },
                55,
                5,
            )
            .unwrap();
        let _ = s.expire(100, 5, 30_000);
        assert_eq!(
            s.acquire(100, 100, 1000, 4, "c", 10, None).records,
            vec![(0, 2), (2, 2), (3, 2)]
        );
    }

    #[test]
    fn per_key_ordering_hands_out_one_record_per_key_in_offset_order() {
        let mut s = SharePartition::starting_at(0);
        // offset → key: 0:k1 1:k1 2:k2 3:(no key) 4:k1 5:k2
        let keys: KeyHashes = [
            (0, Some(1)),
            (1, Some(1)),
            (2, Some(2)),
            (3, None),
            (4, Some(1)),
            (5, Some(2)),
        ]
        .into_iter()
        .collect();
        let k = Some(&keys);
        assert_eq!(
            s.acquire(0, 10, 6, 100, "c", 100, k).records,
            vec![(0, 1), (2, 1), (3, 1)]
        );
        assert_eq!(s.next, 6, "blocked records wait inside the window");
        s.check(100).unwrap();
        assert!(s.acquire(0, 10, 6, 100, "c", 100, k).records.is_empty());
        let _ = s.settle(r(0, 1), &Settle::Ack, 1, 5).unwrap();
        assert_eq!(s.acquire(1, 10, 6, 100, "c", 100, k).records, vec![(1, 1)]);
        // A released record keeps its key's later records behind it.
        let _ = s
            .settle(r(2, 1), &Settle::Release { delay_ms: 0 }, 2, 5)
            .unwrap();
        assert_eq!(s.acquire(2, 10, 6, 100, "c", 100, k).records, vec![(2, 2)]);
        s.check(100).unwrap();
        // New records are taken only as far as their keys are known.
        let mut t = SharePartition::starting_at(0);
        assert!(
            t.acquire(0, 10, 6, 100, "c", 100, Some(&KeyHashes::new()))
                .records
                .is_empty()
        );
    }

    #[test]
    fn one_receive_is_stored_as_one_range_and_bad_ranges_are_refused() {
        let mut s = SharePartition::starting_at(100);
        assert_eq!(
            s.acquire(0, 500, 1000, 1000, "c", 30_000, None)
                .records
                .len(),
            500
        );
        let bytes = crate::stored::encode(&s).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["records"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(
            (
                v["records"][0]["from"].as_u64(),
                v["records"][0]["to"].as_u64()
            ),
            (Some(100), Some(600))
        );
        assert!(
            bytes.len() < 200,
            "{} bytes for 500 in-flight records",
            bytes.len()
        );
        let again: SharePartition = crate::stored::decode(&bytes).unwrap();
        assert_eq!(again, s);
        for bad in [
            r#"{"format":2,"start":0,"next":2,"records":[{"from":1,"to":1,"count":1,"state":"Acked"}]}"#,
            r#"{"format":2,"start":0,"next":2,"records":[{"from":0,"to":2,"count":1,"state":"Acked"},{"from":1,"to":2,"count":1,"state":"Acked"}]}"#,
            r#"{"format":2,"start":0,"next":2,"records":[{"from":0,"to":99999999999,"count":1,"state":"Acked"}]}"#,
            r#"{"format":1,"start":0,"next":2,"records":{"x":{"count":1,"state":"Acked"}}}"#,
        ] {
            assert!(
                crate::stored::decode::<SharePartition>(bad.as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    proptest! {
        /// Random interleavings of receive / settle / expire keep the invariants, and every
        /// record ends acked or dead-lettered once consumers ack everything.
        #[test]
        fn invariants_hold_under_random_operations(ops in proptest::collection::vec((0u8..5, 0u64..50, 1usize..5), 1..200)) {
            let mut s = SharePartition::starting_at(0);
            let mut now = 0i64;
            let mut held: Vec<Receipt> = Vec::new();
            let mut dead = 0u64;
            for (op, x, n) in ops {
                now += 7;
                match op {
                    0 => for (o, c) in s.acquire(now, n, 40, 8, "c", 20, None).records {
                        held.push(Receipt { partition: 0, offset: o, count: c });
                    },
                    1 | 2 if !held.is_empty() => {
                        let rc = held.remove(x as usize % held.len());
                        let act = if op == 1 { Settle::Ack } else { Settle::Release { delay_ms: x } };
                        if let Ok(Some(j)) = s.settle(rc, &act, now, 3) { let _ = s.dead_lettered(j.offset, j.count); dead += 1; }
                    }
                    _ => for j in s.expire(now, 3, 50) { let _ = s.dead_lettered(j.offset, j.count); dead += 1; },
                }
                s.check(8).map_err(TestCaseError::fail)?;
                // The stored (range) form round-trips every state the machine reaches.
                let again: SharePartition = crate::stored::decode(&crate::stored::encode(&s).map_err(|e| TestCaseError::fail(e.to_string()))?).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&again, &s);
            }
            // Drain: ack everything.
            for _ in 0..200 {
                now += 1000;
                for j in s.expire(now, 3, 50) { let _ = s.dead_lettered(j.offset, j.count); dead += 1; }
                let a = s.acquire(now, 100, 40, 8, "c", 20, None);
                for (o, c) in a.records {
                    let _ = s.settle(Receipt { partition: 0, offset: o, count: c }, &Settle::Ack, now, 3).map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
            prop_assert_eq!((s.start, s.next), (40, 40));
            prop_assert!(dead <= 40);
        }
    }
}
