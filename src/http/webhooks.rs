//! Incode's webhook endpoints.
//!
//! A notification is answered `200 {"success":true}` only after the event log has stored it (or
//! recognised it as a repeat of a stored one); any failure to store it is a `503`, so that Incode
//! retries instead of forgetting it. One handler serves every endpoint; it takes
//! [`Authenticated`] first, so a call that fails the webhook guard is refused before its body is
//! read, and nothing is stored without it. Decoding the body and making the event of it are
//! [`crate::incode`]'s.

use std::borrow::Cow;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{
        MatchedPath, Path, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
    routing::post,
};
use serde::Serialize;
use tracing::{Instrument, field::Empty};

use super::{
    AppState,
    error::{is_too_large, json_answer},
};
use crate::{
    auth::{Authenticated, ClientId},
    error::{ErrorKind, ServiceError},
    incode::{DecodeError, Endpoint, Notification},
    log::{AppendOutcome, LogError},
    metrics::WebhookOutcome,
    telemetry,
};

/// The endpoints of fixed kind. Each has a route of its own, and so its own span name and
/// `http.route`; any other kind is posted to [`ANY_KIND`].
const FIXED: [(&str, Endpoint); 3] = [
    ("/webhooks/incode", Endpoint::Detect),
    (
        "/webhooks/incode/onboarding-status",
        Endpoint::OnboardingStatus,
    ),
    (
        "/webhooks/incode/watchlist-updated",
        Endpoint::WatchlistUpdated,
    ),
];
/// The endpoint of a kind this version does not model.
const ANY_KIND: &str = "/webhooks/incode/{kind}";

pub(super) fn router() -> Router<AppState> {
    FIXED.iter().fold(
        Router::new().route(ANY_KIND, post(receive)),
        |router, (path, _)| router.route(path, post(receive)),
    )
}

/// The answer Incode counts as delivered.
#[derive(Serialize)]
struct Ack {
    success: bool,
}

/// Why a notification was not stored.
#[derive(Debug, thiserror::Error)]
enum WebhookError {
    /// The body is not declared as JSON.
    #[error("Content-Type must be application/json")]
    NotJson,
    /// The body is larger than the listener reads.
    #[error("the body is larger than the gateway accepts")]
    TooLarge,
    /// The body broke off or could not be read.
    #[error("the body could not be read: {0}")]
    UnreadableBody(BytesRejection),
    /// The URL or the body is not a notification the gateway can store.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The log could not store it; Incode's retry may succeed.
    #[error("the notification was not stored")]
    NotStored(#[source] LogError),
}

impl ServiceError for WebhookError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotJson => ErrorKind::UnsupportedMediaType,
            Self::TooLarge => ErrorKind::PayloadTooLarge,
            Self::UnreadableBody(_) => ErrorKind::BadRequest,
            Self::Decode(error) => error.kind(),
            Self::NotStored(_) => ErrorKind::Unavailable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotJson => "unsupported_media_type",
            Self::TooLarge => "payload_too_large",
            Self::UnreadableBody(_) => "invalid_body",
            Self::Decode(error) => error.code(),
            Self::NotStored(_) => "unavailable",
        }
    }

    fn public_message(&self) -> Cow<'_, str> {
        match self {
            Self::NotStored(_) => {
                "the event log cannot take the notification now; retry later".into()
            }
            other => other.to_string().into(),
        }
    }
}

impl From<BytesRejection> for WebhookError {
    fn from(rejection: BytesRejection) -> Self {
        if is_too_large(&rejection) {
            Self::TooLarge
        } else {
            Self::UnreadableBody(rejection)
        }
    }
}

impl IntoResponse for WebhookError {
    fn into_response(self) -> Response {
        json_answer(&self)
    }
}

/// Every webhook endpoint: [`Authenticated`] comes first, so a call that fails the guard is
/// refused before its URL or body is looked at.
async fn receive(
    authenticated: Authenticated,
    State(state): State<AppState>,
    route: MatchedPath,
    kind: Result<Option<Path<String>>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Ack>, WebhookError> {
    let endpoint = endpoint(&route, kind).inspect_err(|error| {
        // Not a kind name, so not a label either: one series for them all.
        state
            .metrics()
            .webhook("invalid", WebhookOutcome::Rejected(error.code()));
    })?;
    let span = tracing::info_span!(
        "ingest",
        otel.name = "ingest webhook",
        incode.notification.kind = Empty,
        incode_gateway.event.id = Empty,
    );
    let result = async {
        require_json(&headers)?;
        let body = body?;
        let notification = {
            let _decode =
                tracing::info_span!("decode", otel.name = "decode notification").entered();
            Notification::decode(&endpoint, &body)?
        };
        store(&state, &authenticated, notification, &body).await
    }
    .instrument(span)
    .await;
    if let Err(error) = &result {
        let outcome = if error.kind() == ErrorKind::Unavailable {
            WebhookOutcome::Unavailable
        } else {
            WebhookOutcome::Rejected(error.code())
        };
        state.metrics().webhook(endpoint.kind(), outcome);
    }
    result.map(|()| Json(Ack { success: true }))
}

/// The endpoint of the route a call matched.
fn endpoint(
    route: &MatchedPath,
    kind: Result<Option<Path<String>>, PathRejection>,
) -> Result<Endpoint, DecodeError> {
    if let Some((_, endpoint)) = FIXED.iter().find(|(path, _)| *path == route.as_str()) {
        return Ok(endpoint.clone());
    }
    match kind {
        // Percent-decoded by `Path`: a modelled kind in any spelling is that kind's endpoint.
        Ok(Some(Path(kind))) => Endpoint::for_kind(&kind),
        Ok(None) | Err(_) => Err(DecodeError::InvalidKind),
    }
}

/// Appends a decoded notification; runs inside the ingest span, whose trace context the event
/// carries to subscribers.
async fn store(
    state: &AppState,
    authenticated: &Authenticated,
    notification: Notification,
    body: &[u8],
) -> Result<(), WebhookError> {
    let kind = notification.kind().to_owned();
    let ingest = tracing::Span::current();
    let new_event = notification.into_new_event(body, telemetry::inject_span(&ingest))?;
    ingest.record("incode.notification.kind", kind.as_str());
    ingest.record("incode_gateway.event.id", new_event.event.id.as_str());

    let append_span = tracing::info_span!(
        "append",
        otel.name = "event_log append",
        otel.status_code = Empty,
        incode_gateway.event.type = new_event.event.r#type().as_str_name(),
        incode_gateway.event.sequence = Empty,
        incode_gateway.event.duplicate = Empty,
    );
    let started = std::time::Instant::now();
    let outcome = state
        .log()
        .append(new_event)
        .instrument(append_span.clone())
        .await
        .map_err(|error| {
            append_span.record("otel.status_code", "ERROR");
            WebhookError::NotStored(error)
        })?;
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
    Ok(())
}

/// Accepts `application/json` and `application/<anything>+json`, with any parameters.
fn require_json(headers: &HeaderMap) -> Result<(), WebhookError> {
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
        Err(WebhookError::NotJson)
    }
}
