//! The Floe agent: a stateless HTTP server in front of an object store and a metadata index.
//!
//! - [`produce`]: the agent-wide produce buffer. Records from every request, topic and
//!   partition are batched for a linger, written as one Parquet segment, then committed in
//!   one index transaction; only then are producers answered.
//! - [`fetch`]: reads runs from segments through caches; long-polls on commit notifications.
//! - [`sweeper`]: deletes segment objects no committed run refers to.
//! - [`groups`]: consumer groups (pub/sub) — membership, assignment, fenced commits.
//! - [`queues`]: share groups (queues) — receive, ack/release/reject/extend, dead-letters.
//! - [`state`]: group/queue state in the index, changed by compare-and-swap.
//! - [`stream`]: Server-Sent Events tail of a partition.
//! - [`http`]: the JSON API.

pub mod config;
pub mod deadline;
pub mod error;
pub mod faults;
pub mod fetch;
pub mod groups;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod produce;
pub mod queues;
pub mod state;
pub mod store;
pub mod stream;
pub mod sweeper;
pub mod topics;

use std::net::SocketAddr;
use std::sync::Arc;

use floe_index::Index;
use object_store::ObjectStore;
use tokio::sync::watch;
use tracing::{Instrument, info};

pub use config::AgentConfig;
pub use error::ApiError;

/// Everything a request handler needs.
#[derive(Debug, Clone)]
pub struct Shared {
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
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    pub addr: SocketAddr,
    pub shared: Shared,
    shutdown_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    producer_task: tokio::task::JoinHandle<()>,
    sweeper_task: tokio::task::JoinHandle<()>,
    watcher_task: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Open the store and index named in `config` and start serving.
    pub async fn start(config: AgentConfig) -> Result<Self, StartError> {
        let store = store::open_store(&config.bucket)?;
        let index = floe_index::open(&config.index).await?;
        Self::start_with(config, store, index).await
    }

    /// Start with a given store and index (tests wrap the store in fault layers).
    pub async fn start_with(
        config: AgentConfig,
        store: Arc<dyn ObjectStore>,
        index: Arc<dyn Index>,
    ) -> Result<Self, StartError> {
        Self::start_with_clock(config, store, index, floe_core::clock::system()).await
    }

    /// Start with a given store, index and wall clock: every expiry the engine decides
    /// (sessions, visibility timeouts, dead-letter take-over, orphan age, record
    /// timestamps) reads `clock`, so tests can move time instead of sleeping.
    pub async fn start_with_clock(
        config: AgentConfig,
        store: Arc<dyn ObjectStore>,
        index: Arc<dyn Index>,
        clock: floe_core::clock::SharedClock,
    ) -> Result<Self, StartError> {
        config.validate().map_err(StartError::Config)?;
        let config = Arc::new(config);
        let metrics = metrics::Metrics::new()?;
        // Every call to the bucket and the index has a deadline (RFC 0001).
        let store: Arc<dyn ObjectStore> = Arc::new(store::InstrumentedStore::new(
            Arc::new(deadline::DeadlineStore::new(store, config.store_timeout)),
            metrics.store_requests.clone(),
        ));
        let index: Arc<dyn Index> = Arc::new(deadline::DeadlineIndex::new(
            index,
            config.index_timeout,
            clock.clone(),
        ));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let notifier = notify::Notifier::default();
        let reader = fetch::Reader::new(&config, store.clone(), index.clone(), metrics.clone());
        let (producer, producer_task) = produce::spawn(
            config.clone(),
            store.clone(),
            index.clone(),
            metrics.clone(),
            notifier.clone(),
            reader.clone(),
            clock.clone(),
        );
        let shared = Shared {
            topics: topics::TopicCache::new(index.clone(), config.topic_cache_ttl),
            config: config.clone(),
            store: store.clone(),
            index: index.clone(),
            metrics: metrics.clone(),
            notifier,
            producer,
            reader,
            shutdown: shutdown_rx.clone(),
            clock,
        };
        // Commits made by other agents (shared index) wake this agent's long-polls.
        let sink_notifier = shared.notifier.clone();
        let sink: floe_index::CommitSink =
            Arc::new(move |t, p, e| sink_notifier.committed(t, p, e));
        let watch_index = index.clone();
        let watch_stop = shutdown_rx.clone();
        let watcher_task = tokio::spawn(
            async move { watch_index.watch_commits(sink, watch_stop).await }
                .instrument(tracing::info_span!("commit_watcher")),
        );
        let sweeper_task = tokio::spawn(sweeper::run(
            config.clone(),
            store,
            index,
            metrics,
            shared.clock.clone(),
            shutdown_rx.clone(),
        ));
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(config.listen.clone(), e))?;
        let app = http::router(shared.clone());
        let mut stop = shutdown_rx;
        let server = tokio::spawn(async move {
            let graceful = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::error!(error = %e, "http server failed");
            }
        });
        info!(%addr, bucket = %config.bucket, index = %redact(&config.index), "floe agent listening");
        Ok(Self {
            addr,
            shared,
            shutdown_tx,
            server,
            producer_task,
            sweeper_task,
            watcher_task,
        })
    }

    /// Graceful shutdown: stop accepting, end long-polls, let in-flight produce requests be
    /// flushed and answered, then stop the background tasks.
    pub async fn shutdown(self) {
        info!("shutting down: flushing buffered records");
        let _ = self.shutdown_tx.send(true);
        let _ = self.server.await;
        // All request handlers are done; close the produce buffer so it flushes what is left.
        drop(self.shared);
        let _ = self.producer_task.await;
        let _ = self.sweeper_task.await;
        let _ = self.watcher_task.await;
        info!("shutdown complete");
    }
}

/// Hide credentials in a URL before logging it.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}
