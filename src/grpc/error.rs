//! What the `EventStream` rpcs answer when they do not serve: [`RpcError`] for a call refused or
//! failed before its answer. It becomes a gRPC status through [`crate::error::grpc_status`], as
//! does the error that ends a stream ([`crate::subscriptions::StreamError`]).

use crate::{
    error::{ErrorKind, ServiceError},
    subscriptions::RequestError,
};

use super::access::Refusal;

/// Why a `Subscribe` or `Ack` call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The access guard did not run: a bug in how the listener is built.
    #[error("a call reached the EventStream service without an authenticated caller")]
    NoCaller,
    /// The caller may not do this.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The request was refused or failed.
    #[error(transparent)]
    Request(#[from] RequestError),
}

impl ServiceError for RpcError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NoCaller => ErrorKind::Internal,
            Self::Refused(refusal) => refusal.kind(),
            Self::Request(error) => error.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::NoCaller => "internal_error",
            Self::Refused(refusal) => refusal.code(),
            Self::Request(error) => error.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::{
        error::grpc_status,
        log::LogError,
        subscriptions::{CursorError, QuotaError, StreamError},
    };

    #[test]
    fn carried_errors_answer_for_themselves() {
        let cases: [(RpcError, Code, &str); 5] = [
            (
                RequestError::AckBeyondHead {
                    sequence: 9,
                    head: 3,
                }
                .into(),
                Code::OutOfRange,
                "sequence 9 is beyond the newest stored event (3)",
            ),
            (
                Refusal::InvalidToken.into(),
                Code::Unauthenticated,
                "the bearer token is not valid",
            ),
            (
                RequestError::from(CursorError::from(QuotaError::TooMany { max: 2 })).into(),
                Code::ResourceExhausted,
                "too many durable consumers and consumer groups (2, the two counted together); reuse an existing name or ask the operator to raise --max-consumers",
            ),
            (
                RequestError::from(LogError::Closed).into(),
                Code::Unavailable,
                "the event log is unavailable, retry later",
            ),
            (RpcError::NoCaller, Code::Internal, "internal error"),
        ];
        for (error, code, message) in cases {
            let status = grpc_status(&error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
        assert_eq!(
            RpcError::from(Refusal::InvalidToken).code(),
            "invalid_token"
        );
        let status = grpc_status(&StreamError::GroupMemberShuttingDown);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "the gateway is shutting down; subscribe to the group again"
        );
    }
}
