//! Incode's webhook endpoints.
//!
//! A notification is answered `200 {"success":true}` only after the event log has stored it (or
//! recognised it as a repeat of a stored one); any failure to store it is a `503`, so that Incode
//! retries instead of forgetting it. Every handler takes [`Authenticated`] first, so a call that
//! fails the webhook guard is refused before its body is read, and nothing is stored without it.

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        Path, State,
        rejection::{BytesRejection, FailedToBufferBody, PathRejection},
    },
    http::{HeaderMap, StatusCode, header},
    routing::post,
};
use serde::Serialize;

use super::{ApiError, AppState};
use crate::{
    auth::{Authenticated, ClientId},
    error::{ErrorCode, error_chain},
    incode::{Endpoint, KindName, Notification},
    log::{AppendOutcome, DedupKey, NewEvent},
    proto::v1,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks/incode", post(detect))
        .route(
            "/webhooks/incode/onboarding-status",
            post(onboarding_status),
        )
        .route(
            "/webhooks/incode/watchlist-updated",
            post(watchlist_updated),
        )
        .route("/webhooks/incode/{kind}", post(other_kind))
}

/// The answer Incode counts as delivered.
#[derive(Serialize)]
struct Ack {
    success: bool,
}

type Answer = Result<Json<Ack>, ApiError>;

async fn detect(
    authenticated: Authenticated,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    ingest(&state, &authenticated, Endpoint::Detect, &headers, body).await
}

async fn onboarding_status(
    authenticated: Authenticated,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    ingest(
        &state,
        &authenticated,
        Endpoint::OnboardingStatus,
        &headers,
        body,
    )
    .await
}

async fn watchlist_updated(
    authenticated: Authenticated,
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    ingest(
        &state,
        &authenticated,
        Endpoint::WatchlistUpdated,
        &headers,
        body,
    )
    .await
}

async fn other_kind(
    authenticated: Authenticated,
    State(state): State<AppState>,
    kind: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let kind = kind
        .ok()
        .and_then(|Path(kind)| KindName::parse(&kind).ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_kind",
                "the notification kind in the URL must be 1 to 64 ASCII letters, digits, '-', '_' or '.'",
            )
        })?;
    ingest(
        &state,
        &authenticated,
        Endpoint::Other(kind),
        &headers,
        body,
    )
    .await
}

async fn ingest(
    state: &AppState,
    authenticated: &Authenticated,
    endpoint: Endpoint,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    require_json(headers)?;
    let body = body.map_err(body_error)?;
    let notification = Notification::decode(&endpoint, &body)
        .map_err(|error| ApiError::from_service_error(&error, error.code()))?;

    let dedup_key = DedupKey::for_notification(notification.kind(), &body);
    let event = v1::Event {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: notification.event_type().into(),
        payload: Some(notification.into()),
        ..v1::Event::default()
    };
    let id = event.id.clone();
    let client = authenticated.client().map(ClientId::as_str);
    match state.log().append(NewEvent { dedup_key, event }).await {
        Ok(AppendOutcome::Appended(sequence)) => {
            tracing::info!(sequence, event.id = %id, client, "notification stored");
        }
        Ok(AppendOutcome::Duplicate(sequence)) => {
            tracing::info!(
                sequence,
                "repeated notification acknowledged, not stored again"
            );
        }
        Err(error) => {
            tracing::error!(error = %error_chain(&error), "notification not stored");
            return Err(ApiError::server_error(ErrorCode::Unavailable));
        }
    }
    Ok(Json(Ack { success: true }))
}

/// Accepts `application/json` and `application/<anything>+json`, with any parameters.
fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .is_some_and(|essence| {
            essence == "application/json"
                || (essence.starts_with("application/") && essence.ends_with("+json"))
        });
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ))
    }
}

fn body_error(rejection: BytesRejection) -> ApiError {
    match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than the gateway accepts",
            )
        }
        other => ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("the body could not be read: {other}"),
        ),
    }
}
