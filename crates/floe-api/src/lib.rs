//! Types of the HTTP API (JSON). Shared by the agent, the client and the OpenAPI document.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every non-2xx answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable snake_case error code, e.g. `topic_not_found`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTopicRequest {
    /// `[A-Za-z0-9._-]`, 1–249 characters, not `.` or `..`.
    pub name: String,
    /// 1 ≤ partitions ≤ the agent's `max_partitions`.
    pub partitions: i64,
    /// Keep records for at least this long (by record time), then drop them whole runs at a
    /// time: the partition's start offset advances (fetches below it get 416). Default:
    /// forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub created_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicSummary {
    pub name: String,
    pub partitions: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicList {
    pub topics: Vec<TopicSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    /// First offset still readable.
    pub start_offset: u64,
    /// Next offset to be assigned.
    pub end_offset: u64,
    /// Below this no offset belongs to an open transaction: `read_committed` readers
    /// (the default) stop here. Equal to `end_offset` when no transaction is open.
    pub stable_offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TopicDescription {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub created_ms: i64,
}

/// How an object lays out its rows (`GET /v1/topics/{topic}/files`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileLayout {
    /// A flush segment (many topics and partitions): rows of this entry are those with
    /// this `topic` and `partition` and `row_first <= run_offset < row_first + records`;
    /// the offset of a row is `base_offset + run_offset - row_first`.
    Segment,
    /// A partition file (one topic and partition, written by the compactor): rows with
    /// `base_offset <= offset < base_offset + records`.
    Partition,
}

/// Offsets `base_offset..base_offset + records` of a partition, and where they are.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FileEntryInfo {
    pub partition: u32,
    /// Object key in the bucket.
    pub key: String,
    /// Object size in bytes.
    pub size: u64,
    pub layout: FileLayout,
    pub base_offset: u64,
    /// Offsets covered. A compacted topic's `partition` entry holds fewer rows (its rows
    /// carry their offsets; the others were cleaned away): read it by `offset` range.
    pub records: u32,
    /// For `segment` entries: the `run_offset` of the entry's first row.
    pub row_first: u32,
    /// The Parquet row groups holding the entry.
    pub row_group_first: u32,
    pub row_group_count: u32,
}

/// One partition's committed log between `from` and `to` (exclusive), as entries.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PartitionFilesInfo {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    pub from: u64,
    /// The entries cover `from..to`; `to` is short of the asked range when the listing was
    /// cut at its limit (ask again from `to`).
    pub to: u64,
    pub entries: Vec<FileEntryInfo>,
}

/// `GET /v1/topics/{topic}/files`: the objects that make up the committed log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TopicFiles {
    pub topic: String,
    pub partitions: Vec<PartitionFilesInfo>,
}

/// One record to produce. Give `value` (UTF-8 text) or `value_b64` (base64 bytes), and
/// optionally `key` or `key_b64`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// Explicit partition; without it, Kafka's murmur2 of the key, or (keyless) the one
    /// partition this request's keyless records go to, in turn per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProduceRequest {
    pub records: Vec<ProduceRecord>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RecordOffset {
    pub partition: u32,
    pub offset: u64,
}

/// Start a producer session (`POST /v1/producers`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InitProducerRequest {
    /// A stable name (1–255 visible ASCII characters): the same producer id comes back
    /// with a new epoch, and every older session of that name is fenced. Without a name,
    /// a new anonymous producer at epoch 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    pub name: Option<String>,
}

/// A producer session: send `Producer-Id`, `Producer-Epoch` and `Producer-Sequences` on
/// every produce request.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ProducerSessionInfo {
    pub producer_id: i64,
    pub epoch: u32,
}

/// Offsets in request order; sent only after the records are durable and committed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProduceResponse {
    pub offsets: Vec<RecordOffset>,
}

/// A fetched record. Text keys/values come as `key`/`value`; anything that is not valid
/// UTF-8 comes as `key_b64`/`value_b64`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FetchedRecord {
    pub offset: u64,
    pub timestamp_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl FetchedRecord {
    /// The value's bytes, whichever way it was encoded.
    pub fn value_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        match (&self.value, &self.value_b64) {
            (Some(v), _) => Some(v.as_bytes().to_vec()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).ok(),
            (None, None) => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FetchResponse {
    pub records: Vec<FetchedRecord>,
    /// Offset to ask for next.
    pub next_offset: u64,
    /// Next offset to be assigned in this partition (the log end).
    pub end_offset: u64,
    /// Below this no offset belongs to an open transaction (a `read_committed` fetch,
    /// the default, reads only below it).
    pub stable_offset: u64,
}

// ---------------------------------------------------------------------------------------
// Transactions and half-messages (RFC 0005)
// ---------------------------------------------------------------------------------------

/// Begin a transaction of a producer session (`POST /v1/producers/{id}/transactions`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BeginTransactionRequest {
    /// The session's current epoch (from `POST /v1/producers` or the previous
    /// transaction).
    pub epoch: u32,
    /// Abort the transaction this long after it began unless it ended (default: the
    /// agent's `--transaction-timeout-ms`, 60 s; at most `--max-transaction-timeout-ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1)]
    pub timeout_ms: Option<u64>,
}

/// A begun transaction: produce with `Producer-Epoch: epoch` (sequences from 0) and
/// `Producer-Transactional: true`, then commit or abort naming this epoch.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TransactionInfo {
    pub producer_id: i64,
    /// The transaction's epoch: it names the transaction.
    pub epoch: u32,
    /// When the engine aborts it (Unix ms) unless it ended.
    pub deadline_ms: i64,
}

/// Group offsets committed by a transaction (consume-transform-produce): applied only if
/// the transaction commits, fenced by the group (member, generation, ownership).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactionOffsets {
    pub topic: String,
    pub group: String,
    pub member_id: String,
    pub generation: u64,
    pub offsets: Vec<CommitOffset>,
}

/// Commit a transaction.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitTransactionRequest {
    #[serde(default)]
    pub offsets: Vec<TransactionOffsets>,
}

/// The state of a transaction or half-message.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TransactionState {
    Open,
    Committed,
    Aborted,
}

/// The answer to a commit or abort (also a half-message's commit or rollback).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TransactionEnd {
    pub producer_id: i64,
    pub epoch: u32,
    pub state: TransactionState,
    /// It had ended this way before (a repeated request): nothing changed now.
    pub repeated: bool,
}

/// A partition an open transaction wrote.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TransactionPartition {
    pub topic: String,
    pub partition: u32,
    /// Its first offset there: the partition's stable offset is at most this.
    pub first_offset: u64,
    pub records: u64,
}

/// A transaction as the index holds it (`GET /v1/transactions`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TransactionDescription {
    pub producer_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_name: Option<String>,
    pub epoch: u32,
    pub state: TransactionState,
    pub started_ms: i64,
    pub deadline_ms: i64,
    /// A half-message's check-back URL, and the checks made so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_url: Option<String>,
    pub checks: u32,
    #[serde(default)]
    pub partitions: Vec<TransactionPartition>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransactionList {
    pub transactions: Vec<TransactionDescription>,
}

/// Prepare a half-message (`POST /v1/topics/{topic}/half-messages`): the records are
/// stored invisible to consumers until committed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrepareHalfRequest {
    pub records: Vec<ProduceRecord>,
    /// Called (`POST {"handle", "producer_id", "epoch", "check"}`, answer `{"outcome":
    /// "commit" | "rollback" | "unknown"}`) when neither commit nor rollback came in time.
    pub check_url: String,
}

/// A prepared half-message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HalfMessage {
    /// `<producer_id>.<epoch>`: commit or roll back with it.
    pub handle: String,
    pub producer_id: i64,
    pub epoch: u32,
    /// Where its records are (not visible to consumers until committed).
    pub offsets: Vec<RecordOffset>,
}

/// A check-back call's answer.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    Commit,
    Rollback,
    Unknown,
}

/// The body of a check-back call the broker makes to the producer's `check_url`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckRequest {
    pub handle: String,
    pub producer_id: i64,
    pub epoch: u32,
    /// 1 for the first check-back.
    pub check: u32,
}

/// What the producer's `check_url` answers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckResponse {
    pub outcome: CheckOutcome,
}

// ---------------------------------------------------------------------------------------
// Consumer groups (pub/sub)
// ---------------------------------------------------------------------------------------

/// Where a member starts reading a partition that has no committed offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResetPolicy {
    /// The start of the log.
    #[default]
    Earliest,
    /// The end of the log at the time of the fetch.
    Latest,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinGroupRequest {
    /// Re-join with this id (e.g. after a restart); a new id is made when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_id: Option<String>,
    /// A member not seen (join, heartbeat or fetch) for this long is removed. Default 10 000,
    /// bounded by the agent's min/max session timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timeout_ms: Option<u64>,
    /// Commit a fetch's positions when the member fetches again with its cursor
    /// (at-least-once, like Kafka's auto-commit). Default false: commit explicitly.
    #[serde(default)]
    pub auto_commit: bool,
}

/// A member's view of the group after join / heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Assignment {
    pub member_id: String,
    pub generation: u64,
    /// Partitions this member owns in this generation.
    pub partitions: Vec<u32>,
    /// Send a heartbeat (or fetch) at least this often.
    pub heartbeat_interval_ms: u64,
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PartitionRecords {
    pub partition: u32,
    pub records: Vec<FetchedRecord>,
    /// Offset to read next in this partition.
    pub next_offset: u64,
    pub end_offset: u64,
}

/// Records from the member's assigned partitions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupFetchResponse {
    pub generation: u64,
    pub assigned: Vec<u32>,
    pub partitions: Vec<PartitionRecords>,
    /// Pass back as `cursor` on the next fetch to continue after these records without
    /// committing; ignored after a rebalance (reading restarts from committed offsets).
    pub cursor: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommitOffset {
    pub partition: u32,
    /// The next offset to read (one past the last processed record).
    pub offset: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub member_id: String,
    pub generation: u64,
    pub offsets: Vec<CommitOffset>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupMemberInfo {
    pub member_id: String,
    pub partitions: Vec<u32>,
    pub last_seen_ms: i64,
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupPartitionLag {
    pub partition: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<u64>,
    pub end_offset: u64,
    /// `end_offset - committed` (from the partition start when nothing is committed).
    pub lag: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct GroupDescription {
    pub topic: String,
    pub group: String,
    pub generation: u64,
    pub members: Vec<GroupMemberInfo>,
    pub partitions: Vec<GroupPartitionLag>,
    pub total_lag: u64,
}

// ---------------------------------------------------------------------------------------
// Share groups (queues)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveRequest {
    /// How values and keys come back: `auto` (default: UTF-8 text as `value`, other bytes
    /// as `value_b64`) or `base64` (always `value_b64` / `key_b64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<Encoding>,
    /// Who receives (shown in the queue description); default "anonymous".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// Default 10, capped by the agent's max_receive_records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records: Option<u64>,
    /// Long-poll when nothing is available; capped by max_wait_ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<u64>,
    /// How long received records stay invisible to others. Default 30 000, capped by
    /// max_visibility_ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout_ms: Option<u64>,
}

/// A received record: the fields of [`FetchedRecord`] plus its partition, how many times it
/// has been delivered (this time included) and the receipt to settle it with.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct QueuedRecord {
    pub partition: u32,
    #[serde(flatten)]
    pub record: FetchedRecord,
    pub delivery_count: u32,
    pub receipt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReceiveResponse {
    pub records: Vec<QueuedRecord>,
}

/// Settle received records: `ack`, `release` (with optional `delay_ms`), `reject` (with
/// optional `reason`) or `extend` (with `visibility_timeout_ms`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    pub receipts: Vec<String>,
    /// release: make the records available again after this delay (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// reject: recorded in the dead-letter record's `floe.dlq.message` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// extend: keep the records invisible this long from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SettleFailure {
    pub receipt: String,
    pub code: String,
    pub message: String,
}

/// Per-receipt outcome: receipts not in `failed` were settled.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SettleResponse {
    pub settled: u64,
    pub failed: Vec<SettleFailure>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueuePartitionState {
    pub partition: u32,
    /// Every offset below this is acknowledged or dead-lettered.
    pub start_offset: u64,
    /// First offset never delivered.
    pub next_offset: u64,
    pub end_offset: u64,
    pub in_flight: u64,
    /// Delivered before, waiting for redelivery.
    pub available: u64,
    pub acked: u64,
    pub dead_lettering: u64,
    /// Records not yet acknowledged or dead-lettered.
    pub backlog: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueueDescription {
    pub topic: String,
    pub group: String,
    pub dead_letter_topic: String,
    pub max_deliveries: u32,
    pub partitions: Vec<QueuePartitionState>,
}

/// How a JSON read returns record values and keys (the bytes are stored as produced).
/// `auto`: valid UTF-8 as `value`/`key`, anything else as `value_b64`/`key_b64`.
/// `base64`: always `value_b64`/`key_b64`, so a client gets back exactly the bytes it sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Auto,
    Base64,
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "base64" => Ok(Self::Base64),
            other => Err(format!("encoding must be auto or base64, got {other:?}")),
        }
    }
}
