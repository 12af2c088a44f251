//! One subscription stream: follows the log through its own [`LogReader`], at the pace the
//! subscriber takes messages.
//!
//! Catch-up and the live tail are the same loop: the reader yields what is stored after its
//! position and then what is stored next, with no handover between a replay and a live feed, so
//! there is no seam to lose or repeat an event at, and a slow subscriber holds at most one batch
//! in memory while the rest waits in the log.

use std::{sync::Arc, time::Duration};

use futures::Stream;
use opentelemetry::trace::TraceContextExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{encoded::EncodedResponse, error::ShuttingDown};
use crate::{
    error::grpc_status,
    log::{LogError, LogReader, LoggedEvent, ReadItem, Sequence, SharedLog},
    metrics::{Metrics, StreamGuard},
    proto::v1::{self, subscribe_response::Response},
    subscriptions::{ConsumerName, Filter},
    telemetry,
};

/// Where a subscription starts, resolved against the log.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// The first sequence to read.
    pub next: Sequence,
    /// Whether to send `caught_up` once the stored events are delivered.
    pub announce_caught_up: bool,
}

/// A subscription's parameters.
pub struct Subscription {
    /// The log to read.
    pub log: SharedLog,
    /// Where to start.
    pub start: Start,
    /// Which events to deliver.
    pub filter: Filter,
    /// Longest silence before a heartbeat.
    pub heartbeat_interval: Duration,
    /// Ends the stream when cancelled.
    pub shutdown: CancellationToken,
    /// Counts deliveries.
    pub metrics: Metrics,
    /// This stream's registration, for the lag gauge.
    pub stream_metrics: StreamGuard,
    /// The durable consumer, if the subscriber named one.
    pub consumer: Option<ConsumerName>,
    /// The `Subscribe` server span; delivery spans link to it.
    pub span: tracing::Span,
    /// Whether to create a span per delivered event.
    pub trace_deliveries: bool,
}

struct State {
    reader: Box<dyn LogReader>,
    filter: Filter,
    /// Every sequence up to this one has been delivered or skipped.
    considered: Sequence,
    /// The rest of the last batch read; empty (and holding no memory) between batches.
    buffer: std::vec::IntoIter<Arc<LoggedEvent>>,
    announce_caught_up: bool,
    heartbeat_interval: Duration,
    last_sent: Instant,
    shutdown: CancellationToken,
    finished: bool,
    metrics: Metrics,
    stream_metrics: StreamGuard,
    consumer: Option<ConsumerName>,
    span: tracing::Span,
    trace_deliveries: bool,
}

impl Subscription {
    /// The stream of messages for this subscription. Dropping it releases everything it holds.
    pub async fn into_stream(
        self,
    ) -> Result<impl Stream<Item = Result<EncodedResponse, Status>> + Send, LogError> {
        let reader = self.log.read_from(self.start.next).await?;
        let state = State {
            reader,
            filter: self.filter,
            considered: self.start.next.saturating_sub(1),
            buffer: Vec::new().into_iter(),
            announce_caught_up: self.start.announce_caught_up,
            heartbeat_interval: self.heartbeat_interval,
            last_sent: Instant::now(),
            shutdown: self.shutdown,
            finished: false,
            metrics: self.metrics,
            stream_metrics: self.stream_metrics,
            consumer: self.consumer,
            span: self.span,
            trace_deliveries: self.trace_deliveries,
        };
        // Everything before the start counts as considered from the outset: a stream that
        // starts at the tail is not lagging until its first message.
        state.stream_metrics.considered(state.considered);
        Ok(futures::stream::unfold(state, |mut state| async move {
            // Entering the span costs on every message; only when it is recorded is that worth it.
            let message = if state.span.is_disabled() {
                state.next_message().await?
            } else {
                let span = state.span.clone();
                state.next_message().instrument(span).await?
            };
            state.last_sent = Instant::now();
            state.stream_metrics.considered(state.considered);
            Some((message, state))
        }))
    }
}

impl State {
    async fn next_message(&mut self) -> Option<Result<EncodedResponse, Status>> {
        if self.finished {
            return None;
        }
        loop {
            while let Some(event) = self.buffer.next() {
                self.considered = event.sequence;
                if self.filter.matches(&event) {
                    self.deliver(&event);
                    return Some(Ok(EncodedResponse::event(&event)));
                }
                if self.last_sent.elapsed() >= self.heartbeat_interval {
                    return Some(Ok(self.heartbeat()));
                }
            }

            // Between batches: a stream replaying a long backlog still ends promptly.
            if self.shutdown.is_cancelled() {
                return self.end_for_shutdown();
            }
            let deadline = self.last_sent + self.heartbeat_interval;
            let read = tokio::select! {
                () = self.shutdown.cancelled() => return self.end_for_shutdown(),
                () = tokio::time::sleep_until(deadline) => return Some(Ok(self.heartbeat())),
                read = self.reader.next() => read,
            };
            match read {
                Ok(ReadItem::Events(events)) => self.buffer = events.into_iter(),
                Ok(ReadItem::Gap { first, last }) => {
                    tracing::warn!(first, last, "events removed by retention before delivery");
                    self.considered = last;
                    return Some(Ok(respond(Response::Gap(v1::Gap {
                        first_sequence: first,
                        last_sequence: last,
                    }))));
                }
                Ok(ReadItem::CaughtUp(sequence)) => {
                    self.considered = self.considered.max(sequence);
                    if self.announce_caught_up {
                        self.announce_caught_up = false;
                        return Some(Ok(respond(Response::CaughtUp(v1::CaughtUp {
                            sequence: self.considered,
                        }))));
                    }
                }
                Err(error) => {
                    self.finished = true;
                    return Some(Err(grpc_status(&error)));
                }
            }
        }
    }

    /// On shutdown the stream ends with `UNAVAILABLE`, which gRPC clients retry (elsewhere),
    /// resuming from the last sequence they saw.
    fn end_for_shutdown(&mut self) -> Option<Result<EncodedResponse, Status>> {
        self.finished = true;
        Some(Err(grpc_status(&ShuttingDown::Stream)))
    }

    /// Accounts for one delivered event: the metric, and (when traces are exported) its
    /// delivery span.
    fn deliver(&self, event: &v1::Event) {
        self.metrics.delivered();
        if self.trace_deliveries {
            trace_delivery(
                event,
                self.consumer.as_ref().map(ConsumerName::as_str),
                &self.span,
            );
        }
    }

    fn heartbeat(&self) -> EncodedResponse {
        respond(Response::Heartbeat(v1::Heartbeat {
            sequence: self.considered,
        }))
    }
}

fn respond(response: Response) -> EncodedResponse {
    EncodedResponse::message(response)
}

/// Records the delivery of `event` on a stream of the durable consumer or group `consumer` (if
/// any): a span in the event's own trace, child of its ingest span, and linked to the stream's
/// `Subscribe` span (its parent instead when the event carries no trace context).
pub(super) fn trace_delivery(event: &v1::Event, consumer: Option<&str>, subscribe: &tracing::Span) {
    let span = tracing::info_span!(
        "deliver",
        otel.name = "send events",
        otel.kind = "producer",
        messaging.system = "incode-gateway",
        messaging.operation.type = "send",
        messaging.operation.name = "deliver",
        messaging.destination.name = "events",
        messaging.message.id = %event.id,
        messaging.consumer.group.name = consumer,
        incode_gateway.event.sequence = i64::try_from(event.sequence).unwrap_or(i64::MAX),
    );
    let ingest = telemetry::extract_from_map(&event.trace_context);
    if ingest.span().span_context().is_valid() {
        let _ = span.set_parent(ingest);
    }
    span.add_link(subscribe.context().span().span_context().clone());
}

#[cfg(test)]
mod tests;
