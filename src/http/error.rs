//! Error answers of the public listener: a status and a JSON body naming the problem.
//!
//! Client errors say what was wrong; server errors say only that the request failed (the cause
//! is logged), so no internal detail reaches the internet.

use std::any::Any;

use axum::{
    Json,
    http::{Response, StatusCode},
    response::IntoResponse,
};
use serde::Serialize;

use crate::error::{ErrorKind, ServiceError, error_chain};

/// An error answer: `{"success":false,"error":"<code>","detail":"<text>"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    detail: String,
}

#[derive(Serialize)]
struct Body<'a> {
    success: bool,
    error: &'a str,
    detail: &'a str,
}

impl ApiError {
    /// An answer with this status, machine-readable code and human-readable detail.
    pub fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
        }
    }

    /// The answer for a [`ServiceError`]: its own text for client errors, a generic one (and a
    /// log line with the whole cause) for server errors.
    pub fn from_service_error<E: ServiceError>(error: &E, code: &'static str) -> Self {
        let class = error.kind();
        if class.is_client_error() {
            Self::new(class.http_status(), code, error.to_string())
        } else {
            tracing::error!(error = %error_chain(error), "request failed");
            Self::server_error(class)
        }
    }

    /// A generic answer for a server-side failure of this class.
    pub fn server_error(class: ErrorKind) -> Self {
        match class {
            ErrorKind::Unavailable => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the event log cannot take the notification now; retry later",
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "the request failed; see the gateway's logs",
            ),
        }
    }

    /// The HTTP status of this answer.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable error code of this answer.
    pub fn code(&self) -> &'static str {
        self.error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        if self.status.is_client_error() {
            tracing::info!(status = self.status.as_u16(), error = self.error, detail = %self.detail, "request rejected");
        }
        let body = Body {
            success: false,
            error: self.error,
            detail: &self.detail,
        };
        (self.status, Json(body)).into_response()
    }
}

pub(super) async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method",
    )
}

pub(super) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<axum::body::Body> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "a request handler panicked");
    ApiError::server_error(ErrorKind::Internal).into_response()
}
