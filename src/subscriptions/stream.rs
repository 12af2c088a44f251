//! The one driver of every subscription stream, plain, durable or a group member's: follows the
//! log through its own [`LogReader`], at the pace the subscriber takes messages.
//!
//! Catch-up and the live tail are the same loop: the reader yields what is stored after its
//! position and then what is stored next, with no handover between a replay and a live feed, so
//! there is no seam to lose or repeat an event at, and a slow subscriber holds at most one batch
//! in memory while the rest waits in the log. The driver sends heartbeats when the stream is
//! quiet, reports gaps and `caught_up`, accounts for every delivery, and ends with `UNAVAILABLE`
//! on shutdown. What sets one kind of stream apart is a [`Strategy`]: [`Plain`] delivers what its
//! filter lets through; [`GroupMember`] delivers the events of the member's partitions, holds
//! back while the member has as many unacknowledged events as it may, and tells the member
//! whenever its partitions change.

use std::{collections::VecDeque, pin::Pin, sync::Arc, time::Duration};

use futures::Stream;
use opentelemetry::trace::TraceContextExt;
use tokio::{sync::futures::Notified, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{
    filter::Filter,
    groups::{Claim, Member, Session},
    names::ConsumerName,
    request::Start,
};
use crate::{
    error::{ErrorKind, ServiceError},
    log::{LogError, LogReader, LoggedEvent, ReadItem, Sequence, SharedLog},
    metrics::{Metrics, StreamGuard},
    proto::v1,
    telemetry,
};

/// What a subscription stream sends: the contents of a `SubscribeResponse`.
#[derive(Debug, Clone)]
pub enum StreamMessage {
    /// A stored event, shared with every other stream it goes to.
    Event(Arc<LoggedEvent>),
    /// Nothing to send for a while.
    Heartbeat(v1::Heartbeat),
    /// Retention removed events before the stream reached them.
    Gap(v1::Gap),
    /// The stored events are delivered; what comes next is new.
    CaughtUp(v1::CaughtUp),
    /// A group member's partitions.
    GroupAssignment(v1::GroupAssignment),
}

/// A subscription's messages, until it fails or the gateway shuts down. Dropping it releases
/// everything it holds (and a group member's partitions).
pub type SubscriptionStream =
    Pin<Box<dyn Stream<Item = Result<StreamMessage, StreamError>> + Send>>;

/// How streams behave.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// Longest silence on a stream before a heartbeat.
    pub heartbeat_interval: Duration,
    /// Whether to create a span for every event delivered (only worth it when traces are
    /// exported).
    pub trace_deliveries: bool,
}

/// How a stream ended early: its last item.
///
/// When the gateway stops, a stream ends with `UNAVAILABLE`, which gRPC clients retry, and a
/// text that says how to resume; that is expected, so not logged as a failure.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The gateway is stopping: the end of a plain or durable-consumer stream.
    #[error("the gateway is shutting down; resubscribe after the last sequence you processed")]
    ShuttingDown,
    /// The gateway is stopping: the end of a consumer group member's stream.
    #[error("the gateway is shutting down; subscribe to the group again")]
    GroupMemberShuttingDown,
    /// The log failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl StreamError {
    /// The log's failure; `None` when the gateway is stopping.
    fn log_error(&self) -> Option<&LogError> {
        match self {
            Self::Log(error) => Some(error),
            Self::ShuttingDown | Self::GroupMemberShuttingDown => None,
        }
    }
}

impl ServiceError for StreamError {
    fn kind(&self) -> ErrorKind {
        self.log_error()
            .map_or(ErrorKind::Unavailable, ServiceError::kind)
    }

    fn code(&self) -> &'static str {
        self.log_error().map_or("shutting_down", ServiceError::code)
    }

    /// Shutting down is told as it is: how to resume is the point.
    fn public_message(&self) -> std::borrow::Cow<'_, str> {
        match self.log_error() {
            Some(error) => error.public_message(),
            None => self.to_string().into(),
        }
    }

    fn is_failure(&self) -> bool {
        self.log_error().is_some_and(ServiceError::is_failure)
    }
}

/// What every stream is given, whatever it delivers.
pub(super) struct StreamContext {
    /// The log to read.
    pub log: SharedLog,
    /// Heartbeats and delivery spans.
    pub settings: StreamSettings,
    /// Ends the stream when cancelled.
    pub shutdown: CancellationToken,
    /// Counts deliveries.
    pub metrics: Metrics,
    /// This stream's registration, for the lag gauge.
    pub stream_metrics: StreamGuard,
    /// The `Subscribe` server span; delivery spans link to it.
    pub span: tracing::Span,
}

/// What a stream does with an event read from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Decision {
    /// Send it.
    Deliver,
    /// Pass it by: not for this stream.
    Skip,
    /// Not now: wait (for [`Strategy::session`] to change) and decide again.
    Hold,
}

/// A message a [`Strategy`] sends before anything else.
pub(super) struct News {
    /// The message.
    pub message: StreamMessage,
    /// Where to read the log again from, if that is before the stream's position.
    pub read_again_from: Option<Sequence>,
}

/// What sets one kind of stream apart.
pub(super) trait Strategy: Send + 'static {
    /// What to do with the next event read.
    fn decide(&mut self, event: &v1::Event) -> Decision;

    /// What must be sent before the next event, if anything.
    fn news(&mut self) -> Option<News>;

    /// The session whose changes wake the stream: a group member's. `None` when only the log
    /// and the clock do.
    fn session(&self) -> Option<Arc<Session>>;

    /// The durable consumer or consumer group the stream belongs to, for delivery spans.
    fn name(&self) -> Option<&str>;

    /// Logs that retention removed `first..=last` before the stream reached them.
    fn warn_gap(&self, first: Sequence, last: Sequence);

    /// How the stream ends when the gateway shuts down.
    fn shutting_down(&self) -> StreamError;
}

/// A plain or durable consumer's stream: every event its filter lets through.
pub(super) struct Plain {
    filter: Filter,
    consumer: Option<ConsumerName>,
}

impl Strategy for Plain {
    fn decide(&mut self, event: &v1::Event) -> Decision {
        if self.filter.matches(event) {
            Decision::Deliver
        } else {
            Decision::Skip
        }
    }

    fn news(&mut self) -> Option<News> {
        None
    }

    fn session(&self) -> Option<Arc<Session>> {
        None
    }

    fn name(&self) -> Option<&str> {
        self.consumer.as_ref().map(ConsumerName::as_str)
    }

    fn warn_gap(&self, first: Sequence, last: Sequence) {
        tracing::warn!(first, last, "events removed by retention before delivery");
    }

    fn shutting_down(&self) -> StreamError {
        StreamError::ShuttingDown
    }
}

/// A consumer group member's stream: the events of the partitions it owns, in sequence order,
/// as many unacknowledged at a time as it may hold, and its assignment whenever it changes.
pub(super) struct GroupMember {
    /// The member; dropping the stream drops it, which lets go of its partitions.
    member: Member,
    /// The assignment generation last sent.
    announced: Option<u64>,
}

impl Strategy for GroupMember {
    fn decide(&mut self, event: &v1::Event) -> Decision {
        match self.member.session().claim(event) {
            Claim::Deliver { .. } => Decision::Deliver,
            Claim::Skip => Decision::Skip,
            Claim::Full => Decision::Hold,
        }
    }

    fn news(&mut self) -> Option<News> {
        let session = self.member.session();
        if self.announced == Some(session.generation()) {
            return None;
        }
        // Gained partitions resume after their cursors: the stream reads again from there, and
        // what was sent already is skipped by the claims.
        let read_again_from = session.take_rewind();
        let (generation, assignment) = session.assignment();
        self.announced = Some(generation);
        Some(News {
            message: StreamMessage::GroupAssignment(assignment),
            read_again_from,
        })
    }

    fn session(&self) -> Option<Arc<Session>> {
        Some(self.member.session().clone())
    }

    fn name(&self) -> Option<&str> {
        Some(self.member.session().group().as_str())
    }

    fn warn_gap(&self, first: Sequence, last: Sequence) {
        tracing::warn!(
            first,
            last,
            "events removed by retention before the group processed them"
        );
    }

    fn shutting_down(&self) -> StreamError {
        StreamError::GroupMemberShuttingDown
    }
}

/// One stream's state.
pub(super) struct Driver<S> {
    strategy: S,
    log: SharedLog,
    /// `None` until the first read, and after the group member's stream must read again.
    reader: Option<Box<dyn LogReader>>,
    /// Every sequence up to this one has been delivered or skipped.
    considered: Sequence,
    /// The rest of the last batch read; empty between batches.
    buffer: VecDeque<Arc<LoggedEvent>>,
    announce_caught_up: bool,
    heartbeat_interval: Duration,
    trace_deliveries: bool,
    last_sent: Instant,
    shutdown: CancellationToken,
    finished: bool,
    metrics: Metrics,
    stream_metrics: StreamGuard,
    span: tracing::Span,
}

impl Driver<Plain> {
    /// A plain stream from `start`, or a durable consumer's, of the events `filter` lets
    /// through. Its reader is opened now, so that a log that cannot be read refuses the call.
    pub(super) async fn plain(
        context: StreamContext,
        start: Start,
        filter: Filter,
        consumer: Option<ConsumerName>,
    ) -> Result<Self, LogError> {
        let reader = context.log.read_from(start.next).await?;
        let considered = start.next.saturating_sub(1);
        // Everything before the start counts as considered from the outset: a stream that
        // starts at the tail is not lagging until its first message.
        context.stream_metrics.considered(considered);
        let strategy = Plain { filter, consumer };
        Ok(Self::new(
            context,
            strategy,
            Some(reader),
            considered,
            start.announce_caught_up,
        ))
    }
}

impl Driver<GroupMember> {
    /// The stream of a group member, from where its partitions resume.
    pub(super) fn group_member(context: StreamContext, member: Member) -> Self {
        let considered = member.session().resume_from().saturating_sub(1);
        let strategy = GroupMember {
            member,
            announced: None,
        };
        Self::new(context, strategy, None, considered, true)
    }
}

impl<S: Strategy> Driver<S> {
    fn new(
        context: StreamContext,
        strategy: S,
        reader: Option<Box<dyn LogReader>>,
        considered: Sequence,
        announce_caught_up: bool,
    ) -> Self {
        Self {
            strategy,
            log: context.log,
            reader,
            considered,
            buffer: VecDeque::new(),
            announce_caught_up,
            heartbeat_interval: context.settings.heartbeat_interval,
            trace_deliveries: context.settings.trace_deliveries,
            last_sent: Instant::now(),
            shutdown: context.shutdown,
            finished: false,
            metrics: context.metrics,
            stream_metrics: context.stream_metrics,
            span: context.span,
        }
    }

    /// The stream's messages.
    pub(super) fn into_stream(self) -> SubscriptionStream {
        Box::pin(futures::stream::unfold(self, |mut driver| async move {
            // Entering the span costs on every message; only when it is recorded is that worth it.
            let message = if driver.span.is_disabled() {
                driver.next_message().await?
            } else {
                let span = driver.span.clone();
                driver.next_message().instrument(span).await?
            };
            driver.last_sent = Instant::now();
            driver.stream_metrics.considered(driver.considered);
            Some((message, driver))
        }))
    }

    async fn next_message(&mut self) -> Option<Result<StreamMessage, StreamError>> {
        if self.finished {
            return None;
        }
        loop {
            if self.shutdown.is_cancelled() {
                return self.end_for_shutdown();
            }
            // Armed before looking at the state, so that no change is missed in between.
            let session = self.strategy.session();
            let changed = session.as_deref().map(Session::changed);
            tokio::pin!(changed);
            if let Some(changed) = changed.as_mut().as_pin_mut() {
                changed.enable();
            }

            if let Some(news) = self.strategy.news() {
                if let Some(from) = news.read_again_from
                    && from <= self.considered
                {
                    self.considered = from.saturating_sub(1);
                    self.reader = None;
                    self.buffer.clear();
                }
                return Some(Ok(news.message));
            }

            let mut hold = false;
            while let Some(event) = self.buffer.front() {
                let sequence = event.sequence;
                match self.strategy.decide(event) {
                    Decision::Hold => {
                        hold = true;
                        break;
                    }
                    Decision::Skip => {
                        self.considered = sequence;
                        self.buffer.pop_front();
                        if self.last_sent.elapsed() >= self.heartbeat_interval {
                            return Some(Ok(self.heartbeat()));
                        }
                    }
                    Decision::Deliver => {
                        self.considered = sequence;
                        let Some(event) = self.buffer.pop_front() else {
                            break;
                        };
                        self.deliver(&event);
                        return Some(Ok(StreamMessage::Event(event)));
                    }
                }
            }

            let deadline = self.last_sent + self.heartbeat_interval;
            if hold {
                // Wait for acks (or a new assignment) without reading further.
                tokio::select! {
                    () = self.shutdown.cancelled() => return self.end_for_shutdown(),
                    () = tokio::time::sleep_until(deadline) => return Some(Ok(self.heartbeat())),
                    () = change(changed.as_mut().as_pin_mut()) => continue,
                }
            }
            if self.reader.is_none() {
                match self.log.read_from(self.considered + 1).await {
                    Ok(reader) => self.reader = Some(reader),
                    Err(error) => return self.fail(error),
                }
            }
            let Some(reader) = self.reader.as_mut() else {
                continue;
            };
            let read = tokio::select! {
                () = self.shutdown.cancelled() => return self.end_for_shutdown(),
                () = tokio::time::sleep_until(deadline) => return Some(Ok(self.heartbeat())),
                () = change(changed.as_mut().as_pin_mut()) => continue,
                read = reader.next() => read,
            };
            match read {
                Ok(ReadItem::Events(events)) => self.buffer = events.into(),
                Ok(ReadItem::Gap { first, last }) => {
                    self.strategy.warn_gap(first, last);
                    self.considered = last;
                    return Some(Ok(StreamMessage::Gap(v1::Gap {
                        first_sequence: first,
                        last_sequence: last,
                    })));
                }
                Ok(ReadItem::CaughtUp(sequence)) => {
                    self.considered = self.considered.max(sequence);
                    if self.announce_caught_up {
                        self.announce_caught_up = false;
                        return Some(Ok(StreamMessage::CaughtUp(v1::CaughtUp {
                            sequence: self.considered,
                        })));
                    }
                }
                Err(error) => return self.fail(error),
            }
        }
    }

    /// On shutdown the stream ends with `UNAVAILABLE`, which gRPC clients retry (elsewhere),
    /// resuming from the last sequence they saw or joining their group again.
    fn end_for_shutdown(&mut self) -> Option<Result<StreamMessage, StreamError>> {
        self.finished = true;
        Some(Err(self.strategy.shutting_down()))
    }

    fn fail(&mut self, error: LogError) -> Option<Result<StreamMessage, StreamError>> {
        self.finished = true;
        Some(Err(error.into()))
    }

    /// Accounts for one delivered event: the metric, and (when traces are exported) its
    /// delivery span.
    fn deliver(&self, event: &v1::Event) {
        self.metrics.delivered();
        if self.trace_deliveries {
            trace_delivery(event, self.strategy.name(), &self.span);
        }
    }

    fn heartbeat(&self) -> StreamMessage {
        StreamMessage::Heartbeat(v1::Heartbeat {
            sequence: self.considered,
        })
    }
}

/// Completes when the session changes; never without a session.
async fn change(changed: Option<Pin<&mut Notified<'_>>>) {
    match changed {
        Some(changed) => changed.await,
        None => std::future::pending().await,
    }
}

/// Records the delivery of `event` on a stream of the durable consumer or group `consumer` (if
/// any): a span in the event's own trace, child of its ingest span, and linked to the stream's
/// `Subscribe` span (its parent instead when the event carries no trace context).
fn trace_delivery(event: &v1::Event, consumer: Option<&str>, subscribe: &tracing::Span) {
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
