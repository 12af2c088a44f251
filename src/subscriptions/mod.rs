//! Subscriptions: what subscribers name, follow and leave behind, over the [`crate::log`] traits.
//! [`Subscriptions`] opens the stream a `Subscribe` request asks for and takes acks; the
//! listener in front of it only authenticates, authorises and carries messages.
//!
//! - [`names`]: the names of durable consumers and consumer groups (one namespace, one rule).
//! - [`request`]: what a request asks for, checked, and why one is refused.
//! - [`filter`]: which events a plain or durable stream delivers.
//! - [`stream`]: the one driver of every stream: heartbeats, gaps, `caught_up`, deliveries.
//! - [`cursors`]: durable consumers' cursors, in the state store.
//! - [`groups`]: consumer groups: partitions, their assignment to members, cursors and fencing.
//! - [`quota`]: how many durable consumers and consumer groups there may be, and who made each.

pub mod cursors;
pub mod filter;
pub mod groups;
pub mod names;
pub mod quota;
pub mod request;
pub mod stream;

use tokio_util::sync::CancellationToken;

pub use cursors::{CursorError, Cursors};
pub use filter::{Filter, FilterError};
pub use names::{ConsumerName, GroupName, InvalidName, Name, NameKind};
pub use quota::{Quota, QuotaError, QuotaSettings, SubscriberIdentity};
pub use request::{AckTarget, RequestError, Start, StreamTarget};
pub use stream::{StreamError, StreamMessage, StreamSettings, SubscriptionStream};

use crate::{
    log::SharedLog,
    metrics::Metrics,
    proto::v1::{self, start_position::Position},
};
use groups::{Groups, JoinOptions, Member};
use stream::{Driver, StreamContext};

/// The subscriptions of one gateway: opens streams, takes acks.
#[derive(Clone)]
pub struct Subscriptions {
    /// The events.
    pub log: SharedLog,
    /// Durable consumers' cursors.
    pub cursors: Cursors,
    /// Consumer groups.
    pub groups: Groups,
    /// Counts streams, deliveries and acks.
    pub metrics: Metrics,
    /// How streams behave.
    pub settings: StreamSettings,
    /// Ends every stream when cancelled.
    pub shutdown: CancellationToken,
}

impl Subscriptions {
    /// Opens the stream `request` asks for, of `target`, for `subscriber` (who may use it).
    /// Delivery spans link to `span`, the call's, and the stream's messages are made in it.
    pub async fn subscribe(
        &self,
        target: StreamTarget,
        request: v1::SubscribeRequest,
        subscriber: &SubscriberIdentity,
        span: &tracing::Span,
    ) -> Result<SubscriptionStream, RequestError> {
        let filter = Filter::try_from(request.filter.unwrap_or_default())?;
        let position = request.start.and_then(|start| start.position);
        let consumer = match target {
            StreamTarget::Group(group) => {
                let options = GroupRequest {
                    filter: &filter,
                    position,
                    partitions: request.group_partitions,
                    max_in_flight: request.max_in_flight,
                };
                let member = self.join(&group, options, subscriber).await?;
                tracing::info!(
                    subscriber = subscriber.name(),
                    group = %group,
                    member = %member.session().member_id().fingerprint(),
                    "group member subscribed"
                );
                let context = self.context(subscriber, Some(group.as_str()), span);
                return Ok(Driver::group_member(context, member).into_stream());
            }
            StreamTarget::Consumer(consumer) => Some(consumer),
            StreamTarget::Log => None,
        };
        let position = match (&consumer, position) {
            (Some(consumer), None) => {
                let cursor = self.cursors.get(consumer).await?.unwrap_or(0);
                Some(Position::AfterSequence(cursor))
            }
            (_, position) => position,
        };
        let start = Start::resolve(&self.log, position).await?;
        let consumer_name = consumer.as_ref().map(ConsumerName::as_str);
        tracing::info!(
            next = start.next,
            subscriber = subscriber.name(),
            consumer = consumer_name,
            "subscription started"
        );
        let context = self.context(subscriber, consumer_name, span);
        let driver = Driver::plain(context, start, filter, consumer).await?;
        Ok(driver.into_stream())
    }

    /// Joins `group` for a `Subscribe` request: every check of a group member's request is
    /// here, in the order they are reported.
    async fn join(
        &self,
        group: &GroupName,
        request: GroupRequest<'_>,
        subscriber: &SubscriberIdentity,
    ) -> Result<Member, RequestError> {
        if !request.filter.is_empty() {
            return Err(RequestError::FilterWithGroup);
        }
        // A new group starts at the earliest event unless told otherwise.
        let position = request
            .position
            .or(Some(Position::Earliest(v1::start_position::Earliest {})));
        let start = Start::resolve(&self.log, position).await?;
        let options = JoinOptions::new(
            request.partitions,
            start.next.saturating_sub(1),
            request.max_in_flight,
        )?;
        Ok(self.groups.join(group, options, subscriber).await?)
    }

    fn context(
        &self,
        subscriber: &SubscriberIdentity,
        name: Option<&str>,
        span: &tracing::Span,
    ) -> StreamContext {
        StreamContext {
            log: self.log.clone(),
            settings: self.settings,
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            stream_metrics: self.metrics.stream_opened(subscriber.name(), name),
            span: span.clone(),
        }
    }

    /// Takes the ack `request` of `target` from `subscriber` (who may use it): moves a durable
    /// consumer's cursor, or a group partition's for one of the subscriber's members.
    pub async fn ack(
        &self,
        target: AckTarget,
        request: &v1::AckRequest,
        subscriber: &SubscriberIdentity,
    ) -> Result<v1::AckResponse, RequestError> {
        if matches!(target, AckTarget::Group(_)) && request.member_id.is_empty() {
            return Err(RequestError::MissingMemberId);
        }
        let head = self.log.bounds().await?.head;
        if request.sequence > head {
            return Err(RequestError::AckBeyondHead {
                sequence: request.sequence,
                head,
            });
        }
        let response = match target {
            AckTarget::Group(group) => {
                if request.sequence == 0 {
                    return Err(RequestError::NoGroupSequence);
                }
                let (partition, sequence) = self
                    .groups
                    .ack(&group, &request.member_id, subscriber, request.sequence)
                    .await?;
                v1::AckResponse {
                    sequence,
                    partition,
                }
            }
            AckTarget::Consumer(consumer) => {
                let sequence = self
                    .cursors
                    .ack(&consumer, request.sequence, subscriber)
                    .await?;
                v1::AckResponse {
                    sequence,
                    partition: 0,
                }
            }
        };
        self.metrics.acked(subscriber.name());
        Ok(response)
    }
}

/// What a `Subscribe` request that joins a group asks for.
struct GroupRequest<'a> {
    filter: &'a Filter,
    position: Option<Position>,
    partitions: u32,
    max_in_flight: u32,
}
