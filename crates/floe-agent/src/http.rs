//! The HTTP front end's router: routes, fallbacks, body limit, request spans.

use axum::Router;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use floe_broker::Broker;
use tracing::Instrument;

use crate::error::ApiError;
use crate::routes::{groups, ops, peer, queues, records, stream, topics, txns};

pub fn router(broker: Broker) -> Router {
    let limit = broker.config.limits.max_body_bytes;
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(crate::openapi::openapi_json))
        .route(
            "/v1/topics",
            get(topics::list_topics).post(topics::create_topic),
        )
        .route(
            "/v1/topics/{topic}",
            get(topics::describe_topic).delete(topics::delete_topic),
        )
        .route("/v1/topics/{topic}/records", post(records::produce))
        .route("/v1/topics/{topic}/files", get(topics::topic_files))
        .route(floe_broker::peers::PEER_SEGMENT_PATH, get(peer::segment))
        .route("/v1/producers", post(records::init_producer))
        .route(
            "/v1/producers/{producer_id}/transactions",
            post(txns::begin),
        )
        .route(
            "/v1/producers/{producer_id}/transactions/{epoch}/commit",
            post(txns::commit),
        )
        .route(
            "/v1/producers/{producer_id}/transactions/{epoch}/abort",
            post(txns::abort),
        )
        .route("/v1/transactions", get(txns::list))
        .route("/v1/topics/{topic}/half-messages", post(txns::prepare_half))
        .route("/v1/half-messages/{handle}/commit", post(txns::commit_half))
        .route(
            "/v1/half-messages/{handle}/rollback",
            post(txns::rollback_half),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/records",
            get(records::fetch),
        )
        .route(
            "/v1/topics/{topic}/partitions/{partition}/stream",
            get(stream::stream),
        )
        .route("/v1/topics/{topic}/groups", get(groups::list_groups))
        .route(
            "/v1/topics/{topic}/groups/{group}",
            get(groups::describe_group),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members",
            post(groups::join_group),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}",
            delete(groups::leave_group),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/heartbeat",
            post(groups::heartbeat),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/members/{member}/records",
            get(groups::group_fetch),
        )
        .route(
            "/v1/topics/{topic}/groups/{group}/commit",
            post(groups::commit),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}",
            get(queues::describe_queue),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/receive",
            post(queues::receive),
        )
        .route("/v1/topics/{topic}/queues/{group}/ack", post(queues::ack))
        .route(
            "/v1/topics/{topic}/queues/{group}/release",
            post(queues::release),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/reject",
            post(queues::reject),
        )
        .route(
            "/v1/topics/{topic}/queues/{group}/extend",
            post(queues::extend),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(trace_request))
        .with_state(broker)
}

async fn trace_request(req: Request, next: axum::middleware::Next) -> Response {
    let span = tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), status = tracing::field::Empty);
    let resp = next.run(req).instrument(span.clone()).await;
    let _ = span.record("status", resp.status().as_u16());
    resp
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "route_not_found",
        "no such endpoint; see /openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this endpoint; see /openapi.json",
    )
}
