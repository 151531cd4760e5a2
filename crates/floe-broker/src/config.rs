//! Agent configuration. The binary fills it from flags and `FLOE_*` variables.

use std::time::Duration;

use floe_core::Limits;
use floe_core::segment::Compression;

/// When the produce buffer flushes (besides reaching `flush_bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// Group commit: a flush starts as soon as no other flush is encoding or writing its
    /// segment (the previous one may still be committing: its commit overlaps the next
    /// encode + PUT, commits stay in order), taking whatever arrived meanwhile; `linger` is
    /// only an upper bound. Latency is one flush when idle, and the batch grows with the
    /// load. At most one PUT at a time (plus `flush_bytes` flushes).
    #[default]
    Group,
    /// Wait `linger` after the first buffered record (flushes still overlap up to
    /// `max_inflight_flushes`): at most one PUT per linger whatever the load, for
    /// deployments where request fees matter more than latency.
    Linger,
}

impl std::str::FromStr for FlushPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "group" => Ok(Self::Group),
            "linger" => Ok(Self::Linger),
            other => Err(format!(
                "flush policy must be group or linger, got {other:?}"
            )),
        }
    }
}

/// Whether and where an agent tells the others it can be reached (RFC 0006).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Advertise {
    /// With a shared index (PostgreSQL): `http://<bound address>` when the listen address
    /// is a specific IP (e.g. `127.0.0.1:7070`); nothing for `0.0.0.0` / `::` (which
    /// address would peers use?). Nothing on the embedded SQLite index: one agent, no
    /// peers (and no registration write every heartbeat).
    #[default]
    Auto,
    /// Not registered: other agents read what this one wrote from the bucket.
    Off,
    /// This URL (behind a proxy, in a container, on `0.0.0.0`).
    Url(String),
}

impl std::str::FromStr for Advertise {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => Self::Auto,
            "none" | "off" => Self::Off,
            url => Self::Url(url.trim_end_matches('/').to_string()),
        })
    }
}

impl Advertise {
    /// The URL to register once the agent listens on `bound`, on an index that other
    /// agents share (`shared_index`) or not.
    #[must_use]
    pub fn url_for(&self, bound: std::net::SocketAddr, shared_index: bool) -> Option<String> {
        match self {
            Self::Auto => {
                (shared_index && !bound.ip().is_unspecified()).then(|| format!("http://{bound}"))
            }
            Self::Off => None,
            Self::Url(u) => Some(u.clone()),
        }
    }
}

/// The compactor (RFC 0004): rewrites a partition's small entries (runs in multi-topic
/// flush segments) into partition files under `topics/<topic>/partition=<p>/...`.
#[derive(Debug, Clone)]
pub struct CompactionConfig {
    pub enabled: bool,
    /// How often each agent looks for partitions to compact.
    pub interval: Duration,
    /// A partition file is written once this many bytes of small entries wait...
    pub target_bytes: u64,
    /// ...or once the oldest waiting entry is this old (with at least `min_entries`).
    pub max_wait: Duration,
    pub min_entries: usize,
    /// Entries with a record younger than this are left alone (the hot tail).
    pub min_age: Duration,
    /// Row groups of partition files end at this many encoded bytes (or 64 Ki rows).
    pub row_group_bytes: usize,
    /// How long one agent holds a partition's compaction lease.
    pub lease: Duration,
    /// Memory for the latest offset of each key when a compacted topic's partition is
    /// cleaned (`cleanup.policy=compact`); a partition with more keys than fit is cleaned
    /// in smaller stretches.
    pub key_map_bytes: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(30),
            target_bytes: 32 * 1024 * 1024,
            max_wait: Duration::from_secs(600),
            min_entries: 4,
            min_age: Duration::from_secs(60),
            row_group_bytes: 4 * 1024 * 1024,
            lease: Duration::from_secs(120),
            key_map_bytes: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Address to listen on, e.g. `127.0.0.1:7070` (`:0` picks a free port).
    pub listen: String,
    /// Object store URL: `file:///path`, `s3://bucket/prefix` or `memory://`.
    pub bucket: String,
    /// Index URL: `sqlite://path` or `postgres://...`.
    pub index: String,
    /// When the produce buffer flushes: group commit (default) or after `linger`.
    pub flush_policy: FlushPolicy,
    /// How long the produce buffer waits for more records before a flush (with the group
    /// policy: the longest a record waits while earlier flushes are in flight).
    pub linger: Duration,
    /// Flush as soon as the buffer holds this many record bytes.
    pub flush_bytes: usize,
    /// Flushes (encode + PUT) running at once; commits still happen in arrival order.
    pub max_inflight_flushes: usize,
    pub compression: Compression,
    pub rows_per_row_group: usize,
    /// A segment not committed within this time after its PUT began is abandoned (its
    /// producers get 503) so that the sweeper can never delete a segment about to be committed.
    pub commit_deadline: Duration,
    /// Sweeper: delete unreferenced segment objects older than this.
    pub orphan_grace: Duration,
    pub sweep_interval: Duration,
    /// All read caches together, in bytes: with the SQLite index its page caches
    /// (`floe_index::SQLITE_CACHE_BYTES`) first; of the rest, decoded row groups 5/8, whole
    /// small segment objects 2/8, Parquet footers 1/8 ([`MemoryBudget`]).
    pub cache_bytes: u64,
    /// Long-polls re-read the end offset at least this often (safety net for lost
    /// notifications from other agents).
    pub poll_interval: Duration,
    /// How long topic metadata is cached before it is re-read from the index.
    pub topic_cache_ttl: Duration,
    pub limits: Limits,
    /// Identifies this agent in segment object keys.
    pub agent_id: String,
    /// Where other agents reach this one (RFC 0006, peer reads): registered in the index
    /// every `peer_heartbeat`.
    pub advertise: Advertise,
    /// Ask the agent that wrote a segment for it before reading the bucket (RFC 0006).
    pub peer_reads: bool,
    /// How often the registration is renewed; rows older than 3 of these are ignored.
    pub peer_heartbeat: Duration,
    /// Budget of one peer read (connect included); past it the bucket is read.
    pub peer_timeout: Duration,
    /// Queues: deliveries before a record is dead-lettered (topic config
    /// `queue.max_deliveries` overrides it).
    pub max_deliveries: u32,
    /// Queues: an unfinished dead-letter write is taken over after this long.
    pub dead_letter_retry: Duration,
    /// End-to-end budget of a produce request (buffer wait, linger, encode, PUT with its
    /// retries, commit). Past it the producer gets 503 `deadline_exceeded` and the records
    /// are not committed (the index checks the deadline inside the commit transaction).
    pub produce_timeout: Duration,
    /// `/readyz` answers within this (bucket and index probed concurrently).
    pub ready_timeout: Duration,
    /// Budget of one index call on a request path or background job.
    pub index_timeout: Duration,
    /// Budget of one object-store call (object_store's own retries included).
    pub store_timeout: Duration,
    /// How long a completed `Idempotency-Key` is remembered (RFC 0003).
    pub idempotency_ttl: Duration,
    /// How long a producer session's sequence state is kept without a produce (RFC 0003
    /// part 2); after it, the producer is unknown and must start a new session.
    pub producer_ttl: Duration,
    pub transactions: TxnConfig,
    pub compaction: CompactionConfig,
    /// Retention for topics that set none (`retention_ms` / `retention.bytes`): applied by
    /// the sweeper at each pass, so changing it affects existing topics too. Keep it the
    /// same on every agent of a cluster (the smallest wins).
    pub default_retention_ms: Option<i64>,
    pub default_retention_bytes: Option<u64>,
}

/// Where an agent's memory goes, by configuration (RFC 0002): every cache and buffer that
/// grows with load has a bound here. Exported as `floe_memory_budget_bytes{part}` and
/// logged at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Decoded runs (Arrow arrays served to readers).
    pub run_cache: u64,
    /// Whole segment objects up to 2 × `flush_bytes` (one GET serves every run).
    pub object_cache: u64,
    /// Parquet footers.
    pub footer_cache: u64,
    /// Records accepted and waiting for their flush (`max_buffer_bytes`).
    pub produce_buffer: u64,
    /// Flushes in flight: each holds its encoded segment and its records until the
    /// commit (`max_inflight_flushes` × 2 × `flush_bytes`, the records bounded by the
    /// produce buffer above).
    pub flushes: u64,
    /// The compactor: the partition file it writes (`target_bytes`, plus one row group
    /// over) and one decoded input entry (at most a flush, 2 × `flush_bytes`).
    pub compaction: u64,
    /// Of `compaction`: the decoded input row groups the compactor keeps (2 ×
    /// `flush_bytes`; the runs of one flush segment share row groups and are compacted
    /// partition after partition).
    pub compaction_inputs: u64,
    /// The embedded (SQLite) index's page caches and recent-entry views
    /// (`floe_index::SQLITE_CACHE_BYTES`: 16 MiB page cache for the writer, 2 MiB for the
    /// reader, ≈ 25 MiB for the two views of the recent tables), taken out of
    /// `cache_bytes`; 0 on PostgreSQL.
    pub index_cache: u64,
}

impl MemoryBudget {
    pub fn total(&self) -> u64 {
        self.run_cache
            + self.object_cache
            + self.footer_cache
            + self.produce_buffer
            + self.flushes
            + self.compaction
            + self.index_cache
    }
    pub fn parts(&self) -> [(&'static str, u64); 7] {
        [
            ("index_cache", self.index_cache),
            ("compaction", self.compaction),
            ("run_cache", self.run_cache),
            ("object_cache", self.object_cache),
            ("footer_cache", self.footer_cache),
            ("produce_buffer", self.produce_buffer),
            ("flushes", self.flushes),
        ]
    }
}

impl AgentConfig {
    /// The memory this configuration allows the bounded parts to hold.
    pub fn memory_budget(&self) -> MemoryBudget {
        // The embedded index's page caches are read caches too: they come out of
        // `cache_bytes`.
        let index_cache = if self.index.starts_with("sqlite:") {
            floe_index::SQLITE_CACHE_BYTES
        } else {
            0
        };
        let c = self.cache_bytes.saturating_sub(index_cache);
        MemoryBudget {
            run_cache: c / 8 * 5,
            object_cache: c / 8 * 2,
            footer_cache: c / 8,
            produce_buffer: self.limits.max_buffer_bytes as u64,
            flushes: (self.max_inflight_flushes * 2 * self.flush_bytes) as u64,
            compaction: if self.compaction.enabled {
                self.compaction.target_bytes
                    + self.compaction.row_group_bytes as u64
                    + 2 * self.flush_bytes as u64
                    + self.compaction.key_map_bytes as u64
            } else {
                0
            },
            compaction_inputs: if self.compaction.enabled {
                2 * self.flush_bytes as u64
            } else {
                0
            },
            index_cache,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            bucket: "file://./floe-data/bucket".into(),
            index: "sqlite://./floe-data/index.db".into(),
            flush_policy: FlushPolicy::Group,
            linger: Duration::from_millis(100),
            flush_bytes: 8 * 1024 * 1024,
            max_inflight_flushes: 4,
            compression: Compression::Lz4,
            rows_per_row_group: 16 * 1024,
            commit_deadline: Duration::from_secs(30),
            orphan_grace: Duration::from_secs(600),
            sweep_interval: Duration::from_secs(60),
            cache_bytes: 256 * 1024 * 1024,
            poll_interval: Duration::from_secs(1),
            topic_cache_ttl: Duration::from_secs(5),
            limits: Limits::default(),
            agent_id: "agent".into(),
            advertise: Advertise::Auto,
            peer_reads: true,
            peer_heartbeat: Duration::from_secs(5),
            peer_timeout: Duration::from_millis(500),
            max_deliveries: 5,
            dead_letter_retry: Duration::from_secs(30),
            produce_timeout: Duration::from_secs(10),
            ready_timeout: Duration::from_millis(800),
            index_timeout: Duration::from_secs(5),
            store_timeout: Duration::from_secs(10),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            producer_ttl: Duration::from_secs(24 * 3600),
            transactions: TxnConfig::default(),
            compaction: CompactionConfig::default(),
            default_retention_ms: None,
            default_retention_bytes: None,
        }
    }
}

/// Transactions and half-messages (RFC 0005).
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// A transaction begun without a timeout is aborted this long after it began.
    pub default_timeout: Duration,
    /// How often an agent looks for transactions past their deadline.
    pub check_interval: Duration,
    /// A half-message's first check-back comes this long after it was prepared
    /// (RocketMQ: 6 s).
    pub half_first_check: Duration,
    /// Then every this long (RocketMQ: 30 s)...
    pub half_check_interval: Duration,
    /// ...at most this many times (RocketMQ: 15); then `half_default` applies.
    pub half_max_checks: u32,
    /// What happens to a half-message whose producer never answered: commit or
    /// rollback (the default).
    pub half_default_commit: bool,
    /// Budget of one check-back call.
    pub half_check_timeout: Duration,
    /// Topic that records half-messages ended by the default (created on first use).
    pub half_audit_topic: String,
}

impl Default for TxnConfig {
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(60),
            check_interval: Duration::from_secs(1),
            half_first_check: Duration::from_secs(6),
            half_check_interval: Duration::from_secs(30),
            half_max_checks: 15,
            half_default_commit: false,
            half_check_timeout: Duration::from_secs(3),
            half_audit_topic: "floe-half-audit".into(),
        }
    }
}

impl AgentConfig {
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.transactions;
        if t.default_timeout.is_zero()
            || self.limits.max_transaction_timeout_ms < t.default_timeout.as_millis() as u64
            || t.check_interval.is_zero()
            || t.half_first_check.is_zero()
            || t.half_check_interval.is_zero()
            || t.half_check_timeout.is_zero()
        {
            return Err("transaction timeouts and intervals must be > 0, and the maximum transaction timeout at least the default".into());
        }
        if self.orphan_grace < self.commit_deadline * 2 {
            return Err(format!(
                "orphan grace ({:?}) must be at least twice the commit deadline ({:?}), or the sweeper could delete a segment that is about to be committed",
                self.orphan_grace, self.commit_deadline
            ));
        }
        if self.flush_bytes == 0 || self.max_inflight_flushes == 0 || self.rows_per_row_group == 0 {
            return Err(
                "flush_bytes, max_inflight_flushes and rows_per_row_group must be > 0".into(),
            );
        }
        if [
            self.produce_timeout,
            self.ready_timeout,
            self.index_timeout,
            self.store_timeout,
        ]
        .iter()
        .any(Duration::is_zero)
        {
            return Err("produce, ready, index and store timeouts must be > 0".into());
        }
        let c = &self.compaction;
        if c.enabled
            && (c.interval.is_zero()
                || c.target_bytes == 0
                || c.row_group_bytes == 0
                || c.lease < self.store_timeout * 2 + self.index_timeout)
        {
            return Err("compaction interval, target and row group size must be > 0, and the compaction lease at least 2 × store timeout + index timeout".into());
        }
        if self.default_retention_ms.is_some_and(|r| r < 0)
            || self.default_retention_bytes == Some(0)
        {
            return Err("default retention must be >= 0 ms and > 0 bytes".into());
        }
        if self.max_deliveries == 0 {
            return Err("max_deliveries must be at least 1".into());
        }
        let l = &self.limits;
        if l.max_receive_records == 0
            || l.max_in_flight_per_partition == 0
            || l.max_group_members == 0
            || l.min_session_timeout_ms == 0
            || l.min_session_timeout_ms > l.max_session_timeout_ms
        {
            return Err("max_receive_records, max_in_flight_per_partition and max_group_members must be > 0, and 0 < min_session_timeout_ms <= max_session_timeout_ms".into());
        }
        if self.limits.max_buffer_bytes < self.limits.max_body_bytes {
            return Err("max_buffer_bytes must be at least max_body_bytes".into());
        }
        if self.limits.max_record_bytes > self.limits.max_body_bytes {
            return Err("max_record_bytes must not exceed max_body_bytes".into());
        }
        if !self
            .agent_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
            || self.agent_id.is_empty()
        {
            return Err("agent id must be [A-Za-z0-9-]+".into());
        }
        if let Advertise::Url(u) = &self.advertise {
            let ok = reqwest::Url::parse(u).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none()
            });
            if !ok {
                return Err(format!(
                    "advertise url must be an http(s) URL with a host and no query, got {u:?}"
                ));
            }
        }
        if self.peer_heartbeat.is_zero() || self.peer_timeout.is_zero() {
            return Err("peer_heartbeat and peer_timeout must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_advertises_a_specific_address_on_a_shared_index_only() {
        let local: std::net::SocketAddr = "127.0.0.1:7071".parse().unwrap();
        let any: std::net::SocketAddr = "0.0.0.0:7071".parse().unwrap();
        let auto = Advertise::Auto;
        assert_eq!(
            auto.url_for(local, true).as_deref(),
            Some("http://127.0.0.1:7071")
        );
        assert_eq!(auto.url_for(any, true), None);
        assert_eq!(auto.url_for(local, false), None, "embedded: no peers");
        let url: Advertise = "http://agent-1.internal:7070/".parse().unwrap();
        assert_eq!(
            url.url_for(any, false).as_deref(),
            Some("http://agent-1.internal:7070")
        );
        assert_eq!(
            "none".parse::<Advertise>().unwrap().url_for(local, true),
            None
        );
    }

    /// The default configuration's bounded parts stay within 512 MiB (the agent's RSS
    /// goal, issue #9): read caches 256 MiB (the SQLite index's page caches included),
    /// produce buffer 128 MiB, flushes 64 MiB, compaction 32 + 4 + 16 + 8 MiB (file, row
    /// group, two inputs, key map).
    #[test]
    fn default_memory_budget_accounts_for_every_part() {
        let b = AgentConfig::default().memory_budget();
        assert_eq!(
            b.run_cache + b.object_cache + b.footer_cache + b.index_cache,
            AgentConfig::default().cache_bytes
        );
        assert_eq!(b.parts().iter().map(|(_, n)| n).sum::<u64>(), b.total());
        assert_eq!(b.total(), 508 << 20);
    }
}
