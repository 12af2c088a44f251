//! A reader of the embedded log: reads from its own position, from the in-memory tail when it is
//! close to the head and from disk otherwise, and waits on the head when it has read everything.

use std::sync::{Arc, atomic::Ordering};

use async_trait::async_trait;
use tokio::sync::watch;

use super::Shared;
use crate::log::{LogError, LogReader, READ_BATCH, ReadItem, Sequence};

pub(super) struct EmbeddedReader {
    shared: Arc<Shared>,
    head: watch::Receiver<Sequence>,
    next: Sequence,
    /// Whether `CaughtUp` was yielded since the last events.
    drained: bool,
}

impl EmbeddedReader {
    pub(super) fn new(shared: Arc<Shared>, from: Sequence) -> Self {
        Self {
            head: shared.head.subscribe(),
            shared,
            next: from.max(1),
            drained: false,
        }
    }
}

#[async_trait]
impl LogReader for EmbeddedReader {
    async fn next(&mut self) -> Result<ReadItem, LogError> {
        loop {
            let first = self.shared.first.load(Ordering::SeqCst);
            if self.next < first {
                let gap = ReadItem::Gap {
                    first: self.next,
                    last: first - 1,
                };
                self.next = first;
                return Ok(gap);
            }
            let events = self.shared.read(self.next, READ_BATCH).await?;
            // Retention may have removed events between the check above and the read: the
            // first event read then comes after `next`, and the gap is reported first.
            if let Some(oldest) = events.first()
                && oldest.sequence > self.next
            {
                let gap = ReadItem::Gap {
                    first: self.next,
                    last: oldest.sequence - 1,
                };
                self.next = oldest.sequence;
                return Ok(gap);
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
