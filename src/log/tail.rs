//! The one reader of the backends that keep their events in this process (memory, embedded):
//! it reads batches from its own position, reports what retention removed before it got there,
//! and waits on the head when it has read everything.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::watch;

use super::{LogError, LogReader, LoggedEvent, READ_BATCH, ReadItem, Sequence};

/// Where a [`TailReader`] reads from: a backend's stored events.
#[async_trait]
pub(crate) trait StoredEvents: Send + Sync + 'static {
    /// The oldest stored sequence.
    fn first(&self) -> Sequence;

    /// Up to `limit` stored events from `from` on, in order: the first one is later than `from`
    /// when retention removed `from` meanwhile. Empty when nothing is stored from `from` on.
    async fn read(&self, from: Sequence, limit: usize) -> Result<Vec<Arc<LoggedEvent>>, LogError>;
}

/// Follows `S` from a position: stored events, then new ones as the head moves.
pub(crate) struct TailReader<S> {
    stored: Arc<S>,
    head: watch::Receiver<Sequence>,
    next: Sequence,
    /// Whether `CaughtUp` was yielded since the last events.
    drained: bool,
}

impl<S: StoredEvents> TailReader<S> {
    /// A reader of `stored` from `from` on, woken by `head` (the newest stored sequence).
    pub(crate) fn new(stored: Arc<S>, head: watch::Receiver<Sequence>, from: Sequence) -> Self {
        Self {
            stored,
            head,
            next: from.max(1),
            drained: false,
        }
    }

    /// The gap before `first`, the next sequence still stored; reading goes on from there.
    fn skip_to(&mut self, first: Sequence) -> ReadItem {
        let gap = ReadItem::Gap {
            first: self.next,
            last: first - 1,
        };
        self.next = first;
        gap
    }
}

#[async_trait]
impl<S: StoredEvents> LogReader for TailReader<S> {
    async fn next(&mut self) -> Result<ReadItem, LogError> {
        loop {
            let first = self.stored.first();
            if self.next < first {
                return Ok(self.skip_to(first));
            }
            let events = self.stored.read(self.next, READ_BATCH).await?;
            // Retention may have removed events between the check above and the read: the
            // first event read then comes after `next`, and the gap is reported first.
            if let Some(oldest) = events.first()
                && oldest.sequence > self.next
            {
                return Ok(self.skip_to(oldest.sequence));
            }
            if let Some(last) = events.last() {
                self.next = last.sequence + 1;
                self.drained = false;
                return Ok(ReadItem::Events(events));
            }
            if !self.drained {
                self.drained = true;
                return Ok(ReadItem::CaughtUp(self.next - 1));
            }
            let next = self.next;
            if self.head.wait_for(|&head| head >= next).await.is_err() {
                return Err(LogError::Closed);
            }
        }
    }
}
