//! The event log: an append-only sequence of events with deduplication of repeated
//! notifications, reads from any position, and a way to wait for new events.
//!
//! Every backend implements [`EventLog`]; the rest of the gateway sees only the trait. Positions
//! are sequence numbers starting at 1, deduplication is by a [`DedupKey`] within a time window,
//! and reads start at a sequence (or at the sequence found for a time): the shape of a NATS
//! JetStream stream as well as of an embedded store.

pub mod embedded;
pub mod memory;

use std::{fmt, path::PathBuf, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::{
    error::{ErrorCode, ServiceError},
    proto::v1,
};

pub use embedded::EmbeddedLog;
pub use memory::MemoryLog;

/// Position of an event in the log. The first event has sequence 1; 0 means "before the first".
pub type Sequence = u64;

/// Identifies a notification for deduplication: a SHA-256 of its kind and its exact body, so an
/// identical retry has the same key and anything else does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupKey([u8; 32]);

impl DedupKey {
    /// The key of a notification of `kind` with this exact body.
    pub fn for_notification(kind: &str, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(kind.as_bytes());
        hasher.update([0]);
        hasher.update(body);
        Self(hasher.finalize().into())
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Rebuilds a key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

/// An event to append. The log assigns its `sequence` and `received_at`.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Deduplication key of the notification.
    pub dedup_key: DedupKey,
    /// The event; `sequence` and `received_at` are overwritten by the log.
    pub event: v1::Event,
}

/// The result of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// The event was stored with this sequence.
    Appended(Sequence),
    /// An identical notification was stored with this sequence inside the deduplication window;
    /// nothing was stored.
    Duplicate(Sequence),
}

impl AppendOutcome {
    /// The sequence of the stored event.
    pub fn sequence(self) -> Sequence {
        match self {
            Self::Appended(s) | Self::Duplicate(s) => s,
        }
    }
}

/// The range of sequences the log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Oldest stored sequence; `head + 1` when the log holds no events.
    pub first: Sequence,
    /// Newest stored sequence; 0 when nothing was ever stored.
    pub head: Sequence,
}

/// The name of a durable consumer: 1 to 128 ASCII letters, digits, `-`, `_` or `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsumerName(String);

impl ConsumerName {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 128;

    /// Parses a consumer name.
    pub fn parse(name: &str) -> Result<Self, InvalidConsumerName> {
        if crate::error::is_plain_name(name, Self::MAX_LEN) {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidConsumerName)
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConsumerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A consumer name outside the allowed alphabet or length.
#[derive(Debug, thiserror::Error)]
#[error("consumer must be 1 to 128 ASCII letters, digits, '-', '_' or '.'")]
pub struct InvalidConsumerName;

impl ServiceError for InvalidConsumerName {
    fn error_code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }
}

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log could not be opened.
    #[error("cannot open the event log at {}", path.display())]
    Open {
        /// Where it was looked for.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The log is closed (the gateway is shutting down).
    #[error("the event log is closed")]
    Closed,
    /// The storage failed.
    #[error("event log storage failed")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Stored data could not be read back.
    #[error("stored event {sequence} is corrupt")]
    Corrupt {
        /// The unreadable event.
        sequence: Sequence,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl ServiceError for LogError {
    fn error_code(&self) -> ErrorCode {
        match self {
            Self::Closed | Self::Storage(_) | Self::Open { .. } => ErrorCode::Unavailable,
            Self::Corrupt { .. } => ErrorCode::Internal,
        }
    }
}

/// The event log.
///
/// Appends are durable when they return (to the backend's durability), and return in the order
/// of their sequences. Sequences never repeat and never go backwards; `received_at` never goes
/// backwards either, so a time maps to a sequence.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends an event unless a notification with the same key was appended inside the
    /// deduplication window. Two identical appends racing each other store one event.
    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, LogError>;

    /// Reads up to `limit` events with a sequence at or after `from`, in sequence order.
    /// Events older than the oldest stored one are skipped, so the first returned sequence can be
    /// greater than `from`. An empty answer means nothing at or after `from` is stored yet.
    async fn read(&self, from: Sequence, limit: usize) -> Result<Vec<Arc<v1::Event>>, LogError>;

    /// The sequence of the first stored event received at or after `time`, or `head + 1` when
    /// there is none.
    async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError>;

    /// The range of stored sequences now.
    fn bounds(&self) -> Bounds;

    /// A receiver of the head sequence, updated after every append becomes readable.
    fn watch_head(&self) -> watch::Receiver<Sequence>;

    /// Records that `consumer` has processed every event up to `sequence`. Cursors only move
    /// forward: an older ack is ignored. Returns the consumer's cursor after the ack. Durable
    /// when it returns, like an append.
    async fn ack(&self, consumer: &ConsumerName, sequence: Sequence) -> Result<Sequence, LogError>;

    /// The last sequence `consumer` acknowledged, or `None` for a consumer never seen.
    async fn cursor(&self, consumer: &ConsumerName) -> Result<Option<Sequence>, LogError>;

    /// Applies retention and forgets expired deduplication keys. Called periodically.
    async fn maintain(&self) -> Result<(), LogError>;

    /// Whether the log can take appends now.
    async fn check_ready(&self) -> Result<(), LogError>;

    /// Stops taking appends and flushes what was taken. Later appends fail with
    /// [`LogError::Closed`]; reads keep working.
    async fn close(&self) -> Result<(), LogError>;
}

/// A shared handle to an event log.
pub type SharedLog = Arc<dyn EventLog>;
