//! Consumer groups (pub/sub) over HTTP: join / heartbeat / leave, fetch from the member's
//! assigned partitions, fenced commits, lag. The group lives in the index as one
//! [`GroupState`] blob per (topic, group), so every agent serves every member.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use floe_core::api::{
    Assignment, CommitRequest, ErrorBody, GroupDescription, GroupFetchResponse, GroupMemberInfo,
    GroupPartitionLag, JoinGroupRequest, ResetPolicy,
};
use floe_core::group::{GroupError, GroupState, Member};
use floe_index::{StateKey, StateKind, TopicMeta};
use serde::{Deserialize, Serialize};

use crate::Shared;
use crate::error::ApiError;
use crate::fetch::Fetched;
use crate::http::{JsonBody, existing_topic, path_err, topic_name};

type ApiResult<T> = Result<T, ApiError>;

pub(crate) const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;

fn group_key(topic: &TopicMeta, group: &str) -> StateKey {
    StateKey {
        kind: StateKind::Group,
        topic_id: topic.id,
        group: group.to_string(),
        partition: 0,
    }
}

/// Group and member names follow the topic-name rules (`[A-Za-z0-9._-]`, 1–249).
pub(crate) fn valid_name(what: &'static str, raw: &str) -> ApiResult<String> {
    floe_core::TopicName::new(raw)
        .map(|n| n.to_string())
        .map_err(|e| {
            ApiError::bad_request(
                if what == "group" {
                    "invalid_group_name"
                } else {
                    "invalid_member_id"
                },
                format!(
                    "{what} name: {}",
                    e.to_string().replace("topic name", "name")
                ),
            )
        })
}

fn group_err(e: GroupError) -> ApiError {
    let code = match e {
        GroupError::UnknownMember(_) => "unknown_member",
        GroupError::StaleGeneration { .. } => "stale_generation",
        GroupError::NotOwner { .. } => "not_owner",
        GroupError::Full(_) => "group_full",
    };
    ApiError::new(StatusCode::CONFLICT, code, e.to_string())
}

fn assignment(g: &GroupState, member_id: &str) -> ApiResult<Assignment> {
    let m = g
        .members
        .get(member_id)
        .ok_or_else(|| group_err(GroupError::UnknownMember(member_id.to_string())))?;
    Ok(Assignment {
        member_id: member_id.to_string(),
        generation: g.generation,
        partitions: m.partitions.clone(),
        heartbeat_interval_ms: (m.session_timeout_ms / 3).max(1),
        session_timeout_ms: m.session_timeout_ms,
    })
}

pub(crate) async fn topic_and_group(
    s: &Shared,
    topic: &str,
    group: &str,
) -> ApiResult<(Arc<TopicMeta>, String)> {
    let group = valid_name("group", group)?;
    let topic = existing_topic(s, topic).await?;
    Ok((topic, group))
}

/// Apply `change` to the group's state (see [`crate::state::update`]).
async fn update_group<R>(
    s: &Shared,
    topic: &TopicMeta,
    group: &str,
    change: impl FnMut(&mut GroupState) -> ApiResult<(R, bool)>,
) -> ApiResult<R> {
    crate::state::update(
        &s.index,
        &s.metrics,
        &group_key(topic, group),
        GroupState::default,
        |g| g.check(topic.partitions),
        change,
    )
    .await
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
pub async fn join_group(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<JoinGroupRequest>,
) -> ApiResult<Json<Assignment>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    let l = &s.config.limits;
    let timeout = req.session_timeout_ms.unwrap_or(DEFAULT_SESSION_TIMEOUT_MS);
    if !(l.min_session_timeout_ms..=l.max_session_timeout_ms).contains(&timeout) {
        return Err(ApiError::bad_request(
            "invalid_session_timeout",
            format!(
                "session_timeout_ms must be between {} and {}, got {timeout}",
                l.min_session_timeout_ms, l.max_session_timeout_ms
            ),
        ));
    }
    let member_id = match &req.member_id {
        Some(m) => valid_name("member", m)?,
        None => format!("m-{}", uuid::Uuid::now_v7().simple()),
    };
    let (parts, max) = (topic.partitions, l.max_group_members);
    let now = s.clock.now_ms();
    let member = Member {
        partitions: Vec::new(),
        last_seen_ms: now,
        session_timeout_ms: timeout,
        auto_commit: req.auto_commit,
    };
    let a = update_group(&s, &topic, &group, |g| {
        g.expire(now, parts);
        g.join(&member_id, now, member.clone(), parts, max)
            .map_err(group_err)?;
        Ok((assignment(g, &member_id)?, true))
    })
    .await?;
    tracing::info!(topic = %topic.name, %group, member = %member_id, generation = a.generation, "member joined");
    Ok(Json(a))
}

/// Heartbeat: keeps the member in the group and tells it its current assignment; a new
/// generation means the assignment changed. `409 unknown_member` means: join again.
#[utoipa::path(post, path = "/v1/topics/{topic}/groups/{group}/members/{member}/heartbeat",
    params(("topic" = String, Path), ("group" = String, Path), ("member" = String, Path)),
    responses(
        (status = 200, body = Assignment),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 409, description = "unknown_member", body = ErrorBody)))]
pub async fn heartbeat(
    State(s): State<Shared>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<Json<Assignment>> {
    let Path((topic, group, member)) = p.map_err(path_err)?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    let now = s.clock.now_ms();
    let parts = topic.partitions;
    let a = update_group(&s, &topic, &group, |g| {
        g.expire(now, parts);
        g.touch(&member, now, true).map_err(group_err)?;
        Ok((assignment(g, &member)?, true))
    })
    .await?;
    Ok(Json(a))
}

/// Leave the group now (its partitions are reassigned at once). Idempotent.
#[utoipa::path(delete, path = "/v1/topics/{topic}/groups/{group}/members/{member}",
    params(("topic" = String, Path), ("group" = String, Path), ("member" = String, Path)),
    responses((status = 204, description = "Left (or was not a member)"),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub async fn leave_group(
    State(s): State<Shared>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let Path((topic, group, member)) = p.map_err(path_err)?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    let now = s.clock.now_ms();
    let parts = topic.partitions;
    update_group(&s, &topic, &group, |g| {
        let expired = g.expire(now, parts);
        let left = g.leave(&member, parts);
        Ok(((), expired || left))
    })
    .await?;
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
pub async fn commit(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    JsonBody(req): JsonBody<CommitRequest>,
) -> ApiResult<StatusCode> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    if req.offsets.len() > topic.partitions as usize {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!(
                "{} offsets for {} partitions",
                req.offsets.len(),
                topic.partitions
            ),
        ));
    }
    let ends = s
        .index
        .partition_offsets(topic.id)
        .await
        .map_err(|e| ApiError::index(&e))?;
    let mut offsets = Vec::with_capacity(req.offsets.len());
    for o in &req.offsets {
        let end = ends
            .iter()
            .find(|e| e.partition == o.partition)
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_partition",
                    format!("partition {} does not exist", o.partition),
                )
            })?;
        if o.offset > end.end_offset {
            return Err(ApiError::bad_request(
                "invalid_offset",
                format!(
                    "offset {} is beyond the end of partition {} ({})",
                    o.offset, o.partition, end.end_offset
                ),
            ));
        }
        offsets.push((o.partition, o.offset));
    }
    let now = s.clock.now_ms();
    let parts = topic.partitions;
    update_group(&s, &topic, &group, |g| {
        // Expiry first: a member past its session timeout must not commit.
        g.expire(now, parts);
        g.commit(&req.member_id, req.generation, &offsets)
            .map_err(group_err)?;
        g.touch(&req.member_id, now, false).map_err(group_err)?;
        Ok(((), true))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFetchQuery {
    cursor: Option<String>,
    max_records: Option<u64>,
    max_bytes: Option<u64>,
    wait_ms: Option<u64>,
    reset: Option<ResetPolicy>,
    encoding: Option<floe_core::api::Encoding>,
}

/// `GEN:P=O,P=O`: positions after the previous fetch, valid in generation GEN only.
fn parse_cursor(c: &str) -> ApiResult<(u64, BTreeMap<u32, u64>)> {
    let bad = || {
        ApiError::bad_request(
            "invalid_cursor",
            format!("cursor {c:?} is malformed; pass back the cursor of the previous fetch"),
        )
    };
    let (generation, rest) = c.split_once(':').ok_or_else(bad)?;
    let generation = generation.parse().map_err(|_| bad())?;
    let mut out = BTreeMap::new();
    for part in rest.split(',').filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once('=').ok_or_else(bad)?;
        out.insert(p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?);
    }
    Ok((generation, out))
}

fn format_cursor(generation: u64, pos: &BTreeMap<u32, u64>) -> String {
    let parts: Vec<String> = pos.iter().map(|(p, o)| format!("{p}={o}")).collect();
    format!("{generation}:{}", parts.join(","))
}

#[derive(Serialize)]
struct PartitionRecordsBody {
    partition: u32,
    records: Fetched,
    next_offset: u64,
    end_offset: u64,
}

/// Same JSON shape as [`GroupFetchResponse`], serialized without copying record bytes.
#[derive(Serialize)]
struct GroupFetchBody {
    generation: u64,
    assigned: Vec<u32>,
    partitions: Vec<PartitionRecordsBody>,
    cursor: String,
}

static ROTATE: AtomicUsize = AtomicUsize::new(0);

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
        ("encoding" = Option<floe_core::api::Encoding>, Query, description = "auto (default) or base64, as for fetch")),
    responses(
        (status = 200, body = GroupFetchResponse),
        (status = 400, description = "invalid_cursor, invalid_parameter", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 409, description = "unknown_member", body = ErrorBody)))]
pub async fn group_fetch(
    State(s): State<Shared>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<GroupFetchQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Path((topic, group, member)) = p.map_err(path_err)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    let encoding = q.encoding.unwrap_or_default();
    let l = &s.config.limits;
    let max_records = match q.max_records {
        Some(0) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "max_records must be at least 1",
            ));
        }
        Some(n) => (n as usize).min(l.max_fetch_records),
        None => 500.min(l.max_fetch_records),
    };
    let max_bytes = q
        .max_bytes
        .map_or(1024 * 1024, |b| b as usize)
        .min(l.max_fetch_bytes);
    let cursor = q.cursor.as_deref().map(parse_cursor).transpose()?;
    // Validate the cursor before anything is stored (auto-commit writes its positions).
    // End offsets only grow, so a position valid now stays valid.
    if let Some((_, pos)) = &cursor {
        let offsets = s
            .index
            .partition_offsets(topic.id)
            .await
            .map_err(|e| ApiError::index(&e))?;
        for (p, o) in pos {
            let end = offsets
                .iter()
                .find(|e| e.partition == *p)
                .map(|e| e.end_offset);
            if end.is_none_or(|end| *o > end) {
                return Err(ApiError::bad_request(
                    "invalid_cursor",
                    format!("cursor position {o} of partition {p} is beyond the log end ({end:?})"),
                ));
            }
        }
    }
    let now = s.clock.now_ms();
    let parts = topic.partitions;
    // Heartbeat, auto-commit of the cursor, and the member's view, in one state change.
    let (generation, assigned, committed, session) = update_group(&s, &topic, &group, |g| {
        let mut changed = g.expire(now, parts);
        changed |= g.touch(&member, now, false).map_err(group_err)?;
        let m = g
            .members
            .get(&member)
            .ok_or_else(|| group_err(GroupError::UnknownMember(member.clone())))?
            .clone();
        if let Some((cgen, pos)) = &cursor
            && m.auto_commit
            && *cgen == g.generation
        {
            for p in &m.partitions {
                if let Some(o) = pos.get(p)
                    && g.offsets.get(p) != Some(o)
                {
                    g.offsets.insert(*p, *o);
                    changed = true;
                }
            }
        }
        let committed: BTreeMap<u32, u64> = m
            .partitions
            .iter()
            .filter_map(|p| g.offsets.get(p).map(|o| (*p, *o)))
            .collect();
        Ok((
            (g.generation, m.partitions, committed, m.session_timeout_ms),
            changed,
        ))
    })
    .await?;
    let wait_cap = l.max_wait_ms.min(session / 2);
    let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(wait_cap));
    let deadline = tokio::time::Instant::now() + wait;
    let reset = q.reset.unwrap_or_default();
    let mut positions: Option<BTreeMap<u32, u64>> = None;
    let mut shutdown = s.shutdown.clone();
    loop {
        let mut subs: Vec<_> = assigned
            .iter()
            .map(|p| s.notifier.subscribe(topic.id, *p))
            .collect();
        let offsets = s
            .index
            .partition_offsets(topic.id)
            .await
            .map_err(|e| ApiError::index(&e))?;
        let ends: BTreeMap<u32, (u64, u64)> = offsets
            .iter()
            .map(|o| (o.partition, (o.start_offset, o.end_offset)))
            .collect();
        let pos = positions.get_or_insert_with(|| {
            assigned
                .iter()
                .map(|p| {
                    let (start, end) = ends.get(p).copied().unwrap_or((0, 0));
                    let from_cursor = cursor
                        .as_ref()
                        .filter(|(cgen, _)| *cgen == generation)
                        .and_then(|(_, c)| c.get(p).copied());
                    let o =
                        from_cursor
                            .or_else(|| committed.get(p).copied())
                            .unwrap_or(match reset {
                                ResetPolicy::Earliest => start,
                                ResetPolicy::Latest => end,
                            });
                    (*p, o)
                })
                .collect()
        });
        let has_data = pos
            .iter()
            .any(|(p, o)| ends.get(p).is_some_and(|e| e.1 > *o));
        if has_data || tokio::time::Instant::now() >= deadline {
            let mut out = Vec::with_capacity(assigned.len());
            let (mut left_records, mut left_bytes) = (max_records, max_bytes);
            let n = assigned.len().max(1);
            let first = ROTATE.fetch_add(1, Ordering::Relaxed) % n;
            for i in 0..assigned.len() {
                let p = assigned[(first + i) % n];
                let from = pos.get(&p).copied().unwrap_or(0);
                let end = ends.get(&p).map_or(0, |e| e.1);
                let mut fetched = if from < end && left_records > 0 && left_bytes > 0 {
                    s.reader
                        .read(&topic, p, from, left_records, left_bytes)
                        .await?
                } else {
                    Fetched::empty(from)
                };
                fetched.encoding = encoding;
                left_records -= fetched.count;
                left_bytes = left_bytes.saturating_sub(fetched.iter().map(|(_, v)| v.size()).sum());
                pos.insert(p, fetched.next);
                out.push(PartitionRecordsBody {
                    partition: p,
                    next_offset: fetched.next,
                    records: fetched,
                    end_offset: end,
                });
            }
            out.sort_by_key(|b| b.partition);
            let body = GroupFetchBody {
                generation,
                cursor: format_cursor(generation, pos),
                assigned,
                partitions: out,
            };
            return Ok(Json(body).into_response());
        }
        let recheck = tokio::time::Instant::now() + s.config.poll_interval;
        // A member with no partitions (more members than partitions) just waits out the
        // long-poll instead of spinning.
        let any_commit = async {
            if subs.is_empty() {
                std::future::pending::<()>().await;
            } else {
                let _ = futures::future::select_all(subs.iter_mut().map(|r| Box::pin(r.changed())))
                    .await;
            }
        };
        tokio::select! {
            () = any_commit => {}
            () = tokio::time::sleep_until(recheck.min(deadline)) => {}
            _ = shutdown.wait_for(|v| *v) => { return Err(ApiError::unavailable("shutting_down", "the agent is shutting down")); }
        }
    }
}

/// Describe a group: generation, members, committed offsets and lag per partition.
#[utoipa::path(get, path = "/v1/topics/{topic}/groups/{group}",
    params(("topic" = String, Path), ("group" = String, Path)),
    responses((status = 200, body = GroupDescription),
        (status = 404, description = "topic_not_found, group_not_found", body = ErrorBody)))]
pub async fn describe_group(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<Json<GroupDescription>> {
    let Path((topic, group)) = p.map_err(path_err)?;
    let (topic, group) = topic_and_group(&s, &topic, &group).await?;
    let mut g: GroupState = crate::state::load(&s.index, &group_key(&topic, &group))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "group_not_found",
                format!("topic {:?} has no consumer group {group:?}", topic.name),
            )
        })?;
    g.expire(s.clock.now_ms(), topic.partitions);
    let offsets = s
        .index
        .partition_offsets(topic.id)
        .await
        .map_err(|e| ApiError::index(&e))?;
    Ok(Json(describe(&topic, &group, &g, &offsets)))
}

fn describe(
    topic: &TopicMeta,
    group: &str,
    g: &GroupState,
    offsets: &[floe_index::PartitionOffsets],
) -> GroupDescription {
    let partitions: Vec<GroupPartitionLag> = offsets
        .iter()
        .map(|o| {
            let committed = g.offsets.get(&o.partition).copied();
            GroupPartitionLag {
                partition: o.partition,
                committed,
                end_offset: o.end_offset,
                lag: o
                    .end_offset
                    .saturating_sub(committed.unwrap_or(o.start_offset)),
            }
        })
        .collect();
    GroupDescription {
        topic: topic.name.clone(),
        group: group.to_string(),
        generation: g.generation,
        members: g
            .members
            .iter()
            .map(|(id, m)| GroupMemberInfo {
                member_id: id.clone(),
                partitions: m.partitions.clone(),
                last_seen_ms: m.last_seen_ms,
                session_timeout_ms: m.session_timeout_ms,
            })
            .collect(),
        total_lag: partitions.iter().map(|p| p.lag).sum(),
        partitions,
    }
}

/// Recompute the `floe_group_lag` gauges from the index (called on every scrape).
pub async fn refresh_lag_metrics(s: &Shared) -> Result<(), floe_index::IndexError> {
    let topics = s.index.list_topics().await?;
    let by_id: BTreeMap<i64, &TopicMeta> = topics.iter().map(|t| (t.id, t)).collect();
    let groups = s.index.list_states(StateKind::Group, None).await?;
    s.metrics.group_lag.reset();
    let mut offsets_cache: BTreeMap<i64, Vec<floe_index::PartitionOffsets>> = BTreeMap::new();
    for (key, v) in groups {
        let Some(topic) = by_id.get(&key.topic_id) else {
            continue;
        };
        let Ok(g) = floe_core::stored::decode::<GroupState>(&v.data) else {
            continue;
        };
        if let std::collections::btree_map::Entry::Vacant(e) = offsets_cache.entry(topic.id) {
            e.insert(s.index.partition_offsets(topic.id).await?);
        }
        let offsets = offsets_cache.get(&topic.id).map_or(&[][..], Vec::as_slice);
        for p in describe(topic, &key.group, &g, offsets).partitions {
            s.metrics
                .group_lag
                .with_label_values(&[
                    topic.name.as_str(),
                    key.group.as_str(),
                    &p.partition.to_string(),
                ])
                .set(i64::try_from(p.lag).unwrap_or(i64::MAX));
        }
    }
    Ok(())
}

/// List the consumer groups of a topic.
#[utoipa::path(get, path = "/v1/topics/{topic}/groups", params(("topic" = String, Path)),
    responses((status = 200, description = "Group names", body = Vec<String>),
        (status = 404, description = "topic_not_found", body = ErrorBody)))]
pub async fn list_groups(
    State(s): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<String>>> {
    let Path(topic) = p.map_err(path_err)?;
    let topic = existing_topic(&s, &topic_name(&topic)?.to_string()).await?;
    let states = s
        .index
        .list_states(StateKind::Group, Some(topic.id))
        .await
        .map_err(|e| ApiError::index(&e))?;
    Ok(Json(states.into_iter().map(|(k, _)| k.group).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let pos: BTreeMap<u32, u64> = [(0, 5), (3, 9)].into_iter().collect();
        let c = format_cursor(7, &pos);
        assert_eq!(parse_cursor(&c).unwrap(), (7, pos));
        assert_eq!(parse_cursor("3:").unwrap(), (3, BTreeMap::new()));
        for bad in ["", "x:1=2", "1:1", "1:a=2", "1-1=2"] {
            assert_eq!(
                parse_cursor(bad).unwrap_err().code,
                "invalid_cursor",
                "{bad}"
            );
        }
    }
}
