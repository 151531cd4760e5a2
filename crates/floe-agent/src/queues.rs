//! Share groups (queues) over HTTP: competing consumers receive records with a visibility
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

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use floe_core::api::{
    ErrorBody, FetchedRecord, QueueDescription, QueuePartitionState, QueuedRecord, ReceiveRequest,
    ReceiveResponse, SettleFailure, SettleRequest, SettleResponse,
};
use floe_core::share::{DeadLetterJob, DeadReason, KeyHashes, Receipt, Settle, SharePartition};
use floe_core::{Record, TopicName};
use floe_index::{IndexError, NewTopic, StateKey, StateKind, StateWrite, TopicMeta};

use tracing::Instrument;

use crate::Shared;
use crate::error::ApiError;
use crate::fetch::text_or_b64;
use crate::groups::{topic_and_group, valid_name};
use crate::http::{JsonBody, path_err};

type ApiResult<T> = Result<T, ApiError>;

const DEFAULT_VISIBILITY_MS: u64 = 30_000;
const DEFAULT_RECEIVE: u64 = 10;
/// Topic config keys that override the agent's queue settings for one topic.
pub const MAX_DELIVERIES_CONFIG: &str = "queue.max_deliveries";
pub const DEAD_LETTER_TOPIC_CONFIG: &str = "queue.dead_letter_topic";
/// `key`: records with the same key are handed out one at a time, in offset order.
pub const ORDERING_CONFIG: &str = "queue.ordering";
/// Longest `reason` kept from a reject.
pub(crate) const MAX_REASON_LEN: usize = 1024;

/// Whether the topic's queues keep per-key order (topic config `queue.ordering=key`).
fn ordered_by_key(topic: &TopicMeta) -> ApiResult<bool> {
    match topic.config.get(ORDERING_CONFIG).map(String::as_str) {
        None | Some("none") => Ok(false),
        Some("key") => Ok(true),
        Some(other) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_topic_config",
            format!("topic config {ORDERING_CONFIG}={other:?}: use \"key\" or \"none\""),
        )),
    }
}

/// Key hashes of the records a receive may hand out next in `partition` (per-key ordering
/// needs them before acquiring). Reads from the partition's current `next`.
async fn next_key_hashes(
    s: &Shared,
    topic: &Arc<TopicMeta>,
    group: &str,
    po: &floe_index::PartitionOffsets,
    want: usize,
) -> ApiResult<KeyHashes> {
    let st: Option<SharePartition> =
        crate::state::load(&s.index, &share_key(topic, group, po.partition)).await?;
    let (start, next) = st.map_or((po.start_offset, po.start_offset), |st| (st.start, st.next));
    let room = s
        .config
        .limits
        .max_in_flight_per_partition
        .saturating_sub(next - start)
        .min(po.end_offset.saturating_sub(next));
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
            n,
            s.config.limits.max_fetch_bytes,
        )
        .await?;
    for (offset, v) in f.iter() {
        out.insert(
            offset,
            v.key.map(|k| floe_core::partitioner::murmur2(k) as u32),
        );
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
) -> ApiResult<()> {
    let topic = TopicMeta {
        id: 0,
        name: "t".into(),
        partitions: 1,
        retention_ms: None,
        config: config.clone(),
        created_ms: 0,
    };
    let as_400 = |e: ApiError| ApiError::bad_request(e.code, e.message);
    ordered_by_key(&topic).map_err(as_400)?;
    if config.contains_key(MAX_DELIVERIES_CONFIG) || config.contains_key(DEAD_LETTER_TOPIC_CONFIG) {
        let max = config.get(MAX_DELIVERIES_CONFIG);
        let dlq = config.get(DEAD_LETTER_TOPIC_CONFIG);
        if let Some(v) = max {
            parse_max_deliveries(v).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_topic_config",
                    format!("topic config {MAX_DELIVERIES_CONFIG}={v:?} is not an integer between 1 and 999999999"),
                )
            })?;
        }
        if let Some(d) = dlq {
            TopicName::new(d).map_err(|e| {
                ApiError::bad_request(
                    "invalid_topic_config",
                    format!("topic config {DEAD_LETTER_TOPIC_CONFIG}={d:?}: {e}"),
                )
            })?;
        }
    }
    Ok(())
}

/// The queue settings of a topic: max deliveries and the dead-letter topic's name.
fn settings(s: &Shared, topic: &TopicMeta) -> ApiResult<(u32, String)> {
    let max = match topic.config.get(MAX_DELIVERIES_CONFIG) {
        Some(v) => parse_max_deliveries(v).ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
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
        ApiError::new(
            StatusCode::CONFLICT,
            "invalid_topic_config",
            format!("dead-letter topic {dlq:?}: {e}"),
        )
    })?;
    Ok((max, dlq.to_string()))
}

static ROTATE: AtomicUsize = AtomicUsize::new(0);

/// Receive up to `max_records` records. Each is invisible to other consumers of the group
/// until its visibility timeout; settle it with its receipt. Long-polls with `wait_ms`.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/receive",
    params(("topic" = String, Path), ("group" = String, Path)),
    request_body = ReceiveRequest,
    responses(
        (status = 200, body = ReceiveResponse),
        (status = 400, description = "invalid_group_name, invalid_member_id, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 503, description = "store_unavailable, index_unavailable, contention", body = ErrorBody)))]
pub async fn receive(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<ReceiveRequest>,
) -> ApiResult<Json<ReceiveResponse>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    let l = &s.config.limits;
    let consumer = match &req.consumer {
        Some(c) => valid_name("member", c)?,
        None => "anonymous".to_string(),
    };
    let max = match req.max_records.unwrap_or(DEFAULT_RECEIVE) {
        0 => {
            return Err(ApiError::bad_request(
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
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "visibility_timeout_ms must be at least 1",
            ));
        }
        v => v.min(l.max_visibility_ms),
    };
    let (max_deliveries, _) = settings(&s, &topic)?;
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
            .map_err(|e| ApiError::index(&e))?;
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
                Some(next_key_hashes(&s, &topic, &group, po, want).await?)
            } else {
                None
            };
            let (acquired, jobs) = crate::state::update(
                &s.index,
                &s.metrics,
                &share_key(&topic, &group, p),
                || SharePartition::starting_at(po.start_offset),
                share_invariants,
                |st| {
                    let jobs = st.expire(now, max_deliveries, retry_ms);
                    let a = st.acquire(
                        now,
                        want,
                        po.end_offset,
                        window,
                        &consumer,
                        visibility,
                        keys.as_ref(),
                    );
                    let changed = !jobs.is_empty() || !a.records.is_empty();
                    Ok(((a, jobs), changed))
                },
            )
            .await?;
            if let Some(t) = acquired.next_change_ms {
                next_change = Some(next_change.map_or(t, |n: i64| n.min(t)));
            }
            got.extend(acquired.records.iter().map(|(o, c)| (p, *o, *c)));
            if !jobs.is_empty() {
                dead_letter(&s, &topic, &group, p, jobs).await;
            }
        }
        if !got.is_empty() {
            s.metrics.queue_delivered.inc_by(got.len() as u64);
            let records =
                load_records(&s, &topic, &group, got, req.encoding.unwrap_or_default()).await?;
            return Ok(Json(ReceiveResponse { records }));
        }
        let now_i = tokio::time::Instant::now();
        if now_i >= deadline {
            return Ok(Json(ReceiveResponse {
                records: Vec::new(),
            }));
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
                return Err(ApiError::unavailable("shutting_down", "the agent is shutting down"));
            }
        }
    }
}

/// Read the acquired records' contents. Records that do not fit in `max_fetch_bytes` are
/// given back (not counted as a delivery); on a read error all of them are given back.
async fn load_records(
    s: &Shared,
    topic: &Arc<TopicMeta>,
    group: &str,
    got: Vec<(u32, u64, u32)>,
    encoding: floe_core::api::Encoding,
) -> ApiResult<Vec<QueuedRecord>> {
    let max_bytes = s.config.limits.max_fetch_bytes;
    let mut by_partition: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    for (p, o, c) in got {
        by_partition.entry(p).or_default().push((o, c));
    }
    let mut out = Vec::new();
    let mut bytes = 0usize;
    let mut give_back: BTreeMap<u32, Vec<(u64, u32)>> = BTreeMap::new();
    let mut failure = None;
    for (p, list) in &by_partition {
        for run in contiguous(list) {
            if failure.is_some() || bytes >= max_bytes {
                give_back.entry(*p).or_default().extend_from_slice(run);
                continue;
            }
            let from = run[0].0;
            match s.reader.read(topic, *p, from, run.len(), usize::MAX).await {
                Ok(f) => {
                    let mut taken = 0;
                    for ((offset, v), (o, count)) in f.iter().zip(run.iter()) {
                        if offset != *o {
                            break;
                        }
                        if !out.is_empty() && bytes + v.size() > max_bytes {
                            break;
                        }
                        bytes += v.size();
                        taken += 1;
                        out.push(queued(*p, offset, *count, &v, encoding));
                    }
                    give_back
                        .entry(*p)
                        .or_default()
                        .extend_from_slice(&run[taken..]);
                }
                Err(e) => {
                    give_back.entry(*p).or_default().extend_from_slice(run);
                    failure = Some(e);
                }
            }
        }
    }
    for (p, list) in give_back.into_iter().filter(|(_, l)| !l.is_empty()) {
        let r = crate::state::update(
            &s.index,
            &s.metrics,
            &share_key(topic, group, p),
            SharePartition::default,
            share_invariants,
            |st| {
                let mut changed = false;
                for (o, c) in &list {
                    changed |= st.unacquire(*o, *c);
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

fn queued(
    partition: u32,
    offset: u64,
    count: u32,
    v: &floe_core::segment::RecordView<'_>,
    encoding: floe_core::api::Encoding,
) -> QueuedRecord {
    let (key, key_b64) = v.key.map_or((None, None), |k| text_or_b64(k, encoding));
    let (value, value_b64) = text_or_b64(v.value, encoding);
    QueuedRecord {
        partition,
        record: FetchedRecord {
            offset,
            timestamp_ms: v.timestamp_ms,
            key,
            key_b64,
            value,
            value_b64,
            headers: v
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
        },
        delivery_count: count,
        receipt: Receipt {
            partition,
            offset,
            count,
        }
        .to_string(),
    }
}

/// Dead-letter jobs **exactly once**: the DLQ records and the queue state that marks them
/// done are committed in one index transaction (RFC 0001). On failure they stay pending
/// and are taken over after `dead_letter_retry` by the next operation on the partition; a
/// writer that lost the race — or whose commit landed but whose answer was lost — finds
/// them done and writes nothing. A record reaches the DLQ once and is never dropped.
async fn dead_letter(
    s: &Shared,
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
    s: &Shared,
    topic: &Arc<TopicMeta>,
    group: &str,
    partition: u32,
    jobs: &[DeadLetterJob],
) -> ApiResult<usize> {
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
    Err(ApiError::unavailable(
        "contention",
        "queue state changed concurrently while dead-lettering; will retry",
    ))
}

/// The DLQ copy of each job's record: its key, value and headers plus the `floe.dlq.*`
/// headers, on partition `source partition % DLQ partitions`.
async fn dead_letter_records<'j>(
    s: &Shared,
    topic: &Arc<TopicMeta>,
    group: &str,
    partition: u32,
    dlq: &TopicMeta,
    jobs: &'j [DeadLetterJob],
) -> ApiResult<Vec<(&'j DeadLetterJob, (u32, Record))>> {
    let now = s.clock.now_ms();
    let mut records = Vec::with_capacity(jobs.len());
    let offsets: Vec<(u64, u32)> = jobs.iter().map(|j| (j.offset, j.count)).collect();
    let by_offset: BTreeMap<u64, &DeadLetterJob> = jobs.iter().map(|j| (j.offset, j)).collect();
    for run in contiguous(&offsets) {
        let f = s
            .reader
            .read(topic, partition, run[0].0, run.len(), usize::MAX)
            .await?;
        for ((offset, v), (_, count)) in f.iter().zip(run.iter()) {
            let Some(job) = by_offset.get(&offset).copied() else {
                continue;
            };
            let mut headers: Vec<(String, String)> = v
                .headers
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect();
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
                key: v.key.map(Bytes::copy_from_slice),
                value: Bytes::copy_from_slice(v.value),
                headers,
            };
            records.push((job, (partition % dlq.partitions, rec)));
        }
    }
    if records.len() != jobs.len() {
        return Err(ApiError::unavailable(
            "dead_letter_incomplete",
            "could not read every record to dead-letter",
        ));
    }
    Ok(records)
}

/// The dead-letter topic, created (with the source's partition count) on first use.
async fn dead_letter_topic(s: &Shared, topic: &TopicMeta, name: &str) -> ApiResult<Arc<TopicMeta>> {
    if let Some(t) = s.topics.get(name).await.map_err(|e| ApiError::index(&e))? {
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
        Err(e) => return Err(ApiError::index(&e)),
    }
    s.topics.invalidate(name).await;
    s.topics
        .get(name)
        .await
        .map_err(|e| ApiError::index(&e))?
        .ok_or_else(|| ApiError::topic_not_found(name))
}

async fn settle_all(
    s: &Shared,
    topic: &str,
    group: &str,
    req: SettleRequest,
    action: Settle,
) -> ApiResult<Json<SettleResponse>> {
    let (topic, group) = topic_and_group(s, topic, group).await?;
    let limit = s.config.limits.max_receive_records;
    // Checked for every action, as the document says (only reject records it).
    if req
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_LEN)
    {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("reason is longer than {MAX_REASON_LEN} characters"),
        ));
    }
    if req.receipts.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "receipts must not be empty",
        ));
    }
    if req.receipts.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
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
            .map_err(|e: String| ApiError::bad_request("invalid_receipt", e))?;
        if receipt.partition >= topic.partitions {
            return Err(ApiError::bad_request(
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
                    code: "stale_receipt".into(),
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
    Ok(Json(SettleResponse { settled, failed }))
}

/// Acknowledge received records: they are done and never delivered again.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/ack",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, description = "Per-receipt outcome; stale receipts are listed in `failed`", body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 413, description = "request_too_large", body = ErrorBody)))]
pub async fn ack(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    settle_all(&s, &topic, &group, req, Settle::Ack).await
}

/// Release (nack) received records: available again after `delay_ms` (default now). A
/// record already delivered `max_deliveries` times goes to the dead-letter topic instead.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/release",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub async fn release(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let delay_ms = req
        .delay_ms
        .unwrap_or(0)
        .min(s.config.limits.max_visibility_ms);
    settle_all(&s, &topic, &group, req, Settle::Release { delay_ms }).await
}

/// Reject received records: they go to the dead-letter topic now, with `reason`.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/reject",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub async fn reject(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let reason = req.reason.clone();
    settle_all(&s, &topic, &group, req, Settle::Reject { reason }).await
}

/// Extend the visibility timeout of received records to `visibility_timeout_ms` from now.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/extend",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub async fn extend(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let visibility_ms = match req.visibility_timeout_ms {
        Some(0) | None => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "extend needs visibility_timeout_ms >= 1",
            ));
        }
        Some(v) => v.min(s.config.limits.max_visibility_ms),
    };
    settle_all(&s, &topic, &group, req, Settle::Extend { visibility_ms }).await
}

/// Describe a queue: per partition, what is done, in flight, waiting and dead-lettering.
#[utoipa::path(get, path = "/v1/topics/{topic}/queues/{group}",
    params(("topic" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = QueueDescription),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub async fn describe_queue(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<QueueDescription>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    let (max_deliveries, dlq) = settings(&s, &topic)?;
    let offsets = s
        .index
        .partition_offsets(topic.id)
        .await
        .map_err(|e| ApiError::index(&e))?;
    let mut partitions = Vec::new();
    for o in offsets {
        let st: SharePartition =
            crate::state::load(&s.index, &share_key(&topic, &group, o.partition))
                .await?
                .unwrap_or_else(|| SharePartition::starting_at(o.start_offset));
        let (in_flight, available, acked, dead) = st.counts();
        partitions.push(QueuePartitionState {
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
    Ok(Json(QueueDescription {
        topic: topic.name.clone(),
        group,
        dead_letter_topic: dlq,
        max_deliveries,
        partitions,
    }))
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
