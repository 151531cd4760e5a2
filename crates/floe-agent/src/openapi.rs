//! The served OpenAPI document: the one utoipa derives from the handlers, made exact.
//!
//! utoipa cannot say everything the server checks: name patterns on path parameters, the
//! agent's configured limits (which differ per deployment), mutually exclusive fields,
//! and the error answers every operation shares (malformed body, too large, index down).
//! This module adds them to the derived document, in one place, from the same constants
//! and [`Limits`] the handlers enforce — so `schemathesis --checks all` finds nothing the
//! document does not say (`tests/schemathesis.sh`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use floe_api::{
    Assignment, CommitOffset, CommitRequest, CreateTopicRequest, Encoding, ErrorBody, ErrorDetail,
    FetchResponse, FetchedRecord, FileEntryInfo, FileLayout, GroupDescription, GroupFetchResponse,
    GroupMemberInfo, GroupPartitionLag, InitProducerRequest, JoinGroupRequest, PartitionFilesInfo,
    PartitionInfo, PartitionRecords, ProduceRecord, ProduceRequest, ProduceResponse,
    ProducerSessionInfo, QueueDescription, QueuePartitionState, QueuedRecord, ReceiveRequest,
    ReceiveResponse, RecordOffset, ResetPolicy, SettleFailure, SettleRequest, SettleResponse,
    TopicDescription, TopicFiles, TopicInfo, TopicList, TopicSummary,
};
use floe_api::{
    BeginTransactionRequest, CheckOutcome, CheckRequest, CheckResponse, CommitTransactionRequest,
    HalfMessage, PrepareHalfRequest, TransactionDescription, TransactionEnd, TransactionInfo,
    TransactionList, TransactionOffsets, TransactionPartition, TransactionState,
};
use floe_broker::Broker;
use floe_broker::groups::DEFAULT_SESSION_TIMEOUT_MS;
use floe_broker::queues::MAX_REASON_LEN;
use floe_core::Limits;
use floe_core::name::MAX_TOPIC_NAME_LEN;
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::routes::{groups, ops, peer, queues, records, stream, topics, txns};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Floe",
        description = "Floe agent HTTP API: topics, produce, fetch (long-poll), SSE tail, consumer groups (pub/sub) and share groups (queues), transactions and half-messages."
    ),
    paths(
        ops::healthz,
        ops::readyz,
        topics::create_topic,
        topics::list_topics,
        topics::describe_topic,
        topics::delete_topic,
        topics::topic_files,
        peer::segment,
        records::produce,
        records::init_producer,
        records::fetch,
        stream::stream,
        groups::list_groups,
        groups::describe_group,
        groups::join_group,
        groups::heartbeat,
        groups::leave_group,
        groups::group_fetch,
        groups::commit,
        queues::receive,
        queues::ack,
        queues::release,
        queues::reject,
        queues::extend,
        queues::describe_queue,
        txns::begin,
        txns::commit,
        txns::abort,
        txns::list,
        txns::prepare_half,
        txns::commit_half,
        txns::rollback_half,
        ops::metrics,
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
        TopicFiles,
        PartitionFilesInfo,
        FileEntryInfo,
        FileLayout,
        ProduceRequest,
        ProduceRecord,
        ProduceResponse,
        InitProducerRequest,
        ProducerSessionInfo,
        RecordOffset,
        FetchResponse,
        FetchedRecord,
        ResetPolicy,
        JoinGroupRequest,
        Assignment,
        PartitionRecords,
        GroupFetchResponse,
        CommitOffset,
        CommitRequest,
        GroupMemberInfo,
        GroupPartitionLag,
        GroupDescription,
        ReceiveRequest,
        QueuedRecord,
        ReceiveResponse,
        SettleRequest,
        SettleFailure,
        SettleResponse,
        QueuePartitionState,
        QueueDescription,
        Encoding,
        BeginTransactionRequest,
        TransactionInfo,
        TransactionOffsets,
        CommitTransactionRequest,
        TransactionState,
        TransactionEnd,
        TransactionPartition,
        TransactionDescription,
        TransactionList,
        PrepareHalfRequest,
        HalfMessage,
        CheckOutcome,
        CheckRequest,
        CheckResponse
    ))
)]
pub struct ApiDoc;

/// The OpenAPI document as served on `/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3 document")))]
pub(crate) async fn openapi_json(State(b): State<Broker>) -> Json<serde_json::Value> {
    Json(document(&b.config.limits))
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

/// Topic, group and member names: `[A-Za-z0-9._-]`, 1–249 characters, not `.` or `..`.
fn name_schema() -> Value {
    json!({
        "type": "string",
        "pattern": "^[A-Za-z0-9._-]+$",
        "minLength": 1,
        "maxLength": MAX_TOPIC_NAME_LEN,
        "not": {"enum": [".", ".."]}
    })
}

/// `schema` that also allows null (an optional body field may be sent as null).
fn nullable(mut schema: Value) -> Value {
    if let Some(t) = schema.get("type").cloned() {
        let _ = schema
            .as_object_mut()
            .map(|o| o.insert("type".into(), json!([t, "null"])));
    }
    schema
}

/// Standard base64 with padding.
const BASE64_PATTERN: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$";

fn error_response(codes: &str) -> Value {
    json!({
        "description": codes,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    })
}

/// Set `schema[field] = value` on a component schema's property.
fn prop(doc: &mut Value, schema: &str, field: &str, constraints: Value) {
    let Some(p) = doc.pointer_mut(&format!("/components/schemas/{schema}/properties/{field}"))
    else {
        return;
    };
    merge(p, constraints);
}

fn merge(target: &mut Value, add: Value) {
    if let (Value::Object(t), Value::Object(a)) = (target, add) {
        for (k, v) in a {
            let _ = t.insert(k, v);
        }
    }
}

/// The document as this agent serves it, with its limits.
pub fn document(limits: &Limits) -> Value {
    let mut doc = serde_json::to_value(openapi()).unwrap_or(Value::Null);
    let name = name_schema();
    let s = "CreateTopicRequest";
    prop(&mut doc, s, "name", name.clone());
    prop(
        &mut doc,
        s,
        "partitions",
        json!({"minimum": 1, "maximum": limits.max_partitions}),
    );
    prop(&mut doc, s, "retention_ms", json!({"minimum": 0}));
    prop(
        &mut doc,
        "ProduceRequest",
        "records",
        json!({"minItems": 1, "maxItems": limits.max_records_per_request}),
    );
    let s = "ProduceRecord";
    // Exactly one of value / value_b64 (non-null), at most one of key / key_b64.
    for f in ["key", "value"] {
        prop(&mut doc, s, f, json!({"type": ["string", "null"]}));
    }
    for f in ["key_b64", "value_b64"] {
        prop(
            &mut doc,
            s,
            f,
            json!({"type": ["string", "null"], "pattern": BASE64_PATTERN}),
        );
    }
    prop(
        &mut doc,
        s,
        "headers",
        json!({"type": ["object", "null"], "maxProperties": limits.max_headers_per_record}),
    );
    prop(
        &mut doc,
        s,
        "partition",
        json!({"type": ["integer", "null"], "minimum": 0, "maximum": limits.max_partitions.saturating_sub(1)}),
    );
    let text = json!({"type": "string"});
    let absent = json!({"type": "null"});
    if let Some(r) = doc.pointer_mut("/components/schemas/ProduceRecord") {
        merge(
            r,
            json!({
                "oneOf": [
                    {"required": ["value"], "properties": {"value": text, "value_b64": absent}},
                    {"required": ["value_b64"], "properties": {"value_b64": text, "value": absent}}
                ],
                "not": {"required": ["key", "key_b64"], "properties": {"key": text, "key_b64": text}}
            }),
        );
    }
    prop(
        &mut doc,
        "CreateTopicRequest",
        "config",
        json!({"properties": {
            "queue.ordering": {"type": "string", "enum": ["key", "none"]},
            "queue.max_deliveries": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"},
            "queue.dead_letter_topic": name.clone(),
            "retention.bytes": {"type": "string", "pattern": "^[1-9][0-9]{0,17}$"},
            "cleanup.policy": {
                "type": "string",
                "enum": ["delete", "compact", "compact,delete", "delete,compact"],
                "description": "delete (default): retention drops old records; compact: keep the latest record per key (every record needs a key; a keyed record with an empty value is a tombstone); both"
            },
            "delete.retention.ms": {
                "type": "string",
                "pattern": "^(0|[1-9][0-9]{0,17})$",
                "description": "How long a compacted topic keeps a key's latest tombstone (default 86400000)"
            }
        }}),
    );
    let s = "JoinGroupRequest";
    prop(&mut doc, s, "member_id", nullable(name.clone()));
    prop(
        &mut doc,
        s,
        "session_timeout_ms",
        json!({
            "type": ["integer", "null"],
            "minimum": limits.min_session_timeout_ms,
            "maximum": limits.max_session_timeout_ms,
            "default": DEFAULT_SESSION_TIMEOUT_MS
        }),
    );
    prop(&mut doc, "CommitRequest", "member_id", name.clone());
    let s = "ReceiveRequest";
    prop(&mut doc, s, "consumer", nullable(name.clone()));
    prop(
        &mut doc,
        s,
        "max_records",
        json!({"type": ["integer", "null"], "minimum": 1}),
    );
    prop(
        &mut doc,
        s,
        "visibility_timeout_ms",
        json!({"type": ["integer", "null"], "minimum": 1}),
    );
    let s = "SettleRequest";
    prop(
        &mut doc,
        s,
        "receipts",
        json!({
            "minItems": 1,
            "maxItems": limits.max_receive_records,
            "items": {"type": "string", "pattern": "^[0-9]{1,9}-[0-9]{1,19}-[0-9]{1,9}$"}
        }),
    );
    prop(
        &mut doc,
        s,
        "reason",
        json!({"type": ["string", "null"], "maxLength": MAX_REASON_LEN}),
    );
    // extend needs visibility_timeout_ms.
    if let Some(b) = doc.pointer_mut(
        "/paths/~1v1~1topics~1{topic}~1queues~1{group}~1extend/post/requestBody/content/application~1json/schema",
    ) {
        *b = json!({"allOf": [
            {"$ref": "#/components/schemas/SettleRequest"},
            {"required": ["visibility_timeout_ms"],
             "properties": {"visibility_timeout_ms": {"type": "integer", "minimum": 1}}}
        ]});
    }
    prop(
        &mut doc,
        "BeginTransactionRequest",
        "timeout_ms",
        json!({"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_transaction_timeout_ms}),
    );
    prop(
        &mut doc,
        "BeginTransactionRequest",
        "epoch",
        json!({"maximum": u32::MAX}),
    );
    let s = "TransactionOffsets";
    prop(&mut doc, s, "topic", name.clone());
    prop(&mut doc, s, "group", name.clone());
    prop(&mut doc, s, "member_id", name.clone());
    prop(
        &mut doc,
        "PrepareHalfRequest",
        "records",
        json!({"minItems": 1, "maxItems": limits.max_records_per_request}),
    );
    prop(
        &mut doc,
        "PrepareHalfRequest",
        "check_url",
        json!({"pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$", "maxLength": 2048}),
    );
    constrain_operations(&mut doc, &name);
    doc
}

/// Path/query parameter schemas and the error answers shared by every operation.
fn constrain_operations(doc: &mut Value, name: &Value) {
    let Some(Value::Object(paths)) = doc.get_mut("paths") else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let Value::Object(ops) = item else { continue };
        for (method, op) in ops.iter_mut() {
            if let Some(Value::Array(params)) = op.get_mut("parameters") {
                for p in params.iter_mut() {
                    let pname = p
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    let schema = match pname.as_str() {
                        "topic" | "group" | "member" => Some(name.clone()),
                        "max_records" => Some(json!({"type": "integer", "minimum": 1})),
                        "reset" => Some(json!({"type": "string", "enum": ["earliest", "latest"]})),
                        "cursor" => Some(json!({
                            "type": "string",
                            "pattern": "^[0-9]{1,19}:(?:[0-9]{1,9}=[0-9]{1,19}(?:,[0-9]{1,9}=[0-9]{1,19})*)?$"
                        })),
                        "Last-Event-ID" => {
                            Some(json!({"type": "string", "pattern": "^[0-9]{1,19}$"}))
                        }
                        "Idempotency-Key" => Some(json!({
                            "type": "string",
                            "minLength": 1,
                            "maxLength": floe_core::idempotency::MAX_KEY_LEN,
                            "pattern": "^[!-~]+$"
                        })),
                        "Producer-Id" => Some(json!({"type": "integer", "format": "int64"})),
                        "Producer-Epoch" => Some(json!({
                            "type": "integer",
                            "minimum": 0,
                            "maximum": u32::MAX
                        })),
                        "producer_id" => Some(json!({"type": "integer", "format": "int64"})),
                        "epoch" => Some(json!({
                            "type": "integer",
                            "minimum": 0,
                            "maximum": u32::MAX
                        })),
                        "handle" => Some(json!({
                            "type": "string",
                            "pattern": "^-?[0-9]{1,18}[.][0-9]{1,9}$"
                        })),
                        "isolation" => Some(json!({
                            "type": "string",
                            "enum": ["read_committed", "read_uncommitted"]
                        })),
                        "state" => Some(json!({"type": "string", "enum": ["open", "all"]})),
                        "Producer-Transactional" => {
                            Some(json!({"type": "string", "enum": ["true", "false"]}))
                        }
                        "key" => Some(json!({
                            "type": "string",
                            "maxLength": peer::MAX_SEGMENT_KEY_LEN,
                            "pattern": "^segments/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-[A-Za-z0-9-]+[.]parquet$"
                        })),
                        "Producer-Sequences" => Some(json!({
                            "type": "string",
                            "pattern": "^[0-9]{1,9}=[0-9]{1,18}(?:,[0-9]{1,9}=[0-9]{1,18})*$"
                        })),
                        _ => None,
                    };
                    if let Some(sc) = schema {
                        let _ = p.as_object_mut().map(|o| o.insert("schema".into(), sc));
                    }
                }
            }
            let has_body = op.get("requestBody").is_some();
            let on_topic = path.contains("{topic}");
            let Some(Value::Object(responses)) = op.get_mut("responses") else {
                continue;
            };
            let mut add = |status: &str, codes: &str| {
                let _ = responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(codes));
            };
            if on_topic || has_body {
                add(
                    "400",
                    "invalid_path, invalid_topic_name, invalid_group_name, invalid_member_id, invalid_parameter, invalid_json",
                );
            }
            if on_topic {
                add("404", "topic_not_found");
            }
            if path.contains("/queues/") {
                add(
                    "409",
                    "invalid_topic_config (the topic's queue.* config, or a name too long for `<topic>.dlq`)",
                );
            }
            if has_body {
                add("413", "request_too_large");
                add("415", "unsupported_media_type");
            }
            if path.starts_with("/v1/") {
                add(
                    "503",
                    "index_unavailable, store_unavailable, deadline_exceeded (with Retry-After)",
                );
            }
            let _ = method;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            ("GET", "/v1/topics/{topic}/files"),
            ("GET", "/v1/peer/segments"),
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
