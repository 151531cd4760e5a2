//! Consumer groups (pub/sub): join / heartbeat / leave, fetch from the member's assigned
//! partitions, fenced commits, lag. The group lives in the index as one [`GroupState`]
//! blob per (topic, group), so every agent serves every member.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use floe_core::group::{GroupError, GroupState, Member};
use floe_index::{IndexError, OffsetCommit, StateKey, StateKind, TopicMeta};

use crate::Broker;
use crate::error::{BrokerError, BrokerResult, ErrorKind};
use crate::fetch::Fetched;
use crate::names::valid_name;
use crate::records::{fetch_bytes_limit, fetch_records_limit};

pub const DEFAULT_SESSION_TIMEOUT_MS: u64 = 10_000;

/// A member joining a group.
#[derive(Debug, Clone, Default)]
pub struct JoinRequest {
    /// Client-chosen member id (name rules), else one is generated.
    pub member_id: Option<String>,
    /// Default 10 s, within the agent's min/max session timeout.
    pub session_timeout_ms: Option<u64>,
    /// Commit the positions of each fetch's cursor on the member's next fetch.
    pub auto_commit: bool,
}

/// A member's view of the group after a join or heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub member_id: String,
    pub generation: u64,
    pub partitions: Vec<u32>,
    pub heartbeat_interval_ms: u64,
    pub session_timeout_ms: u64,
}

/// Offsets to commit (the next offset to read per partition), fenced by member and
/// generation.
#[derive(Debug, Clone, Default)]
pub struct CommitRequest {
    pub member_id: String,
    pub generation: u64,
    pub offsets: Vec<(u32, u64)>,
}

/// Where a member without a committed offset starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reset {
    #[default]
    Earliest,
    Latest,
}

/// A member's fetch.
#[derive(Debug, Clone, Default)]
pub struct GroupFetchRequest {
    /// The previous fetch's cursor (positions, valid within its generation).
    pub cursor: Option<String>,
    pub max_records: Option<u64>,
    pub max_bytes: Option<u64>,
    pub wait_ms: Option<u64>,
    pub reset: Reset,
}

/// Records of one assigned partition.
#[derive(Debug)]
pub struct PartitionFetch {
    pub partition: u32,
    pub records: Fetched,
    pub next_offset: u64,
    pub end_offset: u64,
}

/// What a member's fetch read, per assigned partition (sorted by partition).
#[derive(Debug)]
pub struct GroupFetchResult {
    pub generation: u64,
    pub assigned: Vec<u32>,
    pub partitions: Vec<PartitionFetch>,
    /// Pass back on the next fetch.
    pub cursor: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub member_id: String,
    pub partitions: Vec<u32>,
    pub last_seen_ms: i64,
    pub session_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: u32,
    pub committed: Option<u64>,
    pub end_offset: u64,
    pub lag: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub topic: String,
    pub group: String,
    pub generation: u64,
    pub members: Vec<MemberInfo>,
    pub partitions: Vec<PartitionLag>,
    pub total_lag: u64,
}

fn group_key(topic: &TopicMeta, group: &str) -> StateKey {
    StateKey {
        kind: StateKind::Group,
        topic_id: topic.id,
        group: group.to_string(),
        partition: 0,
    }
}

pub(crate) fn group_err(e: GroupError) -> BrokerError {
    let code = match e {
        GroupError::UnknownMember(_) => "unknown_member",
        GroupError::StaleGeneration { .. } => "stale_generation",
        GroupError::NotOwner { .. } => "not_owner",
        GroupError::Full(_) => "group_full",
    };
    BrokerError::new(ErrorKind::Conflict, code, e.to_string())
}

fn assignment(g: &GroupState, member_id: &str) -> BrokerResult<Assignment> {
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

/// Apply `change` to the group's state (see [`crate::state::update`]).
async fn update_group<R>(
    s: &Broker,
    topic: &TopicMeta,
    group: &str,
    change: impl FnMut(&mut GroupState) -> BrokerResult<(R, bool)>,
) -> BrokerResult<R> {
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

/// `GEN:P=O,P=O`: positions after the previous fetch, valid in generation GEN only.
fn parse_cursor(c: &str) -> BrokerResult<(u64, BTreeMap<u32, u64>)> {
    let bad = || {
        BrokerError::invalid(
            "invalid_cursor",
            format!("cursor {c:?} is malformed; pass back the cursor of the previous fetch"),
        )
    };
    let (generation, rest) = c.split_once(':').ok_or_else(bad)?;
    let generation = generation.parse().map_err(|_| bad())?;
    let mut out = BTreeMap::new();
    for part in rest.split(',').filter(|p| !p.is_empty()) {
        let (p, o) = part.split_once('=').ok_or_else(bad)?;
        let _ = out.insert(p.parse().map_err(|_| bad())?, o.parse().map_err(|_| bad())?);
    }
    Ok((generation, out))
}

fn format_cursor(generation: u64, pos: &BTreeMap<u32, u64>) -> String {
    let parts: Vec<String> = pos.iter().map(|(p, o)| format!("{p}={o}")).collect();
    format!("{generation}:{}", parts.join(","))
}

static ROTATE: AtomicUsize = AtomicUsize::new(0);

fn describe(
    topic: &TopicMeta,
    group: &str,
    g: &GroupState,
    committed: &BTreeMap<u32, u64>,
    offsets: &[floe_index::PartitionOffsets],
) -> GroupDescription {
    let partitions: Vec<PartitionLag> = offsets
        .iter()
        .map(|o| {
            let committed = committed.get(&o.partition).copied();
            PartitionLag {
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
            .map(|(id, m)| MemberInfo {
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
pub(crate) async fn refresh_lag_metrics(s: &Broker) -> Result<(), floe_index::IndexError> {
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
            let _ = e.insert(s.index.partition_offsets(topic.id).await?);
        }
        let offsets = offsets_cache.get(&topic.id).map_or(&[][..], Vec::as_slice);
        let mut committed = g.offsets.clone();
        committed.extend(s.index.group_offsets(topic.id, &key.group).await?);
        for p in describe(topic, &key.group, &g, &committed, offsets).partitions {
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

impl Broker {
    /// Join a consumer group of a topic (creating the group on first join). Every membership
    /// change bumps the generation and reassigns partitions (balanced and sticky).
    pub async fn join_group(
        &self,
        topic: &str,
        group: &str,
        req: JoinRequest,
    ) -> BrokerResult<Assignment> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        let l = &s.config.limits;
        let timeout = req.session_timeout_ms.unwrap_or(DEFAULT_SESSION_TIMEOUT_MS);
        if !(l.min_session_timeout_ms..=l.max_session_timeout_ms).contains(&timeout) {
            return Err(BrokerError::invalid(
                "invalid_session_timeout",
                format!(
                    "session_timeout_ms must be between {} and {}, got {timeout}",
                    l.min_session_timeout_ms, l.max_session_timeout_ms
                ),
            ));
        }
        let member_id = match &req.member_id {
            Some(m) => valid_name("member", m)?,
            None => crate::ids::member_id(s.clock.now_ms()),
        };
        let (parts, max) = (topic.partitions, l.max_group_members);
        let now = s.clock.now_ms();
        let member = Member {
            partitions: Vec::new(),
            last_seen_ms: now,
            session_timeout_ms: timeout,
            auto_commit: req.auto_commit,
        };
        let a = update_group(s, &topic, &group, |g| {
            let _ = g.expire(now, parts);
            g.join(&member_id, now, member.clone(), parts, max)
                .map_err(group_err)?;
            Ok((assignment(g, &member_id)?, true))
        })
        .await?;
        tracing::info!(topic = %topic.name, %group, member = %member_id, generation = a.generation, "member joined");
        Ok(a)
    }

    /// Heartbeat: keeps the member in the group and tells it its current assignment; a new
    /// generation means the assignment changed. `409 unknown_member` means: join again.
    pub async fn heartbeat(
        &self,
        topic: &str,
        group: &str,
        member: &str,
    ) -> BrokerResult<Assignment> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        let now = s.clock.now_ms();
        let parts = topic.partitions;
        update_group(s, &topic, &group, |g| {
            let _ = g.expire(now, parts);
            let _ = g.touch(member, now, true).map_err(group_err)?;
            Ok((assignment(g, member)?, true))
        })
        .await
    }

    /// Leave the group now (its partitions are reassigned at once). Idempotent.
    pub async fn leave_group(&self, topic: &str, group: &str, member: &str) -> BrokerResult<()> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        // A member id that could never have joined is a client error, not a no-op.
        let member = valid_name("member", member)?;
        let member = member.as_str();
        let now = s.clock.now_ms();
        let parts = topic.partitions;
        update_group(s, &topic, &group, |g| {
            let expired = g.expire(now, parts);
            let left = g.leave(member, parts);
            Ok(((), expired || left))
        })
        .await
    }

    /// Commit offsets (the next offset to read per partition). Fenced: only a member of the
    /// current generation may commit, and only for partitions it owns (409 otherwise).
    pub async fn commit(&self, topic: &str, group: &str, req: CommitRequest) -> BrokerResult<()> {
        let c = self.offset_commit(topic, group, req).await?;
        match self.index.commit_offsets(c).await {
            Ok(()) => Ok(()),
            Err(IndexError::Fenced(e)) => Err(group_err(e)),
            Err(e) => Err(BrokerError::index(&e)),
        }
    }

    /// A validated offset commit (partitions exist, offsets within the log), to apply
    /// now or with a transaction (RFC 0005).
    pub(crate) async fn offset_commit(
        &self,
        topic: &str,
        group: &str,
        req: CommitRequest,
    ) -> BrokerResult<OffsetCommit> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        if req.offsets.len() > topic.partitions as usize {
            return Err(BrokerError::invalid(
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
            .map_err(|e| BrokerError::index(&e))?;
        let mut offsets = Vec::with_capacity(req.offsets.len());
        for &(partition, offset) in &req.offsets {
            let end = ends
                .iter()
                .find(|e| e.partition == partition)
                .ok_or_else(|| {
                    BrokerError::invalid(
                        "invalid_partition",
                        format!("partition {partition} does not exist"),
                    )
                })?;
            if offset > end.end_offset {
                return Err(BrokerError::invalid(
                    "invalid_offset",
                    format!(
                        "offset {offset} is beyond the end of partition {partition} ({})",
                        end.end_offset
                    ),
                ));
            }
            offsets.push((partition, offset));
        }
        // Offsets as rows of their own, fenced in the index transaction by the group's
        // state (member, generation, ownership, after expiring members past their
        // session); the group's state blob is not rewritten.
        Ok(OffsetCommit {
            group: group_key(&topic, &group),
            member: req.member_id,
            generation: req.generation,
            offsets,
            now_ms: s.clock.now_ms(),
            partitions: topic.partitions,
        })
    }

    /// A group's committed offsets: the rows, over the offsets kept in the state blob by
    /// agents before offsets had rows of their own (`legacy`).
    async fn committed(
        &self,
        topic: &TopicMeta,
        group: &str,
        legacy: &BTreeMap<u32, u64>,
    ) -> BrokerResult<BTreeMap<u32, u64>> {
        let mut out = legacy.clone();
        out.extend(
            self.index
                .group_offsets(topic.id, group)
                .await
                .map_err(|e| BrokerError::index(&e))?,
        );
        Ok(out)
    }

    /// Fetch records from the member's assigned partitions, from the group's committed offsets
    /// (or from `cursor`, the previous fetch's positions, while the generation is unchanged).
    /// Counts as a heartbeat. With `auto_commit` members, the cursor's positions are committed.
    pub async fn group_fetch(
        &self,
        topic: &str,
        group: &str,
        member: &str,
        q: GroupFetchRequest,
    ) -> BrokerResult<GroupFetchResult> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        let member = member.to_string();
        let l = &s.config.limits;
        let max_records = fetch_records_limit(q.max_records, l.max_fetch_records)?;
        let max_bytes = fetch_bytes_limit(q.max_bytes, l.max_fetch_bytes);
        let cursor = q.cursor.as_deref().map(parse_cursor).transpose()?;
        // Validate the cursor before anything is stored (auto-commit writes its positions).
        // End offsets only grow, so a position valid now stays valid.
        if let Some((_, pos)) = &cursor {
            let offsets = s
                .index
                .partition_offsets(topic.id)
                .await
                .map_err(|e| BrokerError::index(&e))?;
            for (p, o) in pos {
                let end = offsets
                    .iter()
                    .find(|e| e.partition == *p)
                    .map(|e| e.end_offset);
                if end.is_none_or(|end| *o > end) {
                    return Err(BrokerError::invalid(
                        "invalid_cursor",
                        format!(
                            "cursor position {o} of partition {p} is beyond the log end ({end:?})"
                        ),
                    ));
                }
            }
        }
        let now = s.clock.now_ms();
        let parts = topic.partitions;
        // Heartbeat and the member's view in one state change; the cursor's positions to
        // auto-commit are committed as rows right after, fenced by this generation.
        let (generation, assigned, legacy, session, auto) = update_group(s, &topic, &group, |g| {
            let mut changed = g.expire(now, parts);
            changed |= g.touch(&member, now, false).map_err(group_err)?;
            let m = g
                .members
                .get(&member)
                .ok_or_else(|| group_err(GroupError::UnknownMember(member.clone())))?
                .clone();
            let mut auto = Vec::new();
            if let Some((cgen, pos)) = &cursor
                && m.auto_commit
                && *cgen == g.generation
            {
                auto.extend(
                    m.partitions
                        .iter()
                        .filter_map(|p| pos.get(p).map(|o| (*p, *o))),
                );
            }
            let legacy: BTreeMap<u32, u64> = m
                .partitions
                .iter()
                .filter_map(|p| g.offsets.get(p).map(|o| (*p, *o)))
                .collect();
            Ok((
                (
                    g.generation,
                    m.partitions,
                    legacy,
                    m.session_timeout_ms,
                    auto,
                ),
                changed,
            ))
        })
        .await?;
        if !auto.is_empty() {
            let c = OffsetCommit {
                group: group_key(&topic, &group),
                member: member.clone(),
                generation,
                offsets: auto,
                now_ms: s.clock.now_ms(),
                partitions: topic.partitions,
            };
            match s.index.commit_offsets(c).await.map_err(|e| match e {
                IndexError::Fenced(g) => group_err(g),
                other => BrokerError::index(&other),
            }) {
                Ok(()) => {}
                // The group moved on since the heartbeat: the cursor no longer applies.
                Err(e) if e.kind == ErrorKind::Conflict => {
                    tracing::debug!(code = e.code, "auto-commit fenced");
                }
                Err(e) => return Err(e),
            }
        }
        // Committed offsets are only the starting point of partitions the cursor does not
        // cover: a steady fetch loop with a current cursor reads no offset rows.
        let from_cursor = |p: &u32| {
            cursor
                .as_ref()
                .is_some_and(|(cgen, c)| *cgen == generation && c.contains_key(p))
        };
        let committed = if assigned.iter().all(from_cursor) {
            BTreeMap::new()
        } else {
            s.committed(&topic, &group, &legacy).await?
        };
        let wait_cap = l.max_wait_ms.min(session / 2);
        let wait = Duration::from_millis(q.wait_ms.unwrap_or(0).min(wait_cap));
        let deadline = tokio::time::Instant::now() + wait;
        let reset = q.reset;
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
                .map_err(|e| BrokerError::index(&e))?;
            // Members read committed data only (RFC 0005): up to each stable offset.
            let ends: BTreeMap<u32, (u64, u64)> = offsets
                .iter()
                .map(|o| (o.partition, (o.start_offset, o.stable_offset)))
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
                        let o = from_cursor.or_else(|| committed.get(p).copied()).unwrap_or(
                            match reset {
                                Reset::Earliest => start,
                                Reset::Latest => end,
                            },
                        );
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
                    let (start, _) = ends.get(&p).copied().unwrap_or((0, 0));
                    let from = pos.get(&p).copied().unwrap_or(0);
                    // Retention dropped records this member had not read: move on (counted).
                    if from < start {
                        s.metrics.retention_skipped.inc_by(start - from);
                    }
                    let from = from.max(start);
                    let end = ends.get(&p).map_or(0, |e| e.1);
                    let fetched = if from < end && left_records > 0 && left_bytes > 0 {
                        s.reader
                            .read(&topic, p, from, end, left_records, left_bytes)
                            .await?
                    } else {
                        Fetched::empty(from)
                    };
                    left_records -= fetched.count;
                    left_bytes =
                        left_bytes.saturating_sub(fetched.iter().map(|(_, v)| v.size()).sum());
                    let _ = pos.insert(p, fetched.next);
                    out.push(PartitionFetch {
                        partition: p,
                        next_offset: fetched.next,
                        records: fetched,
                        end_offset: end,
                    });
                }
                out.sort_by_key(|b| b.partition);
                return Ok(GroupFetchResult {
                    generation,
                    cursor: format_cursor(generation, pos),
                    assigned,
                    partitions: out,
                });
            }
            let recheck = tokio::time::Instant::now() + s.config.poll_interval;
            // A member with no partitions (more members than partitions) just waits out the
            // long-poll instead of spinning.
            let any_commit = async {
                if subs.is_empty() {
                    std::future::pending::<()>().await;
                } else {
                    let _ =
                        futures::future::select_all(subs.iter_mut().map(|r| Box::pin(r.changed())))
                            .await;
                }
            };
            tokio::select! {
                () = any_commit => {}
                () = tokio::time::sleep_until(recheck.min(deadline)) => {}
                _ = shutdown.wait_for(|v| *v) => { return Err(BrokerError::unavailable("shutting_down", "the agent is shutting down")); }
            }
        }
    }

    /// Describe a group: generation, members, committed offsets and lag per partition.
    pub async fn describe_group(&self, topic: &str, group: &str) -> BrokerResult<GroupDescription> {
        let s = self;
        let (topic, group) = s.topic_and_group(topic, group).await?;
        let mut g: GroupState = crate::state::load(&s.index, &group_key(&topic, &group))
            .await?
            .ok_or_else(|| {
                BrokerError::new(
                    ErrorKind::NotFound,
                    "group_not_found",
                    format!("topic {:?} has no consumer group {group:?}", topic.name),
                )
            })?;
        let _ = g.expire(s.clock.now_ms(), topic.partitions);
        let offsets = s
            .index
            .partition_offsets(topic.id)
            .await
            .map_err(|e| BrokerError::index(&e))?;
        let committed = s.committed(&topic, &group, &g.offsets).await?;
        Ok(describe(&topic, &group, &g, &committed, &offsets))
    }

    /// The consumer groups of a topic.
    pub async fn list_groups(&self, topic: &str) -> BrokerResult<Vec<String>> {
        let topic = self.existing_topic(topic).await?;
        let states = self
            .index
            .list_states(StateKind::Group, Some(topic.id))
            .await
            .map_err(|e| BrokerError::index(&e))?;
        Ok(states.into_iter().map(|(k, _)| k.group).collect())
    }
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
