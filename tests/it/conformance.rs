//! One conformance suite for every storage backend: what the log and the state store promise,
//! checked the same way against memory, embedded (redb) and NATS JetStream (a throwaway
//! `nats-server`). Backends differ inside; this suite is the promise.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use incode_gateway::{
    log::{
        AppendOutcome, Bounds, DedupKey, EmbeddedLog, MemoryLog, NatsLog, NewEvent, PutOutcome,
        ReadItem, Sequence, SharedState, Storage, embedded::EmbeddedSettings,
        memory::MemorySettings, nats::NatsSettings,
    },
    proto::v1,
    subscriptions::{
        ConsumerName, CursorError, Cursors, NameKind, Quota, QuotaError, QuotaSettings,
        SubscriberIdentity,
    },
};
use tempfile::TempDir;

use crate::support::{
    common::{Gateway, PATIENCE, drain_until_caught_up, next_progress, no_filter},
    nats_server::NatsServer,
};

/// Settings a test needs from its storage.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_events: Option<u64>,
}

impl Limits {
    fn none() -> Self {
        Self { max_events: None }
    }
}

const DEDUP_WINDOW: Duration = Duration::from_secs(3600);

#[async_trait]
trait Backend: Send + Sync {
    /// Opens the storage; after [`Backend::survives_restart`] backends, opening again after a
    /// close finds the same data.
    async fn open(&self, limits: Limits) -> Storage;
    fn survives_restart(&self) -> bool;
}

struct Memory;

#[async_trait]
impl Backend for Memory {
    async fn open(&self, limits: Limits) -> Storage {
        Storage::new(Arc::new(MemoryLog::new(MemorySettings {
            max_events: limits.max_events,
            ..MemorySettings::new(DEDUP_WINDOW)
        })))
    }

    fn survives_restart(&self) -> bool {
        false
    }
}

struct Embedded(TempDir);

impl Embedded {
    async fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
}

#[async_trait]
impl Backend for Embedded {
    async fn open(&self, limits: Limits) -> Storage {
        let mut options = EmbeddedSettings::new(DEDUP_WINDOW);
        options.max_events = limits.max_events;
        options.maintenance_interval = Duration::from_millis(50);
        Storage::new(Arc::new(EmbeddedLog::open(self.0.path(), options).unwrap()))
    }

    fn survives_restart(&self) -> bool {
        true
    }
}

struct Nats(NatsServer);

impl Nats {
    async fn new() -> Self {
        Self(NatsServer::start().await)
    }
}

#[async_trait]
impl Backend for Nats {
    async fn open(&self, limits: Limits) -> Storage {
        let mut options = NatsSettings::new(vec![self.0.url()], "CONFORMANCE");
        options.dedup_window = DEDUP_WINDOW;
        options.max_events = limits.max_events;
        Storage::new(Arc::new(NatsLog::connect(options).await.unwrap()))
    }

    fn survives_restart(&self) -> bool {
        true
    }
}

fn new_event(body: &str) -> NewEvent {
    NewEvent {
        dedup_key: DedupKey::for_notification("conformance", body.as_bytes()),
        event: v1::Event {
            id: body.to_owned(),
            r#type: v1::EventType::UnrecognizedNotification.into(),
            ..v1::Event::default()
        },
    }
}

async fn append_n(storage: &Storage, prefix: &str, n: usize) {
    for i in 0..n {
        let outcome = storage
            .log
            .append(new_event(&format!("{prefix}-{i}")))
            .await
            .unwrap();
        assert!(matches!(outcome, AppendOutcome::Appended(_)), "{outcome:?}");
    }
}

async fn next_item(reader: &mut Box<dyn incode_gateway::log::LogReader>) -> ReadItem {
    tokio::time::timeout(PATIENCE, reader.next())
        .await
        .expect("the reader yielded nothing in time")
        .unwrap()
}

/// The events a reader from `from` yields up to its first `CaughtUp`, and that `CaughtUp`.
async fn read_until_caught_up(storage: &Storage, from: Sequence) -> (Vec<v1::Event>, Sequence) {
    let mut reader = storage.log.read_from(from).await.unwrap();
    let mut events = Vec::new();
    loop {
        match next_item(&mut reader).await {
            ReadItem::Events(batch) => events.extend(batch.iter().map(|e| (**e).clone())),
            ReadItem::CaughtUp(sequence) => return (events, sequence),
            ReadItem::Gap { first, last } => panic!("unexpected gap {first}..={last}"),
        }
    }
}

fn sequences(events: &[v1::Event]) -> Vec<Sequence> {
    events.iter().map(|e| e.sequence).collect()
}

async fn sequences_start_at_one_and_repeats_are_duplicates(backend: impl Backend) {
    let storage = backend.open(Limits::none()).await;
    assert_eq!(
        storage.log.bounds().await.unwrap(),
        Bounds { first: 1, head: 0 }
    );
    let log = &storage.log;
    assert_eq!(
        log.append(new_event("a")).await.unwrap(),
        AppendOutcome::Appended(1)
    );
    assert_eq!(
        log.append(new_event("b")).await.unwrap(),
        AppendOutcome::Appended(2)
    );
    assert_eq!(
        log.append(new_event("a")).await.unwrap(),
        AppendOutcome::Duplicate(1)
    );
    assert_eq!(log.bounds().await.unwrap(), Bounds { first: 1, head: 2 });
    let (events, caught_up) = read_until_caught_up(&storage, 1).await;
    assert_eq!(caught_up, 2);
    let ids: Vec<_> = events.iter().map(|e| (e.sequence, e.id.as_str())).collect();
    assert_eq!(ids, [(1, "a"), (2, "b")]);
    // The log sets the sequence and the time; the rest is as appended.
    assert!(events.iter().all(|e| e.received_at.is_some()));
    assert_eq!(events[0].r#type(), v1::EventType::UnrecognizedNotification);
    assert!(log.known_head() >= 2);
}

async fn racing_identical_appends_store_one_event(backend: impl Backend) {
    let storage = backend.open(Limits::none()).await;
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let log = storage.log.clone();
            // Every body twice: each pair must make one event.
            tokio::spawn(async move {
                let body = format!("race-{}", i / 2);
                (body.clone(), log.append(new_event(&body)).await.unwrap())
            })
        })
        .collect();
    let mut appended = Vec::new();
    let mut by_body = std::collections::HashMap::new();
    for task in tasks {
        let (body, outcome) = task.await.unwrap();
        if let AppendOutcome::Appended(sequence) = outcome {
            appended.push(sequence);
        }
        let sequence = outcome.sequence();
        let first = *by_body.entry(body.clone()).or_insert(sequence);
        assert_eq!(first, sequence, "{body} has two sequences");
    }
    appended.sort_unstable();
    assert_eq!(appended, (1..=50).collect::<Vec<_>>());
}

async fn readers_start_anywhere_and_go_live(backend: impl Backend) {
    let storage = backend.open(Limits::none()).await;
    let before = SystemTime::now();
    append_n(&storage, "old", 3).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    append_n(&storage, "later", 2).await;

    for (from, expected) in [(1, vec![1, 2, 3, 4, 5]), (4, vec![4, 5]), (6, vec![])] {
        let (events, caught_up) = read_until_caught_up(&storage, from).await;
        assert_eq!(sequences(&events), expected, "from {from}");
        assert_eq!(caught_up, 5, "from {from}");
    }
    assert_eq!(storage.log.sequence_at(before).await.unwrap(), 1);
    assert_eq!(storage.log.sequence_at(middle).await.unwrap(), 4);
    assert_eq!(storage.log.sequence_at(SystemTime::now()).await.unwrap(), 6);

    // A reader at the head waits for the next event and yields it.
    let mut live = storage.log.read_from(6).await.unwrap();
    assert!(matches!(next_item(&mut live).await, ReadItem::CaughtUp(5)));
    let waiting = tokio::spawn(async move { next_item(&mut live).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    append_n(&storage, "live", 1).await;
    match waiting.await.unwrap() {
        ReadItem::Events(events) => assert_eq!(events[0].sequence, 6),
        other => panic!("expected the live event, got {other:?}"),
    }
}

/// The switch from replaying stored events to live ones, with appends racing it: a reader that is
/// mid-replay when new events arrive yields every sequence once, in order.
async fn the_seam_has_no_gap_and_no_repeat(backend: impl Backend) {
    let storage = backend.open(Limits::none()).await;
    const STORED: u64 = 600;
    const LIVE: u64 = 400;
    append_n(&storage, "stored", STORED as usize).await;

    let mut reader = storage.log.read_from(1).await.unwrap();
    // Mid-replay: the first batch is read, most stored events are not.
    let ReadItem::Events(first_batch) = next_item(&mut reader).await else {
        panic!("expected stored events first");
    };
    assert!(
        (first_batch.len() as u64) < STORED,
        "the replay must take several reads"
    );
    let mut seen: Vec<Sequence> = first_batch.iter().map(|e| e.sequence).collect();

    let appender = {
        let storage = storage.clone();
        tokio::spawn(async move { append_n(&storage, "live", LIVE as usize).await })
    };
    let mut caught_up = Vec::new();
    while (seen.len() as u64) < STORED + LIVE {
        match next_item(&mut reader).await {
            ReadItem::Events(events) => seen.extend(events.iter().map(|e| e.sequence)),
            ReadItem::CaughtUp(sequence) => {
                assert_eq!(Some(&sequence), seen.last(), "caught up where it stands");
                caught_up.push(sequence);
            }
            ReadItem::Gap { first, last } => panic!("gap {first}..={last}"),
        }
    }
    appender.await.unwrap();
    assert_eq!(seen, (1..=STORED + LIVE).collect::<Vec<_>>());
    assert!(
        caught_up.windows(2).all(|pair| pair[0] < pair[1]),
        "{caught_up:?}"
    );
}

async fn gaps_report_what_retention_removed(backend: impl Backend) {
    let storage = backend
        .open(Limits {
            max_events: Some(3),
        })
        .await;
    append_n(&storage, "kept", 6).await;
    // Retention runs on its own schedule in some backends.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while storage.log.bounds().await.unwrap().first != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not remove the oldest events: {:?}",
            storage.log.bounds().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut reader = storage.log.read_from(1).await.unwrap();
    assert!(matches!(
        next_item(&mut reader).await,
        ReadItem::Gap { first: 1, last: 3 }
    ));
    let mut seen = Vec::new();
    loop {
        match next_item(&mut reader).await {
            ReadItem::Events(events) => seen.extend(events.iter().map(|e| e.sequence)),
            ReadItem::CaughtUp(6) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, [4, 5, 6]);
    // A time before everything maps to the oldest retained event.
    assert_eq!(
        storage
            .log
            .sequence_at(SystemTime::UNIX_EPOCH)
            .await
            .unwrap(),
        4
    );
}

/// Through the gateway: a `since` older than the oldest retained event starts with a gap that
/// names what retention removed, as "nothing is skipped silently" promises; a `since` inside the
/// retained range starts at the first event received at or after it, with no gap.
async fn a_since_older_than_retention_starts_with_a_gap(backend: impl Backend) {
    use incode_gateway::proto::v1::{start_position::Position, subscribe_response::Response};

    let storage = backend
        .open(Limits {
            max_events: Some(3),
        })
        .await;
    let before = SystemTime::now();
    append_n(&storage, "old", 4).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    append_n(&storage, "new", 2).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while storage.log.bounds().await.unwrap().first != 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not remove the oldest events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gateway = Gateway::start_with_storage(
        Arc::new(tempfile::tempdir().unwrap()),
        incode_gateway::ServeArgs::for_tests(),
        storage,
    )
    .await;

    let mut stream = gateway
        .subscribe(Some(Position::Since(before.into())), no_filter())
        .await;
    match next_progress(&mut stream).await {
        Response::Gap(gap) => assert_eq!((gap.first_sequence, gap.last_sequence), (1, 3)),
        other => panic!("expected a gap first, got {other:?}"),
    }
    let events = drain_until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), [4, 5, 6]);

    let mut stream = gateway
        .subscribe(Some(Position::Since(middle.into())), no_filter())
        .await;
    let events = drain_until_caught_up(&mut stream).await;
    assert_eq!(sequences(&events), [5, 6]);
}

async fn state_writes_compare_and_set(backend: impl Backend) {
    let storage = backend.open(Limits::none()).await;
    let state = &storage.state;
    assert_eq!(state.get("group.a").await.unwrap(), None);
    let PutOutcome::Stored(first) = state
        .put("group.a", Bytes::from_static(b"1"), None)
        .await
        .unwrap()
    else {
        panic!("a new key is stored");
    };
    assert_eq!(
        state
            .put("group.a", Bytes::from_static(b"x"), None)
            .await
            .unwrap(),
        PutOutcome::Conflict,
        "a key that exists is not created again"
    );
    assert_eq!(
        state
            .put("group.a", Bytes::from_static(b"x"), Some(first + 100))
            .await
            .unwrap(),
        PutOutcome::Conflict,
        "a stale revision is refused"
    );
    let PutOutcome::Stored(second) = state
        .put("group.a", Bytes::from_static(b"2"), Some(first))
        .await
        .unwrap()
    else {
        panic!("the current revision is accepted");
    };
    assert_ne!(first, second);
    let stored = state.get("group.a").await.unwrap().unwrap();
    assert_eq!(
        (stored.value.as_ref(), stored.revision),
        (&b"2"[..], second)
    );

    state
        .put("group.b", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    state
        .put("other.c", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    assert_eq!(state.count("group.").await.unwrap(), 2);
    assert_eq!(state.count("other.").await.unwrap(), 1);
    assert_eq!(state.count("none.").await.unwrap(), 0);
}

/// Cursors in `state`, with room for `max` consumers (and groups) in all and per subscriber.
fn cursors(state: &SharedState, max: usize) -> Cursors {
    let limits = QuotaSettings {
        max_total: max,
        max_per_subscriber: max,
    };
    Cursors::new(state.clone(), Quota::new(state.clone(), limits))
}

fn anonymous() -> SubscriberIdentity {
    SubscriberIdentity::anonymous()
}

async fn cursors_only_move_forward_even_when_acks_race(backend: impl Backend) {
    let storage = backend.open(Limits::none()).await;
    let cursors = cursors(&storage.state, 100);
    let billing = ConsumerName::parse("billing").unwrap();
    assert_eq!(cursors.get(&billing).await.unwrap(), None);
    assert_eq!(cursors.ack(&billing, 5, &anonymous()).await.unwrap(), 5);
    assert_eq!(cursors.ack(&billing, 3, &anonymous()).await.unwrap(), 5);
    assert_eq!(cursors.get(&billing).await.unwrap(), Some(5));

    // Two "replicas" (two handles on the same state) ack at once, in scrambled order.
    let other = cursors.clone();
    let tasks: Vec<_> = (0..40u64)
        .map(|i| {
            let cursors = if i % 2 == 0 {
                cursors.clone()
            } else {
                other.clone()
            };
            let billing = billing.clone();
            let sequence = 10 + (i * 17) % 40;
            tokio::spawn(
                async move { cursors.ack(&billing, sequence, &anonymous()).await.unwrap() },
            )
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap() >= 10);
    }
    assert_eq!(cursors.get(&billing).await.unwrap(), Some(49));
}

async fn the_number_of_consumers_is_bounded(backend: impl Backend) {
    let storage = backend.open(Limits::none()).await;
    let limits = QuotaSettings {
        max_total: 4,
        max_per_subscriber: 2,
    };
    let quota = Quota::new(storage.state.clone(), limits);
    let cursors = Cursors::new(storage.state.clone(), quota.clone());
    let name = |n: &str| ConsumerName::parse(n).unwrap();
    // Dotted subscriber names, one the prefix of the other, keep apart on every backend.
    let billing = SubscriberIdentity::authenticated("billing");
    let billing_eu = SubscriberIdentity::authenticated("billing.eu");
    cursors.ack(&name("a"), 1, &billing).await.unwrap();
    cursors.ack(&name("b.x"), 1, &billing).await.unwrap();
    assert!(matches!(
        cursors.ack(&name("c"), 1, &billing).await,
        Err(CursorError::Quota(QuotaError::TooManyForSubscriber {
            max: 2,
            ..
        }))
    ));
    cursors.ack(&name("c"), 1, &billing_eu).await.unwrap();
    // A group (its record written as the groups write it) counts toward the same total.
    quota
        .admit(&billing_eu, NameKind::Group, "g")
        .await
        .unwrap();
    let group = format!("{}g", NameKind::Group.prefix());
    storage
        .state
        .put(&group, Bytes::from_static(b"{}"), None)
        .await
        .unwrap();
    assert!(matches!(
        cursors.ack(&name("d"), 1, &anonymous()).await,
        Err(CursorError::Quota(QuotaError::TooMany { max: 4 }))
    ));
    // Existing consumers keep working.
    assert_eq!(cursors.ack(&name("a"), 2, &billing).await.unwrap(), 2);
}

async fn events_dedup_keys_and_cursors_survive_a_restart(backend: impl Backend) {
    if !backend.survives_restart() {
        return;
    }
    let billing = ConsumerName::parse("billing").unwrap();
    let before = {
        let storage = backend.open(Limits::none()).await;
        append_n(&storage, "durable", 3).await;
        cursors(&storage.state, 10)
            .ack(&billing, 2, &anonymous())
            .await
            .unwrap();
        let (events, _) = read_until_caught_up(&storage, 1).await;
        storage.log.close().await.unwrap();
        events
    };
    let storage = backend.open(Limits::none()).await;
    assert_eq!(
        storage.log.bounds().await.unwrap(),
        Bounds { first: 1, head: 3 }
    );
    let (after, _) = read_until_caught_up(&storage, 1).await;
    assert_eq!(after, before, "the same events, times included");
    assert_eq!(
        storage.log.append(new_event("durable-0")).await.unwrap(),
        AppendOutcome::Duplicate(1),
        "Incode's retry after a restart is still recognised"
    );
    assert_eq!(
        cursors(&storage.state, 10).get(&billing).await.unwrap(),
        Some(2)
    );
    let ids: HashSet<_> = after.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 3);
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sequences_start_at_one_and_repeats_are_duplicates() {
                super::sequences_start_at_one_and_repeats_are_duplicates($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn racing_identical_appends_store_one_event() {
                super::racing_identical_appends_store_one_event($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn readers_start_anywhere_and_go_live() {
                super::readers_start_anywhere_and_go_live($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_seam_has_no_gap_and_no_repeat() {
                super::the_seam_has_no_gap_and_no_repeat($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn gaps_report_what_retention_removed() {
                super::gaps_report_what_retention_removed($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_since_older_than_retention_starts_with_a_gap() {
                super::a_since_older_than_retention_starts_with_a_gap($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn state_writes_compare_and_set() {
                super::state_writes_compare_and_set($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cursors_only_move_forward_even_when_acks_race() {
                super::cursors_only_move_forward_even_when_acks_race($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_number_of_consumers_is_bounded() {
                super::the_number_of_consumers_is_bounded($make).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn events_dedup_keys_and_cursors_survive_a_restart() {
                super::events_dedup_keys_and_cursors_survive_a_restart($make).await;
            }
        }
    };
}

conformance!(memory, Memory);
conformance!(embedded, Embedded::new().await);
conformance!(nats, Nats::new().await);
