//! Prometheus metrics of one agent.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, exponential_buckets,
};

/// The agent's metrics; cloning shares them (one `Arc`: every flush and request path holds
/// a copy, and cloning some forty counters one by one showed up at ~2 % of a profile).
#[derive(Debug, Clone)]
pub struct Metrics(std::sync::Arc<MetricSet>);

impl std::ops::Deref for Metrics {
    type Target = MetricSet;
    fn deref(&self) -> &MetricSet {
        &self.0
    }
}

#[derive(Debug)]
pub struct MetricSet {
    registry: Registry,
    pub records_produced: IntCounter,
    pub bytes_produced: IntCounter,
    pub records_fetched: IntCounter,
    pub bytes_fetched: IntCounter,
    pub segments_written: IntCounter,
    pub flush_failures: IntCounter,
    pub orphans_deleted: IntCounter,
    /// Records that consumers (group positions, queue partitions) skipped because
    /// retention dropped them before they were read.
    pub retention_skipped: IntCounter,
    pub store_requests: IntCounterVec,
    pub cache: IntCounterVec,
    pub flush_bytes: Histogram,
    pub flush_seconds: Histogram,
    pub produce_seconds: Histogram,
    /// Per flush: encoding the segment, its PUT, and its index commit (issue #9: where the
    /// flush time goes), and the runs (index rows) one commit carries.
    pub encode_seconds: Histogram,
    pub put_seconds: Histogram,
    pub commit_seconds: Histogram,
    pub commit_runs: Histogram,
    /// Queue records handed out / settled by action / dead-lettered.
    pub queue_delivered: IntCounter,
    pub queue_settled: IntCounterVec,
    pub queue_dead_lettered: IntCounter,
    /// Optimistic-concurrency retries on consumer state.
    pub state_conflicts: IntCounter,
    /// Produce requests answered from a completed Idempotency-Key (nothing written).
    pub idempotent_replays: IntCounter,
    /// Idempotency-Key requests refused: reused for another body, or in flight.
    pub idempotency_refusals: IntCounterVec,
    /// Producer-session batches answered with their first offsets (retries suppressed).
    pub producer_duplicates: IntCounter,
    /// Producer-session requests refused, by reason.
    pub producer_refusals: IntCounterVec,
    /// Producer sessions started (`POST /v1/producers`).
    pub producers_initialised: IntCounter,
    /// Transactions ended (RFC 0005), by outcome and by who ended them.
    pub transactions_ended: IntCounterVec,
    /// Open transactions, as the last check found them.
    pub transactions_open: IntGauge,
    /// Half-message check-backs, by answer (commit, rollback, unknown, failed).
    pub half_checks: IntCounterVec,
    /// Deduplication state in the index, read on every scrape: idempotency keys and
    /// producer sequence states.
    pub idempotency_keys_stored: IntGauge,
    pub bucket_objects: IntGauge,
    pub bucket_bytes: IntGauge,
    pub producer_states_stored: IntGauge,
    /// Compaction (RFC 0004): partition files written and swapped in, the records and
    /// input bytes they replaced, the entries they replaced, and swaps that found the
    /// index changed (the file was dropped).
    pub compactions: IntCounter,
    pub compacted_records: IntCounter,
    pub compacted_bytes: IntCounter,
    pub compacted_entries: IntCounter,
    pub compactions_lost: IntCounter,
    pub cleaned_records: IntCounter,
    /// The configured memory budget by part (`AgentConfig::memory_budget`).
    pub memory_budget: IntGaugeVec,
    /// What each read cache holds now, by its weigher (bytes), next to its budget part.
    pub cache_bytes: IntGaugeVec,
    /// Consumer group lag, recomputed from the index on every scrape.
    pub group_lag: IntGaugeVec,
    /// Peer reads (RFC 0006) by outcome: hit (bytes from the writer), miss (the writer no
    /// longer caches it), error (unreachable, slow, wrong answer); misses and errors read
    /// the bucket.
    pub peer_reads: IntCounterVec,
    /// Segments asked of this agent by its peers, by outcome (hit, miss).
    pub peer_served: IntCounterVec,
}

fn gauge(r: &Registry, name: &str, help: &str) -> Result<IntGauge, prometheus::Error> {
    let g = IntGauge::new(name, help)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn counter(r: &Registry, name: &str, help: &str) -> Result<IntCounter, prometheus::Error> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: Vec<f64>,
) -> Result<Histogram, prometheus::Error> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let store_requests = counter_vec(
            &r,
            "floe_object_store_requests_total",
            "Object store requests by operation",
            &["op"],
        )?;
        let idempotency_refusals = counter_vec(
            &r,
            "floe_idempotency_refusals_total",
            "Idempotency-Key produce requests refused, by reason (reused, in_flight)",
            &["reason"],
        )?;
        let producer_refusals = counter_vec(
            &r,
            "floe_producer_refusals_total",
            "Producer-session produce requests refused, by reason (out_of_order_sequence, producer_fenced, unknown_producer)",
            &["reason"],
        )?;
        let transactions_ended = counter_vec(
            &r,
            "floe_transactions_ended_total",
            "Transactions ended, by outcome (committed, aborted) and by (producer, timeout, check_back, default, reinit)",
            &["outcome", "by"],
        )?;
        let half_checks = counter_vec(
            &r,
            "floe_half_message_checks_total",
            "Half-message check-backs by answer (commit, rollback, unknown, failed)",
            &["answer"],
        )?;
        let memory_budget = gauge_vec(
            &r,
            "floe_memory_budget_bytes",
            "The agent's configured memory bounds by part (caches, produce buffer, flushes in flight)",
            &["part"],
        )?;
        let cache_bytes = gauge_vec(
            &r,
            "floe_cache_bytes",
            "Bytes each read cache holds now, as its weigher counts them (refreshed at every scrape)",
            &["cache"],
        )?;
        for reason in [
            "out_of_order_sequence",
            "producer_fenced",
            "unknown_producer",
            "transaction_not_open",
            "transaction_open",
        ] {
            let _ = producer_refusals.with_label_values(&[reason]);
        }
        for op in ["put", "get", "list", "delete"] {
            let _ = store_requests.with_label_values(&[op]);
        }
        let cache = counter_vec(
            &r,
            "floe_segment_cache_total",
            "Segment cache lookups by result (hit/miss)",
            &["result"],
        )?;
        let queue_settled = counter_vec(
            &r,
            "floe_queue_settled_total",
            "Queue receipts settled, by action",
            &["action"],
        )?;
        let group_lag = gauge_vec(
            &r,
            "floe_group_lag",
            "Records after the committed offset, per consumer group and partition",
            &["topic", "group", "partition"],
        )?;
        let peer_reads = counter_vec(
            &r,
            "floe_peer_reads_total",
            "Whole segments asked of the agent that wrote them, by outcome (hit, miss, error); misses and errors read the bucket",
            &["outcome"],
        )?;
        let peer_served = counter_vec(
            &r,
            "floe_peer_served_total",
            "Segments other agents asked this agent for, by outcome (hit, miss)",
            &["outcome"],
        )?;
        for o in ["hit", "miss", "error"] {
            let _ = peer_reads.with_label_values(&[o]);
        }
        for o in ["hit", "miss"] {
            let _ = peer_served.with_label_values(&[o]);
        }
        let secs = exponential_buckets(0.0005, 2.0, 16)?;
        Ok(Self(std::sync::Arc::new(MetricSet {
            records_produced: counter(
                &r,
                "floe_records_produced_total",
                "Records acked to producers",
            )?,
            bytes_produced: counter(
                &r,
                "floe_bytes_produced_total",
                "Record bytes acked to producers",
            )?,
            records_fetched: counter(
                &r,
                "floe_records_fetched_total",
                "Records returned to consumers",
            )?,
            bytes_fetched: counter(
                &r,
                "floe_bytes_fetched_total",
                "Record bytes returned to consumers",
            )?,
            segments_written: counter(
                &r,
                "floe_segments_written_total",
                "Segment objects written and committed",
            )?,
            flush_failures: counter(
                &r,
                "floe_flush_failures_total",
                "Flushes that failed (producers got 503)",
            )?,
            orphans_deleted: counter(
                &r,
                "floe_orphan_segments_deleted_total",
                "Unreferenced segment objects deleted by the sweeper",
            )?,
            flush_bytes: histogram(
                &r,
                "floe_flush_bytes",
                "Segment object size per flush",
                exponential_buckets(1024.0, 2.0, 16)?,
            )?,
            flush_seconds: histogram(
                &r,
                "floe_flush_seconds",
                "Encode + PUT + commit time per flush",
                secs.clone(),
            )?,
            produce_seconds: histogram(
                &r,
                "floe_produce_seconds",
                "Produce request latency (receipt to ack)",
                secs.clone(),
            )?,
            encode_seconds: histogram(
                &r,
                "floe_flush_encode_seconds",
                "Segment encoding time per flush",
                secs.clone(),
            )?,
            put_seconds: histogram(
                &r,
                "floe_flush_put_seconds",
                "Segment PUT time per flush",
                secs.clone(),
            )?,
            commit_seconds: histogram(
                &r,
                "floe_flush_commit_seconds",
                "Index commit time per flush (the call, waiting for nothing else)",
                secs,
            )?,
            commit_runs: histogram(
                &r,
                "floe_flush_commit_runs",
                "Runs (index rows) per flush commit",
                exponential_buckets(1.0, 2.0, 14)?,
            )?,
            queue_delivered: counter(
                &r,
                "floe_queue_delivered_total",
                "Queue records handed out to consumers (redeliveries included)",
            )?,
            queue_dead_lettered: counter(
                &r,
                "floe_queue_dead_lettered_total",
                "Queue records written to a dead-letter topic",
            )?,
            state_conflicts: counter(
                &r,
                "floe_consumer_state_conflicts_total",
                "Compare-and-swap conflicts on group/queue state (retried)",
            )?,
            retention_skipped: counter(
                &r,
                "floe_retention_skipped_records_total",
                "Records consumers skipped because retention dropped them before they were read",
            )?,
            idempotent_replays: counter(
                &r,
                "floe_idempotent_replays_total",
                "Produce requests answered with the offsets of an earlier request with the same Idempotency-Key (duplicates suppressed)",
            )?,
            idempotency_refusals,
            producer_duplicates: counter(
                &r,
                "floe_producer_duplicates_total",
                "Producer-session requests answered with the offsets of their first commit (duplicates suppressed)",
            )?,
            producer_refusals,
            transactions_ended,
            half_checks,
            transactions_open: gauge(
                &r,
                "floe_transactions_open",
                "Open transactions (and half-messages) in the index, as the last check found them",
            )?,
            memory_budget,
            cache_bytes,
            idempotency_keys_stored: gauge(
                &r,
                "floe_idempotency_keys_stored",
                "Idempotency keys held in the index (read on every scrape)",
            )?,
            bucket_objects: gauge(
                &r,
                "floe_bucket_objects",
                "Objects the index records in the bucket (committed segments and partition files not yet deleted; read on every scrape)",
            )?,
            bucket_bytes: gauge(
                &r,
                "floe_bucket_bytes",
                "Total size of the objects the index records in the bucket (read on every scrape)",
            )?,
            producer_states_stored: gauge(
                &r,
                "floe_producer_states_stored",
                "Producer sequence states (producer, topic, partition) held in the index (read on every scrape)",
            )?,
            producers_initialised: counter(
                &r,
                "floe_producers_initialised_total",
                "Producer sessions started (a named producer's new epoch fences the older ones)",
            )?,
            compactions: counter(
                &r,
                "floe_compactions_total",
                "Partition files written by the compactor and swapped into the index",
            )?,
            compacted_records: counter(
                &r,
                "floe_compacted_records_total",
                "Records rewritten into partition files",
            )?,
            compacted_bytes: counter(
                &r,
                "floe_compacted_input_bytes_total",
                "Bytes of index entries read by the compactor (compressed, as stored)",
            )?,
            compacted_entries: counter(
                &r,
                "floe_compacted_entries_total",
                "Index entries replaced by partition files",
            )?,
            compactions_lost: counter(
                &r,
                "floe_compactions_lost_total",
                "Compactions whose swap found the index changed (retention, another compactor); the file was dropped",
            )?,
            cleaned_records: counter(
                &r,
                "floe_compaction_cleaned_records_total",
                "Records a compacted topic's cleaning left out (superseded by a later record of the key, or expired tombstones)",
            )?,
            queue_settled,
            group_lag,
            peer_reads,
            peer_served,
            store_requests,
            cache,
            registry: r,
        })))
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics; an error yields what was written.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
