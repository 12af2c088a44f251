//! Health endpoints: `GET /healthz` (the process is alive) and `GET /readyz` (the event log can
//! take notifications, as the gateway's one readiness check last saw it: a probe costs the log
//! nothing).

use axum::{Json, Router, extract::State, http::StatusCode, routing::get};
use serde_json::{Value, json};

use super::AppState;
use crate::log::ReadyState;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    match state.readiness().current() {
        ReadyState::Ready => (StatusCode::OK, Json(json!({ "status": "ready" }))),
        ReadyState::NotReady(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "detail": &*reason })),
        ),
    }
}
