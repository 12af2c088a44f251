//! What only the embedded backend does: the in-memory tail beside the disk, maintenance, a
//! failing disk, the file format. The promises every backend keeps are checked by the
//! conformance suite in `tests/it/conformance/`.

use std::time::Duration;

use super::*;
use crate::log::{DedupKey, LoggedEvent, ReadItem};

fn new_event(body: &str) -> NewEvent {
    NewEvent {
        dedup_key: DedupKey::for_notification("test", body.as_bytes()),
        event: v1::Event {
            id: body.to_owned(),
            ..v1::Event::default()
        },
    }
}

fn options() -> EmbeddedSettings {
    EmbeddedSettings::new(Duration::from_secs(3600))
}

/// Every event a reader from `from` yields until it is caught up.
async fn read_all(log: &EmbeddedLog, from: Sequence) -> Vec<Arc<LoggedEvent>> {
    let mut reader = log.read_from(from).await.unwrap();
    let mut events = Vec::new();
    loop {
        match reader.next().await.unwrap() {
            ReadItem::Events(batch) => events.extend(batch),
            ReadItem::Gap { .. } => {}
            ReadItem::CaughtUp(_) => return events,
        }
    }
}

fn sequences(events: &[Arc<LoggedEvent>]) -> Vec<Sequence> {
    events.iter().map(|e| e.sequence).collect()
}

/// The ids of every stored event, in order.
async fn ids(log: &EmbeddedLog) -> Vec<String> {
    read_all(log, 1)
        .await
        .iter()
        .map(|e| e.id.clone())
        .collect()
}

/// A log in a new directory whose disk fails when the returned switch says so.
fn faulty_log(options: EmbeddedSettings) -> (tempfile::TempDir, FaultSwitch, EmbeddedLog) {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::new();
    let log = EmbeddedLog::open_with_faults(dir.path(), options, switch.clone()).unwrap();
    (dir, switch, log)
}

/// Asserts that an append failed because the storage is unavailable.
fn assert_unavailable(appended: Result<AppendOutcome, LogError>) {
    assert!(
        matches!(appended, Err(LogError::Unavailable(_))),
        "{appended:?}"
    );
}

#[tokio::test]
async fn reads_from_disk_and_from_the_tail_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options();
    options.tail_capacity = 4;
    let log = EmbeddedLog::open(dir.path(), options.clone()).unwrap();
    for i in 0..10 {
        log.append(new_event(&format!("e{i}"))).await.unwrap();
    }
    // The tail holds 7..=10 only: a read from 2 starts on disk, a read from 7 in memory.
    let oldest_in_tail = lock(&log.shared.tail).front().unwrap().sequence;
    assert_eq!(oldest_in_tail, 7);
    let from_disk = log.shared.read(2, 100).await.unwrap();
    assert_eq!(sequences(&from_disk), [2, 3, 4, 5, 6, 7, 8, 9, 10]);
    let from_tail = log.shared.read(7, 100).await.unwrap();
    assert_eq!(sequences(&from_tail), [7, 8, 9, 10]);
    // Each read took the path it should: the tail hands out its own events, the disk new ones.
    let tail: Vec<_> = lock(&log.shared.tail).iter().cloned().collect();
    for (read, kept) in from_tail.iter().zip(&tail) {
        assert!(
            Arc::ptr_eq(read, kept),
            "{} not from the tail",
            read.sequence
        );
    }
    for read in &from_disk {
        assert!(
            !tail.iter().any(|kept| Arc::ptr_eq(read, kept)),
            "{} not from disk",
            read.sequence
        );
    }
    // The same events either way, field for field, and each the one appended.
    for event in &from_tail {
        let on_disk = from_disk
            .iter()
            .find(|e| e.sequence == event.sequence)
            .unwrap();
        assert_eq!(on_disk.event(), event.event());
        // The encoding taken from disk as it is equals the one made from the event in memory.
        assert_eq!(on_disk.encoded(), event.encoded());
        assert!(event.received_at.is_some());
    }
    let ids: Vec<_> = from_disk.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["e1", "e2", "e3", "e4", "e5", "e6", "e7", "e8", "e9"]);
    assert!(log.shared.read(11, 5).await.unwrap().is_empty());

    // After a restart the tail is empty and everything comes from disk, unchanged.
    let before_restart: Vec<v1::Event> = from_disk.iter().map(|e| (**e).clone()).collect();
    log.close().await.unwrap();
    drop(log);
    let log = EmbeddedLog::open(dir.path(), options).unwrap();
    assert!(lock(&log.shared.tail).is_empty());
    let after_restart: Vec<v1::Event> = log
        .shared
        .read(2, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| (**e).clone())
        .collect();
    assert_eq!(after_restart, before_restart);
}

#[tokio::test]
async fn retention_removes_the_oldest_events_and_keeps_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options();
    options.max_events = Some(3);
    options.tail_capacity = 2;
    {
        let log = EmbeddedLog::open(dir.path(), options.clone()).unwrap();
        for i in 0..5 {
            log.append(new_event(&format!("e{i}"))).await.unwrap();
        }
        log.maintain().await.unwrap();
        assert_eq!(log.bounds().await.unwrap(), Bounds { first: 3, head: 5 });
        assert_eq!(sequences(&read_all(&log, 3).await), [3, 4, 5]);
        log.close().await.unwrap();
    }
    // Age-based retention that removes everything still keeps the head for new sequences.
    options.max_events = None;
    options.retention = Duration::ZERO;
    let log = EmbeddedLog::open(dir.path(), options).unwrap();
    assert_eq!(log.bounds().await.unwrap(), Bounds { first: 3, head: 5 });
    log.maintain().await.unwrap();
    assert_eq!(log.bounds().await.unwrap(), Bounds { first: 6, head: 5 });
    assert!(read_all(&log, 6).await.is_empty());
    assert_eq!(
        log.append(new_event("later")).await.unwrap(),
        AppendOutcome::Appended(6)
    );
}

#[tokio::test]
async fn the_maintenance_ticker_applies_retention_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options();
    options.max_events = Some(2);
    options.maintenance_interval = Duration::from_millis(50);
    let log = EmbeddedLog::open(dir.path(), options).unwrap();
    for i in 0..5 {
        log.append(new_event(&format!("e{i}"))).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.bounds().await.unwrap().first != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn expired_dedup_keys_are_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options();
    options.dedup_window = Duration::from_millis(1);
    let log = EmbeddedLog::open(dir.path(), options).unwrap();
    log.append(new_event("a")).await.unwrap();
    std::thread::sleep(Duration::from_millis(5));
    log.maintain().await.unwrap();
    assert_eq!(
        log.append(new_event("a")).await.unwrap(),
        AppendOutcome::Appended(2)
    );
}

#[tokio::test]
async fn a_failing_disk_fails_appends_until_it_recovers() {
    let (_dir, switch, log) = faulty_log(options());
    log.append(new_event("a")).await.unwrap();

    switch.set_failing(true);
    assert_unavailable(log.append(new_event("b")).await);
    assert!(log.check_ready().await.is_err());
    assert_unavailable(log.append(new_event("b")).await);
    assert_eq!(log.bounds().await.unwrap().head, 1);

    switch.set_failing(false);
    log.check_ready().await.unwrap();
    assert_eq!(
        log.append(new_event("b")).await.unwrap(),
        AppendOutcome::Appended(2)
    );
    assert_eq!(sequences(&read_all(&log, 1).await), [1, 2]);
}

/// The cause of a storage failure is the source of every error it makes, so that logs show it.
#[tokio::test]
async fn a_storage_failure_is_the_cause_of_what_it_fails() {
    let (_dir, switch, log) = faulty_log(options());
    switch.set_failing(true);
    let refused = log.append(new_event("a")).await.unwrap_err();
    // Reads that need the file while it is closed fail with the same cause.
    let unread = log.get("consumer.billing").await.unwrap_err();
    for error in [&refused, &unread] {
        let cause = std::error::Error::source(error)
            .and_then(|cause| cause.downcast_ref::<StorageFailure>())
            .unwrap_or_else(|| panic!("{error:?}"));
        let redb = std::error::Error::source(cause)
            .and_then(|cause| cause.downcast_ref::<Arc<redb::Error>>())
            .unwrap_or_else(|| panic!("{cause:?}"));
        assert!(matches!(**redb, redb::Error::Io(_)), "{redb:?}");
        assert_eq!(
            crate::error::error_chain(error),
            "event log storage is unavailable: event log storage failed: I/O error: injected storage fault"
        );
    }
}

#[tokio::test]
async fn a_failed_log_recovers_without_anyone_asking() {
    let (_dir, switch, log) = faulty_log(options());
    switch.set_failing(true);
    assert!(log.append(new_event("a")).await.is_err());
    assert!(lock(&log.shared.failure).is_some());
    switch.set_failing(false);
    // Nobody calls check_ready: the ticker's probe clears the failure.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while lock(&log.shared.failure).is_some() {
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(log.shared.database().is_ok());
}

/// Waits (at most 10 s) until `ready` holds.
async fn until(what: &str, ready: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(tokio::time::Instant::now() < deadline, "{what}: never");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Appends `count` events while the commit before them is held in its sync, and returns how
/// many syncs they took once it is let go, beyond the held commit's.
async fn syncs_for_queued_appends(max_commit_batch: usize, count: usize) -> u64 {
    let mut options = options();
    options.max_commit_batch = max_commit_batch;
    let (_dir, switch, log) = faulty_log(options);
    let log = Arc::new(log);
    let before = switch.syncs();
    log.append(new_event("alone")).await.unwrap();
    let per_commit = switch.syncs() - before;
    assert!(per_commit >= 1, "a commit syncs");

    // The writer is held in the sync of one commit while `count` appends queue up behind it.
    switch.hold_syncs(true);
    let held = {
        let log = log.clone();
        tokio::spawn(async move { log.append(new_event("held")).await })
    };
    until("the writer waits in a sync", || switch.held_syncs() == 1).await;
    let queued: Vec<_> = (0..count)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(new_event(&format!("queued-{i}"))).await })
        })
        .collect();
    until("every append is queued", || {
        log.requests.capacity() == QUEUE_CAPACITY - count
    })
    .await;
    let before = switch.syncs();
    switch.hold_syncs(false);
    assert_eq!(held.await.unwrap().unwrap(), AppendOutcome::Appended(2));
    let mut sequences = Vec::new();
    for append in queued {
        sequences.push(append.await.unwrap().unwrap().sequence());
    }
    sequences.sort_unstable();
    assert_eq!(sequences, (3..3 + count as u64).collect::<Vec<_>>());
    assert_eq!(log.bounds().await.unwrap().head, 2 + count as u64);
    let syncs = switch.syncs() - before;
    // The held commit's own syncs, then the queued appends'.
    assert_eq!(
        syncs % per_commit,
        0,
        "{syncs} syncs, {per_commit} per commit"
    );
    syncs / per_commit - 1
}

/// Group commit: appends that queue while a commit is being made share the next transaction
/// and its fsync, however many there are; with a batch of 1, each has its own.
#[tokio::test]
async fn appends_that_wait_for_a_commit_share_the_next_one() {
    assert_eq!(syncs_for_queued_appends(1024, 50).await, 1);
    assert_eq!(syncs_for_queued_appends(1024, 1).await, 1);
    assert_eq!(syncs_for_queued_appends(20, 50).await, 3);
    assert_eq!(syncs_for_queued_appends(1, 10).await, 10);
}

/// A commit whose fsync fails leaves its data in the file (the system's cache), looking
/// committed. It was answered as failed, so the reopened log must not hold it: a reader would
/// otherwise deliver an event Incode was told was not stored, under a sequence a crash before
/// the data reached the disk would give to another event.
#[tokio::test]
async fn an_append_whose_sync_failed_is_not_stored() {
    let (dir, switch, log) = faulty_log(options());
    log.append(new_event("before")).await.unwrap();

    switch.set_failing_syncs(true);
    assert_unavailable(log.append(new_event("during")).await);
    assert_eq!(log.bounds().await.unwrap().head, 1);
    switch.set_failing_syncs(false);
    log.check_ready().await.unwrap();

    assert_eq!(log.bounds().await.unwrap().head, 1);
    assert_eq!(ids(&log).await, ["before"]);
    // Incode's retry is a new event, not a duplicate of one never acknowledged.
    assert_eq!(
        log.append(new_event("during")).await.unwrap(),
        AppendOutcome::Appended(2)
    );
    assert_eq!(
        log.append(new_event("after")).await.unwrap(),
        AppendOutcome::Appended(3)
    );
    assert_eq!(ids(&log).await, ["before", "during", "after"]);
    log.close().await.unwrap();
    // And so it stays on disk.
    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    assert_eq!(ids(&log).await, ["before", "during", "after"]);
}

#[tokio::test]
async fn format_1_cursors_are_moved_into_the_state_table() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = redb::Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            txn.open_table(META)
                .unwrap()
                .insert(META_FORMAT, 1)
                .unwrap();
            txn.open_table(META).unwrap().insert(META_HEAD, 0).unwrap();
            let mut consumers = txn.open_table(LEGACY_CONSUMERS).unwrap();
            consumers.insert("billing", 42).unwrap();
        }
        txn.commit().unwrap();
    }
    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    // Where and how durable consumers' cursors keep them: `consumer.<name>`, a big-endian u64,
    // moved forward with compare-and-set.
    let key = "consumer.billing";
    let stored = log.get(key).await.unwrap().unwrap();
    assert_eq!(stored.value.as_ref(), 42u64.to_be_bytes());
    let acked = bytes::Bytes::copy_from_slice(&43u64.to_be_bytes());
    let outcome = log.put(key, acked, Some(stored.revision)).await.unwrap();
    assert!(matches!(outcome, PutOutcome::Stored(_)), "{outcome:?}");
    assert_eq!(
        log.get(key).await.unwrap().unwrap().value.as_ref(),
        43u64.to_be_bytes()
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_log_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let garbage = b"this is not a redb database, and must not be overwritten".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let error = EmbeddedLog::open(dir.path(), options()).err().unwrap();
    assert_eq!(error.path, path);
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[tokio::test]
async fn a_second_gateway_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedLog::open(dir.path(), options()).unwrap();
    let error = EmbeddedLog::open(dir.path(), options()).err().unwrap();
    assert!(
        crate::error::error_chain(&error).contains("lock") || format!("{error:?}").contains("Lock"),
        "{error:?}"
    );
}
