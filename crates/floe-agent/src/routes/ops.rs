//! Health, readiness, metrics and the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use floe_api::ErrorBody;
use floe_broker::Broker;

use crate::error::ApiResult;

/// Liveness: 200 while the process runs.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "The process is running")))]
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: 200 only when the bucket and the index answer. Answers within the agent's
/// `ready_timeout` in every state: both are probed at once, each bounded by it.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "Bucket and index reachable"),
    (status = 503, description = "store_unavailable, index_unavailable or not_ready (both); the message names each failing dependency", body = ErrorBody)))]
pub(crate) async fn readyz(State(b): State<Broker>) -> ApiResult<Json<serde_json::Value>> {
    b.ready().await?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub(crate) async fn metrics(State(b): State<Broker>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        b.metrics_text().await,
    )
        .into_response()
}
