//! An event log that holds appends and reads at points a test chooses, so that a race (an append
//! landing while a subscriber catches up, a webhook in flight during shutdown) happens the same
//! way on every run.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use incode_gateway::log::{
    AppendOutcome, Bounds, EventLog, LogError, LogReader, NewEvent, ReadItem, Sequence, SharedLog,
};
use tokio::sync::watch;

use crate::support::common::PATIENCE;

/// A gate callers pass: at once while it is open, when it opens while it is closed.
#[derive(Clone)]
pub struct Gate {
    open: Arc<watch::Sender<bool>>,
    waiting: Arc<AtomicUsize>,
}

/// Counts a caller waiting at a gate for as long as it waits (also when its wait is cancelled).
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    pub fn new(open: bool) -> Self {
        Self {
            open: Arc::new(watch::Sender::new(open)),
            waiting: Arc::default(),
        }
    }

    pub fn open(&self) {
        self.open.send_replace(true);
    }

    pub fn close(&self) {
        self.open.send_replace(false);
    }

    /// Callers waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    /// Returns once the gate is open.
    pub async fn pass(&self) {
        let mut open = self.open.subscribe();
        if *open.borrow_and_update() {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self.waiting.clone());
        // The sender lives as long as `self`.
        let _ = open.wait_for(|open| *open).await;
    }

    /// Waits (at most [`PATIENCE`]) until at least `count` callers wait at the gate.
    pub async fn until_waiting(&self, count: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.waiting() < count {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} callers at the gate, expected {count}",
                self.waiting()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Runs when a reader is about to yield `CaughtUp(sequence)`, before the subscription gets it.
pub type CaughtUpHook =
    Box<dyn FnOnce(Sequence) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// An [`EventLog`] over another one, with gates:
/// - every append passes `appends` before it reaches the inner log;
/// - every reader passes `reads` before each read from the inner log, except its first
///   `free_reads` reads;
/// - the first reader to reach `CaughtUp` runs the hook first.
pub struct GatedLog {
    pub inner: SharedLog,
    pub appends: Gate,
    pub reads: Gate,
    pub free_reads: usize,
    pub on_caught_up: Arc<Mutex<Option<CaughtUpHook>>>,
}

impl GatedLog {
    /// `inner` with both gates open and no hook.
    pub fn new(inner: SharedLog) -> Self {
        Self {
            inner,
            appends: Gate::new(true),
            reads: Gate::new(true),
            free_reads: 0,
            on_caught_up: Arc::default(),
        }
    }
}

#[async_trait]
impl EventLog for GatedLog {
    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, LogError> {
        self.appends.pass().await;
        self.inner.append(event).await
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        self.inner.bounds().await
    }

    async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError> {
        self.inner.sequence_at(time).await
    }

    async fn read_from(&self, from: Sequence) -> Result<Box<dyn LogReader>, LogError> {
        Ok(Box::new(GatedReader {
            inner: self.inner.read_from(from).await?,
            reads: self.reads.clone(),
            free_reads: self.free_reads,
            pending: None,
            on_caught_up: self.on_caught_up.clone(),
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

struct GatedReader {
    inner: Box<dyn LogReader>,
    reads: Gate,
    free_reads: usize,
    /// An item read but not yet returned (kept across a cancelled call).
    pending: Option<ReadItem>,
    on_caught_up: Arc<Mutex<Option<CaughtUpHook>>>,
}

#[async_trait]
impl LogReader for GatedReader {
    async fn next(&mut self) -> Result<ReadItem, LogError> {
        if self.pending.is_none() {
            if self.free_reads > 0 {
                self.free_reads -= 1;
            } else {
                self.reads.pass().await;
            }
            self.pending = Some(self.inner.next().await?);
        }
        if let Some(ReadItem::CaughtUp(sequence)) = self.pending {
            let hook = self.on_caught_up.lock().unwrap().take();
            if let Some(hook) = hook {
                hook(sequence).await;
            }
        }
        Ok(self.pending.take().expect("read above"))
    }
}
