//! Share groups (queues).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use floe_api::{
    ErrorBody, QueueDescription, QueuePartitionState, QueuedRecord, ReceiveRequest,
    ReceiveResponse, SettleFailure, SettleRequest, SettleResponse,
};
use floe_broker::Broker;
use floe_broker::queues::{self as engine, SettleKind};

use crate::error::ApiResult;
use crate::extract::{JsonBody, path_err};
use crate::render::fetched_record;

/// Receive up to `max_records` records. Each is invisible to other consumers of the group
/// until its visibility timeout; settle it with its receipt. Long-polls with `wait_ms`.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/receive",
    params(("topic" = String, Path), ("group" = String, Path)),
    request_body = ReceiveRequest,
    responses(
        (status = 200, body = ReceiveResponse),
        (status = 400, description = "invalid_group_name, invalid_member_id, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 503, description = "store_unavailable, index_unavailable, contention", body = ErrorBody)))]
pub(crate) async fn receive(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<ReceiveRequest>,
) -> ApiResult<Json<ReceiveResponse>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let encoding = req.encoding.unwrap_or_default();
    let got = b
        .receive(
            &topic,
            &group,
            engine::ReceiveRequest {
                consumer: req.consumer,
                max_records: req.max_records,
                wait_ms: req.wait_ms,
                visibility_timeout_ms: req.visibility_timeout_ms,
            },
        )
        .await?;
    Ok(Json(ReceiveResponse {
        records: got
            .into_iter()
            .map(|d| QueuedRecord {
                partition: d.partition,
                record: fetched_record(d.offset, &d.record, encoding),
                delivery_count: d.delivery_count,
                receipt: d.receipt,
            })
            .collect(),
    }))
}

async fn settle(
    b: &Broker,
    p: Result<Path<(String, String)>, PathRejection>,
    kind: SettleKind,
    req: SettleRequest,
) -> ApiResult<Json<SettleResponse>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let req = engine::SettleRequest {
        receipts: req.receipts,
        delay_ms: req.delay_ms,
        reason: req.reason,
        visibility_timeout_ms: req.visibility_timeout_ms,
    };
    let out = b.settle(&topic, &group, kind, req).await?;
    Ok(Json(SettleResponse {
        settled: out.settled,
        failed: out
            .failed
            .into_iter()
            .map(|f| SettleFailure {
                receipt: f.receipt,
                code: f.code.to_string(),
                message: f.message,
            })
            .collect(),
    }))
}

/// Acknowledge received records: they are done and never delivered again.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/ack",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, description = "Per-receipt outcome; stale receipts are listed in `failed`", body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 413, description = "request_too_large", body = ErrorBody)))]
pub(crate) async fn ack(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    settle(&b, p, SettleKind::Ack, req).await
}

/// Release (nack) received records: available again after `delay_ms` (default now). A
/// record already delivered `max_deliveries` times goes to the dead-letter topic instead.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/release",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub(crate) async fn release(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    settle(&b, p, SettleKind::Release, req).await
}

/// Reject received records: they go to the dead-letter topic now, with `reason`.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/reject",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub(crate) async fn reject(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    settle(&b, p, SettleKind::Reject, req).await
}

/// Extend the visibility timeout of received records to `visibility_timeout_ms` from now.
#[utoipa::path(post, path = "/v1/topics/{topic}/queues/{group}/extend",
    params(("topic" = String, Path), ("group" = String, Path)), request_body = SettleRequest,
    responses((status = 200, body = SettleResponse),
        (status = 400, description = "invalid_receipt, invalid_request, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub(crate) async fn extend(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<SettleRequest>,
) -> ApiResult<Json<SettleResponse>> {
    settle(&b, p, SettleKind::Extend, req).await
}

/// Describe a queue: per partition, what is done, in flight, waiting and dead-lettering.
#[utoipa::path(get, path = "/v1/topics/{topic}/queues/{group}",
    params(("topic" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = QueueDescription),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub(crate) async fn describe_queue(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<QueueDescription>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let d = b.describe_queue(&topic, &group).await?;
    Ok(Json(QueueDescription {
        topic: d.topic,
        group: d.group,
        dead_letter_topic: d.dead_letter_topic,
        max_deliveries: d.max_deliveries,
        partitions: d
            .partitions
            .into_iter()
            .map(|p| QueuePartitionState {
                partition: p.partition,
                start_offset: p.start_offset,
                next_offset: p.next_offset,
                end_offset: p.end_offset,
                in_flight: p.in_flight,
                available: p.available,
                acked: p.acked,
                dead_lettering: p.dead_lettering,
                backlog: p.backlog,
            })
            .collect(),
    }))
}
