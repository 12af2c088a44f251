//! What the `EventStream` rpcs answer when they do not serve: [`RpcError`] for a call refused or
//! failed before its answer, [`ShuttingDown`] for a stream ended by shutdown. Both become a
//! gRPC status through [`crate::error::grpc_status`].

use crate::{
    error::{ErrorKind, ServiceError},
    log::{LogError, Sequence},
    subscriptions::{CursorError, FilterError, InvalidName, groups::GroupError},
};

use super::access::Refusal;

/// Why a `Subscribe` or `Ack` call was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// `Subscribe` named both a durable consumer and a group.
    #[error(
        "consumer and group are mutually exclusive: a stream is a durable consumer or a group member"
    )]
    StreamConsumerAndGroup,
    /// `Ack` named both a durable consumer and a group.
    #[error("consumer and group are mutually exclusive")]
    AckConsumerAndGroup,
    /// `Ack` named neither a durable consumer nor a group.
    #[error("consumer or group is required")]
    AckWithoutConsumer,
    /// A group member asked for a filter.
    #[error(
        "a group member receives every event of its partitions: filters are not allowed with group"
    )]
    FilterWithGroup,
    /// A group ack without the member's id.
    #[error("member_id is required with group: the one from the stream's group_assignment")]
    MissingMemberId,
    /// A group ack of sequence 0.
    #[error("sequence must name an event delivered to this member")]
    NoGroupSequence,
    /// An ack of a sequence not stored yet.
    #[error("sequence {sequence} is beyond the newest stored event ({head})")]
    AckBeyondHead {
        /// The sequence acked.
        sequence: Sequence,
        /// The newest stored sequence.
        head: Sequence,
    },
    /// A start after a sequence not stored yet.
    #[error("start.after_sequence {after} is beyond the newest stored event ({head})")]
    StartBeyondHead {
        /// The sequence asked for.
        after: Sequence,
        /// The newest stored sequence.
        head: Sequence,
    },
    /// `start.since` is no time.
    #[error("start.since is not a valid timestamp")]
    InvalidTime,
    /// `start.since` is later than the clock allows.
    #[error("start.since is in the future")]
    FutureTime,
    /// The access guard did not run: a bug in how the listener is built.
    #[error("a call reached the EventStream service without an authenticated caller")]
    NoCaller,
    /// The caller may not do this.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The filter is not valid.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// A consumer or group name is not valid.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// A consumer group refused or failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// A durable consumer's cursor refused or failed.
    #[error(transparent)]
    Cursor(#[from] CursorError),
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl RpcError {
    /// The error this one only carries, if it is such a wrapper.
    fn carried(&self) -> Option<&dyn ServiceError> {
        match self {
            Self::Refused(error) => Some(error),
            Self::Filter(error) => Some(error),
            Self::Name(error) => Some(error),
            Self::Group(error) => Some(error),
            Self::Cursor(error) => Some(error),
            Self::Log(error) => Some(error),
            _ => None,
        }
    }
}

impl ServiceError for RpcError {
    fn kind(&self) -> ErrorKind {
        if let Some(carried) = self.carried() {
            return carried.kind();
        }
        match self {
            Self::AckBeyondHead { .. } | Self::StartBeyondHead { .. } => ErrorKind::OutOfRange,
            Self::NoCaller => ErrorKind::Internal,
            _ => ErrorKind::BadRequest,
        }
    }

    fn code(&self) -> &'static str {
        if let Some(carried) = self.carried() {
            return carried.code();
        }
        match self {
            Self::StreamConsumerAndGroup | Self::AckConsumerAndGroup => "consumer_and_group",
            Self::AckWithoutConsumer => "missing_consumer",
            Self::FilterWithGroup => "filter_with_group",
            Self::MissingMemberId => "missing_member_id",
            Self::NoGroupSequence => "missing_sequence",
            Self::AckBeyondHead { .. } | Self::StartBeyondHead { .. } => "beyond_head",
            Self::InvalidTime => "invalid_time",
            Self::FutureTime => "future_time",
            _ => "internal_error",
        }
    }
}

/// The gateway is stopping: a stream ends with `UNAVAILABLE`, which gRPC clients retry, and a
/// text that says how to resume. Expected, so not logged as a failure.
#[derive(Debug, Clone, Copy, thiserror::Error)]
pub enum ShuttingDown {
    /// A plain or durable-consumer stream.
    #[error("the gateway is shutting down; resubscribe after the last sequence you processed")]
    Stream,
    /// A consumer group member's stream.
    #[error("the gateway is shutting down; subscribe to the group again")]
    GroupMember,
}

impl ServiceError for ShuttingDown {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Unavailable
    }

    fn code(&self) -> &'static str {
        "shutting_down"
    }

    fn public_message(&self) -> std::borrow::Cow<'_, str> {
        self.to_string().into()
    }

    fn is_failure(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::{error::grpc_status, subscriptions::QuotaError};

    #[test]
    fn carried_errors_answer_for_themselves() {
        let cases: [(RpcError, Code, &str); 5] = [
            (
                RpcError::AckBeyondHead {
                    sequence: 9,
                    head: 3,
                },
                Code::OutOfRange,
                "sequence 9 is beyond the newest stored event (3)",
            ),
            (
                Refusal::InvalidToken.into(),
                Code::Unauthenticated,
                "the bearer token is not valid",
            ),
            (
                CursorError::from(QuotaError::TooMany { max: 2 }).into(),
                Code::ResourceExhausted,
                "too many durable consumers and consumer groups (2, the two counted together); reuse an existing name or ask the operator to raise --max-consumers",
            ),
            (
                LogError::Closed.into(),
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
        let status = grpc_status(&ShuttingDown::GroupMember);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.message(),
            "the gateway is shutting down; subscribe to the group again"
        );
    }
}
