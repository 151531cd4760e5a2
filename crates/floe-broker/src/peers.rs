//! Peer reads of fresh segments (RFC 0006): an agent that needs a whole segment another
//! agent wrote asks that agent for the copy in its object cache first, and reads the
//! bucket only when the peer is unknown, down, slow, or no longer holds it.
//!
//! Agents find each other through the index's versioned state (`StateKind::Agent`, one
//! row per agent id: its advertised URL and when it last said so). Nothing here is
//! durable or needed for correctness: every failure falls back to the bucket.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use floe_core::clock::SharedClock;
use floe_index::{Index, IndexError, StateKey, StateKind};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};
use tracing::Instrument;

use crate::config::AgentConfig;
use crate::metrics::Metrics;

/// The path of the peer endpoint (the key goes in the `key` query parameter).
pub const PEER_SEGMENT_PATH: &str = "/v1/peer/segments";

/// Directory rows older than this many heartbeats are ignored (the agent is gone).
const STALE_HEARTBEATS: i64 = 3;

/// What an agent stores under its id.
#[derive(Debug, Serialize, Deserialize)]
struct Registration {
    url: String,
    seen_ms: i64,
}

fn state_key(agent_id: &str) -> StateKey {
    StateKey {
        kind: StateKind::Agent,
        topic_id: 0,
        group: agent_id.to_string(),
        partition: 0,
    }
}

#[derive(Debug, Default)]
struct Directory {
    urls: HashMap<String, String>,
    /// When the rows were last listed (engine clock); `None`: never.
    read_ms: Option<i64>,
    /// Peers that failed a read (unreachable, slow, wrong answer) are not asked again
    /// until this time (one heartbeat later): a hung peer costs one `peer_timeout`, not
    /// one per segment until its registration goes stale.
    down_until: HashMap<String, i64>,
}

/// How one peer read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    /// The peer answered but does not hold the segment any more.
    Miss,
    /// Unreachable, slow, or an answer that is not the segment.
    Error,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Error => "error",
        }
    }
}

#[derive(Debug)]
pub struct Peers {
    agent_id: String,
    enabled: bool,
    heartbeat: Duration,
    timeout: Duration,
    index: Arc<dyn Index>,
    clock: SharedClock,
    http: reqwest::Client,
    metrics: Metrics,
    directory: Mutex<Directory>,
}

impl Peers {
    /// # Errors
    /// The HTTP client could not be built.
    pub fn new(
        config: &AgentConfig,
        index: Arc<dyn Index>,
        clock: SharedClock,
        metrics: Metrics,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.peer_timeout)
            .timeout(config.peer_timeout)
            .build()
            .map_err(|e| format!("peer http client: {e}"))?;
        Ok(Self {
            agent_id: config.agent_id.clone(),
            enabled: config.peer_reads,
            heartbeat: config.peer_heartbeat,
            timeout: config.peer_timeout,
            index,
            clock,
            http,
            metrics,
            directory: Mutex::new(Directory::default()),
        })
    }

    fn heartbeat_ms(&self) -> i64 {
        i64::try_from(self.heartbeat.as_millis()).unwrap_or(i64::MAX)
    }

    /// The advertised URL of `agent`, from the directory (listed again at most once per
    /// heartbeat). `None` when the agent never registered or stopped saying it is alive.
    async fn url_of(&self, agent: &str) -> Option<String> {
        let mut d = self.directory.lock().await;
        let now = self.clock.now_ms();
        let due = d
            .read_ms
            .is_none_or(|t| now.saturating_sub(t) >= self.heartbeat_ms());
        if due {
            // Listed even when this fails, so that a broken index is not asked on every
            // segment read: the bucket serves meanwhile.
            d.read_ms = Some(now);
            match self.index.list_states(StateKind::Agent, None).await {
                Ok(rows) => {
                    let fresh = self.heartbeat_ms().saturating_mul(STALE_HEARTBEATS);
                    d.urls = rows
                        .into_iter()
                        .filter_map(|(k, v)| {
                            let r: Registration = serde_json::from_slice(&v.data).ok()?;
                            (now.saturating_sub(r.seen_ms) <= fresh).then_some((k.group, r.url))
                        })
                        .collect();
                }
                Err(e) => tracing::warn!(error = %e, "peer directory not read"),
            }
        }
        if d.down_until.get(agent).is_some_and(|&t| now < t) {
            return None;
        }
        d.urls.get(agent).cloned()
    }

    /// After a failed read: ask `agent` again only one heartbeat from now.
    async fn mark_down(&self, agent: &str) {
        let until = self.clock.now_ms().saturating_add(self.heartbeat_ms());
        let _ = self
            .directory
            .lock()
            .await
            .down_until
            .insert(agent.to_string(), until);
    }

    /// The whole segment `key` of `size` bytes from the agent that wrote it, or `None`
    /// (read the bucket): peer reads off, a key this agent wrote or one of no agent (a
    /// partition file), an unknown or stale peer, or any failure within `peer_timeout`.
    pub async fn fetch(&self, key: &str, size: u64) -> Option<Bytes> {
        if !self.enabled {
            return None;
        }
        let writer = crate::produce::segment_writer(key)?;
        if writer == self.agent_id {
            return None;
        }
        let url = self.url_of(writer).await?;
        let span = tracing::debug_span!("peer_read", peer = writer, key);
        let got = tokio::time::timeout(self.timeout, self.get(&url, key, size))
            .instrument(span)
            .await;
        let (outcome, bytes) = match got {
            Ok(Ok(Some(b))) => (Outcome::Hit, Some(b)),
            Ok(Ok(None)) => (Outcome::Miss, None),
            Ok(Err(e)) => {
                tracing::debug!(peer = writer, error = %e, "peer read failed; reading the bucket");
                (Outcome::Error, None)
            }
            Err(_) => (Outcome::Error, None),
        };
        self.metrics
            .peer_reads
            .with_label_values(&[outcome.label()])
            .inc();
        if outcome == Outcome::Error {
            self.mark_down(writer).await;
        }
        bytes
    }

    /// One GET of the peer endpoint: `Some` only for a 200 of exactly `size` bytes (read
    /// in chunks, never more than `size`).
    async fn get(&self, url: &str, key: &str, size: u64) -> Result<Option<Bytes>, String> {
        let mut target =
            reqwest::Url::parse(&format!("{url}{PEER_SEGMENT_PATH}")).map_err(|e| e.to_string())?;
        let _ = target.query_pairs_mut().append_pair("key", key);
        let mut resp = self
            .http
            .get(target)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n != size) {
            return Err("length differs from the index entry".into());
        }
        let cap = usize::try_from(size).map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(cap);
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            if buf.len() + chunk.len() > cap {
                return Err("longer than the index entry".into());
            }
            buf.extend_from_slice(&chunk);
        }
        if buf.len() != cap {
            return Err("shorter than the index entry".into());
        }
        Ok(Some(buf.freeze()))
    }

    /// Store this agent's registration (compare-and-set on its own row; a racing writer
    /// of the same id is retried over, the last one wins).
    async fn register(&self, url: &str) -> Result<(), IndexError> {
        let key = state_key(&self.agent_id);
        let data = serde_json::to_vec(&Registration {
            url: url.to_string(),
            seen_ms: self.clock.now_ms(),
        })
        .map_err(|e| IndexError::Corrupt(e.to_string()))?;
        for _ in 0..3 {
            let current = self.index.load_state(&key).await?.map(|v| v.version);
            if self.index.store_state(&key, current, data.clone()).await? {
                return Ok(());
            }
        }
        Err(IndexError::StateConflict(key))
    }
}

/// Background job: register `url` at start and every heartbeat until shutdown.
pub async fn advertise(peers: Arc<Peers>, url: String, mut shutdown: watch::Receiver<bool>) {
    loop {
        let span = tracing::info_span!("peer_register", url = %url);
        if let Err(e) = peers.register(&url).instrument(span).await {
            tracing::warn!(error = %e, "peer registration failed; other agents read the bucket");
        }
        tokio::select! {
            () = tokio::time::sleep(peers.heartbeat) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}
