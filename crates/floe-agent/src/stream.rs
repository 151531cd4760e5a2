//! Server-Sent Events: a push-style tail of one partition over the pull path. Each event's
//! id is the record's offset, so a client that reconnects with `Last-Event-ID` resumes
//! right after the last record it saw: no gap, no duplicate.
//!
//! Back-pressure: the stream reads the next batch only when the previous one has been
//! written to the socket, so an agent holds at most one batch per slow client.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use floe_core::api::ErrorBody;
use floe_index::TopicMeta;
use futures::Stream;
use serde::Deserialize;

use crate::Shared;
use crate::error::ApiError;
use crate::http::{existing_topic, partition_of, path_err};

/// Records read per batch (one batch is the most a slow client makes the agent hold).
const BATCH_RECORDS: usize = 500;
const BATCH_BYTES: usize = 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    offset: Option<u64>,
    encoding: Option<floe_core::api::Encoding>,
}

struct Tail {
    s: Shared,
    topic: Arc<TopicMeta>,
    partition: u32,
    offset: u64,
    encoding: floe_core::api::Encoding,
    pending: VecDeque<Event>,
    done: bool,
}

impl Tail {
    /// The next event: a buffered one, else read (waiting for commits) until there is one.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            if let Err(e) = self.fill().await {
                self.done = true;
                let body = serde_json::json!({"error": {"code": e.code, "message": e.message}});
                return Some(Event::default().event("error").data(body.to_string()));
            }
        }
    }

    async fn fill(&mut self) -> Result<(), ApiError> {
        let s = &self.s;
        let mut commits = s.notifier.subscribe(self.topic.id, self.partition);
        let end = s
            .index
            .end_offset(self.topic.id, self.partition)
            .await
            .map_err(|e| ApiError::index(&e))?
            .ok_or_else(|| ApiError::topic_not_found(&self.topic.name))?;
        if self.offset < end {
            let f = s
                .reader
                .read(
                    &self.topic,
                    self.partition,
                    self.offset,
                    BATCH_RECORDS,
                    BATCH_BYTES,
                )
                .await?;
            for (offset, v) in f.iter() {
                let data = crate::fetch::record_json(offset, &v, self.encoding).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encode_failed",
                        e.to_string(),
                    )
                })?;
                self.pending.push_back(
                    Event::default()
                        .id(offset.to_string())
                        .event("record")
                        .data(data),
                );
            }
            self.offset = f.next;
            return Ok(());
        }
        let mut shutdown = s.shutdown.clone();
        tokio::select! {
            _ = commits.changed() => {}
            () = tokio::time::sleep(s.config.poll_interval) => {}
            _ = shutdown.wait_for(|v| *v) => { self.done = true; }
        }
        Ok(())
    }
}

/// Tail a partition as Server-Sent Events (`event: record`, `id: <offset>`, `data:` the
/// record as JSON). Starts at `offset` (default: the end of the log), or right after the
/// `Last-Event-ID` header's offset when reconnecting. Runs until the client disconnects.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/stream",
    params(("topic" = String, Path), ("partition" = u32, Path),
        ("offset" = Option<u64>, Query, description = "First offset to send (default: the log end)"),
        ("encoding" = Option<floe_core::api::Encoding>, Query, description = "auto (default) or base64, as for fetch"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this offset (wins over `offset`)")),
    responses(
        (status = 200, description = "text/event-stream of `record` events", content_type = "text/event-stream"),
        (status = 400, description = "invalid_partition, invalid_parameter, invalid_last_event_id", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 416, description = "offset_out_of_range", body = ErrorBody)))]
pub async fn stream(
    State(s): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Path((raw, part)) = p.map_err(path_err)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let topic = existing_topic(&s, &raw).await?;
    let partition = partition_of(&topic, &part)?;
    let resume = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .and_then(|o| o.checked_add(1))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be the offset of a record (a non-negative integer)",
                    )
                })?,
        ),
        None => None,
    };
    let end = s
        .index
        .end_offset(topic.id, partition)
        .await
        .map_err(|e| ApiError::index(&e))?
        .ok_or_else(|| ApiError::topic_not_found(&topic.name))?;
    let offset = resume.or(q.offset).unwrap_or(end);
    if offset > end {
        return Err(ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "offset_out_of_range",
            format!(
                "offset {offset} is beyond the end of partition {partition} (end_offset {end})"
            ),
        ));
    }
    let tail = Tail {
        s,
        topic,
        partition,
        offset,
        encoding: q.encoding.unwrap_or_default(),
        pending: VecDeque::new(),
        done: false,
    };
    let events = futures::stream::unfold(tail, |mut t| async move {
        let e = t.next().await?;
        Some((Ok::<_, Infallible>(e), t))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
