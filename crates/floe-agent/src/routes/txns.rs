//! Transactions across requests and half-messages (RFC 0005).

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use floe_api::{
    BeginTransactionRequest, CommitTransactionRequest, ErrorBody, HalfMessage, PrepareHalfRequest,
    RecordOffset, TransactionDescription, TransactionEnd, TransactionInfo, TransactionList,
    TransactionPartition, TransactionState,
};
use floe_broker::Broker;
use floe_broker::groups::CommitRequest;
use floe_broker::txns::{Ended, TxnOffsets, half_handle, parse_half_handle};
use floe_core::txn::{Outcome, TxnState};

use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, path_err};
use crate::routes::records::decode_json;

fn state(s: TxnState) -> TransactionState {
    match s {
        TxnState::Open => TransactionState::Open,
        TxnState::Committed => TransactionState::Committed,
        TxnState::Aborted => TransactionState::Aborted,
    }
}

fn producer_id(raw: &str) -> ApiResult<i64> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_producer",
            format!("producer id must be an integer, got {raw:?}"),
        )
    })
}

fn epoch(raw: &str) -> ApiResult<u32> {
    raw.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_producer",
            format!("epoch must be a non-negative integer, got {raw:?}"),
        )
    })
}

fn ended(producer_id: i64, epoch: u32, e: Ended) -> Json<TransactionEnd> {
    Json(TransactionEnd {
        producer_id,
        epoch,
        state: state(e.state),
        repeated: e.repeated,
    })
}

/// Begin a transaction of a producer session. The transaction is the session's next
/// epoch: produce with `Producer-Epoch: <epoch>` (sequences from 0) and
/// `Producer-Transactional: true`, to any topics and partitions, then commit or abort it.
/// Its records are invisible to `read_committed` readers (the default) until it commits;
/// an aborted transaction's records are served to no one. Aborted by the engine at
/// `deadline_ms`.
#[utoipa::path(post, path = "/v1/producers/{producer_id}/transactions",
    params(("producer_id" = i64, Path)),
    request_body = BeginTransactionRequest,
    responses(
        (status = 201, body = TransactionInfo),
        (status = 400, description = "invalid_json, invalid_producer, invalid_timeout", body = ErrorBody),
        (status = 409, description = "producer_fenced (not the session's current epoch), unknown_producer, transaction_open (end the open transaction first)", body = ErrorBody),
        (status = 503, description = "index_unavailable (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn begin(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<BeginTransactionRequest>,
) -> ApiResult<(StatusCode, Json<TransactionInfo>)> {
    let Path(raw) = p.map_err(path_err)?;
    let id = producer_id(&raw)?;
    let t = b.begin_transaction(id, req.epoch, req.timeout_ms).await?;
    Ok((
        StatusCode::CREATED,
        Json(TransactionInfo {
            producer_id: t.producer_id,
            epoch: t.epoch,
            deadline_ms: t.deadline_ms,
        }),
    ))
}

/// Commit a transaction: its records become visible at once in every partition it
/// wrote, and the group offsets given are committed with it (fenced by their groups).
/// Repeating a commit answers the same (`repeated: true`).
#[utoipa::path(post, path = "/v1/producers/{producer_id}/transactions/{epoch}/commit",
    params(("producer_id" = i64, Path), ("epoch" = u32, Path)),
    request_body = CommitTransactionRequest,
    responses(
        (status = 200, body = TransactionEnd),
        (status = 400, description = "invalid_json, invalid_producer, invalid_offset, invalid_partition", body = ErrorBody),
        (status = 404, description = "transaction_not_found (no transaction at this epoch), topic_not_found", body = ErrorBody),
        (status = 409, description = "transaction_aborted (it was aborted: by the producer, its timeout or a re-initialised session), transaction_offsets_fenced (the group refused the offsets; the transaction stays open)", body = ErrorBody),
        (status = 503, description = "index_unavailable (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn commit(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<CommitTransactionRequest>,
) -> ApiResult<Json<TransactionEnd>> {
    let Path((raw_id, raw_epoch)) = p.map_err(path_err)?;
    let (id, e) = (producer_id(&raw_id)?, epoch(&raw_epoch)?);
    let offsets = req
        .offsets
        .into_iter()
        .map(|o| TxnOffsets {
            topic: o.topic,
            group: o.group,
            commit: CommitRequest {
                member_id: o.member_id,
                generation: o.generation,
                offsets: o.offsets.iter().map(|c| (c.partition, c.offset)).collect(),
            },
        })
        .collect();
    let r = b.end_transaction(id, e, Outcome::Commit, offsets).await?;
    Ok(ended(id, e, r))
}

/// Abort a transaction: its records are never served to any reader. Repeating an abort
/// answers the same.
#[utoipa::path(post, path = "/v1/producers/{producer_id}/transactions/{epoch}/abort",
    params(("producer_id" = i64, Path), ("epoch" = u32, Path)),
    responses(
        (status = 200, body = TransactionEnd),
        (status = 400, description = "invalid_producer", body = ErrorBody),
        (status = 404, description = "transaction_not_found", body = ErrorBody),
        (status = 409, description = "transaction_committed", body = ErrorBody),
        (status = 503, description = "index_unavailable (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn abort(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<TransactionEnd>> {
    let Path((raw_id, raw_epoch)) = p.map_err(path_err)?;
    let (id, e) = (producer_id(&raw_id)?, epoch(&raw_epoch)?);
    let r = b.end_transaction(id, e, Outcome::Abort, Vec::new()).await?;
    Ok(ended(id, e, r))
}

/// Transactions and half-messages: the open ones (`state=open`, the default) or also
/// the ended ones still remembered (`state=all`), oldest first, with the partitions an
/// open one holds back.
#[utoipa::path(get, path = "/v1/transactions",
    params(("state" = Option<String>, Query, description = "open (default) or all", example = "open")),
    responses(
        (status = 200, body = TransactionList),
        (status = 400, description = "invalid_parameter", body = ErrorBody),
        (status = 503, description = "index_unavailable (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn list(
    State(b): State<Broker>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<TransactionList>> {
    let mut open_only = true;
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("state", "open") => open_only = true,
            ("state", "all") => open_only = false,
            ("state", other) => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("state must be open or all, got {other:?}"),
                ));
            }
            _ => {}
        }
    }
    let txns = b.transactions(open_only).await?;
    Ok(Json(TransactionList {
        transactions: txns
            .into_iter()
            .map(|t| TransactionDescription {
                producer_id: t.info.producer_id,
                producer_name: t.info.name,
                epoch: t.info.epoch,
                state: state(t.info.state),
                started_ms: t.info.started_ms,
                deadline_ms: t.info.deadline_ms,
                check_url: t.info.check_url,
                checks: t.info.checks,
                partitions: t
                    .partitions
                    .into_iter()
                    .map(
                        |(topic, partition, first_offset, records)| TransactionPartition {
                            topic,
                            partition,
                            first_offset,
                            records,
                        },
                    )
                    .collect(),
            })
            .collect(),
    }))
}

/// Prepare a half-message (RocketMQ's transactional message): the records are stored and
/// get offsets, invisible to consumers until committed. Commit or roll back with the
/// handle; if neither comes in time, the broker asks `check_url` (first after
/// `--half-first-check-ms`, 6 s, then every `--half-check-interval-ms`, 30 s, at most
/// `--half-max-checks`, 15 times), then applies `--half-default` (rollback) and records it
/// in the audit topic.
#[utoipa::path(post, path = "/v1/topics/{topic}/half-messages",
    params(("topic" = String, Path)),
    request_body = PrepareHalfRequest,
    responses(
        (status = 201, body = HalfMessage),
        (status = 400, description = "invalid_json, invalid_record, invalid_partition, invalid_base64, invalid_check_url, invalid_request", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 413, description = "record_too_large, request_too_large", body = ErrorBody),
        (status = 503, description = "store_unavailable, index_unavailable, overloaded (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn prepare_half(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<PrepareHalfRequest>,
) -> ApiResult<(StatusCode, Json<HalfMessage>)> {
    let Path(topic) = p.map_err(path_err)?;
    let max = b.config.limits.max_records_per_request;
    if req.records.len() > max {
        return Err(floe_broker::records::too_many_records(req.records.len(), max).into());
    }
    let incoming = decode_json(
        req.records
            .into_iter()
            .map(crate::extract::RawRecord::from)
            .collect(),
    )?;
    let h = b.prepare_half(&topic, incoming, &req.check_url).await?;
    Ok((
        StatusCode::CREATED,
        Json(HalfMessage {
            handle: half_handle(h.producer_id, h.epoch),
            producer_id: h.producer_id,
            epoch: h.epoch,
            offsets: h
                .produced
                .offsets
                .iter()
                .map(|o| RecordOffset {
                    partition: o.partition,
                    offset: o.offset,
                })
                .collect(),
        }),
    ))
}

async fn end_half(b: &Broker, raw: &str, outcome: Outcome) -> ApiResult<Json<TransactionEnd>> {
    let (id, e) = parse_half_handle(raw)?;
    let r = b.end_transaction(id, e, outcome, Vec::new()).await?;
    Ok(ended(id, e, r))
}

/// Commit a half-message: its records become visible. Repeating it answers the same; a
/// commit after a rollback (by the producer, a check-back or the default) is refused.
#[utoipa::path(post, path = "/v1/half-messages/{handle}/commit",
    params(("handle" = String, Path, description = "<producer_id>.<epoch>")),
    responses(
        (status = 200, body = TransactionEnd),
        (status = 400, description = "invalid_handle", body = ErrorBody),
        (status = 404, description = "transaction_not_found", body = ErrorBody),
        (status = 409, description = "transaction_aborted: it was rolled back", body = ErrorBody),
        (status = 503, description = "index_unavailable (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn commit_half(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<TransactionEnd>> {
    let Path(raw) = p.map_err(path_err)?;
    end_half(&b, &raw, Outcome::Commit).await
}

/// Roll a half-message back: its records are never served. Repeating it answers the
/// same; a rollback after a commit is refused.
#[utoipa::path(post, path = "/v1/half-messages/{handle}/rollback",
    params(("handle" = String, Path, description = "<producer_id>.<epoch>")),
    responses(
        (status = 200, body = TransactionEnd),
        (status = 400, description = "invalid_handle", body = ErrorBody),
        (status = 404, description = "transaction_not_found", body = ErrorBody),
        (status = 409, description = "transaction_committed: it was committed", body = ErrorBody),
        (status = 503, description = "index_unavailable (with Retry-After)", body = ErrorBody)))]
pub(crate) async fn rollback_half(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<TransactionEnd>> {
    let Path(raw) = p.map_err(path_err)?;
    end_half(&b, &raw, Outcome::Abort).await
}
