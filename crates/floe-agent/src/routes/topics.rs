//! Topic administration.

use axum::Json;
use axum::extract::RawQuery;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use floe_api::{
    CreateTopicRequest, ErrorBody, FileEntryInfo, FileLayout, PartitionFilesInfo, PartitionInfo,
    TopicDescription, TopicFiles, TopicInfo, TopicList, TopicSummary,
};
use floe_broker::Broker;
use floe_broker::files::Layout;
use floe_broker::topics::TopicSpec;
use floe_index::TopicMeta;

use crate::error::{ApiError, ApiResult};
use crate::extract::{JsonBody, path_err};

fn info_of(t: TopicMeta) -> TopicInfo {
    TopicInfo {
        name: t.name,
        partitions: t.partitions,
        retention_ms: t.retention_ms,
        config: t.config,
        created_ms: t.created_ms,
    }
}

/// Create a topic.
#[utoipa::path(post, path = "/v1/topics", request_body = CreateTopicRequest, responses(
    (status = 201, body = TopicInfo),
    (status = 400, description = "invalid_topic_name, invalid_partitions, invalid_retention, invalid_topic_config (queue.*, retention.bytes, cleanup.policy, delete.retention.ms), invalid_json", body = ErrorBody),
    (status = 409, description = "topic_exists", body = ErrorBody)))]
pub(crate) async fn create_topic(
    State(b): State<Broker>,
    JsonBody(req): JsonBody<CreateTopicRequest>,
) -> ApiResult<(StatusCode, Json<TopicInfo>)> {
    let t = b
        .create_topic(TopicSpec {
            name: req.name,
            partitions: req.partitions,
            retention_ms: req.retention_ms,
            config: req.config,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(info_of(t))))
}

/// List topics.
#[utoipa::path(get, path = "/v1/topics", responses((status = 200, body = TopicList)))]
pub(crate) async fn list_topics(State(b): State<Broker>) -> ApiResult<Json<TopicList>> {
    let topics = b.list_topics().await?;
    Ok(Json(TopicList {
        topics: topics
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
pub(crate) async fn describe_topic(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<TopicDescription>> {
    let Path(raw) = p.map_err(path_err)?;
    let d = b.describe_topic(&raw).await?;
    Ok(Json(TopicDescription {
        name: d.topic.name,
        partitions: d
            .partitions
            .into_iter()
            .map(|p| PartitionInfo {
                partition: p.partition,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
                stable_offset: p.stable_offset,
            })
            .collect(),
        retention_ms: d.topic.retention_ms,
        config: d.topic.config,
        created_ms: d.topic.created_ms,
    }))
}

/// Delete a topic and all its records.
#[utoipa::path(delete, path = "/v1/topics/{topic}", params(("topic" = String, Path)), responses(
    (status = 204, description = "Deleted"),
    (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub(crate) async fn delete_topic(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path(raw) = p.map_err(path_err)?;
    b.delete_topic(&raw).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The objects (and rows in them) that make up a topic's committed log between two
/// offsets: what a query engine must read to see exactly the log (no orphan, no deleted
/// topic, no row taken out at commit). At most `--max-file-entries` (10 000) entries per
/// answer over all partitions: a partition whose `to` is short of the asked end continues
/// with `from=to` (`floe topics files` does). See the README's DuckDB example.
#[utoipa::path(get, path = "/v1/topics/{topic}/files",
    params(
        ("topic" = String, Path),
        ("partition" = Option<u32>, Query, description = "One partition (default: all)"),
        ("from" = Option<u64>, Query, description = "First offset (default: each partition's start)"),
        ("to" = Option<u64>, Query, description = "End offset, exclusive (default: each partition's end); a range with from >= to lists nothing")),
    responses(
        (status = 200, body = TopicFiles),
        (status = 400, description = "invalid_partition (not an integer), invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found, partition_not_found", body = ErrorBody)))]
pub(crate) async fn topic_files(
    State(b): State<Broker>,
    p: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<TopicFiles>> {
    let Path(raw) = p.map_err(path_err)?;
    let (mut partition, mut from, mut to) = (None, None, None);
    for pair in q
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        // Offsets are at most i64::MAX (the index stores them as BIGINT).
        let num = |name: &str| -> ApiResult<u64> {
            v.parse::<u64>()
                .ok()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        if name == "partition" {
                            "invalid_partition"
                        } else {
                            "invalid_parameter"
                        },
                        format!("{name} must be an integer in 0..=9223372036854775807, got {v:?}"),
                    )
                })
        };
        match k {
            "partition" => {
                partition = Some(u32::try_from(num("partition")?).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_partition",
                        format!("partition {v} is out of range"),
                    )
                })?);
            }
            "from" => from = Some(num("from")?),
            "to" => to = Some(num("to")?),
            _ => {}
        }
    }
    let listing = b.files(&raw, partition, from, to).await?;
    Ok(Json(TopicFiles {
        topic: raw,
        partitions: listing
            .into_iter()
            .map(|p| PartitionFilesInfo {
                partition: p.partition,
                start_offset: p.start_offset,
                end_offset: p.end_offset,
                from: p.from,
                to: p.to,
                entries: p
                    .entries
                    .into_iter()
                    .map(|e| FileEntryInfo {
                        partition: e.partition,
                        key: e.key,
                        size: e.size,
                        layout: match e.layout {
                            Layout::Segment => FileLayout::Segment,
                            Layout::Partition => FileLayout::Partition,
                        },
                        base_offset: e.base_offset,
                        records: e.records,
                        row_first: e.row_first,
                        row_group_first: e.row_group_first,
                        row_group_count: e.row_group_count,
                    })
                    .collect(),
            })
            .collect(),
    }))
}
