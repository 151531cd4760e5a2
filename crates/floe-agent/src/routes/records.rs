//! Produce and fetch.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use floe_api::{
    Encoding, ErrorBody, FetchResponse, InitProducerRequest, ProduceRequest, ProduceResponse,
    ProducerSessionInfo,
};
use floe_broker::Broker;
use floe_broker::produce::ProducerStamp;
use floe_broker::records::{FetchRequest, Isolation, too_many_records};
use floe_core::ipc::{ARROW_STREAM, IncomingRecord, IpcError};

use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, ProduceBody, RawRecord, path_err};
use crate::render::{arrow_response, fetch_json_stream, produce_answer};

fn decode_field(
    i: usize,
    what: &str,
    text: Option<Bytes>,
    b64: Option<Bytes>,
) -> ApiResult<Option<Bytes>> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_record",
            format!("record {i}: give {what} or {what}_b64, not both"),
        )),
        (Some(t), None) => Ok(Some(t)),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(&b)
            .map(|v| Some(Bytes::from(v)))
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_base64",
                    format!("record {i}: {what}_b64 is not valid base64: {e}"),
                )
            }),
        (None, None) => Ok(None),
    }
}

/// The records of a JSON produce body, values and keys decoded.
pub(crate) fn decode_json(records: Vec<RawRecord>) -> ApiResult<Vec<IncomingRecord>> {
    records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let key = decode_field(i, "key", r.key, r.key_b64)?;
            let value = decode_field(i, "value", r.value, r.value_b64)?.ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_record",
                    format!("record {i}: value or value_b64 is required"),
                )
            })?;
            let headers = r.headers.unwrap_or_default();
            Ok(IncomingRecord {
                key,
                value,
                headers,
                partition: r.partition,
            })
        })
        .collect()
}

/// Produce records, as JSON or as an Arrow IPC stream (`Content-Type:
/// application/vnd.apache.arrow.stream`; columns `value` binary|utf8, optional `key`
/// binary|utf8, `partition` int32|int64, `headers` list<struct<key, value>>).
/// Answers only after the records are durable in the bucket and committed
/// in the index; offsets come back in request order.
#[utoipa::path(post, path = "/v1/topics/{topic}/records", params(("topic" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes the request safe to retry (1–255 visible ASCII characters, per topic): a request whose key already completed gets the original offsets back (response header `Idempotent-Replayed: true`) and writes nothing. Keys are remembered for the agent's idempotency TTL (default 24 h)."),
        ("Producer-Id" = Option<i64>, Header, description = "Producer session (from POST /v1/producers); with Producer-Epoch and Producer-Sequences. Not together with Idempotency-Key."),
        ("Producer-Epoch" = Option<u32>, Header, description = "The session's epoch; an older epoch of the same producer is refused with 409 producer_fenced."),
        ("Producer-Transactional" = Option<bool>, Header, description = "true: the request belongs to the open transaction of its Producer-Epoch (POST /v1/producers/{id}/transactions); refused with 409 transaction_not_open when there is none. A plain request from an epoch with an open transaction is refused with 409 transaction_open."),
        ("Producer-Sequences" = Option<String>, Header, description = "`partition=sequence` pairs separated by commas, one per partition the request writes: the sequence of the request's first record in that partition (0 for a new session, then the previous sequence plus the previous batch's record count). Every record needs a key or a partition. A retry resends the same request with the same sequences and gets the first commit's offsets (`Idempotent-Replayed: true`); a gap is 409 out_of_order_sequence.")),
    request_body(content(
        (ProduceRequest = "application/json"),
        (String = "application/vnd.apache.arrow.stream")
    )), responses(
    (status = 200, body = ProduceResponse),
    (status = 400, description = "invalid_json, invalid_record, invalid_partition, invalid_base64, invalid_idempotency_key, invalid_producer, invalid_sequences, key_required (a compacted topic), invalid_request", body = ErrorBody),
    (status = 404, description = "topic_not_found", body = ErrorBody),
    (status = 409, description = "idempotency_key_in_flight: a request with this Idempotency-Key is still being processed (retry); out_of_order_sequence, producer_fenced, unknown_producer, transaction_not_open, transaction_open: refused by the producer session's checks (nothing written)", body = ErrorBody),
    (status = 413, description = "record_too_large, request_too_large", body = ErrorBody),
    (status = 422, description = "idempotency_key_reused: the Idempotency-Key was used for a different request", body = ErrorBody),
    (status = 503, description = "store_unavailable, index_unavailable, overloaded (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn produce(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
    body: ProduceBody,
) -> ApiResult<Response> {
    let deadline = b.produce_deadline();
    let Path(raw) = p.map_err(path_err)?;
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be visible ASCII characters",
            )
        })?),
    };
    let stamp = producer_stamp(&headers)?;
    let max = b.config.limits.max_records_per_request;
    let incoming = match body {
        ProduceBody::Json(records) => {
            // Refused before any value is decoded.
            if records.len() > max {
                return Err(too_many_records(records.len(), max).into());
            }
            decode_json(records)?
        }
        ProduceBody::Arrow(bytes) => {
            tokio::task::spawn_blocking(move || floe_core::ipc::decode_produce(&bytes, max))
                .await
                .map_err(|e| {
                    ApiError::from(floe_broker::BrokerError::unavailable(
                        "decode_failed",
                        e.to_string(),
                    ))
                })?
                .map_err(|e| match e {
                    IpcError::TooMany(n) => ApiError::from(too_many_records(n + 1, n)),
                    IpcError::Record(..) => ApiError::bad_request("invalid_record", e.to_string()),
                    other => ApiError::bad_request("invalid_arrow", other.to_string()),
                })?
        }
    };
    let produced = b
        .produce(&raw, incoming, deadline, key, stamp.as_ref())
        .await?;
    let body = produce_answer(produced.offsets.iter().map(|o| (o.partition, o.offset)));
    if produced.replayed {
        return Ok(([(REPLAYED, "true")], body).into_response());
    }
    Ok(body)
}

/// Request headers of a producer session (RFC 0003 part 2).
pub(crate) const PRODUCER_ID: &str = "producer-id";
pub(crate) const PRODUCER_EPOCH: &str = "producer-epoch";
pub(crate) const PRODUCER_SEQUENCES: &str = "producer-sequences";
pub(crate) const PRODUCER_TRANSACTIONAL: &str = "producer-transactional";

fn invalid_producer(m: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_producer", m)
}

/// The producer session headers: all three or none.
fn producer_stamp(h: &axum::http::HeaderMap) -> ApiResult<Option<ProducerStamp>> {
    let get = |name: &str| -> ApiResult<Option<&str>> {
        h.get(name)
            .map(|v| {
                v.to_str()
                    .map_err(|_| invalid_producer(format!("{name} must be ASCII")))
            })
            .transpose()
    };
    let (id, epoch, seqs) = (
        get(PRODUCER_ID)?,
        get(PRODUCER_EPOCH)?,
        get(PRODUCER_SEQUENCES)?,
    );
    let transactional = match get(PRODUCER_TRANSACTIONAL)?.map(str::trim) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(invalid_producer(format!(
                "Producer-Transactional must be true or false, got {other:?}"
            )));
        }
    };
    let (id, epoch, seqs) = match (id, epoch, seqs) {
        (None, None, None) if !transactional => return Ok(None),
        (Some(i), Some(e), Some(s)) => (i, e, s),
        _ => {
            return Err(invalid_producer(
                "a producer session needs all three headers: Producer-Id, Producer-Epoch, Producer-Sequences",
            ));
        }
    };
    let producer_id = id
        .trim()
        .parse::<i64>()
        .map_err(|_| invalid_producer(format!("Producer-Id must be an integer, got {id:?}")))?;
    let epoch = epoch.trim().parse::<u32>().map_err(|_| {
        invalid_producer(format!(
            "Producer-Epoch must be a non-negative integer, got {epoch:?}"
        ))
    })?;
    let mut sequences = std::collections::BTreeMap::new();
    for pair in seqs.split(',').map(str::trim) {
        let parsed = pair.split_once('=').and_then(|(p, s)| {
            Some((p.trim().parse::<u32>().ok()?, s.trim().parse::<i64>().ok()?))
        });
        let Some((p, s)) = parsed else {
            return Err(ApiError::bad_request(
                "invalid_sequences",
                format!("Producer-Sequences: {pair:?} is not partition=sequence"),
            ));
        };
        if sequences.insert(p, s).is_some() {
            return Err(ApiError::bad_request(
                "invalid_sequences",
                format!("Producer-Sequences names partition {p} twice"),
            ));
        }
    }
    Ok(Some(ProducerStamp {
        producer_id,
        epoch,
        sequences,
        transactional,
    }))
}

/// Start a producer session: produce requests that carry it are checked per partition
/// against their sequence in the commit, so a retry never writes twice (RFC 0003).
#[utoipa::path(post, path = "/v1/producers", request_body = InitProducerRequest, responses(
    (status = 201, body = ProducerSessionInfo),
    (status = 400, description = "invalid_json, invalid_producer_name", body = ErrorBody),
    (status = 503, description = "index_unavailable (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn init_producer(
    State(b): State<Broker>,
    JsonBody(req): JsonBody<InitProducerRequest>,
) -> ApiResult<(StatusCode, Json<ProducerSessionInfo>)> {
    let s = b.init_producer(req.name.as_deref()).await?;
    Ok((
        StatusCode::CREATED,
        Json(ProducerSessionInfo {
            producer_id: s.producer_id,
            epoch: s.epoch,
        }),
    ))
}

/// Request header: makes a produce safe to retry (RFC 0003).
pub(crate) const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Response header on an answer replayed from an earlier request with the same key.
pub(crate) const REPLAYED: &str = "idempotent-replayed";

/// Query parameters of a fetch.
/// (The query is parsed by hand: unknown parameters are ignored, as they always were.)
fn parse_fetch_params(q: Option<&str>) -> ApiResult<(FetchRequest, Encoding)> {
    let mut p = FetchRequest::default();
    let mut encoding = Encoding::default();
    for pair in q.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let num = |name: &'static str| -> ApiResult<u64> {
            v.parse::<u64>().map_err(|_| {
                ApiError::bad_request(
                    if name == "offset" {
                        "invalid_offset"
                    } else {
                        "invalid_parameter"
                    },
                    format!("{name} must be a non-negative integer, got {v:?}"),
                )
            })
        };
        match k {
            "offset" => p.offset = num("offset")?,
            "max_records" => p.max_records = Some(num("max_records")?),
            "max_bytes" => p.max_bytes = Some(num("max_bytes")?),
            "wait_ms" => p.wait_ms = num("wait_ms")?,
            "isolation" => {
                p.isolation = match v {
                    "read_committed" => Isolation::ReadCommitted,
                    "read_uncommitted" => Isolation::ReadUncommitted,
                    other => {
                        return Err(ApiError::bad_request(
                            "invalid_parameter",
                            format!(
                                "isolation must be read_committed or read_uncommitted, got {other:?}"
                            ),
                        ));
                    }
                };
            }
            "encoding" => {
                encoding = v
                    .parse()
                    .map_err(|e: String| ApiError::bad_request("invalid_parameter", e))?;
            }
            _ => {}
        }
    }
    Ok((p, encoding))
}

/// Fetch records of one partition from `offset`. With `wait_ms`, a fetch at the end of the
/// log waits until new records are committed or the wait ends (then returns no records).
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/records",
    params(
        ("topic" = String, Path), ("partition" = u32, Path),
        ("offset" = Option<u64>, Query, description = "First offset to return (default 0)"),
        ("max_records" = Option<u64>, Query, description = "Default 500, capped by the agent's max_fetch_records"),
        ("max_bytes" = Option<u64>, Query, description = "Default 1 MiB, capped by max_fetch_bytes; at least one record is returned"),
        ("wait_ms" = Option<u64>, Query, description = "Long-poll time when at the end of the log; capped by max_wait_ms"),
        ("isolation" = Option<String>, Query, description = "read_committed (default): only records below the partition's stable offset — never a record of an open transaction; read_uncommitted: up to the end of the log, open transactions included. Aborted records are served to no one.", example = "read_committed"),
        ("encoding" = Option<floe_api::Encoding>, Query, description = "auto (default): UTF-8 values/keys as `value`/`key`, other bytes as `value_b64`/`key_b64`; base64: always `value_b64`/`key_b64`")),
    responses(
        (status = 200, description = "JSON, or with `Accept: application/vnd.apache.arrow.stream` an Arrow IPC stream (offset, timestamp, key, value, headers) with Floe-Next-Offset / Floe-End-Offset headers", body = FetchResponse),
        (status = 400, description = "invalid_partition, invalid_offset, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 416, description = "offset_out_of_range", body = ErrorBody)))]
pub(crate) async fn fetch(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let want_arrow = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains(ARROW_STREAM));
    let Path((raw, part)) = p.map_err(path_err)?;
    let (req, encoding) = parse_fetch_params(q.as_deref())?;
    let f = b.fetch(&raw, &part, req).await?;
    if want_arrow {
        return arrow_response(&f.records, f.next_offset, f.end_offset);
    }
    Ok(fetch_json_stream(
        f.records,
        encoding,
        f.next_offset,
        f.end_offset,
        f.stable_offset,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_params_parse_and_reject() {
        let (p, _) = parse_fetch_params(Some("offset=5&max_records=10&wait_ms=100&x=1")).unwrap();
        assert_eq!((p.offset, p.max_records, p.wait_ms), (5, Some(10), 100));
        assert_eq!(
            parse_fetch_params(Some("offset=-1")).unwrap_err().code,
            "invalid_offset"
        );
        assert_eq!(
            parse_fetch_params(Some("offset=99999999999999999999999"))
                .unwrap_err()
                .code,
            "invalid_offset"
        );
        assert_eq!(
            parse_fetch_params(Some("max_bytes=abc")).unwrap_err().code,
            "invalid_parameter"
        );
        assert_eq!(
            parse_fetch_params(Some("encoding=base64")).unwrap().1,
            Encoding::Base64
        );
        assert_eq!(parse_fetch_params(None).unwrap().0.offset, 0);
    }
}
