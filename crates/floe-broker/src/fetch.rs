//! The fetch path: index lookup → footer (cached) → one ranged GET per run (decoded runs
//! cached) → records in offset order.
//!
//! Both caches coalesce concurrent misses (`try_get_with`), so many consumers tailing the
//! same partition cause one GET per run per agent, not one per consumer.

use std::sync::Arc;

use bytes::Bytes;
use floe_core::segment::{
    DecodedGroup, DecodedRun, Footer, RecordView, RunLocation, decode_group, parse_footer,
};
use floe_index::{Index, RunEntry, TopicMeta};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::file::metadata::ParquetMetaData;

use crate::config::AgentConfig;
use crate::error::{BrokerError, ErrorKind};
use crate::metrics::Metrics;

/// Bytes read from the end of a segment on the first try; most footers fit.
const FOOTER_GUESS: u64 = 64 * 1024;
/// Runs looked up in the index per fetch.
pub const RUNS_PER_FETCH: u32 = 256;

#[derive(Clone)]
pub struct Reader {
    store: Arc<dyn ObjectStore>,
    index: Arc<dyn Index>,
    metrics: Metrics,
    footers: moka::future::Cache<String, Arc<ParquetMetaData>>,
    /// Decoded row groups, keyed by (segment, first row group, row groups): every run in
    /// them is served from one decode.
    runs: moka::future::Cache<GroupKey, Arc<DecodedGroup>>,
    /// The same for the compactor's reads of cold data, so they do not evict what
    /// consumers read; sized by the compactor's share of the memory budget.
    cold: moka::future::Cache<GroupKey, Arc<DecodedGroup>>,
    /// Whole segment objects (those up to `whole_object_max` bytes): one GET serves the
    /// footer and every run of a segment. The agent that wrote a segment puts it here
    /// itself, so its own readers never GET it.
    objects: moka::future::Cache<String, Bytes>,
    whole_object_max: u64,
    /// Asked before the bucket for whole segments other agents wrote (RFC 0006).
    peers: Arc<crate::peers::Peers>,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("cached_runs", &self.runs.entry_count())
            .finish()
    }
}

type GroupKey = (String, u32, u32);

fn weight(bytes: usize) -> u32 {
    u32::try_from(bytes.max(1)).unwrap_or(u32::MAX)
}

impl Reader {
    pub fn new(
        config: &AgentConfig,
        store: Arc<dyn ObjectStore>,
        index: Arc<dyn Index>,
        metrics: Metrics,
        peers: Arc<crate::peers::Peers>,
    ) -> Self {
        let budget = config.memory_budget();
        let footers = moka::future::Cache::builder()
            .max_capacity(budget.footer_cache + 1)
            .weigher(|_k: &String, v: &Arc<ParquetMetaData>| weight(v.memory_size()))
            .build();
        let runs = moka::future::Cache::builder()
            .max_capacity(budget.run_cache + 1)
            .weigher(|_k: &GroupKey, v: &Arc<DecodedGroup>| weight(v.memory_size()))
            .build();
        let cold = moka::future::Cache::builder()
            .max_capacity(budget.compaction_inputs + 1)
            .weigher(|_k: &GroupKey, v: &Arc<DecodedGroup>| weight(v.memory_size()))
            .build();
        let objects = moka::future::Cache::builder()
            .max_capacity(budget.object_cache + 1)
            .weigher(|_k: &String, v: &Bytes| weight(v.len()))
            .build();
        Self {
            store,
            index,
            metrics,
            footers,
            runs,
            cold,
            objects,
            whole_object_max: config.flush_bytes as u64 * 2,
            peers,
        }
    }

    /// A whole segment from the object cache only (what this agent wrote or read whole):
    /// what peers are served (RFC 0006). Never reads the bucket.
    pub async fn cached_object(&self, key: &str) -> Option<Bytes> {
        self.objects.get(key).await
    }

    /// What each cache holds now by its weigher: (name, bytes), after running the caches'
    /// pending maintenance (so evictions already due are counted out).
    pub async fn cache_sizes(&self) -> [(&'static str, u64); 4] {
        self.runs.run_pending_tasks().await;
        self.cold.run_pending_tasks().await;
        self.objects.run_pending_tasks().await;
        self.footers.run_pending_tasks().await;
        [
            ("run_cache", self.runs.weighted_size()),
            ("compaction_inputs", self.cold.weighted_size()),
            ("object_cache", self.objects.weighted_size()),
            ("footer_cache", self.footers.weighted_size()),
        ]
    }

    /// A segment this agent just wrote (not yet committed: only index entries lead to it).
    pub async fn insert_written(&self, key: &str, bytes: Bytes) {
        if bytes.len() as u64 <= self.whole_object_max {
            self.objects.insert(key.to_string(), bytes).await;
        }
    }

    /// Bytes `range` of a segment: from the whole-object cache (fetching the whole object
    /// once when it is small enough), else with a ranged GET.
    async fn read_range(
        &self,
        e: &RunEntry,
        range: std::ops::Range<u64>,
    ) -> Result<Bytes, BrokerError> {
        let path = Path::from(e.segment_key.as_str());
        if e.segment_size > self.whole_object_max {
            return self
                .store
                .get_range(&path, range)
                .await
                .map_err(|err| store_err(e, &err));
        }
        let whole = self
            .objects
            .try_get_with(e.segment_key.clone(), async {
                // The agent that wrote it first (RFC 0006); the bucket when it cannot say.
                if let Some(b) = self.peers.fetch(&e.segment_key, e.segment_size).await {
                    return Ok(b);
                }
                let b = self
                    .store
                    .get_range(&path, 0..e.segment_size)
                    .await
                    .map_err(|err| store_err(e, &err))?;
                Ok::<_, BrokerError>(b)
            })
            .await
            .map_err(|err: Arc<BrokerError>| (*err).clone())?;
        if range.end > whole.len() as u64 || range.start > range.end {
            return Err(corrupt(e, "byte range beyond the object"));
        }
        Ok(whole.slice(range.start as usize..range.end as usize))
    }

    /// Up to `max_records` records from `offset` and below `upto` (the partition's stable
    /// offset for `read_committed` readers, RFC 0005), stopping before `max_bytes` is
    /// passed (but always at least one record, so one large record cannot stall a
    /// consumer). Returns the records and the next offset to fetch.
    ///
    /// An object that vanished between the index lookup and the GET (compaction swapped
    /// its entries and the sweeper deleted it, RFC 0004) makes the read look the index up
    /// again: readers never see compaction.
    pub async fn read(
        &self,
        topic: &TopicMeta,
        partition: u32,
        offset: u64,
        upto: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Fetched, BrokerError> {
        self.read_entries(topic, partition, offset, upto, max_records, max_bytes, None)
            .await
    }

    /// [`Reader::read`] with the index entries from `offset` already looked up (at most
    /// [`RUNS_PER_FETCH`], by [`floe_index::Index::read_from`] together with the offsets
    /// that gave `upto`); a retry after a vanished object looks them up again.
    #[allow(clippy::too_many_arguments)]
    pub async fn read_entries(
        &self,
        topic: &TopicMeta,
        partition: u32,
        offset: u64,
        upto: u64,
        max_records: usize,
        max_bytes: usize,
        mut entries: Option<Vec<RunEntry>>,
    ) -> Result<Fetched, BrokerError> {
        let mut attempt = 1;
        loop {
            match self
                .read_once(
                    topic,
                    partition,
                    offset,
                    upto,
                    max_records,
                    max_bytes,
                    entries.take(),
                )
                .await
            {
                Err(e) if e.code == SEGMENT_MISSING && attempt < READ_ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_once(
        &self,
        topic: &TopicMeta,
        partition: u32,
        offset: u64,
        upto: u64,
        max_records: usize,
        max_bytes: usize,
        entries: Option<Vec<RunEntry>>,
    ) -> Result<Fetched, BrokerError> {
        let entries = match entries {
            Some(e) => e,
            None => self
                .index
                .runs_from(topic.id, partition, offset, RUNS_PER_FETCH)
                .await
                .map_err(|e| BrokerError::index(&e))?,
        };
        // Runs below the partition's start offset were dropped by retention.
        if let Some(first) = entries.first()
            && first.base_offset > offset
        {
            return Err(BrokerError::below_start(
                offset,
                partition,
                first.base_offset,
            ));
        }
        let mut out = Fetched::empty(offset);
        let mut bytes = 0usize;
        for entry in &entries {
            let end = entry.base_offset + u64::from(entry.records);
            if out.count >= max_records || out.next >= upto {
                break;
            }
            if end <= out.next {
                continue;
            }
            if entry.base_offset > out.next {
                break; // a gap in the index: nothing past it is served
            }
            if entry.rows == 0 {
                // A hole (an aborted transaction's records, RFC 0005): offsets, no rows.
                out.next = end.min(upto);
                continue;
            }
            let run = self.run(topic, partition, entry).await?;
            // The entry serves rows `skip..rows_end` of its run. Dense rows sit at their
            // offset's position; a compacted topic's file carries offsets (with gaps), so
            // the first row at or after `next` is looked up.
            let skip = entry.row_first as usize;
            let rows_end = skip + entry.rows as usize;
            let from = run.position_of(out.next, entry.base_offset, skip);
            let mut to = from;
            let mut held = false;
            while to < rows_end && out.count < max_records {
                let at = run
                    .absolute_offset(to)
                    .unwrap_or(entry.base_offset + (to - skip) as u64);
                if at >= upto {
                    held = true;
                    break;
                }
                let v = run.get(to).ok_or_else(|| corrupt(entry, "row missing"))?;
                let size = v.size();
                if out.count > 0 && bytes + size > max_bytes {
                    break;
                }
                bytes += size;
                out.count += 1;
                to += 1;
            }
            if to > from {
                out.slices.push(RunSlice {
                    run: run.clone(),
                    from_offset: entry.base_offset + (from - skip) as u64,
                    from,
                    to,
                });
            }
            if held {
                // The rest is not stable yet: continue at the stable offset (any offset
                // between here and there has no row).
                out.next = upto;
                break;
            }
            if to < rows_end {
                // Stopped inside the entry: continue at its first row not taken.
                out.next = run
                    .absolute_offset(to)
                    .unwrap_or(entry.base_offset + (to - skip) as u64);
                break;
            }
            out.next = end.min(upto);
        }
        self.metrics.records_fetched.inc_by(out.count as u64);
        self.metrics.bytes_fetched.inc_by(bytes as u64);
        out.bytes = bytes;
        Ok(out)
    }

    async fn run(
        &self,
        topic: &TopicMeta,
        partition: u32,
        e: &RunEntry,
    ) -> Result<Arc<DecodedRun>, BrokerError> {
        let key = (e.segment_key.clone(), e.row_group_first, e.row_group_count);
        let group = if let Some(g) = self.runs.get(&key).await {
            self.metrics.cache.with_label_values(&["hit"]).inc();
            g
        } else {
            self.metrics.cache.with_label_values(&["miss"]).inc();
            self.runs
                .try_get_with(key, self.decode(topic, partition, e))
                .await
                .map_err(|err: Arc<BrokerError>| (*err).clone())?
        };
        Self::pick(&group, topic, partition, e)
    }

    /// Read and decode one index entry's run for the compactor: through its own small
    /// cache (the runs of one flush segment share row groups, and the compactor reads
    /// them partition after partition), not the consumers' run cache.
    pub async fn decode_entry(
        &self,
        topic: &TopicMeta,
        partition: u32,
        e: &RunEntry,
    ) -> Result<Arc<DecodedRun>, BrokerError> {
        let key = (e.segment_key.clone(), e.row_group_first, e.row_group_count);
        let group = self
            .cold
            .try_get_with(key, self.decode(topic, partition, e))
            .await
            .map_err(|err: Arc<BrokerError>| (*err).clone())?;
        Self::pick(&group, topic, partition, e)
    }

    /// The entry's run inside its decoded row groups, checked to hold the entry's rows.
    fn pick(
        group: &Arc<DecodedGroup>,
        topic: &TopicMeta,
        partition: u32,
        e: &RunEntry,
    ) -> Result<Arc<DecodedRun>, BrokerError> {
        group
            .run(&topic.name, partition, e.row_first + e.rows)
            .map(Arc::new)
            .map_err(|err| corrupt(e, &err.to_string()))
    }

    /// Read and decode the row groups of an index entry.
    async fn decode(
        &self,
        topic: &TopicMeta,
        partition: u32,
        e: &RunEntry,
    ) -> Result<Arc<DecodedGroup>, BrokerError> {
        let meta = self.footer(e).await?;
        let data = self.read_range(e, e.byte_start..e.byte_end).await?;
        let loc_topic = topic.name.clone();
        let (records, rg_first, rg_count, byte_start, size, base_offset) = (
            e.row_first + e.rows,
            e.row_group_first,
            e.row_group_count,
            e.byte_start,
            e.segment_size,
            e.base_offset,
        );
        let span = u64::from(e.records);
        let decoded = tokio::task::spawn_blocking(move || {
            let loc = RunLocation {
                topic: &loc_topic,
                partition,
                records,
                row_group_first: rg_first,
                row_group_count: rg_count,
                byte_start,
                base_offset,
                span,
            };
            decode_group(&meta, size, &loc, data)
        })
        .await
        .map_err(|err| BrokerError::unavailable("decode_failed", err.to_string()))?
        .map_err(|err| corrupt(e, &err.to_string()))?;
        Ok(Arc::new(decoded))
    }

    async fn footer(&self, e: &RunEntry) -> Result<Arc<ParquetMetaData>, BrokerError> {
        self.footers
            .try_get_with(e.segment_key.clone(), async {
                let size = e.segment_size;
                let tail = self
                    .read_range(e, size.saturating_sub(FOOTER_GUESS)..size)
                    .await?;
                match parse_footer(&tail).map_err(|err| corrupt(e, &err.to_string()))? {
                    Footer::Parsed(m) => Ok(m),
                    Footer::NeedSuffix(n) => {
                        let tail = self
                            .read_range(e, size.saturating_sub(n as u64)..size)
                            .await?;
                        match parse_footer(&tail).map_err(|err| corrupt(e, &err.to_string()))? {
                            Footer::Parsed(m) => Ok(m),
                            Footer::NeedSuffix(_) => Err(corrupt(e, "footer length inconsistent")),
                        }
                    }
                }
            })
            .await
            .map_err(|err: Arc<BrokerError>| (*err).clone())
    }
}

/// The code of a read that found its object gone: compaction or retention replaced the
/// entry after the index was read, so the read is planned again.
const SEGMENT_MISSING: &str = "segment_missing";
/// Plans of one read before a missing object is reported.
const READ_ATTEMPTS: usize = 3;

fn store_err(e: &RunEntry, err: &object_store::Error) -> BrokerError {
    if matches!(err, object_store::Error::NotFound { .. }) {
        tracing::info!(segment = %e.segment_key, "segment gone since the index was read; planning again");
        return BrokerError::unavailable(
            SEGMENT_MISSING,
            format!(
                "segment {} is gone (replaced by compaction or retention)",
                e.segment_key
            ),
        );
    }
    tracing::warn!(segment = %e.segment_key, error = %err, "segment read failed");
    BrokerError::unavailable(
        "store_unavailable",
        format!("reading segment failed: {err}"),
    )
}

fn corrupt(e: &RunEntry, what: &str) -> BrokerError {
    tracing::error!(segment = %e.segment_key, what, "corrupt segment");
    BrokerError::new(
        ErrorKind::Internal,
        "segment_corrupt",
        format!("segment {} is unreadable: {what}", e.segment_key),
    )
}

/// Rows `from..to` of a decoded run; row `from` has offset `from_offset`.
#[derive(Debug)]
pub struct RunSlice {
    run: Arc<DecodedRun>,
    from_offset: u64,
    from: usize,
    to: usize,
}

/// A position in a [`Fetched`] (see [`Fetched::next_record`]); the default is the first
/// record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    slice: usize,
    pos: usize,
}

/// The result of a fetch: records borrowed from cached runs (a front end serializes them
/// straight from the Arrow arrays, with no per-record copies).
#[derive(Debug)]
pub struct Fetched {
    slices: Vec<RunSlice>,
    pub next: u64,
    pub count: usize,
    /// Key, value and header bytes of the records (what `max_bytes` bounds).
    pub bytes: usize,
}

impl Fetched {
    /// The records as Arrow batches (zero-copy slices of the cached runs).
    pub fn arrow_batches(
        &self,
    ) -> Result<Vec<arrow_array::RecordBatch>, floe_core::segment::SegmentError> {
        let mut out = Vec::new();
        for s in &self.slices {
            out.extend(s.run.fetch_batches(s.from_offset, s.from, s.to)?);
        }
        Ok(out)
    }

    /// No records; the next offset stays `next`.
    pub fn empty(next: u64) -> Self {
        Self {
            slices: Vec::new(),
            next,
            count: 0,
            bytes: 0,
        }
    }

    /// The record at `at` (offset, record) and `at` moved past it; None after the last.
    /// For serializing a fetch in pieces (a response body written as it is sent).
    pub fn next_record(&self, at: &mut Cursor) -> Option<(u64, RecordView<'_>)> {
        loop {
            let s = self.slices.get(at.slice)?;
            let pos = at.pos.max(s.from);
            if pos >= s.to {
                at.slice += 1;
                at.pos = 0;
                continue;
            }
            at.pos = pos + 1;
            let offset = s
                .run
                .absolute_offset(pos)
                .unwrap_or(s.from_offset + (pos - s.from) as u64);
            if let Some(v) = s.run.get(pos) {
                return Some((offset, v));
            }
        }
    }

    /// (offset, record) in offset order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, RecordView<'_>)> {
        let mut at = Cursor::default();
        std::iter::from_fn(move || self.next_record(&mut at))
    }
}
