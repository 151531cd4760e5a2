//! The agent-wide produce buffer (WarpStream-style batching).
//!
//! Every produce request, for any topic and partition, hands its records to one buffer.
//! The buffer is flushed when the linger elapses or it passes `flush_bytes`. A flush:
//! 1. groups the records into runs per (topic, partition), in arrival order;
//! 2. encodes them as one Parquet segment (on a blocking thread);
//! 3. PUTs the segment (create-only; durable before the PUT returns);
//! 4. waits until the previous flush has committed (commits happen in flush order, so a
//!    partition's offsets follow arrival order), then commits all runs in one index
//!    transaction, which assigns the offsets;
//! 5. answers every waiting request. Any failure answers every request with a 503, and the
//!    uncommitted segment is an orphan for the sweeper.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use floe_core::Record;
use floe_core::clock::{Clock, SharedClock};
use floe_core::producer::{Refusal, RequestCheck};
use floe_core::segment::{EncodeOptions, RunRef, encode_segment};
use floe_index::{
    Committed, IdempotencyCompletion, Index, IndexError, ProducerAppend, ProducerBatch, RunCommit,
    RunOutcome, SegmentCommit, StateWrite, TopicMeta,
};
use object_store::path::Path;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{Instrument, debug, info_span, warn};

use crate::config::{AgentConfig, FlushPolicy};
use crate::error::BrokerError;
use crate::fetch::Reader;
use crate::metrics::Metrics;
use crate::notify::Notifier;

/// Prefix of every segment object key. Keys never contain user input.
pub const SEGMENT_PREFIX: &str = "segments";

/// `segments/<uuidv7>-<agent>.parquet`: the UUID's time is the segment's creation time on
/// the engine's clock (its random bits keep keys unique), so the sweeper can tell a
/// segment's age from its key alone ([`segment_created_ms`]).
pub fn segment_key(created_ms: i64, agent_id: &str) -> String {
    format!(
        "{SEGMENT_PREFIX}/{}-{agent_id}.parquet",
        crate::ids::uuid_v7_at(created_ms)
    )
}

/// The creation time in a segment key written by [`segment_key`]; `None` for any other
/// name.
pub fn segment_created_ms(key: &str) -> Option<i64> {
    let name = key.strip_prefix(SEGMENT_PREFIX)?.strip_prefix('/')?;
    crate::ids::uuid_v7_ms(name.get(..36)?)
}

/// The agent id in a segment key written by [`segment_key`] (RFC 0006: the agent to ask
/// for it first); `None` for any other name (partition files, foreign objects).
pub fn segment_writer(key: &str) -> Option<&str> {
    let name = key.strip_prefix(SEGMENT_PREFIX)?.strip_prefix('/')?;
    let agent = name
        .get(36..)?
        .strip_prefix('-')?
        .strip_suffix(".parquet")?;
    (!agent.is_empty() && agent.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .then_some(agent)
}

/// Where one produced record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOffset {
    pub partition: u32,
    pub offset: u64,
}

type Reply = Result<Vec<RecordOffset>, BrokerError>;

/// What a buffered produce is answered: its offsets, and whether they are those of an
/// earlier commit of the same producer batch (nothing was written now).
pub type Appended = Result<(Vec<RecordOffset>, bool), BrokerError>;

/// A producer session's stamp on a produce request (RFC 0003 part 2): the session and,
/// per partition the request writes, the sequence of its first record there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerStamp {
    pub producer_id: i64,
    pub epoch: u32,
    pub sequences: std::collections::BTreeMap<u32, i64>,
    /// The request belongs to the open transaction of this epoch (RFC 0005).
    pub transactional: bool,
}

/// When a produce request must be answered: the same instant on the runtime's clock (for
/// timers) and on the wall clock (for the index's in-transaction check).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: tokio::time::Instant,
    pub unix_ms: i64,
}

impl Deadline {
    /// `budget` from now.
    pub fn after(clock: &dyn Clock, budget: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + budget,
            unix_ms: clock
                .now_ms()
                .saturating_add(i64::try_from(budget.as_millis()).unwrap_or(i64::MAX)),
        }
    }
    fn min(self, other: Self) -> Self {
        Self {
            at: self.at.min(other.at),
            unix_ms: self.unix_ms.min(other.unix_ms),
        }
    }
}

pub(crate) fn deadline_exceeded(what: &str) -> BrokerError {
    BrokerError::unavailable(
        "deadline_exceeded",
        format!("the produce deadline passed while {what}; nothing was committed, retry"),
    )
}

/// How long after its deadline a request still waits for its flush's verdict. The flush
/// itself gives up at the deadline (plus the index's commit slack); this is the backstop.
const ANSWER_GRACE: Duration = Duration::from_secs(1);

/// One produce request's records, each with its partition already chosen.
struct Append {
    topic: Arc<TopicMeta>,
    records: Vec<(u32, Record)>,
    bytes: usize,
    deadline: Deadline,
    /// The idempotency key this request holds (key, attempt token): completed in the
    /// commit that carries the records.
    idempotency: Option<(String, i64)>,
    producer: Option<ProducerStamp>,
    _permit: OwnedSemaphorePermit,
    reply: oneshot::Sender<Appended>,
}

/// Cheap handle request handlers use to append to the buffer.
#[derive(Clone)]
pub struct ProducerHandle {
    tx: mpsc::Sender<Append>,
    buffer: Arc<Semaphore>,
    max_buffer: usize,
    wait: Duration,
    /// For [`ProducerHandle::write_atomic`], which bypasses the buffer.
    ctx: Ctx,
}

impl std::fmt::Debug for ProducerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProducerHandle")
            .field("max_buffer", &self.max_buffer)
            .finish_non_exhaustive()
    }
}

impl ProducerHandle {
    /// Append records and wait until they are durable and committed, or until the deadline
    /// (then 503 `deadline_exceeded`: the records were not committed).
    pub async fn append(
        &self,
        topic: Arc<TopicMeta>,
        records: Vec<(u32, Record)>,
        bytes: usize,
        deadline: Deadline,
        idempotency: Option<(String, i64)>,
        producer: Option<ProducerStamp>,
    ) -> Appended {
        let want = bytes.clamp(1, self.max_buffer) as u32;
        let wait_until = (tokio::time::Instant::now() + self.wait).min(deadline.at);
        let permit =
            match tokio::time::timeout_at(wait_until, self.buffer.clone().acquire_many_owned(want))
                .await
            {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => {
                    return Err(BrokerError::unavailable(
                        "shutting_down",
                        "the agent is shutting down",
                    ));
                }
                Err(_) => {
                    return Err(BrokerError::unavailable(
                        "overloaded",
                        format!("produce buffer full for {:?}; retry later", self.wait),
                    ));
                }
            };
        let (reply, rx) = oneshot::channel();
        let append = Append {
            topic,
            records,
            bytes,
            deadline,
            idempotency,
            producer,
            _permit: permit,
            reply,
        };
        match tokio::time::timeout_at(deadline.at, self.tx.send(append)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(BrokerError::unavailable(
                    "shutting_down",
                    "the agent is shutting down",
                ));
            }
            Err(_) => return Err(deadline_exceeded("waiting to enter the produce buffer")),
        }
        match tokio::time::timeout_at(deadline.at + ANSWER_GRACE, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(BrokerError::unavailable(
                "flush_aborted",
                "the flush carrying these records was aborted",
            )),
            Err(_) => Err(BrokerError::unavailable(
                "commit_outcome_unknown",
                "no verdict from the flush carrying these records within the produce deadline; they may or may not be committed",
            )),
        }
    }

    /// Write `records` of one topic as a segment of their own and commit them in **one
    /// index transaction with `state_writes`**: both land or neither does (a state write
    /// that finds another version fails the whole commit with 409 `state_conflict`).
    /// Bypasses the shared buffer, so a conflict fails no other producer; for rare internal
    /// writes (dead letters), not for the produce path.
    pub async fn write_atomic(
        &self,
        topic: &Arc<TopicMeta>,
        records: Vec<(u32, Record)>,
        state_writes: Vec<StateWrite>,
        deadline: Deadline,
    ) -> Reply {
        let total_records = records.len() as u64;
        let total_bytes: u64 = records.iter().map(|(_, r)| r.size() as u64).sum();
        let mut runs = Runs::default();
        let places = runs.add(topic, records);
        let (runs, committed) = write_and_commit(
            &self.ctx,
            runs.runs,
            None,
            None,
            Instant::now(),
            deadline,
            CommitsWith {
                state_writes,
                ..CommitsWith::default()
            },
        )
        .await?;
        // Counted like buffered produces (dead letters were, before they bypassed it).
        self.ctx.metrics.records_produced.inc_by(total_records);
        self.ctx.metrics.bytes_produced.inc_by(total_bytes);
        offsets_of(&places, &runs, &committed)
    }
}

#[derive(Clone)]
struct Ctx {
    config: Arc<AgentConfig>,
    store: Arc<dyn ObjectStore>,
    index: Arc<dyn Index>,
    metrics: Metrics,
    notifier: Notifier,
    reader: Reader,
    clock: SharedClock,
}

/// Start the buffer task. It ends (after flushing everything) when every handle is dropped.
pub fn spawn(
    config: Arc<AgentConfig>,
    store: Arc<dyn ObjectStore>,
    index: Arc<dyn Index>,
    metrics: Metrics,
    notifier: Notifier,
    reader: Reader,
    clock: SharedClock,
) -> (ProducerHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(4096);
    let ctx = Ctx {
        config,
        store,
        index,
        metrics,
        notifier,
        reader,
        clock,
    };
    let max_buffer = ctx
        .config
        .limits
        .max_buffer_bytes
        .min(u32::MAX as usize >> 1);
    let handle = ProducerHandle {
        tx,
        buffer: Arc::new(Semaphore::new(max_buffer)),
        max_buffer,
        wait: Duration::from_millis(ctx.config.limits.buffer_wait_ms),
        ctx: ctx.clone(),
    };
    let task = tokio::spawn(run(rx, ctx).instrument(info_span!("produce_buffer")));
    (handle, task)
}

/// The buffer task's state: records waiting for the next flush and the flushes in flight.
struct Buffer {
    ctx: Ctx,
    buf: Vec<Append>,
    bytes: usize,
    /// Bounds the flushes in flight; waiting for it pushes back on the channel.
    flight: Arc<Semaphore>,
    /// Completion of the previous flush's commit: the next flush commits after it.
    prev: Option<oneshot::Receiver<()>>,
    tasks: tokio::task::JoinSet<()>,
    seq: u64,
    /// Flushes still encoding or writing their segment (not yet committing): group commit
    /// waits for this to reach 0, so the next flush's encode + PUT overlaps the previous
    /// one's index commit. Each flush's [`Writing`] guard reports on `written_rx`.
    writing: usize,
    written_tx: mpsc::UnboundedSender<()>,
    written_rx: mpsc::UnboundedReceiver<()>,
}

/// Held by a flush until its segment is written, or until the flush ends early: dropping
/// it reports to the buffer (so a failed flush cannot leave the count stuck).
struct Writing(mpsc::UnboundedSender<()>);

impl Drop for Writing {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

impl Buffer {
    fn push(&mut self, a: Append) {
        self.bytes += a.bytes;
        self.buf.push(a);
    }

    async fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.buf);
        self.bytes = 0;
        let Ok(permit) = self.flight.clone().acquire_owned().await else {
            return;
        };
        let (done_tx, done_rx) = oneshot::channel();
        let before = self.prev.replace(done_rx);
        self.seq += 1;
        let span = info_span!("flush", seq = self.seq, requests = batch.len());
        self.writing += 1;
        let writing = Writing(self.written_tx.clone());
        let _ = self.tasks.spawn(
            flush_one(batch, self.ctx.clone(), before, done_tx, permit, writing).instrument(span),
        );
    }
}

/// Whether the buffer flushes now. Pure, so the policy is unit-tested apart from I/O.
fn flush_now(
    policy: FlushPolicy,
    buffered_bytes: usize,
    has_records: bool,
    flush_bytes: usize,
    writing: usize,
    linger_passed: bool,
) -> bool {
    has_records
        && (buffered_bytes >= flush_bytes
            || linger_passed
            || (policy == FlushPolicy::Group && writing == 0))
}

async fn run(mut rx: mpsc::Receiver<Append>, ctx: Ctx) {
    let policy = ctx.config.flush_policy;
    let linger = ctx.config.linger;
    let flush_bytes = ctx.config.flush_bytes;
    let (written_tx, written_rx) = mpsc::unbounded_channel();
    let mut b = Buffer {
        flight: Arc::new(Semaphore::new(ctx.config.max_inflight_flushes)),
        ctx,
        buf: Vec::new(),
        bytes: 0,
        prev: None,
        tasks: tokio::task::JoinSet::new(),
        seq: 0,
        writing: 0,
        written_tx,
        written_rx,
    };
    let mut deadline = tokio::time::Instant::now();
    let mut open = true;
    while open || !b.buf.is_empty() {
        let linger_passed = !open || tokio::time::Instant::now() >= deadline;
        if flush_now(
            policy,
            b.bytes,
            !b.buf.is_empty(),
            flush_bytes,
            b.writing,
            linger_passed,
        ) {
            b.flush().await;
            continue;
        }
        tokio::select! {
            m = rx.recv(), if open => match m {
                Some(a) => {
                    if b.buf.is_empty() {
                        deadline = tokio::time::Instant::now() + linger;
                    }
                    b.push(a);
                    // Take whatever is already queued (one flush for concurrent arrivals).
                    while b.bytes < flush_bytes {
                        match rx.try_recv() {
                            Ok(a) => b.push(a),
                            Err(_) => break,
                        }
                    }
                }
                // Every handle is gone (shutdown): flush what is left, then end.
                None => open = false,
            },
            // A flush wrote its segment (it commits next): with group commit the next
            // flush may start.
            Some(()) = b.written_rx.recv(), if b.writing > 0 => b.writing -= 1,
            Some(_) = b.tasks.join_next(), if !b.tasks.is_empty() => {}
            () = tokio::time::sleep_until(deadline), if !b.buf.is_empty() => {}
        }
    }
    while b.tasks.join_next().await.is_some() {}
}

struct RunBuf {
    topic: Arc<TopicMeta>,
    partition: u32,
    records: Vec<Record>,
}

/// Records grouped into runs per (topic, partition) in arrival order, and for each request
/// where its records went: (run index, position in the run).
#[derive(Default)]
struct Runs {
    runs: Vec<RunBuf>,
    run_of: HashMap<(i64, u32), usize>,
}

impl Runs {
    fn add(&mut self, topic: &Arc<TopicMeta>, records: Vec<(u32, Record)>) -> Vec<(usize, u64)> {
        let mut places = Vec::with_capacity(records.len());
        for (p, r) in records {
            let runs = &mut self.runs;
            let i = *self.run_of.entry((topic.id, p)).or_insert_with(|| {
                runs.push(RunBuf {
                    topic: topic.clone(),
                    partition: p,
                    records: Vec::new(),
                });
                runs.len() - 1
            });
            places.push((i, runs[i].records.len() as u64));
            runs[i].records.push(r);
        }
        places
    }
}

/// One request's offsets from its places and the commit's outcomes (rows taken out of a
/// run by producer verdicts shift the offsets of the rows after them).
fn offsets_of(places: &[(usize, u64)], runs: &[(u32, String)], c: &Committed) -> Reply {
    let mut offsets = Vec::with_capacity(places.len());
    for &(i, pos) in places {
        match (c.runs.get(i), c.excluded.get(i)) {
            (Some(RunOutcome::Committed { base_offset }), Some(ex)) => {
                let offset =
                    floe_core::producer::offset_at(*base_offset, ex, pos).ok_or_else(|| {
                        BrokerError::internal(
                            "internal",
                            "a committed record was taken out of its run",
                        )
                    })?;
                offsets.push(RecordOffset {
                    partition: runs[i].0,
                    offset,
                });
            }
            // Only possible when the topic was deleted while the flush ran.
            _ => return Err(BrokerError::topic_not_found(&runs[i].1)),
        }
    }
    Ok(offsets)
}

/// The batches of a producer request, one per partition in `stamp` order: where its
/// records went (they are contiguous in their partition's run). One pass over the
/// request's records.
fn producer_batches(
    topic_id: i64,
    stamp: &ProducerStamp,
    places: &[(usize, u64)],
    partitions: &[u32],
) -> Result<Vec<ProducerBatch>, BrokerError> {
    let internal = |m: &'static str| BrokerError::internal("internal", m);
    // Per partition: (first place, record count).
    let mut first: HashMap<u32, ((usize, u64), usize)> = HashMap::new();
    for (place, p) in places.iter().zip(partitions) {
        first.entry(*p).or_insert((*place, 0)).1 += 1;
    }
    stamp
        .sequences
        .iter()
        .map(|(&p, &first_seq)| {
            let ((run, pos), count) = first
                .get(&p)
                .copied()
                .ok_or_else(|| internal("a sequenced partition has no records"))?;
            Ok(ProducerBatch {
                topic_id,
                partition: p,
                first_seq,
                run: u32::try_from(run).map_err(|_| internal("too many runs"))?,
                pos: u32::try_from(pos).map_err(|_| internal("run too long"))?,
                count: u32::try_from(count).map_err(|_| internal("batch too long"))?,
            })
        })
        .collect()
}

/// The answer to a producer request from its verdict.
fn producer_answer(
    verdict: &RequestCheck,
    stamp: &ProducerStamp,
    partitions: &[u32],
    metrics: &Metrics,
    own: impl FnOnce() -> Reply,
) -> Appended {
    match verdict {
        RequestCheck::Append => own().map(|o| (o, false)),
        RequestCheck::Duplicate(bases) => {
            metrics.producer_duplicates.inc();
            let base_of: HashMap<u32, u64> = stamp
                .sequences
                .keys()
                .copied()
                .zip(bases.iter().copied())
                .collect();
            let mut seen: HashMap<u32, u64> = HashMap::new();
            let mut offsets = Vec::with_capacity(partitions.len());
            for &p in partitions {
                let k = seen.entry(p).or_insert(0);
                let base = base_of.get(&p).ok_or_else(|| {
                    BrokerError::internal("internal", "duplicate verdict lacks a partition")
                })?;
                offsets.push(RecordOffset {
                    partition: p,
                    offset: base + *k,
                });
                *k += 1;
            }
            Ok((offsets, true))
        }
        RequestCheck::Refused(r) => {
            let e = refusal_error(stamp, r);
            metrics.producer_refusals.with_label_values(&[e.code]).inc();
            Err(e)
        }
    }
}

fn refusal_error(stamp: &ProducerStamp, r: &Refusal) -> BrokerError {
    let id = stamp.producer_id;
    match r {
        Refusal::OutOfOrder {
            partition,
            expected,
            got,
        } => BrokerError::conflict(
            "out_of_order_sequence",
            format!(
                "producer {id}: partition {partition} expects sequence {expected}, the request starts at {got}; nothing was written"
            ),
        ),
        Refusal::PartlyDuplicate { partition } => BrokerError::conflict(
            "out_of_order_sequence",
            format!(
                "producer {id}: the request's batches were partly committed before (partition {partition} was not); a retry must resend the same request; nothing was written"
            ),
        ),
        Refusal::Fenced { current } => BrokerError::conflict(
            "producer_fenced",
            format!(
                "producer {id} epoch {} is fenced: its current epoch is {current} (the producer was re-initialised); nothing was written",
                stamp.epoch
            ),
        ),
        Refusal::TransactionNotOpen => BrokerError::conflict(
            "transaction_not_open",
            format!(
                "producer {id} epoch {} has no open transaction (never begun, committed, aborted or timed out); nothing was written",
                stamp.epoch
            ),
        ),
        Refusal::TransactionOpen => BrokerError::conflict(
            "transaction_open",
            format!(
                "producer {id} epoch {} has an open transaction: send Producer-Transactional: true, or end the transaction first; nothing was written",
                stamp.epoch
            ),
        ),
        Refusal::UnknownProducer => BrokerError::conflict(
            "unknown_producer",
            format!(
                "producer {id} is unknown (never initialised, or expired after its idle time); initialise a new session with POST /v1/producers"
            ),
        ),
    }
}

/// A request waiting for its flush: where its records went (and, for a producer
/// request, its index in the commit's producer list, its stamp and each record's
/// partition), (records, bytes), its reply and its buffer permit.
type Waiter = (
    (Vec<(usize, u64)>, Option<(usize, ProducerStamp, Vec<u32>)>),
    (u64, u64),
    oneshot::Sender<Appended>,
    OwnedSemaphorePermit,
);

async fn flush_one(
    batch: Vec<Append>,
    ctx: Ctx,
    before: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
    _permit: OwnedSemaphorePermit,
    writing: Writing,
) {
    let started = Instant::now();
    let mut runs = Runs::default();
    let mut waiters: Vec<Waiter> = Vec::with_capacity(batch.len());
    let mut total_records = 0u64;
    let mut total_bytes = 0u64;
    // The flush must finish by the earliest deadline of the requests it carries.
    let Some(deadline) = batch.iter().map(|a| a.deadline).reduce(Deadline::min) else {
        return;
    };
    let mut completions = Vec::new();
    let mut producers = Vec::new();
    for a in batch {
        let partitions: Vec<u32> = a.records.iter().map(|(p, _)| *p).collect();
        let (n, bytes) = (a.records.len() as u64, a.bytes as u64);
        let places = runs.add(&a.topic, a.records);
        if let Some((key, token)) = a.idempotency {
            completions.push(IdempotencyCompletion {
                topic_id: a.topic.id,
                key,
                token,
                places: places.iter().map(|(r, p)| (*r as u32, *p)).collect(),
            });
        }
        let producer = match &a.producer {
            Some(stamp) => match producer_batches(a.topic.id, stamp, &places, &partitions) {
                Ok(batches) => {
                    producers.push(ProducerAppend {
                        producer_id: stamp.producer_id,
                        epoch: stamp.epoch,
                        transactional: stamp.transactional,
                        batches,
                    });
                    Some((producers.len() - 1, stamp.clone(), partitions))
                }
                Err(e) => {
                    // Cannot happen (the request was validated); its rows would commit
                    // unchecked, so fail the whole flush rather than risk a duplicate.
                    for (_, _, reply, _) in waiters {
                        let _ = reply.send(Err(e.clone()));
                    }
                    let _ = a.reply.send(Err(e));
                    return;
                }
            },
            None => None,
        };
        waiters.push(((places, producer), (n, bytes), a.reply, a._permit));
    }
    let result = write_and_commit(
        &ctx,
        runs.runs,
        before,
        Some(writing),
        started,
        deadline,
        CommitsWith {
            idempotency: completions,
            producers,
            ..CommitsWith::default()
        },
    )
    .await;
    // Let the next flush commit whatever happened here.
    drop(done);
    match result {
        Ok((runs, committed)) => {
            ctx.metrics
                .flush_seconds
                .observe(started.elapsed().as_secs_f64());
            for ((places, producer), (n, bytes), reply, _permit) in waiters {
                let own = || offsets_of(&places, &runs, &committed);
                let answer = match producer {
                    None => own().map(|o| (o, false)),
                    Some((k, stamp, partitions)) => match committed.producers.get(k) {
                        Some(v) => producer_answer(v, &stamp, &partitions, &ctx.metrics, own),
                        None => Err(BrokerError::internal(
                            "internal",
                            "no verdict for a producer request",
                        )),
                    },
                };
                if matches!(answer, Ok((_, false))) {
                    total_records += n;
                    total_bytes += bytes;
                }
                let _ = reply.send(answer);
            }
            ctx.metrics.records_produced.inc_by(total_records);
            ctx.metrics.bytes_produced.inc_by(total_bytes);
        }
        Err(e) => {
            ctx.metrics.flush_failures.inc();
            warn!(code = e.code, error = %e.message, "flush failed; producers get 503");
            for (_, _, reply, _) in waiters {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// What a segment's index transaction carries besides its runs.
#[derive(Default)]
struct CommitsWith {
    state_writes: Vec<StateWrite>,
    idempotency: Vec<IdempotencyCompletion>,
    producers: Vec<ProducerAppend>,
}

/// Encode, PUT and commit. Returns each run's (partition, topic name) and outcome.
async fn write_and_commit(
    ctx: &Ctx,
    runs: Vec<RunBuf>,
    before: Option<oneshot::Receiver<()>>,
    writing: Option<Writing>,
    started: Instant,
    deadline: Deadline,
    with: CommitsWith,
) -> Result<(Vec<(u32, String)>, Committed), BrokerError> {
    let CommitsWith {
        state_writes,
        idempotency,
        producers,
    } = with;
    let opts = EncodeOptions {
        compression: ctx.config.compression,
        max_rows_per_row_group: ctx.config.rows_per_row_group,
    };
    let encode_started = Instant::now();
    let (runs, encoded) = tokio::task::spawn_blocking(move || {
        let refs: Vec<RunRef<'_>> = runs
            .iter()
            .map(|r| RunRef {
                topic: r.topic.name.as_str(),
                partition: r.partition,
                records: &r.records,
            })
            .collect();
        let enc = encode_segment(&refs, opts);
        (runs, enc)
    })
    .await
    .map_err(|e| {
        BrokerError::unavailable(
            "encode_failed",
            format!("segment encoding task failed: {e}"),
        )
    })?;
    let (bytes, layouts) = encoded.map_err(|e| {
        BrokerError::unavailable("encode_failed", format!("segment encoding failed: {e}"))
    })?;
    ctx.metrics
        .encode_seconds
        .observe(encode_started.elapsed().as_secs_f64());
    let size = bytes.len() as u64;
    let created_ms = ctx.clock.now_ms();
    let key = segment_key(created_ms, &ctx.config.agent_id);
    let put_started = Instant::now();
    let put_started_unix_ms = ctx.clock.now_ms();
    let path = Path::from(key.as_str());
    let put = ctx.store.put_opts(
        &path,
        PutPayload::from_bytes(bytes.clone()),
        PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        },
    );
    let _ = tokio::time::timeout_at(deadline.at, put)
        .await
        .map_err(|_| deadline_exceeded("writing the segment"))?
        .map_err(|e| {
            BrokerError::unavailable("store_unavailable", format!("writing segment failed: {e}"))
        })?;
    ctx.metrics
        .put_seconds
        .observe(put_started.elapsed().as_secs_f64());
    // Readers on this agent will not need to GET what it just wrote.
    ctx.reader.insert_written(&key, bytes).await;
    // Written: the next flush may start encoding while this one commits.
    drop(writing);
    debug!(
        key,
        size,
        put_ms = put_started.elapsed().as_millis() as u64,
        "segment written"
    );
    if let Some(b) = before {
        // Commits happen in flush order; giving up here commits nothing, so order holds.
        let _ = tokio::time::timeout_at(deadline.at, b)
            .await
            .map_err(|_| deadline_exceeded("waiting for the previous flush to commit"))?;
    }
    if put_started.elapsed() > ctx.config.commit_deadline {
        return Err(BrokerError::unavailable(
            "commit_deadline_exceeded",
            format!(
                "segment not committed within {:?} of its write; abandoned",
                ctx.config.commit_deadline
            ),
        ));
    }
    let commit = SegmentCommit {
        key: key.clone(),
        size,
        runs: runs
            .iter()
            .zip(&layouts)
            .map(|(r, l)| RunCommit::of_layout(r.topic.id, r.partition, l))
            .collect(),
        // The earlier of the producers' deadline and the sweeper's bound on PUT→commit.
        deadline_unix_ms: deadline.unix_ms.min(put_started_unix_ms.saturating_add(
            i64::try_from(ctx.config.commit_deadline.as_millis()).unwrap_or(i64::MAX),
        )),
        created_ms,
        state_writes,
        idempotency,
        producers,
    };
    let (commit_started, commit_runs) = (Instant::now(), commit.runs.len());
    let committed = ctx.index.commit_segment(commit).await.map_err(|e| match e {
        IndexError::Timeout { .. } => BrokerError::unavailable(
            "commit_outcome_unknown",
            format!("the index did not answer the commit in time ({e}); the records may or may not be committed"),
        ),
        other => BrokerError::index(&other),
    })?;
    ctx.metrics
        .commit_seconds
        .observe(commit_started.elapsed().as_secs_f64());
    ctx.metrics.commit_runs.observe(commit_runs as f64);
    if committed.runs.len() != runs.len() || committed.excluded.len() != runs.len() {
        return Err(BrokerError::unavailable(
            "index_unavailable",
            "index returned a wrong number of outcomes",
        ));
    }
    for (((r, l), o), ex) in runs
        .iter()
        .zip(&layouts)
        .zip(&committed.runs)
        .zip(&committed.excluded)
    {
        if let RunOutcome::Committed { base_offset } = o {
            let taken: u64 = ex.iter().map(|(_, n)| u64::from(*n)).sum();
            ctx.notifier.committed(
                r.topic.id,
                r.partition,
                base_offset + u64::from(l.records) - taken,
            );
        }
    }
    ctx.metrics.segments_written.inc();
    ctx.metrics.flush_bytes.observe(size as f64);
    debug!(
        key,
        runs = runs.len(),
        total_ms = started.elapsed().as_millis() as u64,
        "segment committed"
    );
    Ok((
        runs.into_iter()
            .map(|r| (r.partition, r.topic.name.clone()))
            .collect(),
        committed,
    ))
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn group_commit_flushes_when_idle_and_linger_bounds_the_wait() {
        use FlushPolicy::{Group, Linger};
        // Nothing buffered: never.
        assert!(!flush_now(Group, 0, false, 100, 0, true));
        // Group: idle → now; a flush encoding or writing → wait for it (or the linger, or
        // the size); flushes that are only committing do not hold the next one back.
        assert!(flush_now(Group, 1, true, 100, 0, false));
        assert!(!flush_now(Group, 1, true, 100, 1, false));
        assert!(flush_now(Group, 1, true, 100, 1, true));
        assert!(flush_now(Group, 100, true, 100, 3, false));
        // Linger: only the linger or the size.
        assert!(!flush_now(Linger, 1, true, 100, 0, false));
        assert!(flush_now(Linger, 1, true, 100, 0, true));
        assert!(flush_now(Linger, 100, true, 100, 2, false));
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn segment_keys_carry_their_creation_time() {
        let k = segment_key(1_795_000_000_123, "agent-7");
        assert!(
            k.starts_with("segments/") && k.ends_with("-agent-7.parquet"),
            "{k}"
        );
        assert_eq!(segment_created_ms(&k), Some(1_795_000_000_123));
        assert_ne!(k, segment_key(1_795_000_000_123, "agent-7"), "unique");
        assert_eq!(segment_created_ms("segments/orphan-test.parquet"), None);
        assert_eq!(segment_created_ms("other/x.parquet"), None);
    }

    #[test]
    fn segment_keys_name_their_writer() {
        let k = segment_key(1_795_000_000_123, "agent-7");
        assert_eq!(segment_writer(&k), Some("agent-7"));
        assert_eq!(segment_writer(&segment_key(1, "a")), Some("a"));
        for other in [
            "segments/orphan-test.parquet",
            "other/x.parquet",
            "topics/t/partition=0/date=2026-11-28/1-2-x.parquet",
            &k.replace(".parquet", ".json"),
            &k.replace("-agent-7", "-"),
            &k.replace("-agent-7", "-a/b"),
        ] {
            assert_eq!(segment_writer(other), None, "{other}");
        }
    }
}
