//! The binary wire format: Arrow IPC streams (`application/vnd.apache.arrow.stream`),
//! negotiated by `Content-Type` (produce) and `Accept` (fetch). JSON stays the default.
//!
//! Produce batches have a `value` column (binary or utf8, no nulls) and optionally `key`
//! (binary or utf8, nullable), `partition` (int32 or int64, nullable) and `headers`
//! (list<struct<key: utf8, value: utf8>>). Fetch responses use [`crate::segment::fetch_schema`].

use std::io::Cursor;
use std::sync::Arc;

use arrow_array::builder::{BinaryBuilder, Int32Builder};
use arrow_array::{
    Array, ArrayRef, BinaryArray, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    StructArray,
};
use arrow_schema::{ArrowError, DataType, Field, Schema};
use bytes::Bytes;

/// Media type of an Arrow IPC stream.
pub const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("invalid Arrow IPC stream: {0}")]
    Arrow(#[from] ArrowError),
    #[error("{0}")]
    Schema(String),
    #[error("record {0}: {1}")]
    Record(usize, String),
    #[error("more than {0} records")]
    TooMany(usize),
}

/// A record as decoded from a produce request, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingRecord {
    pub key: Option<Bytes>,
    pub value: Bytes,
    pub headers: Vec<(String, String)>,
    pub partition: Option<i64>,
}

enum BytesCol<'a> {
    Bin(&'a BinaryArray),
    Str(&'a StringArray),
}

impl BytesCol<'_> {
    fn get(&self, i: usize) -> Option<&[u8]> {
        match self {
            Self::Bin(a) => (!a.is_null(i)).then(|| a.value(i)),
            Self::Str(a) => (!a.is_null(i)).then(|| a.value(i).as_bytes()),
        }
    }
}

fn bytes_col<'a>(a: &'a ArrayRef, name: &str) -> Result<BytesCol<'a>, IpcError> {
    if let Some(b) = a.as_any().downcast_ref::<BinaryArray>() {
        return Ok(BytesCol::Bin(b));
    }
    if let Some(s) = a.as_any().downcast_ref::<StringArray>() {
        return Ok(BytesCol::Str(s));
    }
    Err(IpcError::Schema(format!(
        "column {name:?} must be binary or utf8, is {}",
        a.data_type()
    )))
}

/// Decode a produce request body. Stops with an error past `max_records` records.
pub fn decode_produce(body: &[u8], max_records: usize) -> Result<Vec<IncomingRecord>, IpcError> {
    let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(body), None)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let schema = batch.schema();
        for f in schema.fields() {
            if !matches!(f.name().as_str(), "key" | "value" | "partition" | "headers") {
                return Err(IpcError::Schema(format!(
                    "unknown column {:?}: allowed are key, value, partition, headers",
                    f.name()
                )));
            }
        }
        if out.len() + batch.num_rows() > max_records {
            return Err(IpcError::TooMany(max_records));
        }
        let value = batch
            .column_by_name("value")
            .ok_or_else(|| IpcError::Schema("column \"value\" is required".into()))?;
        let value = bytes_col(value, "value")?;
        let key = batch
            .column_by_name("key")
            .map(|k| bytes_col(k, "key"))
            .transpose()?;
        let partition = batch.column_by_name("partition");
        let p32 = partition.and_then(|p| p.as_any().downcast_ref::<Int32Array>());
        let p64 = partition.and_then(|p| p.as_any().downcast_ref::<Int64Array>());
        if partition.is_some() && p32.is_none() && p64.is_none() {
            return Err(IpcError::Schema(
                "column \"partition\" must be int32 or int64".into(),
            ));
        }
        let headers = match batch.column_by_name("headers") {
            None => None,
            Some(h) => {
                let list = h.as_any().downcast_ref::<ListArray>().ok_or_else(|| {
                    IpcError::Schema(
                        "column \"headers\" must be list<struct<key: utf8, value: utf8>>".into(),
                    )
                })?;
                let st = list
                    .values()
                    .as_any()
                    .downcast_ref::<StructArray>()
                    .ok_or_else(|| {
                        IpcError::Schema(
                            "headers items must be struct<key: utf8, value: utf8>".into(),
                        )
                    })?;
                let hk = st
                    .column_by_name("key")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>());
                let hv = st
                    .column_by_name("value")
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>());
                match (hk, hv) {
                    (Some(k), Some(v)) => Some((list, k, v)),
                    _ => {
                        return Err(IpcError::Schema(
                            "headers items must be struct<key: utf8, value: utf8>".into(),
                        ));
                    }
                }
            }
        };
        for i in 0..batch.num_rows() {
            let n = out.len();
            let v = value
                .get(i)
                .ok_or_else(|| IpcError::Record(n, "value is null".into()))?;
            let k = key.as_ref().and_then(|k| k.get(i));
            let p = match (p32, p64) {
                (Some(a), _) => (!a.is_null(i)).then(|| i64::from(a.value(i))),
                (_, Some(a)) => (!a.is_null(i)).then(|| a.value(i)),
                _ => None,
            };
            let hs = match &headers {
                Some((list, hk, hv)) if !list.is_null(i) => {
                    let offs = list.value_offsets();
                    (offs[i] as usize..offs[i + 1] as usize)
                        .map(|j| (hk.value(j).to_string(), hv.value(j).to_string()))
                        .collect()
                }
                _ => Vec::new(),
            };
            out.push(IncomingRecord {
                key: k.map(Bytes::copy_from_slice),
                value: Bytes::copy_from_slice(v),
                headers: hs,
                partition: p,
            });
        }
    }
    Ok(out)
}

/// (key, value, partition) of a record to encode with [`encode_produce`].
pub type RecordParts<'a> = (Option<&'a [u8]>, &'a [u8], Option<i32>);

/// Encode records (key, value, partition) as a produce request body.
pub fn encode_produce(records: &[RecordParts<'_>]) -> Result<Bytes, IpcError> {
    let total: usize = records.iter().map(|r| r.1.len()).sum();
    let mut k = BinaryBuilder::with_capacity(records.len(), 0);
    let mut v = BinaryBuilder::with_capacity(records.len(), total);
    let mut p = Int32Builder::with_capacity(records.len());
    for (key, value, part) in records {
        k.append_option(*key);
        v.append_value(value);
        p.append_option(*part);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, false),
        Field::new("partition", DataType::Int32, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(k.finish()),
            Arc::new(v.finish()),
            Arc::new(p.finish()),
        ],
    )?;
    write_stream(&schema, &[batch])
}

/// Write batches as one IPC stream.
pub fn write_stream(schema: &Arc<Schema>, batches: &[RecordBatch]) -> Result<Bytes, IpcError> {
    let size: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let mut buf = Vec::with_capacity(size + 1024);
    {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut buf, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(Bytes::from(buf))
}

/// A fetched record decoded from an Arrow fetch response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedBinary {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Decode an Arrow fetch response (offset, timestamp, key, value; headers are skipped).
pub fn decode_fetch(body: &[u8]) -> Result<Vec<FetchedBinary>, IpcError> {
    let reader = arrow_ipc::reader::StreamReader::try_new(Cursor::new(body), None)?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch?;
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| IpcError::Schema(format!("missing column {name}")))
        };
        let off = col("offset")?
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| IpcError::Schema("offset type".into()))?;
        let ts = col("timestamp")?
            .as_any()
            .downcast_ref::<arrow_array::TimestampMillisecondArray>()
            .ok_or_else(|| IpcError::Schema("timestamp type".into()))?;
        let key = col("key")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| IpcError::Schema("key type".into()))?;
        let value = col("value")?
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| IpcError::Schema("value type".into()))?;
        for i in 0..batch.num_rows() {
            out.push(FetchedBinary {
                offset: off.value(i) as u64,
                timestamp_ms: ts.value(i),
                key: (!key.is_null(i)).then(|| key.value(i).to_vec()),
                value: value.value(i).to_vec(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_roundtrip_and_rejections() {
        let recs: Vec<RecordParts<'_>> =
            vec![(Some(b"k"), b"v1", None), (None, b"\xff\x00", Some(3))];
        let body = encode_produce(&recs).unwrap();
        let got = decode_produce(&body, 10).unwrap();
        assert_eq!(
            got[0],
            IncomingRecord {
                key: Some(Bytes::from_static(b"k")),
                value: Bytes::from_static(b"v1"),
                headers: vec![],
                partition: None
            }
        );
        assert_eq!(got[1].partition, Some(3));
        assert_eq!(got[1].value, Bytes::from_static(b"\xff\x00"));
        assert!(matches!(
            decode_produce(&body, 1),
            Err(IpcError::TooMany(1))
        ));
        assert!(matches!(
            decode_produce(b"not arrow", 10),
            Err(IpcError::Arrow(_))
        ));
        assert!(matches!(
            decode_produce(&body[..body.len() / 2], 10),
            Err(IpcError::Arrow(_))
        ));
        let schema = Arc::new(Schema::new(vec![Field::new(
            "other",
            DataType::Int32,
            false,
        )]));
        let b = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![1]))])
            .unwrap();
        assert!(matches!(
            decode_produce(&write_stream(&schema, &[b]).unwrap(), 10),
            Err(IpcError::Schema(_))
        ));
    }
}
