//! The segment format: one immutable Parquet object per flush.
//!
//! A segment holds every record of one flush, grouped into *runs*: the records of one
//! (topic, partition) in arrival order. Each run occupies its own contiguous row groups,
//! so a reader fetches one run with one byte-range read and decodes nothing else.
//!
//! Columns (readable by any Parquet tool):
//! - `topic` (utf8), `partition` (int32)
//! - `run_offset` (int64): position of the record inside its run. Offsets are assigned
//!   when the index commits the segment, so the absolute offset is
//!   `base_offset` (from the index) + `run_offset`.
//! - `timestamp` (timestamp\[ms, UTC\]): the agent's clock at produce time; informational.
//! - `key` (binary, nullable), `value` (binary)
//! - `headers` (list<struct<key: utf8, value: utf8>>)

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

fn run_batch(run: &RunRef<'_>, rows: Range<usize>) -> Result<RecordBatch, SegmentError> {
    let recs = &run.records[rows.clone()];
    let n = recs.len();
    let partition = i32::try_from(run.partition)
        .map_err(|_| SegmentError::Corrupt(format!("partition {} out of range", run.partition)))?;
    let topic: ArrayRef = Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
        run.topic, n,
    )));
    let part: ArrayRef = Arc::new(Int32Array::from_value(partition, n));
    let off: ArrayRef = Arc::new(Int64Array::from_iter_values(rows.map(|i| i as i64)));
    let ts: ArrayRef = Arc::new(
        TimestampMillisecondArray::from_iter_values(recs.iter().map(|r| r.timestamp_ms))
            .with_timezone("UTC"),
    );
    let key_bytes: usize = recs
        .iter()
        .map(|r| r.key.as_ref().map_or(0, Bytes::len))
        .sum();
    let mut keys = BinaryBuilder::with_capacity(n, key_bytes);
    let val_bytes: usize = recs.iter().map(|r| r.value.len()).sum();
    let mut vals = BinaryBuilder::with_capacity(n, val_bytes);
    let mut headers = ListBuilder::new(StructBuilder::from_fields(header_fields(), 0));
    for r in recs {
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
        topic,
        part,
        off,
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

/// Encode runs into one Parquet object. Each run gets its own row groups.
pub fn encode_segment(
    runs: &[RunRef<'_>],
    opts: EncodeOptions,
) -> Result<(Bytes, Vec<RunLayout>), SegmentError> {
    let compression = pq_compression(opts.compression)?;
    let max_rows = opts.max_rows_per_row_group.max(1);
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_max_row_group_row_count(Some(max_rows))
        .set_key_value_metadata(Some(vec![KeyValue::new(
            "floe.segment.version".to_string(),
            FORMAT_VERSION.to_string(),
        )]))
        .build();
    let total_bytes: usize = runs
        .iter()
        .flat_map(|r| r.records.iter())
        .map(Record::size)
        .sum();
    let mut out = Vec::with_capacity(total_bytes + 4096);
    let mut writer = ArrowWriter::try_new(&mut out, schema(), Some(props))?;
    let mut rg_spans = Vec::with_capacity(runs.len());
    for run in runs {
        if run.records.is_empty() {
            return Err(SegmentError::Corrupt("empty run".into()));
        }
        let first = writer.flushed_row_groups().len();
        let mut start = 0;
        while start < run.records.len() {
            let end = (start + max_rows).min(run.records.len());
            writer.write(&run_batch(run, start..end)?)?;
            writer.flush()?;
            start = end;
        }
        rg_spans.push((first, writer.flushed_row_groups().len()));
    }
    let meta = writer.close()?;
    // The buffer was sized for the uncompressed records; compressed output is often a
    // fraction of that. Callers cache these bytes weighed by their length (the writer's
    // segment cache), so give back the rest: otherwise a cached 1 MiB segment can pin an
    // 8 MiB allocation.
    out.shrink_to_fit();
    let bytes = Bytes::from(out);
    let mut layouts = Vec::with_capacity(runs.len());
    for (run, (first, end)) in runs.iter().zip(rg_spans) {
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
        let props = WriterProperties::builder()
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

/// One run, decoded; rows are addressed by their position in the run.
#[derive(Debug)]
pub struct DecodedRun {
    batches: Vec<Cols>,
    /// The decoded batches as read (same arrays as `batches`), for zero-copy Arrow output.
    raw: Vec<RecordBatch>,
    /// `starts[i]` = run position of the first row of `batches[i]`.
    starts: Vec<usize>,
    len: usize,
    mem: usize,
    /// Rows carry absolute offsets (a partition file), which may leave gaps.
    absolute: bool,
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

impl DecodedRun {
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Approximate memory held, for cache weighting.
    pub fn memory_size(&self) -> usize {
        self.mem
    }

    /// The absolute offset of the row at run position `i`, when the rows carry their own
    /// (partition files); `None` for flush segments (the index's base offset places them).
    pub fn absolute_offset(&self, i: usize) -> Option<u64> {
        if !self.absolute || i >= self.len {
            return None;
        }
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        u64::try_from(self.batches[b].offsets.value(i - self.starts[b])).ok()
    }

    /// The run position of the first record at or after `offset`, for an index entry whose
    /// first row is at position `skip` with offset `base` (`offset >= base`): the position
    /// follows from the offset in a dense run; a run with absolute offsets (gaps allowed)
    /// is searched.
    pub fn position_of(&self, offset: u64, base: u64, skip: usize) -> usize {
        if !self.absolute {
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
        let mut out = Vec::new();
        for (b, start) in self.raw.iter().zip(&self.starts) {
            let (lo, hi) = (from.max(*start), to.min(start + b.num_rows()));
            if lo >= hi {
                continue;
            }
            let (off, n) = (lo - start, hi - lo);
            let first = from_offset + (lo - from) as u64;
            let offsets: ArrayRef = if self.absolute {
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
        let b = self.starts.partition_point(|&s| s <= i) - 1;
        let c = &self.batches[b];
        let row = i - self.starts[b];
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
/// footer is `meta`. Checks the run's invariants: right topic and partition, and
/// `run_offset` exactly `0..records` (flush segments), or offsets strictly increasing
/// within `base_offset..base_offset + span` (partition files: exactly
/// `base_offset..base_offset + records` when the entry is dense).
pub fn decode_run(
    meta: &Arc<ParquetMetaData>,
    file_len: u64,
    loc: &RunLocation<'_>,
    data: Bytes,
) -> Result<DecodedRun, SegmentError> {
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
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(chunk, arm)
        .with_row_groups((first..end).collect())
        .with_batch_size(64 * 1024)
        .build()?;
    let mut batches = Vec::new();
    let mut raw = Vec::new();
    let mut starts = Vec::new();
    let mut len = 0usize;
    let mut last = None;
    let mut mem_total = mem;
    for batch in reader {
        let batch = batch?;
        mem_total += batch.get_array_memory_size();
        check_batch(&batch, loc, absolute, &range, &mut last)?;
        starts.push(len);
        len += batch.num_rows();
        batches.push(cols(&batch)?);
        raw.push(batch);
    }
    // At least: an index entry may cover only part of its run (rows taken out at commit).
    if len < loc.records as usize {
        return Err(SegmentError::Corrupt(format!(
            "run has {len} rows, index needs {}",
            loc.records
        )));
    }
    // The raw range is not kept: only the decoded arrays are.
    Ok(DecodedRun {
        batches,
        raw,
        starts,
        len,
        mem: mem_total - mem,
        absolute,
    })
}

fn col<T: 'static>(b: &RecordBatch, i: usize) -> Result<&T, SegmentError> {
    b.column(i)
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| SegmentError::Corrupt(format!("column {i} has an unexpected type")))
}

/// Each row: the run's topic and partition; column 2 the run position `0, 1, ...`
/// (flush segments) or an absolute offset in `range`, above the previous row's (partition
/// files). `last` carries the previous row's value across batches.
fn check_batch(
    b: &RecordBatch,
    loc: &RunLocation<'_>,
    absolute: bool,
    range: &Range<i64>,
    last: &mut Option<i64>,
) -> Result<(), SegmentError> {
    let topic = col::<StringArray>(b, 0)?;
    let part = col::<Int32Array>(b, 1)?;
    let off = col::<Int64Array>(b, 2)?;
    for i in 0..b.num_rows() {
        let o = off.value(i);
        let in_order = if absolute {
            range.contains(&o) && last.is_none_or(|l| o > l)
        } else {
            o == last.map_or(0, |l| l + 1)
        };
        if topic.value(i) != loc.topic || part.value(i) as i64 != loc.partition as i64 || !in_order
        {
            return Err(SegmentError::Corrupt(format!(
                "row is ({}, {}, {o}) after {last:?}, expected ({}, {}) and {}",
                topic.value(i),
                part.value(i),
                loc.topic,
                loc.partition,
                if absolute {
                    format!("an offset in {range:?} above the previous")
                } else {
                    "the next run position".to_string()
                }
            )));
        }
        *last = Some(o);
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
        assert_eq!(lay[0].row_group_count, 4);
        assert_eq!((lay[1].row_group_first, lay[1].row_group_count), (4, 1));
        assert_eq!(lay[2].row_group_first, 5);
        assert!(
            lay[0].byte_end <= lay[1].byte_start,
            "runs must not overlap"
        );
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
            runs in proptest::collection::vec((0u32..8, proptest::collection::vec(arb_record(), 1..40)), 1..6),
            rows in 1usize..50,
        ) {
            let refs: Vec<RunRef<'_>> = runs.iter().map(|(p, r)| RunRef { topic: "prop", partition: *p, records: r }).collect();
            roundtrip(&refs, EncodeOptions { compression: Compression::Zstd(1), max_rows_per_row_group: rows });
        }
    }
}
