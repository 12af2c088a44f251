//! Error answers of the public listener: a status and a JSON body naming the problem,
//! `{"success":false,"error":"<code>","detail":"<message>"}`, for every [`ServiceError`] of the
//! webhooks and of the listener itself ([`ListenerError`]). The token endpoint renders the same
//! vocabulary in RFC 6749's shape instead (see `oauth`).
//!
//! Client errors say what was wrong; server errors say only that the request failed (the cause
//! is logged), so no internal detail reaches the internet.

use std::{any::Any, borrow::Cow};

use axum::{
    Json,
    extract::rejection::{BytesRejection, FailedToBufferBody},
    http::Response,
    response::{IntoResponse, Response as AxumResponse},
};
use serde::Serialize;

use super::rejections::Rejection;
use crate::error::{ErrorKind, ServiceError, log_failure};

/// What an HTTP caller is told of a failure of the gateway: the cause is in its logs.
pub(super) const SEE_THE_LOGS: &str = "the request failed; see the gateway's logs";

#[derive(Serialize)]
struct Body<'a> {
    success: bool,
    error: &'a str,
    detail: &'a str,
}

/// The answer for `error`: its status and `{"success":false,"error","detail"}`. A failure is
/// logged with its causes (see [`log_failure`]); a rejection travels with the answer to the
/// rate-limited log of rejections (see [`super::rejections`]).
pub(super) fn json_answer<E: ServiceError + ?Sized>(error: &E) -> AxumResponse {
    log_failure(error);
    let status = error.http_status();
    let detail = error.public_message();
    let body = Body {
        success: false,
        error: error.code(),
        detail: &detail,
    };
    let mut response = (status, Json(body)).into_response();
    if status.is_client_error() {
        let rejection = Rejection::new(status, error.code(), detail.into_owned());
        response.extensions_mut().insert(rejection);
    }
    response
}

/// Whether a request body was refused for its size (the listener's `max_body_bytes`).
pub(super) fn is_too_large(rejection: &BytesRejection) -> bool {
    matches!(
        rejection,
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_))
    )
}

/// What the public listener itself refuses or fails at, whatever the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// No route for the path.
    #[error("no such endpoint")]
    NotFound,
    /// A route, but not for this method.
    #[error("this endpoint does not accept that method")]
    MethodNotAllowed,
    /// The request timeout passed before the body arrived.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The request timeout passed while the gateway was answering.
    #[error("the request could not be completed in time; retry later")]
    AnswerTimeout,
    /// The shutdown deadline passed while the gateway was answering.
    #[error("the gateway is shutting down; retry later")]
    ShuttingDown,
    /// A handler panicked.
    #[error("a request handler panicked: {message}")]
    Panic {
        /// The panic's message, if it had one.
        message: String,
    },
}

impl ServiceError for ListenerError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound => ErrorKind::NotFound,
            Self::MethodNotAllowed => ErrorKind::MethodNotAllowed,
            Self::BodyTimeout => ErrorKind::RequestTimeout,
            Self::AnswerTimeout | Self::ShuttingDown => ErrorKind::Unavailable,
            Self::Panic { .. } => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTimeout => "request_timeout",
            Self::AnswerTimeout | Self::ShuttingDown => "unavailable",
            Self::Panic { .. } => "internal_error",
        }
    }

    fn public_message(&self) -> Cow<'_, str> {
        match self {
            Self::Panic { .. } => SEE_THE_LOGS.into(),
            other => other.to_string().into(),
        }
    }

    /// A slow answer, and a shutdown that cannot wait, are logged where they are noticed, as
    /// warnings.
    fn is_failure(&self) -> bool {
        matches!(self, Self::Panic { .. })
    }
}

impl IntoResponse for ListenerError {
    fn into_response(self) -> AxumResponse {
        json_answer(&self)
    }
}

pub(super) async fn not_found() -> ListenerError {
    ListenerError::NotFound
}

pub(super) async fn method_not_allowed() -> ListenerError {
    ListenerError::MethodNotAllowed
}

pub(super) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<axum::body::Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    ListenerError::Panic { message }.into_response()
}
