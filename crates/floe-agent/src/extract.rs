//! Request extraction: bodies are read within `max_body_bytes`, must be JSON objects
//! where objects are documented (arrays of objects where documented), integers are int64;
//! path and query rejections follow the JSON error contract.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use bytes::Bytes;
use floe_api::{
    CommitRequest, CreateTopicRequest, InitProducerRequest, JoinGroupRequest, ProduceRecord,
    ProduceRequest, ReceiveRequest, SettleRequest,
};
use floe_core::ipc::ARROW_STREAM;
use serde::de::DeserializeOwned;
use std::borrow::Cow;

use crate::error::{ApiError, ApiResult};

pub(crate) fn path_err(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", format!("invalid path parameter: {e}"))
}

pub(crate) fn query_err(e: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_parameter", e.body_text())
}

/// The request body within `max_body_bytes` (413 `request_too_large` past it).
pub(crate) async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "request body exceeds the agent's max_body_bytes limit",
            )
        } else {
            ApiError::bad_request(
                "invalid_body",
                format!("could not read request body: {rej}"),
            )
        }
    })
}

/// 415 unless the request's Content-Type (when it has one) is JSON.
fn require_json(req: &Request) -> Result<(), ApiError> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ok = ct
            .to_str()
            .map(|s| {
                s.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("application/json")
            })
            .unwrap_or(false);
        if !ok {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "request bodies must be JSON (Content-Type: application/json)",
            ));
        }
    }
    Ok(())
}

/// JSON body extractor whose rejections follow the JSON error contract.
pub struct JsonBody<T>(pub T);

/// A request body type: a JSON object. `OBJECT_ARRAYS` names its fields that are arrays
/// of objects (each element must be an object too).
pub trait RequestBody: DeserializeOwned {
    const OBJECT_ARRAYS: &'static [&'static str] = &[];
    /// Parse a body: [`parse_object`] unless a type has a faster path with the same answers.
    fn parse(bytes: &[u8]) -> ApiResult<Self> {
        parse_object(bytes)
    }
}

impl RequestBody for CreateTopicRequest {}
impl RequestBody for InitProducerRequest {}
impl RequestBody for ProduceRequest {
    const OBJECT_ARRAYS: &'static [&'static str] = &["records"];
}
impl RequestBody for JoinGroupRequest {}
impl RequestBody for CommitRequest {
    const OBJECT_ARRAYS: &'static [&'static str] = &["offsets"];
}
impl RequestBody for ReceiveRequest {}
impl RequestBody for SettleRequest {}
impl RequestBody for floe_api::BeginTransactionRequest {}
impl RequestBody for floe_api::CommitTransactionRequest {
    const OBJECT_ARRAYS: &'static [&'static str] = &["offsets"];
}
impl RequestBody for floe_api::PrepareHalfRequest {
    const OBJECT_ARRAYS: &'static [&'static str] = &["records"];
}

impl<S: Send + Sync, T: RequestBody> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_json(&req)?;
        let bytes = read_body(req, state).await?;
        T::parse(&bytes).map(JsonBody)
    }
}

/// Integers in request bodies are JSON Schema integers within int64, as documented: `3.0`
/// is the integer 3 (JSON Schema says so), and anything beyond int64 is refused with 400
/// `invalid_json` rather than silently accepted as a u64.
fn normalize_numbers(v: &mut serde_json::Value) -> ApiResult<()> {
    match v {
        serde_json::Value::Number(n) => {
            if n.as_i64().is_some() {
                return Ok(());
            }
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
            {
                *v = serde_json::Value::from(f as i64);
                return Ok(());
            }
            if n.is_f64() {
                return Ok(()); // a fraction: the field's own type decides
            }
            Err(ApiError::bad_request(
                "invalid_json",
                format!("number {n} is out of range: integers are int64"),
            ))
        }
        serde_json::Value::Array(a) => a.iter_mut().try_for_each(normalize_numbers),
        serde_json::Value::Object(o) => o.values_mut().try_for_each(normalize_numbers),
        _ => Ok(()),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Every request body is documented as a JSON object. serde would read an array as a
/// struct's fields in order (`["m-1", 3, []]` as a commit), so anything that is not an
/// object where an object is documented is refused before it reaches serde.
pub(crate) fn parse_object<T: RequestBody>(bytes: &[u8]) -> ApiResult<T> {
    let invalid = |m: String| ApiError::bad_request("invalid_json", m);
    let mut v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("invalid JSON body: {e}")))?;
    normalize_numbers(&mut v)?;
    let serde_json::Value::Object(fields) = &v else {
        return Err(invalid(format!(
            "request body must be a JSON object, got {}",
            json_kind(&v)
        )));
    };
    for name in T::OBJECT_ARRAYS {
        if let Some(serde_json::Value::Array(items)) = fields.get(*name)
            && let Some((i, item)) = items.iter().enumerate().find(|(_, x)| !x.is_object())
        {
            return Err(invalid(format!(
                "{name}[{i}] must be a JSON object, got {}",
                json_kind(item)
            )));
        }
    }
    T::deserialize(v).map_err(|e| invalid(format!("invalid JSON body: {e}")))
}

/// Produce bodies are the hot path (issue #9: building a `serde_json::Value` per record —
/// a map, its key strings — then converting it cost allocations per record, and copying
/// each value into a `String` of its own cost a copy and an allocation more). A body is
/// parsed straight into [`RawRecord`]s, with objects required where objects are documented
/// ([`StrictProduce`], [`StrictRecord`]); a key or value written without escapes is not
/// copied but sliced out of the request body. Whatever that parse refuses — bad input, but
/// also numbers written as `3.0`, which the reference path accepts — goes through
/// [`parse_object`], whose answer (records or error) is the reference. The typed parse
/// accepts only what `parse_object` accepts with the same result
/// (`tests::produce_fast_path_answers_like_the_reference`).
pub(crate) fn parse_produce(body: &Bytes) -> ApiResult<Vec<RawRecord>> {
    // The body's UTF-8 checked once, whole (vectorised), rather than string by string
    // inside the parser: ≈ 10 % of the parse (issue #9). Not UTF-8: the reference decides.
    let typed = std::str::from_utf8(body)
        .ok()
        .map(serde_json::from_str::<StrictProduce<'_>>);
    match typed {
        Some(Ok(StrictProduce(records))) => {
            // A slice keeps the whole body alive while its record is buffered, and the
            // buffer counts record bytes only: slice when the strings are at least half
            // of the body, so it holds at most twice what it counts.
            let borrowed: usize = records
                .iter()
                .flat_map(|StrictRecord(r)| [&r.key, &r.key_b64, &r.value, &r.value_b64])
                .filter_map(|t| match t {
                    Some(Text(Cow::Borrowed(s))) => Some(s.len()),
                    _ => None,
                })
                .sum();
            let slice = borrowed >= body.len() / 2;
            let b = |t: Option<Text<'_>>| t.map(|t| text_bytes(body, t, slice));
            Ok(records
                .into_iter()
                .map(|StrictRecord(r)| RawRecord {
                    key: b(r.key),
                    key_b64: b(r.key_b64),
                    value: b(r.value),
                    value_b64: b(r.value_b64),
                    headers: r.headers.map(|Headers(h)| h),
                    partition: r.partition,
                })
                .collect())
        }
        None | Some(Err(_)) => parse_object::<ProduceRequest>(body)
            .map(|r| r.records.into_iter().map(RawRecord::from).collect()),
    }
}

/// A JSON string, borrowed from the input when it has no escapes (serde's own `Cow`
/// borrows only as a bare field, not inside an `Option`).
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// A string of the body: a slice of it when it was written without escapes (and `slice`),
/// else a copy.
fn text_bytes(body: &Bytes, Text(t): Text<'_>, slice: bool) -> Bytes {
    match t {
        // serde_json borrows only from its input, the body; checked rather than trusted
        // (`slice_ref` would panic on anything else).
        Cow::Borrowed(s) => {
            let (r, inside) = (s.as_bytes().as_ptr_range(), body.as_ptr_range());
            if slice && r.start >= inside.start && r.end <= inside.end {
                body.slice_ref(s.as_bytes())
            } else {
                Bytes::copy_from_slice(s.as_bytes())
            }
        }
        Cow::Owned(s) => Bytes::from(s),
    }
}

/// One record of a JSON produce body before its fields are checked and decoded: `key`
/// and `value` are UTF-8 text, the `_b64` forms still base64.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub key: Option<Bytes>,
    pub key_b64: Option<Bytes>,
    pub value: Option<Bytes>,
    pub value_b64: Option<Bytes>,
    /// Header names and values, ordered by name, one per name (the last given wins), as
    /// the reference path's map gives them.
    pub headers: Option<Vec<(String, String)>>,
    pub partition: Option<i64>,
}

impl From<ProduceRecord> for RawRecord {
    fn from(r: ProduceRecord) -> Self {
        Self {
            key: r.key.map(Bytes::from),
            key_b64: r.key_b64.map(Bytes::from),
            value: r.value.map(Bytes::from),
            value_b64: r.value_b64.map(Bytes::from),
            headers: r.headers.map(|m| m.into_iter().collect()),
            partition: r.partition,
        }
    }
}

/// [`ProduceRecord`]'s fields, strings borrowed from the body where they can be.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordRef<'a> {
    #[serde(default, borrow)]
    key: Option<Text<'a>>,
    #[serde(default, borrow)]
    key_b64: Option<Text<'a>>,
    #[serde(default, borrow)]
    value: Option<Text<'a>>,
    #[serde(default, borrow)]
    value_b64: Option<Text<'a>>,
    #[serde(default)]
    headers: Option<Headers>,
    #[serde(default)]
    partition: Option<i64>,
}

/// A record's `headers` object read straight into the list a record carries (issue #9:
/// a `BTreeMap` per record, then rebuilt as a list, cost an allocation and a copy more per
/// record than the pairs themselves). Same answer as the map: ordered by name, the last
/// value given for a name wins.
struct Headers(Vec<(String, String)>);

impl<'de> serde::Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Headers;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of header names to string values")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Headers, A::Error> {
                let mut pairs: Vec<(String, String)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(1));
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                if pairs.len() > 1 {
                    // Stable sort of the reversed list: of equal names the last given comes
                    // first, and `dedup_by` keeps the first of each run.
                    pairs.reverse();
                    pairs.sort_by(|a, b| a.0.cmp(&b.0));
                    pairs.dedup_by(|later, kept| later.0 == kept.0);
                }
                Ok(Headers(pairs))
            }
        }
        d.deserialize_map(V)
    }
}

/// A produce request read as a JSON object only (`{"records": [...]}`, nothing else).
struct StrictProduce<'a>(Vec<StrictRecord<'a>>);

/// One record read as a JSON object only (serde's derive would also read an array).
struct StrictRecord<'a>(RecordRef<'a>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for StrictRecord<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = StrictRecord<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a record object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<StrictRecord<'a>, A::Error> {
                use serde::Deserialize as _;
                RecordRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(StrictRecord)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for StrictProduce<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = StrictProduce<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a produce request object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StrictProduce<'a>, A::Error> {
                use serde::de::Error as _;
                let mut records: Option<Vec<StrictRecord<'a>>> = None;
                while let Some(k) = map.next_key::<Cow<'de, str>>()? {
                    if k != "records" || records.is_some() {
                        return Err(A::Error::custom("not a plain produce request"));
                    }
                    records = Some(map.next_value()?);
                }
                records
                    .map(StrictProduce)
                    .ok_or_else(|| A::Error::missing_field("records"))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A produce body: JSON (default) or an Arrow IPC stream (`Content-Type:
/// application/vnd.apache.arrow.stream`), decoded to the same records.
pub enum ProduceBody {
    Json(Vec<RawRecord>),
    Arrow(Bytes),
}

impl<S: Send + Sync> FromRequest<S> for ProduceBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let arrow = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| {
                c.trim_start()
                    .to_ascii_lowercase()
                    .starts_with(ARROW_STREAM)
            });
        if !arrow {
            require_json(&req)?;
            let bytes = read_body(req, state).await?;
            return parse_produce(&bytes).map(Self::Json);
        }
        let bytes = read_body(req, state).await?;
        Ok(Self::Arrow(bytes))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn answer(r: ApiResult<Vec<RawRecord>>) -> String {
        match r {
            Ok(v) => format!("{v:?}"),
            Err(e) => format!("error {e:?}"),
        }
    }

    /// Every body gets from the typed fast path exactly what the reference path gives.
    #[test]
    fn produce_fast_path_answers_like_the_reference() {
        let bodies = [
            r#"{"records":[{"value":"a"},{"key":"k","value":"b","partition":1,"headers":{"h":"v"}}]}"#,
            r#"{"records":[]}"#,
            r#" { "records" : [ { "value_b64" : "AAE=" , "key_b64":"AA==" } ] } "#,
            r#"{"records":[{"value":"a","partition":3.0}]}"#,
            r#"{"records":[{"value":"a","partition":3.5}]}"#,
            r#"{"records":[{"value":"a","partition":18446744073709551615}]}"#,
            r#"{"records":[{"value":"a","partition":-1}]}"#,
            r#"{"records":[["a"]]}"#,
            r#"{"records":[{"value":"a"},"b"]}"#,
            r#"["records"]"#,
            r#"[[{"value":"a"}]]"#,
            r#"{"records":[{"value":"a"}],"extra":1}"#,
            r#"{"records":[{"value":"a","extra":1}]}"#,
            r#"{"records":[{"value":"a"}],"records":[{"value":"b"}]}"#,
            r#"{"records":[{"value":"a","value":"b"}]}"#,
            r#"{}"#,
            r#"{"records":null}"#,
            r#"{"records":[{"value":null}]}"#,
            r#"{"records":[{"value":1}]}"#,
            r#"{"records":[{"headers":{"a":1}}]}"#,
            r#"{"records":[{"value":"a","headers":{"z":"1","b":"2","a":"3"}}]}"#,
            r#"{"records":[{"value":"a","headers":{"b":"1","a":"2","b":"3","a":"4","b":"5"}}]}"#,
            r#"{"records":[{"value":"a","headers":{}}]}"#,
            r#"{"records":[{"value":"a","headers":null}]}"#,
            r#"{"records":[{"value":"a","headers":["h","v"]}]}"#,
            r#"{"records":[{"value":"a","headers":{"hé":"v
"}}]}"#,
            r#"{"records":[{"value":"a\u00e9\n"}]}"#,
            r#"{"records":[{"value":"a"}]} x"#,
            r#"{"records":[{"value":"a"}"#,
            "",
            "null",
            "3",
        ];
        for b in bodies {
            let reference = parse_object::<ProduceRequest>(b.as_bytes())
                .map(|r| r.records.into_iter().map(RawRecord::from).collect());
            assert_eq!(
                answer(parse_produce(&Bytes::from_static(b.as_bytes()))),
                answer(reference),
                "body {b}"
            );
        }
        // Not UTF-8 (a raw byte, and an encoded surrogate): the reference's answer.
        for b in [
            &b"{\"records\":[{\"value\":\"a\xffb\"}]}"[..],
            &b"{\"records\":[{\"value\":\"\xed\xa0\x80\"}]}"[..],
        ] {
            let reference = parse_object::<ProduceRequest>(b)
                .map(|r| r.records.into_iter().map(RawRecord::from).collect());
            let fast = answer(parse_produce(&Bytes::copy_from_slice(b)));
            assert_eq!(fast, answer(reference));
            assert!(fast.starts_with("error"), "{fast}");
        }
        // And the fast path takes the plain ones itself, slicing unescaped strings out of
        // the body rather than copying them.
        assert!(serde_json::from_slice::<StrictProduce<'_>>(bodies[0].as_bytes()).is_ok());
        assert!(serde_json::from_slice::<StrictProduce<'_>>(bodies[7].as_bytes()).is_err());
        let big = "b".repeat(1024);
        let body = Bytes::from(format!(r#"{{"records":[{{"key":"k1","value":"{big}"}}]}}"#));
        let recs = parse_produce(&body).unwrap();
        let v = recs[0].value.as_ref().unwrap();
        assert_eq!(&v[..], big.as_bytes());
        let inside = body.as_ptr_range();
        assert!(
            inside.contains(&v.as_ptr()),
            "the value is a slice of the body"
        );
        // Mostly not strings (here: whitespace): copied, so no record pins the body.
        let sparse = Bytes::from(format!(
            r#"{{"records":[{{"value":"b"}}{}]}}"#,
            " ".repeat(64)
        ));
        let recs = parse_produce(&sparse).unwrap();
        let v = recs[0].value.as_ref().unwrap();
        assert!(!sparse.as_ptr_range().contains(&v.as_ptr()), "copied");
        let escaped = Bytes::from_static(br#"{"records":[{"value":"a\u00e9\n"}]}"#);
        let recs = parse_produce(&escaped).unwrap();
        assert_eq!(&recs[0].value.as_ref().unwrap()[..], "a\u{e9}\n".as_bytes());
        // Headers come as a list ordered by name, the last value given for a name kept.
        assert!(serde_json::from_slice::<StrictProduce<'_>>(bodies[21].as_bytes()).is_ok());
        let recs = parse_produce(&Bytes::from_static(bodies[21].as_bytes())).unwrap();
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(k, x)| (k.to_string(), x.to_string()))
                .collect()
        };
        assert_eq!(recs[0].headers, Some(pairs(&[("a", "4"), ("b", "5")])));
    }
}
