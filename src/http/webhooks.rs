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
use tracing::{Instrument, field::Empty};

use super::{ApiError, AppState};
use crate::{
    auth::{Authenticated, ClientId},
    error::{ErrorKind, ServiceError, error_chain},
    incode::{Endpoint, KindName, Notification},
    log::AppendOutcome,
    metrics::WebhookOutcome,
    telemetry,
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
            state
                .metrics()
                .webhook("invalid", WebhookOutcome::Rejected("invalid_kind"));
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
    let span = tracing::info_span!(
        "ingest",
        otel.name = "ingest webhook",
        incode.notification.kind = Empty,
        incode_gateway.event.id = Empty,
    );
    let endpoint_kind = endpoint.kind();
    let result = async {
        require_json(headers)?;
        let body = body.map_err(body_error)?;
        let notification = {
            let _decode =
                tracing::info_span!("decode", otel.name = "decode notification").entered();
            Notification::decode(&endpoint, &body)
                .map_err(|error| ApiError::from_service_error(&error, error.code()))?
        };
        store(state, authenticated, notification, &body).await
    }
    .instrument(span.clone())
    .await;
    if let Err(error) = &result {
        let outcome = if error.status() == StatusCode::SERVICE_UNAVAILABLE {
            WebhookOutcome::Unavailable
        } else {
            WebhookOutcome::Rejected(error.code())
        };
        state.metrics().webhook(endpoint_kind, outcome);
    }
    result
}

/// Appends a decoded notification; runs inside the ingest span, whose trace context the event
/// carries to subscribers.
async fn store(
    state: &AppState,
    authenticated: &Authenticated,
    notification: Notification,
    body: &[u8],
) -> Answer {
    let kind = notification.kind().to_owned();
    let ingest = tracing::Span::current();
    let new_event = notification
        .into_new_event(body, telemetry::inject_span(&ingest))
        .map_err(|error| ApiError::from_service_error(&error, error.code()))?;
    ingest.record("incode.notification.kind", kind.as_str());
    ingest.record("incode_gateway.event.id", new_event.event.id.as_str());
    let event_type = new_event.event.r#type().as_str_name();

    let append_span = tracing::info_span!(
        "append",
        otel.name = "event_log append",
        otel.status_code = Empty,
        incode_gateway.event.type = event_type,
        incode_gateway.event.sequence = Empty,
        incode_gateway.event.duplicate = Empty,
    );
    let started = std::time::Instant::now();
    let outcome = state
        .log()
        .append(new_event)
        .instrument(append_span.clone())
        .await;
    match outcome {
        Ok(outcome) => {
            let duplicate = matches!(outcome, AppendOutcome::Duplicate(_));
            // OpenTelemetry integers are signed; tracing records unsigned ones as text.
            append_span.record(
                "incode_gateway.event.sequence",
                i64::try_from(outcome.sequence()).unwrap_or(i64::MAX),
            );
            append_span.record("incode_gateway.event.duplicate", duplicate);
            state.metrics().appended(started.elapsed(), !duplicate);
            if duplicate {
                state.metrics().webhook(&kind, WebhookOutcome::Duplicate);
                // Per-notification lines are debug: at volume, metrics and traces tell the story.
                tracing::debug!(
                    sequence = outcome.sequence(),
                    "repeated notification acknowledged, not stored again"
                );
            } else {
                state.metrics().webhook(&kind, WebhookOutcome::Accepted);
                tracing::debug!(
                    sequence = outcome.sequence(),
                    client = authenticated.client().map(ClientId::as_str),
                    "notification stored"
                );
            }
            Ok(Json(Ack { success: true }))
        }
        Err(error) => {
            append_span.record("otel.status_code", "ERROR");
            tracing::error!(error = %error_chain(&error), "notification not stored");
            Err(ApiError::server_error(ErrorKind::Unavailable))
        }
    }
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
