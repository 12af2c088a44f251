//! The subscriber's side: start positions, the catch-up/live seam, filters, heartbeats.

use std::time::{Duration, SystemTime};

use incode_gateway::{
    Config,
    proto::v1::{self, EventFilter, start_position::Position, subscribe_response::Response},
};
use tonic::Code;

use crate::common::*;

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

/// Subscribers that start while events are being posted see every event exactly once, in order,
/// across the switch from the stored events to the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_joins_the_live_tail_without_gap_or_repeat() {
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
            let mut caught_up = false;
            while expected <= TOTAL {
                match next_message(&mut stream).await {
                    Response::Event(event) => {
                        assert_eq!(event.sequence, expected, "gap or repeat");
                        expected += 1;
                    }
                    Response::CaughtUp(at) => {
                        assert!(!caught_up, "caught_up twice");
                        assert_eq!(at.sequence, expected - 1);
                        caught_up = true;
                    }
                    Response::Heartbeat(_) => {}
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
            match next_message(&mut stream).await {
                Response::Event(event) => seen.push(event.sequence),
                Response::CaughtUp(at) => {
                    assert_eq!(at.sequence, 5);
                    break;
                }
                Response::Heartbeat(_) => {}
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
    let mut config = Config::for_tests();
    config.heartbeat_interval = Duration::from_millis(200);
    let gateway = Gateway::start_with(config).await;
    let filter = EventFilter {
        interview_ids: vec!["nobody".into()],
        ..Default::default()
    };
    let mut stream = gateway.subscribe(latest(), filter).await;
    post_n(&gateway, "x", 3).await;
    loop {
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
