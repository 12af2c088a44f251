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
    filter::Filter,
    group_subscription::GroupSubscription,
    subscription::{Start, Subscription},
};
use crate::{
    error::{ErrorCode, ServiceError, grpc_status},
    groups::{GroupName, Groups, JoinOptions},
    log::{ConsumerName, Cursors, InvalidConsumerName, LogError, SharedLog},
    metrics::Metrics,
    proto::v1::{self, start_position::Position},
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
    ) -> Result<Start, StartError> {
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
                Err(StartError::BeyondHead {
                    after,
                    head: bounds.head,
                })
            }
            Some(Position::AfterSequence(after)) => Ok(from_past(after + 1)),
            Some(Position::Since(since)) => {
                let since = SystemTime::try_from(since).map_err(|_| StartError::InvalidTime)?;
                if since > SystemTime::now() + CLOCK_SKEW {
                    return Err(StartError::FutureTime);
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

/// Why a start position could not be used.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("start.after_sequence {after} is beyond the newest stored event ({head})")]
    BeyondHead { after: u64, head: u64 },
    #[error("start.since is not a valid timestamp")]
    InvalidTime,
    #[error("start.since is in the future")]
    FutureTime,
    #[error(transparent)]
    Consumer(#[from] InvalidConsumerName),
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ServiceError for StartError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::BeyondHead { .. } => ErrorCode::OutOfRange,
            Self::InvalidTime | Self::FutureTime => ErrorCode::BadRequest,
            Self::Consumer(error) => error.error_code(),
            Self::Log(error) => error.error_code(),
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
        let caller = access::caller_of(&request)?;
        span.record("incode_gateway.subscriber", caller.name());
        let request = request.into_inner();
        let consumer = parse_consumer(&request.consumer)?;
        let group = parse_group(&request.group)?;
        if consumer.is_some() && group.is_some() {
            return Err(Status::invalid_argument(
                "consumer and group are mutually exclusive: a stream is a durable consumer or a group member",
            ));
        }
        let name = consumer
            .as_ref()
            .map(ConsumerName::as_str)
            .or(group.as_ref().map(GroupName::as_str));
        span.in_scope(|| access::authorize_subscribe(&caller, name, &self.metrics))?;
        let filter = Filter::try_from(request.filter.unwrap_or_default())
            .map_err(|error| grpc_status(&error))?;
        let position = request.start.and_then(|start| start.position);
        if let Some(group) = group {
            if !filter.is_empty() {
                return Err(Status::invalid_argument(
                    "a group member receives every event of its partitions: filters are not allowed with group",
                ));
            }
            // A new group starts at the earliest event unless told otherwise.
            let position = position.or(Some(Position::Earliest(v1::start_position::Earliest {})));
            let start = self
                .resolve_start(position, None)
                .await
                .map_err(|error| grpc_status(&error))?;
            let options = JoinOptions {
                partitions: request.group_partitions,
                start_cursor: start.next.saturating_sub(1),
                max_in_flight: request.max_in_flight,
            };
            let member = self
                .groups
                .join(&group, options)
                .instrument(span.clone())
                .await
                .map_err(|error| grpc_status(&error))?;
            span.in_scope(|| {
                tracing::info!(
                    subscriber = caller.name(),
                    group = %group,
                    member = member.session().member_id(),
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
                span,
            };
            return Ok(Response::new(Box::pin(subscription.into_stream())));
        }
        let start = self
            .resolve_start(position, consumer.as_ref())
            .await
            .map_err(|error| grpc_status(&error))?;
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
            span,
            trace_deliveries: self.settings.trace_deliveries,
        };
        Ok(Response::new(Box::pin(subscription.into_stream().await?)))
    }

    async fn ack(
        &self,
        request: Request<v1::AckRequest>,
    ) -> Result<Response<v1::AckResponse>, Status> {
        let span = rpc_span("Ack", request.metadata());
        let caller = access::caller_of(&request)?;
        span.record("incode_gateway.subscriber", caller.name());
        let request = request.into_inner();
        let consumer = parse_consumer(&request.consumer)?;
        let group = parse_group(&request.group)?;
        let name = match (&consumer, &group) {
            (Some(consumer), None) => consumer.as_str(),
            (None, Some(group)) => group.as_str(),
            (None, None) => {
                return Err(Status::invalid_argument("consumer or group is required"));
            }
            (Some(_), Some(_)) => {
                return Err(Status::invalid_argument(
                    "consumer and group are mutually exclusive",
                ));
            }
        };
        span.in_scope(|| access::authorize_ack(&caller, name, &self.metrics))?;
        if group.is_some() && request.member_id.is_empty() {
            return Err(Status::invalid_argument(
                "member_id is required with group: the one from the stream's group_assignment",
            ));
        }
        let head = self
            .log
            .bounds()
            .instrument(span.clone())
            .await
            .map_err(|error| grpc_status(&error))?
            .head;
        if request.sequence > head {
            return Err(Status::out_of_range(format!(
                "sequence {} is beyond the newest stored event ({head})",
                request.sequence
            )));
        }
        let response = match group {
            Some(group) => {
                if request.sequence == 0 {
                    return Err(Status::invalid_argument(
                        "sequence must name an event delivered to this member",
                    ));
                }
                let (partition, sequence) = self
                    .groups
                    .ack(&group, &request.member_id, request.sequence)
                    .instrument(span.clone())
                    .await
                    .map_err(|error| span.in_scope(|| grpc_status(&error)))?;
                v1::AckResponse {
                    sequence,
                    partition,
                }
            }
            None => {
                let consumer = consumer
                    .as_ref()
                    .ok_or_else(|| Status::internal("internal error"))?;
                let sequence = self
                    .cursors
                    .ack(consumer, request.sequence)
                    .instrument(span.clone())
                    .await
                    .map_err(|error| span.in_scope(|| grpc_status(&error)))?;
                v1::AckResponse {
                    sequence,
                    partition: 0,
                }
            }
        };
        self.metrics.acked(caller.name());
        Ok(Response::new(response))
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

fn parse_consumer(name: &str) -> Result<Option<ConsumerName>, Status> {
    if name.is_empty() {
        return Ok(None);
    }
    ConsumerName::parse(name)
        .map(Some)
        .map_err(|error| grpc_status(&error))
}

fn parse_group(name: &str) -> Result<Option<GroupName>, Status> {
    if name.is_empty() {
        return Ok(None);
    }
    GroupName::parse(name)
        .map(Some)
        .map_err(|error| grpc_status(&error))
}
