//! Every buffer, request, record and batch has an explicit limit. All of them live here,
//! with their defaults, so that the agent, the CLI flags and the docs agree.

use serde::{Deserialize, Serialize};

/// Limits enforced by an agent. Every field is configurable from the command line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted HTTP request body, in bytes.
    pub max_body_bytes: usize,
    /// Largest single record (key + value + headers), in bytes.
    pub max_record_bytes: usize,
    /// Most records in one produce request.
    pub max_records_per_request: usize,
    /// Most headers on one record.
    pub max_headers_per_record: usize,
    /// Most partitions a topic may have.
    pub max_partitions: u32,
    /// Most topics an index may hold.
    pub max_topics: usize,
    /// Upper bound for a fetch's `wait_ms`; larger values are capped to it.
    pub max_wait_ms: u64,
    /// Upper bound for a fetch's `max_records`.
    pub max_fetch_records: usize,
    /// Upper bound for a fetch's `max_bytes`.
    pub max_fetch_bytes: usize,
    /// Bytes of records an agent holds in its produce buffer plus in-flight flushes;
    /// produce requests beyond it wait up to `buffer_wait_ms` and then get 503.
    pub max_buffer_bytes: usize,
    /// How long a produce request may wait for buffer space before a 503.
    pub buffer_wait_ms: u64,
    /// Most records one queue `receive` hands out (and most receipts one settle call takes).
    pub max_receive_records: usize,
    /// Upper bound for a queue visibility timeout; larger values are capped to it.
    pub max_visibility_ms: u64,
    /// Most records of one partition a share group has in flight (delivered, not yet
    /// acknowledged or dead-lettered); bounds the stored state.
    pub max_in_flight_per_partition: u64,
    /// Most members in one consumer group.
    pub max_group_members: usize,
    /// Bounds for a consumer group member's session timeout.
    pub min_session_timeout_ms: u64,
    pub max_session_timeout_ms: u64,
    /// Most index entries one files listing (`GET /v1/topics/{topic}/files`) returns, over
    /// all its partitions; a longer log is listed in pages (continue from `to`).
    pub max_file_entries: u32,
    /// The longest timeout a transaction may ask for (RFC 0005): an open transaction holds
    /// back `read_committed` readers of every partition it wrote.
    pub max_transaction_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_record_bytes: 1024 * 1024,
            max_records_per_request: 10_000,
            max_headers_per_record: 64,
            max_partitions: 1024,
            max_topics: 10_000,
            max_wait_ms: 30_000,
            max_fetch_records: 10_000,
            max_fetch_bytes: 16 * 1024 * 1024,
            max_buffer_bytes: 128 * 1024 * 1024,
            buffer_wait_ms: 5_000,
            max_receive_records: 1_000,
            max_visibility_ms: 12 * 60 * 60 * 1000,
            max_in_flight_per_partition: 2_000,
            max_group_members: 1_000,
            min_session_timeout_ms: 1_000,
            max_session_timeout_ms: 300_000,
            max_file_entries: 10_000,
            max_transaction_timeout_ms: 15 * 60 * 1000,
        }
    }
}
