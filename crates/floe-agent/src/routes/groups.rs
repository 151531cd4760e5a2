//! Consumer groups (pub/sub).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use floe_api::{
    Assignment, CommitRequest, Encoding, ErrorBody, GroupDescription, GroupFetchResponse,
    GroupMemberInfo, GroupPartitionLag, JoinGroupRequest, ResetPolicy,
};
use floe_broker::Broker;
use floe_broker::groups as engine;
use serde::{Deserialize, Serialize};

use crate::error::ApiResult;
use crate::extract::{JsonBody, path_err, query_err};
use crate::render::{RecordsJson, json_with_records};

fn assignment(a: engine::Assignment) -> Assignment {
    Assignment {
        member_id: a.member_id,
        generation: a.generation,
        partitions: a.partitions,
        heartbeat_interval_ms: a.heartbeat_interval_ms,
        session_timeout_ms: a.session_timeout_ms,
    }
}

/// Join a consumer group of a topic (creating the group on first join). Every membership
/// change bumps the generation and reassigns partitions (balanced and sticky).
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/members",
    params(("topic" = String, Path), ("group" = String, Path)),
    request_body = JoinGroupRequest,
    responses(
        (status = 200, body = Assignment),
        (status = 400, description = "invalid_group_name, invalid_member_id, invalid_session_timeout", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 409, description = "group_full", body = ErrorBody)))]
pub(crate) async fn join_group(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<JoinGroupRequest>,
) -> ApiResult<Json<Assignment>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let req = engine::JoinRequest {
        member_id: req.member_id,
        session_timeout_ms: req.session_timeout_ms,
        auto_commit: req.auto_commit,
    };
    Ok(Json(assignment(b.join_group(&topic, &group, req).await?)))
}

/// Heartbeat: keeps the member in the group and tells it its current assignment; a new
/// generation means the assignment changed. `409 unknown_member` means: join again.
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/members/{member}/heartbeat",
    params(("topic" = String, Path), ("group" = String, Path), ("member" = String, Path)),
    responses(
        (status = 200, body = Assignment),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 409, description = "unknown_member", body = ErrorBody)))]
pub(crate) async fn heartbeat(
    State(b): State<Broker>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<Json<Assignment>> {
    let Path((topic, group, member)) = p.map_err(path_err)?;
    Ok(Json(assignment(
        b.heartbeat(&topic, &group, &member).await?,
    )))
}

/// Leave the group now (its partitions are reassigned at once). Idempotent.
#[utoipa::path(delete, path = "/v1/topics/{topic}/groups/{group}/members/{member}",
    params(("topic" = String, Path), ("group" = String, Path), ("member" = String, Path)),
    responses((status = 204, description = "Left (or was not a member)"),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub(crate) async fn leave_group(
    State(b): State<Broker>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path((topic, group, member)) = p.map_err(path_err)?;
    b.leave_group(&topic, &group, &member).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Commit offsets (the next offset to read per partition). Fenced: only a member of the
/// current generation may commit, and only for partitions it owns (409 otherwise).
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/commit",
    params(("topic" = String, Path), ("group" = String, Path)),
    request_body = CommitRequest,
    responses(
        (status = 204, description = "Committed"),
        (status = 400, description = "invalid_offset, invalid_partition", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 409, description = "stale_generation, not_owner, unknown_member", body = ErrorBody)))]
pub(crate) async fn commit(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<CommitRequest>,
) -> ApiResult<StatusCode> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let req = engine::CommitRequest {
        member_id: req.member_id,
        generation: req.generation,
        offsets: req
            .offsets
            .iter()
            .map(|o| (o.partition, o.offset))
            .collect(),
    };
    b.commit(&topic, &group, req).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GroupFetchQuery {
    cursor: Option<String>,
    max_records: Option<u64>,
    max_bytes: Option<u64>,
    wait_ms: Option<u64>,
    reset: Option<ResetPolicy>,
    encoding: Option<Encoding>,
}

#[derive(Serialize)]
struct PartitionRecordsBody<'a> {
    partition: u32,
    records: RecordsJson<'a>,
    next_offset: u64,
    end_offset: u64,
}

/// Same JSON shape as [`GroupFetchResponse`], serialized without copying record bytes.
#[derive(Serialize)]
struct GroupFetchBody<'a> {
    generation: u64,
    assigned: &'a [u32],
    partitions: Vec<PartitionRecordsBody<'a>>,
    cursor: &'a str,
}

/// Fetch records from the member's assigned partitions, from the group's committed offsets
/// (or from `cursor`, the previous fetch's positions, while the generation is unchanged).
/// Counts as a heartbeat. With `auto_commit` members, the cursor's positions are committed.
#[utoipa::path(get, path = "/v1/topics/{topic}/groups/{group}/members/{member}/records",
    params(("topic" = String, Path), ("group" = String, Path), ("member" = String, Path),
        ("cursor" = Option<String>, Query, description = "The previous fetch's cursor"),
        ("max_records" = Option<u64>, Query, description = "Default 500, capped by max_fetch_records"),
        ("max_bytes" = Option<u64>, Query, description = "Default 1 MiB, capped by max_fetch_bytes"),
        ("wait_ms" = Option<u64>, Query, description = "Long-poll when nothing is new; capped by max_wait_ms and half the session timeout"),
        ("reset" = Option<String>, Query, description = "earliest (default) or latest: where to start without a committed offset"),
        ("encoding" = Option<floe_api::Encoding>, Query, description = "auto (default) or base64, as for fetch")),
    responses(
        (status = 200, body = GroupFetchResponse),
        (status = 400, description = "invalid_cursor, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 409, description = "unknown_member", body = ErrorBody)))]
pub(crate) async fn group_fetch(
    State(b): State<Broker>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<GroupFetchQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Path((topic, group, member)) = p.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    let encoding = q.encoding.unwrap_or_default();
    let req = engine::GroupFetchRequest {
        cursor: q.cursor,
        max_records: q.max_records,
        max_bytes: q.max_bytes,
        wait_ms: q.wait_ms,
        reset: match q.reset.unwrap_or_default() {
            ResetPolicy::Earliest => engine::Reset::Earliest,
            ResetPolicy::Latest => engine::Reset::Latest,
        },
    };
    let f = b.group_fetch(&topic, &group, &member, req).await?;
    let body = GroupFetchBody {
        generation: f.generation,
        assigned: &f.assigned,
        partitions: f
            .partitions
            .iter()
            .map(|p| PartitionRecordsBody {
                partition: p.partition,
                records: RecordsJson {
                    records: &p.records,
                    encoding,
                },
                next_offset: p.next_offset,
                end_offset: p.end_offset,
            })
            .collect(),
        cursor: &f.cursor,
    };
    let (bytes, count) = f.partitions.iter().fold((0, 0), |(b, c), p| {
        (b + p.records.bytes, c + p.records.count)
    });
    json_with_records(&body, bytes, count, encoding)
}

/// Describe a group: generation, members, committed offsets and lag per partition.
#[utoipa::path(get, path = "/v1/topics/{topic}/groups/{group}",
    params(("topic" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = GroupDescription),
        (status = 404, description = "topic_not_found, group_not_found", body = ErrorBody)))]
pub(crate) async fn describe_group(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<GroupDescription>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let d = b.describe_group(&topic, &group).await?;
    Ok(Json(GroupDescription {
        topic: d.topic,
        group: d.group,
        generation: d.generation,
        members: d
            .members
            .into_iter()
            .map(|m| GroupMemberInfo {
                member_id: m.member_id,
                partitions: m.partitions,
                last_seen_ms: m.last_seen_ms,
                session_timeout_ms: m.session_timeout_ms,
            })
            .collect(),
        partitions: d
            .partitions
            .into_iter()
            .map(|p| GroupPartitionLag {
                partition: p.partition,
                committed: p.committed,
                end_offset: p.end_offset,
                lag: p.lag,
            })
            .collect(),
        total_lag: d.total_lag,
    }))
}

/// List the consumer groups of a topic.
#[utoipa::path(get, path = "/v1/topics/{topic}/groups", params(("topic" = String, Path)),
    responses((status = 200, description = "Group names", body = Vec<String>),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub(crate) async fn list_groups(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<String>>> {
    let Path(topic) = p.map_err(path_err)?;
    Ok(Json(b.list_groups(&topic).await?))
}
