//! `EventStreamService`: resolves a subscription request against the log and hands it to a
//! [`Subscription`] stream.

use std::{
    pin::Pin,
    time::{Duration, SystemTime},
};

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    GrpcSettings, access,
    filter::Filter,
    subscription::{Start, Subscription},
};
use crate::{
    error::{ErrorCode, ServiceError, grpc_status},
    log::{ConsumerName, Cursors, InvalidConsumerName, LogError, SharedLog},
    metrics::Metrics,
    proto::v1::{self, event_stream_service_server::EventStreamService, start_position::Position},
    telemetry,
};

/// How far in the future a `since` may be before it is refused: clocks of different machines
/// disagree a little.
const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// The `EventStreamService` implementation.
pub struct EventStream {
    log: SharedLog,
    cursors: Cursors,
    metrics: Metrics,
    settings: GrpcSettings,
    shutdown: CancellationToken,
}

impl EventStream {
    /// Serves subscriptions over `log`; streams end when `shutdown` is cancelled.
    pub fn new(
        log: SharedLog,
        cursors: Cursors,
        metrics: Metrics,
        settings: GrpcSettings,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            log,
            cursors,
            metrics,
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

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<v1::SubscribeResponse, Status>> + Send>>;

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
        span.in_scope(|| access::authorize_subscribe(&caller, consumer.as_ref(), &self.metrics))?;
        let filter = Filter::try_from(request.filter.unwrap_or_default())
            .map_err(|error| grpc_status(&error))?;
        let position = request.start.and_then(|start| start.position);
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
        let _entered = span.enter();
        let caller = access::caller_of(&request)?;
        span.record("incode_gateway.subscriber", caller.name());
        let request = request.into_inner();
        let consumer = parse_consumer(&request.consumer)?
            .ok_or_else(|| Status::invalid_argument("consumer is required"))?;
        access::authorize_ack(&caller, &consumer, &self.metrics)?;
        let head = self
            .log
            .bounds()
            .await
            .map_err(|error| grpc_status(&error))?
            .head;
        if request.sequence > head {
            return Err(Status::out_of_range(format!(
                "sequence {} is beyond the newest stored event ({head})",
                request.sequence
            )));
        }
        let sequence = self
            .cursors
            .ack(&consumer, request.sequence)
            .await
            .map_err(|error| grpc_status(&error))?;
        self.metrics.acked(caller.name());
        Ok(Response::new(v1::AckResponse { sequence }))
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
