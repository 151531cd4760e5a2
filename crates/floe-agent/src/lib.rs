//! The Floe agent: the HTTP front end over the engine ([`floe_broker::Broker`]).
//!
//! - [`http`]: the router and the derived OpenAPI document; [`openapi`] completes it with
//!   the agent's limits and name patterns.
//! - [`routes`]: one module per resource; each handler parses (path, query, body via
//!   [`extract`]), calls one engine operation, and renders the result ([`render`]) or
//!   maps the engine error kind to a status ([`error`]).
//! - SSE framing lives in `routes::stream`; the engine's `records::Tail` feeds it.

pub mod error;
pub mod extract;
pub mod http;
pub mod openapi;
pub mod render;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use floe_broker::{Broker, BrokerTasks};
use floe_index::Index;
use object_store::ObjectStore;
use tokio::sync::watch;
use tracing::info;

pub use error::ApiError;
pub use floe_broker::config::{CompactionConfig, TxnConfig};
pub use floe_broker::{AgentConfig, faults, store};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Broker(#[from] floe_broker::StartError),
    #[error(transparent)]
    Store(#[from] floe_broker::store::StoreUrlError),
    #[error("index: {0}")]
    Index(#[from] floe_index::IndexError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
}

/// A running agent: the engine and the HTTP server in front of it.
#[derive(Debug)]
pub struct Agent {
    pub addr: SocketAddr,
    pub broker: Broker,
    shutdown_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    tasks: BrokerTasks,
}

impl Agent {
    /// Open the store and index named in `config` and start serving.
    pub async fn start(config: AgentConfig) -> Result<Self, StartError> {
        let store = floe_broker::store::open_store(&config.bucket)?;
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
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let listen = config.listen.clone();
        // Bound first: the address peers reach this agent at (RFC 0006) may be the bound one.
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .map_err(|e| StartError::Listen(listen.clone(), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Listen(listen.clone(), e))?;
        let advertise = config
            .advertise
            .url_for(addr, floe_index::is_shared_url(&config.index));
        let (broker, tasks) =
            Broker::start(config, store, index, clock, shutdown_rx.clone(), advertise)?;
        let app = http::router(broker.clone());
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
        info!(%addr, bucket = %broker.config.bucket, index = %redact(&broker.config.index), "floe agent listening");
        Ok(Self {
            addr,
            broker,
            shutdown_tx,
            server,
            tasks,
        })
    }

    /// Graceful shutdown: stop accepting, end long-polls, let in-flight produce requests be
    /// flushed and answered, then stop the background tasks.
    pub async fn shutdown(self) {
        info!("shutting down: flushing buffered records");
        let _ = self.shutdown_tx.send(true);
        let _ = self.server.await;
        // All request handlers are done; drop the last engine handle so the produce
        // buffer flushes what is left and ends.
        drop(self.broker);
        self.tasks.join().await;
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
