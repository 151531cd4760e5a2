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
        }
    }
}
