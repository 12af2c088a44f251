//! The durable event log on local disk: the default backend.
//!
//! Built on [redb](https://docs.rs/redb): pure Rust (no C toolchain, no service to run), ACID
//! transactions over copy-on-write B-trees with checksummed commits, so a crash at any moment
//! leaves the last committed transaction intact and never a torn record, and opening after a
//! crash is a quick header check, not a replay. It refuses a file it does not recognise rather
//! than overwrite it, and takes an exclusive lock so two gateways cannot share one data dir.
//!
//! One writer thread owns every write. Appends and acks queue for it; it takes everything
//! waiting in the queue into one write transaction and one fsync (group commit), then answers
//! each request, so an append is durable before it is acknowledged and durability costs one
//! fsync per batch, not per request. Every table is written at its end only (sequences and
//! times grow), so a commit writes few pages; the deduplication index is looked up in memory
//! and rebuilt from its table when the log opens. Reads run on tokio's blocking pool from read
//! transactions, except for the most recent events, which an in-memory tail serves so that live
//! subscribers never touch the disk.
//!
//! The data directory and the file are private to the gateway's user ([`data_dir`]).
//!
//! A ticker thread asks the writer to apply retention every maintenance interval and, after a
//! storage failure, to probe the disk every second, so the log recovers by itself.

pub mod data_dir;
#[cfg(any(test, feature = "test-util"))]
pub mod fault;
mod writer;

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use prost::Message;
use redb::{Database, TableDefinition, backends::FileBackend};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    AppendOutcome, Bounds, BoxError, EventLog, LogError, LogReader, LoggedEvent, NewEvent,
    PutOutcome, Revision, Sequence, StateStore, Versioned,
    tail::{StoredEvents, TailReader},
};
use crate::proto::v1;
#[cfg(any(test, feature = "test-util"))]
use fault::{FaultSwitch, FaultyBackend};
use writer::{Request, Writer};

/// `sequence -> [received_at as u64 big-endian nanoseconds since the epoch][encoded Event]`.
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// `(received_at nanos, dedup key) -> sequence`: the deduplication index, in the order its
/// entries expire. Time-ordered keys make every append touch only the table's last pages; the
/// writer looks keys up in an in-memory copy loaded at start-up.
const DEDUP: TableDefinition<(u64, &[u8; 32]), u64> = TableDefinition::new("dedup");
/// `key -> (revision, value)`: the [`StateStore`].
const STATE: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("state");
/// Format 1's `consumer name -> last acknowledged sequence`, moved into [`STATE`] on opening.
const LEGACY_CONSUMERS: TableDefinition<&str, u64> = TableDefinition::new("consumers");
/// Counters that must survive even when every event has been removed.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_FORMAT: &str = "format_version";
const META_HEAD: &str = "head";
/// 2: durable consumer cursors live in the generic `state` table.
const FORMAT_VERSION: u64 = 2;

/// Name of the database file inside the data directory.
pub const FILE_NAME: &str = "events.redb";

/// Tuning of the embedded log.
#[derive(Debug, Clone)]
pub struct EmbeddedSettings {
    /// How long an identical repeat counts as a duplicate.
    pub dedup_window: Duration,
    /// Events older than this are removed.
    pub retention: Duration,
    /// At most this many events are kept (the oldest go first); `None` for no limit.
    pub max_events: Option<u64>,
    /// How often retention and the expiry of deduplication keys run.
    pub maintenance_interval: Duration,
    /// Most requests committed in one transaction; 1 disables group commit.
    pub max_commit_batch: usize,
    /// How many of the newest events are kept in memory for live readers.
    pub tail_capacity: usize,
}

impl EmbeddedSettings {
    /// Defaults for everything but the deduplication window.
    pub fn new(dedup_window: Duration) -> Self {
        Self {
            dedup_window,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_events: None,
            maintenance_interval: Duration::from_secs(60),
            max_commit_batch: 1024,
            tail_capacity: 8192,
        }
    }
}

/// Why the log could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the event log at {}", path.display())]
pub struct OpenError {
    /// The file or directory.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: BoxError,
}

/// A failure of the storage under the log. It lasts until the storage recovers, and every
/// request it fails meanwhile carries it as the cause of its [`LogError::Unavailable`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("event log storage failed")]
pub struct StorageFailure(#[source] Arc<redb::Error>);

type Opener = Box<dyn Fn() -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// An [`EventLog`] and [`StateStore`] in a redb file on local disk.
pub struct EmbeddedLog {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
}

/// State shared between the async side, the readers and the writer thread.
struct Shared {
    /// `None` after a storage failure until the writer reopens the database.
    db: RwLock<Option<Arc<Database>>>,
    head: watch::Sender<Sequence>,
    first: AtomicU64,
    /// The newest events, contiguous and ending at the head.
    tail: Mutex<VecDeque<Arc<LoggedEvent>>>,
    /// The last storage failure, until a write succeeds again.
    failure: Mutex<Option<StorageFailure>>,
    closed: AtomicBool,
}

impl Shared {
    fn database(&self) -> Result<Arc<Database>, LogError> {
        let db = self.db.read().unwrap_or_else(|p| p.into_inner());
        db.clone().ok_or_else(|| self.failure_error())
    }

    fn failure_error(&self) -> LogError {
        match lock(&self.failure).clone() {
            Some(failure) => LogError::unavailable(failure),
            None => LogError::unavailable("storage unavailable"),
        }
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            first: self.first.load(Ordering::SeqCst),
            head: *self.head.borrow(),
        }
    }

    /// Up to `limit` events from `from` on, from the in-memory tail when it holds `from`.
    async fn read(&self, from: Sequence, limit: usize) -> Result<Vec<Arc<LoggedEvent>>, LogError> {
        if from > *self.head.borrow() || limit == 0 {
            return Ok(Vec::new());
        }
        {
            let tail = lock(&self.tail);
            if let Some(oldest) = tail.front()
                && from >= oldest.sequence
            {
                let skip = usize::try_from(from - oldest.sequence).unwrap_or(usize::MAX);
                return Ok(tail.iter().skip(skip).take(limit).cloned().collect());
            }
        }
        self.blocking_read(move |db| writer::read_events(db, from, limit))
            .await
    }

    async fn blocking_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let db = self.database()?;
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(LogError::unavailable)?
    }
}

#[async_trait]
impl StoredEvents for Shared {
    fn first(&self) -> Sequence {
        self.first.load(Ordering::SeqCst)
    }

    async fn read(&self, from: Sequence, limit: usize) -> Result<Vec<Arc<LoggedEvent>>, LogError> {
        Shared::read(self, from, limit).await
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections never leave the data inconsistent, so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl EmbeddedLog {
    /// Opens (creating on first start) the log in `data_dir`.
    pub fn open(data_dir: &Path, options: EmbeddedSettings) -> Result<Self, OpenError> {
        let path = data_dir.join(FILE_NAME);
        let opener: Opener = Box::new(move || {
            let file = data_dir::open_private_file(&path)?;
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(FileBackend::new(file)?)
        });
        Self::open_with(data_dir, opener, options)
    }

    /// Like [`EmbeddedLog::open`], with writes failing while `switch` is on: for testing how the
    /// gateway answers a failing disk.
    #[cfg(any(test, feature = "test-util"))]
    pub fn open_with_faults(
        data_dir: &Path,
        options: EmbeddedSettings,
        switch: FaultSwitch,
    ) -> Result<Self, OpenError> {
        let path = data_dir.join(FILE_NAME);
        let opener: Opener = Box::new(move || {
            let file = data_dir::open_private_file(&path)?;
            redb::Builder::new()
                .set_cache_size(CACHE_BYTES)
                .create_with_backend(FaultyBackend::new(file, switch.clone())?)
        });
        Self::open_with(data_dir, opener, options)
    }

    /// Creates `data_dir` if needed (private to this user; refused when others can write it) and
    /// opens the database through `opener`.
    fn open_with(
        data_dir: &Path,
        opener: Opener,
        options: EmbeddedSettings,
    ) -> Result<Self, OpenError> {
        data_dir::create(data_dir).map_err(|source| OpenError {
            path: data_dir.to_owned(),
            source: source.into(),
        })?;
        let path = data_dir.join(FILE_NAME);
        let open_error = |source: redb::Error| OpenError {
            path: path.clone(),
            source: source.into(),
        };
        let db = opener().map_err(|e| open_error(e.into()))?;
        let recovered = writer::recover(&db, options.dedup_window).map_err(open_error)?;
        tracing::info!(
            path = %path.display(),
            first = recovered.first,
            head = recovered.head,
            "event log opened"
        );

        let db = Arc::new(db);
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(db.clone())),
            head: watch::Sender::new(recovered.head),
            first: AtomicU64::new(recovered.first),
            tail: Mutex::new(VecDeque::with_capacity(options.tail_capacity)),
            failure: Mutex::new(None),
            closed: AtomicBool::new(false),
        });
        let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
        let maintenance_interval = options.maintenance_interval;
        let writer = Writer::new(shared.clone(), db, opener, options, recovered);
        let spawn_error = |source: std::io::Error| OpenError {
            path: path.clone(),
            source: source.into(),
        };
        std::thread::Builder::new()
            .name("event-log-writer".to_owned())
            .spawn(move || writer.run(queue))
            .map_err(spawn_error)?;
        let ticker_requests = requests.downgrade();
        let ticker_shared = shared.clone();
        std::thread::Builder::new()
            .name("event-log-maintenance".to_owned())
            .spawn(move || tick(&ticker_shared, &ticker_requests, maintenance_interval))
            .map_err(spawn_error)?;
        Ok(Self { shared, requests })
    }

    /// Applies retention and forgets expired deduplication keys now, as the ticker does every
    /// maintenance interval.
    pub async fn maintain(&self) -> Result<(), LogError> {
        self.request(|reply| Request::Maintain(Some(reply))).await
    }

    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, LogError>>) -> Request,
    ) -> Result<T, LogError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| LogError::Closed)?;
        // A dropped reply means the writer stopped (shutdown) before answering.
        answer.await.map_err(|_| LogError::Closed)?
    }
}

/// Drives the writer's housekeeping until the log is dropped or closed: retention every
/// `interval`, and a probe of the storage every second while it is failing.
fn tick(shared: &Shared, requests: &mpsc::WeakSender<Request>, interval: Duration) {
    const PROBE_EVERY: Duration = Duration::from_secs(1);
    let mut last_maintenance = std::time::Instant::now();
    loop {
        std::thread::sleep(PROBE_EVERY.min(interval));
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
        let Some(requests) = requests.upgrade() else {
            return;
        };
        let request = if last_maintenance.elapsed() >= interval {
            last_maintenance = std::time::Instant::now();
            Request::Maintain(None)
        } else if lock(&shared.failure).is_some() {
            Request::Probe(None)
        } else {
            continue;
        };
        if requests.blocking_send(request).is_err() {
            return;
        }
    }
}

/// Page cache of the database. Recent events are served from the in-memory tail, so the cache
/// mostly holds B-tree pages being written and pages read by catching-up subscribers; a larger
/// cache made replay slower (each new cache page is fresh memory the kernel must zero) without
/// making anything else faster.
const CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Requests that may wait for the writer before senders wait too.
const QUEUE_CAPACITY: usize = 16 * 1024;

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, LogError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        self.request(|reply| Request::Append(Box::new(event), reply))
            .await
    }

    async fn bounds(&self) -> Result<Bounds, LogError> {
        Ok(self.shared.bounds())
    }

    async fn sequence_at(&self, time: SystemTime) -> Result<Sequence, LogError> {
        let Bounds { first, head } = self.shared.bounds();
        let nanos = writer::nanos_since_epoch(time);
        self.shared
            .blocking_read(move |db| writer::sequence_at(db, first, head, nanos))
            .await
    }

    async fn read_from(&self, from: Sequence) -> Result<Box<dyn LogReader>, LogError> {
        let head = self.shared.head.subscribe();
        Ok(Box::new(TailReader::new(self.shared.clone(), head, from)))
    }

    fn known_head(&self) -> Sequence {
        *self.shared.head.borrow()
    }

    async fn check_ready(&self) -> Result<(), LogError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        if lock(&self.shared.failure).is_none() {
            return Ok(());
        }
        // After a failure, readiness is a real write: the writer reopens the database if it
        // must and commits an empty transaction.
        self.request(|reply| Request::Probe(Some(reply))).await
    }

    async fn close(&self) -> Result<(), LogError> {
        if self.shared.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        match self.request(Request::Close).await {
            Ok(()) | Err(LogError::Closed) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

#[async_trait]
impl StateStore for EmbeddedLog {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, LogError> {
        let key = key.to_owned();
        self.shared
            .blocking_read(move |db| writer::read_state(db, &key))
            .await
    }

    async fn put(
        &self,
        key: &str,
        value: Bytes,
        expected: Option<Revision>,
    ) -> Result<PutOutcome, LogError> {
        if self.shared.closed.load(Ordering::SeqCst) {
            return Err(LogError::Closed);
        }
        let put = writer::Put {
            key: key.to_owned(),
            value,
            expected,
        };
        self.request(|reply| Request::Put(put, reply)).await
    }

    async fn count(&self, prefix: &str) -> Result<usize, LogError> {
        let prefix = prefix.to_owned();
        self.shared
            .blocking_read(move |db| writer::count_state(db, &prefix))
            .await
    }
}

fn encode_record(received_at_nanos: u64, event: &v1::Event) -> Vec<u8> {
    let mut record = Vec::with_capacity(8 + event.encoded_len());
    record.extend_from_slice(&received_at_nanos.to_be_bytes());
    // Writing into a Vec cannot fail.
    let _ = event.encode(&mut record);
    record
}

fn record_time(record: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(record.get(..8)?.try_into().ok()?))
}

fn decode_record(sequence: Sequence, record: &[u8]) -> Result<LoggedEvent, LogError> {
    let corrupt = |source: BoxError| LogError::Corrupt { sequence, source };
    let body = record
        .get(8..)
        .ok_or_else(|| corrupt("record shorter than its header".into()))?;
    let event = v1::Event::decode(body).map_err(|e| corrupt(e.into()))?;
    if event.sequence != sequence {
        return Err(corrupt(
            format!("record holds sequence {}", event.sequence).into(),
        ));
    }
    // The stored bytes are the event's encoding: subscribers get them as they are.
    Ok(LoggedEvent::with_encoding(event, body))
}

#[cfg(test)]
mod tests;
