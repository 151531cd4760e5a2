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

/// A produce answer, `{"offsets":[{"partition":P,"offset":O},...]}`, written straight
/// into a buffer sized up front: `axum::Json` grows its buffer from 128 bytes and serde's
/// map serializer escapes every field name (≈ 1.5 % of the agent's CPU at 64 producers,
/// issue #9). The same bytes as serde_json's (`tests::produce_answer_is_serde_jsons`).
pub(crate) fn produce_answer(offsets: impl ExactSizeIterator<Item = (u32, u64)>) -> Response {
    let mut b = Vec::with_capacity(16 + offsets.len() * 48);
    b.extend_from_slice(br#"{"offsets":["#);
    let (mut p, mut o) = (itoa::Buffer::new(), itoa::Buffer::new());
    for (i, (partition, offset)) in offsets.enumerate() {
        if i > 0 {
            b.push(b',');
        }
        b.extend_from_slice(br#"{"partition":"#);
        b.extend_from_slice(p.format(partition).as_bytes());
        b.extend_from_slice(br#","offset":"#);
        b.extend_from_slice(o.format(offset).as_bytes());
        b.push(b'}');
    }
    b.extend_from_slice(b"]}");
    ([(header::CONTENT_TYPE, "application/json")], b).into_response()
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

/// Bytes of JSON a streamed fetch body serializes per piece it sends.
const JSON_CHUNK_BYTES: usize = 64 * 1024;

/// Where a streamed fetch body is: before the opening, in the records, or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamAt {
    Start,
    Records { first: bool },
    Done,
}

/// Append the next piece of a fetch body to `buf`: the opening first, then records from
/// `next` until `buf` holds [`JSON_CHUNK_BYTES`], then (when `next` runs out) the
/// closing with the offsets `tail` (next, end, stable).
fn write_piece<'a>(
    buf: &mut Vec<u8>,
    at: &mut StreamAt,
    mut next: impl FnMut() -> Option<(u64, RecordView<'a>)>,
    encoding: Encoding,
    tail: [u64; 3],
) -> serde_json::Result<()> {
    let mut first = match *at {
        StreamAt::Done => return Ok(()),
        StreamAt::Start => {
            buf.extend_from_slice(b"{\"records\":[");
            true
        }
        StreamAt::Records { first } => first,
    };
    while buf.len() < JSON_CHUNK_BYTES {
        let Some((offset, v)) = next() else {
            let [n, e, s] = tail;
            buf.extend_from_slice(
                format!("],\"next_offset\":{n},\"end_offset\":{e},\"stable_offset\":{s}}}")
                    .as_bytes(),
            );
            *at = StreamAt::Done;
            return Ok(());
        };
        if !first {
            buf.push(b',');
        }
        first = false;
        write_record(buf, offset, &v, encoding)?;
    }
    *at = StreamAt::Records { first };
    Ok(())
}

/// A partition fetch as JSON (the shape of [`floe_api::FetchResponse`]), serialized in
/// pieces of ~64 KiB while the response is sent instead of into one buffer of the whole
/// body: a 16 MiB fetch holds one piece at a time (plus the cached runs it reads), and
/// nothing is copied into a growing buffer. Sent with chunked transfer encoding.
pub(crate) fn fetch_json_stream(
    records: Fetched,
    encoding: Encoding,
    next_offset: u64,
    end_offset: u64,
    stable_offset: u64,
) -> Response {
    let tail = [next_offset, end_offset, stable_offset];
    let state = (
        records,
        floe_broker::fetch::Cursor::default(),
        StreamAt::Start,
    );
    let pieces = futures::stream::unfold(state, move |(records, mut cursor, mut at)| async move {
        if at == StreamAt::Done {
            return None;
        }
        let mut buf = Vec::with_capacity(JSON_CHUNK_BYTES + 4096);
        let r = write_piece(
            &mut buf,
            &mut at,
            || records.next_record(&mut cursor),
            encoding,
            tail,
        );
        if r.is_err() {
            at = StreamAt::Done;
        }
        Some((r.map(|()| bytes::Bytes::from(buf)), (records, cursor, at)))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Body::from_stream(pieces),
    )
        .into_response()
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

/// One record as JSON, byte for byte what serializing [`RecordJson`] with serde_json writes
/// (`tests::hand_written_record_json_is_serde_json`), for the partition fetch stream: most
/// values need no escaping, and checking that for a whole value at once and copying it is
/// several times faster than serde_json's byte-by-byte escape loop (7 % of the agent's
/// samples at 64 producers + consumers, issue #9).
fn write_record(
    buf: &mut Vec<u8>,
    offset: u64,
    v: &RecordView<'_>,
    encoding: Encoding,
) -> serde_json::Result<()> {
    buf.extend_from_slice(b"{\"offset\":");
    serde_json::to_writer(&mut *buf, &offset)?;
    buf.extend_from_slice(b",\"timestamp_ms\":");
    serde_json::to_writer(&mut *buf, &v.timestamp_ms)?;
    let field = |buf: &mut Vec<u8>, name: &[u8], b: &[u8]| {
        let text = match encoding {
            Encoding::Auto => std::str::from_utf8(b).ok(),
            Encoding::Base64 => None,
        };
        buf.extend_from_slice(b",\"");
        buf.extend_from_slice(name);
        match text {
            Some(t) => {
                buf.extend_from_slice(b"\":");
                write_json_str(buf, t)
            }
            None => {
                // The base64 alphabet needs no escaping.
                buf.extend_from_slice(b"_b64\":\"");
                buf.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(b)
                        .as_bytes(),
                );
                buf.push(b'"');
                Ok(())
            }
        }
    };
    if let Some(k) = v.key {
        field(buf, b"key", k)?;
    }
    field(buf, b"value", v.value)?;
    buf.extend_from_slice(b",\"headers\":{");
    for (i, (k, val)) in v.headers.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        write_json_str(buf, k)?;
        buf.push(b':');
        write_json_str(buf, val)?;
    }
    buf.extend_from_slice(b"}}");
    Ok(())
}

/// `s` as a JSON string the way serde_json writes it: copied as is when no byte needs an
/// escape (control characters, `"`, `\`; checked over the whole string without a branch
/// per byte), else written by serde_json.
fn write_json_str(buf: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    let escapes = s
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escapes {
        return serde_json::to_writer(&mut *buf, s);
    }
    buf.reserve(s.len() + 2);
    buf.push(b'"');
    buf.extend_from_slice(s.as_bytes());
    buf.push(b'"');
    Ok(())
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

    #[tokio::test]
    async fn produce_answer_is_serde_jsons() {
        for offsets in [
            vec![],
            vec![(0u32, 0u64)],
            vec![(3, 17), (u32::MAX, u64::MAX), (12, 1_000_000_007)],
        ] {
            let want = serde_json::to_vec(&floe_api::ProduceResponse {
                offsets: offsets
                    .iter()
                    .map(|&(partition, offset)| floe_api::RecordOffset { partition, offset })
                    .collect(),
            })
            .unwrap();
            let r = produce_answer(offsets.iter().copied());
            assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
            let got = axum::body::to_bytes(r.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
    }

    /// The hand-written record JSON of the fetch stream is exactly serde_json's.
    #[test]
    fn hand_written_record_json_is_serde_json() {
        let texts: Vec<String> = vec![
            String::new(),
            "plain".into(),
            "x".repeat(5000),
            "quote \" backslash \\ slash / tab \t nl \n cr \r bs \u{8} ff \u{c} nul \u{0} us \u{1f} del \u{7f}".into(),
            "é ü 中文 🎉 \u{2028} \u{2029}".into(),
            format!("{}\"", "a".repeat(100)),
        ];
        let binary: Vec<Vec<u8>> = vec![vec![0xff, 0, 1], vec![0xc3], b"ok".to_vec()];
        let mut values: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
        values.extend(binary.iter().map(|b| b.as_slice()));
        for (i, value) in values.iter().enumerate() {
            for key in [None, Some(values[(i + 3) % values.len()])] {
                for headers in [vec![], vec![("h", "w\"q"), ("a\nb", texts[4].as_str())]] {
                    for encoding in [Encoding::Auto, Encoding::Base64] {
                        let v = RecordView {
                            timestamp_ms: -5 + i as i64,
                            key,
                            value,
                            headers: headers.clone(),
                        };
                        let offset = u64::MAX - i as u64;
                        let mut ours = Vec::new();
                        write_record(&mut ours, offset, &v, encoding).unwrap();
                        let serde = serde_json::to_vec(&RecordJson {
                            offset,
                            v: &v,
                            encoding,
                        })
                        .unwrap();
                        assert_eq!(
                            String::from_utf8_lossy(&ours),
                            String::from_utf8_lossy(&serde),
                            "value {i} key {key:?} encoding {encoding:?}"
                        );
                    }
                }
            }
        }
    }

    /// A streamed fetch body, piece after piece, is the `FetchResponse` JSON of its records:
    /// empty, one piece, many pieces; text and base64.
    #[test]
    fn streamed_pieces_make_one_fetch_response() {
        let values: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| format!("value-{i}-{}", "x".repeat((i % 200) as usize)).into_bytes())
            .collect();
        let key = [0xffu8, 0, 1];
        for n in [0usize, 1, 10, 3000] {
            for encoding in [Encoding::Auto, Encoding::Base64] {
                let views: Vec<RecordView<'_>> = values[..n]
                    .iter()
                    .enumerate()
                    .map(|(i, v)| RecordView {
                        timestamp_ms: i as i64,
                        key: (i % 2 == 0).then_some(&key[..]),
                        value: v,
                        headers: vec![("h", "w\"q")],
                    })
                    .collect();
                let mut it = views.iter().enumerate();
                let mut next = || it.next().map(|(i, v)| (100 + i as u64, v.clone()));
                let (mut at, mut body, mut pieces) = (StreamAt::Start, Vec::new(), 0);
                while at != StreamAt::Done {
                    let mut buf = Vec::new();
                    write_piece(&mut buf, &mut at, &mut next, encoding, [7, 8, 9]).unwrap();
                    assert!(buf.len() < JSON_CHUNK_BYTES + 2048);
                    body.extend_from_slice(&buf);
                    pieces += 1;
                }
                let r: floe_api::FetchResponse = serde_json::from_slice(&body).unwrap();
                assert_eq!((r.next_offset, r.end_offset, r.stable_offset), (7, 8, 9));
                assert_eq!(r.records.len(), n);
                for (i, rec) in r.records.iter().enumerate() {
                    assert_eq!(rec.offset, 100 + i as u64);
                    assert_eq!(rec.timestamp_ms, i as i64);
                    let value = match encoding {
                        Encoding::Auto => rec.value.clone().unwrap().into_bytes(),
                        Encoding::Base64 => base64::engine::general_purpose::STANDARD
                            .decode(rec.value_b64.as_ref().unwrap())
                            .unwrap(),
                    };
                    assert_eq!(value, values[i]);
                    assert_eq!(rec.key_b64.is_some(), i % 2 == 0);
                    assert_eq!(rec.headers.get("h").map(String::as_str), Some("w\"q"));
                }
                if n == 3000 {
                    assert!(pieces > 3, "{pieces} pieces");
                }
            }
        }
    }

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
