//! A consumer group member's stream: reads the log through its own reader, sends the events of
//! the partitions the member owns, in sequence order, holds back while the member has as many
//! unacknowledged events as it may, and tells the member whenever its partitions change.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use futures::Stream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use super::{encoded::EncodedResponse, error::ShuttingDown, subscription::trace_delivery};
use crate::{
    error::grpc_status,
    log::{LogReader, LoggedEvent, ReadItem, Sequence, SharedLog},
    metrics::{Metrics, StreamGuard},
    proto::v1::{self, subscribe_response::Response},
    subscriptions::groups::{Claim, Member},
};

/// A member's stream parameters.
pub struct GroupSubscription {
    /// The log to read.
    pub log: SharedLog,
    /// The member; dropping the stream drops it, which lets go of its partitions.
    pub member: Member,
    /// Longest silence before a heartbeat.
    pub heartbeat_interval: Duration,
    /// Ends the stream when cancelled.
    pub shutdown: CancellationToken,
    /// Counts deliveries.
    pub metrics: Metrics,
    /// This stream's registration.
    pub stream_metrics: StreamGuard,
    /// The `Subscribe` span; delivery spans link to it.
    pub span: tracing::Span,
    /// Whether to create a span per delivered event.
    pub trace_deliveries: bool,
}

struct State {
    log: SharedLog,
    member: Member,
    reader: Option<Box<dyn LogReader>>,
    /// The next sequence to look at.
    position: Sequence,
    buffer: VecDeque<Arc<LoggedEvent>>,
    /// The assignment generation last sent.
    announced: Option<u64>,
    announce_caught_up: bool,
    heartbeat_interval: Duration,
    last_sent: Instant,
    shutdown: CancellationToken,
    finished: bool,
    metrics: Metrics,
    stream_metrics: StreamGuard,
    span: tracing::Span,
    trace_deliveries: bool,
}

impl GroupSubscription {
    /// The member's stream of messages.
    pub fn into_stream(self) -> impl Stream<Item = Result<EncodedResponse, Status>> + Send {
        let position = self.member.session().resume_from();
        let state = State {
            log: self.log,
            member: self.member,
            reader: None,
            position,
            buffer: VecDeque::new(),
            announced: None,
            announce_caught_up: true,
            heartbeat_interval: self.heartbeat_interval,
            last_sent: Instant::now(),
            shutdown: self.shutdown,
            finished: false,
            metrics: self.metrics,
            stream_metrics: self.stream_metrics,
            span: self.span,
            trace_deliveries: self.trace_deliveries,
        };
        futures::stream::unfold(state, |mut state| async move {
            let span = state.span.clone();
            let message = state.next_message().instrument(span).await?;
            state.last_sent = Instant::now();
            state
                .stream_metrics
                .considered(state.position.saturating_sub(1));
            Some((message, state))
        })
    }
}

impl State {
    async fn next_message(&mut self) -> Option<Result<EncodedResponse, Status>> {
        if self.finished {
            return None;
        }
        loop {
            if self.shutdown.is_cancelled() {
                return self.end_for_shutdown();
            }
            let session = self.member.session().clone();
            // Armed before looking at the state, so that no change is missed in between.
            let changed = session.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();

            if self.announced != Some(session.generation()) {
                if let Some(from) = session.take_rewind()
                    && from < self.position
                {
                    // Gained partitions resume after their cursors: read again from there;
                    // what was sent already is skipped by the claims.
                    self.position = from;
                    self.reader = None;
                    self.buffer.clear();
                }
                let (generation, assignment) = session.assignment();
                self.announced = Some(generation);
                return Some(Ok(respond(Response::GroupAssignment(assignment))));
            }

            let mut full = false;
            while let Some(event) = self.buffer.front() {
                match session.claim(event) {
                    Claim::Full => {
                        full = true;
                        break;
                    }
                    Claim::Skip => {
                        self.position = event.sequence + 1;
                        self.buffer.pop_front();
                    }
                    Claim::Deliver { .. } => {
                        self.position = event.sequence + 1;
                        let Some(event) = self.buffer.pop_front() else {
                            break;
                        };
                        self.metrics.delivered();
                        if self.trace_deliveries {
                            trace_delivery(&event, Some(session.group().as_str()), &self.span);
                        }
                        return Some(Ok(EncodedResponse::event(&event)));
                    }
                }
            }

            let deadline = self.last_sent + self.heartbeat_interval;
            if full {
                // Wait for acks (or a new assignment) without reading further.
                tokio::select! {
                    () = self.shutdown.cancelled() => return self.end_for_shutdown(),
                    () = tokio::time::sleep_until(deadline) => return Some(Ok(self.heartbeat())),
                    () = &mut changed => continue,
                }
            }

            if self.reader.is_none() {
                match self.log.read_from(self.position).await {
                    Ok(reader) => self.reader = Some(reader),
                    Err(error) => {
                        self.finished = true;
                        return Some(Err(grpc_status(&error)));
                    }
                }
            }
            let Some(reader) = self.reader.as_mut() else {
                continue;
            };
            let read = tokio::select! {
                () = self.shutdown.cancelled() => return self.end_for_shutdown(),
                () = tokio::time::sleep_until(deadline) => return Some(Ok(self.heartbeat())),
                () = &mut changed => continue,
                read = reader.next() => read,
            };
            match read {
                Ok(ReadItem::Events(events)) => self.buffer.extend(events),
                Ok(ReadItem::Gap { first, last }) => {
                    self.position = last + 1;
                    tracing::warn!(
                        first,
                        last,
                        "events removed by retention before the group processed them"
                    );
                    return Some(Ok(respond(Response::Gap(v1::Gap {
                        first_sequence: first,
                        last_sequence: last,
                    }))));
                }
                Ok(ReadItem::CaughtUp(sequence)) => {
                    if self.announce_caught_up {
                        self.announce_caught_up = false;
                        return Some(Ok(respond(Response::CaughtUp(v1::CaughtUp { sequence }))));
                    }
                }
                Err(error) => {
                    self.finished = true;
                    return Some(Err(grpc_status(&error)));
                }
            }
        }
    }

    fn end_for_shutdown(&mut self) -> Option<Result<EncodedResponse, Status>> {
        self.finished = true;
        Some(Err(grpc_status(&ShuttingDown::GroupMember)))
    }

    fn heartbeat(&self) -> EncodedResponse {
        respond(Response::Heartbeat(v1::Heartbeat {
            sequence: self.position.saturating_sub(1),
        }))
    }
}

fn respond(response: Response) -> EncodedResponse {
    EncodedResponse::message(response)
}
