//! Server-Sent Events: a push-style tail of one partition over the pull path. Each event's
//! id is the record's offset, so a client that reconnects with `Last-Event-ID` resumes
//! right after the last record it saw: no gap, no duplicate.
//!
//! Back-pressure: the stream reads the next batch only when the previous one has been
//! written to the socket, so an agent holds at most one batch per slow client.

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use floe_api::{Encoding, ErrorBody};
use floe_broker::Broker;
use floe_broker::records::Tail;
use futures::Stream;
use serde::Deserialize;

use crate::error::ApiError;
use crate::extract::{path_err, query_err};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamQuery {
    offset: Option<u64>,
    encoding: Option<Encoding>,
}

struct Events {
    tail: Tail,
    encoding: Encoding,
    pending: VecDeque<Event>,
    done: bool,
}

fn error_event(code: &str, message: &str) -> Event {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    Event::default().event("error").data(body.to_string())
}

impl Events {
    /// The next event: a buffered one, else read (waiting for commits) until there is one.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            if self.done {
                return None;
            }
            match self.tail.next_batch().await {
                Ok(Some(batch)) => {
                    for (offset, v) in batch.iter() {
                        match crate::render::record_json(offset, &v, self.encoding) {
                            Ok(data) => self.pending.push_back(
                                Event::default()
                                    .id(offset.to_string())
                                    .event("record")
                                    .data(data),
                            ),
                            Err(e) => {
                                self.done = true;
                                self.pending
                                    .push_back(error_event("encode_failed", &e.to_string()));
                                break;
                            }
                        }
                    }
                }
                Ok(None) => self.done = true,
                Err(e) => {
                    self.done = true;
                    return Some(error_event(e.code, &e.message));
                }
            }
        }
    }
}

/// Tail a partition as Server-Sent Events (`event: record`, `id: <offset>`, `data:` the
/// record as JSON). Starts at `offset` (default: the end of the log), or right after the
/// `Last-Event-ID` header's offset when reconnecting. Runs until the client disconnects.
#[utoipa::path(get, path = "/v1/topics/{topic}/partitions/{partition}/stream",
    params(("topic" = String, Path), ("partition" = u32, Path),
        ("offset" = Option<u64>, Query, description = "First offset to send (default: the log end)"),
        ("encoding" = Option<floe_api::Encoding>, Query, description = "auto (default) or base64, as for fetch"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this offset (wins over `offset`)")),
    responses(
        (status = 200, description = "text/event-stream of `record` events", content_type = "text/event-stream"),
        (status = 400, description = "invalid_partition, invalid_parameter, invalid_last_event_id", body = ErrorBody),
        (status = 404, description = "topic_not_found", body = ErrorBody),
        (status = 416, description = "offset_out_of_range", body = ErrorBody)))]
pub(crate) async fn stream(
    State(b): State<Broker>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<StreamQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Path((raw, part)) = p.map_err(path_err)?;
    let Query(q) = q.map_err(query_err)?;
    // `Last-Event-ID` is the offset of the last record the client saw: resume after it.
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
    let tail = b.tail(&raw, &part, resume.or(q.offset)).await?;
    let events = Events {
        tail,
        encoding: q.encoding.unwrap_or_default(),
        pending: VecDeque::new(),
        done: false,
    };
    let events = futures::stream::unfold(events, |mut t| async move {
        let e = t.next().await?;
        Some((Ok::<_, Infallible>(e), t))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
