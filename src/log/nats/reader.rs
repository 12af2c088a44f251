//! A reader of the NATS log: an ordered consumer started at the reader's position.
//!
//! The ordered consumer is ephemeral and flow-controlled, and recreates itself from the last
//! sequence it delivered when it notices a lost message or a lost server; this reader recreates
//! it too after any other failure, so a subscription outlives NATS outages and leader changes.
//! Each message says how many more are stored after it (`pending`), which gives `caught up`; a
//! jump in the stream sequence means retention removed what was skipped, which gives a gap.
//!
//! The reader does not rely on the ordered consumer alone to notice that it lost its way: after
//! a stream leader change the consumer can stay silent for most of a minute, without an error,
//! while the stream holds events past the reader's position. So a reader that has waited
//! [`STALL_CHECK`] twice in a row with nothing delivered while the stream's known head is beyond
//! it recreates its consumer from its own position.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{
    self,
    consumer::{DeliverPolicy, pull},
    stream::Stream,
};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use prost::Message;

use super::bounds_of;
use crate::{
    log::{LogError, LogReader, LoggedEvent, READ_BATCH, ReadItem, Sequence},
    proto::v1,
};

pub(super) struct NatsReader {
    stream: Stream<()>,
    /// The next sequence to read.
    next: Sequence,
    messages: Option<pull::Ordered>,
    /// What was read and not yet yielded, in order.
    out: VecDeque<Out>,
    /// Whether `CaughtUp` was yielded since the last events.
    drained: bool,
    /// Failures in a row, for the backoff before recreating the consumer.
    failures: u32,
    known_head: Arc<AtomicU64>,
    /// Waits of [`STALL_CHECK`] in a row that ended with nothing delivered while the known head
    /// was beyond `next`.
    silent_checks: u32,
    /// A known head that the stream itself contradicted when the consumer was recreated (it
    /// holds less): no reason to suspect a stall until the known head moves past it.
    contradicted_head: Sequence,
}

/// How long the reader waits for a message before it compares its position with the stream's
/// known head.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// Silent checks in a row, with the known head beyond the reader, after which its consumer is
/// taken as lost and recreated.
const STALL_CHECKS: u32 = 2;
/// The longest that creating a consumer may take. Each JetStream request has its own timeout,
/// but right after a node is lost the creation as a whole has been seen to hang for longer; the
/// reader then gives up on it and tries again.
const START_TIMEOUT: Duration = Duration::from_secs(3);

enum Out {
    Event(Arc<LoggedEvent>),
    Gap(Sequence, Sequence),
    CaughtUp(Sequence),
}

impl NatsReader {
    pub(super) fn new(stream: Stream<()>, from: Sequence, known_head: Arc<AtomicU64>) -> Self {
        Self {
            stream,
            next: from.max(1),
            messages: None,
            out: VecDeque::new(),
            drained: false,
            failures: 0,
            known_head,
            silent_checks: 0,
            contradicted_head: 0,
        }
    }

    /// Whether the stream is known to hold an event this reader has not been given.
    fn behind_known_head(&self) -> bool {
        let head = self.known_head.load(Ordering::Relaxed);
        head >= self.next && head > self.contradicted_head
    }

    /// Called when a wait of [`STALL_CHECK`] ended with nothing delivered: drops the consumer
    /// once it has been silent [`STALL_CHECKS`] times in a row while the stream holds more.
    fn on_silence(&mut self) {
        if !self.behind_known_head() {
            self.silent_checks = 0;
            return;
        }
        self.silent_checks += 1;
        if self.silent_checks >= STALL_CHECKS {
            tracing::info!(
                next = self.next,
                known_head = self.known_head.load(Ordering::Relaxed),
                "the JetStream consumer delivered nothing while the stream holds more; \
                 recreating it from the reader's position"
            );
            self.silent_checks = 0;
            self.messages = None;
        }
    }

    /// Creates the ordered consumer at `next`, after queueing a gap if retention removed it,
    /// or `CaughtUp` if nothing is stored from `next` on.
    async fn start(&mut self) -> Result<(), LogError> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(LogError::unavailable)?;
        let bounds = bounds_of(&info.state);
        let known_head = self.known_head.load(Ordering::Relaxed);
        if known_head > bounds.head {
            self.contradicted_head = known_head;
        }
        let consumer = self
            .stream
            .create_consumer(pull::OrderedConfig {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.next.max(bounds.first),
                },
                ..pull::OrderedConfig::default()
            })
            .await
            .map_err(LogError::unavailable)?;
        self.messages = Some(consumer.messages().await.map_err(LogError::unavailable)?);
        if self.next < bounds.first {
            self.out.push_back(Out::Gap(self.next, bounds.first - 1));
            self.next = bounds.first;
        }
        if self.next > bounds.head {
            self.out.push_back(Out::CaughtUp(self.next - 1));
        }
        Ok(())
    }

    /// Queues a delivered message's event, after a gap if the stream sequence jumped.
    fn accept(&mut self, message: &jetstream::Message) -> Result<(), LogError> {
        let info = message.info().map_err(LogError::unavailable)?;
        let sequence = info.stream_sequence;
        if sequence < self.next {
            // Delivered again by a recreated consumer.
            return Ok(());
        }
        let published = info.published;
        let received_at = prost_types::Timestamp {
            seconds: published.unix_timestamp(),
            nanos: i32::try_from(published.nanosecond()).unwrap_or(0),
        };
        let event = decode(sequence, &message.payload, received_at)?;
        self.known_head.fetch_max(sequence, Ordering::Relaxed);
        if sequence > self.next {
            self.out.push_back(Out::Gap(self.next, sequence - 1));
        }
        self.next = sequence + 1;
        self.out
            .push_back(Out::Event(Arc::new(LoggedEvent::new(event))));
        if info.pending == 0 {
            self.out.push_back(Out::CaughtUp(sequence));
        }
        Ok(())
    }

    /// The next item from what was read: a gap, a run of events, or `CaughtUp`.
    fn take_out(&mut self) -> Option<ReadItem> {
        loop {
            match self.out.pop_front()? {
                Out::Gap(first, last) => return Some(ReadItem::Gap { first, last }),
                Out::CaughtUp(sequence) => {
                    // Only once per run of stored events.
                    if !self.drained {
                        self.drained = true;
                        return Some(ReadItem::CaughtUp(sequence));
                    }
                }
                Out::Event(event) => {
                    let mut events = vec![event];
                    while events.len() < READ_BATCH
                        && let Some(Out::Event(_)) = self.out.front()
                    {
                        if let Some(Out::Event(event)) = self.out.pop_front() {
                            events.push(event);
                        }
                    }
                    self.drained = false;
                    return Some(ReadItem::Events(events));
                }
            }
        }
    }

    async fn back_off(&mut self, error: &LogError) {
        self.messages = None;
        self.failures = self.failures.saturating_add(1);
        let delay = Duration::from_millis(100 * u64::from(self.failures.min(20)));
        tracing::warn!(
            error = %crate::error::error_chain(error),
            retry_in = ?delay,
            "reading the JetStream stream failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

#[async_trait]
impl LogReader for NatsReader {
    async fn next(&mut self) -> Result<ReadItem, LogError> {
        loop {
            if let Some(item) = self.take_out() {
                return Ok(item);
            }
            if self.messages.is_none() {
                let started = tokio::time::timeout(START_TIMEOUT, self.start())
                    .await
                    .unwrap_or_else(|_elapsed| {
                        Err(LogError::unavailable(format!(
                            "creating the JetStream consumer took longer than {START_TIMEOUT:?}"
                        )))
                    });
                if let Err(error) = started {
                    self.back_off(&error).await;
                }
                continue;
            }
            let Some(messages) = self.messages.as_mut() else {
                continue;
            };
            // Wait for one message (cancel-safe), then take what else has arrived already.
            let first = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
                Ok(message) => message,
                Err(_elapsed) => {
                    self.on_silence();
                    continue;
                }
            };
            self.silent_checks = 0;
            let mut delivered = vec![first];
            while delivered.len() < READ_BATCH {
                match messages.next().now_or_never() {
                    Some(message) => delivered.push(message),
                    None => break,
                }
            }
            for message in delivered {
                let result = match message {
                    Some(Ok(message)) => self.accept(&message),
                    Some(Err(error)) => Err(LogError::unavailable(error)),
                    None => Err(LogError::unavailable("the ordered consumer ended")),
                };
                match result {
                    Ok(()) => self.failures = 0,
                    Err(error @ LogError::Corrupt { .. }) => return Err(error),
                    Err(error) => {
                        // What was accepted before the failure is still yielded; the consumer
                        // restarts after it and delivers the rest again.
                        self.back_off(&error).await;
                        break;
                    }
                }
            }
        }
    }
}

fn decode(
    sequence: Sequence,
    payload: &[u8],
    received_at: prost_types::Timestamp,
) -> Result<v1::Event, LogError> {
    let mut event = v1::Event::decode(payload).map_err(|source| LogError::Corrupt {
        sequence,
        source: source.into(),
    })?;
    event.sequence = sequence;
    event.received_at = Some(received_at);
    Ok(event)
}
