//! The subscriber's side: start positions, the catch-up/live seam, filters, heartbeats.

use std::time::{Duration, SystemTime};

use incode_gateway::{
    ServeArgs,
    log::{EmbeddedLog, EventLog, Storage},
    proto::v1::{self, EventFilter, start_position::Position, subscribe_response::Response},
};
use tonic::Code;

use crate::support::{common::*, gated::GatedLog};

async fn post_n(gateway: &Gateway, prefix: &str, n: usize) {
    for i in 0..n {
        gateway
            .notify(
                "/webhooks/incode/onboarding-status",
                &onboarding_body(&format!("{prefix}-{i}"), "ONBOARDING_FINISHED"),
            )
            .await;
    }
}

#[tokio::test]
async fn latest_sees_only_new_events() {
    let gateway = Gateway::start().await;
    post_n(&gateway, "old", 3).await;
    let mut stream = gateway.subscribe(None, no_filter()).await;
    let mut explicit = gateway.subscribe(latest(), no_filter()).await;
    post_n(&gateway, "new", 1).await;
    assert_eq!(next_event(&mut stream).await.sequence, 4);
    assert_eq!(next_event(&mut explicit).await.sequence, 4);
}

#[tokio::test]
async fn earliest_and_after_sequence_replay_then_go_live() {
    let gateway = Gateway::start().await;
    post_n(&gateway, "a", 5).await;

    let mut head = 5;
    for (position, first) in [
        (earliest(), 1),
        (Some(Position::AfterSequence(0)), 1),
        (Some(Position::AfterSequence(3)), 4),
        (Some(Position::AfterSequence(head)), head + 1),
    ] {
        let mut stream = gateway.subscribe(position, no_filter()).await;
        for expected in first..=head {
            assert_eq!(next_event(&mut stream).await.sequence, expected);
        }
        assert_eq!(expect_caught_up(&mut stream).await, head);
        post_n(&gateway, &format!("live-{head}"), 1).await;
        head += 1;
        assert_eq!(next_event(&mut stream).await.sequence, head);
    }
}

#[tokio::test]
async fn after_sequence_beyond_the_head_is_out_of_range() {
    let gateway = Gateway::start().await;
    post_n(&gateway, "a", 2).await;
    let status = gateway
        .try_subscribe(Some(Position::AfterSequence(3)), no_filter())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert!(status.message().contains("beyond"), "{}", status.message());
}

#[tokio::test]
async fn since_starts_at_the_first_event_received_at_or_after_the_time() {
    let gateway = Gateway::start().await;
    post_n(&gateway, "before", 2).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let middle = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    post_n(&gateway, "after", 2).await;

    let mut stream = gateway
        .subscribe(Some(Position::Since(middle.into())), no_filter())
        .await;
    assert_eq!(next_event(&mut stream).await.sequence, 3);
    assert_eq!(next_event(&mut stream).await.sequence, 4);
    assert_eq!(expect_caught_up(&mut stream).await, 4);

    // Nothing was removed: a time before everything starts at the first event, with no gap.
    let mut stream = gateway
        .subscribe(
            Some(Position::Since(SystemTime::UNIX_EPOCH.into())),
            no_filter(),
        )
        .await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);

    let future = SystemTime::now() + Duration::from_secs(3600);
    let status = gateway
        .try_subscribe(Some(Position::Since(future.into())), no_filter())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_empty_log_is_caught_up_at_zero() {
    let gateway = Gateway::start().await;
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(expect_caught_up(&mut stream).await, 0);
    post_n(&gateway, "x", 1).await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
}

/// The switch from the stored events to the live ones, made to happen the same way every time:
/// the subscriber is held mid-replay while webhooks keep arriving, so its replay must take in
/// events stored after it started; then appends are held, the replay ends, and the appends in
/// flight land exactly between the reader finding itself caught up and the stream saying so.
/// Every event arrives once, in order, and `caught_up` comes once, where the replay ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_switches_to_live_under_concurrent_appends_without_gap_or_repeat() {
    /// More than one read batch, so the replay takes several reads.
    const STORED: u64 = 300;
    /// Appends let through while the subscriber is held mid-replay.
    const DURING_REPLAY: u64 = 100;
    const TOTAL: u64 = 600;
    const WRITERS: usize = 6;

    let data_dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let mut config = ServeArgs::for_tests();
    config.data_dir = data_dir.path().to_owned();
    // No heartbeat may cancel a held read.
    config.heartbeat_interval = Duration::from_secs(3600);
    let embedded: std::sync::Arc<EmbeddedLog> = std::sync::Arc::new(
        EmbeddedLog::open(data_dir.path(), config.embedded_settings()).unwrap(),
    );
    let mut log = GatedLog::new(embedded.clone());
    // The first read (a full batch) passes; the reader is held before the second one.
    log.free_reads = 1;
    log.reads.close();
    let appends = log.appends.clone();
    let reads = log.reads.clone();
    // When the reader has found itself caught up, and before the stream says so: let the held
    // appends through, wait until one is stored, and hold the rest again, so that nothing but
    // those events can wake the reader.
    let head_after_switch = std::sync::Arc::new(std::sync::Mutex::new(None));
    {
        let appends = appends.clone();
        let embedded = embedded.clone();
        let head_after_switch = head_after_switch.clone();
        *log.on_caught_up.lock().unwrap() = Some(Box::new(move |caught_up| {
            Box::pin(async move {
                appends.open();
                let deadline = tokio::time::Instant::now() + PATIENCE;
                loop {
                    let head = embedded.bounds().await.unwrap().head;
                    if head > caught_up {
                        appends.close();
                        // Appends past the gate before it closed still land.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        let head = embedded.bounds().await.unwrap().head;
                        *head_after_switch.lock().unwrap() = Some(head);
                        return;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no held append was stored"
                    );
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        }));
    }
    let storage = Storage {
        log: std::sync::Arc::new(log),
        state: embedded.clone(),
    };
    let gateway = std::sync::Arc::new(Gateway::start_with_storage(data_dir, config, storage).await);
    post_n(&gateway, "stored", STORED as usize).await;

    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    reads.until_waiting(1).await;

    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(STORED));
    let writers: Vec<_> = (0..WRITERS)
        .map(|_| {
            let gateway = gateway.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if n >= TOTAL {
                        return;
                    }
                    gateway
                        .notify(
                            "/webhooks/incode/onboarding-status",
                            &onboarding_body(&format!("live-{n}"), "UNKNOWN"),
                        )
                        .await;
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while embedded.bounds().await.unwrap().head < STORED + DURING_REPLAY {
        assert!(tokio::time::Instant::now() < deadline, "appends stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    appends.close();
    appends.until_waiting(1).await;
    reads.open();

    let mut sequences = Vec::new();
    let mut caught_up = Vec::new();
    while (sequences.len() as u64) < TOTAL {
        match next_progress(&mut stream).await {
            Response::Event(event) => sequences.push(event.sequence),
            Response::CaughtUp(at) => {
                caught_up.push((at.sequence, sequences.len() as u64));
                // The events stored at the switch arrive while appends are held again: nothing
                // else can wake the reader for them.
                let stored = head_after_switch.lock().unwrap().expect("the hook ran");
                while sequences.last() < Some(&stored) {
                    match next_progress(&mut stream).await {
                        Response::Event(event) => sequences.push(event.sequence),
                        other => panic!("unexpected {other:?}"),
                    }
                }
                appends.open();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(sequences, (1..=TOTAL).collect::<Vec<_>>(), "gap or repeat");
    let [(switch, delivered_before)] = caught_up[..] else {
        panic!("caught_up should come exactly once, got {caught_up:?}");
    };
    assert_eq!(
        switch, delivered_before,
        "caught_up names the last event before it"
    );
    assert!(
        switch >= STORED + DURING_REPLAY,
        "the replay took in what was stored during it: caught up at {switch}"
    );
    let stored_after = head_after_switch.lock().unwrap().expect("the hook ran");
    assert!(
        stored_after > switch && switch < TOTAL,
        "events stored at the switch ({switch} -> {stored_after}) arrived live"
    );
}

/// Many subscribers starting while events are being posted, without any orchestration: each
/// sees every event once, in order, and `caught_up` once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_starting_during_ingest_see_every_event_once() {
    const TOTAL: u64 = 600;
    let gateway = std::sync::Arc::new(Gateway::start().await);
    post_n(&gateway, "pre", 100).await;

    let writer = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let writes = (100..TOTAL).map(|i| {
                let gateway = gateway.clone();
                async move {
                    gateway
                        .notify(
                            "/webhooks/incode/onboarding-status",
                            &onboarding_body(&format!("seam-{i}"), "UNKNOWN"),
                        )
                        .await;
                }
            });
            // A few at a time, so that ingest overlaps the subscribers' catch-up.
            futures::stream::iter(writes)
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await;
        })
    };

    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut stream = gateway.subscribe(earliest(), no_filter()).await;
        readers.push(tokio::spawn(async move {
            let mut expected = 1;
            let mut caught_up = None;
            // Until every event is in and the catch-up has ended (which may come last).
            while expected <= TOTAL || caught_up.is_none() {
                match next_progress(&mut stream).await {
                    Response::Event(event) => {
                        assert_eq!(event.sequence, expected, "gap or repeat");
                        expected += 1;
                    }
                    Response::CaughtUp(at) => {
                        assert_eq!(caught_up, None, "caught_up twice");
                        assert_eq!(at.sequence, expected - 1);
                        caught_up = Some(at.sequence);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap();
    for reader in readers {
        reader.await.unwrap();
    }
}

use futures::StreamExt;

#[tokio::test]
async fn filters_select_by_type_interview_and_status() {
    let gateway = Gateway::start().await;
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            &onboarding_body("i-1", "ONBOARDING_FINISHED"),
        )
        .await; // 1
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            &onboarding_body("i-2", "MANUAL_REVIEW_REJECTED"),
        )
        .await; // 2
    gateway
        .notify(
            "/webhooks/incode/watchlist-updated",
            r#"{"interviewId":"i-1","ref":"r","search_id":"s"}"#,
        )
        .await; // 3
    gateway
        .notify("/webhooks/incode/other", r#"{"interviewId":"i-2"}"#)
        .await; // 4
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            &onboarding_body("i-3", "NOT_YET_INVENTED"),
        )
        .await; // 5

    let cases = [
        (
            EventFilter {
                types: vec![v1::EventType::WatchlistUpdated.into()],
                ..Default::default()
            },
            vec![3],
        ),
        (
            EventFilter {
                interview_ids: vec!["i-2".into()],
                ..Default::default()
            },
            vec![2, 4],
        ),
        (
            EventFilter {
                onboarding_statuses: vec![
                    v1::OnboardingStatus::ManualReviewRejected.into(),
                    v1::OnboardingStatus::Unspecified.into(),
                ],
                ..Default::default()
            },
            vec![2, 5],
        ),
        (
            EventFilter {
                types: vec![
                    v1::EventType::OnboardingStatusChanged.into(),
                    v1::EventType::WatchlistUpdated.into(),
                ],
                interview_ids: vec!["i-1".into()],
                ..Default::default()
            },
            vec![1, 3],
        ),
    ];
    for (filter, expected) in cases {
        let mut stream = gateway.subscribe(earliest(), filter.clone()).await;
        let mut seen = Vec::new();
        loop {
            match next_progress(&mut stream).await {
                Response::Event(event) => seen.push(event.sequence),
                Response::CaughtUp(at) => {
                    assert_eq!(at.sequence, 5);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, expected, "filter {filter:?}");
    }
}

#[tokio::test]
async fn invalid_filters_are_refused() {
    let gateway = Gateway::start().await;
    for filter in [
        EventFilter {
            types: vec![99],
            ..Default::default()
        },
        EventFilter {
            types: vec![v1::EventType::Unspecified.into()],
            ..Default::default()
        },
        EventFilter {
            onboarding_statuses: vec![-1],
            ..Default::default()
        },
    ] {
        let status = gateway.try_subscribe(earliest(), filter).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    }
}

#[tokio::test]
async fn idle_streams_get_heartbeats_that_advance_past_filtered_events() {
    let mut config = ServeArgs::for_tests();
    config.heartbeat_interval = Duration::from_millis(200);
    let gateway = Gateway::start_with(config).await;
    let filter = EventFilter {
        interview_ids: vec!["nobody".into()],
        ..Default::default()
    };
    let mut stream = gateway.subscribe(latest(), filter).await;
    post_n(&gateway, "x", 3).await;
    // Heartbeats keep coming whatever happens: only an overall deadline turns a heartbeat that
    // never advances into a failure.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat advanced to 3"
        );
        match next_message(&mut stream).await {
            Response::Heartbeat(beat) if beat.sequence == 3 => break,
            Response::Heartbeat(beat) => assert!(beat.sequence <= 3),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A subscriber that stops reading holds back nobody: others still get every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_does_not_block_others() {
    let gateway = Gateway::start().await;
    let _stalled = gateway.subscribe(earliest(), no_filter()).await;
    let mut reader = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(expect_caught_up(&mut reader).await, 0);
    let body_padding = "p".repeat(4000);
    for i in 0..300 {
        let body = serde_json::json!({
            "interviewId": format!("s-{i}"),
            "onboardingStatus": "UNKNOWN",
            "padding": body_padding,
        })
        .to_string();
        gateway
            .notify("/webhooks/incode/onboarding-status", &body)
            .await;
    }
    for expected in 1..=300 {
        assert_eq!(next_event(&mut reader).await.sequence, expected);
    }
}
