//! Whether the event log can take appends, as one task checks it: every second, whoever asks.
//!
//! `GET /readyz` is on the public listener and `grpc.health.v1` on the internal one; both read
//! the latest result of this one check. Were each probe to check the log itself, every request
//! would cost a JetStream API request (or, after a disk failure, a write), and anyone who can
//! reach `/readyz` could multiply that load at will. The answer is at most one interval (plus
//! one check) old.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::SharedLog;
use crate::error::error_chain;

/// How often the log is checked.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How long one check may take before the log counts as not ready. A NATS request that gets no
/// answer waits for its own timeout, and meanwhile the last result would say "ready" to every
/// load balancer; a check this slow means appends are failing or about to.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of the latest check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyState {
    /// The log can take appends.
    Ready,
    /// It cannot, for this reason (the error's own message, without its causes: it is shown to
    /// whoever calls `/readyz`).
    NotReady(Arc<str>),
}

/// The log's readiness as the checking task last saw it. Cloning is cheap; every clone sees the
/// same task's results.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: watch::Receiver<ReadyState>,
}

impl Readiness {
    /// Starts checking `log` at once and then every `interval`, until `shutdown`. Until the first
    /// check completes the log counts as ready: it was just opened.
    pub fn spawn(log: SharedLog, interval: Duration, shutdown: CancellationToken) -> Self {
        let (sender, state) = watch::channel(ReadyState::Ready);
        tokio::spawn(check_every(log, interval, sender, shutdown));
        Self { state }
    }

    /// The latest result.
    pub fn current(&self) -> ReadyState {
        self.state.borrow().clone()
    }

    /// Waits until the result changes and returns the new one; `None` once checking has stopped.
    pub async fn changed(&mut self) -> Option<ReadyState> {
        self.state.changed().await.ok()?;
        Some(self.state.borrow_and_update().clone())
    }
}

async fn check_every(
    log: SharedLog,
    interval: Duration,
    state: watch::Sender<ReadyState>,
    shutdown: CancellationToken,
) {
    loop {
        let checked = tokio::select! {
            () = shutdown.cancelled() => return,
            checked = tokio::time::timeout(CHECK_TIMEOUT, log.check_ready()) => checked,
        };
        let was_ready = *state.borrow() == ReadyState::Ready;
        // Logged when the state changes, not at every check: a log that stays down would
        // otherwise write a line a second.
        let now = match checked {
            Ok(Ok(())) => {
                if !was_ready {
                    tracing::info!("the event log is ready again");
                }
                ReadyState::Ready
            }
            Ok(Err(error)) => {
                if was_ready {
                    tracing::warn!(error = %error_chain(&error), "the event log is not ready");
                }
                ReadyState::NotReady(error.to_string().into())
            }
            Err(_) => {
                if was_ready {
                    tracing::warn!(timeout = ?CHECK_TIMEOUT, "the event log's readiness check did not finish in time");
                }
                ReadyState::NotReady(
                    "the event log did not answer the readiness check in time".into(),
                )
            }
        };
        state.send_if_modified(|current| {
            let changed = *current != now;
            *current = now;
            changed
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
        time::SystemTime,
    };

    use async_trait::async_trait;

    use super::*;
    use crate::log::{
        AppendOutcome, Bounds, EventLog, LogError, LogReader, MemoryLog, NewEvent, Sequence,
        memory::MemorySettings,
    };

    /// A memory log that counts readiness checks and fails them while told to.
    pub(crate) struct CheckedLog {
        inner: MemoryLog,
        pub(crate) checks: AtomicUsize,
        pub(crate) failing: AtomicBool,
    }

    impl CheckedLog {
        pub(crate) fn new() -> Arc<Self> {
            Arc::new(Self {
                inner: MemoryLog::new(MemorySettings::new(Duration::from_secs(60))),
                checks: AtomicUsize::new(0),
                failing: AtomicBool::new(false),
            })
        }

        pub(crate) fn checks(&self) -> usize {
            self.checks.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl EventLog for CheckedLog {
        async fn append(&self, event: NewEvent) -> Result<AppendOutcome, LogError> {
            self.inner.append(event).await
        }

        async fn bounds(&self) -> Result<Bounds, LogError> {
            self.inner.bounds().await
        }

        async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError> {
            self.inner.sequence_at(time).await
        }

        async fn read_from(&self, from: Sequence) -> Result<Box<dyn LogReader>, LogError> {
            self.inner.read_from(from).await
        }

        fn known_head(&self) -> Sequence {
            self.inner.known_head()
        }

        async fn check_ready(&self) -> Result<(), LogError> {
            self.checks.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                Err(LogError::unavailable("the disk is on fire"))
            } else {
                Ok(())
            }
        }

        async fn close(&self) -> Result<(), LogError> {
            self.inner.close().await
        }
    }

    /// Waits for the checking task to have checked `count` times in all.
    pub(crate) async fn until_checked(log: &CheckedLog, count: usize) {
        while log.checks() < count {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_check_per_interval_and_every_change_is_seen() {
        let log = CheckedLog::new();
        let shutdown = CancellationToken::new();
        let mut readiness = Readiness::spawn(log.clone(), CHECK_INTERVAL, shutdown.clone());
        until_checked(&log, 1).await;
        assert_eq!(readiness.current(), ReadyState::Ready);

        log.failing.store(true, Ordering::SeqCst);
        let changed = readiness.changed().await;
        assert_eq!(
            changed,
            Some(ReadyState::NotReady(
                "event log storage is unavailable".into()
            ))
        );
        assert_eq!(log.checks(), 2, "the next check, one interval later");

        log.failing.store(false, Ordering::SeqCst);
        assert_eq!(readiness.changed().await, Some(ReadyState::Ready));
        assert_eq!(log.checks(), 3);

        // Reading the state checks nothing.
        for _ in 0..100 {
            assert_eq!(readiness.current(), ReadyState::Ready);
        }
        assert_eq!(log.checks(), 3);

        shutdown.cancel();
        assert_eq!(readiness.changed().await, None, "checking stops");
    }
}
