//! The compactor (RFC 0004): rewrites a partition's small index entries — runs inside
//! multi-topic flush segments — into one *partition file* per (topic, partition) and
//! range of offsets, then swaps the index entries in one transaction.
//!
//! - Every agent runs it; a lease per partition in the index (a compare-and-swap blob)
//!   lets one agent at a time work on a partition. The lease is an optimisation: the swap
//!   itself checks that the index still holds exactly the entries that were read, so two
//!   compactors (a lease that expired under a paused process) cannot both win.
//! - Killable at any point: before the swap, the written file is an unreferenced object
//!   (the sweeper deletes it after the grace); after it, the replaced objects are
//!   unreferenced once no other entry points at them.
//! - Readers re-plan when an object vanishes under them ([`crate::fetch::Reader::read`]).
//! - Files are laid out for query engines: `topics/<topic>/partition=<p>/date=<d>/
//!   <first>-<last>-<uuidv7>.parquet` (Hive-style; `d` is the UTC day of the first record;
//!   the UUID's time is the file's creation time, for the deletion boundary).
//! - Compacted topics (`cleanup.policy=compact`) are *cleaned* instead: the log from its
//!   start through the waiting entries is rewritten keeping the latest record per key
//!   ([`floe_core::compaction::KeyMap`]); rows keep their offsets, so the new entries
//!   cover the same offsets with fewer rows, and fetches skip the gaps.

use std::sync::Arc;
use std::time::Duration;

use floe_core::clock::SharedClock;
use floe_core::compaction::{Cleaning, KeyMap, Piece, Policy, plan};
use floe_core::segment::{
    Compression, DecodedRun, LAYOUT_PARTITION, PartitionFileOptions, PartitionFileWriter,
};
use floe_index::{
    Index, IndexError, ReplaceRuns, RunCommit, RunEntry, StateKey, StateKind, TopicMeta,
};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::AgentConfig;
use crate::error::BrokerError;
use crate::fetch::Reader;
use crate::metrics::Metrics;

/// Where partition files live.
pub const PARTITION_FILE_PREFIX: &str = "topics";
/// Index entries looked at per partition and pass.
const ENTRIES_PER_PASS: u32 = 4096;
/// Rows per row group of a partition file at most.
const ROW_GROUP_ROWS: usize = 64 * 1024;

/// `topics/<topic>/partition=<p>/date=<yyyy-mm-dd>/<first>-<last>-<uuidv7>.parquet`.
pub fn partition_file_key(
    topic: &str,
    partition: u32,
    first: u64,
    last: u64,
    first_ts_ms: i64,
    created_ms: i64,
) -> String {
    let date = civil_date(first_ts_ms);
    format!(
        "{PARTITION_FILE_PREFIX}/{topic}/partition={partition}/date={date}/{first:020}-{last:020}-{}.parquet",
        crate::ids::uuid_v7_at(created_ms)
    )
}

/// Whether a key names a partition file.
pub fn is_partition_file_key(key: &str) -> bool {
    key.starts_with(PARTITION_FILE_PREFIX)
        && key.as_bytes().get(PARTITION_FILE_PREFIX.len()) == Some(&b'/')
}

/// The creation time in a partition file key ([`partition_file_key`]).
pub fn partition_file_created_ms(key: &str) -> Option<i64> {
    if !is_partition_file_key(key) {
        return None;
    }
    let stem = key.strip_suffix(".parquet")?;
    let id = stem.get(stem.len().checked_sub(36)?..)?;
    crate::ids::uuid_v7_ms(id)
}

/// `yyyy-mm-dd` (UTC) of a Unix time in ms; days before 1970 count backwards.
fn civil_date(ms: i64) -> String {
    // Howard Hinnant's days-to-civil algorithm.
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("index: {0}")]
    Index(#[from] IndexError),
    #[error("read: {0}")]
    Read(#[from] BrokerError),
    #[error("encode: {0}")]
    Encode(#[from] floe_core::segment::SegmentError),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// One partition's compaction lease, stored as a consumer-state blob.
#[derive(Debug, Serialize, Deserialize)]
struct Lease {
    holder: String,
    until_ms: i64,
}

/// What one pass over a partition did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    pub files: u64,
    pub entries: u64,
    pub records: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// Swaps that found the index changed.
    pub lost: u64,
    /// Records a compacted topic's cleaning left out (superseded keys, expired tombstones).
    pub dropped: u64,
}

impl Compacted {
    fn add(&mut self, o: &Self) {
        self.files += o.files;
        self.entries += o.entries;
        self.records += o.records;
        self.input_bytes += o.input_bytes;
        self.output_bytes += o.output_bytes;
        self.lost += o.lost;
        self.dropped += o.dropped;
    }
}

/// A cleaning reads at most this many times `target_bytes` of stored entries (twice: once
/// for the keys, once to rewrite).
const CLEAN_WINDOW_TARGETS: u64 = 8;

/// (run position, offset) of each row an index entry serves.
fn entry_rows<'a>(run: &'a DecodedRun, e: &RunEntry) -> impl Iterator<Item = (usize, u64)> + 'a {
    let (skip, base) = (e.row_first as usize, e.base_offset);
    (skip..skip + e.rows as usize).map(move |pos| {
        (
            pos,
            run.absolute_offset(pos)
                .unwrap_or(base + (pos - skip) as u64),
        )
    })
}

/// The compactor's view of the engine.
#[derive(Debug, Clone)]
pub struct Compactor {
    pub config: Arc<AgentConfig>,
    pub store: Arc<dyn ObjectStore>,
    pub index: Arc<dyn Index>,
    pub reader: Reader,
    pub metrics: Metrics,
    pub clock: SharedClock,
    /// Per (topic id, partition): the first offset not known to be in a partition file.
    pub cursors: Cursors,
}

/// Where each partition's not-yet-compacted entries begin, as far as this agent has seen.
pub type Cursors = Arc<std::sync::Mutex<std::collections::HashMap<(i64, u32), u64>>>;

pub async fn run(c: Compactor, mut shutdown: watch::Receiver<bool>) {
    if !c.config.compaction.enabled {
        return;
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(c.config.compaction.interval) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match c.pass().instrument(info_span!("compaction")).await {
            Ok(done) if done.files > 0 => info!(
                files = done.files,
                entries = done.entries,
                records = done.records,
                dropped = done.dropped,
                input_bytes = done.input_bytes,
                output_bytes = done.output_bytes,
                "compacted"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "compaction pass failed; will retry"),
        }
    }
}

impl Compactor {
    fn policy(&self) -> Policy {
        let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let c = &self.config.compaction;
        Policy {
            target_bytes: c.target_bytes,
            max_wait_ms: ms(c.max_wait),
            min_pieces: c.min_entries,
            min_age_ms: ms(c.min_age),
            max_records: u64::from(u32::MAX),
        }
    }

    /// Every partition of every topic, once: at most one partition file each.
    pub async fn pass(&self) -> Result<Compacted, CompactError> {
        let mut total = Compacted::default();
        let topics = self.index.list_topics().await?;
        // Forget the cursors of deleted topics (their ids never come back).
        if let Ok(mut c) = self.cursors.lock() {
            let live: std::collections::HashSet<i64> = topics.iter().map(|t| t.id).collect();
            c.retain(|(id, _), _| live.contains(id));
        }
        for t in topics {
            for o in self.index.partition_offsets(t.id).await? {
                let p = o.partition;
                let done = self
                    .partition(&t, p, o.start_offset)
                    .instrument(info_span!("compact_partition", topic = %t.name, partition = p))
                    .await?;
                total.add(&done);
            }
        }
        Ok(total)
    }

    /// Compact one partition (whose log starts at `start`) if its entries call for it and
    /// this agent gets the lease.
    pub async fn partition(
        &self,
        t: &TopicMeta,
        p: u32,
        start: u64,
    ) -> Result<Compacted, CompactError> {
        // Entries in partition files stay there: look from where the last pass found the
        // first entry that is not, so a long compacted log does not hide its tail. (A
        // compacted topic's cleaning reads what lies before on its own.)
        let cleanup = crate::topics::cleanup_policy(t);
        let from = self
            .cursors
            .lock()
            .ok()
            .and_then(|c| c.get(&(t.id, p)).copied())
            .unwrap_or(start)
            .max(start);
        let mut entries = self
            .index
            .runs_from(t.id, p, from, ENTRIES_PER_PASS)
            .await?;
        // Records of open transactions stay in their segments until the transaction ends
        // (an abort turns their entries into holes, which needs them dense; RFC 0005).
        if let Some((_, stable)) = self.index.log_ends(t.id, p).await? {
            entries.retain(|e| e.base_offset + u64::from(e.records) <= stable);
        }
        // Files of at least half the target stay; smaller ones (a quiet partition's) are
        // merged with what waits after them.
        let full_file = self.config.compaction.target_bytes / 2;
        let pieces: Vec<Piece> = entries
            .iter()
            .map(|e| {
                let file = is_partition_file_key(&e.segment_key);
                Piece {
                    base_offset: e.base_offset,
                    records: e.records,
                    bytes: e.byte_end.saturating_sub(e.byte_start),
                    compacted: file && e.segment_size >= full_file,
                    in_file: file && e.segment_size < full_file,
                    max_timestamp_ms: e.max_timestamp_ms,
                }
            })
            .collect();
        let first_open = pieces
            .iter()
            .find(|x| !x.compacted)
            .map(|x| x.base_offset)
            .or_else(|| pieces.last().map(|x| x.base_offset + u64::from(x.records)));
        if let (Some(at), Ok(mut c)) = (first_open, self.cursors.lock()) {
            let _ = c.insert((t.id, p), at);
        }
        let now = self.clock.now_ms();
        let Some(range) = plan(&pieces, &self.policy(), now) else {
            return Ok(Compacted::default());
        };
        if !self.take_lease(t.id, p, now).await? {
            debug!("another agent holds the compaction lease");
            return Ok(Compacted::default());
        }
        let result = if cleanup.compact {
            self.clean(t, p, start, &entries, range, now).await
        } else {
            self.rewrite(t, p, &entries[range]).await
        };
        self.release_lease(t.id, p).await;
        result
    }

    fn writer(&self, t: &TopicMeta, p: u32) -> Result<PartitionFileWriter, CompactError> {
        Ok(PartitionFileWriter::new(
            &t.name,
            p,
            PartitionFileOptions {
                compression: match self.config.compression {
                    Compression::None => Compression::None,
                    // Files are written once and read by scans: zstd pays off.
                    Compression::Lz4 | Compression::Zstd(_) => Compression::Zstd(3),
                },
                row_group_rows: ROW_GROUP_ROWS,
                row_group_bytes: self.config.compaction.row_group_bytes,
            },
        )?)
    }

    /// Clean a compacted topic's partition: the waiting entries `dirty` (found by the
    /// planner) and, when the whole log up to them fits the window, everything before them
    /// are rewritten keeping the latest record per key. Tombstones older than
    /// `delete.retention.ms` go only when the cleaning starts at the log's start. When the
    /// keys do not fit `key_map_bytes`, the waiting entries are cleaned alone; when even
    /// those do not, they are rewritten without cleaning.
    async fn clean(
        &self,
        t: &TopicMeta,
        p: u32,
        start: u64,
        entries: &[RunEntry],
        dirty: std::ops::Range<usize>,
        now: i64,
    ) -> Result<Compacted, CompactError> {
        let c = &self.config.compaction;
        let stored = |es: &[RunEntry]| {
            es.iter()
                .map(|e| e.byte_end.saturating_sub(e.byte_start))
                .sum::<u64>()
        };
        let waiting = &entries[dirty];
        let Some(first) = waiting.first() else {
            return Ok(Compacted::default());
        };
        // The log from its start up to the waiting entries (files already cleaned), read
        // only as far as the window can reach.
        let cap = c.target_bytes.saturating_mul(CLEAN_WINDOW_TARGETS);
        let mut whole = Vec::new();
        let mut at = start;
        while at < first.base_offset && stored(&whole) <= cap {
            let more = self.index.runs_from(t.id, p, at, 256).await?;
            let before: Vec<RunEntry> = more
                .into_iter()
                .filter(|e| e.base_offset >= at && e.base_offset < first.base_offset)
                .collect();
            let Some(last) = before.last() else { break };
            at = last.base_offset + u64::from(last.records);
            whole.extend(before);
        }
        whole.extend_from_slice(waiting);
        let from_start = whole.first().is_some_and(|e| e.base_offset == start);
        let contiguous = whole
            .windows(2)
            .all(|w| w[0].base_offset + u64::from(w[0].records) == w[1].base_offset);
        let mut windows = Vec::new();
        if from_start && contiguous && stored(&whole) <= cap {
            windows.push((whole.as_slice(), true));
        }
        if windows.is_empty() || whole.len() > waiting.len() {
            windows.push((waiting, false));
        }
        for (window, from_start) in windows {
            let Some(keys) = self.key_map(t, p, window).await? else {
                debug!(
                    entries = window.len(),
                    "keys exceed the key map; trying a smaller stretch"
                );
                continue;
            };
            let rule = Cleaning {
                tombstones_before_ms: from_start
                    .then(|| now.saturating_sub(crate::topics::delete_retention_ms(t))),
            };
            return self.rewrite_kept(t, p, window, &keys, rule).await;
        }
        warn!(
            "a compacted partition's keys exceed --compaction-key-map-bytes even for the waiting entries; rewriting them without cleaning"
        );
        self.rewrite(t, p, waiting).await
    }

    /// Pass one of a cleaning: the latest offset of each key in `window`, or `None` when
    /// they take more than `key_map_bytes`.
    async fn key_map(
        &self,
        t: &TopicMeta,
        p: u32,
        window: &[RunEntry],
    ) -> Result<Option<KeyMap>, CompactError> {
        let mut keys = KeyMap::default();
        for e in window {
            let run = self.reader.decode_entry(t, p, e).await?;
            for (pos, offset) in entry_rows(&run, e) {
                let key = run.get(pos).and_then(|v| v.key);
                keys.observe(key, offset);
            }
            if keys.memory_size() > self.config.compaction.key_map_bytes {
                return Ok(None);
            }
        }
        Ok(Some(keys))
    }

    /// Pass two of a cleaning: rewrite `window` keeping what `keys` says, into files of
    /// about `target_bytes` cut at entry boundaries, each swapped in as it is complete.
    async fn rewrite_kept(
        &self,
        t: &TopicMeta,
        p: u32,
        window: &[RunEntry],
        keys: &KeyMap,
        rule: Cleaning,
    ) -> Result<Compacted, CompactError> {
        let mut total = Compacted::default();
        let mut w: Option<PartitionFileWriter> = None;
        let mut group = 0;
        let mut first_ts = None;
        let mut dropped = 0u64;
        for (k, e) in window.iter().enumerate() {
            let run = self.reader.decode_entry(t, p, e).await?;
            let out = match &mut w {
                Some(w) => w,
                None => w.insert(self.writer(t, p)?),
            };
            // Write each stretch of kept rows as a zero-copy slice of the decoded run.
            let mut kept: Option<(usize, u64)> = None;
            let mut write = |from: (usize, u64), to: usize| -> Result<(), CompactError> {
                for b in run.fetch_batches(from.1, from.0, to)? {
                    if first_ts.is_none() {
                        first_ts = floe_core::segment::first_timestamp(&b);
                    }
                    out.write(&b)?;
                }
                Ok(())
            };
            for (pos, offset) in entry_rows(&run, e) {
                let v = run.get(pos).ok_or_else(|| {
                    CompactError::Encode(floe_core::segment::SegmentError::Corrupt(
                        "row missing".into(),
                    ))
                })?;
                let keep = keys.keeps(offset, v.key, v.value, v.timestamp_ms, rule);
                match (keep, kept) {
                    (true, None) => kept = Some((pos, offset)),
                    (false, Some(from)) => {
                        write(from, pos)?;
                        kept = None;
                    }
                    _ => {}
                }
                dropped += u64::from(!keep);
            }
            if let Some(from) = kept {
                write(from, e.row_first as usize + e.rows as usize)?;
            }
            let last = k + 1 == window.len();
            if last
                || (!out.is_empty()
                    && out.bytes_written() as u64 >= self.config.compaction.target_bytes)
            {
                let Some(file) = w.take() else { break };
                if file.is_empty() {
                    break; // nothing kept (cannot happen: a stretch's last record stays)
                }
                let mut done = self
                    .install(t, p, &window[group..=k], file, first_ts.take())
                    .await?;
                let left_out = std::mem::take(&mut dropped);
                if done.lost > 0 {
                    total.add(&done);
                    break;
                }
                done.dropped = left_out;
                total.add(&done);
                group = k + 1;
            }
        }
        self.metrics.cleaned_records.inc_by(total.dropped);
        Ok(total)
    }

    async fn rewrite(
        &self,
        t: &TopicMeta,
        p: u32,
        entries: &[RunEntry],
    ) -> Result<Compacted, CompactError> {
        if entries.iter().all(|e| e.rows == 0) {
            return Ok(Compacted::default()); // only holes: nothing to write
        }
        let mut w = self.writer(t, p)?;
        let mut first_ts = None;
        for e in entries.iter().filter(|e| e.rows > 0) {
            let run = self.reader.decode_entry(t, p, e).await?;
            let from = e.row_first as usize;
            for b in run.fetch_batches(e.base_offset, from, from + e.rows as usize)? {
                if first_ts.is_none() && b.num_rows() > 0 {
                    first_ts = floe_core::segment::first_timestamp(&b);
                }
                w.write(&b)?;
            }
        }
        self.install(t, p, entries, w, first_ts).await
    }

    /// Write the partition file `w` holds and swap it in for `old` (contiguous entries it
    /// covers): its row groups become entries tiling the same offsets — row group `i`
    /// from its first row's offset (the first from the first old entry's base) to the
    /// next one's (the last to the old entries' end).
    async fn install(
        &self,
        t: &TopicMeta,
        p: u32,
        old: &[RunEntry],
        w: PartitionFileWriter,
        first_ts: Option<i64>,
    ) -> Result<Compacted, CompactError> {
        let (Some(f), Some(l)) = (old.first(), old.last()) else {
            return Ok(Compacted::default());
        };
        let (first, end) = (f.base_offset, l.base_offset + u64::from(l.records));
        let (bytes, layouts) = w.finish()?;
        let mut runs = Vec::with_capacity(layouts.len());
        let mut rows = Vec::with_capacity(layouts.len());
        for (i, lay) in layouts.iter().enumerate() {
            let from = if i == 0 { first } else { lay.first_offset };
            let to = layouts.get(i + 1).map_or(end, |n| n.first_offset);
            let span = to
                .checked_sub(from)
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| *s >= lay.records)
                .ok_or_else(|| {
                    CompactError::Encode(floe_core::segment::SegmentError::Corrupt(format!(
                        "row group {i} spans {from}..{to} with {} rows",
                        lay.records
                    )))
                })?;
            runs.push(RunCommit {
                records: span,
                ..RunCommit::of_layout(t.id, p, lay)
            });
            rows.push(lay.records);
        }
        if runs.iter().zip(&rows).all(|(r, n)| r.records == *n) {
            rows.clear(); // dense
        }
        let input_bytes: u64 = old
            .iter()
            .map(|e| e.byte_end.saturating_sub(e.byte_start))
            .sum();
        let records: u64 = old.iter().map(|e| u64::from(e.rows)).sum();
        let created_ms = self.clock.now_ms();
        let key = partition_file_key(
            &t.name,
            p,
            first,
            end - 1,
            first_ts.unwrap_or(0),
            created_ms,
        );
        let size = bytes.len() as u64;
        let path = Path::from(key.as_str());
        let _ = self.store.put(&path, PutPayload::from_bytes(bytes)).await?;
        let swap = ReplaceRuns {
            topic_id: t.id,
            partition: p,
            old: old
                .iter()
                .map(|e| (e.base_offset, e.records, e.segment_key.clone()))
                .collect(),
            key: key.clone(),
            size,
            runs,
            rows,
            created_ms,
        };
        let swapped = match self.index.replace_runs(swap).await {
            Ok(s) => s,
            Err(e) => {
                // Unknown outcome on a timeout: the file may be referenced; the sweeper
                // decides (it deletes only what no entry refers to).
                warn!(file = %key, error = %e, "compaction swap failed");
                return Err(e.into());
            }
        };
        if !swapped {
            self.metrics.compactions_lost.inc();
            // Nothing refers to the file: drop it now (or the sweeper will).
            if let Err(e) = self.store.delete(&path).await {
                debug!(file = %key, error = %e, "dropping an unused partition file failed; the sweeper will");
            }
            return Ok(Compacted {
                lost: 1,
                ..Compacted::default()
            });
        }
        self.metrics.compactions.inc();
        self.metrics.compacted_records.inc_by(records);
        self.metrics.compacted_bytes.inc_by(input_bytes);
        self.metrics.compacted_entries.inc_by(old.len() as u64);
        info!(file = %key, first, last = end - 1, entries = old.len(), records, input_bytes, output_bytes = size, layout = LAYOUT_PARTITION, "partition file swapped in");
        Ok(Compacted {
            files: 1,
            entries: old.len() as u64,
            records,
            input_bytes,
            output_bytes: size,
            lost: 0,
            dropped: 0,
        })
    }

    fn lease_key(topic_id: i64, p: u32) -> StateKey {
        StateKey {
            kind: StateKind::Compaction,
            topic_id,
            group: String::new(),
            partition: p,
        }
    }

    /// Take the partition's lease by compare-and-swap: free, expired, or ours already.
    async fn take_lease(&self, topic_id: i64, p: u32, now: i64) -> Result<bool, CompactError> {
        let key = Self::lease_key(topic_id, p);
        let current = self.index.load_state(&key).await?;
        if let Some(v) = &current
            && let Ok(l) = serde_json::from_slice::<Lease>(&v.data)
            && l.holder != self.config.agent_id
            && l.until_ms > now
        {
            return Ok(false);
        }
        let lease = Lease {
            holder: self.config.agent_id.clone(),
            until_ms: now
                + i64::try_from(self.config.compaction.lease.as_millis()).unwrap_or(i64::MAX / 2),
        };
        let data = serde_json::to_vec(&lease).unwrap_or_default();
        Ok(self
            .index
            .store_state(&key, current.map(|v| v.version), data)
            .await?)
    }

    /// Give the lease back (best effort: it expires anyway).
    async fn release_lease(&self, topic_id: i64, p: u32) {
        let key = Self::lease_key(topic_id, p);
        let Ok(Some(v)) = self.index.load_state(&key).await else {
            return;
        };
        if serde_json::from_slice::<Lease>(&v.data).is_ok_and(|l| l.holder == self.config.agent_id)
        {
            let data = serde_json::to_vec(&Lease {
                holder: String::new(),
                until_ms: 0,
            })
            .unwrap_or_default();
            let _ = self.index.store_state(&key, Some(v.version), data).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_file_keys_are_hive_style_and_carry_their_creation_time() {
        let k = partition_file_key("orders", 3, 100, 199, 1_795_000_000_000, 1_795_000_123_456);
        assert!(
            k.starts_with("topics/orders/partition=3/date=2026-11-18/00000000000000000100-00000000000000000199-"),
            "{k}"
        );
        assert!(k.ends_with(".parquet"));
        assert_eq!(partition_file_created_ms(&k), Some(1_795_000_123_456));
        assert!(is_partition_file_key(&k));
        assert!(!is_partition_file_key("topicsx/a"));
        assert_eq!(partition_file_created_ms("segments/x.parquet"), None);
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(-1), "1969-12-31");
        assert_eq!(civil_date(951_782_400_000), "2000-02-29");
    }
}
