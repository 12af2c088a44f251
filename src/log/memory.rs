//! An event log in memory: fast and simple, lost on restart. For tests and for trying the
//! gateway out; the durable backends are the default.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{AppendOutcome, Bounds, DedupKey, EventLog, LogError, NewEvent, Sequence};
use crate::proto::v1;

/// An [`EventLog`] held in memory.
pub struct MemoryLog {
    // A std mutex: every critical section is short and never awaits.
    state: Mutex<State>,
    head: watch::Sender<Sequence>,
    dedup_window: Duration,
}

#[derive(Default)]
struct State {
    events: VecDeque<Arc<v1::Event>>,
    /// Sequence of `events[0]`.
    first: Sequence,
    head: Sequence,
    last_received_at: Option<SystemTime>,
    dedup: HashMap<DedupKey, (Sequence, SystemTime)>,
    dedup_order: VecDeque<(SystemTime, DedupKey)>,
    closed: bool,
}

impl MemoryLog {
    /// An empty log that recognises repeats inside `dedup_window`.
    pub fn new(dedup_window: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                first: 1,
                ..State::default()
            }),
            head: watch::Sender::new(0),
            dedup_window,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping the service would, so keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn forget_expired(&mut self, now: SystemTime, window: Duration) {
        let Some(horizon) = now.checked_sub(window) else {
            return;
        };
        while let Some(&(at, key)) = self.dedup_order.front() {
            if at >= horizon {
                break;
            }
            self.dedup_order.pop_front();
            if self.dedup.get(&key).is_some_and(|&(_, seen)| seen == at) {
                self.dedup.remove(&key);
            }
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn append(&self, new: NewEvent) -> Result<AppendOutcome, LogError> {
        let mut state = self.lock();
        if state.closed {
            return Err(LogError::Closed);
        }
        let now = SystemTime::now().max(state.last_received_at.unwrap_or(SystemTime::UNIX_EPOCH));
        state.forget_expired(now, self.dedup_window);
        if let Some(&(sequence, _)) = state.dedup.get(&new.dedup_key) {
            return Ok(AppendOutcome::Duplicate(sequence));
        }
        let sequence = state.head + 1;
        let mut event = new.event;
        event.sequence = sequence;
        event.received_at = Some(now.into());
        state.events.push_back(Arc::new(event));
        state.head = sequence;
        state.last_received_at = Some(now);
        state.dedup.insert(new.dedup_key, (sequence, now));
        state.dedup_order.push_back((now, new.dedup_key));
        drop(state);
        self.head.send_replace(sequence);
        Ok(AppendOutcome::Appended(sequence))
    }

    async fn read(&self, from: Sequence, limit: usize) -> Result<Vec<Arc<v1::Event>>, LogError> {
        let state = self.lock();
        let skip = usize::try_from(from.saturating_sub(state.first)).unwrap_or(usize::MAX);
        Ok(state
            .events
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect())
    }

    async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError> {
        let state = self.lock();
        let time = prost_types::Timestamp::from(time);
        let index = state.events.partition_point(|event| {
            event
                .received_at
                .as_ref()
                .is_some_and(|at| (at.seconds, at.nanos) < (time.seconds, time.nanos))
        });
        Ok(state.first + index as Sequence)
    }

    fn bounds(&self) -> Bounds {
        let state = self.lock();
        Bounds {
            first: state.first,
            head: state.head,
        }
    }

    fn watch_head(&self) -> watch::Receiver<Sequence> {
        self.head.subscribe()
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        if self.lock().closed {
            Err(LogError::Closed)
        } else {
            Ok(())
        }
    }

    async fn close(&self) -> Result<(), LogError> {
        self.lock().closed = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_event(body: &str) -> NewEvent {
        NewEvent {
            dedup_key: DedupKey::for_notification("test", body.as_bytes()),
            event: v1::Event::default(),
        }
    }

    #[tokio::test]
    async fn sequences_start_at_one_and_repeats_are_duplicates() {
        let log = MemoryLog::new(Duration::from_secs(60));
        assert_eq!(log.bounds(), Bounds { first: 1, head: 0 });
        assert_eq!(
            log.append(new_event("a")).await.unwrap(),
            AppendOutcome::Appended(1)
        );
        assert_eq!(
            log.append(new_event("b")).await.unwrap(),
            AppendOutcome::Appended(2)
        );
        assert_eq!(
            log.append(new_event("a")).await.unwrap(),
            AppendOutcome::Duplicate(1)
        );
        let events = log.read(2, 10).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].sequence, 2);
        assert_eq!(*log.watch_head().borrow(), 2);
    }

    #[tokio::test]
    async fn repeats_after_the_window_are_new_events() {
        let log = MemoryLog::new(Duration::ZERO);
        log.append(new_event("a")).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            log.append(new_event("a")).await.unwrap(),
            AppendOutcome::Appended(2)
        );
    }

    #[tokio::test]
    async fn sequence_at_finds_the_first_event_at_or_after_a_time() {
        let log = MemoryLog::new(Duration::from_secs(60));
        let before = SystemTime::now();
        log.append(new_event("a")).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let middle = SystemTime::now();
        log.append(new_event("b")).await.unwrap();
        assert_eq!(log.sequence_at(before).await.unwrap(), 1);
        assert_eq!(log.sequence_at(middle).await.unwrap(), 2);
        assert_eq!(log.sequence_at(SystemTime::now()).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn closed_log_refuses_appends() {
        let log = MemoryLog::new(Duration::from_secs(60));
        log.close().await.unwrap();
        assert!(matches!(
            log.append(new_event("a")).await,
            Err(LogError::Closed)
        ));
        assert!(log.check_ready().await.is_err());
    }
}
