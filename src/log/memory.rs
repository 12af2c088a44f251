//! An event log in memory: fast and simple, lost on restart. For tests and for trying the
//! gateway out; the durable backends are the default. Retention and the event limit apply as in
//! the durable backends, whenever the log is written or read.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::watch;

use super::{
    AppendOutcome, Bounds, DedupKey, EventLog, LogError, LogReader, LoggedEvent, NewEvent,
    PutOutcome, Revision, Sequence, StateStore, Versioned,
    tail::{StoredEvents, TailReader},
};

/// Settings of the memory log.
#[derive(Debug, Clone, Copy)]
pub struct MemorySettings {
    /// How long an identical repeat counts as a duplicate.
    pub dedup_window: Duration,
    /// Events older than this are removed.
    pub retention: Duration,
    /// At most this many events are kept (the oldest go first); `None` for no limit.
    pub max_events: Option<u64>,
}

impl MemorySettings {
    /// Retention of a week and no event limit.
    pub fn new(dedup_window: Duration) -> Self {
        Self {
            dedup_window,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_events: None,
        }
    }
}

/// An [`EventLog`] and [`StateStore`] held in memory.
pub struct MemoryLog {
    inner: Arc<Inner>,
}

struct Inner {
    // A std mutex: every critical section is short and never awaits.
    state: Mutex<State>,
    head: watch::Sender<Sequence>,
    options: MemorySettings,
}

#[derive(Default)]
struct State {
    events: VecDeque<Arc<LoggedEvent>>,
    /// Sequence of `events[0]`.
    first: Sequence,
    head: Sequence,
    last_received_at: Option<SystemTime>,
    dedup: HashMap<DedupKey, (Sequence, SystemTime)>,
    dedup_order: VecDeque<(SystemTime, DedupKey)>,
    values: BTreeMap<String, Versioned>,
    closed: bool,
}

impl MemoryLog {
    /// An empty log.
    pub fn new(options: MemorySettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    first: 1,
                    ..State::default()
                }),
                head: watch::Sender::new(0),
                options,
            }),
        }
    }
}

impl Inner {
    /// The state, with retention applied as of now.
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-updated in a way that
        // matters more than stopping the service would, so keep serving.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        state.apply_retention(SystemTime::now(), &self.options);
        state
    }
}

impl State {
    fn apply_retention(&mut self, now: SystemTime, options: &MemorySettings) {
        let cutoff = now.checked_sub(options.retention);
        let over = |state: &Self| {
            options
                .max_events
                .is_some_and(|max| state.events.len() as u64 > max)
        };
        while let Some(oldest) = self.events.front() {
            let expired = cutoff.is_some_and(|cutoff| {
                oldest
                    .received_at
                    .and_then(|at| SystemTime::try_from(at).ok())
                    .is_some_and(|at| at < cutoff)
            });
            if !expired && !over(self) {
                break;
            }
            self.events.pop_front();
            self.first += 1;
        }
        self.forget_expired(now, options.dedup_window);
    }

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

    fn bounds(&self) -> Bounds {
        Bounds {
            first: self.first,
            head: self.head,
        }
    }
}

#[async_trait]
impl EventLog for MemoryLog {
    async fn append(&self, new: NewEvent) -> Result<AppendOutcome, LogError> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(LogError::Closed);
        }
        let now = SystemTime::now().max(state.last_received_at.unwrap_or(SystemTime::UNIX_EPOCH));
        if let Some(&(sequence, _)) = state.dedup.get(&new.dedup_key) {
            return Ok(AppendOutcome::Duplicate(sequence));
        }
        let sequence = state.head + 1;
        let mut event = new.event;
        event.sequence = sequence;
        event.received_at = Some(now.into());
        state.events.push_back(Arc::new(LoggedEvent::new(event)));
        state.head = sequence;
        state.last_received_at = Some(now);
        state.dedup.insert(new.dedup_key, (sequence, now));
        state.dedup_order.push_back((now, new.dedup_key));
        state.apply_retention(now, &self.inner.options);
        drop(state);
        self.inner.head.send_replace(sequence);
        Ok(AppendOutcome::Appended(sequence))
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        Ok(self.inner.lock().bounds())
    }

    async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError> {
        let state = self.inner.lock();
        let time = prost_types::Timestamp::from(time);
        let index = state.events.partition_point(|event| {
            event
                .received_at
                .as_ref()
                .is_some_and(|at| (at.seconds, at.nanos) < (time.seconds, time.nanos))
        });
        Ok(state.first + index as Sequence)
    }

    async fn read_from(&self, from: Sequence) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(TailReader::new(
            self.inner.clone(),
            self.inner.head.subscribe(),
            from,
        )))
    }

    fn known_head(&self) -> Sequence {
        *self.inner.head.borrow()
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        if self.inner.lock().closed {
            Err(LogError::Closed)
        } else {
            Ok(())
        }
    }

    async fn close(&self) -> Result<(), LogError> {
        self.inner.lock().closed = true;
        Ok(())
    }
}

#[async_trait]
impl StateStore for MemoryLog {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, LogError> {
        Ok(self.inner.lock().values.get(key).cloned())
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<PutOutcome, LogError> {
        let mut state = self.inner.lock();
        if state.closed {
            return Err(LogError::Closed);
        }
        let current = state.values.get(key).map(|stored| stored.revision);
        if current != expected {
            return Ok(PutOutcome::Conflict);
        }
        let revision = current.unwrap_or(0) + 1;
        state
            .values
            .insert(key.to_owned(), Versioned { value, revision });
        Ok(PutOutcome::Stored(revision))
    }

    async fn count(&self, prefix: &str) -> Result<usize, LogError> {
        let state = self.inner.lock();
        Ok(state
            .values
            .range(prefix.to_owned()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .count())
    }
}

#[async_trait]
impl StoredEvents for Inner {
    fn first(&self) -> Sequence {
        self.lock().first
    }

    async fn read(&self, from: Sequence, limit: usize) -> Result<Vec<Arc<LoggedEvent>>, LogError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::ReadItem;

    fn new_event(body: &str) -> NewEvent {
        NewEvent {
            dedup_key: DedupKey::for_notification("test", body.as_bytes()),
            event: crate::proto::v1::Event::default(),
        }
    }

    #[tokio::test]
    async fn the_event_limit_removes_the_oldest_and_readers_see_a_gap() {
        let log = MemoryLog::new(MemorySettings {
            max_events: Some(2),
            ..MemorySettings::new(Duration::from_secs(60))
        });
        let mut reader = log.read_from(1).await.unwrap();
        for body in ["a", "b", "c"] {
            log.append(new_event(body)).await.unwrap();
        }
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 2, head: 3 });
        assert!(matches!(
            reader.next().await.unwrap(),
            ReadItem::Gap { first: 1, last: 1 }
        ));
        let ReadItem::Events(events) = reader.next().await.unwrap() else {
            panic!("expected events");
        };
        assert_eq!(
            events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [2, 3]
        );
        assert!(matches!(
            reader.next().await.unwrap(),
            ReadItem::CaughtUp(3)
        ));
    }

    #[tokio::test]
    async fn retention_removes_old_events() {
        let log = MemoryLog::new(MemorySettings {
            retention: Duration::from_millis(50),
            ..MemorySettings::new(Duration::from_secs(60))
        });
        log.append(new_event("a")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        log.append(new_event("b")).await.unwrap();
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 2, head: 2 });
    }

    #[tokio::test]
    async fn repeats_after_the_window_are_new_events() {
        let log = MemoryLog::new(MemorySettings::new(Duration::ZERO));
        log.append(new_event("a")).await.unwrap();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            log.append(new_event("a")).await.unwrap(),
            AppendOutcome::Appended(2)
        );
    }
}
