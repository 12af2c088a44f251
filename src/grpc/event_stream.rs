//! `EventStreamService`: resolves a subscription request against the log and hands it to a
//! [`Subscription`] stream.

use std::{
    pin::Pin,
    time::{Duration, SystemTime},
};

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    GrpcSettings, access,
    encoded::{EncodedResponse, server::event_stream_service_server::EventStreamService},
    error::RpcError,
    group_subscription::GroupSubscription,
    subscription::{Start, Subscription},
};
use crate::{
    error::grpc_status,
    log::{Readiness, SharedLog},
    metrics::Metrics,
    proto::v1::{self, start_position::Position},
    subscriptions::{
        ConsumerName, Cursors, Filter, GroupName,
        groups::{GroupError, Groups, JoinOptions},
    },
    telemetry,
};

/// How far in the future a `since` may be before it is refused: clocks of different machines
/// disagree a little.
const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// What the event stream serves from: the log, durable consumers' cursors, consumer groups, and
/// the instruments that count it all.
#[derive(Clone)]
pub struct Sources {
    /// The events.
    pub log: SharedLog,
    /// Durable consumers' cursors.
    pub cursors: Cursors,
    /// Consumer groups.
    pub groups: Groups,
    /// The instruments.
    pub metrics: Metrics,
    /// The event log's readiness, for the health service.
    pub readiness: Readiness,
}

/// The `EventStreamService` implementation.
pub struct EventStream {
    log: SharedLog,
    cursors: Cursors,
    groups: Groups,
    metrics: Metrics,
    settings: GrpcSettings,
    shutdown: CancellationToken,
}

impl EventStream {
    /// Serves subscriptions from `sources`; streams end when `shutdown` is cancelled.
    pub fn new(sources: Sources, settings: GrpcSettings, shutdown: CancellationToken) -> Self {
        Self {
            log: sources.log,
            cursors: sources.cursors,
            groups: sources.groups,
            metrics: sources.metrics,
            settings,
            shutdown,
        }
    }

    async fn resolve_start(
        &self,
        position: Option<Position>,
        consumer: Option<&ConsumerName>,
    ) -> Result<Start, RpcError> {
        let position = match (position, consumer) {
            (None, Some(consumer)) => {
                let cursor = self.cursors.get(consumer).await?.unwrap_or(0);
                Some(Position::AfterSequence(cursor))
            }
            (position, _) => position,
        };
        let bounds = self.log.bounds().await?;
        let from_past = |next| Start {
            next,
            announce_caught_up: true,
        };
        match position {
            None | Some(Position::Latest(_)) => Ok(Start {
                next: bounds.head + 1,
                announce_caught_up: false,
            }),
            Some(Position::Earliest(_)) | Some(Position::AfterSequence(0)) => {
                Ok(from_past(bounds.first))
            }
            Some(Position::AfterSequence(after)) if after > bounds.head => {
                Err(RpcError::StartBeyondHead {
                    after,
                    head: bounds.head,
                })
            }
            Some(Position::AfterSequence(after)) => Ok(from_past(after + 1)),
            Some(Position::Since(since)) => {
                let since = SystemTime::try_from(since).map_err(|_| RpcError::InvalidTime)?;
                if since > SystemTime::now() + CLOCK_SKEW {
                    return Err(RpcError::FutureTime);
                }
                let next = self.log.sequence_at(since).await?;
                // Retention keeps no times of removed events: when the oldest stored event is
                // younger than `since` asks for, some removed ones may have been received after
                // it, and the stream says so with a gap rather than skip them silently.
                if next == bounds.first && bounds.has_removed() {
                    Ok(from_past(1))
                } else {
                    Ok(from_past(next))
                }
            }
        }
    }
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<EncodedResponse, Status>> + Send>>;

#[tonic::async_trait]
impl EventStreamService for EventStream {
    type SubscribeStream = SubscribeStream;

    async fn subscribe(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let span = rpc_span("Subscribe", request.metadata());
        answer(&span, self.open_stream(request, &span).await)
    }

    async fn ack(
        &self,
        request: Request<v1::AckRequest>,
    ) -> Result<Response<v1::AckResponse>, Status> {
        let span = rpc_span("Ack", request.metadata());
        answer(&span, self.acknowledge(request, &span).await)
    }
}

/// An rpc's answer: its response, or the status for its error (a failure is logged in the
/// rpc's span).
fn answer<T>(span: &tracing::Span, result: Result<T, RpcError>) -> Result<Response<T>, Status> {
    result
        .map(Response::new)
        .map_err(|error| span.in_scope(|| grpc_status(&error)))
}

/// What an ack is for.
enum AckTarget {
    Consumer(ConsumerName),
    Group(GroupName),
}

impl EventStream {
    async fn open_stream(
        &self,
        request: Request<v1::SubscribeRequest>,
        span: &tracing::Span,
    ) -> Result<SubscribeStream, RpcError> {
        let caller = access::caller_of(&request).ok_or(RpcError::NoCaller)?;
        span.record("incode_gateway.subscriber", caller.name());
        let request = request.into_inner();
        let consumer = parse_consumer(&request.consumer)?;
        let group = parse_group(&request.group)?;
        if consumer.is_some() && group.is_some() {
            return Err(RpcError::StreamConsumerAndGroup);
        }
        let name = consumer
            .as_ref()
            .map(ConsumerName::as_str)
            .or(group.as_ref().map(GroupName::as_str));
        span.in_scope(|| access::authorize_subscribe(&caller, name, &self.metrics))?;
        let filter = Filter::try_from(request.filter.unwrap_or_default())?;
        let position = request.start.and_then(|start| start.position);
        if let Some(group) = group {
            if !filter.is_empty() {
                return Err(RpcError::FilterWithGroup);
            }
            // A new group starts at the earliest event unless told otherwise.
            let position = position.or(Some(Position::Earliest(v1::start_position::Earliest {})));
            let start = self.resolve_start(position, None).await?;
            let options = JoinOptions {
                partitions: request.group_partitions,
                start_cursor: start.next.saturating_sub(1),
                max_in_flight: request.max_in_flight,
            };
            let member = self
                .groups
                .join(&group, options, &caller.identity())
                .instrument(span.clone())
                .await?;
            span.in_scope(|| {
                tracing::info!(
                    subscriber = caller.name(),
                    group = %group,
                    member = %member.session().member_id().fingerprint(),
                    "group member subscribed"
                );
            });
            let subscription = GroupSubscription {
                log: self.log.clone(),
                member,
                heartbeat_interval: self.settings.heartbeat_interval,
                shutdown: self.shutdown.clone(),
                stream_metrics: self
                    .metrics
                    .stream_opened(caller.name(), Some(group.as_str())),
                metrics: self.metrics.clone(),
                span: span.clone(),
                trace_deliveries: self.settings.trace_deliveries,
            };
            return Ok(Box::pin(subscription.into_stream()));
        }
        let start = self.resolve_start(position, consumer.as_ref()).await?;
        let subscriber = caller.name();
        let consumer_name = consumer.as_ref().map(ConsumerName::as_str);
        span.in_scope(|| {
            tracing::info!(
                next = start.next,
                subscriber,
                consumer = consumer_name,
                "subscription started"
            );
        });
        let subscription = Subscription {
            log: self.log.clone(),
            start,
            filter,
            heartbeat_interval: self.settings.heartbeat_interval,
            shutdown: self.shutdown.clone(),
            stream_metrics: self.metrics.stream_opened(subscriber, consumer_name),
            metrics: self.metrics.clone(),
            consumer,
            span: span.clone(),
            trace_deliveries: self.settings.trace_deliveries,
        };
        Ok(Box::pin(subscription.into_stream().await?))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AckRequest>,
        span: &tracing::Span,
    ) -> Result<v1::AckResponse, RpcError> {
        let caller = access::caller_of(&request).ok_or(RpcError::NoCaller)?;
        span.record("incode_gateway.subscriber", caller.name());
        let request = request.into_inner();
        let target = match (
            parse_consumer(&request.consumer)?,
            parse_group(&request.group)?,
        ) {
            (Some(consumer), None) => AckTarget::Consumer(consumer),
            (None, Some(group)) => AckTarget::Group(group),
            (None, None) => return Err(RpcError::AckWithoutConsumer),
            (Some(_), Some(_)) => return Err(RpcError::AckConsumerAndGroup),
        };
        let name = match &target {
            AckTarget::Consumer(consumer) => consumer.as_str(),
            AckTarget::Group(group) => group.as_str(),
        };
        span.in_scope(|| access::authorize_ack(&caller, name, &self.metrics))?;
        if matches!(target, AckTarget::Group(_)) && request.member_id.is_empty() {
            return Err(RpcError::MissingMemberId);
        }
        let head = self.log.bounds().instrument(span.clone()).await?.head;
        if request.sequence > head {
            return Err(RpcError::AckBeyondHead {
                sequence: request.sequence,
                head,
            });
        }
        let response = match target {
            AckTarget::Group(group) => {
                if request.sequence == 0 {
                    return Err(RpcError::NoGroupSequence);
                }
                let (partition, sequence) = self
                    .groups
                    .ack(
                        &group,
                        &request.member_id,
                        &caller.identity(),
                        request.sequence,
                    )
                    .instrument(span.clone())
                    .await
                    .inspect_err(|error| {
                        if let GroupError::NotMember { .. } = error {
                            span.in_scope(|| access::refused_ack(&caller, error, &self.metrics));
                        }
                    })?;
                v1::AckResponse {
                    sequence,
                    partition,
                }
            }
            AckTarget::Consumer(consumer) => {
                let sequence = self
                    .cursors
                    .ack(&consumer, request.sequence, &caller.identity())
                    .instrument(span.clone())
                    .await?;
                v1::AckResponse {
                    sequence,
                    partition: 0,
                }
            }
        };
        self.metrics.acked(caller.name());
        Ok(response)
    }
}

/// The server span of an rpc, per the OpenTelemetry gRPC conventions, continuing the caller's
/// trace when its metadata carries one.
fn rpc_span(method: &'static str, metadata: &tonic::metadata::MetadataMap) -> tracing::Span {
    const SERVICE: &str = "incode.gateway.v1.EventStreamService";
    let span = tracing::info_span!(
        "rpc",
        otel.name = format!("{SERVICE}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = SERVICE,
        rpc.method = method,
        incode_gateway.subscriber = tracing::field::Empty,
    );
    let parent = telemetry::extract_from_headers(&metadata.clone().into_headers());
    let _ = span.set_parent(parent);
    span
}

/// The consumer a request names; `None` when the field is empty.
fn parse_consumer(name: &str) -> Result<Option<ConsumerName>, RpcError> {
    Ok(ConsumerName::parse_field(name)?)
}

/// The group a request names; `None` when the field is empty.
fn parse_group(name: &str) -> Result<Option<GroupName>, RpcError> {
    Ok(GroupName::parse_field(name)?)
}
