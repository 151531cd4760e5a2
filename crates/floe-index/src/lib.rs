//! The metadata index: topics, partitions, and which segment run holds which offsets.
//!
//! The index is the single place where offsets are assigned: [`Index::commit`] takes the
//! runs of one freshly written segment and, in one transaction, gives each run its base
//! offset and records where it lives. A segment whose commit never happened is an orphan
//! and is never served.

mod plan;
mod postgres;
mod recent_view;
mod sqlite;

use std::collections::BTreeMap;

use async_trait::async_trait;
use floe_core::log::RunSpan;

pub use plan::{
    Committed, Plan, ProducerAppend, ProducerBatch, RunRow, SeqKey, TxnBatch, plan_commit,
};
pub use postgres::PostgresIndex;
pub use sqlite::{RECENT_RUNS_LIMIT, SQLITE_CACHE_BYTES, SqliteIndex};

/// Receives (topic_id, partition, end_offset) for commits made by any agent.
pub type CommitSink = std::sync::Arc<dyn Fn(i64, u32, u64) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("too many topics: the limit is {0}")]
    TooManyTopics(usize),
    #[error("index url {0:?} is not supported (use sqlite://PATH or postgres://...)")]
    BadUrl(String),
    #[error("postgres: {0}")]
    Postgres(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("index task failed: {0}")]
    Task(String),
    #[error("index data is inconsistent: {0}")]
    Corrupt(String),
    /// The commit reached its last step after its deadline and was rolled back: nothing
    /// of it is in the index.
    #[error("commit deadline passed {late_ms} ms before the commit could complete; rolled back")]
    DeadlineExceeded { late_ms: i64 },
    /// The caller's deadline for this index call passed; the call was abandoned. For a
    /// commit, whether it landed is unknown (see RFC 0001).
    #[error("index call {op} timed out after {after_ms} ms")]
    Timeout { op: &'static str, after_ms: u64 },
    /// A state write in a commit found another version than it expected: the whole commit
    /// was rolled back (no runs, no state).
    #[error("consumer state {0:?} changed concurrently; nothing committed")]
    StateConflict(StateKey),
    /// An offset commit was refused by its group's fence (member, generation, ownership):
    /// nothing was written.
    #[error("offset commit refused: {0}")]
    Fenced(floe_core::group::GroupError),
    /// A commit was to complete an idempotency key its attempt no longer holds: the whole
    /// commit was rolled back. (Cannot happen while leases end at the commit deadline.)
    #[error("idempotency key {0:?} is no longer held by this attempt; nothing committed")]
    IdempotencyLost(String),
    /// The segment was created before the deletion boundary: the sweeper may already have
    /// deleted it, so its runs must never be committed. Nothing was committed.
    #[error(
        "segment created at {created_ms} is older than the deletion boundary {boundary_ms}; nothing committed"
    )]
    SegmentTooOld { created_ms: i64, boundary_ms: i64 },
    /// A transaction request was refused (RFC 0005): nothing changed.
    #[error("{0}")]
    Txn(TxnError),
}

/// Why a transaction request was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("producer {0} is unknown (never initialised, or expired)")]
    UnknownProducer(i64),
    #[error("producer {producer_id} epoch {epoch} is fenced: its current epoch is {current}")]
    Fenced {
        producer_id: i64,
        epoch: u32,
        current: u32,
    },
    #[error(
        "producer {producer_id} has an open transaction (epoch {epoch}); commit or abort it first"
    )]
    AlreadyOpen { producer_id: i64, epoch: u32 },
    #[error("producer {producer_id} has no transaction at epoch {epoch}")]
    Unknown { producer_id: i64, epoch: u32 },
    #[error("the transaction (producer {producer_id}, epoch {epoch}) is already {}", state.as_str())]
    Ended {
        producer_id: i64,
        epoch: u32,
        state: floe_core::txn::TxnState,
    },
    /// An offset commit inside the transaction was refused by its group's fence: the
    /// transaction stays open (abort it).
    #[error("the transaction's offset commit is refused: {0}")]
    Offsets(floe_core::group::GroupError),
}

/// Begin a transaction of a producer session (RFC 0005): the session's epoch must be the
/// producer's current one and have no open transaction; the transaction gets the next
/// epoch.
#[derive(Debug, Clone)]
pub struct BeginTxn {
    pub producer_id: i64,
    pub epoch: u32,
    pub now_ms: i64,
    /// When the engine aborts it (or, with `check_url`, first asks the producer).
    pub deadline_ms: i64,
    /// A half-message's check-back URL (RFC 0005 §3).
    pub check_url: Option<String>,
}

/// End a transaction: commit (applying `offsets` through their groups' fences in the same
/// index transaction) or abort.
#[derive(Debug, Clone)]
pub struct EndTxn {
    pub producer_id: i64,
    pub epoch: u32,
    pub outcome: floe_core::txn::Outcome,
    pub offsets: Vec<OffsetCommit>,
    pub now_ms: i64,
}

/// What an end did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnEnded {
    /// It had already ended this way: nothing changed now.
    pub repeated: bool,
    /// (topic id, partition, end offset) of each partition whose stable offset may have
    /// moved (readers to wake).
    pub partitions: Vec<(i64, u32, u64)>,
}

/// What an end request does, from the transaction's stored state (both backends, inside
/// their transaction): `Ok(None)` end it now; `Ok(Some(_))` it already ended this way (a
/// repeated end: nothing changes); `Err` refused.
pub fn end_answer(
    stored: Option<floe_core::txn::TxnState>,
    e: &EndTxn,
) -> Result<Option<TxnEnded>> {
    use floe_core::txn::EndVerdict;
    let (producer_id, epoch) = (e.producer_id, e.epoch);
    match floe_core::txn::end_verdict(stored, e.outcome) {
        EndVerdict::Apply => Ok(None),
        EndVerdict::AlreadyDone => Ok(Some(TxnEnded {
            repeated: true,
            partitions: Vec::new(),
        })),
        EndVerdict::Unknown => Err(IndexError::Txn(TxnError::Unknown { producer_id, epoch })),
        EndVerdict::Conflict(state) => Err(IndexError::Txn(TxnError::Ended {
            producer_id,
            epoch,
            state,
        })),
    }
}

/// A transaction as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnInfo {
    pub producer_id: i64,
    pub name: Option<String>,
    pub epoch: u32,
    pub state: floe_core::txn::TxnState,
    pub started_ms: i64,
    pub deadline_ms: i64,
    pub check_url: Option<String>,
    /// Check-backs made so far (half-messages).
    pub checks: u32,
    /// (topic id, partition, first offset, records written) per partition it wrote, while
    /// open.
    pub partitions: Vec<(i64, u32, u64, u64)>,
}

pub type Result<T, E = IndexError> = std::result::Result<T, E>;

/// A topic as the index stores it. `id` changes when a topic is deleted and re-created,
/// so a commit for the old incarnation can never land in the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub id: i64,
    pub name: String,
    pub partitions: u32,
    pub retention_ms: Option<i64>,
    pub config: BTreeMap<String, String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewTopic {
    pub name: String,
    pub partitions: u32,
    pub retention_ms: Option<i64>,
    pub config: BTreeMap<String, String>,
    pub created_ms: i64,
    /// Refuse to create more than this many topics.
    pub max_topics: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    /// Below this, no offset belongs to an open transaction (RFC 0005): `read_committed`
    /// readers stop here. Equal to `end_offset` when no transaction is open.
    pub stable_offset: u64,
}

/// One run of a segment to commit.
#[derive(Debug, Clone)]
pub struct RunCommit {
    pub topic_id: i64,
    pub partition: u32,
    pub records: u32,
    pub row_group_first: u32,
    pub row_group_count: u32,
    pub byte_start: u64,
    pub byte_end: u64,
    pub min_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
}

impl RunCommit {
    /// The entry for a run (or a partition file's row group) where the encoder put it.
    pub fn of_layout(topic_id: i64, partition: u32, l: &floe_core::segment::RunLayout) -> Self {
        Self {
            topic_id,
            partition,
            records: l.records,
            row_group_first: l.row_group_first,
            row_group_count: l.row_group_count,
            byte_start: l.byte_start,
            byte_end: l.byte_end,
            min_timestamp_ms: l.min_timestamp_ms,
            max_timestamp_ms: l.max_timestamp_ms,
        }
    }
}

/// A written segment object and its runs.
#[derive(Debug, Clone)]
pub struct SegmentCommit {
    pub key: String,
    pub size: u64,
    pub runs: Vec<RunCommit>,
    /// Absolute deadline (Unix ms). The backend performs every write and then, as the last
    /// step before making the transaction durable, reads the clock (PostgreSQL: the
    /// server's `clock_timestamp()`) and rolls back with [`IndexError::DeadlineExceeded`]
    /// when it has passed. So a commit that stalls (a hung server, lock waits, a paused
    /// process) cannot land after its producers were told it failed, nor after the
    /// sweeper may consider its segment an orphan.
    pub deadline_unix_ms: i64,
    /// When the segment object was created (the time in its key, RFC 0004): a commit of a
    /// segment older than the deletion boundary is refused in the transaction.
    pub created_ms: i64,
    /// Consumer-state writes that commit together with the runs, or not at all: each is a
    /// compare-and-swap like [`Index::store_state`]; if any finds another version, the
    /// whole commit fails with [`IndexError::StateConflict`]. (Dead-lettering uses this:
    /// the DLQ records and the queue state that marks them done land in one transaction.)
    pub state_writes: Vec<StateWrite>,
    /// Idempotency keys completed by this commit (RFC 0003): each pending key held by its
    /// attempt's token is marked done, with the offsets its request got, in this very
    /// transaction.
    pub idempotency: Vec<IdempotencyCompletion>,
    /// Produce requests of producer sessions (RFC 0003 part 2), in buffer order: each is
    /// checked against its producer's epoch and sequences in this transaction and gets its
    /// own verdict ([`plan_commit`]); refused and duplicate requests are taken out of
    /// their runs, the rest commits.
    pub producers: Vec<ProducerAppend>,
}

/// A produce attempt with an `Idempotency-Key` asks to hold the key.
#[derive(Debug, Clone)]
pub struct IdempotencyBegin {
    pub topic_id: i64,
    pub key: String,
    pub fingerprint: u64,
    /// This attempt's identity.
    pub token: i64,
    pub now_ms: i64,
    /// The attempt's deadline: after it the attempt can no longer commit.
    pub lease_until_ms: i64,
    /// When the key is forgotten.
    pub expires_ms: i64,
}

/// The index's answer to [`IdempotencyBegin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyVerdict {
    /// The attempt holds the key: produce, and complete it in the commit.
    Started,
    /// The key completed with this request: its offsets, (partition, offset) in order.
    Replay(Vec<(u32, u64)>),
    /// The key was used for a different request.
    Mismatch,
    /// Another attempt holds the key and may still commit.
    InFlight,
}

/// Complete a key in a segment commit: `places` are (run index in the commit, position
/// in the run) of the request's records, in request order.
#[derive(Debug, Clone)]
pub struct IdempotencyCompletion {
    pub topic_id: i64,
    pub key: String,
    pub token: i64,
    pub places: Vec<(u32, u64)>,
}

/// The replayed answer of a completed key (both backends): its stored offsets.
pub fn replay(key: &str, answer: Option<&str>) -> Result<IdempotencyVerdict> {
    let answer = answer.ok_or_else(|| {
        IndexError::Corrupt(format!("idempotency key {key:?} done without an answer"))
    })?;
    floe_core::idempotency::decode_offsets(answer)
        .map(IdempotencyVerdict::Replay)
        .map_err(|e| IndexError::Corrupt(format!("idempotency answer of {key:?}: {e}")))
}

/// The stored answer for a completion, from the commit's run outcomes: `None` when a run
/// of the request was not committed (its topic is gone; so is the key's row).
pub fn completion_answer(
    c: &IdempotencyCompletion,
    runs: &[RunCommit],
    plan: &Plan,
) -> Option<String> {
    let offsets: Option<Vec<(u32, u64)>> = c
        .places
        .iter()
        .map(|(run, pos)| {
            let i = *run as usize;
            match plan.outcomes.get(i)? {
                RunOutcome::Committed { base_offset } => Some((
                    runs.get(i)?.partition,
                    floe_core::producer::offset_at(*base_offset, plan.excluded.get(i)?, *pos)?,
                )),
                RunOutcome::TopicGone => None,
            }
        })
        .collect();
    offsets.map(|o| floe_core::idempotency::encode_offsets(&o))
}

/// One compare-and-swap of a consumer-state blob inside a commit.
#[derive(Debug, Clone)]
pub struct StateWrite {
    pub key: StateKey,
    /// `None`: nothing may be stored yet.
    pub expected: Option<i64>,
    pub data: Vec<u8>,
}

/// The verdict of the last step of a commit: `Err` when `now_ms` is past the deadline.
pub fn check_deadline(deadline_unix_ms: i64, now_ms: i64) -> Result<()> {
    if now_ms > deadline_unix_ms {
        return Err(IndexError::DeadlineExceeded {
            late_ms: now_ms - deadline_unix_ms,
        });
    }
    Ok(())
}

/// A committed run, as read back for fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEntry {
    pub base_offset: u64,
    /// Offsets the entry covers: `base_offset..base_offset + records`.
    pub records: u32,
    /// Rows of the object the entry serves: `records`, except in a compacted topic's
    /// partition file, whose rows keep their offsets and leave gaps (RFC 0004).
    pub rows: u32,
    pub segment_key: String,
    pub segment_size: u64,
    pub row_group_first: u32,
    pub row_group_count: u32,
    pub byte_start: u64,
    pub byte_end: u64,
    /// The entry's first row within its run in the object: non-zero when rows before it
    /// were taken out at commit (a producer's duplicate or refused batch, RFC 0003).
    pub row_first: u32,
    /// Newest record time in the run (compaction leaves the hot tail alone).
    pub max_timestamp_ms: i64,
}

impl RunSpan for RunEntry {
    fn base_offset(&self) -> u64 {
        self.base_offset
    }
    fn records(&self) -> u32 {
        self.records
    }
}

/// Outcome of committing one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Committed; the run's first record has this offset.
    Committed { base_offset: u64 },
    /// The topic (this incarnation) or partition no longer exists; nothing was written for it.
    TopicGone,
}

/// What a consumer-state blob holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// A consumer group (pub/sub): members, assignment, committed offsets. Partition 0.
    Group,
    /// A share group (queue): delivery state of one partition.
    Share,
    /// A compaction lease of one partition (RFC 0004): which agent compacts it, until when.
    Compaction,
    /// An agent's advertised URL and when it last said so (RFC 0006, peer reads): topic 0
    /// (no topic), group = the agent id, partition 0.
    Agent,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Group => "group",
            Self::Share => "share",
            Self::Compaction => "compaction",
            Self::Agent => "agent",
        }
    }
    fn parse(s: &str) -> Result<Self> {
        match s {
            "group" => Ok(Self::Group),
            "share" => Ok(Self::Share),
            "compaction" => Ok(Self::Compaction),
            "agent" => Ok(Self::Agent),
            other => Err(IndexError::Corrupt(format!("unknown state kind {other:?}"))),
        }
    }
}

/// Names one consumer-state blob.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StateKey {
    pub kind: StateKind,
    pub topic_id: i64,
    pub group: String,
    pub partition: u32,
}

/// A stored blob and its version (bumped by every successful [`Index::store_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub version: i64,
    pub data: Vec<u8>,
}

/// Offsets a consumer-group member commits: one row per partition in the index, written
/// only if the group's state (the blob under `group`) lets `member` of `generation` commit
/// these partitions at `now_ms` — checked in the same transaction ([`fence`]).
#[derive(Debug, Clone)]
pub struct OffsetCommit {
    /// The group's state key (kind `Group`, partition 0).
    pub group: StateKey,
    pub member: String,
    pub generation: u64,
    /// (partition, next offset to read).
    pub offsets: Vec<(u32, u64)>,
    pub now_ms: i64,
    /// The topic's partition count (expiry rebalances over it).
    pub partitions: u32,
}

/// The verdict on an offset commit, from the group's stored state: the one decision both
/// backends take inside their transaction (pure; `GroupState::check_commit`).
pub fn fence(group_blob: Option<&[u8]>, c: &OffsetCommit) -> Result<()> {
    let Some(blob) = group_blob else {
        return Err(IndexError::Fenced(
            floe_core::group::GroupError::UnknownMember(c.member.clone()),
        ));
    };
    let g: floe_core::group::GroupState = floe_core::stored::decode(blob)
        .map_err(|e| IndexError::Corrupt(format!("group state {:?}: {e}", c.group)))?;
    g.check_commit(
        &c.member,
        c.generation,
        c.offsets.iter().map(|(p, _)| *p),
        c.now_ms,
        c.partitions,
    )
    .map_err(IndexError::Fenced)
}

/// Replace consecutive index entries of one partition by the row groups of one partition
/// file that holds the same records (compaction, RFC 0004).
#[derive(Debug, Clone)]
pub struct ReplaceRuns {
    pub topic_id: i64,
    pub partition: u32,
    /// The entries being replaced, as the compactor read them: (base offset, records,
    /// segment key), in offset order and contiguous. The swap happens only if the index
    /// still holds exactly these.
    pub old: Vec<(u64, u32, String)>,
    /// The partition file.
    pub key: String,
    pub size: u64,
    /// Its row groups in offset order (one entry each); `topic_id`/`partition` as above.
    /// Each one's `records` is the offsets it covers; together they cover the old entries.
    pub runs: Vec<RunCommit>,
    /// Rows of each new entry when fewer than the offsets it covers (a compacted topic's
    /// cleaned file, whose rows carry their offsets); empty: every entry is dense.
    pub rows: Vec<u32>,
    /// When the file was created (in its key): refused below the deletion boundary.
    pub created_ms: i64,
}

impl ReplaceRuns {
    /// The checks both backends run in the swap's transaction: the new entries cover the
    /// same offsets as the old ones, each with at least one row and no more rows than
    /// offsets, and the old ones are contiguous. (base offset, offsets covered, rows) of
    /// each new entry, or why the replacement is malformed.
    pub fn new_entries(&self) -> Result<Vec<(u64, u32, u32)>> {
        let bad = |what: &str| Err(IndexError::Corrupt(format!("replacement: {what}")));
        let Some(first) = self.old.first() else {
            return bad("nothing to replace");
        };
        let mut next = first.0;
        for (base, n, _) in &self.old {
            if *base != next {
                return bad("old entries are not contiguous");
            }
            next = base + u64::from(*n);
        }
        if !self.rows.is_empty() && self.rows.len() != self.runs.len() {
            return bad("rows given for some entries only");
        }
        let mut out = Vec::with_capacity(self.runs.len());
        let mut at = first.0;
        for (k, r) in self.runs.iter().enumerate() {
            let rows = self.rows.get(k).copied().unwrap_or(r.records);
            if rows == 0
                || rows > r.records
                || r.topic_id != self.topic_id
                || r.partition != self.partition
            {
                return bad(
                    "new entry is empty, has more rows than offsets, or is of another partition",
                );
            }
            out.push((at, r.records, rows));
            at += u64::from(r.records);
        }
        if at != next {
            return bad("new entries do not hold the same records");
        }
        Ok(out)
    }
}

/// What a retention pass drops (RFC 0004); both backends read the runs and let this decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Whole runs whose newest record is older than `cutoff_ms`.
    Time { cutoff_ms: i64 },
    /// The oldest whole runs beyond `max_bytes` of stored run bytes per partition.
    Size { max_bytes: u64 },
}

/// A run as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionRun {
    pub base_offset: u64,
    pub records: u32,
    pub max_ts: i64,
    pub bytes: u64,
}

impl Retention {
    /// Whether a partition holding `total_bytes` (counted for `Size` only) may lose runs.
    pub fn may_drop(&self, total_bytes: u64) -> bool {
        match self {
            Self::Time { .. } => true,
            Self::Size { max_bytes } => total_bytes > *max_bytes,
        }
    }

    /// The partition's new start from a prefix of its runs (`total_bytes` / `total_runs`
    /// describe all of them, for `Size`), or `None`.
    pub fn new_start(
        &self,
        runs: &[RetentionRun],
        total_bytes: u64,
        total_runs: usize,
    ) -> Option<u64> {
        match self {
            Self::Time { cutoff_ms } => {
                let r: Vec<(u64, u32, i64)> = runs
                    .iter()
                    .map(|r| (r.base_offset, r.records, r.max_ts))
                    .collect();
                floe_core::log::retention_start(&r, *cutoff_ms)
            }
            Self::Size { max_bytes } => {
                let r: Vec<(u64, u32, u64)> = runs
                    .iter()
                    .map(|r| (r.base_offset, r.records, r.bytes))
                    .collect();
                floe_core::log::size_retention_start(&r, total_bytes, *max_bytes, total_runs)
            }
        }
    }
}

/// Runs looked at per partition and retention pass (the rest waits for the next pass).
pub const RETENTION_RUNS_PER_PASS: i64 = 10_000;

/// The metadata index. Implementations must make `commit` atomic: all runs whose topic
/// exists are committed together, or none is.
#[async_trait]
pub trait Index: Send + Sync + std::fmt::Debug + 'static {
    async fn create_topic(&self, t: NewTopic) -> Result<TopicMeta>;
    async fn list_topics(&self) -> Result<Vec<TopicMeta>>;
    async fn get_topic(&self, name: &str) -> Result<Option<TopicMeta>>;
    /// Delete a topic and its runs. Returns false when it did not exist.
    async fn delete_topic(&self, name: &str) -> Result<bool>;
    async fn partition_offsets(&self, topic_id: i64) -> Result<Vec<PartitionOffsets>>;
    /// Next offset to be assigned, or `None` when the partition does not exist.
    async fn end_offset(&self, topic_id: i64, partition: u32) -> Result<Option<u64>>;
    /// (end offset, stable offset) of a partition (RFC 0005), or `None` when it does not
    /// exist.
    async fn log_ends(&self, topic_id: i64, partition: u32) -> Result<Option<(u64, u64)>>;
    /// Begin a transaction (RFC 0005): returns its epoch. [`IndexError::Txn`] when refused.
    async fn begin_txn(&self, b: BeginTxn) -> Result<u32>;
    /// End a transaction, in one index transaction: the named epoch's transaction must be
    /// open (a repeated end of the same outcome answers `repeated`; the other outcome is
    /// refused). A commit applies its offsets through their groups' fences; an abort
    /// turns the entries of its batches into holes. Either releases the stable offsets it
    /// held.
    async fn end_txn(&self, e: EndTxn) -> Result<TxnEnded>;
    /// Transactions, oldest first: the open ones, or (`open_only == false`) also ended
    /// ones still remembered.
    async fn transactions(&self, open_only: bool) -> Result<Vec<TxnInfo>>;
    /// Open transactions whose deadline is before `now_ms` (earliest first, at most
    /// `limit`, without their partitions), and how many transactions are open: what the
    /// keeper needs, in two indexed queries whatever the number of open transactions.
    async fn due_transactions(&self, now_ms: i64, limit: u32) -> Result<(u64, Vec<TxnInfo>)>;
    /// Count a check-back of an open half-message and move its deadline to
    /// `next_deadline_ms`, if it is still open at `epoch` with `checks` made: false when
    /// another agent got there first (RFC 0005 §3: one agent checks at a time).
    async fn claim_check(
        &self,
        producer_id: i64,
        epoch: u32,
        checks: u32,
        next_deadline_ms: i64,
    ) -> Result<bool>;
    /// Commit the runs of one segment: per run its outcome and the rows producer verdicts
    /// took out of it, and the verdict of each producer request ([`plan_commit`]).
    async fn commit_segment(&self, seg: SegmentCommit) -> Result<Committed>;
    /// [`Index::commit_segment`], answering only each run's outcome, in order.
    async fn commit(&self, seg: SegmentCommit) -> Result<Vec<RunOutcome>> {
        Ok(self.commit_segment(seg).await?.runs)
    }
    /// Start a producer session (RFC 0003 part 2): a named producer gets its id and a new
    /// epoch (fencing every older session of that name); without a name, a new id at
    /// epoch 0. Returns (producer id, epoch).
    async fn init_producer(&self, name: Option<&str>, now_ms: i64) -> Result<(i64, u32)>;
    /// Forget producer sequence state untouched since `cutoff_ms`, and producers with none
    /// left that were initialised before it. Returns how many states were forgotten.
    async fn expire_producers(&self, cutoff_ms: i64) -> Result<u64>;
    /// How much deduplication state is stored: (idempotency keys, producer sequence
    /// states), for the metrics.
    async fn dedup_state_counts(&self) -> Result<(u64, u64)>;
    /// What a fetch needs in one call: the partition's (end, stable) offsets
    /// ([`Index::log_ends`]) and its runs from `offset` ([`Index::runs_from`]); `None`
    /// when the partition does not exist, no runs when `offset` is past the end (any
    /// `u64`). The runs may reach past the end returned (a commit in between); readers
    /// bound what they serve by the offsets. PostgreSQL answers both in one statement (one
    /// round trip per fetch instead of two).
    async fn read_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> Result<Option<((u64, u64), Vec<RunEntry>)>> {
        let Some(ends) = self.log_ends(topic_id, partition).await? else {
            return Ok(None);
        };
        if offset > ends.0 {
            return Ok(Some((ends, Vec::new())));
        }
        let runs = self.runs_from(topic_id, partition, offset, limit).await?;
        Ok(Some((ends, runs)))
    }
    /// Runs of a partition covering `offset` and after, in offset order, at most `limit`.
    async fn runs_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<RunEntry>>;
    /// Whether any committed run refers to this segment object.
    async fn segment_referenced(&self, key: &str) -> Result<bool>;
    /// [`Index::segment_referenced`] for many keys at once, in order: the sweeper's bucket
    /// listing asks about every object it finds. A backend that answers a key at a time
    /// cheaply keeps this default.
    async fn segments_referenced(&self, keys: &[String]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            out.push(self.segment_referenced(k).await?);
        }
        Ok(out)
    }
    /// Objects the index knows (RFC 0004: every committed segment and swapped-in partition
    /// file is recorded with its size and creation time in the transaction that commits
    /// it) that were created before `before_ms` and that no run refers to any more —
    /// deletable once `before_ms` is at most the deletion boundary, since nothing created
    /// before the boundary can be committed again. Oldest first, at most `limit`.
    async fn unreferenced_objects(&self, before_ms: i64, limit: u32) -> Result<Vec<String>>;
    /// Forget objects (after the sweeper deleted them).
    async fn forget_objects(&self, keys: &[String]) -> Result<()>;
    /// How many objects the index knows and their total size in bytes.
    async fn object_totals(&self) -> Result<(u64, u64)>;
    /// Check the index is reachable.
    async fn ping(&self) -> Result<()>;
    /// Consumer state (groups and queues) is kept as opaque blobs changed by
    /// compare-and-swap: the pure state machines live in `floe_core::{group, share}`.
    async fn load_state(&self, key: &StateKey) -> Result<Option<Versioned>>;
    /// Store `data` if the stored version is still `expected` (`None`: nothing stored yet).
    /// Returns false, changing nothing, when another writer got there first.
    async fn store_state(
        &self,
        key: &StateKey,
        expected: Option<i64>,
        data: Vec<u8>,
    ) -> Result<bool>;
    /// Every blob of one kind, optionally of one topic, ordered by (topic, group, partition).
    async fn list_states(
        &self,
        kind: StateKind,
        topic_id: Option<i64>,
    ) -> Result<Vec<(StateKey, Versioned)>>;
    /// Commit a group member's offsets as rows, fenced by the group's state in the same
    /// transaction ([`fence`]); all or nothing. `IndexError::Fenced` when refused.
    async fn commit_offsets(&self, c: OffsetCommit) -> Result<()>;
    /// A group's committed offsets (rows written by `commit_offsets`).
    async fn group_offsets(&self, topic_id: i64, group: &str) -> Result<BTreeMap<u32, u64>>;
    /// Retention by record time (RFC 0004): per partition of the topic, drop the prefix of
    /// runs whose newest record is older than `cutoff_ms` (`floe_core::log::retention_start`,
    /// at most `RETENTION_RUNS_PER_PASS` runs a pass) and advance the partition's start
    /// offset, in one transaction. Returns (partition, new start) of the partitions moved.
    async fn apply_retention(&self, topic_id: i64, cutoff_ms: i64) -> Result<Vec<(u32, u64)>>;
    /// Retention by size (RFC 0004): per partition of the topic, drop the oldest whole
    /// runs until the partition's runs hold at most `max_bytes` (never the newest run;
    /// `floe_core::log::size_retention_start`, at most `RETENTION_RUNS_PER_PASS` runs a
    /// pass) and advance the start offset, in one transaction. Returns (partition, new
    /// start) of the partitions moved.
    async fn apply_size_retention(&self, topic_id: i64, max_bytes: u64) -> Result<Vec<(u32, u64)>>;
    /// Swap consecutive entries of a partition for the row groups of a partition file, in
    /// one transaction (RFC 0004): `Ok(false)`, changing nothing, when the index no longer
    /// holds exactly `r.old` (retention or another compactor got there first) or the topic
    /// is gone; [`IndexError::SegmentTooOld`] below the deletion boundary.
    async fn replace_runs(&self, r: ReplaceRuns) -> Result<bool>;
    /// Advance the deletion boundary to `to_ms` (it never moves back) and return it. Once
    /// it returns, no segment created before the boundary can be committed any more, so
    /// the sweeper may delete such segments that no run refers to (RFC 0004).
    async fn advance_deletion_boundary(&self, to_ms: i64) -> Result<i64>;
    /// Hold an idempotency key for a produce attempt, or say why not (RFC 0003). The
    /// decision is `floe_core::idempotency::begin`, taken in one transaction.
    async fn idempotency_begin(&self, b: IdempotencyBegin) -> Result<IdempotencyVerdict>;
    /// Release a key whose attempt failed before its commit (nothing was committed).
    async fn idempotency_abandon(&self, topic_id: i64, key: &str, token: i64) -> Result<()>;
    /// Forget keys past their expiry (and pending ones past both lease and expiry).
    /// Returns how many were forgotten.
    async fn expire_idempotency(&self, now_ms: i64) -> Result<u64>;
    /// Deliver commits made by *other* agents to `sink` until `stop` turns true.
    /// Backends shared by one agent only have nothing to deliver.
    async fn watch_commits(&self, _sink: CommitSink, _stop: tokio::sync::watch::Receiver<bool>) {}
}

/// Open an index from its URL: `sqlite://PATH` (a file; created if missing).
/// Whether an index URL names an index several agents share (PostgreSQL), rather than the
/// embedded one-agent SQLite file.
#[must_use]
pub fn is_shared_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

pub async fn open(url: &str) -> Result<std::sync::Arc<dyn Index>> {
    open_with_clock(url, floe_core::clock::system()).await
}

/// [`open`] with the clock the embedded (SQLite) backend checks commit deadlines against.
/// PostgreSQL checks them against the server's clock.
pub async fn open_with_clock(
    url: &str,
    clock: floe_core::clock::SharedClock,
) -> Result<std::sync::Arc<dyn Index>> {
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(IndexError::BadUrl(url.to_string()));
        }
        let idx = SqliteIndex::open_with_clock(std::path::Path::new(path), clock).await?;
        return Ok(std::sync::Arc::new(idx));
    }
    if is_shared_url(url) {
        return Ok(std::sync::Arc::new(PostgresIndex::open(url).await?));
    }
    Err(IndexError::BadUrl(url.to_string()))
}

/// Topic config is stored as a JSON object (serde). Indexes written before that stored
/// `key=value` lines with `\` escaping, which did not round-trip every string (a value
/// containing `\e` came back as `=`); they are still read.
pub(crate) fn encode_config(c: &BTreeMap<String, String>) -> String {
    // A map of strings always serializes.
    serde_json::to_string(c).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn decode_config(s: &str) -> Result<BTreeMap<String, String>> {
    if s.starts_with('{')
        && let Ok(c) = serde_json::from_str(s)
    {
        return Ok(c);
    }
    decode_legacy_config(s)
}

fn decode_legacy_config(s: &str) -> Result<BTreeMap<String, String>> {
    let unesc = |s: &str| {
        s.replace("\\e", "=")
            .replace("\\n", "\n")
            .replace("\\\\", "\\")
    };
    s.lines()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (unesc(k), unesc(v)))
                .ok_or_else(|| IndexError::Corrupt(format!("bad config line {l:?}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_any_string() {
        let c: BTreeMap<String, String> = [
            ("a=b", "x\ny"),
            ("back\\slash", "=\\e\\n"),
            ("{", "}"),
            ("", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(decode_config(&encode_config(&c)).unwrap(), c);
        assert_eq!(decode_config("").unwrap(), BTreeMap::new());
    }

    /// Golden: what indexes written before the JSON encoding hold still decodes.
    #[test]
    fn legacy_config_still_decodes() {
        let old = "a\\eb=x\\ny\nqueue.ordering=key\n";
        let got = decode_config(old).unwrap();
        assert_eq!(got.get("a=b").map(String::as_str), Some("x\ny"));
        assert_eq!(got.get("queue.ordering").map(String::as_str), Some("key"));
    }
}
