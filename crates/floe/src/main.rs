//! `floe`: the agent (`floe serve`) and the command-line client.

/// mimalloc: the agent allocates per request and per record; glibc malloc showed up at
/// ~25% of agent CPU in `perf` under produce+fetch load. Built with `no_thp`: with
/// transparent huge pages, every fresh page mimalloc touched faulted in (and zeroed) a
/// whole 2 MiB page — 35–41 % of the agent's CPU in `clear_page_erms` under produce load;
/// without, 1.4–1.5× the produce throughput (README, Performance).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bucket;
mod cli;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use floe_agent::AgentConfig;
use floe_core::Limits;

#[derive(Parser, Debug)]
#[command(
    name = "floe",
    version,
    about = "Floe: a message broker whose only durable state is object storage plus a small index"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run an agent. Defaults: a local folder as bucket and SQLite as index, under --data-dir.
    Serve(Box<ServeArgs>),
    /// Manage topics.
    Topics {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: cli::TopicsCmd,
    },
    /// Produce lines from stdin (or --file) as records.
    Produce(cli::ProduceArgs),
    /// Print records of a partition.
    Consume(cli::ConsumeArgs),
    /// Consumer groups (pub/sub): describe, list.
    Group {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: cli::GroupCmd,
    },
    /// Queues (share groups): receive, ack, release, reject, extend, describe.
    Queue {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: cli::QueueCmd,
    },
    /// Transactions (RFC 0005): list open ones, abort one.
    Transactions {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: cli::TxnCmd,
    },
    /// Half-messages (RocketMQ-style transactional messages): prepare, commit, rollback.
    Half {
        #[command(flatten)]
        conn: Conn,
        #[command(subcommand)]
        cmd: cli::HalfCmd,
    },
    /// Produce + consume load against a running agent; prints throughput and latencies.
    Bench(bench::BenchArgs),
    /// Print the OpenAPI document of the HTTP API.
    Openapi,
    /// Check or create an s3:// bucket (standard AWS environment variables apply).
    Bucket {
        #[command(subcommand)]
        cmd: BucketCmd,
    },
    /// The transactional outbox relay: an application's outbox table in PostgreSQL or
    /// SQLite to topics, exactly once, in per-aggregate order (RFC 0005).
    Outbox {
        #[command(subcommand)]
        cmd: OutboxCmd,
    },
}

#[derive(Subcommand, Debug)]
enum OutboxCmd {
    /// Create the outbox table (if missing), its triggers and the relay's state.
    Install {
        /// The application's database: postgres://… or sqlite://PATH (an SQLite file).
        #[arg(long, env = "FLOE_OUTBOX_DB")]
        db: String,
        #[arg(long, default_value = "outbox")]
        table: String,
        /// Hash ranges of aggregateid: the units relays lease (fixed at the first install;
        /// SQLite has one).
        #[arg(long, default_value_t = 16)]
        ranges: u32,
    },
    /// Run a relay until interrupted (any number of relays may run; each range has one
    /// holder at a time).
    Run {
        #[command(flatten)]
        conn: Conn,
        #[arg(long, env = "FLOE_OUTBOX_DB")]
        db: String,
        #[arg(long, default_value = "outbox")]
        table: String,
        /// Topic of a row; `{aggregatetype}` is replaced by the row's column.
        #[arg(long, default_value = "{aggregatetype}")]
        topic: String,
        /// Rows per batch (one produce request per topic).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 10_000)]
        lease_ms: u64,
        /// Poll interval when no notification arrives.
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
        /// This relay's name in the leases (default: host and process id).
        #[arg(long)]
        relay_id: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum BucketCmd {
    /// Create the bucket if it does not exist, then check it is accessible.
    Init { url: String },
    /// Check the bucket exists and is accessible.
    Check { url: String },
}

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Agent URL.
    #[arg(
        long,
        env = "FLOE_URL",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub url: String,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "FLOE_LISTEN", default_value = "127.0.0.1:7070")]
    listen: String,
    /// Also run the transactional outbox relay (as `floe outbox run`) against this
    /// database (postgres://… or sqlite://PATH), publishing through this agent.
    #[arg(long, env = "FLOE_OUTBOX_DB")]
    outbox_db: Option<String>,
    /// The outbox table (with --outbox-db).
    #[arg(long, env = "FLOE_OUTBOX_TABLE", default_value = "outbox")]
    outbox_table: String,
    /// Topic of an outbox row (with --outbox-db); `{aggregatetype}` is replaced.
    #[arg(long, env = "FLOE_OUTBOX_TOPIC", default_value = "{aggregatetype}")]
    outbox_topic: String,
    /// Folder for the embedded default bucket and index.
    #[arg(long, env = "FLOE_DATA_DIR", default_value = "./floe-data")]
    data_dir: PathBuf,
    /// Object store URL (file:///PATH, s3://BUCKET/PREFIX, memory://). Default: file://DATA_DIR/bucket.
    /// For s3://, the standard AWS variables apply (AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, ...).
    #[arg(long, env = "FLOE_BUCKET")]
    bucket: Option<String>,
    /// Index URL (sqlite://PATH, postgres://USER@HOST/DB). Default: sqlite://DATA_DIR/index.db.
    #[arg(long, env = "FLOE_INDEX")]
    index: Option<String>,
    /// When the produce buffer flushes: `group` (group commit: the next flush starts as
    /// soon as the previous one's segment is written, while it commits; lowest latency,
    /// batches grow with load) or
    /// `linger` (wait --linger-ms after the first record: fewest PUTs, for S3 request fees).
    #[arg(long, env = "FLOE_FLUSH_POLICY", default_value = "group")]
    flush_policy: String,
    /// Produce buffer linger in ms: with `linger`, the wait before a flush (0 = flush as
    /// soon as possible); with `group`, the longest a record waits behind flushes in flight.
    #[arg(long, env = "FLOE_LINGER_MS", default_value_t = 100)]
    linger_ms: u64,
    /// Flush when the buffer holds this many bytes.
    #[arg(long, env = "FLOE_FLUSH_BYTES", default_value_t = 8 * 1024 * 1024)]
    flush_bytes: usize,
    /// Concurrent flushes (encode + PUT); commits stay in order.
    #[arg(long, env = "FLOE_MAX_INFLIGHT_FLUSHES", default_value_t = 4)]
    max_inflight_flushes: usize,
    /// Threads for blocking work (segment encode and decode, SQLite, local-folder file
    /// I/O); default: 2 per CPU, at least 4. Each thread keeps its own allocator heap, so
    /// more threads hold more memory: with tokio's default (512, grown on demand) the
    /// 64-producer bench peaked at 733 MiB RSS, with 4 at 463 MiB (2 cores, issue #9).
    #[arg(long, env = "FLOE_MAX_BLOCKING_THREADS")]
    max_blocking_threads: Option<usize>,
    /// Segment compression: none, lz4, zstd, zstd:LEVEL.
    #[arg(long, env = "FLOE_COMPRESSION", default_value = "lz4")]
    compression: String,
    /// Abandon a segment not committed this long after its write began.
    #[arg(long, env = "FLOE_COMMIT_DEADLINE_MS", default_value_t = 30_000)]
    commit_deadline_ms: u64,
    /// End-to-end budget of a produce request (retries included); past it: 503
    /// deadline_exceeded, nothing committed.
    #[arg(long, env = "FLOE_PRODUCE_TIMEOUT_MS", default_value_t = 10_000)]
    produce_timeout_ms: u64,
    /// /readyz answers within this, naming the dependency that did not.
    #[arg(long, env = "FLOE_READY_TIMEOUT_MS", default_value_t = 800)]
    ready_timeout_ms: u64,
    /// Budget of one call to the index.
    #[arg(long, env = "FLOE_INDEX_TIMEOUT_MS", default_value_t = 5_000)]
    index_timeout_ms: u64,
    /// Budget of one call to the bucket (its retries included).
    #[arg(long, env = "FLOE_STORE_TIMEOUT_MS", default_value_t = 10_000)]
    store_timeout_ms: u64,
    /// How long a completed Idempotency-Key is remembered (a retry within it gets the first
    /// answer; after it the key is forgotten and may be reused).
    #[arg(long, env = "FLOE_IDEMPOTENCY_TTL_MS", default_value_t = 24 * 3600 * 1000)]
    idempotency_ttl_ms: u64,
    /// How long an idle producer session's sequences are kept (after it the producer is
    /// unknown and starts a new session; a retry older than this may duplicate).
    #[arg(long, env = "FLOE_PRODUCER_TTL_MS", default_value_t = 24 * 3600 * 1000)]
    producer_ttl_ms: u64,
    /// A transaction begun without a timeout is aborted this long after it began.
    #[arg(long, env = "FLOE_TRANSACTION_TIMEOUT_MS", default_value_t = 60_000)]
    transaction_timeout_ms: u64,
    /// How often the agent looks for transactions past their deadline (and half-messages
    /// due a check-back).
    #[arg(
        long,
        env = "FLOE_TRANSACTION_CHECK_INTERVAL_MS",
        default_value_t = 1_000
    )]
    transaction_check_interval_ms: u64,
    /// A half-message's first check-back comes this long after it was prepared.
    #[arg(long, env = "FLOE_HALF_FIRST_CHECK_MS", default_value_t = 6_000)]
    half_first_check_ms: u64,
    /// Then every this long...
    #[arg(long, env = "FLOE_HALF_CHECK_INTERVAL_MS", default_value_t = 30_000)]
    half_check_interval_ms: u64,
    /// ...at most this many times; then --half-default applies.
    #[arg(long, env = "FLOE_HALF_MAX_CHECKS", default_value_t = 15)]
    half_max_checks: u32,
    /// What happens to a half-message nobody answered for: rollback or commit.
    #[arg(long, env = "FLOE_HALF_DEFAULT", default_value = "rollback", value_parser = ["rollback", "commit"])]
    half_default: String,
    /// Budget of one check-back call.
    #[arg(long, env = "FLOE_HALF_CHECK_TIMEOUT_MS", default_value_t = 3_000)]
    half_check_timeout_ms: u64,
    /// Topic recording half-messages the default ended (created on first use).
    #[arg(long, env = "FLOE_HALF_AUDIT_TOPIC", default_value = "floe-half-audit")]
    half_audit_topic: String,
    /// Sweeper deletes unreferenced segments older than this.
    #[arg(long, env = "FLOE_ORPHAN_GRACE_MS", default_value_t = 600_000)]
    orphan_grace_ms: u64,
    #[arg(long, env = "FLOE_SWEEP_INTERVAL_MS", default_value_t = 60_000)]
    sweep_interval_ms: u64,
    /// All read caches together (with the SQLite index: its 18 MiB of page caches first;
    /// the rest: decoded row groups 5/8, whole small segments 2/8, footers 1/8);
    /// the agent logs and exports its whole memory budget at start.
    #[arg(long, env = "FLOE_CACHE_BYTES", default_value_t = 256 * 1024 * 1024)]
    cache_bytes: u64,
    /// For s3:// buckets: create the bucket at start-up if it does not exist.
    #[arg(long, env = "FLOE_CREATE_BUCKET")]
    create_bucket: bool,
    /// Long-polls re-read the end offset at least this often.
    #[arg(long, env = "FLOE_POLL_INTERVAL_MS", default_value_t = 1000)]
    poll_interval_ms: u64,
    /// Topic metadata cache lifetime (changes made via other agents show up after it).
    #[arg(long, env = "FLOE_TOPIC_CACHE_TTL_MS", default_value_t = 5000)]
    topic_cache_ttl_ms: u64,
    /// Name of this agent in segment keys ([A-Za-z0-9-]).
    #[arg(long, env = "FLOE_AGENT_ID", default_value = "agent")]
    agent_id: String,
    /// Where other agents reach this one to read the segments it wrote (RFC 0006, peer
    /// reads): a URL, `auto` (with a PostgreSQL index, http://<listen address> when that is
    /// a specific IP such as 127.0.0.1:7070; nothing on 0.0.0.0 / :: or with SQLite) or
    /// `none`.
    #[arg(long, env = "FLOE_ADVERTISE_URL", default_value = "auto")]
    advertise_url: String,
    /// Read segments other agents wrote from the bucket only (no peer reads, RFC 0006).
    #[arg(long, env = "FLOE_NO_PEER_READS")]
    no_peer_reads: bool,
    /// How often this agent renews its peer registration (others drop it after 3 of these).
    #[arg(long, env = "FLOE_PEER_HEARTBEAT_MS", default_value_t = 5000)]
    peer_heartbeat_ms: u64,
    /// Budget of one peer read; past it the bucket is read.
    #[arg(long, env = "FLOE_PEER_TIMEOUT_MS", default_value_t = 500)]
    peer_timeout_ms: u64,
    /// Queues: deliveries of one record before it goes to the dead-letter topic (a topic's
    /// `queue.max_deliveries` config overrides it).
    #[arg(long, env = "FLOE_MAX_DELIVERIES", default_value_t = 5)]
    max_deliveries: u32,
    /// Queues: a dead-letter write not finished this long after an agent took it is taken
    /// over by the next receive or settle on that partition.
    #[arg(long, env = "FLOE_DEAD_LETTER_RETRY_MS", default_value_t = 30_000)]
    dead_letter_retry_ms: u64,
    /// Retention by record time for topics that set no `retention_ms` (default: none).
    #[arg(long, env = "FLOE_DEFAULT_RETENTION_MS")]
    default_retention_ms: Option<u64>,
    /// Bytes kept per partition for topics without a `retention.bytes` config (default: none).
    #[arg(long, env = "FLOE_DEFAULT_RETENTION_BYTES")]
    default_retention_bytes: Option<u64>,
    #[command(flatten)]
    compaction: CompactionArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

/// The compactor: rewrites small entries into per-partition Parquet files under
/// topics/<topic>/partition=<p>/ (RFC 0004).
#[derive(Args, Debug)]
struct CompactionArgs {
    /// Turn the compactor off on this agent.
    #[arg(long, env = "FLOE_NO_COMPACTION")]
    no_compaction: bool,
    /// How often the agent looks for partitions to compact.
    #[arg(long, env = "FLOE_COMPACTION_INTERVAL_MS", default_value_t = 30_000)]
    compaction_interval_ms: u64,
    /// Write a partition file once this many bytes of small entries wait.
    #[arg(long, env = "FLOE_COMPACTION_TARGET_BYTES", default_value_t = 32 * 1024 * 1024)]
    compaction_target_bytes: u64,
    /// ...or once the oldest waiting entry is this old (with at least --compaction-min-entries).
    #[arg(long, env = "FLOE_COMPACTION_MAX_WAIT_MS", default_value_t = 600_000)]
    compaction_max_wait_ms: u64,
    #[arg(long, env = "FLOE_COMPACTION_MIN_ENTRIES", default_value_t = 4)]
    compaction_min_entries: usize,
    /// Entries with a record younger than this are left alone (the hot tail).
    #[arg(long, env = "FLOE_COMPACTION_MIN_AGE_MS", default_value_t = 60_000)]
    compaction_min_age_ms: u64,
    /// Row groups of partition files end at this many encoded bytes.
    #[arg(long, env = "FLOE_COMPACTION_ROW_GROUP_BYTES", default_value_t = 4 * 1024 * 1024)]
    compaction_row_group_bytes: usize,
    /// Memory for the latest offset per key when cleaning a compacted topic's partition.
    #[arg(long, env = "FLOE_COMPACTION_KEY_MAP_BYTES", default_value_t = 8 * 1024 * 1024)]
    compaction_key_map_bytes: usize,
}

#[derive(Args, Debug)]
struct LimitArgs {
    #[arg(long, env = "FLOE_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    #[arg(long, env = "FLOE_MAX_RECORD_BYTES", default_value_t = Limits::default().max_record_bytes)]
    max_record_bytes: usize,
    #[arg(long, env = "FLOE_MAX_RECORDS_PER_REQUEST", default_value_t = Limits::default().max_records_per_request)]
    max_records_per_request: usize,
    #[arg(long, env = "FLOE_MAX_HEADERS_PER_RECORD", default_value_t = Limits::default().max_headers_per_record)]
    max_headers_per_record: usize,
    #[arg(long, env = "FLOE_MAX_PARTITIONS", default_value_t = Limits::default().max_partitions)]
    max_partitions: u32,
    #[arg(long, env = "FLOE_MAX_TOPICS", default_value_t = Limits::default().max_topics)]
    max_topics: usize,
    #[arg(long, env = "FLOE_MAX_WAIT_MS", default_value_t = Limits::default().max_wait_ms)]
    max_wait_ms: u64,
    #[arg(long, env = "FLOE_MAX_FETCH_RECORDS", default_value_t = Limits::default().max_fetch_records)]
    max_fetch_records: usize,
    #[arg(long, env = "FLOE_MAX_FETCH_BYTES", default_value_t = Limits::default().max_fetch_bytes)]
    max_fetch_bytes: usize,
    #[arg(long, env = "FLOE_MAX_BUFFER_BYTES", default_value_t = Limits::default().max_buffer_bytes)]
    max_buffer_bytes: usize,
    #[arg(long, env = "FLOE_BUFFER_WAIT_MS", default_value_t = Limits::default().buffer_wait_ms)]
    buffer_wait_ms: u64,
    #[arg(long, env = "FLOE_MAX_RECEIVE_RECORDS", default_value_t = Limits::default().max_receive_records)]
    max_receive_records: usize,
    #[arg(long, env = "FLOE_MAX_VISIBILITY_MS", default_value_t = Limits::default().max_visibility_ms)]
    max_visibility_ms: u64,
    #[arg(long, env = "FLOE_MAX_IN_FLIGHT_PER_PARTITION", default_value_t = Limits::default().max_in_flight_per_partition)]
    max_in_flight_per_partition: u64,
    #[arg(long, env = "FLOE_MAX_GROUP_MEMBERS", default_value_t = Limits::default().max_group_members)]
    max_group_members: usize,
    #[arg(long, env = "FLOE_MIN_SESSION_TIMEOUT_MS", default_value_t = Limits::default().min_session_timeout_ms)]
    min_session_timeout_ms: u64,
    #[arg(long, env = "FLOE_MAX_SESSION_TIMEOUT_MS", default_value_t = Limits::default().max_session_timeout_ms)]
    max_session_timeout_ms: u64,
    /// Most index entries one files listing returns (longer logs are listed in pages).
    #[arg(long, env = "FLOE_MAX_FILE_ENTRIES", default_value_t = Limits::default().max_file_entries)]
    max_file_entries: u32,
    /// The longest timeout a transaction may ask for (an open transaction holds back
    /// read_committed readers of every partition it wrote).
    #[arg(long, env = "FLOE_MAX_TRANSACTION_TIMEOUT_MS", default_value_t = Limits::default().max_transaction_timeout_ms)]
    max_transaction_timeout_ms: u64,
}

impl ServeArgs {
    fn config(self) -> anyhow::Result<AgentConfig> {
        let dir = std::path::absolute(&self.data_dir).context("resolving --data-dir")?;
        let l = self.limits;
        let c = self.compaction;
        Ok(AgentConfig {
            default_retention_ms: self
                .default_retention_ms
                .map(|r| i64::try_from(r).unwrap_or(i64::MAX)),
            default_retention_bytes: self.default_retention_bytes,
            compaction: floe_agent::CompactionConfig {
                enabled: !c.no_compaction,
                interval: Duration::from_millis(c.compaction_interval_ms),
                target_bytes: c.compaction_target_bytes,
                max_wait: Duration::from_millis(c.compaction_max_wait_ms),
                min_entries: c.compaction_min_entries,
                min_age: Duration::from_millis(c.compaction_min_age_ms),
                row_group_bytes: c.compaction_row_group_bytes,
                lease: floe_agent::CompactionConfig::default().lease,
                key_map_bytes: c.compaction_key_map_bytes,
            },
            listen: self.listen,
            bucket: self
                .bucket
                .unwrap_or_else(|| format!("file://{}", dir.join("bucket").display())),
            index: self
                .index
                .unwrap_or_else(|| format!("sqlite://{}", dir.join("index.db").display())),
            flush_policy: self.flush_policy.parse().map_err(anyhow::Error::msg)?,
            linger: Duration::from_millis(self.linger_ms),
            flush_bytes: self.flush_bytes,
            max_inflight_flushes: self.max_inflight_flushes,
            compression: self.compression.parse().map_err(anyhow::Error::msg)?,
            rows_per_row_group: AgentConfig::default().rows_per_row_group,
            commit_deadline: Duration::from_millis(self.commit_deadline_ms),
            produce_timeout: Duration::from_millis(self.produce_timeout_ms),
            ready_timeout: Duration::from_millis(self.ready_timeout_ms),
            index_timeout: Duration::from_millis(self.index_timeout_ms),
            store_timeout: Duration::from_millis(self.store_timeout_ms),
            idempotency_ttl: Duration::from_millis(self.idempotency_ttl_ms),
            producer_ttl: Duration::from_millis(self.producer_ttl_ms),
            transactions: floe_agent::TxnConfig {
                default_timeout: Duration::from_millis(self.transaction_timeout_ms),
                check_interval: Duration::from_millis(self.transaction_check_interval_ms),
                half_first_check: Duration::from_millis(self.half_first_check_ms),
                half_check_interval: Duration::from_millis(self.half_check_interval_ms),
                half_max_checks: self.half_max_checks,
                half_default_commit: self.half_default == "commit",
                half_check_timeout: Duration::from_millis(self.half_check_timeout_ms),
                half_audit_topic: self.half_audit_topic,
            },
            orphan_grace: Duration::from_millis(self.orphan_grace_ms),
            sweep_interval: Duration::from_millis(self.sweep_interval_ms),
            cache_bytes: self.cache_bytes,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            topic_cache_ttl: Duration::from_millis(self.topic_cache_ttl_ms),
            agent_id: self.agent_id,
            advertise: self.advertise_url.parse().map_err(anyhow::Error::msg)?,
            peer_reads: !self.no_peer_reads,
            peer_heartbeat: Duration::from_millis(self.peer_heartbeat_ms),
            peer_timeout: Duration::from_millis(self.peer_timeout_ms),
            limits: Limits {
                max_body_bytes: l.max_body_bytes,
                max_record_bytes: l.max_record_bytes,
                max_records_per_request: l.max_records_per_request,
                max_headers_per_record: l.max_headers_per_record,
                max_partitions: l.max_partitions,
                max_topics: l.max_topics,
                max_wait_ms: l.max_wait_ms,
                max_fetch_records: l.max_fetch_records,
                max_fetch_bytes: l.max_fetch_bytes,
                max_buffer_bytes: l.max_buffer_bytes,
                buffer_wait_ms: l.buffer_wait_ms,
                max_receive_records: l.max_receive_records,
                max_visibility_ms: l.max_visibility_ms,
                max_in_flight_per_partition: l.max_in_flight_per_partition,
                max_group_members: l.max_group_members,
                min_session_timeout_ms: l.min_session_timeout_ms,
                max_session_timeout_ms: l.max_session_timeout_ms,
                max_file_entries: l.max_file_entries,
                max_transaction_timeout_ms: l.max_transaction_timeout_ms,
            },
            max_deliveries: self.max_deliveries,
            dead_letter_retry: Duration::from_millis(self.dead_letter_retry_ms),
        })
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let create = args.create_bucket;
    let outbox = args
        .outbox_db
        .clone()
        .map(|db| (db, args.outbox_table.clone(), args.outbox_topic.clone()));
    let config = args.config()?;
    bucket::ensure(&config.bucket, create).await?;
    let agent = floe_agent::Agent::start(config).await?;
    // Tests and scripts read this line to learn the port.
    println!("floe listening on http://{}", agent.addr);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let relay = match outbox {
        Some((db, table, topic)) => {
            let client = floe_client::Client::new(&format!("http://{}", agent.addr))?;
            let config = floe_outbox::RelayConfig {
                table,
                topic_template: topic,
                relay_id: format!("agent-{}-{}", agent.addr, std::process::id()),
                ..floe_outbox::RelayConfig::default()
            };
            Some(tokio::spawn(relay_forever(db, client, config, stopped)))
        }
        None => None,
    };
    wait_for_signal().await?;
    let _ = stop.send(true);
    if let Some(r) = relay {
        let _ = r.await;
    }
    agent.shutdown().await;
    Ok(())
}

/// The in-process outbox relay (`floe serve --outbox-db`): restarted a second after any
/// failure (e.g. the database is down) until shutdown.
async fn relay_forever(
    db: String,
    client: floe_client::Client,
    config: floe_outbox::RelayConfig,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let r = floe_outbox::run(&db, client.clone(), config.clone(), stopped.clone()).await;
        if *stopped.borrow() {
            return;
        }
        if let Err(e) = r {
            tracing::warn!(error = %e, "outbox relay stopped; restarting in 1 s");
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stopped.changed() => return,
        }
    }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), not a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Blocking threads of `floe serve` when not given: 2 per CPU, at least 4.
fn default_blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4))
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Cmd::Serve(a) = &cli.cmd {
        let n = a
            .max_blocking_threads
            .unwrap_or_else(default_blocking_threads);
        anyhow::ensure!(n > 0, "--max-blocking-threads must be > 0");
        let _ = rt.max_blocking_threads(n);
    }
    let rt = rt.enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Cmd::Serve(a) => serve(*a).await,
            Cmd::Topics { conn, cmd } => cli::topics(&conn, cmd).await,
            Cmd::Produce(a) => cli::produce(a).await,
            Cmd::Consume(a) => cli::consume(a).await,
            Cmd::Group { conn, cmd } => cli::group(&conn, cmd).await,
            Cmd::Queue { conn, cmd } => cli::queue(&conn, cmd).await,
            Cmd::Transactions { conn, cmd } => cli::transactions(&conn, cmd).await,
            Cmd::Half { conn, cmd } => cli::half(&conn, cmd).await,
            Cmd::Bench(a) => bench::run(a).await,
            Cmd::Outbox {
                cmd: OutboxCmd::Install { db, table, ranges },
            } => {
                floe_outbox::install_url(&db, &table, ranges)
                    .await
                    .context("installing the outbox")?;
                println!("outbox table {table:?} ready ({ranges} ranges)");
                Ok(())
            }
            Cmd::Outbox {
                cmd:
                    OutboxCmd::Run {
                        conn,
                        db,
                        table,
                        topic,
                        batch,
                        lease_ms,
                        poll_ms,
                        relay_id,
                    },
            } => {
                let agent = floe_client::Client::new(&conn.url)?;
                let config = floe_outbox::RelayConfig {
                    table,
                    topic_template: topic,
                    batch: batch.max(1),
                    lease: Duration::from_millis(lease_ms),
                    poll: Duration::from_millis(poll_ms),
                    relay_id: relay_id.unwrap_or_else(|| format!("relay-{}", std::process::id())),
                };
                let (stop, shutdown) = tokio::sync::watch::channel(false);
                let _signal = tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = stop.send(true);
                });
                floe_outbox::run(&db, agent, config, shutdown).await?;
                Ok(())
            }
            Cmd::Bucket {
                cmd: BucketCmd::Init { url },
            } => {
                bucket::ensure(&url, true).await?;
                println!("bucket {} ready", bucket::s3_bucket(&url).unwrap_or(&url));
                Ok(())
            }
            Cmd::Bucket {
                cmd: BucketCmd::Check { url },
            } => {
                bucket::ensure(&url, false).await?;
                println!("bucket {} ok", bucket::s3_bucket(&url).unwrap_or(&url));
                Ok(())
            }
            Cmd::Openapi => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&floe_agent::openapi::document(
                        &Limits::default()
                    ))?
                );
                Ok(())
            }
        }
    })
}
