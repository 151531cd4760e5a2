//! The JSON error contract: every non-2xx answer is
//! `{"error": {"code": "<snake_case>", "message": "<text>"}}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use floe_core::api::{ErrorBody, ErrorDetail};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Seconds, sent as `Retry-After` (503s).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }
    pub fn topic_not_found(topic: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "topic_not_found",
            format!("topic {topic:?} does not exist"),
        )
    }
    pub fn index(e: &floe_index::IndexError) -> Self {
        tracing::warn!(error = %e, "index error");
        match e {
            floe_index::IndexError::DeadlineExceeded { .. } => Self::unavailable(
                "deadline_exceeded",
                format!(
                    "the request's deadline passed before the index commit; nothing was committed ({e})"
                ),
            ),
            floe_index::IndexError::StateConflict(_) => {
                Self::new(StatusCode::CONFLICT, "state_conflict", e.to_string())
            }
            _ => Self::unavailable("index_unavailable", format!("metadata index error: {e}")),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp
    }
}
