//! The writer thread of the embedded log, and the read-side helpers that share its file format.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::{
    DEDUP, EVENTS, EmbeddedSettings, FORMAT_VERSION, LEGACY_CONSUMERS, META, META_FORMAT,
    META_HEAD, Opener, STATE, Shared, StorageFailure, decode_record, encode_record, lock,
    record_time,
};
use crate::{
    error::error_chain,
    log::{
        AppendOutcome, DedupKey, LogError, LoggedEvent, NewEvent, PutOutcome, Revision, Sequence,
        Versioned,
    },
};

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// A conditional write to the state table.
pub(super) struct Put {
    pub key: String,
    pub value: Bytes,
    pub expected: Option<Revision>,
}

/// Work for the writer thread. Housekeeping requests from the ticker carry no reply.
pub(super) enum Request {
    Append(Box<NewEvent>, Reply<AppendOutcome>),
    Put(Put, Reply<PutOutcome>),
    Maintain(Option<Reply<()>>),
    Probe(Option<Reply<()>>),
    Close(Reply<()>),
}

/// What the log holds when it is opened.
pub(super) struct Recovered {
    pub first: Sequence,
    pub head: Sequence,
    pub last_received_nanos: u64,
    /// The deduplication entries still inside the window.
    pub dedup: HashMap<DedupKey, (Sequence, u64)>,
}

/// Events removed per retention transaction, so that a large clean-up never holds the writer
/// for long.
const RETENTION_CHUNK: usize = 10_000;

pub(super) struct Writer {
    shared: Arc<Shared>,
    db: Option<Arc<Database>>,
    opener: Opener,
    options: EmbeddedSettings,
    head: Sequence,
    last_received_nanos: u64,
    /// `key -> (sequence, received_at nanos)` of every entry of the `DEDUP` table not yet
    /// removed; entries older than the window are ignored until maintenance removes them.
    dedup: HashMap<DedupKey, (Sequence, u64)>,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        db: Arc<Database>,
        opener: Opener,
        options: EmbeddedSettings,
        recovered: Recovered,
    ) -> Self {
        Self {
            shared,
            db: Some(db),
            opener,
            options,
            head: recovered.head,
            last_received_nanos: recovered.last_received_nanos,
            dedup: recovered.dedup,
        }
    }

    /// Serves requests until the log is closed or dropped.
    pub(super) fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        let max_batch = self.options.max_commit_batch.max(1);
        let mut batch = Vec::with_capacity(max_batch);
        let mut close_reply = None;
        while let Some(first) = queue.blocking_recv() {
            batch.push(first);
            while batch.len() < max_batch {
                match queue.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            close_reply = self.serve(&mut batch);
            if close_reply.is_some() {
                break;
            }
        }
        // Dropping the database flushes nothing more (every commit was durable) but releases the
        // file lock, which must be free before `close` returns so that the same directory can be
        // opened again at once. Anything still queued is answered "closed" by its dropped reply.
        drop(queue);
        self.db = None;
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(reply) = close_reply {
            let _ = reply.send(Ok(()));
        }
    }

    /// Serves one batch; returns the reply of a close request, if one came.
    fn serve(&mut self, batch: &mut Vec<Request>) -> Option<Reply<()>> {
        let mut appends = Vec::new();
        let mut puts = Vec::new();
        let mut others = Vec::new();
        for request in batch.drain(..) {
            match request {
                Request::Append(event, reply) => appends.push((*event, reply)),
                Request::Put(put, reply) => puts.push((put, reply)),
                other => others.push(other),
            }
        }
        if !appends.is_empty() || !puts.is_empty() {
            self.commit(appends, puts);
        }
        let mut close_reply = None;
        for request in others {
            match request {
                Request::Maintain(reply) => {
                    let result = self.maintain();
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Request::Probe(reply) => {
                    let result = self.probe();
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                Request::Close(reply) => close_reply = Some(reply),
                Request::Append(..) | Request::Put(..) => {}
            }
        }
        close_reply
    }

    /// Appends and state writes in one transaction and one fsync.
    fn commit(
        &mut self,
        appends: Vec<(NewEvent, Reply<AppendOutcome>)>,
        puts: Vec<(Put, Reply<PutOutcome>)>,
    ) {
        let (events, replies): (Vec<_>, Vec<_>) = appends.into_iter().unzip();
        let (puts, put_replies): (Vec<_>, Vec<_>) = puts.into_iter().unzip();
        match self.write(events, &puts) {
            Ok(written) => {
                if let Some(last) = written.events.last() {
                    let sequence = last.sequence;
                    {
                        let mut tail = lock(&self.shared.tail);
                        tail.extend(written.events);
                        let excess = tail.len().saturating_sub(self.options.tail_capacity);
                        tail.drain(..excess);
                    }
                    // Only now may readers learn of the new head: the events are durable and
                    // readable.
                    self.shared.head.send_replace(sequence);
                }
                for (reply, outcome) in replies.into_iter().zip(written.outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
                for (reply, outcome) in put_replies.into_iter().zip(written.puts) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                let failure = self.fail(error);
                for reply in replies {
                    let _ = reply.send(Err(LogError::unavailable(failure.clone())));
                }
                for reply in put_replies {
                    let _ = reply.send(Err(LogError::unavailable(failure.clone())));
                }
            }
        }
    }

    fn write(&mut self, events: Vec<NewEvent>, puts: &[Put]) -> Result<Written, redb::Error> {
        let db = self.database()?;
        let now = nanos_since_epoch(SystemTime::now()).max(self.last_received_nanos);
        let horizon = now.saturating_sub(duration_nanos(self.options.dedup_window));
        let received_at = timestamp(now);
        let mut head = self.head;
        let mut written = Written {
            outcomes: Vec::with_capacity(events.len()),
            events: Vec::with_capacity(events.len()),
            puts: Vec::with_capacity(puts.len()),
        };

        // Keys added by this batch, to take back out of the in-memory index if it fails.
        let mut added: Vec<DedupKey> = Vec::new();
        let result = (|| -> Result<(), redb::Error> {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(EVENTS)?;
                let mut dedup = txn.open_table(DEDUP)?;
                for new in events {
                    let seen = self.dedup.get(&new.dedup_key).copied();
                    if let Some((sequence, at)) = seen
                        && at >= horizon
                    {
                        written.outcomes.push(AppendOutcome::Duplicate(sequence));
                        continue;
                    }
                    head += 1;
                    let mut event = new.event;
                    event.sequence = head;
                    event.received_at = Some(received_at);
                    table.insert(head, encode_record(now, &event).as_slice())?;
                    dedup.insert((now, new.dedup_key.as_bytes()), head)?;
                    self.dedup.insert(new.dedup_key, (head, now));
                    added.push(new.dedup_key);
                    written.outcomes.push(AppendOutcome::Appended(head));
                    written.events.push(Arc::new(LoggedEvent::new(event)));
                }

                if !puts.is_empty() {
                    let mut state = txn.open_table(STATE)?;
                    for put in puts {
                        let current = state.get(put.key.as_str())?.map(|guard| guard.value().0);
                        if current != put.expected {
                            written.puts.push(PutOutcome::Conflict);
                            continue;
                        }
                        let revision = current.unwrap_or(0) + 1;
                        state.insert(put.key.as_str(), (revision, put.value.as_ref()))?;
                        written.puts.push(PutOutcome::Stored(revision));
                    }
                }
                // The head is the last event's sequence; META keeps it only for when retention
                // has removed every event (see `remove_expired_events`), so a commit touches no
                // more tables than it must.
            }
            txn.commit()?;
            Ok(())
        })();
        if let Err(error) = result {
            for key in added {
                self.dedup.remove(&key);
            }
            return Err(error);
        }
        self.head = head;
        self.last_received_nanos = now;
        self.recovered();
        Ok(written)
    }

    /// Removes events past retention and dedup keys past their window.
    fn maintain(&mut self) -> Result<(), LogError> {
        let result = self.remove_expired_events().and_then(|removed| {
            let forgotten = self.forget_expired_keys()?;
            if removed > 0 || forgotten > 0 {
                tracing::info!(removed, forgotten, "event log retention applied");
            }
            Ok(())
        });
        result.map_err(|error| LogError::unavailable(self.fail(error)))
    }

    fn remove_expired_events(&mut self) -> Result<u64, redb::Error> {
        let db = self.database()?;
        let now = nanos_since_epoch(SystemTime::now());
        let cutoff = now.saturating_sub(duration_nanos(self.options.retention));
        let mut removed = 0;
        loop {
            let first = self.shared.first.load(Ordering::SeqCst);
            if first > self.head {
                break;
            }
            let stored = self.head - first + 1;
            let over_limit = self
                .options
                .max_events
                .map_or(0, |max| stored.saturating_sub(max));
            let txn = db.begin_write()?;
            let mut next_first = first;
            {
                let mut table = txn.open_table(EVENTS)?;
                let mut doomed = Vec::new();
                for entry in table.range(first..)?.take(RETENTION_CHUNK) {
                    let (sequence, record) = entry?;
                    let sequence = sequence.value();
                    let expired = record_time(record.value()).is_some_and(|at| at < cutoff);
                    if sequence < first + over_limit || expired {
                        doomed.push(sequence);
                    } else {
                        break;
                    }
                }
                for sequence in &doomed {
                    table.remove(*sequence)?;
                }
                // Sequences must never be reused, even once every event is gone.
                txn.open_table(META)?.insert(META_HEAD, self.head)?;
                if let Some(last) = doomed.last() {
                    next_first = last + 1;
                }
            }
            if next_first == first {
                txn.abort()?;
                break;
            }
            txn.commit()?;
            removed += next_first - first;
            self.shared.first.store(next_first, Ordering::SeqCst);
            let mut tail = lock(&self.shared.tail);
            while tail
                .front()
                .is_some_and(|event| event.sequence < next_first)
            {
                tail.pop_front();
            }
        }
        Ok(removed)
    }

    fn forget_expired_keys(&mut self) -> Result<u64, redb::Error> {
        let db = self.database()?;
        let now = nanos_since_epoch(SystemTime::now());
        let horizon = now.saturating_sub(duration_nanos(self.options.dedup_window));
        let mut forgotten = 0;
        loop {
            let txn = db.begin_write()?;
            let mut doomed = Vec::new();
            {
                let mut dedup = txn.open_table(DEDUP)?;
                for entry in dedup.range(..(horizon, &[0u8; 32]))?.take(RETENTION_CHUNK) {
                    let (key, sequence) = entry?;
                    let (at, dedup_key) = key.value();
                    doomed.push((at, *dedup_key, sequence.value()));
                }
                for (at, key, _) in &doomed {
                    dedup.remove((*at, key))?;
                }
            }
            if doomed.is_empty() {
                txn.abort()?;
                break;
            }
            txn.commit()?;
            for (at, key, _) in &doomed {
                let key = DedupKey::from_bytes(*key);
                // A key seen again later has a newer entry that must stay.
                if self.dedup.get(&key).is_some_and(|&(_, seen)| seen == *at) {
                    self.dedup.remove(&key);
                }
            }
            forgotten += doomed.len() as u64;
        }
        Ok(forgotten)
    }

    fn probe(&mut self) -> Result<(), LogError> {
        let result = self.database().and_then(|db| {
            let txn = db.begin_write()?;
            txn.open_table(META)?.insert(META_HEAD, self.head)?;
            txn.commit()?;
            Ok(())
        });
        match result {
            Ok(()) => {
                self.recovered();
                Ok(())
            }
            Err(error) => Err(LogError::unavailable(self.fail(error))),
        }
    }

    /// The database, reopened if a failure closed it.
    fn database(&mut self) -> Result<Arc<Database>, redb::Error> {
        if let Some(db) = &self.db {
            return Ok(db.clone());
        }
        let db = Arc::new((self.opener)()?);
        let mut recovered = recover(&db, self.options.dedup_window)?;
        if recovered.head > self.head {
            // A commit whose sync failed leaves its pages in the file (the system's cache),
            // where they read as committed. It was answered as failed (503), so it must not be
            // delivered, and a crash before the data reached the disk would give its sequences
            // to other events.
            let removed = discard_after(&db, self.head, self.last_received_nanos)?;
            recovered
                .dedup
                .retain(|_, (sequence, _)| *sequence <= self.head);
            tracing::warn!(
                head = self.head,
                removed,
                "event log dropped what a failed commit left in the file"
            );
        } else if recovered.head < self.head {
            tracing::warn!(
                before = self.head,
                after = recovered.head,
                "event log head changed across reopening"
            );
            self.head = recovered.head;
        }
        self.last_received_nanos = self.last_received_nanos.max(recovered.last_received_nanos);
        self.dedup = recovered.dedup;
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db.clone());
        self.db = Some(db.clone());
        tracing::info!("event log storage reopened");
        Ok(db)
    }

    /// Records a storage failure. redb refuses every operation after an I/O error until the
    /// database is reopened, so the database is dropped here and reopened by the next write.
    fn fail(&mut self, error: redb::Error) -> StorageFailure {
        let failure = StorageFailure(Arc::new(error));
        tracing::error!(error = %error_chain(&failure), "event log write failed; answering 503 until storage recovers");
        *lock(&self.shared.failure) = Some(failure.clone());
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = None;
        if let Some(db) = self.db.take() {
            // Readers hold their own handle only for the length of a read; wait for them so the
            // file lock is free for the reopen.
            let mut db = db;
            for _ in 0..100 {
                match Arc::try_unwrap(db) {
                    Ok(owned) => {
                        drop(owned);
                        break;
                    }
                    Err(shared) => {
                        db = shared;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
        failure
    }

    fn recovered(&self) {
        let mut failure = lock(&self.shared.failure);
        if failure.take().is_some() {
            tracing::info!("event log storage recovered");
        }
    }
}

struct Written {
    outcomes: Vec<AppendOutcome>,
    events: Vec<Arc<LoggedEvent>>,
    puts: Vec<PutOutcome>,
}

/// Creates the tables of a new log, or checks an existing one, and reads where it stands.
pub(super) fn recover(db: &Database, window: Duration) -> Result<Recovered, redb::Error> {
    let txn = db.begin_write()?;
    let recovered;
    {
        let mut meta = txn.open_table(META)?;
        let format = meta.get(META_FORMAT)?.map(|guard| guard.value());
        match format {
            None => {
                meta.insert(META_FORMAT, FORMAT_VERSION)?;
            }
            Some(FORMAT_VERSION) => {}
            Some(1) => {
                migrate_consumers(&txn)?;
                meta.insert(META_FORMAT, FORMAT_VERSION)?;
            }
            Some(other) => {
                return Err(redb::Error::Corrupted(format!(
                    "event log format version {other} is not supported (expected {FORMAT_VERSION})"
                )));
            }
        }
        let stored_head = meta.get(META_HEAD)?.map_or(0, |guard| guard.value());
        let events = txn.open_table(EVENTS)?;
        let last = events
            .last()?
            .map(|(sequence, record)| (sequence.value(), record_time(record.value())));
        let first = events.first()?.map(|(sequence, _)| sequence.value());
        let head = stored_head.max(last.map_or(0, |(sequence, _)| sequence));
        drop(events);

        let horizon = nanos_since_epoch(SystemTime::now()).saturating_sub(duration_nanos(window));
        let mut dedup = HashMap::new();
        for entry in txn.open_table(DEDUP)?.range((horizon, &[0u8; 32])..)? {
            let (key, sequence) = entry?;
            let (at, dedup_key) = key.value();
            dedup.insert(DedupKey::from_bytes(*dedup_key), (sequence.value(), at));
        }
        recovered = Recovered {
            first: first.unwrap_or(head + 1),
            head,
            last_received_nanos: last.and_then(|(_, at)| at).unwrap_or(0),
            dedup,
        };
        txn.open_table(STATE)?;
    }
    txn.commit()?;
    Ok(recovered)
}

/// Removes the events after `head` and their deduplication entries (none older than
/// `committed_nanos`, the time of the last commit that succeeded), and sets the stored head back
/// to `head`; returns how many events were removed. State writes of the same commit stay: a
/// cursor only moves forward, and never past an acknowledged event.
fn discard_after(db: &Database, head: Sequence, committed_nanos: u64) -> Result<u64, redb::Error> {
    let txn = db.begin_write()?;
    let removed;
    {
        let mut events = txn.open_table(EVENTS)?;
        let doomed: Vec<u64> = events
            .range(head + 1..)?
            .map(|entry| entry.map(|(sequence, _)| sequence.value()))
            .collect::<Result<_, _>>()?;
        for sequence in &doomed {
            events.remove(*sequence)?;
        }
        removed = doomed.len() as u64;

        // The discarded entries are no older than the last commit that succeeded.
        let mut dedup = txn.open_table(DEDUP)?;
        let mut doomed = Vec::new();
        for entry in dedup.range((committed_nanos, &[0u8; 32])..)? {
            let (key, sequence) = entry?;
            if sequence.value() > head {
                let (at, dedup_key) = key.value();
                doomed.push((at, *dedup_key));
            }
        }
        for (at, key) in &doomed {
            dedup.remove((*at, key))?;
        }
        txn.open_table(META)?.insert(META_HEAD, head)?;
    }
    txn.commit()?;
    Ok(removed)
}

/// Format 1 kept consumer cursors in their own table; format 2 keeps them as `consumer.<name>`
/// in the state table, in the encoding durable consumers' cursors use (a big-endian `u64`).
fn migrate_consumers(txn: &redb::WriteTransaction) -> Result<(), redb::Error> {
    let mut legacy = txn.open_table(LEGACY_CONSUMERS)?;
    let mut state = txn.open_table(STATE)?;
    let mut moved = 0;
    for entry in legacy.iter()? {
        let (name, cursor) = entry?;
        let key = format!("consumer.{}", name.value());
        state.insert(key.as_str(), (1, cursor.value().to_be_bytes().as_slice()))?;
        moved += 1;
    }
    legacy.retain(|_, _| false)?;
    tracing::info!(consumers = moved, "event log format upgraded to version 2");
    Ok(())
}

pub(super) fn read_events(
    db: &Database,
    from: Sequence,
    limit: usize,
) -> Result<Vec<Arc<LoggedEvent>>, LogError> {
    let storage = |e: redb::Error| LogError::unavailable(e);
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    let table = txn.open_table(EVENTS).map_err(|e| storage(e.into()))?;
    let mut events = Vec::with_capacity(limit.min(1024));
    for entry in table
        .range(from..)
        .map_err(|e| storage(e.into()))?
        .take(limit)
    {
        let (sequence, record) = entry.map_err(|e| storage(e.into()))?;
        events.push(Arc::new(decode_record(sequence.value(), record.value())?));
    }
    Ok(events)
}

/// Binary search for the first event received at or after `nanos`: `received_at` never goes
/// backwards along the sequence.
pub(super) fn sequence_at(
    db: &Database,
    first: Sequence,
    head: Sequence,
    nanos: u64,
) -> Result<Sequence, LogError> {
    let storage = |e: redb::Error| LogError::unavailable(e);
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    let table = txn.open_table(EVENTS).map_err(|e| storage(e.into()))?;
    let (mut low, mut high) = (first, head + 1);
    while low < high {
        let middle = low + (high - low) / 2;
        // An event removed by retention meanwhile counts as older than anything asked for.
        let at = table
            .get(middle)
            .map_err(|e| storage(e.into()))?
            .and_then(|record| record_time(record.value()))
            .unwrap_or(0);
        if at < nanos {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    Ok(low)
}

pub(super) fn read_state(db: &Database, key: &str) -> Result<Option<Versioned>, LogError> {
    let storage = |e: redb::Error| LogError::unavailable(e);
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    let table = txn.open_table(STATE).map_err(|e| storage(e.into()))?;
    let stored = table.get(key).map_err(|e| storage(e.into()))?;
    Ok(stored.map(|guard| {
        let (revision, value) = guard.value();
        Versioned {
            value: Bytes::copy_from_slice(value),
            revision,
        }
    }))
}

pub(super) fn count_state(db: &Database, prefix: &str) -> Result<usize, LogError> {
    let storage = |e: redb::Error| LogError::unavailable(e);
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    let table = txn.open_table(STATE).map_err(|e| storage(e.into()))?;
    let mut count = 0;
    for entry in table.range(prefix..).map_err(|e| storage(e.into()))? {
        let (key, _) = entry.map_err(|e| storage(e.into()))?;
        if !key.value().starts_with(prefix) {
            break;
        }
        count += 1;
    }
    Ok(count)
}

pub(super) fn nanos_since_epoch(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

fn timestamp(nanos: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX),
        nanos: i32::try_from(nanos % 1_000_000_000).unwrap_or(0),
    }
}
