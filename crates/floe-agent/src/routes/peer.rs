//! The peer endpoint (RFC 0006): other agents read the segments this agent wrote from its
//! object cache instead of the bucket.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use floe_api::ErrorBody;
use floe_broker::Broker;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::extract::query_err;

/// Longest segment key accepted (`segments/<uuid>-<agent id>.parquet`).
pub(crate) const MAX_SEGMENT_KEY_LEN: usize = 256;

/// Exactly the documented pattern: `segments/` + a UUID in its 8-4-4-4-12 hex layout +
/// `-<agent id>.parquet`, at most [`MAX_SEGMENT_KEY_LEN`] bytes.
fn is_segment_key(key: &str) -> bool {
    let uuid_ok = |u: &str| {
        u.len() == 36
            && u.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => matches!(c, '0'..='9' | 'a'..='f'),
            })
    };
    key.len() <= MAX_SEGMENT_KEY_LEN
        && key
            .strip_prefix("segments/")
            .and_then(|n| n.get(..36))
            .is_some_and(uuid_ok)
        && floe_broker::produce::segment_writer(key).is_some()
}

#[derive(Debug, Deserialize)]
pub(crate) struct SegmentQuery {
    key: String,
}

/// A segment this agent wrote, from its object cache (never from the bucket): other
/// agents ask here before reading the bucket (RFC 0006). 404 `not_cached` when the cache
/// no longer holds it.
#[utoipa::path(get, path = "/v1/peer/segments",
    params(("key" = String, Query, description = "Segment object key, `segments/<uuidv7>-<agent id>.parquet`")),
    responses(
        (status = 200, description = "The segment object's bytes", content_type = "application/octet-stream"),
        (status = 400, description = "invalid_parameter (not a segment key)", body = ErrorBody),
        (status = 404, description = "not_cached", body = ErrorBody)))]
pub(crate) async fn segment(
    State(b): State<Broker>,
    q: Result<Query<SegmentQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(query_err)?;
    if !is_segment_key(&q.key) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!(
                "key must be a segment key (segments/<uuidv7>-<agent id>.parquet, at most {MAX_SEGMENT_KEY_LEN} bytes)"
            ),
        ));
    }
    match b.serve_peer_segment(&q.key).await {
        Some(bytes) => {
            Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
        }
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_cached",
            "this agent's cache does not hold that segment; read it from the bucket",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_segment_keys_are_served() {
        let k = floe_broker::produce::segment_key(1_795_000_000_123, "a-1");
        assert!(is_segment_key(&k), "{k}");
        for bad in [
            "segments/x.parquet",
            "topics/t/partition=0/date=2026-11-28/1-2-x.parquet",
            &k.replace("segments/", "other/"),
            &k.replace(".parquet", ""),
            &k.replacen('-', "x", 1),
            &k.to_uppercase(),
            &k.replace(".parquet", &format!("{}.parquet", "a".repeat(300))),
        ] {
            assert!(!is_segment_key(bad), "{bad}");
        }
    }
}
