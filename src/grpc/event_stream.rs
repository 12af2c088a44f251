//! `EventStreamService`: authorises each call for the caller the access guard authenticated,
//! hands it to [`Subscriptions`], and carries the answer back: a stream's messages in wire form,
//! an error as its status.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    GrpcSettings, access,
    encoded::{EncodedResponse, server::event_stream_service_server::EventStreamService},
    error::RpcError,
};
use crate::{
    error::grpc_status,
    log::{Readiness, SharedLog},
    metrics::Metrics,
    proto::v1,
    subscriptions::{
        AckTarget, Cursors, RequestError, StreamSettings, StreamTarget, Subscriptions,
        groups::{GroupError, Groups},
    },
    telemetry,
};

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
    subscriptions: Subscriptions,
    metrics: Metrics,
}

impl EventStream {
    /// Serves subscriptions from `sources`; streams end when `shutdown` is cancelled.
    pub fn new(sources: Sources, settings: GrpcSettings, shutdown: CancellationToken) -> Self {
        let stream_settings = StreamSettings {
            heartbeat_interval: settings.heartbeat_interval,
            trace_deliveries: settings.trace_deliveries,
        };
        Self {
            subscriptions: Subscriptions {
                log: sources.log,
                cursors: sources.cursors,
                groups: sources.groups,
                metrics: sources.metrics.clone(),
                settings: stream_settings,
                shutdown,
            },
            metrics: sources.metrics,
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

impl EventStream {
    async fn open_stream(
        &self,
        request: Request<v1::SubscribeRequest>,
        span: &tracing::Span,
    ) -> Result<SubscribeStream, RpcError> {
        let caller = caller_of(&request, span)?;
        let request = request.into_inner();
        let target = StreamTarget::of(&request)?;
        span.in_scope(|| access::authorize_subscribe(&caller, target.name(), &self.metrics))?;
        let stream = self
            .subscriptions
            .subscribe(target, request, &caller.identity(), span)
            .instrument(span.clone())
            .await?;
        let span = span.clone();
        Ok(Box::pin(stream.map(move |message| {
            message
                .map(EncodedResponse::from)
                .map_err(|error| span.in_scope(|| grpc_status(&error)))
        })))
    }

    async fn acknowledge(
        &self,
        request: Request<v1::AckRequest>,
        span: &tracing::Span,
    ) -> Result<v1::AckResponse, RpcError> {
        let caller = caller_of(&request, span)?;
        let request = request.into_inner();
        let target = AckTarget::of(&request)?;
        span.in_scope(|| access::authorize_ack(&caller, target.name(), &self.metrics))?;
        let response = self
            .subscriptions
            .ack(target, &request, &caller.identity())
            .instrument(span.clone())
            .await
            .inspect_err(|error| {
                if let RequestError::Group(error @ GroupError::NotMember { .. }) = error {
                    span.in_scope(|| access::refused_ack(&caller, error, &self.metrics));
                }
            })?;
        Ok(response)
    }
}

/// Who made the call, as the access guard authenticated it; recorded in the rpc's span.
fn caller_of<T>(request: &Request<T>, span: &tracing::Span) -> Result<access::Caller, RpcError> {
    let caller = access::caller_of(request).ok_or(RpcError::NoCaller)?;
    span.record("incode_gateway.subscriber", caller.name());
    Ok(caller)
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
