//! The HTTP API. Every handler validates its input and answers a bad request with a 4xx
//! and a JSON error body; nothing a client sends can cause a panic or a 500.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine;
use bytes::Bytes;
use floe_core::api::{
    CreateTopicRequest, ErrorBody, ErrorDetail, FetchResponse, FetchedRecord, PartitionInfo,
    ProduceRecord, ProduceRequest, ProduceResponse, RecordOffset, TopicDescription, TopicInfo,
    TopicList, TopicSummary,
};
use floe_core::ipc::{ARROW_STREAM, IncomingRecord, IpcError};
use floe_core::partitioner::partition_for_key;
use floe_core::{Record, TopicName};
use floe_index::{IndexError, NewTopic, TopicMeta};
use serde::de::DeserializeOwned;
use tracing::Instrument;
use utoipa::OpenApi;

use crate::Shared;
use crate::error::ApiError;

type ApiResult<T> = Result<T, ApiError>;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Floe",
        description = "Floe agent HTTP API: topics, produce, fetch (long-poll), SSE tail, consumer groups (pub/sub) and share groups (queues)."
    ),
    paths(
        healthz,
        readyz,
        create_topic,
        list_topics,
        describe_topic,
        delete_topic,
        produce,
        fetch,
        crate::stream::stream,
        crate::groups::list_groups,
        crate::groups::describe_group,
        crate::groups::join_group,
        crate::groups::heartbeat,
        crate::groups::leave_group,
        crate::groups::group_fetch,
        crate::groups::commit,
        crate::queues::receive,
        crate::queues::ack,
        crate::queues::release,
        crate::queues::reject,
        crate::queues::extend,
        crate::queues::describe_queue,
        metrics,
        openapi_json
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        CreateTopicRequest,
        TopicInfo,
        TopicList,
        TopicSummary,
        TopicDescription,
        PartitionInfo,
        ProduceRequest,
        ProduceRecord,
        ProduceResponse,
        RecordOffset,
        FetchResponse,
        FetchedRecord,
        floe_core::api::ResetPolicy,
        floe_core::api::JoinGroupRequest,
        floe_core::api::Assignment,
        floe_core::api::PartitionRecords,
        floe_core::api::GroupFetchResponse,
        floe_core::api::CommitOffset,
        floe_core::api::CommitRequest,
        floe_core::api::GroupMemberInfo,
        floe_core::api::GroupPartitionLag,
        floe_core::api::GroupDescription,
        floe_core::api::ReceiveRequest,
        floe_core::api::QueuedRecord,
        floe_core::api::ReceiveResponse,
        floe_core::api::SettleRequest,
        floe_core::api::SettleFailure,
        floe_core::api::SettleResponse,
        floe_core::api::QueuePartitionState,
        floe_core::api::QueueDescription,
        floe_core::api::Encoding
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document as served on `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn router(shared: Shared) -> Router {
    let limit = shared.config.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/topics", get(list_topics).post(create_topic))
        .route(
            "/v1/topics/{topic}",
            get(describe_topic).delete(delete_topic),
        )
        .route("/v1/topics/{topic}/records", axum::routing::post(produce))
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(fetch),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/stream",
            get(crate::stream::stream),
        )
        .route("/v1/topics/{topic}/groups", get(crate::groups::list_groups))
        .route(
            "/v1/topics/{topic}/groups/{group}",
            get(crate::groups::describe_group),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members",
            post(crate::groups::join_group),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}",
            delete(crate::groups::leave_group),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/heartbeat",
            post(crate::groups::heartbeat),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/records",
            get(crate::groups::group_fetch),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/commit",
            post(crate::groups::commit),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}",
            get(crate::queues::describe_queue),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/receive",
            post(crate::queues::receive),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/ack",
            post(crate::queues::ack),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/release",
            post(crate::queues::release),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/reject",
            post(crate::queues::reject),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/extend",
            post(crate::queues::extend),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(shared)
}

async fn trace_request(req: Request, next: axum::middleware::Next) -> Response {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), status = tracing::field::Empty);
    let resp = next.run(req).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint; see /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see /openapi.json",
    )
}

/// The request body within `max_body_bytes` (413 `request_too_large` past it).
async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
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

/// JSON body extractor whose rejections follow the JSON error contract.
pub struct JsonBody<T>(pub T);

/// A request body type: a JSON object. `OBJECT_ARRAYS` names its fields that are arrays
/// of objects (each element must be an object too).
pub trait RequestBody: DeserializeOwned {
    const OBJECT_ARRAYS: &'static [&'static str] = &[];
}

impl RequestBody for CreateTopicRequest {}
impl RequestBody for ProduceRequest {
    const OBJECT_ARRAYS: &'static [&'static str] = &["records"];
}
impl RequestBody for floe_core::api::JoinGroupRequest {}
impl RequestBody for floe_core::api::CommitRequest {
    const OBJECT_ARRAYS: &'static [&'static str] = &["offsets"];
}
impl RequestBody for floe_core::api::ReceiveRequest {}
impl RequestBody for floe_core::api::SettleRequest {}

impl<S: Send + Sync, T: RequestBody> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
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
        let bytes = read_body(req, state).await?;
        parse_object(&bytes).map(JsonBody)
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

/// A produce body: JSON (default) or an Arrow IPC stream (`Content-Type:
/// application/vnd.apache.arrow.stream`), decoded to the same records.
pub enum ProduceBody {
    Json(ProduceRequest),
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
            return JsonBody::from_request(req, state)
                .await
                .map(|JsonBody(r)| Self::Json(r));
        }
        let bytes = read_body(req, state).await?;
        Ok(Self::Arrow(bytes))
    }
}

pub(crate) fn topic_name(raw: &str) -> ApiResult<TopicName> {
    TopicName::new(raw).map_err(|e| ApiError::bad_request("invalid_topic_name", e.to_string()))
}

pub(crate) fn path_err(e: PathRejection) -> ApiError {
    ApiError::bad_request("invalid_path", format!("invalid path parameter: {e}"))
}

pub(crate) async fn existing_topic(s: &Shared, raw: &str) -> ApiResult<Arc<TopicMeta>> {
    let name = topic_name(raw)?;
    s.topics
        .get(name.as_str())
        .await
        .map_err(|e| ApiError::index(&e))?
        .ok_or_else(|| ApiError::topic_not_found(name.as_str()))
}

/// A partition path parameter of `topic` (400 `invalid_partition` when it does not exist).
pub(crate) fn partition_of(topic: &TopicMeta, part: &str) -> ApiResult<u32> {
    part.parse::<u32>()
        .ok()
        .filter(|p| *p < topic.partitions)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_partition",
                format!(
                    "partition {part:?} does not exist; topic {:?} has partitions 0..{}",
                    topic.name, topic.partitions
                ),
            )
        })
}

fn info_of(t: &TopicMeta) -> TopicInfo {
    TopicInfo {
        name: t.name.clone(),
        partitions: t.partitions,
        retention_ms: t.retention_ms,
        config: t.config.clone(),
        created_ms: t.created_ms,
    }
}

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is running")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 only when the bucket and the index answer. Answers within the agent's
/// `ready_timeout` in every state: both are probed at once, each bounded by it.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Bucket and index reachable"),
    (status = 503, description = "store_unavailable, index_unavailable or not_ready (both); the message names each failing dependency", body = ErrorBody)))]
async fn readyz(State(s): State<Shared>) -> ApiResult<Json<serde_json::Value>> {
    let budget = s.config.ready_timeout;
    let timed_out = || format!("timed out after {} ms", budget.as_millis());
    let prefix = object_store::path::Path::from(crate::produce::SEGMENT_PREFIX);
    let (index, store) = tokio::join!(
        tokio::time::timeout(budget, s.index.ping()),
        tokio::time::timeout(budget, s.store.list_with_delimiter(Some(&prefix))),
    );
    let index = match index {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(timed_out()),
    };
    let store = match store {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(timed_out()),
    };
    let (code, message) = match (&store, &index) {
        (None, None) => return Ok(Json(serde_json::json!({"status": "ready"}))),
        (Some(b), None) => ("store_unavailable", format!("not ready: bucket: {b}")),
        (None, Some(i)) => ("index_unavailable", format!("not ready: index: {i}")),
        (Some(b), Some(i)) => ("not_ready", format!("not ready: bucket: {b}; index: {i}")),
    };
    tracing::warn!(code, %message, "readiness probe failed");
    Err(ApiError::unavailable(code, message))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
async fn metrics(State(s): State<Shared>) -> Response {
    if let Err(e) = crate::groups::refresh_lag_metrics(&s).await {
        tracing::warn!(error = %e, "group lag metrics not refreshed");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3 document")))]
async fn openapi_json(State(s): State<Shared>) -> Json<serde_json::Value> {
    Json(crate::openapi::document(&s.config.limits))
}

/// Create a topic.
#[utoipa::path(post, path = "/v1/topics", request_body = CreateTopicRequest, responses(
    (status = 201, body = TopicInfo),
    (status = 400, description = "invalid_topic_name, invalid_partitions, invalid_json", body = ErrorBody),
    (status = 409, description = "topic_exists", body = ErrorBody)))]
async fn create_topic(
    State(s): State<Shared>,
    JsonBody(req): JsonBody<CreateTopicRequest>,
) -> ApiResult<(StatusCode, Json<TopicInfo>)> {
    let name = topic_name(&req.name)?;
    let max = s.config.limits.max_partitions;
    let partitions = u32::try_from(req.partitions)
        .ok()
        .filter(|p| (1..=max).contains(p))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_partitions",
                format!(
                    "partitions must be between 1 and {max}, got {}",
                    req.partitions
                ),
            )
        })?;
    if let Some(r) = req.retention_ms.filter(|r| *r < 0) {
        return Err(ApiError::bad_request(
            "invalid_retention",
            format!("retention_ms must be >= 0, got {r}"),
        ));
    }
    if let Some(c) = &req.config {
        crate::queues::validate_queue_config(c)?;
    }
    let t = s
        .index
        .create_topic(NewTopic {
            name: name.to_string(),
            partitions,
            retention_ms: req.retention_ms,
            config: req.config.unwrap_or_default(),
            created_ms: s.clock.now_ms(),
            max_topics: s.config.limits.max_topics,
        })
        .await
        .map_err(|e| match e {
            IndexError::TopicExists(n) => ApiError::new(
                StatusCode::CONFLICT,
                "topic_exists",
                format!("topic {n:?} already exists"),
            ),
            IndexError::TooManyTopics(n) => ApiError::new(
                StatusCode::CONFLICT,
                "too_many_topics",
                format!("the agent's limit of {n} topics is reached"),
            ),
            other => ApiError::index(&other),
        })?;
    s.topics.invalidate(&t.name).await;
    Ok((StatusCode::CREATED, Json(info_of(&t))))
}

/// List topics.
#[utoipa::path(get, path = "/v1/topics", responses((status = 200, body = TopicList)))]
async fn list_topics(State(s): State<Shared>) -> ApiResult<Json<TopicList>> {
    let ts = s
        .index
        .list_topics()
        .await
        .map_err(|e| ApiError::index(&e))?;
    Ok(Json(TopicList {
        topics: ts
            .into_iter()
            .map(|t| TopicSummary {
                name: t.name,
                partitions: t.partitions,
            })
            .collect(),
    }))
}

/// Describe a topic: its partitions with start and end offsets.
#[utoipa::path(get, path = "/v1/topics/{topic}", params(("topic" = String, Path)), responses(
    (status = 200, body = TopicDescription),
    (status = 404, description = "topic_not_found", body = ErrorBody)))]
async fn describe_topic(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<TopicDescription>> {
    let Path(raw) = p.map_err(path_err)?;
    let name = topic_name(&raw)?;
    let t = s
        .index
        .get_topic(name.as_str())
        .await
        .map_err(|e| ApiError::index(&e))?
        .ok_or_else(|| ApiError::topic_not_found(&raw))?;
    let parts = s
        .index
        .partition_offsets(t.id)
        .await
        .map_err(|e| ApiError::index(&e))?;
    Ok(Json(TopicDescription {
        name: t.name,
        partitions: parts
            .into_iter()
            .map(|p| PartitionInfo {
                partition: p.partition,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
            })
            .collect(),
        retention_ms: t.retention_ms,
        config: t.config,
        created_ms: t.created_ms,
    }))
}

/// Delete a topic and all its records.
#[utoipa::path(delete, path = "/v1/topics/{topic}", params(("topic" = String, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "topic_not_found", body = ErrorBody)))]
async fn delete_topic(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(raw) = p.map_err(path_err)?;
    let name = topic_name(&raw)?;
    let existed = s
        .index
        .delete_topic(name.as_str())
        .await
        .map_err(|e| ApiError::index(&e))?;
    s.topics.invalidate(name.as_str()).await;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::topic_not_found(&raw))
    }
}

static ROUND_ROBIN: AtomicU64 = AtomicU64::new(0);

fn too_many_records(n: usize, max: usize) -> ApiError {
    let what = if n > max + 1 {
        format!("{n}")
    } else {
        format!("more than {max}")
    };
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
        format!("{what} records in one request; the limit is {max}"),
    )
}

fn decode_field(
    i: usize,
    what: &str,
    text: Option<String>,
    b64: Option<String>,
) -> ApiResult<Option<Bytes>> {
    match (text, b64) {
        (Some(_), Some(_)) => Err(ApiError::bad_request(
            "invalid_record",
            format!("record {i}: give {what} or {what}_b64, not both"),
        )),
        (Some(t), None) => Ok(Some(Bytes::from(t))),
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.as_bytes())
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

/// Produce records, as JSON or as an Arrow IPC stream (`Content-Type:
/// application/vnd.apache.arrow.stream`; columns `value` binary|utf8, optional `key`
/// binary|utf8, `partition` int32|int64, `headers` list<struct<key, value>>).
/// Answers only after the records are durable in the bucket and committed
/// in the index; offsets come back in request order.
#[utoipa::path(post, path = "/v1/topics/{topic}/records", params(("topic" = String, Path)),
    request_body(content(
        (ProduceRequest = "application/json"),
        (String = "application/vnd.apache.arrow.stream")
    )), responses(
    (status = 200, body = ProduceResponse),
    (status = 400, description = "invalid_json, invalid_record, invalid_partition, invalid_base64", body = ErrorBody),
    (status = 404, description = "topic_not_found", body = ErrorBody),
    (status = 413, description = "record_too_large, request_too_large", body = ErrorBody),
    (status = 503, description = "store_unavailable, index_unavailable, overloaded (with Retry-After)", body = ErrorBody)))]
async fn produce(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    body: ProduceBody,
) -> ApiResult<Json<ProduceResponse>> {
    let started = Instant::now();
    let deadline = crate::produce::Deadline::after(&*s.clock, s.config.produce_timeout);
    let Path(raw) = p.map_err(path_err)?;
    let limits = &s.config.limits;
    let incoming: Vec<IncomingRecord> = match body {
        ProduceBody::Json(req) => {
            if req.records.len() > limits.max_records_per_request {
                return Err(too_many_records(
                    req.records.len(),
                    limits.max_records_per_request,
                ));
            }
            req.records
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let key = decode_field(i, "key", r.key, r.key_b64)?;
                    let value =
                        decode_field(i, "value", r.value, r.value_b64)?.ok_or_else(|| {
                            ApiError::bad_request(
                                "invalid_record",
                                format!("record {i}: value or value_b64 is required"),
                            )
                        })?;
                    let headers = r.headers.unwrap_or_default().into_iter().collect();
                    Ok(IncomingRecord {
                        key,
                        value,
                        headers,
                        partition: r.partition,
                    })
                })
                .collect::<ApiResult<_>>()?
        }
        ProduceBody::Arrow(bytes) => {
            let max = limits.max_records_per_request;
            tokio::task::spawn_blocking(move || floe_core::ipc::decode_produce(&bytes, max))
                .await
                .map_err(|e| ApiError::unavailable("decode_failed", e.to_string()))?
                .map_err(|e| match e {
                    IpcError::TooMany(n) => too_many_records(n + 1, n),
                    IpcError::Record(..) => ApiError::bad_request("invalid_record", e.to_string()),
                    other => ApiError::bad_request("invalid_arrow", other.to_string()),
                })?
        }
    };
    if incoming.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "records must not be empty",
        ));
    }
    let topic = tokio::time::timeout_at(deadline.at, existing_topic(&s, &raw))
        .await
        .map_err(|_| crate::produce::deadline_exceeded("looking up the topic"))??;
    let ts = s.clock.now_ms();
    let mut records = Vec::with_capacity(incoming.len());
    let mut bytes = 0usize;
    for (i, r) in incoming.into_iter().enumerate() {
        let IncomingRecord {
            key,
            value,
            headers,
            partition,
        } = r;
        if headers.len() > limits.max_headers_per_record {
            return Err(ApiError::bad_request(
                "invalid_record",
                format!(
                    "record {i}: {} headers; the limit is {}",
                    headers.len(),
                    limits.max_headers_per_record
                ),
            ));
        }
        let partition = match partition {
            Some(p) => u32::try_from(p).ok().filter(|p| *p < topic.partitions).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_partition",
                    format!("record {i}: partition {p} does not exist; topic {:?} has partitions 0..{}", topic.name, topic.partitions),
                )
            })?,
            None => match &key {
                Some(k) => partition_for_key(k, topic.partitions),
                None => (ROUND_ROBIN.fetch_add(1, Ordering::Relaxed) % u64::from(topic.partitions)) as u32,
            },
        };
        let rec = Record {
            timestamp_ms: ts,
            key,
            value,
            headers,
        };
        let size = rec.size();
        if size > limits.max_record_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "record_too_large",
                format!(
                    "record {i} is {size} bytes; the limit is {}",
                    limits.max_record_bytes
                ),
            ));
        }
        bytes += size;
        records.push((partition, rec));
    }
    let offsets = s.producer.append(topic, records, bytes, deadline).await?;
    s.metrics
        .produce_seconds
        .observe(started.elapsed().as_secs_f64());
    Ok(Json(ProduceResponse { offsets }))
}

/// Query parameters of a fetch.
#[derive(Debug, Default)]
struct FetchParams {
    offset: u64,
    max_records: Option<u64>,
    max_bytes: Option<u64>,
    wait_ms: u64,
    encoding: floe_core::api::Encoding,
}

fn parse_fetch_params(q: Option<&str>) -> ApiResult<FetchParams> {
    let mut p = FetchParams::default();
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
            "encoding" => {
                p.encoding = v
                    .parse()
                    .map_err(|e: String| ApiError::bad_request("invalid_parameter", e))?;
            }
            _ => {}
        }
    }
    Ok(p)
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
        ("encoding" = Option<floe_core::api::Encoding>, Query, description = "auto (default): UTF-8 values/keys as `value`/`key`, other bytes as `value_b64`/`key_b64`; base64: always `value_b64`/`key_b64`")),
    responses(
        (status = 200, description = "JSON, or with `Accept: application/vnd.apache.arrow.stream` an Arrow IPC stream (offset, timestamp, key, value, headers) with Floe-Next-Offset / Floe-End-Offset headers", body = FetchResponse),
        (status = 400, description = "invalid_partition, invalid_offset, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 416, description = "offset_out_of_range", body = ErrorBody)))]
async fn fetch(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let want_arrow = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains(ARROW_STREAM));
    let Path((raw, part)) = p.map_err(path_err)?;
    let params = parse_fetch_params(q.as_deref())?;
    let limits = &s.config.limits;
    let topic = existing_topic(&s, &raw).await?;
    let partition = partition_of(&topic, &part)?;
    let max_records = match params.max_records {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "max_records must be at least 1",
            ));
        }
        Some(n) => (n as usize).min(limits.max_fetch_records),
        None => 500.min(limits.max_fetch_records),
    };
    let max_bytes = params
        .max_bytes
        .map_or(1024 * 1024, |b| b as usize)
        .min(limits.max_fetch_bytes);
    let wait = Duration::from_millis(params.wait_ms.min(limits.max_wait_ms));
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribe before reading the end offset so a commit in between is not missed.
    let mut commits = s.notifier.subscribe(topic.id, partition);
    let mut shutdown = s.shutdown.clone();
    let end_offset = |s: Shared, t: Arc<TopicMeta>| async move {
        s.index
            .end_offset(t.id, partition)
            .await
            .map_err(|e| ApiError::index(&e))?
            .ok_or_else(|| ApiError::topic_not_found(&t.name))
    };
    let mut end = end_offset(s.clone(), topic.clone()).await?;
    if params.offset > end {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "offset_out_of_range",
            format!(
                "offset {} is beyond the end of partition {partition} (end_offset {end})",
                params.offset
            ),
        ));
    }
    while params.offset == end && tokio::time::Instant::now() < deadline {
        // Woken by a commit notification (this agent's, or another's via the index);
        // the periodic re-check is the safety net should a notification be lost.
        let recheck = tokio::time::Instant::now() + s.config.poll_interval;
        tokio::select! {
            r = commits.changed() => { if r.is_err() { break; } }
            () = tokio::time::sleep_until(recheck.min(deadline)) => {}
            _ = shutdown.wait_for(|v| *v) => break,
        }
        end = end_offset(s.clone(), topic.clone()).await?;
    }
    if params.offset == end {
        if want_arrow {
            return arrow_response(&[], params.offset, end);
        }
        return Ok(Json(FetchResponse {
            records: Vec::new(),
            next_offset: params.offset,
            end_offset: end,
        })
        .into_response());
    }
    let mut fetched = s
        .reader
        .read(&topic, partition, params.offset, max_records, max_bytes)
        .await?;
    fetched.encoding = params.encoding;
    if want_arrow {
        let batches = fetched.arrow_batches().map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "segment_corrupt",
                e.to_string(),
            )
        })?;
        return arrow_response(&batches, fetched.next, end);
    }
    let body = FetchBody {
        next_offset: fetched.next,
        records: fetched,
        end_offset: end,
    };
    Ok(Json(body).into_response())
}

/// Header carrying `next_offset` on Arrow fetch responses.
pub const NEXT_OFFSET_HEADER: &str = "floe-next-offset";
/// Header carrying `end_offset` on Arrow fetch responses.
pub const END_OFFSET_HEADER: &str = "floe-end-offset";

fn arrow_response(
    batches: &[arrow_array::RecordBatch],
    next: u64,
    end: u64,
) -> ApiResult<Response> {
    let body = floe_core::ipc::write_stream(&floe_core::segment::fetch_schema(), batches).map_err(
        |e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encode_failed",
                e.to_string(),
            )
        },
    )?;
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

/// Same JSON shape as [`FetchResponse`], serialized without copying record bytes.
#[derive(serde::Serialize)]
struct FetchBody {
    records: crate::fetch::Fetched,
    next_offset: u64,
    end_offset: u64,
}

/// Helper for tests and tools: the documented (method, path) pairs.
pub fn documented_routes() -> Vec<(String, String)> {
    let doc = openapi();
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods: BTreeMap<&str, bool> = [
            ("GET", item.get.is_some()),
            ("POST", item.post.is_some()),
            ("DELETE", item.delete.is_some()),
            ("PUT", item.put.is_some()),
        ]
        .into_iter()
        .collect();
        for (m, present) in methods {
            if present {
                out.push((m.to_string(), path.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_params_parse_and_reject() {
        let p = parse_fetch_params(Some("offset=5&max_records=10&wait_ms=100&x=1")).unwrap();
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
        assert_eq!(parse_fetch_params(None).unwrap().offset, 0);
    }

    #[test]
    fn openapi_documents_every_route() {
        let routes = documented_routes();
        for want in [
            ("GET", "/healthz"),
            ("GET", "/readyz"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("GET", "/v1/topics"),
            ("POST", "/v1/topics"),
            ("GET", "/v1/topics/{topic}"),
            ("DELETE", "/v1/topics/{topic}"),
            ("POST", "/v1/topics/{topic}/records"),
            ("GET", "/v1/topics/{topic}/partitions/{partition}/records"),
            ("GET", "/v1/topics/{topic}/partitions/{partition}/stream"),
            ("GET", "/v1/topics/{topic}/groups"),
            ("GET", "/v1/topics/{topic}/groups/{group}"),
            ("POST", "/v1/topics/{topic}/groups/{group}/members"),
            (
                "DELETE",
                "/v1/topics/{topic}/groups/{group}/members/{member}",
            ),
            (
                "POST",
                "/v1/topics/{topic}/groups/{group}/members/{member}/heartbeat",
            ),
            (
                "GET",
                "/v1/topics/{topic}/groups/{group}/members/{member}/records",
            ),
            ("POST", "/v1/topics/{topic}/groups/{group}/commit"),
            ("GET", "/v1/topics/{topic}/queues/{group}"),
            ("POST", "/v1/topics/{topic}/queues/{group}/receive"),
            ("POST", "/v1/topics/{topic}/queues/{group}/ack"),
            ("POST", "/v1/topics/{topic}/queues/{group}/release"),
            ("POST", "/v1/topics/{topic}/queues/{group}/reject"),
            ("POST", "/v1/topics/{topic}/queues/{group}/extend"),
        ] {
            assert!(
                routes.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} missing from OpenAPI"
            );
        }
    }
}
