//! The stream driver over a memory log, with the clock paused so that heartbeats come when
//! the loop says, not when a machine gets round to it.

use std::time::Duration;

use futures::StreamExt;
use tonic::Code;

use super::*;
use crate::{
    error::grpc_status,
    log::{
        AppendOutcome, Bounds, DedupKey, EventLog, LogError, MemoryLog, NewEvent,
        memory::MemorySettings,
    },
    proto::v1::event::Payload,
};

const HEARTBEAT: Duration = Duration::from_secs(5);

fn memory_log(max_events: Option<u64>) -> Arc<MemoryLog> {
    Arc::new(MemoryLog::new(MemorySettings {
        max_events,
        ..MemorySettings::new(Duration::from_secs(60))
    }))
}

async fn append(log: &MemoryLog, interview_id: &str) {
    let event = v1::Event {
        r#type: v1::EventType::WatchlistUpdated.into(),
        payload: Some(Payload::WatchlistUpdated(v1::WatchlistUpdated {
            interview_id: interview_id.into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let new = NewEvent {
        // Distinct for every append, whatever the id.
        dedup_key: DedupKey::for_notification(interview_id, &log.known_head().to_be_bytes()),
        event,
    };
    let outcome = log.append(new).await.unwrap();
    assert!(matches!(outcome, AppendOutcome::Appended(_)), "{outcome:?}");
}

fn filter_for(interview_ids: &[&str]) -> Filter {
    Filter::try_from(v1::EventFilter {
        interview_ids: interview_ids.iter().map(|id| (*id).to_owned()).collect(),
        ..Default::default()
    })
    .unwrap()
}

struct Stopped(CancellationToken);

async fn open(log: SharedLog, start: Start, filter: Filter) -> (SubscriptionStream, Stopped) {
    let shutdown = CancellationToken::new();
    let metrics = Metrics::new(log.clone(), false).unwrap();
    let context = StreamContext {
        log,
        settings: StreamSettings {
            heartbeat_interval: HEARTBEAT,
            trace_deliveries: false,
        },
        shutdown: shutdown.clone(),
        stream_metrics: metrics.stream_opened("test", None),
        metrics,
        span: tracing::Span::none(),
    };
    let driver = Driver::plain(context, start, filter, None).await.unwrap();
    (driver.into_stream(), Stopped(shutdown))
}

fn from(next: Sequence, announce_caught_up: bool) -> Start {
    Start {
        next,
        announce_caught_up,
    }
}

/// What a subscriber reads, in short.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Event(Sequence, String),
    Heartbeat(Sequence),
    CaughtUp(Sequence),
    Gap(Sequence, Sequence),
}

async fn next(stream: &mut SubscriptionStream) -> Seen {
    let message = stream.next().await.expect("the stream ended").unwrap();
    match message {
        StreamMessage::Event(event) => {
            let Some(Payload::WatchlistUpdated(payload)) = &event.payload else {
                panic!("{event:?}");
            };
            Seen::Event(event.sequence, payload.interview_id.clone())
        }
        StreamMessage::Heartbeat(heartbeat) => Seen::Heartbeat(heartbeat.sequence),
        StreamMessage::CaughtUp(caught_up) => Seen::CaughtUp(caught_up.sequence),
        StreamMessage::Gap(gap) => Seen::Gap(gap.first_sequence, gap.last_sequence),
        other => panic!("unexpected {other:?}"),
    }
}

fn event(sequence: Sequence, interview_id: &str) -> Seen {
    Seen::Event(sequence, interview_id.to_owned())
}

#[tokio::test(start_paused = true)]
async fn stored_then_live_events_come_in_order_with_caught_up_once() {
    let log = memory_log(None);
    for id in ["a", "b", "c"] {
        append(&log, id).await;
    }
    let (mut stream, _stop) = open(log.clone(), from(2, true), Filter::default()).await;
    assert_eq!(next(&mut stream).await, event(2, "b"));
    assert_eq!(next(&mut stream).await, event(3, "c"));
    assert_eq!(next(&mut stream).await, Seen::CaughtUp(3));
    append(&log, "d").await;
    assert_eq!(next(&mut stream).await, event(4, "d"));
    // Caught up again, silently: only a heartbeat breaks the silence.
    let before = tokio::time::Instant::now();
    assert_eq!(next(&mut stream).await, Seen::Heartbeat(4));
    assert_eq!(before.elapsed(), HEARTBEAT);
    append(&log, "e").await;
    assert_eq!(next(&mut stream).await, event(5, "e"));
}

#[tokio::test(start_paused = true)]
async fn a_stream_from_the_tail_announces_nothing_and_beats() {
    let log = memory_log(None);
    append(&log, "old").await;
    let (mut stream, _stop) = open(log.clone(), from(2, false), Filter::default()).await;
    let before = tokio::time::Instant::now();
    assert_eq!(next(&mut stream).await, Seen::Heartbeat(1));
    assert_eq!(next(&mut stream).await, Seen::Heartbeat(1));
    assert_eq!(before.elapsed(), 2 * HEARTBEAT);
    append(&log, "new").await;
    assert_eq!(next(&mut stream).await, event(2, "new"));
}

#[tokio::test(start_paused = true)]
async fn filtered_out_events_advance_the_heartbeat_cursor() {
    let log = memory_log(None);
    for id in ["a", "b", "mine", "c", "d"] {
        append(&log, id).await;
    }
    let (mut stream, _stop) = open(log.clone(), from(1, true), filter_for(&["mine"])).await;
    assert_eq!(next(&mut stream).await, event(3, "mine"));
    // Events 4 and 5 were considered, not delivered: the subscriber may resume after 5.
    assert_eq!(next(&mut stream).await, Seen::CaughtUp(5));
    assert_eq!(next(&mut stream).await, Seen::Heartbeat(5));
    append(&log, "e").await;
    assert_eq!(next(&mut stream).await, Seen::Heartbeat(6));
    append(&log, "mine").await;
    assert_eq!(next(&mut stream).await, event(7, "mine"));
}

#[tokio::test(start_paused = true)]
async fn events_removed_before_delivery_are_a_gap() {
    let log = memory_log(Some(2));
    for id in ["a", "b", "c", "d", "e"] {
        append(&log, id).await;
    }
    let (mut stream, _stop) = open(log.clone(), from(2, true), Filter::default()).await;
    assert_eq!(next(&mut stream).await, Seen::Gap(2, 3));
    assert_eq!(next(&mut stream).await, event(4, "d"));
    assert_eq!(next(&mut stream).await, event(5, "e"));
    assert_eq!(next(&mut stream).await, Seen::CaughtUp(5));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_the_stream_with_unavailable() {
    let log = memory_log(None);
    append(&log, "a").await;
    let (mut stream, stop) = open(log.clone(), from(1, true), Filter::default()).await;
    assert_eq!(next(&mut stream).await, event(1, "a"));
    stop.0.cancel();
    let status = grpc_status(&stream.next().await.unwrap().unwrap_err());
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        status.message(),
        "the gateway is shutting down; resubscribe after the last sequence you processed"
    );
    assert!(stream.next().await.is_none(), "nothing after the end");
}

/// A memory log whose readers fail with `error` once they have read what is stored.
struct FailingLog {
    inner: Arc<MemoryLog>,
    error: fn() -> LogError,
}

struct FailingReader {
    inner: Box<dyn LogReader>,
    error: fn() -> LogError,
}

#[async_trait::async_trait]
impl LogReader for FailingReader {
    async fn next(&mut self) -> Result<ReadItem, LogError> {
        match self.inner.next().await? {
            ReadItem::CaughtUp(_) => Err((self.error)()),
            item => Ok(item),
        }
    }
}

#[async_trait::async_trait]
impl EventLog for FailingLog {
    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, LogError> {
        self.inner.append(event).await
    }
    async fn bounds(&self) -> Result<Bounds, LogError> {
        self.inner.bounds().await
    }
    async fn sequence_at(&self, time: std::time::SystemTime) -> Result<Sequence, LogError> {
        self.inner.sequence_at(time).await
    }
    async fn read_from(&self, from: Sequence) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(FailingReader {
            inner: self.inner.read_from(from).await?,
            error: self.error,
        }))
    }
    fn known_head(&self) -> Sequence {
        self.inner.known_head()
    }
    async fn check_ready(&self) -> Result<(), LogError> {
        self.inner.check_ready().await
    }
    async fn close(&self) -> Result<(), LogError> {
        self.inner.close().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_log_ends_the_stream_without_details() {
    fn unavailable() -> LogError {
        LogError::unavailable(std::io::Error::other("disk /dev/sdb1 on fire"))
    }
    fn corrupt() -> LogError {
        LogError::Corrupt {
            sequence: 1,
            source: "secret detail".into(),
        }
    }
    for (error, code, message) in [
        (
            unavailable as fn() -> LogError,
            Code::Unavailable,
            "the event log is unavailable, retry later",
        ),
        (corrupt, Code::Internal, "internal error"),
    ] {
        let inner = memory_log(None);
        append(&inner, "a").await;
        let log = Arc::new(FailingLog { inner, error });
        let (mut stream, _stop) = open(log, from(1, true), Filter::default()).await;
        assert_eq!(next(&mut stream).await, event(1, "a"));
        let status = grpc_status(&stream.next().await.unwrap().unwrap_err());
        assert_eq!((status.code(), status.message()), (code, message));
        assert!(stream.next().await.is_none(), "nothing after the end");
    }
}
