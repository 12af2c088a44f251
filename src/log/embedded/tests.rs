use std::time::Duration;

use super::*;
use crate::log::DedupKey;

fn new_event(body: &str) -> NewEvent {
    NewEvent {
        dedup_key: DedupKey::for_notification("test", body.as_bytes()),
        event: v1::Event {
            id: body.to_owned(),
            ..v1::Event::default()
        },
    }
}

fn options() -> Options {
    Options::new(Duration::from_secs(3600))
}

#[tokio::test]
async fn events_cursors_and_dedup_keys_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = EmbeddedLog::open(dir.path(), options()).unwrap();
        assert_eq!(log.bounds(), Bounds { first: 1, head: 0 });
        assert_eq!(
            log.append(new_event("a")).await.unwrap(),
            AppendOutcome::Appended(1)
        );
        assert_eq!(
            log.append(new_event("b")).await.unwrap(),
            AppendOutcome::Appended(2)
        );
        let consumer = ConsumerName::parse("billing").unwrap();
        assert_eq!(log.ack(&consumer, 2).await.unwrap(), 2);
        assert_eq!(
            log.ack(&consumer, 1).await.unwrap(),
            2,
            "acks never go backwards"
        );
        log.close().await.unwrap();
        assert!(matches!(
            log.append(new_event("c")).await,
            Err(LogError::Closed)
        ));
    }
    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    assert_eq!(log.bounds(), Bounds { first: 1, head: 2 });
    assert_eq!(
        log.append(new_event("a")).await.unwrap(),
        AppendOutcome::Duplicate(1)
    );
    assert_eq!(
        log.append(new_event("c")).await.unwrap(),
        AppendOutcome::Appended(3)
    );
    let events = log.read(1, 10).await.unwrap();
    let ids: Vec<_> = events.iter().map(|e| (e.sequence, e.id.as_str())).collect();
    assert_eq!(ids, [(1, "a"), (2, "b"), (3, "c")]);
    let consumer = ConsumerName::parse("billing").unwrap();
    assert_eq!(log.cursor(&consumer).await.unwrap(), Some(2));
    assert_eq!(
        log.cursor(&ConsumerName::parse("new").unwrap())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_get_distinct_sequences_and_identical_ones_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EmbeddedLog::open(dir.path(), options()).unwrap());
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let log = log.clone();
            // Every body twice: each pair must produce one event.
            tokio::spawn(async move { log.append(new_event(&format!("e{}", i / 2))).await })
        })
        .collect();
    let mut appended = Vec::new();
    for task in tasks {
        if let AppendOutcome::Appended(sequence) = task.await.unwrap().unwrap() {
            appended.push(sequence);
        }
    }
    appended.sort_unstable();
    assert_eq!(appended, (1..=100).collect::<Vec<_>>());
    // Reads from disk (past the in-memory tail) agree with reads from the tail.
    let cold = EmbeddedLog::open(tempfile::tempdir().unwrap().path(), options()).unwrap();
    drop(cold);
    let events = log.read(1, 1000).await.unwrap();
    assert_eq!(events.len(), 100);
}

#[tokio::test]
async fn reads_beyond_the_tail_come_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options();
    options.tail_capacity = 4;
    let log = EmbeddedLog::open(dir.path(), options).unwrap();
    for i in 0..10 {
        log.append(new_event(&format!("e{i}"))).await.unwrap();
    }
    let events = log.read(2, 5).await.unwrap();
    let sequences: Vec<_> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [2, 3, 4, 5, 6]);
    let events = log.read(8, 5).await.unwrap();
    let sequences: Vec<_> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [8, 9, 10]);
    assert!(log.read(11, 5).await.unwrap().is_empty());
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
        assert_eq!(log.bounds(), Bounds { first: 3, head: 5 });
        let sequences: Vec<_> = log
            .read(1, 10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.sequence)
            .collect();
        assert_eq!(sequences, [3, 4, 5]);
        log.close().await.unwrap();
    }
    // Age-based retention that removes everything still keeps the head for new sequences.
    options.max_events = None;
    options.retention = Duration::ZERO;
    let log = EmbeddedLog::open(dir.path(), options).unwrap();
    assert_eq!(log.bounds(), Bounds { first: 3, head: 5 });
    log.maintain().await.unwrap();
    assert_eq!(log.bounds(), Bounds { first: 6, head: 5 });
    assert!(log.read(1, 10).await.unwrap().is_empty());
    assert_eq!(
        log.append(new_event("later")).await.unwrap(),
        AppendOutcome::Appended(6)
    );
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
async fn sequence_at_searches_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(dir.path(), options()).unwrap();
    let before = SystemTime::now();
    log.append(new_event("a")).await.unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let middle = SystemTime::now();
    log.append(new_event("b")).await.unwrap();
    assert_eq!(log.sequence_at(before).await.unwrap(), 1);
    assert_eq!(log.sequence_at(middle).await.unwrap(), 2);
    assert_eq!(log.sequence_at(SystemTime::now()).await.unwrap(), 3);
}

#[tokio::test]
async fn a_failing_disk_fails_appends_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let switch = FaultSwitch::new();
    let log = EmbeddedLog::open_with_faults(dir.path(), options(), switch.clone()).unwrap();
    log.append(new_event("a")).await.unwrap();

    switch.set_failing(true);
    assert!(matches!(
        log.append(new_event("b")).await,
        Err(LogError::Storage(_))
    ));
    assert!(log.check_ready().await.is_err());
    assert!(matches!(
        log.append(new_event("b")).await,
        Err(LogError::Storage(_))
    ));
    assert_eq!(log.bounds().head, 1);

    switch.set_failing(false);
    log.check_ready().await.unwrap();
    assert_eq!(
        log.append(new_event("b")).await.unwrap(),
        AppendOutcome::Appended(2)
    );
    let sequences: Vec<_> = log
        .read(1, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, [1, 2]);
}

#[tokio::test]
async fn a_file_that_is_not_a_log_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let garbage = b"this is not a redb database, and must not be overwritten".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let error = EmbeddedLog::open(dir.path(), options()).err().unwrap();
    assert!(matches!(error, LogError::Open { .. }), "{error:?}");
    assert_eq!(std::fs::read(&path).unwrap(), garbage);
}

#[tokio::test]
async fn a_second_gateway_cannot_open_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedLog::open(dir.path(), options()).unwrap();
    let error = EmbeddedLog::open(dir.path(), options()).err().unwrap();
    assert!(matches!(error, LogError::Open { .. }), "{error:?}");
}
