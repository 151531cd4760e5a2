//! The orphan sweeper: deletes segment objects (flush segments and partition files) that no
//! committed run refers to and that are older than the grace period. Orphans come from
//! flushes whose commit failed or never happened (e.g. the agent was killed between PUT and
//! commit), from deleted topics, from retention, and from compaction (the objects whose
//! entries it replaced, and files of swaps that lost or never happened).
//!
//! Safety: a flush abandons its commit when more than `commit_deadline` has passed since
//! its PUT began, and `orphan_grace >= 2 * commit_deadline`, so a segment that may still be
//! committed is never old enough to be swept.
//!
//! Finding them: the index records every object it commits (RFC 0004), so one query finds
//! the committed objects nothing refers to any more (retention, compaction, deleted
//! topics) at every pass. Objects that were never committed (a failed or killed flush, a
//! lost compaction swap) are only in the bucket: it is listed once per `orphan_grace`
//! (they cannot be deleted sooner anyway).

use std::sync::Arc;
use std::time::Duration;

use floe_core::clock::SharedClock;
use floe_index::Index;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::compactor::{PARTITION_FILE_PREFIX, partition_file_created_ms};
use crate::config::AgentConfig;
use crate::metrics::Metrics;
use crate::produce::{SEGMENT_PREFIX, segment_created_ms};
use crate::topics::{RETENTION_BYTES_CONFIG, parse_retention_bytes};

pub async fn run(
    config: Arc<AgentConfig>,
    store: Arc<dyn ObjectStore>,
    index: Arc<dyn Index>,
    metrics: Metrics,
    clock: SharedClock,
    mut shutdown: watch::Receiver<bool>,
) {
    let producer_ttl = config.producer_ttl;
    let grace_ms = i64::try_from(config.orphan_grace.as_millis()).unwrap_or(i64::MAX);
    let mut listed_at: Option<i64> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.sweep_interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let now = clock.now_ms();
        let list = listed_at.is_none_or(|t| now.saturating_sub(t) >= grace_ms);
        let span = info_span!("sweep", list_bucket = list);
        match sweep_once(&store, index.as_ref(), config.orphan_grace, now, list)
            .instrument(span)
            .await
        {
            Ok(n) => {
                if list {
                    listed_at = Some(now);
                }
                if n > 0 {
                    metrics.orphans_deleted.inc_by(n);
                    info!(deleted = n, "swept orphan segments");
                }
            }
            Err(e) => warn!(error = %e, "sweep failed; will retry"),
        }
        if let Err(e) = apply_retention(index.as_ref(), &config, clock.now_ms())
            .instrument(info_span!("retention"))
            .await
        {
            warn!(error = %e, "retention pass failed; will retry");
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
        let ttl = i64::try_from(producer_ttl.as_millis()).unwrap_or(i64::MAX);
        match index
            .expire_producers(clock.now_ms().saturating_sub(ttl))
            .instrument(info_span!("expire_producers"))
            .await
        {
            Ok(0) => {}
            Ok(n) => info!(forgotten = n, "expired idle producer sequence state"),
            Err(e) => warn!(error = %e, "producer expiry failed; will retry"),
        }
    }
}

/// One retention pass at `now_ms` (RFC 0004): every topic with a retention — its own
/// (`retention_ms`, topic config `retention.bytes`) or the agent's default — drops, by time,
/// the runs whose newest record is older than that and, by size, the oldest runs beyond
/// the partition's byte budget; their objects become unreferenced and go through the safe
/// deletion path above. Returns the partitions whose start moved.
pub async fn apply_retention(
    index: &dyn Index,
    config: &AgentConfig,
    now_ms: i64,
) -> Result<usize, SweepError> {
    let mut moved = 0;
    for t in index.list_topics().await? {
        // A compact-only topic keeps every key's latest record, however old.
        if !crate::topics::cleanup_policy(&t).delete {
            continue;
        }
        let by_time = t.retention_ms.or(config.default_retention_ms);
        let by_size = t
            .config
            .get(RETENTION_BYTES_CONFIG)
            .and_then(|v| parse_retention_bytes(v))
            .or(config.default_retention_bytes);
        let mut changed = Vec::new();
        if let Some(retention) = by_time {
            changed.extend(
                index
                    .apply_retention(t.id, now_ms.saturating_sub(retention))
                    .await?,
            );
        }
        if let Some(max_bytes) = by_size {
            changed.extend(index.apply_size_retention(t.id, max_bytes).await?);
        }
        for (p, start) in &changed {
            info!(topic = %t.name, partition = p, start_offset = start, "retention advanced the log start");
        }
        moved += changed.len();
    }
    Ok(moved)
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("index: {0}")]
    Index(#[from] floe_index::IndexError),
}

/// Unreferenced objects taken from the index per query, and queries per pass.
const FORGET_BATCH: u32 = 1000;
const FORGET_BATCHES_PER_PASS: usize = 20;
/// Listed objects asked about per index call (`segments_referenced`).
const LISTED_BATCH: usize = 1000;

/// One pass at wall-clock time `now_ms`: the objects the index recorded and nothing refers
/// to any more, and with `list_bucket` whatever else unreferenced lies under the prefixes.
/// Returns how many objects were deleted.
///
/// Safe by construction (RFC 0004): first the index's deletion boundary is advanced to
/// `now - grace` — from then on the index refuses to commit any segment created before it —
/// and only then are segments older than the boundary that no run refers to deleted. A
/// commit that stalled (lock waits, a paused process, a skewed clock) is either visible
/// as a reference when the sweeper looks, or refused: never an ack for a deleted object.
pub async fn sweep_once(
    store: &Arc<dyn ObjectStore>,
    index: &dyn Index,
    grace: Duration,
    now_ms: i64,
    list_bucket: bool,
) -> Result<u64, SweepError> {
    let cutoff = now_ms - i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
    let boundary = index.advance_deletion_boundary(cutoff).await?;
    let mut deleted = 0;
    for _ in 0..FORGET_BATCHES_PER_PASS {
        let keys = index.unreferenced_objects(boundary, FORGET_BATCH).await?;
        for k in &keys {
            match store.delete(&Path::from(k.as_str())).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                Err(e) => return Err(e.into()),
            }
        }
        // Deleted first, forgotten after: a crash in between only repeats a deletion.
        index.forget_objects(&keys).await?;
        if keys.len() < FORGET_BATCH as usize {
            break;
        }
    }
    if !list_bucket {
        return Ok(deleted);
    }
    let mut gone = Vec::new();
    // Flush segments, and partition files written by the compactor.
    let mut listing = store
        .list(Some(&Path::from(SEGMENT_PREFIX)))
        .chain(store.list(Some(&Path::from(PARTITION_FILE_PREFIX))));
    // Objects older than the boundary, asked about a batch at a time.
    let mut candidates = Vec::with_capacity(LISTED_BATCH);
    loop {
        let next = listing.next().await.transpose()?;
        let done = next.is_none();
        if let Some(meta) = next {
            // Floe's keys carry their creation time; anything else under the prefixes (never
            // committed by construction) goes by its modification time.
            let key = meta.location.as_ref();
            let created = segment_created_ms(key)
                .or_else(|| partition_file_created_ms(key))
                .unwrap_or_else(|| meta.last_modified.timestamp_millis());
            if created < boundary {
                candidates.push(key.to_string());
            }
        }
        if candidates.len() >= LISTED_BATCH || (done && !candidates.is_empty()) {
            let referenced = index.segments_referenced(&candidates).await?;
            for (key, referenced) in candidates.drain(..).zip(referenced) {
                if referenced {
                    continue;
                }
                match store.delete(&Path::from(key.as_str())).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e.into()),
                }
                gone.push(key);
            }
        }
        if done {
            break;
        }
    }
    index.forget_objects(&gone).await?;
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use floe_index::{NewTopic, RunCommit, SegmentCommit};
    use object_store::PutPayload;

    /// The index's record of committed objects finds what to delete without listing the
    /// bucket; objects never committed are only found by a listing.
    #[tokio::test]
    async fn tracked_objects_are_swept_without_listing_and_orphans_by_listing() {
        let dir = tempfile::tempdir().unwrap();
        let index = floe_index::open(&format!("sqlite://{}", dir.path().join("i.db").display()))
            .await
            .unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let t = index
            .create_topic(NewTopic {
                name: "t".into(),
                partitions: 1,
                retention_ms: None,
                config: Default::default(),
                created_ms: 0,
                max_topics: 10,
            })
            .await
            .unwrap();
        let (committed, orphan) = (
            crate::produce::segment_key(1_000, "a"),
            crate::produce::segment_key(1_000, "b"),
        );
        for k in [&committed, &orphan] {
            let _ = store
                .put(&Path::from(k.as_str()), PutPayload::from_static(b"x"))
                .await
                .unwrap();
        }
        let _ = index
            .commit(SegmentCommit {
                key: committed.clone(),
                size: 1,
                runs: vec![RunCommit {
                    topic_id: t.id,
                    partition: 0,
                    records: 1,
                    row_group_first: 0,
                    row_group_count: 1,
                    byte_start: 0,
                    byte_end: 1,
                    min_timestamp_ms: 0,
                    max_timestamp_ms: 0,
                }],
                deadline_unix_ms: i64::MAX,
                created_ms: 1_000,
                state_writes: vec![],
                idempotency: vec![],
                producers: vec![],
            })
            .await
            .unwrap();
        let grace = Duration::from_secs(1);
        let exists = |k: String| {
            let store = store.clone();
            async move { store.head(&Path::from(k.as_str())).await.is_ok() }
        };
        // Referenced: kept.
        assert_eq!(
            sweep_once(&store, index.as_ref(), grace, 10_000, false)
                .await
                .unwrap(),
            0
        );
        assert!(index.delete_topic("t").await.unwrap());
        assert_eq!(
            sweep_once(&store, index.as_ref(), grace, 10_000, false)
                .await
                .unwrap(),
            1
        );
        assert!(!exists(committed.clone()).await, "found through the index");
        assert!(
            exists(orphan.clone()).await,
            "never committed: not in the index"
        );
        assert_eq!(index.object_totals().await.unwrap(), (0, 0), "forgotten");
        assert_eq!(
            sweep_once(&store, index.as_ref(), grace, 10_000, true)
                .await
                .unwrap(),
            1
        );
        assert!(!exists(orphan).await, "found by the listing");
    }
}
