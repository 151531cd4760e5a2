//! Produce and fetch, protocol-neutral: a produce is validated (limits, partitions),
//! partitioned (explicit, murmur2 of the key, else one partition per request in turn) and handed to the
//! agent-wide buffer; a fetch plans a slice of one partition and long-polls at the end of
//! the log on commit notifications. [`Tail`] reads a partition batch after batch for
//! push-style streams (SSE).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use floe_core::Record;

use floe_core::idempotency;
use floe_core::ipc::IncomingRecord;
use floe_core::partitioner::partition_for_key;
use floe_index::{IdempotencyBegin, IdempotencyVerdict, TopicMeta};

use crate::Broker;
use crate::error::{BrokerError, BrokerResult, ErrorKind};
use crate::fetch::Fetched;
use crate::names::partition_of;
use crate::produce::{Deadline, ProducerStamp, RecordOffset, deadline_exceeded};

static ROUND_ROBIN: AtomicU64 = AtomicU64::new(0);

/// `request_too_large`: `n` records (or more than `max` when the decoder stopped at
/// `max + 1`) in one request.
pub fn too_many_records(n: usize, max: usize) -> BrokerError {
    let what = if n > max + 1 {
        format!("{n}")
    } else {
        format!("more than {max}")
    };
    BrokerError::too_large(
        "request_too_large",
        format!("{what} records in one request; the limit is {max}"),
    )
}

/// The answer to a produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Produced {
    /// Where each record landed, in request order.
    pub offsets: Vec<RecordOffset>,
    /// The request's `Idempotency-Key` had completed before, or (producer session) the
    /// request's batches were committed before: these are the offsets of that first
    /// commit, and nothing was written now.
    pub replayed: bool,
}

/// A started producer session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerSession {
    pub producer_id: i64,
    pub epoch: u32,
}

/// Longest producer name, in bytes.
pub const MAX_PRODUCER_NAME: usize = 255;

/// A fetch of one partition.
#[derive(Debug, Clone, Copy, Default)]
pub struct FetchRequest {
    pub offset: u64,
    /// Default 500, capped by `max_fetch_records`; 0 is refused.
    pub max_records: Option<u64>,
    /// Default 1 MiB, capped by `max_fetch_bytes`; at least one record is returned.
    pub max_bytes: Option<u64>,
    /// Long-poll time at the end of the log, capped by `max_wait_ms`.
    pub wait_ms: u64,
    pub isolation: Isolation,
}

/// What a fetch may see (RFC 0005).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Isolation {
    /// Only records below the stable offset: no record of an open transaction (aborted
    /// records are never served to anyone).
    #[default]
    ReadCommitted,
    /// Also records of open transactions, up to the end of the log.
    ReadUncommitted,
}

/// What a fetch read: the records (borrowed from cached runs), the next offset to read
/// and the partition's end offset when it was read.
#[derive(Debug)]
pub struct FetchResult {
    pub records: Fetched,
    pub next_offset: u64,
    pub end_offset: u64,
    /// Below this no offset belongs to an open transaction (RFC 0005).
    pub stable_offset: u64,
}

/// `max_records` of a fetch: default 500, at least 1, capped by the agent's limit.
pub(crate) fn fetch_records_limit(requested: Option<u64>, cap: usize) -> BrokerResult<usize> {
    match requested {
        Some(0) => Err(BrokerError::invalid(
            "invalid_parameter",
            "max_records must be at least 1",
        )),
        Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX).min(cap)),
        None => Ok(500.min(cap)),
    }
}

/// `max_bytes` of a fetch: default 1 MiB, capped by the agent's limit.
pub(crate) fn fetch_bytes_limit(requested: Option<u64>, cap: usize) -> usize {
    requested
        .map_or(1024 * 1024, |b| usize::try_from(b).unwrap_or(usize::MAX))
        .min(cap)
}

impl Broker {
    /// A produce deadline starting now (`produce_timeout`).
    pub fn produce_deadline(&self) -> Deadline {
        Deadline::after(&*self.clock, self.config.produce_timeout)
    }

    /// Produce `incoming` to `topic`, all or nothing: every record is validated before
    /// anything is buffered; answered only after the segment is durable and committed.
    /// Offsets come back in request order. With an `idempotency_key` (RFC 0003) a retry of
    /// a completed request gets the first request's offsets and writes nothing; so does a
    /// retry of a producer session's request (`producer`: its sequences are checked in
    /// the commit).
    pub async fn produce(
        &self,
        topic: &str,
        incoming: Vec<IncomingRecord>,
        deadline: Deadline,
        idempotency_key: Option<&str>,
        producer: Option<&ProducerStamp>,
    ) -> BrokerResult<Produced> {
        let limits = &self.config.limits;
        if incoming.is_empty() {
            return Err(BrokerError::invalid(
                "invalid_request",
                "records must not be empty",
            ));
        }
        if incoming.len() > limits.max_records_per_request {
            return Err(too_many_records(
                incoming.len(),
                limits.max_records_per_request,
            ));
        }
        if let Some(k) = idempotency_key {
            idempotency::check_key(k)
                .map_err(|m| BrokerError::invalid("invalid_idempotency_key", m))?;
        }
        if let Some(stamp) = producer {
            if idempotency_key.is_some() {
                return Err(BrokerError::invalid(
                    "invalid_request",
                    "a request carries either an Idempotency-Key or a producer session, not both",
                ));
            }
            if let Some((p, s)) = stamp.sequences.iter().find(|(_, s)| **s < 0) {
                return Err(BrokerError::invalid(
                    "invalid_sequences",
                    format!("partition {p}: sequence {s} is negative"),
                ));
            }
        }
        let topic = tokio::time::timeout_at(deadline.at, self.existing_topic(topic))
            .await
            .map_err(|_| deadline_exceeded("looking up the topic"))??;
        let fingerprint = idempotency_key.map(|_| idempotency::fingerprint(&topic.name, &incoming));
        let ts = self.clock.now_ms();
        let compacted = crate::topics::cleanup_policy(&topic).compact;
        let mut records = Vec::with_capacity(incoming.len());
        let mut bytes = 0usize;
        // Keyless records of one request go to one partition, the next one in turn for
        // the next request (Kafka's sticky partitioner, KIP-480/794): a request is one
        // index entry per partition it touches, so spreading each record over a different
        // partition would cost one entry per record at many partitions (issue #9).
        let mut keyless_partition = None;
        for (i, r) in incoming.into_iter().enumerate() {
            let IncomingRecord {
                key,
                value,
                headers,
                partition,
            } = r;
            // Cleaning keeps the latest record per key: a keyless record has none (Kafka
            // refuses them too).
            if compacted && key.is_none() {
                return Err(BrokerError::invalid(
                    "key_required",
                    format!(
                        "record {i}: topic {:?} is compacted (cleanup.policy): every record needs a key",
                        topic.name
                    ),
                ));
            }
            if headers.len() > limits.max_headers_per_record {
                return Err(BrokerError::invalid(
                    "invalid_record",
                    format!(
                        "record {i}: {} headers; the limit is {}",
                        headers.len(),
                        limits.max_headers_per_record
                    ),
                ));
            }
            let partition = match partition {
                Some(p) => u32::try_from(p)
                    .ok()
                    .filter(|p| *p < topic.partitions)
                    .ok_or_else(|| {
                        BrokerError::invalid(
                            "invalid_partition",
                            format!(
                                "record {i}: partition {p} does not exist; topic {:?} has partitions 0..{}",
                                topic.name, topic.partitions
                            ),
                        )
                    })?,
                None => match &key {
                    Some(k) => partition_for_key(k, topic.partitions),
                    // A sequence is per partition: the client must know where each
                    // record goes before it numbers them, and a retry must go there too.
                    None if producer.is_some() => {
                        return Err(BrokerError::invalid(
                            "invalid_record",
                            format!(
                                "record {i}: in a producer session every record needs a key or a partition (sequences are per partition)"
                            ),
                        ));
                    }
                    None => *keyless_partition.get_or_insert_with(|| {
                        (ROUND_ROBIN.fetch_add(1, Ordering::Relaxed)
                            % u64::from(topic.partitions)) as u32
                    }),
                },
            };
            let rec = Record {
                timestamp_ms: ts,
                key,
                value,
                headers,
            };
            let size = rec.size();
            if size > limits.max_record_bytes {
                return Err(BrokerError::too_large(
                    "record_too_large",
                    format!(
                        "record {i} is {size} bytes; the limit is {}",
                        limits.max_record_bytes
                    ),
                ));
            }
            bytes += size;
            records.push((partition, rec));
        }
        if let Some(stamp) = producer {
            let written: std::collections::BTreeSet<u32> =
                records.iter().map(|(p, _)| *p).collect();
            let named: std::collections::BTreeSet<u32> = stamp.sequences.keys().copied().collect();
            if written != named {
                return Err(BrokerError::invalid(
                    "invalid_sequences",
                    format!(
                        "the request writes partitions {written:?} but names sequences for partitions {named:?}; name exactly one sequence per partition written"
                    ),
                ));
            }
        }
        let held = match (idempotency_key, fingerprint) {
            (Some(key), Some(fingerprint)) => {
                let begun = tokio::time::timeout_at(
                    deadline.at,
                    self.begin_idempotent(&topic, key, fingerprint, deadline),
                )
                .await
                .map_err(|_| deadline_exceeded("holding the idempotency key"))??;
                match begun {
                    Ok(token) => Some((key.to_string(), token)),
                    Err(offsets) => {
                        return Ok(Produced {
                            offsets,
                            replayed: true,
                        });
                    }
                }
            }
            _ => None,
        };
        let started = std::time::Instant::now();
        let topic_id = topic.id;
        let result = self
            .producer
            .append(
                topic,
                records,
                bytes,
                deadline,
                held.clone(),
                producer.cloned(),
            )
            .await;
        if let (Err(e), Some((key, token))) = (&result, &held)
            && e.code != "commit_outcome_unknown"
        {
            // Nothing was committed: free the key at once for the client's retry. (When
            // the outcome is unknown the key stays held until its lease — the request's
            // deadline, after which the index refuses the commit — so a retry then finds
            // it completed, or takes it over.)
            if let Err(e) = self.index.idempotency_abandon(topic_id, key, *token).await {
                tracing::warn!(error = %e, "could not release an idempotency key; it frees itself at its lease");
            }
        }
        let (offsets, replayed) = result?;
        self.metrics
            .produce_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Produced { offsets, replayed })
    }

    /// Start a producer session (RFC 0003 part 2). With a `name`, the same producer id
    /// and a new epoch: every older session of that name is fenced from now on.
    pub async fn init_producer(&self, name: Option<&str>) -> BrokerResult<ProducerSession> {
        if let Some(n) = name
            && (n.is_empty()
                || n.len() > MAX_PRODUCER_NAME
                || n.chars().any(|c| !('!'..='~').contains(&c)))
        {
            return Err(BrokerError::invalid(
                "invalid_producer_name",
                format!(
                    "a producer name is 1 to {MAX_PRODUCER_NAME} visible ASCII characters, got {n:?}"
                ),
            ));
        }
        let (producer_id, epoch) = self
            .index
            .init_producer(name, self.clock.now_ms())
            .await
            .map_err(|e| BrokerError::index(&e))?;
        self.metrics.producers_initialised.inc();
        Ok(ProducerSession { producer_id, epoch })
    }

    /// Hold `key` for this attempt (`Ok(token)`), or the offsets of the request that
    /// completed it (`Err(offsets)`: a replay).
    async fn begin_idempotent(
        &self,
        topic: &TopicMeta,
        key: &str,
        fingerprint: u64,
        deadline: Deadline,
    ) -> BrokerResult<Result<i64, Vec<RecordOffset>>> {
        let now = self.clock.now_ms();
        let ttl = i64::try_from(self.config.idempotency_ttl.as_millis()).unwrap_or(i64::MAX);
        let token = crate::ids::attempt_token();
        let verdict = self
            .index
            .idempotency_begin(IdempotencyBegin {
                topic_id: topic.id,
                key: key.to_string(),
                fingerprint,
                token,
                now_ms: now,
                // The commit deadline the index enforces is never later than this.
                lease_until_ms: deadline.unix_ms,
                expires_ms: now.saturating_add(ttl).max(deadline.unix_ms),
            })
            .await
            .map_err(|e| BrokerError::index(&e))?;
        match verdict {
            IdempotencyVerdict::Started => Ok(Ok(token)),
            IdempotencyVerdict::Replay(offsets) => {
                self.metrics.idempotent_replays.inc();
                Ok(Err(offsets
                    .into_iter()
                    .map(|(partition, offset)| RecordOffset { partition, offset })
                    .collect()))
            }
            IdempotencyVerdict::Mismatch => {
                self.metrics
                    .idempotency_refusals
                    .with_label_values(&["reused"])
                    .inc();
                Err(BrokerError::new(
                    ErrorKind::Unprocessable,
                    "idempotency_key_reused",
                    format!(
                        "Idempotency-Key {key:?} was used for a different request on topic {:?}; use a new key for a new request",
                        topic.name
                    ),
                ))
            }
            IdempotencyVerdict::InFlight => {
                self.metrics
                    .idempotency_refusals
                    .with_label_values(&["in_flight"])
                    .inc();
                Err(BrokerError::conflict(
                    "idempotency_key_in_flight",
                    format!(
                        "a request with Idempotency-Key {key:?} is still being processed; retry after it is answered"
                    ),
                ))
            }
        }
    }

    /// The (end, stable) offsets of a partition, read from the index.
    pub(crate) async fn log_ends(
        &self,
        topic: &TopicMeta,
        partition: u32,
    ) -> BrokerResult<(u64, u64)> {
        self.index
            .log_ends(topic.id, partition)
            .await
            .map_err(|e| BrokerError::index(&e))?
            .ok_or_else(|| BrokerError::topic_not_found(&topic.name))
    }

    /// The (end, stable) offsets of a partition and its index entries from `offset`, in
    /// one index call ([`floe_index::Index::read_from`]).
    async fn read_view(
        &self,
        topic: &TopicMeta,
        partition: u32,
        offset: u64,
    ) -> BrokerResult<((u64, u64), Vec<floe_index::RunEntry>)> {
        self.index
            .read_from(topic.id, partition, offset, crate::fetch::RUNS_PER_FETCH)
            .await
            .map_err(|e| BrokerError::index(&e))?
            .ok_or_else(|| BrokerError::topic_not_found(&topic.name))
    }

    /// Fetch from one partition (given as text, validated here). At the end of the log
    /// wait up to `wait_ms` for a commit, then answer with no records.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: &str,
        req: FetchRequest,
    ) -> BrokerResult<FetchResult> {
        let limits = &self.config.limits;
        let topic = self.existing_topic(topic).await?;
        let partition = partition_of(&topic, partition)?;
        let max_records = fetch_records_limit(req.max_records, limits.max_fetch_records)?;
        let max_bytes = fetch_bytes_limit(req.max_bytes, limits.max_fetch_bytes);
        let wait = Duration::from_millis(req.wait_ms.min(limits.max_wait_ms));
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribe before reading the end offset so a commit in between is not missed.
        let mut commits = self.notifier.subscribe(topic.id, partition);
        let mut shutdown = self.shutdown.clone();
        let readable = |(end, stable): (u64, u64)| match req.isolation {
            Isolation::ReadCommitted => stable,
            Isolation::ReadUncommitted => end,
        };
        // The offsets and the entries from the asked offset in one index call (one round
        // trip on PostgreSQL): a fetch with records to serve makes no other, one woken at
        // the end of the log one more.
        let ((mut end, mut stable), mut entries) =
            self.read_view(&topic, partition, req.offset).await?;
        if req.offset > end {
            return Err(BrokerError::out_of_range(req.offset, partition, end));
        }
        while req.offset >= readable((end, stable)) && tokio::time::Instant::now() < deadline {
            // Woken by a commit notification (this agent's, or another's via the index);
            // the periodic re-check is the safety net should a notification be lost.
            let recheck = tokio::time::Instant::now() + self.config.poll_interval;
            tokio::select! {
                r = commits.changed() => { if r.is_err() { break; } }
                () = tokio::time::sleep_until(recheck.min(deadline)) => {}
                _ = shutdown.wait_for(|v| *v) => break,
            }
            ((end, stable), entries) = self.read_view(&topic, partition, req.offset).await?;
        }
        let upto = readable((end, stable));
        if req.offset >= upto {
            return Ok(FetchResult {
                records: Fetched::empty(req.offset),
                next_offset: req.offset,
                end_offset: end,
                stable_offset: stable,
            });
        }
        let records = self
            .reader
            .read_entries(
                &topic,
                partition,
                req.offset,
                upto,
                max_records,
                max_bytes,
                Some(entries),
            )
            .await?;
        Ok(FetchResult {
            next_offset: records.next,
            records,
            end_offset: end,
            stable_offset: stable,
        })
    }

    /// Open a tail of one partition from `from` (default: the log end).
    pub async fn tail(
        &self,
        topic: &str,
        partition: &str,
        from: Option<u64>,
    ) -> BrokerResult<Tail> {
        let topic = self.existing_topic(topic).await?;
        let partition = partition_of(&topic, partition)?;
        let (end, stable) = self.log_ends(&topic, partition).await?;
        let offset = from.unwrap_or(stable);
        if offset > end {
            return Err(BrokerError::out_of_range(offset, partition, end));
        }
        Ok(Tail {
            broker: self.clone(),
            topic,
            partition,
            offset,
        })
    }
}

/// Records read per tail batch (one batch is the most a slow client makes the agent hold).
const TAIL_BATCH_RECORDS: usize = 500;
const TAIL_BATCH_BYTES: usize = 1024 * 1024;

/// A partition read batch after batch, waiting for commits at the end of the log.
#[derive(Debug)]
pub struct Tail {
    broker: Broker,
    topic: Arc<TopicMeta>,
    partition: u32,
    offset: u64,
}

impl Tail {
    /// The next batch of records: `Ok(None)` when the agent is shutting down. Returns an
    /// empty batch when woken without new records (a caller may send a keep-alive).
    pub async fn next_batch(&mut self) -> BrokerResult<Option<Fetched>> {
        let b = &self.broker;
        let mut commits = b.notifier.subscribe(self.topic.id, self.partition);
        // A tail reads committed data only (RFC 0005).
        let (_, stable) = b.log_ends(&self.topic, self.partition).await?;
        if self.offset < stable {
            let f = b
                .reader
                .read(
                    &self.topic,
                    self.partition,
                    self.offset,
                    stable,
                    TAIL_BATCH_RECORDS,
                    TAIL_BATCH_BYTES,
                )
                .await?;
            self.offset = f.next;
            return Ok(Some(f));
        }
        let mut shutdown = b.shutdown.clone();
        tokio::select! {
            _ = commits.changed() => {}
            () = tokio::time::sleep(b.config.poll_interval) => {}
            _ = shutdown.wait_for(|v| *v) => return Ok(None),
        }
        Ok(Some(Fetched::empty(self.offset)))
    }
}
