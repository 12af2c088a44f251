//! The error vocabulary shared by the public (HTTP) and internal (gRPC) listeners.
//!
//! Module errors are `thiserror` enums; each says which [`ErrorCode`] it is, and the code decides
//! the HTTP status and the gRPC status code, so that both listeners answer the same condition the
//! same way.

use axum::http::StatusCode;

/// A class of failure, independent of the protocol it is reported over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// The request is malformed.
    BadRequest,
    /// The request is well-formed but its content is not acceptable.
    Unprocessable,
    /// The request body is larger than allowed.
    PayloadTooLarge,
    /// The request body has a media type that is not accepted.
    UnsupportedMediaType,
    /// The caller did not authenticate, or its credentials are not valid.
    Unauthenticated,
    /// The caller is authenticated but may not do this.
    PermissionDenied,
    /// No such resource.
    NotFound,
    /// The resource exists but not for this method.
    MethodNotAllowed,
    /// A position beyond what exists.
    OutOfRange,
    /// A quota is used up (too many consumers).
    ResourceExhausted,
    /// The request is valid but the state does not allow it (a group member that lost its
    /// partition).
    FailedPrecondition,
    /// A dependency (the event log) cannot serve now; retrying later may succeed.
    Unavailable,
    /// A bug or an unexpected condition.
    Internal,
}

impl ErrorCode {
    /// The HTTP status for this class of failure.
    pub fn http_status(self) -> StatusCode {
        match self {
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::PermissionDenied => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::OutOfRange => StatusCode::RANGE_NOT_SATISFIABLE,
            Self::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::FailedPrecondition => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status code for this class of failure.
    pub fn grpc_code(self) -> tonic::Code {
        match self {
            Self::BadRequest | Self::Unprocessable | Self::PayloadTooLarge => {
                tonic::Code::InvalidArgument
            }
            Self::UnsupportedMediaType | Self::MethodNotAllowed => tonic::Code::Unimplemented,
            Self::Unauthenticated => tonic::Code::Unauthenticated,
            Self::PermissionDenied => tonic::Code::PermissionDenied,
            Self::NotFound => tonic::Code::NotFound,
            Self::OutOfRange => tonic::Code::OutOfRange,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// Whether the details of the failure may be shown to the caller. Server-side failures are
    /// logged in full and answered with a generic message.
    pub fn is_client_error(self) -> bool {
        self.http_status().is_client_error()
    }
}

/// An error that knows which [`ErrorCode`] it is.
pub trait ServiceError: std::error::Error {
    /// The class of this failure.
    fn error_code(&self) -> ErrorCode;
}

/// Converts a [`ServiceError`] to a gRPC status, hiding the details of server-side failures.
pub fn grpc_status<E: ServiceError>(error: &E) -> tonic::Status {
    let code = error.error_code();
    if code.is_client_error() {
        tonic::Status::new(code.grpc_code(), error.to_string())
    } else {
        tracing::error!(error = %error_chain(error), "request failed");
        let message = match code {
            ErrorCode::Unavailable => "the event log is unavailable, retry later",
            _ => "internal error",
        };
        tonic::Status::new(code.grpc_code(), message)
    }
}

/// Formats an error with its whole `source()` chain, for logs and people, leaving out a cause
/// that repeats the one before it word for word (transport errors often wrap their own kind).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if message != previous {
            text.push_str(": ");
            text.push_str(&message);
        }
        previous = message;
        source = cause.source();
    }
    text
}

/// Whether `name` is 1 to `max_len` ASCII letters, digits, `-`, `_` or `.`: the alphabet of
/// every name a caller picks (notification kinds, consumers), safe in URLs, logs and labels.
pub fn is_plain_name(name: &str, max_len: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_len
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
