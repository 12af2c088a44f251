//! The error vocabulary shared by the public (HTTP) and internal (gRPC) listeners.
//!
//! Every error a caller can be answered with is a `thiserror` type implementing
//! [`ServiceError`]: its [`ErrorKind`] decides the HTTP status and the gRPC code, its code names
//! the problem for machines (`missing_field`, `invalid_token`), and its public message is what
//! the caller may read. Each listener renders these in its own shape (the webhooks'
//! `{"success":false,"error","detail"}`, the token endpoint's RFC 6749 body, a gRPC `Status`);
//! what is said is decided once, by the error.
//!
//! A server error's own text and causes are for the operator: answering it logs them with the
//! whole `source()` chain ([`log_failure`]) and tells the caller only a generic text.

use std::borrow::Cow;

use axum::http::StatusCode;

/// A class of failure, independent of the protocol it is reported over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
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
    /// The caller did not send its request in time.
    RequestTimeout,
    /// A position beyond what exists.
    OutOfRange,
    /// A quota is used up (too many consumers, too many failed attempts).
    ResourceExhausted,
    /// The request is valid but the state does not allow it (a group member that lost its
    /// partition).
    FailedPrecondition,
    /// A dependency (the event log) cannot serve now; retrying later may succeed.
    Unavailable,
    /// A bug or an unexpected condition.
    Internal,
}

impl ErrorKind {
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
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
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
            Self::RequestTimeout => tonic::Code::DeadlineExceeded,
            Self::OutOfRange => tonic::Code::OutOfRange,
            Self::ResourceExhausted => tonic::Code::ResourceExhausted,
            Self::FailedPrecondition => tonic::Code::FailedPrecondition,
            Self::Unavailable => tonic::Code::Unavailable,
            Self::Internal => tonic::Code::Internal,
        }
    }

    /// Whether the failure is the caller's: then its details are the answer. Server-side
    /// failures are logged in full and answered with a generic message.
    pub fn is_client_error(self) -> bool {
        self.http_status().is_client_error()
    }

    /// What a caller is told of a server-side failure of this class that says nothing more.
    fn generic_message(self) -> &'static str {
        match self {
            Self::Unavailable => "the event log is unavailable, retry later",
            _ => "internal error",
        }
    }
}

/// An error a caller can be answered with.
///
/// A wrapper that only carries another service error (`#[error(transparent)]`) takes every
/// answer from it, the provided methods included.
pub trait ServiceError: std::error::Error {
    /// The class of this failure, which decides its HTTP status and gRPC code.
    fn kind(&self) -> ErrorKind;

    /// The machine-readable name of the problem, e.g. `missing_field`: the `error` field of an
    /// HTTP answer, and a label of metrics and logs.
    fn code(&self) -> &'static str;

    /// What the caller is told: a client error's own text, or for a server error a text that
    /// names no internals.
    fn public_message(&self) -> Cow<'_, str> {
        let kind = self.kind();
        if kind.is_client_error() {
            Cow::Owned(self.to_string())
        } else {
            Cow::Borrowed(kind.generic_message())
        }
    }

    /// Whether answering this error logs it, with its causes, as a failure of the gateway: true
    /// for server errors, except those whose public message tells the whole story (shutting
    /// down, busy), which are logged where they happen if at all.
    fn is_failure(&self) -> bool {
        !self.kind().is_client_error()
    }

    /// The HTTP status of the answer.
    fn http_status(&self) -> StatusCode {
        self.kind().http_status()
    }

    /// The gRPC status code of the answer.
    fn grpc_code(&self) -> tonic::Code {
        self.kind().grpc_code()
    }
}

/// Logs `error` with its whole cause chain if it is a failure of the gateway: the caller is told
/// only its public message, so this line is where the cause is found.
pub fn log_failure<E: ServiceError + ?Sized>(error: &E) {
    if error.is_failure() {
        tracing::error!(code = error.code(), error = %error_chain(error), "request failed");
    }
}

/// The gRPC status answering `error` (a failure is logged first, see [`log_failure`]).
pub fn grpc_status<E: ServiceError + ?Sized>(error: &E) -> tonic::Status {
    log_failure(error);
    tonic::Status::new(error.grpc_code(), error.public_message())
}

/// Formats an error with its whole `source()` chain, for logs and people, leaving out a cause
/// that repeats the one before it word for word (transport errors often wrap their own kind).
pub fn error_chain(error: &(impl std::error::Error + ?Sized)) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause_once() {
        let error = Outer(Middle(std::io::Error::other("disk full")));
        assert_eq!(error_chain(&error), "outer: middle: disk full");
        #[derive(Debug, thiserror::Error)]
        #[error("disk full")]
        struct Repeats(#[source] std::io::Error);
        let repeated = Repeats(std::io::Error::other("disk full"));
        assert_eq!(error_chain(&repeated), "disk full");
    }

    #[derive(Debug, thiserror::Error)]
    enum Example {
        #[error("the field `x` is missing")]
        Client,
        #[error("the disk at /var/lib is full")]
        Server,
    }

    impl ServiceError for Example {
        fn kind(&self) -> ErrorKind {
            match self {
                Self::Client => ErrorKind::Unprocessable,
                Self::Server => ErrorKind::Internal,
            }
        }

        fn code(&self) -> &'static str {
            "example"
        }
    }

    #[test]
    fn server_errors_are_answered_without_their_text() {
        let client = grpc_status(&Example::Client);
        assert_eq!(client.code(), tonic::Code::InvalidArgument);
        assert_eq!(client.message(), "the field `x` is missing");
        assert!(!Example::Client.is_failure());

        let server = grpc_status(&Example::Server);
        assert_eq!(server.code(), tonic::Code::Internal);
        assert_eq!(server.message(), "internal error");
        assert!(Example::Server.is_failure());
        assert_eq!(
            Example::Server.http_status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
