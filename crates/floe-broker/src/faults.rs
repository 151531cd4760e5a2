//! Fault-injection layers for tests: a store and an index that fail or hang on demand.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use floe_index::{
    CommitSink, Committed, Index, IndexError, NewTopic, PartitionOffsets, RunEntry, SegmentCommit,
    StateKey, StateKind, TopicMeta, Versioned,
};

pub use crate::store::FaultStore;
use crate::store::wait_while;

/// An index whose every call hangs while the switch is on (a stopped server), whose
/// next N commits land but answer with an error (the answer lost on the way back), and
/// whose next `runs_from` can answer an earlier snapshot (a reader that looked the index up
/// just before compaction swapped the entries and the sweeper deleted their objects).
#[derive(Debug, Clone)]
pub struct FaultIndex {
    inner: Arc<dyn Index>,
    hanging: Arc<AtomicBool>,
    lose_answers: Arc<AtomicU32>,
    stale_runs: StaleRuns,
}

/// A `runs_from` answer to give once instead of the index's.
pub type StaleRuns = Arc<std::sync::Mutex<Option<Vec<RunEntry>>>>;

impl FaultIndex {
    pub fn new(inner: Arc<dyn Index>) -> Self {
        Self {
            inner,
            hanging: Arc::new(AtomicBool::new(false)),
            lose_answers: Arc::new(AtomicU32::new(0)),
            stale_runs: StaleRuns::default(),
        }
    }
    /// Put a snapshot here: the next `runs_from` answers it (once) instead of the index.
    pub fn stale_runs(&self) -> StaleRuns {
        self.stale_runs.clone()
    }
    pub fn hang_switch(&self) -> Arc<AtomicBool> {
        self.hanging.clone()
    }
    /// Set to N: the next N commits are applied, then reported as failed.
    pub fn lose_commit_answers(&self) -> Arc<AtomicU32> {
        self.lose_answers.clone()
    }
}

#[async_trait]
impl Index for FaultIndex {
    async fn create_topic(&self, t: NewTopic) -> floe_index::Result<TopicMeta> {
        wait_while(&self.hanging).await;
        self.inner.create_topic(t).await
    }
    async fn list_topics(&self) -> floe_index::Result<Vec<TopicMeta>> {
        wait_while(&self.hanging).await;
        self.inner.list_topics().await
    }
    async fn get_topic(&self, name: &str) -> floe_index::Result<Option<TopicMeta>> {
        wait_while(&self.hanging).await;
        self.inner.get_topic(name).await
    }
    async fn delete_topic(&self, name: &str) -> floe_index::Result<bool> {
        wait_while(&self.hanging).await;
        self.inner.delete_topic(name).await
    }
    async fn partition_offsets(&self, topic_id: i64) -> floe_index::Result<Vec<PartitionOffsets>> {
        wait_while(&self.hanging).await;
        self.inner.partition_offsets(topic_id).await
    }
    async fn end_offset(&self, topic_id: i64, partition: u32) -> floe_index::Result<Option<u64>> {
        wait_while(&self.hanging).await;
        self.inner.end_offset(topic_id, partition).await
    }
    async fn log_ends(
        &self,
        topic_id: i64,
        partition: u32,
    ) -> floe_index::Result<Option<(u64, u64)>> {
        wait_while(&self.hanging).await;
        self.inner.log_ends(topic_id, partition).await
    }
    async fn begin_txn(&self, b: floe_index::BeginTxn) -> floe_index::Result<u32> {
        wait_while(&self.hanging).await;
        self.inner.begin_txn(b).await
    }
    async fn end_txn(&self, e: floe_index::EndTxn) -> floe_index::Result<floe_index::TxnEnded> {
        wait_while(&self.hanging).await;
        self.inner.end_txn(e).await
    }
    async fn transactions(&self, open_only: bool) -> floe_index::Result<Vec<floe_index::TxnInfo>> {
        wait_while(&self.hanging).await;
        self.inner.transactions(open_only).await
    }
    async fn due_transactions(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> floe_index::Result<(u64, Vec<floe_index::TxnInfo>)> {
        wait_while(&self.hanging).await;
        self.inner.due_transactions(now_ms, limit).await
    }
    async fn claim_check(
        &self,
        producer_id: i64,
        epoch: u32,
        checks: u32,
        next_deadline_ms: i64,
    ) -> floe_index::Result<bool> {
        wait_while(&self.hanging).await;
        self.inner
            .claim_check(producer_id, epoch, checks, next_deadline_ms)
            .await
    }
    async fn commit_segment(&self, seg: SegmentCommit) -> floe_index::Result<Committed> {
        wait_while(&self.hanging).await;
        let out = self.inner.commit_segment(seg).await?;
        let lose = self
            .lose_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lose {
            return Err(IndexError::Task(
                "injected fault: commit applied, answer lost".into(),
            ));
        }
        Ok(out)
    }
    async fn runs_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> floe_index::Result<Vec<RunEntry>> {
        wait_while(&self.hanging).await;
        let stale = self.stale_runs.lock().ok().and_then(|mut s| s.take());
        if let Some(runs) = stale {
            return Ok(runs);
        }
        self.inner
            .runs_from(topic_id, partition, offset, limit)
            .await
    }
    async fn segment_referenced(&self, key: &str) -> floe_index::Result<bool> {
        wait_while(&self.hanging).await;
        self.inner.segment_referenced(key).await
    }
    async fn segments_referenced(&self, keys: &[String]) -> floe_index::Result<Vec<bool>> {
        wait_while(&self.hanging).await;
        self.inner.segments_referenced(keys).await
    }
    async fn unreferenced_objects(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> floe_index::Result<Vec<String>> {
        wait_while(&self.hanging).await;
        self.inner.unreferenced_objects(before_ms, limit).await
    }
    async fn forget_objects(&self, keys: &[String]) -> floe_index::Result<()> {
        wait_while(&self.hanging).await;
        self.inner.forget_objects(keys).await
    }
    async fn object_totals(&self) -> floe_index::Result<(u64, u64)> {
        wait_while(&self.hanging).await;
        self.inner.object_totals().await
    }
    async fn ping(&self) -> floe_index::Result<()> {
        wait_while(&self.hanging).await;
        self.inner.ping().await
    }
    async fn load_state(&self, key: &StateKey) -> floe_index::Result<Option<Versioned>> {
        wait_while(&self.hanging).await;
        self.inner.load_state(key).await
    }
    async fn store_state(
        &self,
        key: &StateKey,
        expected: Option<i64>,
        data: Vec<u8>,
    ) -> floe_index::Result<bool> {
        wait_while(&self.hanging).await;
        self.inner.store_state(key, expected, data).await
    }
    async fn list_states(
        &self,
        kind: StateKind,
        topic_id: Option<i64>,
    ) -> floe_index::Result<Vec<(StateKey, Versioned)>> {
        wait_while(&self.hanging).await;
        self.inner.list_states(kind, topic_id).await
    }
    async fn commit_offsets(&self, c: floe_index::OffsetCommit) -> floe_index::Result<()> {
        wait_while(&self.hanging).await;
        self.inner.commit_offsets(c).await
    }
    async fn group_offsets(
        &self,
        topic_id: i64,
        group: &str,
    ) -> floe_index::Result<std::collections::BTreeMap<u32, u64>> {
        wait_while(&self.hanging).await;
        self.inner.group_offsets(topic_id, group).await
    }
    async fn idempotency_begin(
        &self,
        b: floe_index::IdempotencyBegin,
    ) -> floe_index::Result<floe_index::IdempotencyVerdict> {
        wait_while(&self.hanging).await;
        self.inner.idempotency_begin(b).await
    }
    async fn idempotency_abandon(
        &self,
        topic_id: i64,
        key: &str,
        token: i64,
    ) -> floe_index::Result<()> {
        wait_while(&self.hanging).await;
        self.inner.idempotency_abandon(topic_id, key, token).await
    }
    async fn init_producer(
        &self,
        name: Option<&str>,
        now_ms: i64,
    ) -> floe_index::Result<(i64, u32)> {
        self.inner.init_producer(name, now_ms).await
    }
    async fn dedup_state_counts(&self) -> floe_index::Result<(u64, u64)> {
        self.inner.dedup_state_counts().await
    }
    async fn expire_producers(&self, cutoff_ms: i64) -> floe_index::Result<u64> {
        self.inner.expire_producers(cutoff_ms).await
    }
    async fn expire_idempotency(&self, now_ms: i64) -> floe_index::Result<u64> {
        wait_while(&self.hanging).await;
        self.inner.expire_idempotency(now_ms).await
    }
    async fn apply_size_retention(
        &self,
        topic_id: i64,
        max_bytes: u64,
    ) -> floe_index::Result<Vec<(u32, u64)>> {
        wait_while(&self.hanging).await;
        self.inner.apply_size_retention(topic_id, max_bytes).await
    }
    async fn replace_runs(&self, r: floe_index::ReplaceRuns) -> floe_index::Result<bool> {
        wait_while(&self.hanging).await;
        self.inner.replace_runs(r).await
    }
    async fn advance_deletion_boundary(&self, to_ms: i64) -> floe_index::Result<i64> {
        wait_while(&self.hanging).await;
        self.inner.advance_deletion_boundary(to_ms).await
    }
    async fn apply_retention(
        &self,
        topic_id: i64,
        cutoff_ms: i64,
    ) -> floe_index::Result<Vec<(u32, u64)>> {
        wait_while(&self.hanging).await;
        self.inner.apply_retention(topic_id, cutoff_ms).await
    }
    async fn watch_commits(&self, sink: CommitSink, stop: tokio::sync::watch::Receiver<bool>) {
        self.inner.watch_commits(sink, stop).await;
    }
}
