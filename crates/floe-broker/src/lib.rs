//! Floe's engine beneath the protocols. A front end (today the HTTP API in `floe-agent`)
//! parses its wire format into the typed requests of this crate, calls a [`Broker`]
//! operation, and maps the typed result or [`BrokerError`] (kind + stable code) back to
//! its wire format. All validation, partitioning and state logic lives here; the pure
//! decisions themselves live in `floe-core`.
//!
//! - [`topics`]: create / list / describe / delete, topic metadata cache.
//! - [`records`]: produce (validation, partitioning, the agent-wide buffer), fetch with
//!   long-poll, and the tail behind push-style streams.
//! - [`produce`]: the produce buffer. Records from every request, topic and partition are
//!   batched for a linger, written as one Parquet segment, then committed in one index
//!   transaction; only then are producers answered.
//! - [`fetch`]: reads runs from segments through caches.
//! - [`groups`]: consumer groups (pub/sub) — membership, assignment, fenced commits.
//! - [`queues`]: share groups (queues) — receive, ack/release/reject/extend, dead-letters.
//! - [`state`]: group/queue state in the index, changed by compare-and-swap.
//! - [`sweeper`]: deletes segment objects no committed run refers to.
//! - [`compactor`]: rewrites small entries into per-partition files (RFC 0004).
//! - [`deadline`], [`store`], [`faults`]: layers around the bucket and the index.

pub mod compactor;
pub mod config;
pub mod deadline;
pub mod error;
pub mod faults;
pub mod fetch;
pub mod files;
pub mod groups;
mod ids;
pub mod metrics;
pub mod names;
pub mod notify;
pub mod peers;
pub mod produce;
pub mod queues;
pub mod records;
pub mod state;
pub mod store;
pub mod sweeper;
pub mod topics;
pub mod txns;

use std::sync::Arc;

use floe_index::Index;
use object_store::ObjectStore;
use tokio::sync::watch;
use tracing::Instrument;

pub use config::{AgentConfig, FlushPolicy};
pub use error::{BrokerError, BrokerResult, ErrorKind};

/// The engine: everything an operation needs. Cloning it is one reference count (the
/// HTTP front end clones its state for every request; cloning each handle inside — caches,
/// channels, clients — was ≈ 1.5 % of the agent's CPU at 64 producers, issue #9).
#[derive(Debug, Clone)]
pub struct Broker(Arc<Engine>);

impl std::ops::Deref for Broker {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.0
    }
}

/// What a [`Broker`] holds.
#[derive(Debug)]
pub struct Engine {
    pub config: Arc<AgentConfig>,
    pub store: Arc<dyn ObjectStore>,
    pub index: Arc<dyn Index>,
    pub metrics: metrics::Metrics,
    pub topics: topics::TopicCache,
    pub notifier: notify::Notifier,
    pub producer: produce::ProducerHandle,
    pub reader: fetch::Reader,
    /// Flips to true when the agent starts shutting down (ends long-polls).
    pub shutdown: watch::Receiver<bool>,
    /// The engine's wall clock (controlled in tests).
    pub clock: floe_core::clock::SharedClock,
    /// Outgoing calls: half-messages' check-backs (RFC 0005 §3).
    pub http: reqwest::Client,
    /// Peer reads (RFC 0006): the directory of agents and the client that asks them.
    pub peers: Arc<peers::Peers>,
}

/// The engine's background jobs: the produce buffer, the commit watcher, the sweeper.
#[derive(Debug)]
pub struct BrokerTasks {
    producer: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    watcher: tokio::task::JoinHandle<()>,
    compactor: tokio::task::JoinHandle<()>,
    keeper: tokio::task::JoinHandle<()>,
    /// Renews this agent's peer registration (RFC 0006) when it advertises a URL.
    advertiser: Option<tokio::task::JoinHandle<()>>,
}

impl BrokerTasks {
    /// Wait for the jobs to end: call after the shutdown signal and after every
    /// [`Broker`] clone is dropped (the produce buffer flushes what is left, then ends).
    pub async fn join(self) {
        let _ = self.producer.await;
        let _ = self.sweeper.await;
        let _ = self.watcher.await;
        let _ = self.compactor.await;
        let _ = self.keeper.await;
        if let Some(a) = self.advertiser {
            let _ = a.await;
        }
    }
}

impl Broker {
    /// Start the engine on `store` and `index`: every call to them gets a deadline
    /// (RFC 0001), the produce buffer, the commit watcher and the sweeper start.
    /// `shutdown` flipping to true ends long-polls and background jobs.
    /// `advertise`: the URL other agents reach this one at (RFC 0006), registered in the
    /// index every `peer_heartbeat`; `None`: not registered.
    pub fn start(
        config: AgentConfig,
        store: Arc<dyn ObjectStore>,
        index: Arc<dyn Index>,
        clock: floe_core::clock::SharedClock,
        shutdown: watch::Receiver<bool>,
        advertise: Option<String>,
    ) -> Result<(Self, BrokerTasks), StartError> {
        config.validate().map_err(StartError::Config)?;
        let config = Arc::new(config);
        let metrics = metrics::Metrics::new()?;
        let budget = config.memory_budget();
        for (part, bytes) in budget.parts() {
            metrics
                .memory_budget
                .with_label_values(&[part])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        tracing::info!(
            total_mib = budget.total() >> 20,
            run_cache_mib = budget.run_cache >> 20,
            object_cache_mib = budget.object_cache >> 20,
            footer_cache_mib = budget.footer_cache >> 20,
            produce_buffer_mib = budget.produce_buffer >> 20,
            flushes_mib = budget.flushes >> 20,
            compaction_mib = budget.compaction >> 20,
            index_cache_mib = budget.index_cache >> 20,
            "memory budget"
        );
        let store: Arc<dyn ObjectStore> = Arc::new(store::InstrumentedStore::new(
            Arc::new(deadline::DeadlineStore::new(store, config.store_timeout)),
            metrics.store_requests.clone(),
        ));
        let index: Arc<dyn Index> = Arc::new(deadline::DeadlineIndex::new(
            index,
            config.index_timeout,
            clock.clone(),
        ));
        let notifier = notify::Notifier::default();
        let peers = Arc::new(
            peers::Peers::new(&config, index.clone(), clock.clone(), metrics.clone())
                .map_err(StartError::Config)?,
        );
        let advertiser = advertise
            .map(|url| tokio::spawn(peers::advertise(peers.clone(), url, shutdown.clone())));
        let reader = fetch::Reader::new(
            &config,
            store.clone(),
            index.clone(),
            metrics.clone(),
            peers.clone(),
        );
        let (producer, producer_task) = produce::spawn(
            config.clone(),
            store.clone(),
            index.clone(),
            metrics.clone(),
            notifier.clone(),
            reader.clone(),
            clock.clone(),
        );
        // Commits made by other agents (shared index) wake this agent's long-polls.
        let sink_notifier = notifier.clone();
        let sink: floe_index::CommitSink =
            Arc::new(move |t, p, e| sink_notifier.committed(t, p, e));
        let watch_index = index.clone();
        let watch_stop = shutdown.clone();
        let watcher = tokio::spawn(
            async move { watch_index.watch_commits(sink, watch_stop).await }
                .instrument(tracing::info_span!("commit_watcher")),
        );
        let sweeper = tokio::spawn(sweeper::run(
            config.clone(),
            store.clone(),
            index.clone(),
            metrics.clone(),
            clock.clone(),
            shutdown.clone(),
        ));
        let compactor = tokio::spawn(compactor::run(
            compactor::Compactor {
                config: config.clone(),
                store: store.clone(),
                index: index.clone(),
                reader: reader.clone(),
                metrics: metrics.clone(),
                clock: clock.clone(),
                cursors: compactor::Cursors::default(),
            },
            shutdown.clone(),
        ));
        let broker = Self(Arc::new(Engine {
            topics: topics::TopicCache::new(index.clone(), config.topic_cache_ttl),
            config,
            store,
            index,
            metrics,
            notifier,
            producer,
            reader,
            shutdown: shutdown.clone(),
            clock,
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(2))
                .build()
                .map_err(|e| StartError::Config(format!("http client: {e}")))?,
            peers,
        }));
        let keeper = tokio::spawn(txns::keep(broker.clone(), shutdown));
        Ok((
            broker,
            BrokerTasks {
                producer: producer_task,
                sweeper,
                watcher,
                compactor,
                keeper,
                advertiser,
            },
        ))
    }

    /// A segment this agent holds whole in its object cache, for a peer (RFC 0006);
    /// `None` when it does not (the peer reads the bucket). Never reads the bucket.
    pub async fn serve_peer_segment(&self, key: &str) -> Option<bytes::Bytes> {
        let got = self.reader.cached_object(key).await;
        let outcome = if got.is_some() { "hit" } else { "miss" };
        self.metrics.peer_served.with_label_values(&[outcome]).inc();
        got
    }

    /// Readiness: `Ok` only when the bucket and the index both answer, each within
    /// `ready_timeout` (probed at once). The error names every failing dependency:
    /// `store_unavailable`, `index_unavailable` or `not_ready` (both).
    pub async fn ready(&self) -> BrokerResult<()> {
        let budget = self.config.ready_timeout;
        let timed_out = || format!("timed out after {} ms", budget.as_millis());
        let prefix = object_store::path::Path::from(produce::SEGMENT_PREFIX);
        let (index, store) = tokio::join!(
            tokio::time::timeout(budget, self.index.ping()),
            tokio::time::timeout(budget, self.store.list_with_delimiter(Some(&prefix))),
        );
        let index = match index {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(timed_out()),
        };
        let store = match store {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(timed_out()),
        };
        let (code, message) = match (&store, &index) {
            (None, None) => return Ok(()),
            (Some(b), None) => ("store_unavailable", format!("not ready: bucket: {b}")),
            (None, Some(i)) => ("index_unavailable", format!("not ready: index: {i}")),
            (Some(b), Some(i)) => ("not_ready", format!("not ready: bucket: {b}; index: {i}")),
        };
        tracing::warn!(code, %message, "readiness probe failed");
        Err(BrokerError::unavailable(code, message))
    }

    /// The Prometheus text exposition, group lag refreshed from the index first.
    pub async fn metrics_text(&self) -> String {
        if let Err(e) = groups::refresh_lag_metrics(self).await {
            tracing::warn!(error = %e, "group lag metrics not refreshed");
        }
        match self.index.dedup_state_counts().await {
            Ok((keys, producers)) => {
                self.metrics
                    .idempotency_keys_stored
                    .set(i64::try_from(keys).unwrap_or(i64::MAX));
                self.metrics
                    .producer_states_stored
                    .set(i64::try_from(producers).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "deduplication state metrics not refreshed"),
        }
        match self.index.object_totals().await {
            Ok((objects, bytes)) => {
                self.metrics
                    .bucket_objects
                    .set(i64::try_from(objects).unwrap_or(i64::MAX));
                self.metrics
                    .bucket_bytes
                    .set(i64::try_from(bytes).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "bucket metrics not refreshed"),
        }
        for (cache, bytes) in self.reader.cache_sizes().await {
            self.metrics
                .cache_bytes
                .with_label_values(&[cache])
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        self.metrics.render()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] store::StoreUrlError),
    #[error("index: {0}")]
    Index(#[from] floe_index::IndexError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}
