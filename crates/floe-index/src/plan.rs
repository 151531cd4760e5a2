//! The commit plan both backends carry out (pure): given what the transaction read (each
//! partition's end offset, each producer's current epoch and sequence state), which index
//! rows to write. Producer batches get their own verdicts here (RFC 0003 part 2): a
//! duplicate or refused batch is taken out of its run — its rows stay in the object,
//! unreferenced — and the rest of the segment commits around it.

use std::collections::{BTreeMap, HashMap, HashSet};

use floe_core::producer::{self, Batch, Refusal, RequestCheck, SeqState};

use crate::{IndexError, Result, RunCommit, RunOutcome};

/// One batch of a producer request: `count` rows from `pos` in run `run` of the commit,
/// for (topic, partition), the first carrying sequence `first_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    pub topic_id: i64,
    pub partition: u32,
    pub first_seq: i64,
    pub run: u32,
    pub pos: u32,
    pub count: u32,
}

/// The batches of one produce request of a producer session, in the order the request
/// entered the buffer (so within a run, rows of earlier requests come first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerAppend {
    pub producer_id: i64,
    pub epoch: u32,
    pub batches: Vec<ProducerBatch>,
    /// The request belongs to the producer's open transaction (RFC 0005): refused unless
    /// the producer's current epoch has one open; a request without it is refused while
    /// one is.
    pub transactional: bool,
}

/// A batch a transaction wrote: `records` offsets from `base_offset` (RFC 0005).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnBatch {
    pub producer_id: i64,
    pub epoch: u32,
    pub topic_id: i64,
    pub partition: u32,
    pub base_offset: u64,
    pub records: u32,
}

/// (producer, topic, partition): the key of a sequence state.
pub type SeqKey = (i64, i64, u32);

/// One index row to insert: `records` rows of run `run` from row `row_first`, at `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunRow {
    pub run: usize,
    pub base_offset: u64,
    pub row_first: u32,
    pub records: u32,
}

/// What a commit writes, and what its producers are told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub outcomes: Vec<RunOutcome>,
    /// Per run: the rows taken out, `(first row, count)`.
    pub excluded: Vec<Vec<(u32, u32)>>,
    pub rows: Vec<RunRow>,
    /// New end offset of each partition that received rows.
    pub ends: BTreeMap<(i64, u32), u64>,
    /// Per producer request, in order.
    pub verdicts: Vec<RequestCheck>,
    /// Sequence states to store.
    pub seqs: BTreeMap<SeqKey, SeqState>,
    /// Batches of open transactions appended now, to record.
    pub txn_batches: Vec<TxnBatch>,
    /// Per partition, the first offset a transaction wrote now: the partition's stable
    /// offset is held there unless an older open transaction holds it lower.
    pub holds: BTreeMap<(i64, u32), u64>,
}

/// What a commit returns: per-run outcomes, the rows taken out of each run, and the
/// verdict of each producer request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub runs: Vec<RunOutcome>,
    pub excluded: Vec<Vec<(u32, u32)>>,
    pub producers: Vec<RequestCheck>,
}

/// Plan a commit. `ends` has an entry for every partition that exists (runs of others are
/// `TopicGone`); `epochs` the current epoch of every known producer; `seqs` the stored
/// states of the (producer, topic, partition) the batches name; `open_txns` the producers
/// whose current epoch has an open transaction.
pub fn plan_commit(
    runs: &[RunCommit],
    producers: &[ProducerAppend],
    ends: &HashMap<(i64, u32), u64>,
    epochs: &HashMap<i64, u32>,
    seqs: &HashMap<SeqKey, SeqState>,
    open_txns: &HashSet<i64>,
) -> Result<Plan> {
    // Each run's base: the partition's end, then after the earlier runs of the same
    // partition in this commit (rows they lose to producer verdicts are accounted below,
    // which is only sound when a partition with producer batches has one run).
    let mut excluded: Vec<Vec<(u32, u32)>> = vec![Vec::new(); runs.len()];
    let mut run_of_partition: HashMap<(i64, u32), usize> = HashMap::new();
    let mut shared = false;
    for (i, r) in runs.iter().enumerate() {
        if run_of_partition
            .insert((r.topic_id, r.partition), i)
            .is_some()
        {
            shared = true;
        }
    }
    if shared && !producers.is_empty() {
        return Err(IndexError::Corrupt(
            "a commit with producer batches has two runs of one partition".into(),
        ));
    }
    let mut working: HashMap<SeqKey, SeqState> = HashMap::new();
    let mut txn_batches = Vec::new();
    let mut holds: BTreeMap<(i64, u32), u64> = BTreeMap::new();
    let mut verdicts = Vec::with_capacity(producers.len());
    for req in producers {
        let mut checks = Vec::with_capacity(req.batches.len());
        let Some(&current) = epochs.get(&req.producer_id) else {
            for b in &req.batches {
                exclude(&mut excluded, runs, b)?;
            }
            verdicts.push(RequestCheck::Refused(Refusal::UnknownProducer));
            continue;
        };
        // A transaction is an epoch: only its own epoch may write in it (another epoch
        // is fenced below), and only while it is open.
        let open = open_txns.contains(&req.producer_id);
        if req.epoch == current && req.transactional != open {
            for b in &req.batches {
                exclude(&mut excluded, runs, b)?;
            }
            verdicts.push(RequestCheck::Refused(if req.transactional {
                Refusal::TransactionNotOpen
            } else {
                Refusal::TransactionOpen
            }));
            continue;
        }
        for b in &req.batches {
            let key = (req.producer_id, b.topic_id, b.partition);
            let state = working.get(&key).or_else(|| seqs.get(&key));
            let batch = Batch {
                epoch: req.epoch,
                first_seq: b.first_seq,
                count: b.count,
            };
            checks.push((
                b.partition,
                b.first_seq,
                producer::check(state, current, &batch),
            ));
        }
        let verdict = producer::combine(&checks);
        if let RequestCheck::Append = verdict {
            for b in &req.batches {
                let r = runs.get(b.run as usize).ok_or_else(|| {
                    IndexError::Corrupt(format!("producer batch names run {}", b.run))
                })?;
                let Some(&end) = ends.get(&(r.topic_id, r.partition)) else {
                    // The topic is gone: the request fails as a whole; keep no state.
                    continue;
                };
                if excluded[b.run as usize].iter().any(|(f, n)| f + n > b.pos) {
                    return Err(IndexError::Corrupt(
                        "producer batches are not in run order".into(),
                    ));
                }
                let base = producer::offset_at(end, &excluded[b.run as usize], u64::from(b.pos))
                    .ok_or_else(|| IndexError::Corrupt("batch rows excluded twice".into()))?;
                let key = (req.producer_id, b.topic_id, b.partition);
                let state = working.get(&key).or_else(|| seqs.get(&key));
                let next = producer::apply(
                    state,
                    &Batch {
                        epoch: req.epoch,
                        first_seq: b.first_seq,
                        count: b.count,
                    },
                    base,
                );
                let _ = working.insert(key, next);
                if req.transactional {
                    txn_batches.push(TxnBatch {
                        producer_id: req.producer_id,
                        epoch: req.epoch,
                        topic_id: b.topic_id,
                        partition: b.partition,
                        base_offset: base,
                        records: b.count,
                    });
                    let hold = holds.entry((b.topic_id, b.partition)).or_insert(base);
                    *hold = (*hold).min(base);
                }
            }
        } else {
            for b in &req.batches {
                exclude(&mut excluded, runs, b)?;
            }
        }
        verdicts.push(verdict);
    }
    let live: Vec<((i64, u32), u32)> = runs
        .iter()
        .zip(&excluded)
        .filter(|(r, _)| ends.contains_key(&(r.topic_id, r.partition)))
        .map(|(r, ex)| {
            let kept: u32 = producer::kept_pieces(r.records, ex)
                .iter()
                .map(|(_, n)| n)
                .sum();
            ((r.topic_id, r.partition), kept)
        })
        .collect();
    let assigned =
        floe_core::log::assign_offsets(&live, |k| ends.get(k).copied().unwrap_or_default());
    let mut bases = assigned.iter();
    let mut outcomes = Vec::with_capacity(runs.len());
    let mut rows = Vec::new();
    let mut new_ends = BTreeMap::new();
    for (i, r) in runs.iter().enumerate() {
        if !ends.contains_key(&(r.topic_id, r.partition)) {
            outcomes.push(RunOutcome::TopicGone);
            continue;
        }
        let Some(&(_, base, n)) = bases.next() else {
            return Err(IndexError::Corrupt("offset assignment lost a run".into()));
        };
        for (first, count) in producer::kept_pieces(r.records, &excluded[i]) {
            let at = producer::offset_at(base, &excluded[i], u64::from(first))
                .ok_or_else(|| IndexError::Corrupt("kept row is excluded".into()))?;
            rows.push(RunRow {
                run: i,
                base_offset: at,
                row_first: first,
                records: count,
            });
        }
        if n > 0 {
            let _ = new_ends.insert((r.topic_id, r.partition), base + n);
        }
        outcomes.push(RunOutcome::Committed { base_offset: base });
    }
    let seqs = working
        .into_iter()
        .filter(|((_, t, p), _)| ends.contains_key(&(*t, *p)))
        .collect();
    Ok(Plan {
        outcomes,
        excluded,
        rows,
        ends: new_ends,
        verdicts,
        seqs,
        txn_batches,
        holds,
    })
}

fn exclude(excluded: &mut [Vec<(u32, u32)>], runs: &[RunCommit], b: &ProducerBatch) -> Result<()> {
    let r = runs
        .get(b.run as usize)
        .ok_or_else(|| IndexError::Corrupt(format!("producer batch names run {}", b.run)))?;
    if u64::from(b.pos) + u64::from(b.count) > u64::from(r.records) {
        return Err(IndexError::Corrupt(format!(
            "producer batch rows {}+{} beyond run of {}",
            b.pos, b.count, r.records
        )));
    }
    excluded[b.run as usize].push((b.pos, b.count));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(t: i64, p: u32, records: u32) -> RunCommit {
        RunCommit {
            topic_id: t,
            partition: p,
            records,
            row_group_first: 0,
            row_group_count: 1,
            byte_start: 0,
            byte_end: 1,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
        }
    }

    fn req(pid: i64, epoch: u32, batches: &[(u32, i64, u32, u32, u32)]) -> ProducerAppend {
        ProducerAppend {
            producer_id: pid,
            epoch,
            batches: batches
                .iter()
                .map(|&(partition, first_seq, run, pos, count)| ProducerBatch {
                    topic_id: 1,
                    partition,
                    first_seq,
                    run,
                    pos,
                    count,
                })
                .collect(),
            transactional: false,
        }
    }

    /// Transactional requests write only while their epoch's transaction is open, plain
    /// ones only while none is; appended transactional batches are recorded and hold the
    /// stable offset at their first offset.
    #[test]
    fn transactional_requests_need_their_open_transaction() {
        let runs = [run(1, 0, 2), run(1, 1, 2), run(1, 2, 2)];
        let ends = HashMap::from([((1, 0), 0u64), ((1, 1), 10), ((1, 2), 20)]);
        let epochs = HashMap::from([(7, 3u32), (8, 1u32)]);
        let open = HashSet::from([7]);
        let txn = |mut r: ProducerAppend| {
            r.transactional = true;
            r
        };
        let producers = [
            txn(req(7, 3, &[(0, 0, 0, 0, 2)])),
            req(7, 3, &[(1, 0, 1, 0, 2)]),
            txn(req(8, 1, &[(2, 0, 2, 0, 2)])),
            req(8, 1, &[(1, 0, 1, 0, 1)]),
        ];
        // (Request 3 shares run 1 with request 1; give it its own rows.)
        let mut producers = producers.to_vec();
        producers[3].batches[0].pos = 1;
        producers[3].batches[0].count = 1;
        producers[1].batches[0].count = 1;
        let plan = plan_commit(&runs, &producers, &ends, &epochs, &HashMap::new(), &open).unwrap();
        assert_eq!(plan.verdicts[0], RequestCheck::Append);
        assert_eq!(
            plan.verdicts[1],
            RequestCheck::Refused(Refusal::TransactionOpen)
        );
        assert_eq!(
            plan.verdicts[2],
            RequestCheck::Refused(Refusal::TransactionNotOpen)
        );
        assert_eq!(plan.verdicts[3], RequestCheck::Append);
        assert_eq!(
            plan.txn_batches,
            vec![TxnBatch {
                producer_id: 7,
                epoch: 3,
                topic_id: 1,
                partition: 0,
                base_offset: 0,
                records: 2
            }]
        );
        assert_eq!(plan.holds, BTreeMap::from([((1, 0), 0)]));
        // An older epoch is fenced whatever it claims.
        let stale = [txn(req(7, 2, &[(0, 0, 0, 0, 2)]))];
        let plan = plan_commit(&runs, &stale, &ends, &epochs, &HashMap::new(), &open).unwrap();
        assert_eq!(
            plan.verdicts[0],
            RequestCheck::Refused(Refusal::Fenced { current: 3 })
        );
        assert!(plan.txn_batches.is_empty() && plan.holds.is_empty());
    }

    /// One segment, one run of 9 rows: producer 7's batch (rows 0..3), a retry of it in
    /// the same commit (3..6), then producer 8 out of order (6..8) and a plain record (8).
    #[test]
    fn each_request_gets_its_own_verdict_and_the_run_commits_around_the_others() {
        let runs = [run(1, 0, 9)];
        let ends = HashMap::from([((1, 0), 100u64)]);
        let epochs = HashMap::from([(7, 0u32), (8, 2u32)]);
        let producers = [
            req(7, 0, &[(0, 0, 0, 0, 3)]),
            req(7, 0, &[(0, 0, 0, 3, 3)]),
            req(8, 2, &[(0, 5, 0, 6, 2)]),
        ];
        let plan = plan_commit(
            &runs,
            &producers,
            &ends,
            &epochs,
            &HashMap::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(plan.verdicts[0], RequestCheck::Append);
        assert_eq!(plan.verdicts[1], RequestCheck::Duplicate(vec![100]));
        assert_eq!(
            plan.verdicts[2],
            RequestCheck::Refused(Refusal::OutOfOrder {
                partition: 0,
                expected: 0,
                got: 5
            })
        );
        assert_eq!(plan.excluded[0], vec![(3, 3), (6, 2)]);
        assert_eq!(
            plan.rows,
            vec![
                RunRow {
                    run: 0,
                    base_offset: 100,
                    row_first: 0,
                    records: 3
                },
                RunRow {
                    run: 0,
                    base_offset: 103,
                    row_first: 8,
                    records: 1
                },
            ]
        );
        assert_eq!(plan.ends.get(&(1, 0)), Some(&104));
        assert_eq!(plan.seqs.get(&(7, 1, 0)).map(|s| s.next_seq), Some(3));
        assert!(!plan.seqs.contains_key(&(8, 1, 0)));
    }

    #[test]
    fn unknown_producers_and_fenced_epochs_are_refused_and_taken_out() {
        let runs = [run(1, 0, 2), run(1, 1, 2)];
        let ends = HashMap::from([((1, 0), 0u64), ((1, 1), 10)]);
        let epochs = HashMap::from([(7, 3u32)]);
        let producers = [
            req(9, 0, &[(0, 0, 0, 0, 2)]),
            req(7, 2, &[(1, 0, 1, 0, 1)]),
            req(7, 3, &[(1, 0, 1, 1, 1)]),
        ];
        let plan = plan_commit(
            &runs,
            &producers,
            &ends,
            &epochs,
            &HashMap::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            plan.verdicts[0],
            RequestCheck::Refused(Refusal::UnknownProducer)
        );
        assert_eq!(
            plan.verdicts[1],
            RequestCheck::Refused(Refusal::Fenced { current: 3 })
        );
        assert_eq!(plan.verdicts[2], RequestCheck::Append);
        // Run 0 is empty now: nothing written, the end stays.
        assert_eq!(plan.outcomes[0], RunOutcome::Committed { base_offset: 0 });
        assert!(!plan.ends.contains_key(&(1, 0)));
        assert_eq!(
            plan.rows,
            vec![RunRow {
                run: 1,
                base_offset: 10,
                row_first: 1,
                records: 1
            }]
        );
        assert_eq!(plan.seqs[&(7, 1, 1)].recent[0].base_offset, 10);
    }

    #[test]
    fn plain_commits_are_unchanged_and_two_runs_of_a_partition_follow_each_other() {
        let runs = [run(1, 0, 2), run(1, 0, 3), run(2, 0, 1)];
        let ends = HashMap::from([((1, 0), 5u64)]);
        let plan = plan_commit(
            &runs,
            &[],
            &ends,
            &HashMap::new(),
            &HashMap::new(),
            &HashSet::new(),
        )
        .unwrap();
        assert_eq!(
            plan.outcomes,
            vec![
                RunOutcome::Committed { base_offset: 5 },
                RunOutcome::Committed { base_offset: 7 },
                RunOutcome::TopicGone
            ]
        );
        assert_eq!(plan.ends.get(&(1, 0)), Some(&10));
        assert_eq!(plan.rows.len(), 2);
    }
}
