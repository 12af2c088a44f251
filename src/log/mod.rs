//! The event log: an append-only sequence of events with deduplication of repeated
//! notifications, and readers that follow it from any position; beside it, a small durable
//! key-value store with compare-and-set for the state subscribers leave behind (durable consumer
//! cursors, and the [`quota`] on how many consumers and groups there may be).
//!
//! The rest of the gateway sees only the traits: [`EventLog`] (append, bounds, time lookup,
//! [`LogReader`]s), and [`StateStore`] (versioned keys), both opened together as a [`Storage`].
//! Positions are sequence numbers starting at 1, deduplication is by a [`DedupKey`] within a time
//! window, and a reader starts at a sequence: the shape of a NATS JetStream stream as well as of
//! an embedded store. Each backend does its own housekeeping (retention, expiry of deduplication
//! keys, reconnection) behind the traits.
//!
//! Backends: [`memory`] (for tests and trying things out), [`embedded`] (the default: a redb file
//! on local disk) and [`nats`] (a replicated JetStream stream, for several gateway replicas).
//! [`readiness`] checks whether the log can take appends, once for all who ask.

pub mod cursors;
pub mod embedded;
pub mod memory;
pub mod nats;
pub mod quota;
pub mod readiness;

use std::{
    fmt,
    ops::Deref,
    sync::{Arc, OnceLock},
    time::SystemTime,
};

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::{
    error::{ErrorKind, ServiceError},
    proto::v1,
};

pub use cursors::{CursorError, Cursors};
pub use embedded::EmbeddedLog;
pub use memory::MemoryLog;
pub use nats::NatsLog;
pub use quota::{NameKind, Quota, QuotaError, QuotaSettings, SubscriberIdentity};
pub use readiness::{Readiness, ReadyState};

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

impl DedupKey {
    /// The key as 64 lowercase hex digits: a NATS message id.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
        }
        hex
    }
}

impl fmt::Display for DedupKey {
    /// Lowercase hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
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

impl Bounds {
    /// Whether retention has removed events (sequences before `first` existed once).
    pub fn has_removed(&self) -> bool {
        self.first > 1
    }
}

/// A stored event as readers hand it out, shared by every subscriber that receives it.
///
/// Besides the event, it keeps the event's encoding as a `SubscribeResponse` (the message every
/// subscriber receives), made at most once however many subscribers it goes to; a backend that
/// reads the encoded event from storage supplies it without decoding and encoding again.
#[derive(Debug)]
pub struct LoggedEvent {
    event: v1::Event,
    response: OnceLock<Bytes>,
}

/// The key of `SubscribeResponse.event` (field 1, length-delimited).
const RESPONSE_EVENT_KEY: u8 = 0x0a;

impl LoggedEvent {
    /// An event whose encoding is made when first asked for.
    pub fn new(event: v1::Event) -> Self {
        Self {
            event,
            response: OnceLock::new(),
        }
    }

    /// An event read from storage together with its encoding (`encoded` is `event` encoded).
    pub fn with_encoding(event: v1::Event, encoded: &[u8]) -> Self {
        let response = OnceLock::new();
        let _ = response.set(frame(encoded.len(), |buf| buf.put_slice(encoded)));
        Self { event, response }
    }

    /// The event.
    pub fn event(&self) -> &v1::Event {
        &self.event
    }

    /// The `SubscribeResponse` carrying this event, encoded.
    pub fn response_bytes(&self) -> &Bytes {
        self.response
            .get_or_init(|| frame(self.event.encoded_len(), |buf| self.event.encode_raw(buf)))
    }
}

/// `SubscribeResponse { event }` around an encoded event of `len` bytes written by `write`.
fn frame(len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(1 + prost::length_delimiter_len(len) + len);
    buf.put_u8(RESPONSE_EVENT_KEY);
    prost::encoding::encode_varint(len as u64, &mut buf);
    write(&mut buf);
    buf.freeze()
}

impl Deref for LoggedEvent {
    type Target = v1::Event;

    fn deref(&self) -> &v1::Event {
        &self.event
    }
}

/// What a [`LogReader`] yields, in log order.
#[derive(Debug, Clone)]
pub enum ReadItem {
    /// The next stored events, in sequence order, each following the one before it.
    Events(Vec<Arc<LoggedEvent>>),
    /// Retention removed the events `first..=last` before this reader reached them; reading goes
    /// on after `last`.
    Gap {
        /// First removed sequence.
        first: Sequence,
        /// Last removed sequence.
        last: Sequence,
    },
    /// The reader has yielded everything stored up to this sequence, which was the newest when
    /// it looked: what comes next is new. Yielded once each time the reader runs out of stored
    /// events, before it waits for more.
    CaughtUp(Sequence),
}

/// Follows the log from a position: stored events first, then new ones as they are stored,
/// with no seam between the two. Each subscription has its own reader, so a slow one holds back
/// nobody else.
#[async_trait]
pub trait LogReader: Send {
    /// Waits for and returns what comes next. Cancel-safe: a call dropped before it completes
    /// loses nothing, and the next call yields the same item.
    async fn next(&mut self) -> Result<ReadItem, LogError>;
}

/// Events a reader yields at most in one [`ReadItem::Events`].
pub const READ_BATCH: usize = 256;

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

    /// The range of stored sequences now.
    async fn bounds(&self) -> Result<Bounds, LogError>;

    /// The sequence of the first stored event received at or after `time`, or `head + 1` when
    /// there is none.
    async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError>;

    /// A reader that yields the events from `from` on. A `from` older than the oldest stored
    /// event yields a [`ReadItem::Gap`] first.
    async fn read_from(&self, from: Sequence) -> Result<Box<dyn LogReader>, LogError>;

    /// The newest sequence this process knows of, without asking the storage: for metrics. A
    /// distributed backend may learn of other replicas' appends a little later.
    fn known_head(&self) -> Sequence;

    /// Whether the log can take appends now.
    async fn check_ready(&self) -> Result<(), LogError>;

    /// Stops taking appends and flushes what was taken. Later appends fail with
    /// [`LogError::Closed`]; reads keep working where the backend can.
    async fn close(&self) -> Result<(), LogError>;
}

/// A shared handle to an event log.
pub type SharedLog = Arc<dyn EventLog>;

/// The revision of a [`StateStore`] value: it changes on every write of its key.
pub type Revision = u64;

/// A value of the [`StateStore`] with its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// Its revision, for [`StateStore::put`]'s compare-and-set.
    pub revision: Revision,
}

/// The result of a conditional [`StateStore::put`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// Stored; the key now has this revision.
    Stored(Revision),
    /// The key's revision was not the expected one; nothing was stored.
    Conflict,
}

/// A durable map from keys (`A-Z a-z 0-9 - _ .`, at most 256 bytes) to small values, with
/// compare-and-set, shared by every gateway on the same storage. Writes are durable when they
/// return, like appends.
#[async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The value of `key`, if it has one.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, LogError>;

    /// Stores `value` under `key` if the key's revision is still `expected` (`None`: the key
    /// must have no value).
    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<PutOutcome, LogError>;

    /// How many keys start with `prefix`.
    async fn count(&self, prefix: &str) -> Result<usize, LogError>;
}

/// A shared handle to a state store.
pub type SharedState = Arc<dyn StateStore>;

/// An opened storage backend: the event log and the state store beside it.
#[derive(Clone)]
pub struct Storage {
    /// The events.
    pub log: SharedLog,
    /// Durable state (cursors).
    pub state: SharedState,
}

impl Storage {
    /// A storage over one backend that implements both traits.
    pub fn new<B: EventLog + StateStore>(backend: Arc<B>) -> Self {
        Self {
            log: backend.clone(),
            state: backend,
        }
    }
}

/// The name of a durable consumer: see [`is_consumer_name`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConsumerName(String);

impl ConsumerName {
    /// Longest accepted name.
    pub const MAX_LEN: usize = 128;

    /// Parses a consumer name.
    pub fn parse(name: &str) -> Result<Self, InvalidConsumerName> {
        if is_consumer_name(name) {
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

/// What a durable consumer or consumer group name may be, as the refusals say it.
pub const CONSUMER_NAME_RULE: &str = "1 to 128 ASCII letters, digits, '-', '_' or '.', \
     with no '.' at the start or the end and no two in a row";

/// Whether `name` may name a durable consumer or a consumer group (one namespace, one rule): a
/// plain name of at most [`ConsumerName::MAX_LEN`] bytes whose dots only separate non-empty
/// parts. The name becomes part of state-store keys (`consumer.<name>`,
/// `partition.<name>.<n>`), which NATS carries as subjects: an empty part between dots is not a
/// valid subject, and such a name would be accepted here only to fail there as `UNAVAILABLE`.
pub fn is_consumer_name(name: &str) -> bool {
    crate::error::is_plain_name(name, ConsumerName::MAX_LEN)
        && name.split('.').all(|part| !part.is_empty())
}

/// A consumer name outside [`CONSUMER_NAME_RULE`].
#[derive(Debug, thiserror::Error)]
#[error("consumer must be {}", CONSUMER_NAME_RULE)]
pub struct InvalidConsumerName;

impl ServiceError for InvalidConsumerName {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadRequest
    }

    fn code(&self) -> &'static str {
        "invalid_consumer"
    }
}

/// Any error, boxed, as a source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the log (or the state store) could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log is closed (the gateway is shutting down).
    #[error("the event log is closed")]
    Closed,
    /// The storage cannot serve now (a failing disk, an unreachable or leaderless NATS); the
    /// backend recovers by itself, and a retry may succeed.
    #[error("event log storage is unavailable")]
    Unavailable(#[source] BoxError),
    /// Stored data could not be read back.
    #[error("stored event {sequence} is corrupt")]
    Corrupt {
        /// The unreadable event.
        sequence: Sequence,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A stored state value could not be read back.
    #[error("stored state `{key}` is corrupt")]
    CorruptState {
        /// The key.
        key: String,
    },
}

impl LogError {
    /// [`LogError::Unavailable`] with this cause.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        Self::Unavailable(source.into())
    }
}

impl ServiceError for LogError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Closed | Self::Unavailable(_) => ErrorKind::Unavailable,
            Self::Corrupt { .. } | Self::CorruptState { .. } => ErrorKind::Internal,
        }
    }

    fn code(&self) -> &'static str {
        match self.kind() {
            ErrorKind::Unavailable => "unavailable",
            _ => "internal_error",
        }
    }
}

/// Whether `key` is a valid [`StateStore`] key.
pub fn is_state_key(key: &str) -> bool {
    crate::error::is_plain_name(key, 256)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::subscribe_response::Response;

    #[test]
    fn consumer_names_are_plain_with_dots_only_between_parts() {
        for good in [
            "billing",
            "billing.eu-1",
            "a.b.c",
            "A_b-9",
            &"x".repeat(128),
        ] {
            assert!(is_consumer_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".billing",
            "billing.",
            "billing..eu",
            ".",
            "..",
            "bill ing",
            "bill/ing",
            "billing*",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(!is_consumer_name(bad), "{bad:?}");
            assert!(ConsumerName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dedup_keys_print_as_hex() {
        let key = DedupKey::from_bytes([0xab; 32]);
        assert_eq!(key.to_hex(), "ab".repeat(32));
        assert_eq!(key.to_string(), key.to_hex());
        let key = DedupKey::from_bytes(std::array::from_fn(|i| i as u8));
        assert!(key.to_hex().starts_with("000102030405"));
    }

    #[test]
    fn the_shared_encoding_is_the_subscribe_response_of_the_event() {
        let event = v1::Event {
            sequence: 300,
            id: "x".repeat(200),
            ..v1::Event::default()
        };
        let expected = v1::SubscribeResponse {
            response: Some(Response::Event(event.clone())),
        }
        .encode_to_vec();
        assert_eq!(
            LoggedEvent::new(event.clone()).response_bytes().as_ref(),
            expected
        );
        let stored = event.encode_to_vec();
        assert_eq!(
            LoggedEvent::with_encoding(event, &stored)
                .response_bytes()
                .as_ref(),
            expected
        );
    }
}
