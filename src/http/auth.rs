//! The webhook guard as axum sees it: [`Authenticated`] is an extractor, so a webhook handler
//! that takes it (and only such a handler can store a notification) never runs for a call that
//! fails the check. Refusals follow RFC 6750 §3.

use std::{
    borrow::Cow,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use axum::{
    extract::{ConnectInfo, FromRequestParts},
    http::{HeaderValue, header, request::Parts},
    response::{IntoResponse, Response},
};

use super::{
    AppState, ClientAddress, error::json_answer, rejections::Rejection, serve::ConnectionHandle,
};
use crate::{
    auth::{Authenticated, WebhookAuthError},
    error::{ErrorKind, ServiceError},
};

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Refused> {
        let _span = tracing::info_span!(
            "verify credentials",
            otel.name = "webhook verify credentials"
        )
        .entered();
        match state.auth().check_webhook(&parts.headers) {
            Ok(authenticated) => {
                if let Some(connection) = parts.extensions.get::<ConnectionHandle>() {
                    connection.mark_authenticated();
                }
                Ok(authenticated)
            }
            Err(error) => {
                // Unauthenticated callers choose the URL, so it is not a label: one series only.
                state
                    .metrics()
                    .webhook("any", crate::metrics::WebhookOutcome::Unauthorized);
                Err(Refused(error))
            }
        }
    }
}

/// The realm of the `WWW-Authenticate` challenges.
const REALM: &str = "incode-gateway";

/// What a refused caller is told about an invalid token: nothing that helps forge a better one.
const INVALID_TOKEN: &str = "the access token is not valid";
/// What a caller without the shared webhook header is told: not which header is expected.
const INVALID_HEADER: &str = "the request lacks a valid webhook credential";

/// A webhook call that failed the guard.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Refused(WebhookAuthError);

impl ServiceError for Refused {
    fn kind(&self) -> ErrorKind {
        match &self.0 {
            WebhookAuthError::MissingToken | WebhookAuthError::InvalidToken(_) => {
                ErrorKind::Unauthenticated
            }
            WebhookAuthError::AmbiguousAuthorization => ErrorKind::BadRequest,
            // The caller is known (or no token is needed) but lacks the shared header.
            WebhookAuthError::HeaderMismatch { .. } => ErrorKind::PermissionDenied,
        }
    }

    fn code(&self) -> &'static str {
        match &self.0 {
            WebhookAuthError::MissingToken => "missing_token",
            WebhookAuthError::AmbiguousAuthorization => "invalid_request",
            WebhookAuthError::InvalidToken(_) => "invalid_token",
            WebhookAuthError::HeaderMismatch { .. } => "invalid_webhook_header",
        }
    }

    fn public_message(&self) -> Cow<'_, str> {
        match &self.0 {
            WebhookAuthError::InvalidToken(_) => INVALID_TOKEN.into(),
            WebhookAuthError::HeaderMismatch { .. } => INVALID_HEADER.into(),
            other => other.to_string().into(),
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let challenge = match &self.0 {
            // No credentials at all: a challenge without an error code (§3.1).
            WebhookAuthError::MissingToken => Some(format!(r#"Bearer realm="{REALM}""#)),
            WebhookAuthError::AmbiguousAuthorization | WebhookAuthError::InvalidToken(_) => {
                Some(format!(
                    r#"Bearer realm="{REALM}", error="{}", error_description="{}""#,
                    self.code(),
                    quotable(&self.public_message())
                ))
            }
            WebhookAuthError::HeaderMismatch { .. } => None,
        };
        let mut response = json_answer(&self);
        // The precise reason is for the operator; the caller gets a generic answer.
        Rejection::add_reason(&mut response, self.0.to_string());
        if let Some(challenge) = challenge.and_then(|c| HeaderValue::try_from(c).ok()) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// `error_description` allows printable ASCII except `"` and `\` (RFC 6750 §3).
fn quotable(text: &str) -> String {
    text.chars()
        .filter(|c| matches!(c, ' '..='~') && *c != '"' && *c != '\\')
        .collect()
}

/// The client's address, for per-client throttling: the one [`super::serve`] resolved (through
/// trusted proxies), else the TCP peer. Served without either (as in handler tests), every
/// request shares the unspecified address.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        let client = parts
            .extensions
            .get::<ClientAddress>()
            .map(|client| client.0)
            .or_else(|| {
                parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|info| info.0.ip())
            });
        Ok(Self(client.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

/// The connection a request came in on, when served by [`super::serve`]; marks it
/// authenticated once a request on it is.
#[derive(Clone)]
pub(super) struct Connection(pub Option<ConnectionHandle>);

impl<S: Send + Sync> FromRequestParts<S> for Connection {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Self(parts.extensions.get::<ConnectionHandle>().cloned()))
    }
}
