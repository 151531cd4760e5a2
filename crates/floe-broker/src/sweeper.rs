//! The orphan sweeper: deletes segment objects that no committed run refers to and that
//! are older than the grace period. Orphans come from flushes whose commit failed or never
//! happened (e.g. the agent was killed between PUT and commit) and from deleted topics.
//!
//! Safety: a flush abandons its commit when more than `commit_deadline` has passed since
//! its PUT began, and `orphan_grace >= 2 * commit_deadline`, so a segment that may still be
//! committed is never old enough to be swept.

use std::sync::Arc;
use std::time::Duration;

use floe_core::clock::SharedClock;
use floe_index::Index;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::produce::SEGMENT_PREFIX;

pub async fn run(
    config: Arc<AgentConfig>,
    store: Arc<dyn ObjectStore>,
    index: Arc<dyn Index>,
    metrics: Metrics,
    clock: SharedClock,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.sweep_interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let span = info_span!("sweep");
        match sweep_once(&store, index.as_ref(), config.orphan_grace, clock.now_ms())
            .instrument(span)
            .await
        {
            Ok(n) => {
                if n > 0 {
                    metrics.orphans_deleted.inc_by(n);
                    info!(deleted = n, "swept orphan segments");
                }
            }
            Err(e) => warn!(error = %e, "sweep failed; will retry"),
        }
        match index
            .expire_idempotency(clock.now_ms())
            .instrument(info_span!("expire_idempotency"))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(forgotten = n, "expired idempotency keys"),
            Err(e) => warn!(error = %e, "idempotency expiry failed; will retry"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("index: {0}")]
    Index(#[from] floe_index::IndexError),
}

/// One pass at wall-clock time `now_ms`. Returns how many objects were deleted.
pub async fn sweep_once(
    store: &Arc<dyn ObjectStore>,
    index: &dyn Index,
    grace: Duration,
    now_ms: i64,
) -> Result<u64, SweepError> {
    let cutoff = now_ms - grace.as_millis() as i64;
    let mut listing = store.list(Some(&Path::from(SEGMENT_PREFIX)));
    let mut deleted = 0;
    while let Some(meta) = listing.next().await {
        let meta = meta?;
        if meta.last_modified.timestamp_millis() > cutoff {
            continue;
        }
        if index.segment_referenced(meta.location.as_ref()).await? {
            continue;
        }
        match store.delete(&meta.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(deleted)
}
