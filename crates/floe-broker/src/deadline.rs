//! Deadlines on every call to the bucket and the index (RFC 0001).
//!
//! [`DeadlineStore`] and [`DeadlineIndex`] wrap the agent's store and index so that no
//! call waits longer than its per-call budget: a hung S3 server or PostgreSQL answers the
//! caller with a timeout error (→ 503) instead of holding it for the client library's own
//! timeouts (30 s and more) or forever. Produce requests have a tighter, end-to-end
//! budget on top (see `produce`), and a segment commit carries an absolute deadline that
//! the index checks inside its transaction, so a commit abandoned here cannot land later.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use floe_index::{
    CommitSink, Committed, Index, IndexError, NewTopic, PartitionOffsets, RunEntry, SegmentCommit,
    StateKey, StateKind, TopicMeta, Versioned,
};

fn store_timeout(op: &'static str, after: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "deadline",
        source: format!("{op} timed out after {} ms", after.as_millis()).into(),
    }
}

/// Run `f` within `after`, or fail with a timeout error naming `op`.
async fn within<T>(
    op: &'static str,
    after: Duration,
    f: impl Future<Output = object_store::Result<T>>,
) -> object_store::Result<T> {
    tokio::time::timeout(after, f)
        .await
        .unwrap_or_else(|_| Err(store_timeout(op, after)))
}

/// A stream that fails (and ends) when it is not finished by `after` from now.
fn bounded<T: Send + 'static>(
    op: &'static str,
    after: Duration,
    s: BoxStream<'static, object_store::Result<T>>,
) -> BoxStream<'static, object_store::Result<T>> {
    let deadline = tokio::time::Instant::now() + after;
    futures::stream::unfold(Some(s), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout_at(deadline, s.next()).await {
            Ok(Some(item)) => Some((item, Some(s))),
            Ok(None) => None,
            Err(_) => Some((Err(store_timeout(op, after)), None)),
        }
    })
    .boxed()
}

/// Bounds every object-store call by one per-call timeout (object_store's own retries run
/// inside it). A GET's body stream is bounded by the same budget, counted from the call.
#[derive(Debug)]
pub struct DeadlineStore {
    inner: Arc<dyn ObjectStore>,
    timeout: Duration,
}

impl DeadlineStore {
    pub fn new(inner: Arc<dyn ObjectStore>, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl fmt::Display for DeadlineStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Deadline({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for DeadlineStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        within(
            "put",
            self.timeout,
            self.inner.put_opts(location, payload, opts),
        )
        .await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        within(
            "put",
            self.timeout,
            self.inner.put_multipart_opts(location, opts),
        )
        .await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let started = tokio::time::Instant::now();
        let mut r = within("get", self.timeout, self.inner.get_opts(location, options)).await?;
        if let GetResultPayload::Stream(s) = r.payload {
            let left = self.timeout.saturating_sub(started.elapsed());
            r.payload = GetResultPayload::Stream(bounded("get", left, s));
        }
        Ok(r)
    }
    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        within("get", self.timeout, self.inner.get_ranges(location, ranges)).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        bounded("delete", self.timeout, self.inner.delete_stream(locations))
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        bounded("list", self.timeout, self.inner.list(prefix))
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        within("list", self.timeout, self.inner.list_with_delimiter(prefix)).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        within(
            "copy",
            self.timeout,
            self.inner.copy_opts(from, to, options),
        )
        .await
    }
}

/// Bounds every index call by a per-call timeout; a segment commit by its own absolute
/// deadline (plus `commit_slack`, so that the backend's in-transaction check can answer
/// with the precise `DeadlineExceeded` first).
#[derive(Debug)]
pub struct DeadlineIndex {
    inner: Arc<dyn Index>,
    timeout: Duration,
    clock: floe_core::clock::SharedClock,
}

/// How long after a commit's deadline the agent still waits for the index's own verdict.
const COMMIT_SLACK: Duration = Duration::from_millis(250);

impl DeadlineIndex {
    pub fn new(
        inner: Arc<dyn Index>,
        timeout: Duration,
        clock: floe_core::clock::SharedClock,
    ) -> Self {
        Self {
            inner,
            timeout,
            clock,
        }
    }

    async fn within<T>(
        &self,
        op: &'static str,
        f: impl Future<Output = floe_index::Result<T>>,
    ) -> floe_index::Result<T> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(IndexError::Timeout {
                    op,
                    after_ms: self.timeout.as_millis() as u64,
                })
            })
    }
}

#[async_trait]
impl Index for DeadlineIndex {
    async fn create_topic(&self, t: NewTopic) -> floe_index::Result<TopicMeta> {
        self.within("create_topic", self.inner.create_topic(t))
            .await
    }
    async fn list_topics(&self) -> floe_index::Result<Vec<TopicMeta>> {
        self.within("list_topics", self.inner.list_topics()).await
    }
    async fn get_topic(&self, name: &str) -> floe_index::Result<Option<TopicMeta>> {
        self.within("get_topic", self.inner.get_topic(name)).await
    }
    async fn delete_topic(&self, name: &str) -> floe_index::Result<bool> {
        self.within("delete_topic", self.inner.delete_topic(name))
            .await
    }
    async fn partition_offsets(&self, topic_id: i64) -> floe_index::Result<Vec<PartitionOffsets>> {
        self.within("partition_offsets", self.inner.partition_offsets(topic_id))
            .await
    }
    async fn end_offset(&self, topic_id: i64, partition: u32) -> floe_index::Result<Option<u64>> {
        self.within("end_offset", self.inner.end_offset(topic_id, partition))
            .await
    }
    async fn log_ends(
        &self,
        topic_id: i64,
        partition: u32,
    ) -> floe_index::Result<Option<(u64, u64)>> {
        self.within("log_ends", self.inner.log_ends(topic_id, partition))
            .await
    }
    async fn begin_txn(&self, b: floe_index::BeginTxn) -> floe_index::Result<u32> {
        self.within("begin_txn", self.inner.begin_txn(b)).await
    }
    async fn end_txn(&self, e: floe_index::EndTxn) -> floe_index::Result<floe_index::TxnEnded> {
        self.within("end_txn", self.inner.end_txn(e)).await
    }
    async fn transactions(&self, open_only: bool) -> floe_index::Result<Vec<floe_index::TxnInfo>> {
        self.within("transactions", self.inner.transactions(open_only))
            .await
    }
    async fn due_transactions(
        &self,
        now_ms: i64,
        limit: u32,
    ) -> floe_index::Result<(u64, Vec<floe_index::TxnInfo>)> {
        self.within(
            "due_transactions",
            self.inner.due_transactions(now_ms, limit),
        )
        .await
    }
    async fn claim_check(
        &self,
        producer_id: i64,
        epoch: u32,
        checks: u32,
        next_deadline_ms: i64,
    ) -> floe_index::Result<bool> {
        self.within(
            "claim_check",
            self.inner
                .claim_check(producer_id, epoch, checks, next_deadline_ms),
        )
        .await
    }
    async fn commit_segment(&self, seg: SegmentCommit) -> floe_index::Result<Committed> {
        let left_ms = seg.deadline_unix_ms.saturating_sub(self.clock.now_ms());
        let budget = Duration::from_millis(u64::try_from(left_ms).unwrap_or(0)).min(self.timeout)
            + COMMIT_SLACK;
        tokio::time::timeout(budget, self.inner.commit_segment(seg))
            .await
            .unwrap_or_else(|_| {
                Err(IndexError::Timeout {
                    op: "commit",
                    after_ms: budget.as_millis() as u64,
                })
            })
    }
    async fn read_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> floe_index::Result<Option<((u64, u64), Vec<RunEntry>)>> {
        self.within(
            "read_from",
            self.inner.read_from(topic_id, partition, offset, limit),
        )
        .await
    }
    async fn runs_from(
        &self,
        topic_id: i64,
        partition: u32,
        offset: u64,
        limit: u32,
    ) -> floe_index::Result<Vec<RunEntry>> {
        self.within(
            "runs_from",
            self.inner.runs_from(topic_id, partition, offset, limit),
        )
        .await
    }
    async fn segment_referenced(&self, key: &str) -> floe_index::Result<bool> {
        self.within("segment_referenced", self.inner.segment_referenced(key))
            .await
    }
    async fn segments_referenced(&self, keys: &[String]) -> floe_index::Result<Vec<bool>> {
        self.within("segments_referenced", self.inner.segments_referenced(keys))
            .await
    }
    async fn unreferenced_objects(
        &self,
        before_ms: i64,
        limit: u32,
    ) -> floe_index::Result<Vec<String>> {
        self.within(
            "unreferenced_objects",
            self.inner.unreferenced_objects(before_ms, limit),
        )
        .await
    }
    async fn forget_objects(&self, keys: &[String]) -> floe_index::Result<()> {
        self.within("forget_objects", self.inner.forget_objects(keys))
            .await
    }
    async fn object_totals(&self) -> floe_index::Result<(u64, u64)> {
        self.within("object_totals", self.inner.object_totals())
            .await
    }
    async fn ping(&self) -> floe_index::Result<()> {
        self.within("ping", self.inner.ping()).await
    }
    async fn load_state(&self, key: &StateKey) -> floe_index::Result<Option<Versioned>> {
        self.within("load_state", self.inner.load_state(key)).await
    }
    async fn store_state(
        &self,
        key: &StateKey,
        expected: Option<i64>,
        data: Vec<u8>,
    ) -> floe_index::Result<bool> {
        self.within("store_state", self.inner.store_state(key, expected, data))
            .await
    }
    async fn list_states(
        &self,
        kind: StateKind,
        topic_id: Option<i64>,
    ) -> floe_index::Result<Vec<(StateKey, Versioned)>> {
        self.within("list_states", self.inner.list_states(kind, topic_id))
            .await
    }
    async fn commit_offsets(&self, c: floe_index::OffsetCommit) -> floe_index::Result<()> {
        self.within("commit_offsets", self.inner.commit_offsets(c))
            .await
    }
    async fn group_offsets(
        &self,
        topic_id: i64,
        group: &str,
    ) -> floe_index::Result<std::collections::BTreeMap<u32, u64>> {
        self.within("group_offsets", self.inner.group_offsets(topic_id, group))
            .await
    }
    async fn idempotency_begin(
        &self,
        b: floe_index::IdempotencyBegin,
    ) -> floe_index::Result<floe_index::IdempotencyVerdict> {
        self.within("idempotency_begin", self.inner.idempotency_begin(b))
            .await
    }
    async fn idempotency_abandon(
        &self,
        topic_id: i64,
        key: &str,
        token: i64,
    ) -> floe_index::Result<()> {
        self.within(
            "idempotency_abandon",
            self.inner.idempotency_abandon(topic_id, key, token),
        )
        .await
    }
    async fn init_producer(
        &self,
        name: Option<&str>,
        now_ms: i64,
    ) -> floe_index::Result<(i64, u32)> {
        self.within("init_producer", self.inner.init_producer(name, now_ms))
            .await
    }
    async fn dedup_state_counts(&self) -> floe_index::Result<(u64, u64)> {
        self.within("dedup_state_counts", self.inner.dedup_state_counts())
            .await
    }
    async fn expire_producers(&self, cutoff_ms: i64) -> floe_index::Result<u64> {
        self.within("expire_producers", self.inner.expire_producers(cutoff_ms))
            .await
    }
    async fn expire_idempotency(&self, now_ms: i64) -> floe_index::Result<u64> {
        self.within("expire_idempotency", self.inner.expire_idempotency(now_ms))
            .await
    }
    async fn apply_size_retention(
        &self,
        topic_id: i64,
        max_bytes: u64,
    ) -> floe_index::Result<Vec<(u32, u64)>> {
        self.within(
            "apply_size_retention",
            self.inner.apply_size_retention(topic_id, max_bytes),
        )
        .await
    }
    async fn replace_runs(&self, r: floe_index::ReplaceRuns) -> floe_index::Result<bool> {
        self.within("replace_runs", self.inner.replace_runs(r))
            .await
    }
    async fn advance_deletion_boundary(&self, to_ms: i64) -> floe_index::Result<i64> {
        self.within(
            "advance_deletion_boundary",
            self.inner.advance_deletion_boundary(to_ms),
        )
        .await
    }
    async fn apply_retention(
        &self,
        topic_id: i64,
        cutoff_ms: i64,
    ) -> floe_index::Result<Vec<(u32, u64)>> {
        self.within(
            "apply_retention",
            self.inner.apply_retention(topic_id, cutoff_ms),
        )
        .await
    }
    async fn watch_commits(&self, sink: CommitSink, stop: tokio::sync::watch::Receiver<bool>) {
        self.inner.watch_commits(sink, stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    /// A store whose every call hangs.
    #[derive(Debug)]
    struct Hung;
    impl fmt::Display for Hung {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Hung")
        }
    }
    #[async_trait]
    impl ObjectStore for Hung {
        async fn put_opts(
            &self,
            _: &Path,
            _: PutPayload,
            _: PutOptions,
        ) -> object_store::Result<PutResult> {
            futures::future::pending().await
        }
        async fn put_multipart_opts(
            &self,
            _: &Path,
            _: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            futures::future::pending().await
        }
        async fn get_opts(&self, _: &Path, _: GetOptions) -> object_store::Result<GetResult> {
            futures::future::pending().await
        }
        fn delete_stream(
            &self,
            _: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            futures::stream::pending().boxed()
        }
        fn list(&self, _: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            futures::stream::pending().boxed()
        }
        async fn list_with_delimiter(&self, _: Option<&Path>) -> object_store::Result<ListResult> {
            futures::future::pending().await
        }
        async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
            futures::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn every_store_call_times_out() {
        let s = DeadlineStore::new(Arc::new(Hung), Duration::from_secs(3));
        let p = Path::from("x");
        let started = tokio::time::Instant::now();
        let e = s.put(&p, PutPayload::from_static(b"x")).await.unwrap_err();
        assert!(e.to_string().contains("put timed out after 3000 ms"), "{e}");
        assert!(s.get(&p).await.is_err());
        assert!(s.get_range(&p, 0..1).await.is_err());
        assert!(s.list_with_delimiter(None).await.is_err());
        let listed: Vec<_> = s.list(None).collect().await;
        assert!(matches!(listed.as_slice(), [Err(_)]), "{listed:?}");
        assert!(s.delete(&p).await.is_err());
        assert!(s.copy(&p, &p).await.is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(21), "7 calls × 3 s");
    }
}
