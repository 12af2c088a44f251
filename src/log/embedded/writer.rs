//! The writer thread of the embedded log, and the read-side helpers that share its file format.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::{mpsc, oneshot};

use super::{
    CONSUMERS, DEDUP, DEDUP_EXPIRY, EVENTS, FORMAT_VERSION, META, META_FORMAT, META_HEAD, Opener,
    Options, Shared, decode_record, encode_record, lock, record_time,
};
use crate::{
    error::error_chain,
    log::{AppendOutcome, ConsumerName, LogError, NewEvent, Sequence},
    proto::v1,
};

type Reply<T> = oneshot::Sender<Result<T, LogError>>;

/// Work for the writer thread.
pub(super) enum Request {
    Append(Box<NewEvent>, Reply<AppendOutcome>),
    Ack(ConsumerName, Sequence, Reply<Sequence>),
    Maintain(Reply<()>),
    Probe(Reply<()>),
    Close(Reply<()>),
}

/// What the log holds when it is opened.
pub(super) struct Recovered {
    pub first: Sequence,
    pub head: Sequence,
    pub last_received_nanos: u64,
}

/// Events removed per retention transaction, so that a large clean-up never holds the writer
/// for long.
const RETENTION_CHUNK: usize = 10_000;

pub(super) struct Writer {
    shared: Arc<Shared>,
    db: Option<Arc<Database>>,
    opener: Opener,
    options: Options,
    head: Sequence,
    last_received_nanos: u64,
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        db: Arc<Database>,
        opener: Opener,
        options: Options,
        recovered: Recovered,
    ) -> Self {
        Self {
            shared,
            db: Some(db),
            opener,
            options,
            head: recovered.head,
            last_received_nanos: recovered.last_received_nanos,
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
        let mut acks = Vec::new();
        let mut others = Vec::new();
        for request in batch.drain(..) {
            match request {
                Request::Append(event, reply) => appends.push((*event, reply)),
                Request::Ack(consumer, sequence, reply) => acks.push((consumer, sequence, reply)),
                other => others.push(other),
            }
        }
        if !appends.is_empty() || !acks.is_empty() {
            self.commit(appends, acks);
        }
        let mut close_reply = None;
        for request in others {
            match request {
                Request::Maintain(reply) => {
                    let result = self.maintain();
                    let _ = reply.send(result);
                }
                Request::Probe(reply) => {
                    let result = self.probe();
                    let _ = reply.send(result);
                }
                Request::Close(reply) => close_reply = Some(reply),
                Request::Append(..) | Request::Ack(..) => {}
            }
        }
        close_reply
    }

    /// Appends and acks in one transaction and one fsync.
    fn commit(
        &mut self,
        appends: Vec<(NewEvent, Reply<AppendOutcome>)>,
        acks: Vec<(ConsumerName, Sequence, Reply<Sequence>)>,
    ) {
        let (events, replies): (Vec<_>, Vec<_>) = appends.into_iter().unzip();
        let (cursors, ack_replies): (Vec<_>, Vec<_>) = acks
            .into_iter()
            .map(|(consumer, sequence, reply)| ((consumer, sequence), reply))
            .unzip();
        match self.write(events, &cursors) {
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
                for (reply, cursor) in ack_replies.into_iter().zip(written.cursors) {
                    let _ = reply.send(Ok(cursor));
                }
            }
            Err(error) => {
                let message = self.fail(&error);
                for reply in replies {
                    let _ = reply.send(Err(LogError::Storage(message.clone().into())));
                }
                for reply in ack_replies {
                    let _ = reply.send(Err(LogError::Storage(message.clone().into())));
                }
            }
        }
    }

    fn write(
        &mut self,
        events: Vec<NewEvent>,
        cursors: &[(ConsumerName, Sequence)],
    ) -> Result<Written, redb::Error> {
        let db = self.database()?;
        let now = nanos_since_epoch(SystemTime::now()).max(self.last_received_nanos);
        let horizon = now.saturating_sub(duration_nanos(self.options.dedup_window));
        let received_at = timestamp(now);
        let mut head = self.head;
        let mut written = Written {
            outcomes: Vec::with_capacity(events.len()),
            events: Vec::with_capacity(events.len()),
            cursors: Vec::with_capacity(cursors.len()),
        };

        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(EVENTS)?;
            let mut dedup = txn.open_table(DEDUP)?;
            let mut expiry = txn.open_table(DEDUP_EXPIRY)?;
            for new in events {
                let key = new.dedup_key.as_bytes();
                let seen = dedup.get(key)?.map(|guard| guard.value());
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
                dedup.insert(key, (head, now))?;
                expiry.insert((now, key), ())?;
                written.outcomes.push(AppendOutcome::Appended(head));
                written.events.push(Arc::new(event));
            }

            let mut consumers = txn.open_table(CONSUMERS)?;
            for (consumer, sequence) in cursors {
                let current = consumers
                    .get(consumer.as_str())?
                    .map_or(0, |guard| guard.value());
                let cursor = current.max(*sequence);
                if cursor != current {
                    consumers.insert(consumer.as_str(), cursor)?;
                }
                written.cursors.push(cursor);
            }

            txn.open_table(META)?.insert(META_HEAD, head)?;
        }
        txn.commit()?;
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
        result.map_err(|error| LogError::Storage(self.fail(&error).into()))
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
            let count;
            {
                let mut expiry = txn.open_table(DEDUP_EXPIRY)?;
                let mut dedup = txn.open_table(DEDUP)?;
                let mut doomed = Vec::new();
                for entry in expiry.range(..(horizon, &[0u8; 32]))?.take(RETENTION_CHUNK) {
                    let (key, _) = entry?;
                    let (at, dedup_key) = key.value();
                    doomed.push((at, *dedup_key));
                }
                count = doomed.len();
                for (at, key) in &doomed {
                    expiry.remove((*at, key))?;
                    let current = dedup.get(key)?.map(|guard| guard.value());
                    // A key seen again later has a newer entry that must stay.
                    if current.is_some_and(|(_, seen)| seen == *at) {
                        dedup.remove(key)?;
                    }
                }
            }
            if count == 0 {
                txn.abort()?;
                break;
            }
            txn.commit()?;
            forgotten += count as u64;
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
            Err(error) => Err(LogError::Storage(self.fail(&error).into())),
        }
    }

    /// The database, reopened if a failure closed it.
    fn database(&mut self) -> Result<Arc<Database>, redb::Error> {
        if let Some(db) = &self.db {
            return Ok(db.clone());
        }
        let db = Arc::new((self.opener)()?);
        let recovered = recover(&db)?;
        if recovered.head != self.head {
            tracing::warn!(
                before = self.head,
                after = recovered.head,
                "event log head changed across reopening"
            );
            self.head = recovered.head;
        }
        self.last_received_nanos = self.last_received_nanos.max(recovered.last_received_nanos);
        *self.shared.db.write().unwrap_or_else(|p| p.into_inner()) = Some(db.clone());
        self.db = Some(db.clone());
        tracing::info!("event log storage reopened");
        Ok(db)
    }

    /// Records a storage failure. redb refuses every operation after an I/O error until the
    /// database is reopened, so the database is dropped here and reopened by the next write.
    fn fail(&mut self, error: &redb::Error) -> String {
        let message = format!("event log storage failed: {}", error_chain(error));
        tracing::error!(error = %message, "event log write failed; answering 503 until storage recovers");
        *lock(&self.shared.failure) = Some(message.clone());
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
        message
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
    events: Vec<Arc<v1::Event>>,
    cursors: Vec<Sequence>,
}

/// Creates the tables of a new log, or checks an existing one, and reads where it stands.
pub(super) fn recover(db: &Database) -> Result<Recovered, redb::Error> {
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
        recovered = Recovered {
            first: first.unwrap_or(head + 1),
            head,
            last_received_nanos: last.and_then(|(_, at)| at).unwrap_or(0),
        };
        drop(events);
        txn.open_table(DEDUP)?;
        txn.open_table(DEDUP_EXPIRY)?;
        txn.open_table(CONSUMERS)?;
    }
    txn.commit()?;
    Ok(recovered)
}

pub(super) fn read_events(
    db: &Database,
    from: Sequence,
    limit: usize,
) -> Result<Vec<Arc<v1::Event>>, LogError> {
    let storage = |e: redb::Error| LogError::Storage(e.into());
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
    let storage = |e: redb::Error| LogError::Storage(e.into());
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

pub(super) fn read_cursor(
    db: &Database,
    consumer: &ConsumerName,
) -> Result<Option<Sequence>, LogError> {
    let storage = |e: redb::Error| LogError::Storage(e.into());
    let txn = db.begin_read().map_err(|e| storage(e.into()))?;
    let table = txn.open_table(CONSUMERS).map_err(|e| storage(e.into()))?;
    let cursor = table
        .get(consumer.as_str())
        .map_err(|e| storage(e.into()))?
        .map(|guard| guard.value());
    Ok(cursor)
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
