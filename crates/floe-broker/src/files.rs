//! Which objects hold a topic's committed log (RFC 0004, analytics): for each partition,
//! the index entries between two offsets, each naming its object and the rows inside it.
//! A query engine reading exactly these rows reads exactly the committed log — no orphan,
//! no deleted topic, no row taken out at commit.

use floe_core::log::plan_fetch;

use crate::Broker;
use crate::compactor::is_partition_file_key;
use crate::error::{BrokerError, BrokerResult};

/// How an object lays out its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A flush segment: many topics and partitions; column `run_offset` counts rows of one
    /// (topic, partition) run from 0; the entry holds run rows `row_first..row_first +
    /// records`, at offsets `base_offset..`.
    Segment,
    /// A partition file: one (topic, partition); column `offset` is the absolute offset.
    Partition,
}

/// One entry: offsets `base_offset..base_offset + records` of `partition` live in `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    pub partition: u32,
    pub key: String,
    pub size: u64,
    pub layout: Layout,
    pub base_offset: u64,
    pub records: u32,
    pub row_first: u32,
    pub row_group_first: u32,
    pub row_group_count: u32,
}

/// The committed log of one partition between two offsets, as entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFiles {
    pub partition: u32,
    pub start_offset: u64,
    pub end_offset: u64,
    /// The entries cover `from..to` exactly (`to` < the requested end when the listing
    /// was cut at `Limits::max_file_entries`: continue from `to`).
    pub from: u64,
    pub to: u64,
    pub entries: Vec<FileEntry>,
}

impl Broker {
    /// The entries holding offsets `from..to` (default: the whole retained log; an empty
    /// range, `from >= to`, lists nothing) of one partition or of all. Entries are trimmed to the range: `base_offset`, `records`
    /// and `row_first` describe exactly the rows inside it.
    pub async fn files(
        &self,
        topic: &str,
        partition: Option<u32>,
        from: Option<u64>,
        to: Option<u64>,
    ) -> BrokerResult<Vec<PartitionFiles>> {
        let t = self.existing_topic(topic).await?;
        if let Some(p) = partition
            && p >= t.partitions
        {
            return Err(BrokerError::new(
                crate::error::ErrorKind::NotFound,
                "partition_not_found",
                format!(
                    "partition {p} does not exist; topic {:?} has partitions 0..{}",
                    t.name, t.partitions
                ),
            ));
        }
        let offsets = self
            .index
            .partition_offsets(t.id)
            .await
            .map_err(|e| BrokerError::index(&e))?;
        let mut out = Vec::new();
        // One budget for the whole answer, so a topic with many partitions cannot make it
        // partitions x max_file_entries long.
        let mut budget = self.config.limits.max_file_entries.max(1);
        for o in offsets
            .iter()
            .filter(|o| partition.is_none_or(|p| p == o.partition))
        {
            let lo = from.unwrap_or(o.start_offset).max(o.start_offset);
            // Committed data only (RFC 0005): records of open transactions are not listed.
            let hi = to.unwrap_or(o.stable_offset).min(o.stable_offset);
            let mut listing = PartitionFiles {
                partition: o.partition,
                start_offset: o.start_offset,
                end_offset: o.end_offset,
                from: lo,
                to: lo,
                entries: Vec::new(),
            };
            if lo < hi && budget > 0 {
                let runs = self
                    .index
                    .runs_from(t.id, o.partition, lo, budget)
                    .await
                    .map_err(|e| BrokerError::index(&e))?;
                let want = usize::try_from(hi - lo).unwrap_or(usize::MAX);
                let (slices, next) = plan_fetch(&runs, lo, want);
                for s in slices {
                    let r = &runs[s.run];
                    if r.rows == 0 {
                        continue; // a hole: an aborted transaction's records
                    }
                    listing.entries.push(FileEntry {
                        partition: o.partition,
                        key: r.segment_key.clone(),
                        size: r.segment_size,
                        layout: if is_partition_file_key(&r.segment_key) {
                            Layout::Partition
                        } else {
                            Layout::Segment
                        },
                        base_offset: r.base_offset + s.from as u64,
                        records: (s.to - s.from) as u32,
                        row_first: r.row_first + s.from as u32,
                        row_group_first: r.row_group_first,
                        row_group_count: r.row_group_count,
                    });
                }
                listing.to = next;
                budget = budget.saturating_sub(listing.entries.len() as u32);
            }
            out.push(listing);
        }
        Ok(out)
    }
}
