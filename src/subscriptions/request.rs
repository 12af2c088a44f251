//! What `Subscribe` and `Ack` requests ask for, checked: the durable consumer or group they name
//! ([`StreamTarget`], [`AckTarget`]), where a stream starts ([`Start`]), and why a request is
//! refused ([`RequestError`]).

use std::time::{Duration, SystemTime};

use super::{
    cursors::CursorError,
    filter::FilterError,
    groups::GroupError,
    names::{ConsumerName, GroupName, InvalidName},
};
use crate::{
    error::{ErrorKind, ServiceError},
    log::{LogError, Sequence, SharedLog},
    proto::v1::{self, start_position::Position},
};

/// How far in the future a `since` may be before it is refused: clocks of different machines
/// disagree a little.
const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// What a `Subscribe` call follows.
#[derive(Debug, Clone)]
pub enum StreamTarget {
    /// The log itself, from the position the request asks for.
    Log,
    /// A durable consumer: from its cursor unless the request says otherwise.
    Consumer(ConsumerName),
    /// A consumer group, as a new member.
    Group(GroupName),
}

impl StreamTarget {
    /// The target `request` names: a consumer, a group or neither, never both.
    pub fn of(request: &v1::SubscribeRequest) -> Result<Self, RequestError> {
        let both = RequestError::StreamConsumerAndGroup;
        Self::named(&request.consumer, &request.group, both)
    }

    /// What a request's `consumer` and `group` fields name, each if it is not empty; naming
    /// both is refused with `both`.
    fn named(consumer: &str, group: &str, both: RequestError) -> Result<Self, RequestError> {
        let consumer = ConsumerName::parse_field(consumer)?;
        match (consumer, GroupName::parse_field(group)?) {
            (None, None) => Ok(Self::Log),
            (Some(consumer), None) => Ok(Self::Consumer(consumer)),
            (None, Some(group)) => Ok(Self::Group(group)),
            (Some(_), Some(_)) => Err(both),
        }
    }

    /// The durable consumer or group it names: what the caller must be allowed to use.
    pub fn name(&self) -> Option<&str> {
        match self {
            Self::Log => None,
            Self::Consumer(consumer) => Some(consumer.as_str()),
            Self::Group(group) => Some(group.as_str()),
        }
    }
}

/// What an `Ack` is for.
#[derive(Debug, Clone)]
pub enum AckTarget {
    /// A durable consumer's cursor.
    Consumer(ConsumerName),
    /// A partition's cursor of a consumer group, for one of its members.
    Group(GroupName),
}

impl AckTarget {
    /// The target `request` names: a consumer or a group, exactly one.
    pub fn of(request: &v1::AckRequest) -> Result<Self, RequestError> {
        let both = RequestError::AckConsumerAndGroup;
        match StreamTarget::named(&request.consumer, &request.group, both)? {
            StreamTarget::Log => Err(RequestError::AckWithoutConsumer),
            StreamTarget::Consumer(consumer) => Ok(Self::Consumer(consumer)),
            StreamTarget::Group(group) => Ok(Self::Group(group)),
        }
    }

    /// The durable consumer or group it names: what the caller must be allowed to use.
    pub fn name(&self) -> &str {
        match self {
            Self::Consumer(consumer) => consumer.as_str(),
            Self::Group(group) => group.as_str(),
        }
    }
}

/// Where a subscription starts, resolved against the log.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// The first sequence to read.
    pub next: Sequence,
    /// Whether to send `caught_up` once the stored events are delivered.
    pub announce_caught_up: bool,
}

impl Start {
    /// Where `position` starts in `log`; `None` is the live tail. A durable consumer's cursor
    /// comes as `AfterSequence`.
    pub async fn resolve(
        log: &SharedLog,
        position: Option<Position>,
    ) -> Result<Self, RequestError> {
        let bounds = log.bounds().await?;
        match position {
            None | Some(Position::Latest(_)) => Ok(Self {
                next: bounds.head + 1,
                announce_caught_up: false,
            }),
            Some(Position::Earliest(_)) | Some(Position::AfterSequence(0)) => {
                Ok(Self::from_past(bounds.first))
            }
            Some(Position::AfterSequence(after)) if after > bounds.head => {
                Err(RequestError::StartBeyondHead {
                    after,
                    head: bounds.head,
                })
            }
            Some(Position::AfterSequence(after)) => Ok(Self::from_past(after + 1)),
            Some(Position::Since(since)) => {
                let since = SystemTime::try_from(since).map_err(|_| RequestError::InvalidTime)?;
                if since > SystemTime::now() + CLOCK_SKEW {
                    return Err(RequestError::FutureTime);
                }
                let next = log.sequence_at(since).await?;
                // Retention keeps no times of removed events: when the oldest stored event is
                // younger than `since` asks for, some removed ones may have been received after
                // it, and the stream says so with a gap rather than skip them silently.
                if next == bounds.first && bounds.has_removed() {
                    Ok(Self::from_past(1))
                } else {
                    Ok(Self::from_past(next))
                }
            }
        }
    }

    fn from_past(next: Sequence) -> Self {
        Self {
            next,
            announce_caught_up: true,
        }
    }
}

/// Why a `Subscribe` or `Ack` request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
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
    /// A consumer or group name is not valid.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// The filter is not valid.
    #[error(transparent)]
    Filter(#[from] FilterError),
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

impl RequestError {
    /// The error this one only carries, if it is such a wrapper.
    fn carried(&self) -> Option<&dyn ServiceError> {
        match self {
            Self::Name(error) => Some(error),
            Self::Filter(error) => Some(error),
            Self::Group(error) => Some(error),
            Self::Cursor(error) => Some(error),
            Self::Log(error) => Some(error),
            _ => None,
        }
    }
}

impl ServiceError for RequestError {
    fn kind(&self) -> ErrorKind {
        if let Some(carried) = self.carried() {
            return carried.kind();
        }
        match self {
            Self::AckBeyondHead { .. } | Self::StartBeyondHead { .. } => ErrorKind::OutOfRange,
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
