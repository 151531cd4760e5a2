//! Rendering engine results in the HTTP API's shapes: records as JSON (values and keys as
//! text or base64 per [`Encoding`]) or as an Arrow IPC stream; engine result types mapped
//! to the `floe-api` bodies.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use floe_api::{Encoding, FetchedRecord};
use floe_broker::fetch::Fetched;
use floe_core::ipc::ARROW_STREAM;
use floe_core::segment::RecordView;

use crate::error::{ApiError, ApiResult};

/// Header carrying `next_offset` on Arrow fetch responses.
pub const NEXT_OFFSET_HEADER: &str = "floe-next-offset";
/// Header carrying `end_offset` on Arrow fetch responses.
pub const END_OFFSET_HEADER: &str = "floe-end-offset";

/// Records as an Arrow IPC stream (zero-copy slices of the cached runs) with the
/// positions in headers.
pub(crate) fn arrow_response(records: &Fetched, next: u64, end: u64) -> ApiResult<Response> {
    let batches = records.arrow_batches().map_err(|e| {
        ApiError::from(floe_broker::BrokerError::internal(
            "segment_corrupt",
            e.to_string(),
        ))
    })?;
    let body = floe_core::ipc::write_stream(&floe_core::segment::fetch_schema(), &batches)
        .map_err(|e| {
            ApiError::from(floe_broker::BrokerError::internal(
                "encode_failed",
                e.to_string(),
            ))
        })?;
    Ok((
        [
            (header::CONTENT_TYPE, ARROW_STREAM.to_string()),
            (
                header::HeaderName::from_static(NEXT_OFFSET_HEADER),
                next.to_string(),
            ),
            (
                header::HeaderName::from_static(END_OFFSET_HEADER),
                end.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}

/// JSON bytes per record besides its key, value and headers (field names, offset,
/// timestamp, quotes), for sizing a response buffer up front.
const JSON_BYTES_PER_RECORD: usize = 96;

/// A JSON body with records, serialized into one buffer sized up front from the records'
/// bytes (`axum::Json` starts at 128 bytes and doubles: for a multi-MiB fetch that is a
/// dozen reallocations, each copying everything written so far, and up to twice the body
/// in memory at the last one). A wrong estimate costs a reallocation, nothing else.
pub(crate) fn json_with_records<T: serde::Serialize>(
    body: &T,
    record_bytes: usize,
    records: usize,
    encoding: Encoding,
) -> ApiResult<Response> {
    let text = match encoding {
        Encoding::Base64 => record_bytes.saturating_mul(4) / 3,
        Encoding::Auto => record_bytes,
    };
    let mut buf = Vec::with_capacity(
        text.saturating_add(records.saturating_mul(JSON_BYTES_PER_RECORD))
            .saturating_add(256),
    );
    serde_json::to_writer(&mut buf, body).map_err(|e| {
        ApiError::from(floe_broker::BrokerError::internal(
            "encode_failed",
            e.to_string(),
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, "application/json")], buf).into_response())
}

/// An owned record (queue deliveries) as a [`FetchedRecord`].
pub(crate) fn fetched_record(
    offset: u64,
    r: &floe_core::Record,
    encoding: Encoding,
) -> FetchedRecord {
    let (key, key_b64) = r
        .key
        .as_ref()
        .map_or((None, None), |k| text_or_b64(k, encoding));
    let (value, value_b64) = text_or_b64(&r.value, encoding);
    FetchedRecord {
        offset,
        timestamp_ms: r.timestamp_ms,
        key,
        key_b64,
        value,
        value_b64,
        headers: r.headers.iter().cloned().collect(),
    }
}

/// Fetched records as a JSON array in the shape of [`floe_api::FetchedRecord`],
/// serialized straight from the cached Arrow arrays (no per-record copies).
pub(crate) struct RecordsJson<'a> {
    pub(crate) records: &'a Fetched,
    pub(crate) encoding: Encoding,
}

impl serde::Serialize for RecordsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = ser.serialize_seq(Some(self.records.count))?;
        for (offset, v) in self.records.iter() {
            seq.serialize_element(&RecordJson {
                offset,
                v: &v,
                encoding: self.encoding,
            })?;
        }
        seq.end()
    }
}

struct RecordJson<'a> {
    offset: u64,
    v: &'a RecordView<'a>,
    encoding: Encoding,
}

/// One record as JSON, in the shape of [`floe_api::FetchedRecord`].
pub(crate) fn record_json(
    offset: u64,
    v: &RecordView<'_>,
    encoding: Encoding,
) -> serde_json::Result<String> {
    serde_json::to_string(&RecordJson {
        offset,
        v,
        encoding,
    })
}

/// Bytes as JSON text under `name`, or as base64 under `name_b64`: text only when the
/// encoding is `auto` and the bytes are UTF-8.
pub(crate) fn text_or_b64(b: &[u8], encoding: Encoding) -> (Option<String>, Option<String>) {
    match (encoding, std::str::from_utf8(b)) {
        (Encoding::Auto, Ok(t)) => (Some(t.to_string()), None),
        _ => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(b)),
        ),
    }
}

struct Headers<'a>(&'a [(&'a str, &'a str)]);

impl serde::Serialize for Headers<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl serde::Serialize for RecordJson<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = ser.serialize_map(None)?;
        m.serialize_entry("offset", &self.offset)?;
        m.serialize_entry("timestamp_ms", &self.v.timestamp_ms)?;
        let text = |b| match self.encoding {
            Encoding::Auto => std::str::from_utf8(b).ok(),
            Encoding::Base64 => None,
        };
        if let Some(k) = self.v.key {
            match text(k) {
                Some(s) => m.serialize_entry("key", s)?,
                None => m.serialize_entry(
                    "key_b64",
                    &base64::engine::general_purpose::STANDARD.encode(k),
                )?,
            }
        }
        match text(self.v.value) {
            Some(s) => m.serialize_entry("value", s)?,
            None => m.serialize_entry(
                "value_b64",
                &base64::engine::general_purpose::STANDARD.encode(self.v.value),
            )?,
        }
        m.serialize_entry("headers", &Headers(&self.v.headers))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sized buffer changes nothing in what is sent, whatever the estimate.
    #[tokio::test]
    async fn sized_json_is_plain_json() {
        let body =
            serde_json::json!({"records": [{"offset": 1, "value": "é\"x"}], "next_offset": 2});
        for (bytes, records) in [(0, 0), (3, 1), (1 << 20, 1000)] {
            for encoding in [Encoding::Auto, Encoding::Base64] {
                let r = json_with_records(&body, bytes, records, encoding).unwrap();
                assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
                let got = axum::body::to_bytes(r.into_body(), usize::MAX)
                    .await
                    .unwrap();
                assert_eq!(got.as_ref(), serde_json::to_vec(&body).unwrap().as_slice());
            }
        }
    }
}
