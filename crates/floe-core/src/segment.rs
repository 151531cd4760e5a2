//! The segment format: one immutable Parquet object per flush.
//!
//! A segment holds every record of one flush, grouped into *runs*: the records of one
//! (topic, partition) in arrival order. A large run (64 KiB or more) gets row groups of its
//! own; small runs follow one another in shared row groups (cut every
//! `max_rows_per_row_group` rows), so a flush touching many partitions costs one set of
//! column chunks; a run's layout names the row groups its rows lie in. A reader
//! decodes those row groups once ([`decode_group`]) and serves every run inside from them
//! ([`DecodedGroup::run`]). Segments written with one row group per run (before RFC 0002's
//! amendment) read the same way.
//!
//! Columns (readable by any Parquet tool):
//! - `topic` (utf8), `partition` (int32)
//! - `run_offset` (int64): position of the record inside its run. Offsets are assigned
//!   when the index commits the segment, so the absolute offset is
//!   `base_offset` (from the index) + `run_offset`.
//! - `timestamp` (timestamp\[ms, UTC\]): the agent's clock at produce time; informational.
//! - `key` (binary, nullable), `value` (binary)
//! - `headers` (list<struct<key: utf8, value: utf8>>)

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, LazyLock};

use arrow_array::builder::{BinaryBuilder, ListBuilder, StringBuilder, StructBuilder};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::basic::{Compression as PqCompression, ZstdLevel};
use parquet::file::metadata::{FooterTail, KeyValue, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};

use crate::record::Record;

/// Value of the `floe.segment.version` key in every segment's Parquet metadata.
pub const FORMAT_VERSION: &str = "1";
/// Size of the Parquet footer tail (metadata length + magic).
pub const FOOTER_TAIL: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("corrupt segment: {0}")]
    Corrupt(String),
}

/// Compression codec for segment columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
    Zstd(i32),
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "lz4" => Ok(Self::Lz4),
            "zstd" => Ok(Self::Zstd(1)),
            other => match other.strip_prefix("zstd:").map(str::parse::<i32>) {
                Some(Ok(l)) if (1..=22).contains(&l) => Ok(Self::Zstd(l)),
                _ => Err(format!(
                    "unknown compression {other:?}: use none, lz4, zstd or zstd:LEVEL"
                )),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    pub compression: Compression,
    /// Rows per row group; a run longer than this spans several row groups.
    pub max_rows_per_row_group: usize,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            compression: Compression::Lz4,
            max_rows_per_row_group: 16 * 1024,
        }
    }
}

/// The records of one (topic, partition) inside a flush, in arrival order.
#[derive(Debug, Clone, Copy)]
pub struct RunRef<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub records: &'a [Record],
}

/// Where a run landed inside the encoded segment. Stored in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLayout {
    pub records: u32,
    pub row_group_first: u32,
    pub row_group_count: u32,
    /// Byte range of the run's column chunks inside the object.
    pub byte_start: u64,
    pub byte_end: u64,
    pub min_timestamp_ms: i64,
    pub max_timestamp_ms: i64,
    /// Partition files: the absolute offset of the row group's first row (the rows of a
    /// compacted topic's file may leave gaps). Flush segments: 0 (offsets come from the
    /// index).
    pub first_offset: u64,
}

static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("run_offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, false),
        Field::new(
            "headers",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                true,
            ))),
            false,
        ),
    ]))
});

static FETCH_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let seg = schema();
    let mut fields = vec![Arc::new(Field::new("offset", DataType::Int64, false))];
    fields.extend(seg.fields().iter().skip(3).cloned());
    Arc::new(Schema::new(fields))
});

/// Columns of an Arrow fetch response: `offset`, `timestamp`, `key`, `value`, `headers`.
pub fn fetch_schema() -> SchemaRef {
    FETCH_SCHEMA.clone()
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Utf8, false),
    ])
}

/// The Arrow schema of every segment.
pub fn schema() -> SchemaRef {
    SCHEMA.clone()
}

/// Rows per decoded batch.
const DECODE_BATCH_ROWS: usize = 8 * 1024;
/// A run at least this large (record bytes) gets row groups of its own; smaller runs
/// share them. A row group costs ~2 KB of column-chunk metadata and page headers, small
/// next to 64 KiB; with 1 000 partitions most runs are one or two records.
const OWN_GROUP_BYTES: usize = 64 * 1024;

/// Record bytes per batch handed to the Parquet writer (a larger run goes alone).
const BATCH_BYTES: usize = 1024 * 1024;

/// Runs as one batch, run after run.
fn flush_batch(runs: &[RunRef<'_>]) -> Result<RecordBatch, SegmentError> {
    let n: usize = runs.iter().map(|r| r.records.len()).sum();
    let recs = || runs.iter().flat_map(|r| r.records.iter());
    let topic_bytes: usize = runs.iter().map(|r| r.topic.len() * r.records.len()).sum();
    let mut topic = StringBuilder::with_capacity(n, topic_bytes);
    let mut part = Vec::with_capacity(n);
    let mut off = Vec::with_capacity(n);
    for run in runs {
        let partition = i32::try_from(run.partition).map_err(|_| {
            SegmentError::Corrupt(format!("partition {} out of range", run.partition))
        })?;
        for i in 0..run.records.len() {
            topic.append_value(run.topic);
            part.push(partition);
            off.push(i as i64);
        }
    }
    let ts: ArrayRef = Arc::new(
        TimestampMillisecondArray::from_iter_values(recs().map(|r| r.timestamp_ms))
            .with_timezone("UTC"),
    );
    let key_bytes: usize = recs().map(|r| r.key.as_ref().map_or(0, Bytes::len)).sum();
    let mut keys = BinaryBuilder::with_capacity(n, key_bytes);
    let val_bytes: usize = recs().map(|r| r.value.len()).sum();
    let mut vals = BinaryBuilder::with_capacity(n, val_bytes);
    let mut headers = ListBuilder::new(StructBuilder::from_fields(header_fields(), 0));
    for r in recs() {
        keys.append_option(r.key.as_deref());
        vals.append_value(&r.value);
        let sb = headers.values();
        for (k, v) in &r.headers {
            field_builder::<StringBuilder>(sb, 0)?.append_value(k);
            field_builder::<StringBuilder>(sb, 1)?.append_value(v);
            sb.append(true);
        }
        headers.append(true);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(topic.finish()),
        Arc::new(Int32Array::from(part)),
        Arc::new(Int64Array::from(off)),
        ts,
        Arc::new(keys.finish()),
        Arc::new(vals.finish()),
        Arc::new(headers.finish()),
    ];
    Ok(RecordBatch::try_new(schema(), cols)?)
}

fn field_builder<T: arrow_array::builder::ArrayBuilder>(
    sb: &mut StructBuilder,
    i: usize,
) -> Result<&mut T, SegmentError> {
    sb.field_builder::<T>(i)
        .ok_or_else(|| SegmentError::Corrupt("header builder type mismatch".into()))
}

fn pq_compression(c: Compression) -> Result<PqCompression, SegmentError> {
    Ok(match c {
        Compression::None => PqCompression::UNCOMPRESSED,
        Compression::Lz4 => PqCompression::LZ4_RAW,
        Compression::Zstd(l) => PqCompression::ZSTD(ZstdLevel::try_new(l)?),
    })
}

/// Record values are opaque payloads: no min/max statistics (nothing prunes on payload
/// bytes, and computing them compared every value), and a dictionary only while it stays
/// small: distinct values give up on it after one mini-batch of 128 rows instead of
/// hashing and copying 1 MiB of them first, while repeated values keep it. Keys keep the
/// defaults: they repeat, and analytics filter on them. `examples/encode_cost.rs`, 4 000
/// x 1 KiB, task-clock of 40 flushes: distinct values 382-403 -> 315-318 ms, identical
/// values 122-132 -> 127-137 ms (issue #9).
fn payload_columns(
    b: parquet::file::properties::WriterPropertiesBuilder,
) -> parquet::file::properties::WriterPropertiesBuilder {
    let value = parquet::schema::types::ColumnPath::from("value");
    b.set_column_statistics_enabled(
        value.clone(),
        parquet::file::properties::EnabledStatistics::None,
    )
    .set_column_dictionary_page_size_limit(value, 64 * 1024)
    .set_write_batch_size(128)
}

/// Encode runs into one Parquet object. A run of at least `OWN_GROUP_BYTES` gets row
/// groups of its own; smaller runs share row groups, run after run (cut every
/// `max_rows_per_row_group` rows, wherever that falls): a flush that touches many
/// partitions with a few records each costs one set of column chunks, not one per
/// partition. A run's layout names the row groups its rows lie in and their byte range.
pub fn encode_segment(
    runs: &[RunRef<'_>],
    opts: EncodeOptions,
) -> Result<(Bytes, Vec<RunLayout>), SegmentError> {
    let compression = pq_compression(opts.compression)?;
    let max_rows = opts.max_rows_per_row_group.max(1);
    let props = payload_columns(WriterProperties::builder())
        .set_compression(compression)
        .set_max_row_group_row_count(Some(max_rows))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "floe.segment.version".to_string(),
            FORMAT_VERSION.to_string(),
        )]))
        .build();
    if runs.iter().any(|r| r.records.is_empty()) {
        return Err(SegmentError::Corrupt("empty run".into()));
    }
    // Readers find a run by (topic, partition) inside its row groups: one run each.
    let mut seen = std::collections::HashSet::with_capacity(runs.len());
    if let Some(r) = runs.iter().find(|r| !seen.insert((r.topic, r.partition))) {
        return Err(SegmentError::Corrupt(format!(
            "two runs of ({}, {}) in one segment",
            r.topic, r.partition
        )));
    }
    let total_bytes: usize = runs
        .iter()
        .flat_map(|r| r.records.iter())
        .map(Record::size)
        .sum();
    // Room for incompressible values plus per-row overhead (lengths, the other columns)
    // and the footer: growing a multi-MiB buffer copies it (issue #9, `encode_cost`).
    let rows: usize = runs.iter().map(|r| r.records.len()).sum();
    let mut out = Vec::with_capacity(total_bytes + rows * 64 + 64 * 1024);
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(props))?;
    // A run of `OWN_GROUP_BYTES` or more gets row groups of its own (a reader decodes
    // just it); smaller runs share the row group in progress, written in batches of about
    // `BATCH_BYTES` so the Arrow buffers built here stay small.
    let mut small: Vec<RunRef<'_>> = Vec::new();
    let mut small_bytes = 0usize;
    for run in runs {
        let size: usize = run.records.iter().map(Record::size).sum();
        if size >= OWN_GROUP_BYTES {
            if !small.is_empty() {
                writer.write(&flush_batch(&small)?)?;
                small.clear();
                small_bytes = 0;
            }
            if writer.in_progress_rows() > 0 {
                writer.flush()?;
            }
            writer.write(&flush_batch(std::slice::from_ref(run))?)?;
            writer.flush()?;
        } else {
            small.push(*run);
            small_bytes += size;
            if small_bytes >= BATCH_BYTES {
                writer.write(&flush_batch(&small)?)?;
                small.clear();
                small_bytes = 0;
            }
        }
    }
    if !small.is_empty() {
        writer.write(&flush_batch(&small)?)?;
    }
    let meta = writer.close()?;
    // The buffer was sized for the uncompressed records; compressed output is often a
    // fraction of that. Callers cache these bytes weighed by their length (the writer's
    // segment cache), so give back the rest: otherwise a cached 1 MiB segment can pin an
    // 8 MiB allocation.
    out.shrink_to_fit();
    let bytes = Bytes::from(out);
    // First row of each row group, and one past the last.
    let mut rg_start = Vec::with_capacity(meta.row_groups().len() + 1);
    let mut row = 0u64;
    for rg in meta.row_groups() {
        rg_start.push(row);
        row += u64::try_from(rg.num_rows())
            .map_err(|_| SegmentError::Corrupt("negative row count".into()))?;
    }
    rg_start.push(row);
    let mut layouts = Vec::with_capacity(runs.len());
    let mut first_row = 0u64;
    for run in runs {
        let end_row = first_row + run.records.len() as u64;
        // Row groups [first, end) hold rows [first_row, end_row).
        let first = rg_start.partition_point(|&s| s <= first_row) - 1;
        let end = rg_start.partition_point(|&s| s < end_row);
        if end > meta.row_groups().len() || first >= end {
            return Err(SegmentError::Corrupt(format!(
                "rows {first_row}..{end_row} not in the written row groups"
            )));
        }
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for rg in &meta.row_groups()[first..end] {
            for c in rg.columns() {
                let (s, l) = c.byte_range();
                lo = lo.min(s);
                hi = hi.max(s + l);
            }
        }
        let ts = run.records.iter().map(|r| r.timestamp_ms);
        layouts.push(RunLayout {
            records: u32::try_from(run.records.len())
                .map_err(|_| SegmentError::Corrupt("run too long".into()))?,
            row_group_first: first as u32,
            row_group_count: (end - first) as u32,
            byte_start: lo,
            byte_end: hi,
            min_timestamp_ms: ts.clone().min().unwrap_or(0),
            max_timestamp_ms: ts.max().unwrap_or(0),
            first_offset: 0,
        });
        first_row = end_row;
    }
    Ok((bytes, layouts))
}

/// Key of the Parquet metadata entry that marks a partition file, and its value.
pub const LAYOUT_KEY: &str = "floe.layout";
pub const LAYOUT_PARTITION: &str = "partition";

static PARTITION_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let seg = schema();
    let fields: Vec<_> = seg
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            if i == 2 {
                Arc::new(Field::new("offset", DataType::Int64, false))
            } else {
                f.clone()
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
});

/// The Arrow schema of a partition file: the segment's columns with `offset` (absolute)
/// in place of `run_offset`.
pub fn partition_schema() -> SchemaRef {
    PARTITION_SCHEMA.clone()
}

/// The timestamp of the first row of a batch in the [`fetch_schema`] shape.
pub fn first_timestamp(b: &RecordBatch) -> Option<i64> {
    let ts = b
        .column(1)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()?;
    (!ts.is_empty()).then(|| ts.value(0))
}

/// Whether a footer is that of a partition file ([`encode_partition_file`]).
pub fn is_partition_file(meta: &ParquetMetaData) -> bool {
    meta.file_metadata().key_value_metadata().is_some_and(|kv| {
        kv.iter()
            .any(|e| e.key == LAYOUT_KEY && e.value.as_deref() == Some(LAYOUT_PARTITION))
    })
}

/// How a partition file is cut into row groups.
#[derive(Debug, Clone, Copy)]
pub struct PartitionFileOptions {
    pub compression: Compression,
    /// A row group ends after this many rows...
    pub row_group_rows: usize,
    /// ...or once its encoded size reaches this many bytes, whichever comes first.
    pub row_group_bytes: usize,
}

/// Rows written to the Parquet writer at a time (the size check runs between chunks).
const PARTITION_CHUNK_ROWS: usize = 1024;

/// Writes the committed records of one (topic, partition) — batches in the
/// [`fetch_schema`] shape, offsets strictly increasing (dense, or with the gaps a
/// compacted topic's cleaning leaves) — into one *partition file*
/// (RFC 0004): the segment columns with absolute offsets, sorted by offset, with column
/// statistics, cut into row groups of bounded size. Each row group is one [`RunLayout`]
/// (the index serves it as one run). Batches are encoded as they come, so the caller
/// holds one input batch at a time besides the growing output.
pub struct PartitionFileWriter {
    topic: String,
    partition: i32,
    max_rows: usize,
    row_group_bytes: usize,
    writer: ArrowWriter<Vec<u8>>,
    /// Per closed row group: (min ts, max ts, first offset).
    groups: Vec<(i64, i64, i64)>,
    /// The open row group: (rows, min ts, max ts, first offset).
    cur: (usize, i64, i64, i64),
    /// The offset the next row must exceed.
    last_offset: Option<i64>,
}

impl std::fmt::Debug for PartitionFileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionFileWriter")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("row_groups", &self.groups.len())
            .finish()
    }
}

impl PartitionFileWriter {
    pub fn new(
        topic: &str,
        partition: u32,
        opts: PartitionFileOptions,
    ) -> Result<Self, SegmentError> {
        let p = i32::try_from(partition)
            .map_err(|_| SegmentError::Corrupt(format!("partition {partition} out of range")))?;
        let max_rows = opts.row_group_rows.max(1);
        let props = payload_columns(WriterProperties::builder())
            .set_compression(pq_compression(opts.compression)?)
            .set_max_row_group_row_count(Some(max_rows))
            .set_key_value_metadata(Some(vec![
                KeyValue::new("floe.segment.version".into(), FORMAT_VERSION.to_string()),
                KeyValue::new(LAYOUT_KEY.into(), LAYOUT_PARTITION.to_string()),
            ]))
            .build();
        Ok(Self {
            topic: topic.to_string(),
            partition: p,
            max_rows,
            row_group_bytes: opts.row_group_bytes,
            writer: ArrowWriter::try_new(
                Vec::with_capacity(1 << 20),
                partition_schema(),
                Some(props),
            )?,
            groups: Vec::new(),
            cur: (0, i64::MAX, i64::MIN, 0),
            last_offset: None,
        })
    }

    /// Append rows (fetch schema); their offsets must exceed the previous rows'.
    pub fn write(&mut self, b: &RecordBatch) -> Result<(), SegmentError> {
        let offs = col::<Int64Array>(b, 0)?;
        for o in offs.values().iter() {
            if *o < 0 || self.last_offset.is_some_and(|l| l >= *o) {
                return Err(SegmentError::Corrupt(format!(
                    "offsets are not increasing: {o} follows {:?}",
                    self.last_offset
                )));
            }
            self.last_offset = Some(*o);
        }
        let ts = col::<TimestampMillisecondArray>(b, 1)?;
        let mut start = 0;
        while start < b.num_rows() {
            let n = PARTITION_CHUNK_ROWS
                .min(b.num_rows() - start)
                .min(self.max_rows - self.cur.0);
            if self.cur.0 == 0 {
                self.cur.3 = offs.value(start);
            }
            for t in &ts.values()[start..start + n] {
                self.cur.1 = self.cur.1.min(*t);
                self.cur.2 = self.cur.2.max(*t);
            }
            let mut cols: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    self.topic.as_str(),
                    n,
                ))),
                Arc::new(Int32Array::from_value(self.partition, n)),
            ];
            cols.extend(b.slice(start, n).columns().iter().cloned());
            self.writer
                .write(&RecordBatch::try_new(partition_schema(), cols)?)?;
            start += n;
            self.cur.0 += n;
            if self.cur.0 >= self.max_rows || self.writer.in_progress_size() >= self.row_group_bytes
            {
                self.writer.flush()?;
                self.groups.push((self.cur.1, self.cur.2, self.cur.3));
                self.cur = (0, i64::MAX, i64::MIN, 0);
            }
        }
        Ok(())
    }

    /// Bytes written so far (closed row groups and the open one, estimated).
    pub fn bytes_written(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Whether no row was written yet.
    pub fn is_empty(&self) -> bool {
        self.last_offset.is_none()
    }

    /// Close the file: its bytes and one layout per row group, in offset order.
    pub fn finish(mut self) -> Result<(Bytes, Vec<RunLayout>), SegmentError> {
        if self.cur.0 > 0 {
            self.groups.push((self.cur.1, self.cur.2, self.cur.3));
        }
        let out = self.writer.into_inner()?;
        let bytes = Bytes::from(out);
        let Footer::Parsed(meta) = parse_footer(&bytes)? else {
            return Err(SegmentError::Corrupt(
                "partition file footer incomplete".into(),
            ));
        };
        if meta.row_groups().len() != self.groups.len() || self.groups.is_empty() {
            return Err(SegmentError::Corrupt(format!(
                "{} row groups written, {} expected",
                meta.row_groups().len(),
                self.groups.len()
            )));
        }
        let mut layouts = Vec::with_capacity(self.groups.len());
        for (i, (rg, (min_ts, max_ts, first))) in
            meta.row_groups().iter().zip(self.groups).enumerate()
        {
            let (mut lo, mut hi) = (u64::MAX, 0u64);
            for c in rg.columns() {
                let (s, l) = c.byte_range();
                lo = lo.min(s);
                hi = hi.max(s + l);
            }
            layouts.push(RunLayout {
                records: u32::try_from(rg.num_rows())
                    .map_err(|_| SegmentError::Corrupt("row group too long".into()))?,
                row_group_first: u32::try_from(i)
                    .map_err(|_| SegmentError::Corrupt("too many row groups".into()))?,
                row_group_count: 1,
                byte_start: lo,
                byte_end: hi,
                min_timestamp_ms: min_ts,
                max_timestamp_ms: max_ts,
                first_offset: u64::try_from(first)
                    .map_err(|_| SegmentError::Corrupt("negative offset".into()))?,
            });
        }
        Ok((bytes, layouts))
    }
}

/// [`PartitionFileWriter`] over `batches` at once.
pub fn encode_partition_file(
    topic: &str,
    partition: u32,
    batches: &[RecordBatch],
    opts: PartitionFileOptions,
) -> Result<(Bytes, Vec<RunLayout>), SegmentError> {
    let mut w = PartitionFileWriter::new(topic, partition, opts)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()
}

/// Result of looking at the tail of a segment object.
#[derive(Debug)]
pub enum Footer {
    /// The footer is complete; here is the metadata.
    Parsed(Arc<ParquetMetaData>),
    /// The tail given was too short: read this many bytes from the end of the object.
    NeedSuffix(usize),
}

/// Parse the footer from the last bytes of a segment object (`tail` = the object's suffix).
pub fn parse_footer(tail: &[u8]) -> Result<Footer, SegmentError> {
    if tail.len() < FOOTER_TAIL {
        return Err(SegmentError::Corrupt(
            "object shorter than a parquet footer".into(),
        ));
    }
    let ft = FooterTail::try_from(&tail[tail.len() - FOOTER_TAIL..])?;
    let need = ft.metadata_length() + FOOTER_TAIL;
    if tail.len() < need {
        return Ok(Footer::NeedSuffix(need));
    }
    let meta =
        ParquetMetaDataReader::decode_metadata(&tail[tail.len() - need..tail.len() - FOOTER_TAIL])?;
    Ok(Footer::Parsed(Arc::new(meta)))
}

/// A byte range of an object, presented to the Parquet reader as if it were the whole file.
struct RangeChunk {
    base: u64,
    data: Bytes,
    file_len: u64,
}

impl Length for RangeChunk {
    fn len(&self) -> u64 {
        self.file_len
    }
}

impl ChunkReader for RangeChunk {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let len = (self.base + self.data.len() as u64).saturating_sub(start) as usize;
        Ok(self.slice(start, len)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, length)
    }
}

impl RangeChunk {
    fn slice(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let rel = start
            .checked_sub(self.base)
            .map(|r| r as usize)
            .filter(|r| r.saturating_add(length) <= self.data.len())
            .ok_or_else(|| {
                parquet::errors::ParquetError::General(format!(
                    "read {start}+{length} outside fetched range {}+{}",
                    self.base,
                    self.data.len()
                ))
            })?;
        Ok(self.data.slice(rel..rel + length))
    }
}

/// Typed columns of one decoded batch.
#[derive(Debug)]
struct Cols {
    /// Column 2: run positions (flush segments) or absolute offsets (partition files).
    offsets: Int64Array,
    ts: TimestampMillisecondArray,
    key: BinaryArray,
    value: BinaryArray,
    headers: ListArray,
    header_keys: StringArray,
    header_values: StringArray,
}

/// Where one run's rows lie inside a decoded group.
#[derive(Debug, Clone, Copy)]
struct RunSpan {
    /// Row of the group holding the run's first decoded row.
    start: usize,
    len: usize,
    /// Run position (column 2) of that row: 0 when the group holds the run from its
    /// start (a run that began in an earlier row group starts later).
    first_position: i64,
}

/// Decoded row groups of a segment: every run in them, addressable by (topic, partition).
/// Cached once per (segment, row groups) and shared by every run inside.
#[derive(Debug)]
pub struct DecodedGroup {
    batches: Vec<Cols>,
    /// The decoded batches as read (same arrays as `batches`), for zero-copy Arrow output.
    raw: Vec<RecordBatch>,
    /// `starts[i]` = group row of the first row of `batches[i]`.
    starts: Vec<usize>,
    len: usize,
    mem: usize,
    /// Rows carry absolute offsets (a partition file), which may leave gaps.
    absolute: bool,
    runs: HashMap<(Box<str>, u32), RunSpan>,
}

/// One run's rows, a view into a [`DecodedGroup`]; rows are addressed by their position
/// in the run.
#[derive(Debug, Clone)]
pub struct DecodedRun {
    group: Arc<DecodedGroup>,
    start: usize,
    len: usize,
}

/// A record borrowed from a decoded run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub headers: Vec<(&'a str, &'a str)>,
}

impl RecordView<'_> {
    pub fn size(&self) -> usize {
        self.key.map_or(0, <[u8]>::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

impl DecodedGroup {
    /// Approximate memory held, for cache weighting.
    pub fn memory_size(&self) -> usize {
        self.mem
    }

    /// Number of runs in the group.
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// The run of (`topic`, `partition`), checked to hold at least `records` rows from its
    /// first position.
    pub fn run(
        self: &Arc<Self>,
        topic: &str,
        partition: u32,
        records: u32,
    ) -> Result<DecodedRun, SegmentError> {
        let span = self
            .runs
            .get(&(Box::from(topic), partition))
            .ok_or_else(|| {
                SegmentError::Corrupt(format!(
                    "no rows of ({topic}, {partition}) in the run's row groups"
                ))
            })?;
        // At least: an index entry may cover only part of its run (rows taken out at
        // commit).
        if span.first_position != 0 || span.len < records as usize {
            return Err(SegmentError::Corrupt(format!(
                "run ({topic}, {partition}) has {} rows from position {}, index needs {records} from 0",
                span.len, span.first_position
            )));
        }
        Ok(DecodedRun {
            group: self.clone(),
            start: span.start,
            len: span.len,
        })
    }

    fn locate(&self, row: usize) -> (&Cols, usize) {
        let b = self.starts.partition_point(|&s| s <= row) - 1;
        (&self.batches[b], row - self.starts[b])
    }
}

impl DecodedRun {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The absolute offset of the row at run position `i`, when the rows carry their own
    /// (partition files); `None` for flush segments (the index's base offset places them).
    pub fn absolute_offset(&self, i: usize) -> Option<u64> {
        if !self.group.absolute || i >= self.len {
            return None;
        }
        let (c, row) = self.group.locate(self.start + i);
        u64::try_from(c.offsets.value(row)).ok()
    }

    /// The run position of the first record at or after `offset`, for an index entry whose
    /// first row is at position `skip` with offset `base` (`offset >= base`): the position
    /// follows from the offset in a dense run; a run with absolute offsets (gaps allowed)
    /// is searched.
    pub fn position_of(&self, offset: u64, base: u64, skip: usize) -> usize {
        if !self.group.absolute {
            return skip + usize::try_from(offset.saturating_sub(base)).unwrap_or(usize::MAX);
        }
        let (mut lo, mut hi) = (skip.min(self.len), self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.absolute_offset(mid).is_some_and(|o| o < offset) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Rows `from..to` as Arrow batches in the [`fetch_schema`] shape (row `from` has
    /// offset `from_offset`, the next ones follow — or, in a partition file, the offsets
    /// the rows carry); the key/value/header arrays are zero-copy slices.
    pub fn fetch_batches(
        &self,
        from_offset: u64,
        from: usize,
        to: usize,
    ) -> Result<Vec<RecordBatch>, SegmentError> {
        let g = &self.group;
        let (from_row, to_row) = (self.start + from, self.start + to.min(self.len));
        let mut out = Vec::new();
        for (b, start) in g.raw.iter().zip(&g.starts) {
            let (lo, hi) = (from_row.max(*start), to_row.min(start + b.num_rows()));
            if lo >= hi {
                continue;
            }
            let (off, n) = (lo - start, hi - lo);
            let first = from_offset + (lo - from_row) as u64;
            let offsets: ArrayRef = if g.absolute {
                b.column(2).slice(off, n)
            } else {
                Arc::new(Int64Array::from_iter_values(
                    (0..n as u64).map(|i| (first + i) as i64),
                ))
            };
            let mut cols = vec![offsets];
            cols.extend((3..7).map(|c| b.column(c).slice(off, n)));
            out.push(RecordBatch::try_new(fetch_schema(), cols)?);
        }
        Ok(out)
    }

    /// The record at run position `i`.
    pub fn get(&self, i: usize) -> Option<RecordView<'_>> {
        if i >= self.len {
            return None;
        }
        let (c, row) = self.group.locate(self.start + i);
        let offs = c.headers.value_offsets();
        let (hs, he) = (offs[row] as usize, offs[row + 1] as usize);
        let headers = (hs..he)
            .map(|j| (c.header_keys.value(j), c.header_values.value(j)))
            .collect();
        Some(RecordView {
            timestamp_ms: c.ts.value(row),
            key: (!c.key.is_null(row)).then(|| c.key.value(row)),
            value: c.value.value(row),
            headers,
        })
    }
}

/// What the index says about a run, needed to decode and check it.
#[derive(Debug, Clone)]
pub struct RunLocation<'a> {
    pub topic: &'a str,
    pub partition: u32,
    pub records: u32,
    pub row_group_first: u32,
    pub row_group_count: u32,
    pub byte_start: u64,
    /// The offset the index gives the run's first row. Checked against the rows of a
    /// partition file (which store absolute offsets); flush segments store run positions.
    pub base_offset: u64,
    /// Offsets the index entry covers: `records` for a dense run; more in a compacted
    /// topic's partition file, whose `records` rows lie anywhere in
    /// `base_offset..base_offset + span`, increasing.
    pub span: u64,
}

/// Decode one run from the bytes `[byte_start, byte_start + data.len())` of a segment whose
/// footer is `meta` (its row groups decoded with [`decode_group`], then the run picked).
pub fn decode_run(
    meta: &Arc<ParquetMetaData>,
    file_len: u64,
    loc: &RunLocation<'_>,
    data: Bytes,
) -> Result<DecodedRun, SegmentError> {
    Arc::new(decode_group(meta, file_len, loc, data)?).run(loc.topic, loc.partition, loc.records)
}

/// Decode the row groups of `loc` from the bytes `[byte_start, byte_start + data.len())`
/// of a segment whose footer is `meta`. Checks the invariants of what it decodes: in a
/// flush segment each (topic, partition) occupies one contiguous stretch of rows whose
/// `run_offset` counts up by one; a partition file holds only `loc`'s topic and partition,
/// offsets strictly increasing within `base_offset..base_offset + span` (exactly
/// `base_offset..base_offset + records` when the entry is dense). Which run the caller
/// wants is checked by [`DecodedGroup::run`].
pub fn decode_group(
    meta: &Arc<ParquetMetaData>,
    file_len: u64,
    loc: &RunLocation<'_>,
    data: Bytes,
) -> Result<DecodedGroup, SegmentError> {
    let first = loc.row_group_first as usize;
    let end = first + loc.row_group_count as usize;
    if end > meta.num_row_groups() {
        return Err(SegmentError::Corrupt(format!(
            "run row groups {first}..{end} beyond {} in segment",
            meta.num_row_groups()
        )));
    }
    // Column 2 holds run positions (flush segments) or absolute offsets (partition files).
    let absolute = is_partition_file(meta);
    let range = if absolute {
        let lo = i64::try_from(loc.base_offset)
            .map_err(|_| SegmentError::Corrupt("base offset out of range".into()))?;
        let span = i64::try_from(loc.span)
            .map_err(|_| SegmentError::Corrupt("span out of range".into()))?;
        lo..lo.saturating_add(span)
    } else {
        0..i64::MAX
    };
    let arm = ArrowReaderMetadata::try_new(meta.clone(), ArrowReaderOptions::new())?;
    let mem = data.len();
    let chunk = RangeChunk {
        base: loc.byte_start,
        data,
        file_len,
    };
    // Decoded in batches of `DECODE_BATCH_ROWS`: a shared row group can hold a whole
    // flush of small runs, and flush-sized buffers raised the agent's peak RSS.
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, arm)
        .with_row_groups((first..end).collect())
        .with_batch_size(DECODE_BATCH_ROWS)
        .build()?;
    let mut g = DecodedGroup {
        batches: Vec::new(),
        raw: Vec::new(),
        starts: Vec::new(),
        len: 0,
        mem: 0,
        absolute,
        runs: HashMap::new(),
    };
    let mut mem_total = mem;
    let mut cur: Option<Stretch> = None;
    for batch in reader {
        let batch = batch?;
        mem_total += batch.get_array_memory_size();
        if absolute {
            check_partition_rows(&batch, loc, &range, &mut cur)?;
        } else {
            stretches(&batch, g.len, &mut cur, &mut g.runs)?;
        }
        g.starts.push(g.len);
        g.len += batch.num_rows();
        g.batches.push(cols(&batch)?);
        g.raw.push(batch);
    }
    if let Some(s) = cur {
        close_stretch(s, g.len, &mut g.runs)?;
    }
    // The raw range is not kept: only the decoded arrays are.
    g.mem = mem_total - mem;
    Ok(g)
}

fn col<T: 'static>(b: &RecordBatch, i: usize) -> Result<&T, SegmentError> {
    b.column(i)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| SegmentError::Corrupt(format!("column {i} has an unexpected type")))
}

/// Columns 0-2 of a segment batch: topic, partition, run position or offset.
fn key_cols(b: &RecordBatch) -> Result<(&StringArray, &Int32Array, &Int64Array), SegmentError> {
    Ok((col(b, 0)?, col(b, 1)?, col(b, 2)?))
}

/// The stretch of rows of one (topic, partition) being read.
#[derive(Debug)]
struct Stretch {
    topic: Box<str>,
    partition: u32,
    start: usize,
    first_position: i64,
    last: i64,
}

fn close_stretch(
    s: Stretch,
    end: usize,
    runs: &mut HashMap<(Box<str>, u32), RunSpan>,
) -> Result<(), SegmentError> {
    let span = RunSpan {
        start: s.start,
        len: end - s.start,
        first_position: s.first_position,
    };
    match runs.entry((s.topic, s.partition)) {
        std::collections::hash_map::Entry::Occupied(o) => Err(SegmentError::Corrupt(format!(
            "rows of ({}, {}) are not contiguous",
            o.key().0,
            o.key().1
        ))),
        std::collections::hash_map::Entry::Vacant(v) => {
            let _ = v.insert(span);
            Ok(())
        }
    }
}

/// Flush segments: cut rows `base..` (this batch) into stretches of one (topic,
/// partition); inside a stretch the run position counts up by one.
fn stretches(
    b: &RecordBatch,
    base: usize,
    cur: &mut Option<Stretch>,
    runs: &mut HashMap<(Box<str>, u32), RunSpan>,
) -> Result<(), SegmentError> {
    let (topic, part, off) = key_cols(b)?;
    for i in 0..b.num_rows() {
        let (t, o) = (topic.value(i), off.value(i));
        let p = u32::try_from(part.value(i)).map_err(|_| {
            SegmentError::Corrupt(format!("partition {} out of range", part.value(i)))
        })?;
        match cur {
            Some(s) if &*s.topic == t && s.partition == p => {
                if o != s.last + 1 {
                    return Err(SegmentError::Corrupt(format!(
                        "run ({t}, {p}): position {o} after {}",
                        s.last
                    )));
                }
                s.last = o;
            }
            _ => {
                if o < 0 {
                    return Err(SegmentError::Corrupt(format!(
                        "run ({t}, {p}): negative position {o}"
                    )));
                }
                if let Some(s) = cur.take() {
                    close_stretch(s, base + i, runs)?;
                }
                *cur = Some(Stretch {
                    topic: t.into(),
                    partition: p,
                    start: base + i,
                    first_position: o,
                    last: o,
                });
            }
        }
    }
    Ok(())
}

/// Partition files: every row is `loc`'s topic and partition with an offset in `range`,
/// above the previous row's (`cur` carries the previous row across batches).
fn check_partition_rows(
    b: &RecordBatch,
    loc: &RunLocation<'_>,
    range: &Range<i64>,
    cur: &mut Option<Stretch>,
) -> Result<(), SegmentError> {
    let (topic, part, off) = key_cols(b)?;
    for i in 0..b.num_rows() {
        let o = off.value(i);
        let last = cur.as_ref().map(|s| s.last);
        let in_order = range.contains(&o) && last.is_none_or(|l| o > l);
        if topic.value(i) != loc.topic || part.value(i) as i64 != loc.partition as i64 || !in_order
        {
            return Err(SegmentError::Corrupt(format!(
                "row is ({}, {}, {o}) after {last:?}, expected ({}, {}) and an offset in {range:?} above the previous",
                topic.value(i),
                part.value(i),
                loc.topic,
                loc.partition,
            )));
        }
        match cur {
            Some(s) => s.last = o,
            None => {
                *cur = Some(Stretch {
                    topic: loc.topic.into(),
                    partition: loc.partition,
                    start: 0,
                    // Rows carry offsets, not positions: the run starts at the group's
                    // first row.
                    first_position: 0,
                    last: o,
                })
            }
        }
    }
    Ok(())
}

fn cols(b: &RecordBatch) -> Result<Cols, SegmentError> {
    let headers = col::<ListArray>(b, 6)?;
    let hstruct = headers
        .values()
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| SegmentError::Corrupt("headers are not a struct list".into()))?;
    let child = |i: usize| {
        hstruct
            .column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| SegmentError::Corrupt("header fields are not strings".into()))
    };
    Ok(Cols {
        offsets: col::<Int64Array>(b, 2)?.clone(),
        ts: col::<TimestampMillisecondArray>(b, 3)?.clone(),
        key: col::<BinaryArray>(b, 4)?.clone(),
        value: col::<BinaryArray>(b, 5)?.clone(),
        headers: headers.clone(),
        header_keys: child(0)?,
        header_values: child(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(i: usize) -> Record {
        Record {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: (!i.is_multiple_of(3)).then(|| Bytes::from(format!("k{i}"))),
            value: Bytes::from(format!("value-{i}")),
            headers: if i.is_multiple_of(2) {
                vec![("h".into(), format!("{i}"))]
            } else {
                vec![]
            },
        }
    }

    /// `records` encoded alone as one run of ("t", `partition`): the segment, its footer
    /// and the run's layout.
    fn one_run(records: &[Record], partition: u32) -> (Bytes, Arc<ParquetMetaData>, RunLayout) {
        let (bytes, lay) = encode_segment(
            &[RunRef {
                topic: "t",
                partition,
                records,
            }],
            EncodeOptions::default(),
        )
        .unwrap();
        let Footer::Parsed(meta) = parse_footer(&bytes).unwrap() else {
            panic!()
        };
        (bytes, meta, lay[0])
    }

    /// The run of [`one_run`], decoded whole as an index entry at offset 0 would read it.
    fn decode_whole(
        bytes: &Bytes,
        meta: &Arc<ParquetMetaData>,
        lay: &RunLayout,
        partition: u32,
    ) -> DecodedRun {
        let loc = RunLocation {
            topic: "t",
            partition,
            records: lay.records,
            row_group_first: 0,
            row_group_count: lay.row_group_count,
            byte_start: lay.byte_start,
            base_offset: 0,
            span: u64::from(lay.records),
        };
        let data = bytes.slice(lay.byte_start as usize..lay.byte_end as usize);
        decode_run(meta, bytes.len() as u64, &loc, data).unwrap()
    }

    fn roundtrip(runs: &[RunRef<'_>], opts: EncodeOptions) {
        let (bytes, layouts) = encode_segment(runs, opts).unwrap();
        // Read the footer the way the agent does: from a short suffix first.
        let tail = &bytes[bytes.len().saturating_sub(64)..];
        let meta = match parse_footer(tail).unwrap() {
            Footer::Parsed(m) => m,
            Footer::NeedSuffix(n) => match parse_footer(&bytes[bytes.len() - n..]).unwrap() {
                Footer::Parsed(m) => m,
                Footer::NeedSuffix(_) => panic!("footer still incomplete"),
            },
        };
        for (run, lay) in runs.iter().zip(&layouts) {
            let loc = RunLocation {
                topic: run.topic,
                partition: run.partition,
                records: lay.records,
                row_group_first: lay.row_group_first,
                row_group_count: lay.row_group_count,
                byte_start: lay.byte_start,
                base_offset: 0,
                span: u64::from(lay.records),
            };
            let data = bytes.slice(lay.byte_start as usize..lay.byte_end as usize);
            let dec = decode_run(&meta, bytes.len() as u64, &loc, data).unwrap();
            assert_eq!(dec.len(), run.records.len());
            for (i, r) in run.records.iter().enumerate() {
                let v = dec.get(i).unwrap();
                assert_eq!(v.timestamp_ms, r.timestamp_ms);
                assert_eq!(v.key, r.key.as_deref());
                assert_eq!(v.value, &r.value[..]);
                let hs: Vec<(&str, &str)> = r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                assert_eq!(v.headers, hs);
            }
            assert!(dec.get(run.records.len()).is_none());
        }
    }

    #[test]
    fn runs_roundtrip_and_split_row_groups() {
        let a: Vec<Record> = (0..1000).map(rec).collect();
        let b: Vec<Record> = (0..7).map(rec).collect();
        let runs = [
            RunRef {
                topic: "orders",
                partition: 0,
                records: &a,
            },
            RunRef {
                topic: "orders",
                partition: 3,
                records: &b,
            },
            RunRef {
                topic: "x.y-z",
                partition: 0,
                records: &b[..1],
            },
        ];
        for c in [Compression::None, Compression::Lz4, Compression::Zstd(1)] {
            roundtrip(
                &runs,
                EncodeOptions {
                    compression: c,
                    max_rows_per_row_group: 300,
                },
            );
        }
        let (_, lay) = encode_segment(
            &runs,
            EncodeOptions {
                compression: Compression::Lz4,
                max_rows_per_row_group: 300,
            },
        )
        .unwrap();
        // 1 008 rows cut every 300: the runs share the last row group.
        assert_eq!((lay[0].row_group_first, lay[0].row_group_count), (0, 4));
        assert_eq!((lay[1].row_group_first, lay[1].row_group_count), (3, 1));
        assert_eq!((lay[2].row_group_first, lay[2].row_group_count), (3, 1));
        assert_eq!(
            (lay[1].byte_start, lay[1].byte_end),
            (lay[2].byte_start, lay[2].byte_end)
        );
    }

    /// Runs longer than a decoded batch: stretches continue across batch boundaries; large
    /// runs get row groups of their own.
    #[test]
    fn runs_span_decoded_batches() {
        let a: Vec<Record> = (0..17_000).map(rec).collect();
        let runs = [
            RunRef {
                topic: "t",
                partition: 0,
                records: &a[..7000],
            },
            RunRef {
                topic: "t",
                partition: 1,
                records: &a,
            },
            RunRef {
                topic: "u",
                partition: 1,
                records: &a[..1],
            },
        ];
        const { assert!(7000 < DECODE_BATCH_ROWS && 17_000 > 2 * DECODE_BATCH_ROWS) };
        roundtrip(&runs, EncodeOptions::default());
        // The two large runs (> 64 KiB) get row groups of their own (the second cut at
        // 16 Ki rows); the one-record run starts the next.
        let (_, lay) = encode_segment(&runs, EncodeOptions::default()).unwrap();
        let groups: Vec<(u32, u32)> = lay
            .iter()
            .map(|l| (l.row_group_first, l.row_group_count))
            .collect();
        assert_eq!(groups, [(0, 1), (1, 2), (3, 1)]);
    }

    /// Issue #9: a flush touching many partitions costs one set of column chunks, not one
    /// per partition. 500 one-record runs take about the room of one 500-record run (with
    /// a row group per run, 92 runs of 100 records took 272 KB in the agent: 2.7x).
    #[test]
    fn many_small_runs_share_row_groups() {
        let recs: Vec<Record> = (0..500)
            .map(|i| Record {
                timestamp_ms: i,
                key: None,
                value: Bytes::from(format!("{i:0>1000}")),
                headers: Vec::new(),
            })
            .collect();
        let one = [RunRef {
            topic: "t",
            partition: 0,
            records: &recs,
        }];
        let many: Vec<RunRef<'_>> = (0..500)
            .map(|i| RunRef {
                topic: "t",
                partition: i as u32,
                records: &recs[i..=i],
            })
            .collect();
        let (a, _) = encode_segment(&one, EncodeOptions::default()).unwrap();
        let (b, lay) = encode_segment(&many, EncodeOptions::default()).unwrap();
        assert!(
            b.len() < a.len() + a.len() / 4,
            "500 runs: {} B, one run: {} B",
            b.len(),
            a.len()
        );
        assert!(
            lay.iter()
                .all(|l| l.row_group_count == 1 && l.row_group_first == 0)
        );
        roundtrip(&many, EncodeOptions::default());
    }

    /// Decoding a run's row groups finds exactly its rows, wherever the row-group cuts
    /// fall, and a group decoded once serves every run inside it.
    #[test]
    fn shared_group_serves_each_run() {
        let a: Vec<Record> = (0..20).map(rec).collect();
        let runs: Vec<RunRef<'_>> = [(0u32, 7usize), (5, 20), (2, 1), (9, 3)]
            .iter()
            .map(|&(p, n)| RunRef {
                topic: "t",
                partition: p,
                records: &a[..n],
            })
            .collect();
        let (bytes, lay) = encode_segment(
            &runs,
            EncodeOptions {
                compression: Compression::Lz4,
                max_rows_per_row_group: 10,
            },
        )
        .unwrap();
        let Footer::Parsed(meta) = parse_footer(&bytes).unwrap() else {
            panic!()
        };
        // Rows: p0 0..7, p5 7..27, p2 27..28, p9 28..31; groups of 10 rows.
        assert_eq!((lay[1].row_group_first, lay[1].row_group_count), (0, 3));
        assert_eq!((lay[2].row_group_first, lay[2].row_group_count), (2, 1));
        let loc = |i: usize| RunLocation {
            topic: "t",
            partition: runs[i].partition,
            records: lay[i].records,
            row_group_first: lay[i].row_group_first,
            row_group_count: lay[i].row_group_count,
            byte_start: lay[i].byte_start,
            base_offset: 0,
            span: u64::from(lay[i].records),
        };
        let data = |i: usize| bytes.slice(lay[i].byte_start as usize..lay[i].byte_end as usize);
        // Group 2 (rows 20..30) holds the tail of p5, all of p2 and the start of p9.
        let g = Arc::new(decode_group(&meta, bytes.len() as u64, &loc(2), data(2)).unwrap());
        assert_eq!(g.runs(), 3);
        let p2 = g.run("t", 2, 1).unwrap();
        assert_eq!(p2.get(0).unwrap().value, &a[0].value[..]);
        assert!(g.run("t", 5, 1).is_err(), "p5 starts in an earlier group");
        assert!(g.run("t", 7, 1).is_err(), "no such run");
        assert!(g.run("t", 2, 2).is_err(), "more rows than the run has");
        let p5 = decode_run(&meta, bytes.len() as u64, &loc(1), data(1)).unwrap();
        assert_eq!(p5.len(), 20);
        assert_eq!(p5.get(19).unwrap().value, &a[19].value[..]);
        let batches = p5.fetch_batches(100, 5, 20).unwrap();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 15);
    }

    /// Compressible records encode to a fraction of their size; the bytes handed back
    /// (and cached by the writing agent, weighed by length) hold no more than that.
    #[test]
    fn encoded_bytes_hold_no_spare_capacity() {
        let big: Vec<Record> = (0..2000)
            .map(|i| Record {
                timestamp_ms: i,
                key: None,
                value: Bytes::from(vec![b'x'; 1024]),
                headers: Vec::new(),
            })
            .collect();
        let runs = [RunRef {
            topic: "t",
            partition: 0,
            records: &big,
        }];
        let (bytes, _) = encode_segment(
            &runs,
            EncodeOptions {
                compression: Compression::Lz4,
                max_rows_per_row_group: 16 * 1024,
            },
        )
        .unwrap();
        let len = bytes.len();
        assert!(
            len < 2000 * 1024 / 4,
            "compressible values compress ({len} B)"
        );
        let owned = bytes.try_into_mut().expect("the only handle");
        assert!(
            owned.capacity() <= len + len / 8 + 64,
            "{} B allocated for {len} B",
            owned.capacity()
        );
    }

    /// The value column: no statistics; a dictionary for repeated values, plain encoding
    /// soon for distinct ones (`payload_columns`).
    #[test]
    fn value_column_keeps_a_dictionary_only_for_repeated_values() {
        use parquet::file::reader::{FileReader, SerializedFileReader};
        let value_chunk = |distinct: bool| {
            let recs: Vec<Record> = (0..2000u32)
                .map(|i| Record {
                    timestamp_ms: i64::from(i),
                    key: Some(Bytes::from(format!("k{}", i % 10))),
                    value: Bytes::from(if distinct {
                        format!("{i:08}").repeat(128)
                    } else {
                        "v".repeat(1024)
                    }),
                    headers: Vec::new(),
                })
                .collect();
            let runs = [RunRef {
                topic: "t",
                partition: 0,
                records: &recs,
            }];
            let opts = EncodeOptions {
                compression: Compression::None,
                ..EncodeOptions::default()
            };
            let (bytes, _) = encode_segment(&runs, opts).unwrap();
            let reader = SerializedFileReader::new(bytes).unwrap();
            let rg = reader.metadata().row_group(0).clone();
            let col = |name: &str| {
                rg.columns()
                    .iter()
                    .find(|c| c.column_path().string() == name)
                    .unwrap()
                    .clone()
            };
            (col("value"), col("key"))
        };
        let (value, key) = value_chunk(true);
        assert!(value.statistics().is_none(), "no statistics on values");
        assert!(key.statistics().is_some(), "keys keep theirs");
        // Uncompressed: the dictionary page is the values it took before giving up.
        let dict = value
            .dictionary_page_offset()
            .map_or(0, |d| value.data_page_offset() - d);
        assert!(
            dict < 256 * 1024,
            "the dictionary gave up after the first mini-batch ({dict} B)"
        );
        // Uncompressed, 2 000 x 1 KiB: only a dictionary makes this small.
        let (value, _) = value_chunk(false);
        assert!(value.dictionary_page_offset().is_some());
        assert!(
            value.compressed_size() < 64 * 1024,
            "repeated values stay dictionary-encoded ({} B)",
            value.compressed_size()
        );
    }

    #[test]
    fn one_run_per_partition_per_segment() {
        let a: Vec<Record> = (0..3).map(rec).collect();
        let r = RunRef {
            topic: "t",
            partition: 1,
            records: &a,
        };
        assert!(matches!(
            encode_segment(&[r, r], EncodeOptions::default()),
            Err(SegmentError::Corrupt(_))
        ));
    }

    #[test]
    fn decode_rejects_wrong_partition() {
        let a: Vec<Record> = (0..10).map(rec).collect();
        let (bytes, meta, lay) = one_run(&a, 1);
        let loc = RunLocation {
            topic: "t",
            partition: 2,
            records: 10,
            row_group_first: 0,
            row_group_count: 1,
            byte_start: lay.byte_start,
            base_offset: 0,
            span: 10,
        };
        let data = bytes.slice(lay.byte_start as usize..lay.byte_end as usize);
        assert!(matches!(
            decode_run(&meta, bytes.len() as u64, &loc, data),
            Err(SegmentError::Corrupt(_))
        ));
    }

    #[test]
    fn max_size_record_roundtrips() {
        let big = Record {
            timestamp_ms: 0,
            key: Some(Bytes::from(vec![0u8; 100])),
            value: Bytes::from(vec![0xffu8; 1024 * 1024]),
            headers: vec![],
        };
        let empty = Record {
            timestamp_ms: -5,
            key: Some(Bytes::new()),
            value: Bytes::new(),
            headers: vec![("".into(), "".into())],
        };
        let recs = vec![big, empty];
        roundtrip(
            &[RunRef {
                topic: "big",
                partition: 0,
                records: &recs,
            }],
            EncodeOptions::default(),
        );
    }

    /// A partition file holds exactly the fetched rows with absolute offsets, in row
    /// groups cut by rows and by bytes, each decodable as a run at its base offset.
    #[test]
    fn partition_file_roundtrips_with_absolute_offsets() {
        let a: Vec<Record> = (0..5000).map(rec).collect();
        let (bytes, meta, lay) = one_run(&a, 2);
        let run = decode_whole(&bytes, &meta, &lay, 2);
        // Rows 100..5000 of the run are offsets 5100..10000.
        let batches = run.fetch_batches(5_100, 100, 5000).unwrap();
        for (rows, rg_bytes, groups) in [(250, usize::MAX, 20), (100_000, 2_000, 0)] {
            let (file, lays) = encode_partition_file(
                "t",
                2,
                &batches,
                PartitionFileOptions {
                    compression: Compression::Zstd(1),
                    row_group_rows: rows,
                    row_group_bytes: rg_bytes,
                },
            )
            .unwrap();
            if groups > 0 {
                assert_eq!(lays.len(), groups);
            } else {
                assert!(lays.len() > 2, "cut by bytes: {}", lays.len());
            }
            let Footer::Parsed(fmeta) = parse_footer(&file).unwrap() else {
                panic!()
            };
            assert!(is_partition_file(&fmeta) && !is_partition_file(&meta));
            let mut base = 5_100u64;
            for l in &lays {
                let loc = RunLocation {
                    topic: "t",
                    partition: 2,
                    records: l.records,
                    row_group_first: l.row_group_first,
                    row_group_count: 1,
                    byte_start: l.byte_start,
                    base_offset: base,
                    span: u64::from(l.records),
                };
                let data = file.slice(l.byte_start as usize..l.byte_end as usize);
                let got = decode_run(&fmeta, file.len() as u64, &loc, data.clone()).unwrap();
                for i in 0..l.records as usize {
                    let want = &a[(base - 5_000) as usize + i];
                    let v = got.get(i).unwrap();
                    assert_eq!((v.value, v.key), (&want.value[..], want.key.as_deref()));
                    assert_eq!(v.timestamp_ms, want.timestamp_ms);
                }
                let ts = &a[(base - 5_000) as usize..(base - 5_000) as usize + l.records as usize];
                assert_eq!(
                    l.min_timestamp_ms,
                    ts.iter().map(|r| r.timestamp_ms).min().unwrap()
                );
                assert_eq!(
                    l.max_timestamp_ms,
                    ts.iter().map(|r| r.timestamp_ms).max().unwrap()
                );
                // The wrong base offset is caught.
                let wrong = RunLocation {
                    base_offset: base + 1,
                    ..loc
                };
                assert!(decode_run(&fmeta, file.len() as u64, &wrong, data).is_err());
                assert_eq!(l.first_offset, base);
                base += u64::from(l.records);
            }
            assert_eq!(base, 10_000);
        }
        // Offsets that go back are refused.
        let back = [batches[0].slice(20, 10), batches[0].slice(0, 10)];
        assert!(
            encode_partition_file(
                "t",
                2,
                &back,
                PartitionFileOptions {
                    compression: Compression::Lz4,
                    row_group_rows: 100,
                    row_group_bytes: usize::MAX,
                },
            )
            .is_err()
        );
    }

    /// A compacted topic's partition file leaves gaps: rows keep their offsets, a run is
    /// addressed by offset (binary search), and decoding checks the rows lie in the
    /// entry's span.
    #[test]
    fn a_partition_file_with_gaps_keeps_each_rows_offset() {
        let a: Vec<Record> = (0..100).map(rec).collect();
        let (bytes, meta, lay) = one_run(&a, 0);
        let run = decode_whole(&bytes, &meta, &lay, 0);
        assert_eq!(
            run.absolute_offset(3),
            None,
            "flush segments carry positions"
        );
        assert_eq!(run.position_of(57, 50, 2), 9);
        // Keep offsets 1000 + {5..10, 40..42, 90}: rows of a log that starts at 1000.
        let all = run.fetch_batches(1000, 0, 100).unwrap();
        let kept = [all[0].slice(5, 5), all[0].slice(40, 2), all[0].slice(90, 1)];
        let (file, lays) = encode_partition_file(
            "t",
            0,
            &kept,
            PartitionFileOptions {
                compression: Compression::Zstd(1),
                row_group_rows: 1000,
                row_group_bytes: usize::MAX,
            },
        )
        .unwrap();
        assert_eq!(
            (lays.len(), lays[0].records, lays[0].first_offset),
            (1, 8, 1005)
        );
        let Footer::Parsed(fmeta) = parse_footer(&file).unwrap() else {
            panic!()
        };
        let floc = RunLocation {
            topic: "t",
            partition: 0,
            records: 8,
            row_group_first: 0,
            row_group_count: 1,
            byte_start: lays[0].byte_start,
            base_offset: 1000,
            span: 100,
        };
        let data = file.slice(lays[0].byte_start as usize..lays[0].byte_end as usize);
        let got = decode_run(&fmeta, file.len() as u64, &floc, data.clone()).unwrap();
        let offsets: Vec<u64> = (0..got.len())
            .map(|i| got.absolute_offset(i).unwrap())
            .collect();
        assert_eq!(offsets, [1005, 1006, 1007, 1008, 1009, 1040, 1041, 1090]);
        assert_eq!(got.get(5).unwrap().value, &a[40].value[..]);
        assert_eq!(got.position_of(1000, 1000, 0), 0);
        assert_eq!(got.position_of(1007, 1000, 0), 2);
        assert_eq!(
            got.position_of(1010, 1000, 0),
            5,
            "a gap leads to the next row"
        );
        assert_eq!(got.position_of(1091, 1000, 0), 8, "past the last row");
        let out = got.fetch_batches(0, 4, 7).unwrap();
        let col = out[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(col.values().to_vec(), [1009, 1040, 1041]);
        // A span that ends before the last row is corrupt.
        let short = RunLocation { span: 90, ..floc };
        assert!(decode_run(&fmeta, file.len() as u64, &short, data).is_err());
    }

    fn arb_record() -> impl Strategy<Value = Record> {
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::collection::vec(any::<u8>(), 0..512),
            proptest::collection::vec((".{0,8}", ".{0,16}"), 0..4),
        )
            .prop_map(|(ts, k, v, h)| Record {
                timestamp_ms: ts,
                key: k.map(Bytes::from),
                value: Bytes::from(v),
                headers: h,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_runs_roundtrip(
            runs in proptest::collection::btree_map(0u32..8, proptest::collection::vec(arb_record(), 1..40), 1..6),
            rows in 1usize..50,
        ) {
            let refs: Vec<RunRef<'_>> = runs.iter().map(|(p, r)| RunRef { topic: "prop", partition: *p, records: r }).collect();
            roundtrip(&refs, EncodeOptions { compression: Compression::Zstd(1), max_rows_per_row_group: rows });
        }
    }
}
