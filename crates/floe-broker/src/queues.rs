//! Share groups (queues): competing consumers receive records with a visibility
//! timeout and settle them by receipt (ack / release / reject / extend); records not
//! acknowledged in time come back, and after `max_deliveries` go to a dead-letter topic.
//!
//! The delivery state of each (topic, group, partition) is one [`SharePartition`] blob in
//! the index, changed by compare-and-swap: it survives agent restarts and any agent can
//! serve any consumer. Delivery is at-least-once: a consumer that dies, or acks after its
//! visibility timeout passed and the record went to someone else, causes a redelivery.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;

use floe_core::share::{DeadLetterJob, DeadReason, KeyHashes, Receipt, Settle, SharePartition};
use floe_core::{Record, TopicName};
use floe_index::{IndexError, NewTopic, StateKey, StateKind, StateWrite, TopicMeta};
use tracing::Instrument;

use crate::Broker;
use crate::error::{BrokerError, BrokerResult, ErrorKind};
use crate::names::valid_name;

/// A receive from a queue.
#[derive(Debug, Clone, Default)]
pub struct ReceiveRequest {
    /// Who receives (name rules; default `anonymous`), recorded with each delivery.
    pub consumer: Option<String>,
    /// Default 10, capped by `max_receive_records`; 0 is refused.
    pub max_records: Option<u64>,
    /// Long-poll time when nothing is available, capped by `max_wait_ms`.
    pub wait_ms: Option<u64>,
    /// Default 30 s, capped by `max_visibility_ms`; 0 is refused.
    pub visibility_timeout_ms: Option<u64>,
}

/// One delivered record and the receipt that settles this delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub partition: u32,
    pub offset: u64,
    pub delivery_count: u32,
    pub receipt: String,
    pub record: Record,
}

/// How receipts are settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettleKind {
    /// Done: never delivered again.
    Ack,
    /// Available again after `delay_ms` (or dead-lettered past `max_deliveries`).
    Release,
    /// To the dead-letter topic now, with `reason`.
    Reject,
    /// Visible to this consumer for `visibility_timeout_ms` more.
    Extend,
}

/// Receipts to settle, with the parameters of their [`SettleKind`].
#[derive(Debug, Clone, Default)]
pub struct SettleRequest {
    pub receipts: Vec<String>,
    pub delay_ms: Option<u64>,
    pub reason: Option<String>,
    pub visibility_timeout_ms: Option<u64>,
}

/// A receipt that did not settle (its delivery is over: timed out, redelivered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleFailure {
    pub receipt: String,
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettleOutcome {
    pub settled: u64,
    pub failed: Vec<SettleFailure>,
}

/// Delivery state of one queue partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePartition {
    pub partition: u32,
    pub start_offset: u64,
    pub next_offset: u64,
    pub end_offset: u64,
    pub in_flight: u64,
    pub available: u64,
    pub acked: u64,
    pub dead_lettering: u64,
    pub backlog: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDescription {
    pub topic: String,
    pub group: String,
    pub dead_letter_topic: String,
    pub max_deliveries: u32,
    pub partitions: Vec<QueuePartition>,
}

const DEFAULT_VISIBILITY_MS: u64 = 30_000;
const DEFAULT_RECEIVE: u64 = 10;
/// Topic config keys that override the agent's queue settings for one topic.
pub const MAX_DELIVERIES_CONFIG: &str = "queue.max_deliveries";
pub const DEAD_LETTER_TOPIC_CONFIG: &str = "queue.dead_letter_topic";
/// `key`: records with the same key are handed out one at a time, in offset order.
pub const ORDERING_CONFIG: &str = "queue.ordering";
/// Longest `reason` kept from a reject.
pub const MAX_REASON_LEN: usize = 1024;

/// Whether the topic's queues keep per-key order (topic config `queue.ordering=key`).
fn ordered_by_key(topic: &TopicMeta) -> BrokerResult<bool> {
    match topic.config.get(ORDERING_CONFIG).map(String::as_str) {
        None | Some("none") => Ok(false),
        Some("key") => Ok(true),
        Some(other) => Err(BrokerError::new(
            ErrorKind::Conflict,
            "invalid_topic_config",
            format!("topic config {ORDERING_CONFIG}={other:?}: use \"key\" or \"none\""),
        )),
    }
}

/// Key hashes of the records a receive may hand out next in `partition` (per-key ordering
/// needs them before acquiring). Reads from the partition's current `next`.
async fn next_key_hashes(
    s: &Broker,
    topic: &Arc<TopicMeta>,
    group: &str,
    po: &floe_index::PartitionOffsets,
    want: usize,
) -> BrokerResult<KeyHashes> {
    let st: Option<SharePartition> =
        crate::state::load(&s.index, &share_key(topic, group, po.partition)).await?;
    let (start, next) = st.map_or((po.start_offset, po.start_offset), |st| {
        (st.start.max(po.start_offset), st.next.max(po.start_offset))
    });
    let room = s
        .config
        .limits
        .max_in_flight_per_partition
        .saturating_sub(next - start)
        .min(po.stable_offset.saturating_sub(next));
    let n = usize::try_from(room)
        .unwrap_or(usize::MAX)
        .min(want.max(100) * 4);
    let mut out = KeyHashes::new();
    if n == 0 {
        return Ok(out);
    }
    let f = s
        .reader
        .read(
            topic,
            po.partition,
            next,
            po.stable_offset,
            n,
            s.config.limits.max_fetch_bytes,
        )
        .await?;
    // Offsets the read passed over (a compacted topic's cleaning removed them) have no
    // key: they are acquired, found gone and settled (`load_records`).
    let mut expect = next;
    for (offset, v) in f.iter() {
        for o in expect..offset.min(expect + n as u64) {
            let _ = out.insert(o, None);
        }
        let _ = out.insert(
            offset,
            v.key.map(|k| floe_core::partitioner::murmur2(k) as u32),
        );
        expect = offset + 1;
    }
    for o in expect..f.next.min(expect + n as u64) {
        let _ = out.insert(o, None);
    }
    Ok(out)
}

/// A queue partition's invariants, checked before every store. The window bound is not
/// part of it: `--max-in-flight-per-partition` may be lowered across restarts while
/// more records are still in flight.
fn share_invariants(st: &SharePartition) -> Result<(), String> {
    st.check(u64::MAX)
}

fn share_key(topic: &TopicMeta, group: &str, partition: u32) -> StateKey {
    StateKey {
        kind: StateKind::Share,
        topic_id: topic.id,
        group: group.to_string(),
        partition,
    }
}

/// `queue.max_deliveries`: a decimal number 1..=999 999 999 written plainly (no sign,
/// no leading zeros), as the OpenAPI document's pattern says.
pub(crate) fn parse_max_deliveries(v: &str) -> Option<u32> {
    v.parse::<u32>()
        .ok()
        .filter(|n| (1..=999_999_999).contains(n) && n.to_string() == v)
}

/// Check a new topic's queue settings, so that a topic created with a bad
/// `queue.*` config is refused at creation (400) rather than failing every queue
/// operation later. The default dead-letter name (`<topic>.dlq`) is not required to fit:
/// a topic whose name is too long for it can still be a log; used as a queue it answers
/// 409 `invalid_topic_config` until `queue.dead_letter_topic` is set.
pub(crate) fn validate_queue_config(
    config: &std::collections::BTreeMap<String, String>,
) -> BrokerResult<()> {
    let topic = TopicMeta {
        id: 0,
        name: "t".into(),
        partitions: 1,
        retention_ms: None,
        config: config.clone(),
        created_ms: 0,
    };
    let as_400 = |e: BrokerError| BrokerError::invalid(e.code, e.message);
    let _ = ordered_by_key(&topic).map_err(as_400)?;
    if config.contains_key(MAX_DELIVERIES_CONFIG) || config.contains_key(DEAD_LETTER_TOPIC_CONFIG) {
        let max = config.get(MAX_DELIVERIES_CONFIG);
        let dlq = config.get(DEAD_LETTER_TOPIC_CONFIG);
        if let Some(v) = max {
            let _ = parse_max_deliveries(v).ok_or_else(|| {
                BrokerError::invalid(
                    "invalid_topic_config",
                    format!("topic config {MAX_DELIVERIES_CONFIG}={v:?} is not an integer between 1 and 999999999"),
                )
            })?;
        }
        if let Some(d) = dlq {
            let _ = TopicName::new(d).map_err(|e| {
                BrokerError::invalid(
                    "invalid_topic_config",
                    format!("topic config {DEAD_LETTER_TOPIC_CONFIG}={d:?}: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// The queue settings of a topic: max deliveries and the dead-letter topic's name.
fn settings(s: &Broker, topic: &TopicMeta) -> BrokerResult<(u32, String)> {
    let max = match topic.config.get(MAX_DELIVERIES_CONFIG) {
        Some(v) => parse_max_deliveries(v).ok_or_else(|| {
            BrokerError::new(ErrorKind::Conflict,
                "invalid_topic_config",
                format!("topic config {MAX_DELIVERIES_CONFIG}={v:?} is not an integer between 1 and 999999999"),
            )
        })?,
        None => s.config.max_deliveries,
    };
    let dlq = topic
        .config
        .get(DEAD_LETTER_TOPIC_CONFIG)
        .cloned()
        .unwrap_or_else(|| format!("{}.dlq", topic.name));
    let dlq = TopicName::new(&dlq).map_err(|e| {
        BrokerError::new(
            ErrorKind::Conflict,
            "invalid_topic_config",
            format!("dead-letter topic {dlq:?}: {e}"),
        )
    })?;
    Ok((max, dlq.to_string()))
}

static ROTATE: AtomicUsize = AtomicUsize::new(0);

/// Receive up to `max_records` records. Each is invisible to other consumers of the group
/// until its visibility timeout; settle it with its receipt. Long-polls with `wait_ms`.
/// Read the acquired records' contents. Records that do not fit in `max_fetch_bytes` are
/// given back (not counted as a delivery); on a read error all of them are given back.
async fn load_records(
    s: &Broker,
    topic: &Arc<TopicMeta>,
    group: &str,
    got: Vec<(u32, u64, u32)>,
) -> BrokerResult<Vec<Delivery>> {
    let max_bytes = s.config.limits.max_fetch_bytes;
    let mut by_partition: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for (p, o, c) in got {
        by_partition.entry(p).or_default().push((o, c));
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut give_back: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    let mut gone: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    let mut failure = None;
    for (p, list) in &by_partition {
        for run in contiguous(list) {
            if failure.is_some() || bytes >= max_bytes {
                give_back.entry(*p).or_default().extend_from_slice(run);
                continue;
            }
            let from = run[0].0;
            // Acquired offsets were below the stable offset (RFC 0005): no bound needed.
            match s
                .reader
                .read(topic, *p, from, u64::MAX, run.len(), usize::MAX)
                .await
            {
                Ok(f) => {
                    let mut read = f.iter().peekable();
                    let mut done = 0;
                    for (o, count) in run {
                        while read.peek().is_some_and(|(offset, _)| offset < o) {
                            let _ = read.next();
                        }
                        match read.peek() {
                            Some((offset, v)) if offset == o => {
                                if !out.is_empty() && bytes + v.size() > max_bytes {
                                    break;
                                }
                                bytes += v.size();
                                out.push(delivery(*p, *o, *count, v));
                                let _ = read.next();
                            }
                            // The read went past it: a compacted topic's cleaning removed
                            // the record, so there is nothing to deliver.
                            _ if *o < f.next => gone.entry(*p).or_default().push((*o, *count)),
                            _ => break,
                        }
                        done += 1;
                    }
                    give_back
                        .entry(*p)
                        .or_default()
                        .extend_from_slice(&run[done..]);
                }
                Err(e) => {
                    give_back.entry(*p).or_default().extend_from_slice(run);
                    failure = Some(e);
                }
            }
        }
    }
    let partitions: std::collections::BTreeSet<u32> =
        give_back.keys().chain(gone.keys()).copied().collect();
    for p in partitions {
        let back = give_back.remove(&p).unwrap_or_default();
        let removed = gone.remove(&p).unwrap_or_default();
        if back.is_empty() && removed.is_empty() {
            continue;
        }
        let r = crate::state::update(
            &s.index,
            &s.metrics,
            &share_key(topic, group, p),
            SharePartition::default,
            share_invariants,
            |st| {
                let mut changed = false;
                for (o, c) in &back {
                    changed |= st.unacquire(*o, *c);
                }
                for (o, c) in &removed {
                    changed |= st.gone(*o, *c);
                }
                Ok(((), changed))
            },
        )
        .await;
        if let Err(e) = r {
            // They come back after their visibility timeout anyway.
            tracing::warn!(error = %e.message, "could not give back unsent records");
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Split ascending (offset, count) pairs into runs of consecutive offsets.
fn contiguous(list: &[(u64, u32)]) -> Vec<&[(u64, u32)]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=list.len() {
        if i == list.len() || list[i].0 != list[i - 1].0 + 1 {
            out.push(&list[start..i]);
            start = i;
        }
    }
    out
}

fn delivery(
    partition: u32,
    offset: u64,
    count: u32,
    v: &floe_core::segment::RecordView<'_>,
) -> Delivery {
    Delivery {
        partition,
        offset,
        delivery_count: count,
        receipt: Receipt {
            partition,
            offset,
            count,
        }
        .to_string(),
        record: owned(v, Vec::new()),
    }
}

/// A stored record as an owned [`Record`], with `extra` headers after its own.
fn owned(v: &floe_core::segment::RecordView<'_>, extra: Vec<(String, String)>) -> Record {
    let mut headers: Vec<(String, String)> = v
        .headers
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    headers.extend(extra);
    Record {
        timestamp_ms: v.timestamp_ms,
        key: v.key.map(Bytes::copy_from_slice),
        value: Bytes::copy_from_slice(v.value),
        headers,
    }
}

/// Dead-letter jobs **exactly once**: the DLQ records and the queue state that marks them
/// done are committed in one index transaction (RFC 0001). On failure they stay pending
/// and are taken over after `dead_letter_retry` by the next operation on the partition; a
/// writer that lost the race — or whose commit landed but whose answer was lost — finds
/// them done and writes nothing. A record reaches the DLQ once and is never dropped.
async fn dead_letter(
    s: &Broker,
    topic: &Arc<TopicMeta>,
    group: &str,
    partition: u32,
    mut jobs: Vec<DeadLetterJob>,
) {
    let span =
        tracing::info_span!("dead_letter", topic = %topic.name, group, partition, n = jobs.len());
    jobs.sort_by_key(|j| j.offset);
    async move {
        match write_dead_letters(s, topic, group, partition, &jobs).await {
            Ok(n) => s.metrics.queue_dead_lettered.inc_by(n as u64),
            Err(e) => tracing::warn!(code = e.code, error = %e.message, "dead-letter write failed; will retry"),
        }
    }
    .instrument(span)
    .await;
}

/// Conflicting dead-letter writers retry this many times (each retry re-reads the state).
const DEAD_LETTER_ATTEMPTS: u32 = 8;

/// Returns how many records this call dead-lettered (0: someone else already did).
async fn write_dead_letters(
    s: &Broker,
    topic: &Arc<TopicMeta>,
    group: &str,
    partition: u32,
    jobs: &[DeadLetterJob],
) -> BrokerResult<usize> {
    let (_, dlq_name) = settings(s, topic)?;
    let dlq = dead_letter_topic(s, topic, &dlq_name).await?;
    let records = dead_letter_records(s, topic, group, partition, &dlq, jobs).await?;
    let key = share_key(topic, group, partition);
    for _ in 0..DEAD_LETTER_ATTEMPTS {
        let Some((mut st, version)) =
            crate::state::load_versioned::<SharePartition>(&s.index, &key).await?
        else {
            return Ok(0);
        };
        // Only the jobs still dead-lettering in this very delivery.
        let todo: Vec<(u32, Record)> = records
            .iter()
            .filter(|(j, _)| st.dead_lettered(j.offset, j.count))
            .map(|(_, r)| r.clone())
            .collect();
        if todo.is_empty() {
            return Ok(0);
        }
        let n = todo.len();
        crate::state::checked(&key, &st, share_invariants)?;
        let write = StateWrite {
            key: key.clone(),
            expected: Some(version),
            data: crate::state::encode(&st)?,
        };
        let deadline = crate::produce::Deadline::after(&*s.clock, s.config.produce_timeout);
        match s
            .producer
            .write_atomic(&dlq, todo, vec![write], deadline)
            .await
        {
            Ok(_) => return Ok(n),
            Err(e) if e.code == "state_conflict" => s.metrics.state_conflicts.inc(),
            Err(e) => return Err(e),
        }
    }
    Err(BrokerError::unavailable(
        "contention",
        "queue state changed concurrently while dead-lettering; will retry",
    ))
}

/// The DLQ copy of each job's record: its key, value and headers plus the `floe.dlq.*`
/// headers, on partition `source partition % DLQ partitions`.
async fn dead_letter_records<'j>(
    s: &Broker,
    topic: &Arc<TopicMeta>,
    group: &str,
    partition: u32,
    dlq: &TopicMeta,
    jobs: &'j [DeadLetterJob],
) -> BrokerResult<Vec<(&'j DeadLetterJob, (u32, Record))>> {
    let now = s.clock.now_ms();
    let mut records = Vec::with_capacity(jobs.len());
    let offsets: Vec<(u64, u32)> = jobs.iter().map(|j| (j.offset, j.count)).collect();
    let by_offset: BTreeMap<u64, &DeadLetterJob> = jobs.iter().map(|j| (j.offset, j)).collect();
    for run in contiguous(&offsets) {
        let f = s
            .reader
            .read(topic, partition, run[0].0, u64::MAX, run.len(), usize::MAX)
            .await?;
        for ((offset, v), (_, count)) in f.iter().zip(run.iter()) {
            let Some(job) = by_offset.get(&offset).copied() else {
                continue;
            };
            let mut headers = Vec::with_capacity(7);
            headers.push(("floe.dlq.reason".into(), job.reason.code().into()));
            if let DeadReason::Rejected(Some(m)) = &job.reason {
                headers.push(("floe.dlq.message".into(), m.clone()));
            }
            headers.push(("floe.dlq.source_topic".into(), topic.name.clone()));
            headers.push(("floe.dlq.source_partition".into(), partition.to_string()));
            headers.push(("floe.dlq.source_offset".into(), offset.to_string()));
            headers.push(("floe.dlq.delivery_count".into(), count.to_string()));
            headers.push(("floe.dlq.group".into(), group.to_string()));
            let rec = Record {
                timestamp_ms: now,
                ..owned(&v, headers)
            };
            records.push((job, (partition % dlq.partitions, rec)));
        }
    }
    if records.len() != jobs.len() {
        return Err(BrokerError::unavailable(
            "dead_letter_incomplete",
            "could not read every record to dead-letter",
        ));
    }
    Ok(records)
}

/// The dead-letter topic, created (with the source's partition count) on first use.
async fn dead_letter_topic(
    s: &Broker,
    topic: &TopicMeta,
    name: &str,
) -> BrokerResult<Arc<TopicMeta>> {
    if let Some(t) = s
        .topics
        .get(name)
        .await
        .map_err(|e| BrokerError::index(&e))?
    {
        return Ok(t);
    }
    let created = s
        .index
        .create_topic(NewTopic {
            name: name.to_string(),
            partitions: topic.partitions,
            retention_ms: None,
            config: BTreeMap::new(),
            created_ms: s.clock.now_ms(),
            max_topics: s.config.limits.max_topics,
        })
        .await;
    match created {
        Ok(_) | Err(IndexError::TopicExists(_)) => {}
        Err(e) => return Err(BrokerError::index(&e)),
    }
    s.topics.invalidate(name).await;
    s.topics
        .get(name)
        .await
        .map_err(|e| BrokerError::index(&e))?
        .ok_or_else(|| BrokerError::topic_not_found(name))
}

impl Broker {
    /// Receive up to `max_records` records. Each is invisible to other consumers of the group
    /// until its visibility timeout; settle it with its receipt. Long-polls with `wait_ms`.
    pub async fn receive(
        &self,
        topic: &str,
        group: &str,
        req: ReceiveRequest,
    ) -> BrokerResult<Vec<Delivery>> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        let l = &s.config.limits;
        let consumer = match &req.consumer {
            Some(c) => valid_name("member", c)?,
            None => "anonymous".to_string(),
        };
        let max = match req.max_records.unwrap_or(DEFAULT_RECEIVE) {
            0 => {
                return Err(BrokerError::invalid(
                    "invalid_parameter",
                    "max_records must be at least 1",
                ));
            }
            n => usize::try_from(n)
                .unwrap_or(usize::MAX)
                .min(l.max_receive_records),
        };
        let visibility = match req.visibility_timeout_ms.unwrap_or(DEFAULT_VISIBILITY_MS) {
            0 => {
                return Err(BrokerError::invalid(
                    "invalid_parameter",
                    "visibility_timeout_ms must be at least 1",
                ));
            }
            v => v.min(l.max_visibility_ms),
        };
        let (max_deliveries, _) = settings(s, &topic)?;
        let ordered = ordered_by_key(&topic)?;
        let window = l.max_in_flight_per_partition;
        let retry_ms = s.config.dead_letter_retry.as_millis() as u64;
        let wait = Duration::from_millis(req.wait_ms.unwrap_or(0).min(l.max_wait_ms));
        let deadline = tokio::time::Instant::now() + wait;
        let mut shutdown = s.shutdown.clone();
        let n = topic.partitions as usize;
        loop {
            let mut subs: Vec<_> = (0..topic.partitions)
                .map(|p| s.notifier.subscribe(topic.id, p))
                .collect();
            let offsets = s
                .index
                .partition_offsets(topic.id)
                .await
                .map_err(|e| BrokerError::index(&e))?;
            let now = s.clock.now_ms();
            let mut got: Vec<(u32, u64, u32)> = Vec::new();
            let mut next_change: Option<i64> = None;
            let first = ROTATE.fetch_add(1, Ordering::Relaxed) % n.max(1);
            for i in 0..n {
                if got.len() >= max {
                    break;
                }
                let Some(po) = offsets.get((first + i) % n) else {
                    continue;
                };
                let p = po.partition;
                let want = max - got.len();
                let keys = if ordered {
                    Some(next_key_hashes(s, &topic, &group, po, want).await?)
                } else {
                    None
                };
                let (acquired, jobs, skipped) = crate::state::update(
                    &s.index,
                    &s.metrics,
                    &share_key(&topic, &group, p),
                    || SharePartition::starting_at(po.start_offset),
                    share_invariants,
                    |st| {
                        // Retention moved the log's start past records of this queue.
                        let before = st.start;
                        let skipped = st.skip_below(po.start_offset);
                        let moved = st.start != before;
                        let jobs = st.expire(now, max_deliveries, retry_ms);
                        let a = st.acquire(
                            now,
                            want,
                            // Only committed data is handed out (RFC 0005).
                            po.stable_offset,
                            window,
                            &consumer,
                            visibility,
                            keys.as_ref(),
                        );
                        let changed = moved || !jobs.is_empty() || !a.records.is_empty();
                        Ok(((a, jobs, skipped), changed))
                    },
                )
                .await?;
                s.metrics.retention_skipped.inc_by(skipped);
                if let Some(t) = acquired.next_change_ms {
                    next_change = Some(next_change.map_or(t, |n: i64| n.min(t)));
                }
                got.extend(acquired.records.iter().map(|(o, c)| (p, *o, *c)));
                if !jobs.is_empty() {
                    dead_letter(s, &topic, &group, p, jobs).await;
                }
            }
            if !got.is_empty() {
                s.metrics.queue_delivered.inc_by(got.len() as u64);
                return load_records(s, &topic, &group, got).await;
            }
            let now_i = tokio::time::Instant::now();
            if now_i >= deadline {
                return Ok(Vec::new());
            }
            // Wake on a commit, when a held or delayed record comes due, or at the re-check.
            let mut wake = (now_i + s.config.poll_interval).min(deadline);
            if let Some(t) = next_change {
                let due = Duration::from_millis(u64::try_from(t - s.clock.now_ms()).unwrap_or(0));
                wake = wake.min(now_i + due);
            }
            let any_commit =
                futures::future::select_all(subs.iter_mut().map(|r| Box::pin(r.changed())));
            tokio::select! {
                _ = any_commit => {}
                () = tokio::time::sleep_until(wake) => {}
                _ = shutdown.wait_for(|v| *v) => {
                    return Err(BrokerError::unavailable("shutting_down", "the agent is shutting down"));
                }
            }
        }
    }

    /// Settle receipts of one queue: each receipt settles only the delivery it was issued
    /// for; the others are listed in [`SettleOutcome::failed`].
    pub async fn settle(
        &self,
        topic: &str,
        group: &str,
        kind: SettleKind,
        req: SettleRequest,
    ) -> BrokerResult<SettleOutcome> {
        let s = self;
        let max_visibility = s.config.limits.max_visibility_ms;
        let action = match kind {
            SettleKind::Ack => Settle::Ack,
            SettleKind::Release => Settle::Release {
                delay_ms: req.delay_ms.unwrap_or(0).min(max_visibility),
            },
            SettleKind::Reject => Settle::Reject {
                reason: req.reason.clone(),
            },
            SettleKind::Extend => match req.visibility_timeout_ms {
                Some(0) | None => {
                    return Err(BrokerError::invalid(
                        "invalid_parameter",
                        "extend needs visibility_timeout_ms >= 1",
                    ));
                }
                Some(v) => Settle::Extend {
                    visibility_ms: v.min(max_visibility),
                },
            },
        };
        let (topic, group) = s.topic_and_group(topic, group).await?;
        let limit = s.config.limits.max_receive_records;
        // Checked for every action, as the document says (only reject records it).
        if req
            .reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
        {
            return Err(BrokerError::invalid(
                "invalid_request",
                format!("reason is longer than {MAX_REASON_LEN} characters"),
            ));
        }
        if req.receipts.is_empty() {
            return Err(BrokerError::invalid(
                "invalid_request",
                "receipts must not be empty",
            ));
        }
        if req.receipts.len() > limit {
            return Err(BrokerError::new(
                ErrorKind::TooLarge,
                "request_too_large",
                format!(
                    "{} receipts in one request; the limit is {limit}",
                    req.receipts.len()
                ),
            ));
        }
        let mut by_partition: BTreeMap<u32, Vec<Receipt>> = BTreeMap::new();
        for r in &req.receipts {
            let receipt: Receipt = r
                .parse()
                .map_err(|e: String| BrokerError::invalid("invalid_receipt", e))?;
            if receipt.partition >= topic.partitions {
                return Err(BrokerError::invalid(
                    "invalid_receipt",
                    format!(
                        "receipt {r:?} names partition {}, which does not exist",
                        receipt.partition
                    ),
                ));
            }
            by_partition
                .entry(receipt.partition)
                .or_default()
                .push(receipt);
        }
        let (max_deliveries, _) = settings(s, &topic)?;
        let retry_ms = s.config.dead_letter_retry.as_millis() as u64;
        let label = match action {
            Settle::Ack => "ack",
            Settle::Release { .. } => "release",
            Settle::Reject { .. } => "reject",
            Settle::Extend { .. } => "extend",
        };
        let mut settled = 0u64;
        let mut failed = Vec::new();
        for (p, receipts) in by_partition {
            let now = s.clock.now_ms();
            let (results, jobs) = crate::state::update(
                &s.index,
                &s.metrics,
                &share_key(&topic, &group, p),
                SharePartition::default,
                share_invariants,
                |st| {
                    // Settle before expiring: a late ack still counts while nobody else holds it.
                    let mut jobs = Vec::new();
                    let results: Vec<Result<(), String>> = receipts
                        .iter()
                        .map(|r| match st.settle(*r, &action, now, max_deliveries) {
                            Ok(job) => {
                                jobs.extend(job);
                                Ok(())
                            }
                            Err(e) => Err(e.to_string()),
                        })
                        .collect();
                    jobs.extend(st.expire(now, max_deliveries, retry_ms));
                    let changed = results.iter().any(Result::is_ok) || !jobs.is_empty();
                    Ok(((results, jobs), changed))
                },
            )
            .await?;
            for (r, res) in receipts.iter().zip(results) {
                match res {
                    Ok(()) => settled += 1,
                    Err(message) => failed.push(SettleFailure {
                        receipt: r.to_string(),
                        code: "stale_receipt",
                        message,
                    }),
                }
            }
            if !jobs.is_empty() {
                dead_letter(s, &topic, &group, p, jobs).await;
            }
        }
        s.metrics
            .queue_settled
            .with_label_values(&[label])
            .inc_by(settled);
        Ok(SettleOutcome { settled, failed })
    }

    /// Describe a queue: per partition, what is done, in flight, waiting and dead-lettering.
    pub async fn describe_queue(&self, topic: &str, group: &str) -> BrokerResult<QueueDescription> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        let (max_deliveries, dlq) = settings(s, &topic)?;
        let offsets = s
            .index
            .partition_offsets(topic.id)
            .await
            .map_err(|e| BrokerError::index(&e))?;
        let mut partitions = Vec::new();
        for o in offsets {
            let st: SharePartition =
                crate::state::load(&s.index, &share_key(&topic, &group, o.partition))
                    .await?
                    .unwrap_or_else(|| SharePartition::starting_at(o.start_offset));
            let (in_flight, available, acked, dead) = st.counts();
            partitions.push(QueuePartition {
                partition: o.partition,
                start_offset: st.start,
                next_offset: st.next,
                end_offset: o.end_offset,
                in_flight,
                available,
                acked,
                dead_lettering: dead,
                backlog: o.end_offset.saturating_sub(st.start).saturating_sub(acked),
            });
        }
        Ok(QueueDescription {
            topic: topic.name.clone(),
            group,
            dead_letter_topic: dlq,
            max_deliveries,
            partitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_splits_runs() {
        let l = [(1, 1), (2, 1), (4, 2), (5, 1), (9, 1)];
        let runs: Vec<Vec<u64>> = contiguous(&l)
            .iter()
            .map(|r| r.iter().map(|x| x.0).collect())
            .collect();
        assert_eq!(runs, vec![vec![1, 2], vec![4, 5], vec![9]]);
        assert!(contiguous(&[]).is_empty());
    }
}
