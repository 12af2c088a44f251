//! One subscription stream: reads the log from its own cursor, in batches, at the pace the
//! subscriber takes messages.
//!
//! Catch-up and the live tail are the same loop: the stream reads what is stored after its
//! cursor and, when there is nothing more, waits for the log's head to move. There is no handover
//! between a replay and a live feed, so there is no seam to lose or repeat an event at, and a slow
//! subscriber holds at most one batch in memory while the rest waits in the log.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures::Stream;
use opentelemetry::trace::TraceContextExt;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::filter::Filter;
use crate::{
    error::grpc_status,
    log::{ConsumerName, Sequence, SharedLog},
    metrics::{Metrics, StreamGuard},
    proto::v1::{self, subscribe_response::Response},
    telemetry,
};

/// Events read from the log at a time.
const BATCH: usize = 256;

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
    log: SharedLog,
    head: watch::Receiver<Sequence>,
    filter: Filter,
    /// Next sequence to read from the log.
    next: Sequence,
    /// Every sequence up to this one has been delivered or skipped.
    considered: Sequence,
    buffer: VecDeque<Arc<v1::Event>>,
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
    pub fn into_stream(self) -> impl Stream<Item = Result<v1::SubscribeResponse, Status>> + Send {
        let state = State {
            head: self.log.watch_head(),
            log: self.log,
            filter: self.filter,
            next: self.start.next,
            considered: self.start.next.saturating_sub(1),
            buffer: VecDeque::with_capacity(BATCH),
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
        futures::stream::unfold(state, |mut state| async move {
            let span = state.span.clone();
            let message = state.next_message().instrument(span).await?;
            state.last_sent = Instant::now();
            state.stream_metrics.considered(state.considered);
            Some((message, state))
        })
    }
}

impl State {
    async fn next_message(&mut self) -> Option<Result<v1::SubscribeResponse, Status>> {
        if self.finished {
            return None;
        }
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            while let Some(event) = self.buffer.pop_front() {
                self.considered = event.sequence;
                if self.filter.matches(&event) {
                    self.deliver(&event);
                    return Some(Ok(respond(Response::Event(Arc::unwrap_or_clone(event)))));
                }
                if self.last_sent.elapsed() >= self.heartbeat_interval {
                    return Some(Ok(self.heartbeat()));
                }
            }

            match self.log.read(self.next, BATCH).await {
                Ok(batch) if !batch.is_empty() => {
                    let first = batch[0].sequence;
                    let gap_before = self.skip_to(first);
                    if let Some(last) = batch.last() {
                        self.next = last.sequence + 1;
                    }
                    self.buffer.extend(batch);
                    match gap_before {
                        Some(gap) => return Some(Ok(gap)),
                        None => continue,
                    }
                }
                Ok(_) => {
                    // Nothing at or after `next`; retention may have removed everything up to
                    // a later first sequence.
                    let first = self.log.bounds().first;
                    if let Some(gap) = self.skip_to(first) {
                        return Some(Ok(gap));
                    }
                }
                Err(error) => {
                    self.finished = true;
                    return Some(Err(grpc_status(&error)));
                }
            }

            // Everything stored up to `next - 1` has been considered.
            self.considered = self.next.saturating_sub(1);
            if self.announce_caught_up {
                self.announce_caught_up = false;
                return Some(Ok(respond(Response::CaughtUp(v1::CaughtUp {
                    sequence: self.considered,
                }))));
            }

            let deadline = self.last_sent + self.heartbeat_interval;
            let next = self.next;
            let wake = tokio::select! {
                () = self.shutdown.cancelled() => Wake::Shutdown,
                () = tokio::time::sleep_until(deadline) => Wake::Heartbeat,
                changed = self.head.wait_for(|&head| head >= next) => {
                    // An error means the log was dropped: the gateway is going away.
                    if changed.is_ok() { Wake::NewEvents } else { Wake::Shutdown }
                }
            };
            match wake {
                Wake::Shutdown => return None,
                Wake::Heartbeat => return Some(Ok(self.heartbeat())),
                Wake::NewEvents => {}
            }
        }
    }

    /// Accounts for one delivered event: the metric, and (when traces are exported) a span in
    /// the event's own trace, child of its ingest span and linked to this `Subscribe` call.
    fn deliver(&self, event: &v1::Event) {
        self.metrics.delivered();
        if !self.trace_deliveries {
            return;
        }
        let span = tracing::info_span!(
            "deliver",
            otel.name = "send events",
            otel.kind = "producer",
            messaging.system = "incode-gateway",
            messaging.operation.type = "send",
            messaging.operation.name = "deliver",
            messaging.destination.name = "events",
            messaging.message.id = %event.id,
            messaging.consumer.group.name = self.consumer.as_ref().map(ConsumerName::as_str),
            incode_gateway.event.sequence = i64::try_from(event.sequence).unwrap_or(i64::MAX),
        );
        let ingest = telemetry::extract_from_map(&event.trace_context);
        if ingest.span().span_context().is_valid() {
            let _ = span.set_parent(ingest);
        }
        span.add_link(self.span.context().span().span_context().clone());
    }

    /// Moves the cursor to `first` when retention removed the events before it, and says so.
    fn skip_to(&mut self, first: Sequence) -> Option<v1::SubscribeResponse> {
        if first <= self.next {
            return None;
        }
        let gap = v1::Gap {
            first_sequence: self.next,
            last_sequence: first - 1,
        };
        tracing::warn!(
            first = gap.first_sequence,
            last = gap.last_sequence,
            "events removed by retention before delivery"
        );
        self.next = first;
        self.considered = first - 1;
        Some(respond(Response::Gap(gap)))
    }

    fn heartbeat(&self) -> v1::SubscribeResponse {
        respond(Response::Heartbeat(v1::Heartbeat {
            sequence: self.considered,
        }))
    }
}

enum Wake {
    Shutdown,
    Heartbeat,
    NewEvents,
}

fn respond(response: Response) -> v1::SubscribeResponse {
    v1::SubscribeResponse {
        response: Some(response),
    }
}
