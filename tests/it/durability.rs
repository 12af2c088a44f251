//! The durable log through the real gateway: restarts, storage failure, retention and durable
//! consumers.

use std::{sync::Arc, time::Duration};

use incode_gateway::{
    ServeArgs,
    log::{EmbeddedLog, EventLog, Storage, embedded::fault::FaultSwitch},
    proto::v1::{AckRequest, start_position::Position, subscribe_response::Response},
};
use reqwest::StatusCode;
use tonic::Code;

use crate::support::common::*;

const PATH: &str = "/webhooks/incode/onboarding-status";

#[tokio::test]
async fn events_cursors_and_dedup_survive_a_restart() {
    let gateway = Gateway::start().await;
    let data_dir = gateway.data_dir.clone();
    let first = onboarding_body("restart-1", "ONBOARDING_FINISHED");
    gateway.notify(PATH, &first).await;
    gateway
        .notify(PATH, &onboarding_body("restart-2", "UNKNOWN"))
        .await;
    let ack = gateway
        .client()
        .await
        .ack(AckRequest {
            consumer: "billing".into(),
            sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ack.sequence, 1);
    gateway.stop().await.unwrap();

    let gateway = Gateway::start_in(data_dir, ServeArgs::for_tests()).await;
    // Incode's retry after the restart is still recognised.
    gateway.notify(PATH, &first).await;
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    let events = drain_until_caught_up(&mut stream).await;
    let ids: Vec<_> = events
        .iter()
        .map(|e| (e.sequence, interview_id(e)))
        .collect();
    assert_eq!(ids, [(1, "restart-1"), (2, "restart-2")]);

    // The consumer resumes after its acknowledged sequence.
    let mut resumed = gateway
        .try_subscribe_as("billing", None, no_filter())
        .await
        .unwrap();
    assert_eq!(next_event(&mut resumed).await.sequence, 2);
    assert_eq!(expect_caught_up(&mut resumed).await, 2);
}

#[tokio::test]
async fn a_new_consumer_starts_at_the_earliest_and_acks_only_move_forward() {
    let gateway = Gateway::start().await;
    for i in 0..3 {
        gateway
            .notify(PATH, &onboarding_body(&format!("c-{i}"), "UNKNOWN"))
            .await;
    }
    let mut stream = gateway
        .try_subscribe_as("fresh", None, no_filter())
        .await
        .unwrap();
    assert_eq!(drain_until_caught_up(&mut stream).await.len(), 3);

    let mut client = gateway.client().await;
    let ack = |consumer: &str, sequence| AckRequest {
        consumer: consumer.into(),
        sequence,
        ..Default::default()
    };
    assert_eq!(
        client
            .ack(ack("fresh", 2))
            .await
            .unwrap()
            .into_inner()
            .sequence,
        2
    );
    assert_eq!(
        client
            .ack(ack("fresh", 1))
            .await
            .unwrap()
            .into_inner()
            .sequence,
        2
    );
    let beyond = client.ack(ack("fresh", 4)).await.unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange);
    for bad in ["", "has space", &"x".repeat(129)] {
        let status = client.ack(ack(bad, 1)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
    let status = gateway
        .try_subscribe_as("no/slash", None, no_filter())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // An explicit start wins over the stored cursor.
    let mut explicit = gateway
        .try_subscribe_as("fresh", earliest(), no_filter())
        .await
        .unwrap();
    assert_eq!(next_event(&mut explicit).await.sequence, 1);
}

#[tokio::test]
async fn a_failing_disk_answers_503_and_acknowledges_nothing() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = ServeArgs::for_tests();
    config.data_dir = data_dir.path().to_owned();
    let switch = FaultSwitch::new();
    let log =
        EmbeddedLog::open_with_faults(data_dir.path(), config.embedded_settings(), switch.clone())
            .unwrap();
    let gateway = Gateway::start_with_storage(data_dir, config, Storage::new(Arc::new(log))).await;
    gateway
        .notify(PATH, &onboarding_body("before", "UNKNOWN"))
        .await;

    switch.set_failing(true);
    let lost = onboarding_body("during", "UNKNOWN");
    let (status, body) = gateway.post_json(PATH, &lost).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["error"], "unavailable");
    let detail = body["detail"].as_str().unwrap();
    assert!(!detail.contains("injected"), "internals leak: {detail}");
    let ready = gateway.until_readyz(StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(ready["status"], "not_ready", "{ready}");

    // Incode's retry succeeds once the disk is back, and stores the event exactly once.
    switch.set_failing(false);
    gateway.until_readyz(StatusCode::OK).await;
    gateway.notify(PATH, &lost).await;
    gateway.notify(PATH, &lost).await;
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    let ids: Vec<_> = drain_until_caught_up(&mut stream)
        .await
        .iter()
        .map(|e| (e.sequence, interview_id(e).to_owned()))
        .collect();
    assert_eq!(ids, [(1, "before".to_owned()), (2, "during".to_owned())]);
}

/// A gateway over an embedded log whose storage fails as `switch` says.
async fn gateway_with_faults(config: ServeArgs) -> (Gateway, FaultSwitch) {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = config;
    config.data_dir = data_dir.path().to_owned();
    let switch = FaultSwitch::new();
    let log =
        EmbeddedLog::open_with_faults(data_dir.path(), config.embedded_settings(), switch.clone())
            .unwrap();
    let gateway = Gateway::start_with_storage(data_dir, config, Storage::new(Arc::new(log))).await;
    (gateway, switch)
}

/// When only the fsync fails, the event's data is in the file but not durable: the webhook is
/// answered 503 and no subscriber, live or catching up, ever sees the event. Incode's retry is
/// then stored as a new event.
#[tokio::test]
async fn a_failed_fsync_answers_503_and_nothing_is_delivered() {
    let (gateway, switch) = gateway_with_faults(ServeArgs::for_tests()).await;
    gateway
        .notify(PATH, &onboarding_body("before", "UNKNOWN"))
        .await;
    let mut live = gateway.subscribe(earliest(), no_filter()).await;
    assert_eq!(interview_id(&next_event(&mut live).await), "before");
    assert_eq!(expect_caught_up(&mut live).await, 1);

    switch.set_failing_syncs(true);
    let unsynced = onboarding_body("unsynced", "UNKNOWN");
    let (status, body) = gateway.post_json(PATH, &unsynced).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"], "unavailable");
    switch.set_failing_syncs(false);

    // The storage comes back (the next write reopens it), and later events flow.
    gateway
        .notify(PATH, &onboarding_body("after", "UNKNOWN"))
        .await;
    assert_eq!(interview_id(&next_event(&mut live).await), "after");
    let mut replay = gateway.subscribe(earliest(), no_filter()).await;
    let stored: Vec<_> = drain_until_caught_up(&mut replay)
        .await
        .iter()
        .map(|e| (e.sequence, interview_id(e).to_owned()))
        .collect();
    assert_eq!(stored, [(1, "before".to_owned()), (2, "after".to_owned())]);

    // Incode's retry of the refused notification is stored, once.
    gateway.notify(PATH, &unsynced).await;
    gateway.notify(PATH, &unsynced).await;
    let event = next_event(&mut live).await;
    assert_eq!((event.sequence, interview_id(&event)), (3, "unsynced"));
    gateway.stop().await.unwrap();
}

/// After a storage failure ends, the gateway recovers by itself (the log probes the disk every
/// second, and the gRPC health status checks it as often): nobody calls /readyz and no webhook
/// comes, only subscribers, which never write, yet those who need the disk are served again.
#[tokio::test]
async fn a_failed_disk_recovers_without_anyone_asking() {
    let (gateway, switch) = gateway_with_faults(ServeArgs::for_tests()).await;
    gateway
        .notify(PATH, &onboarding_body("before", "UNKNOWN"))
        .await;
    let mut client = gateway.client().await;
    let ack = AckRequest {
        consumer: "billing".into(),
        sequence: 1,
        ..Default::default()
    };
    client.ack(ack).await.unwrap();

    switch.set_failing(true);
    let (status, _) = gateway
        .post_json(PATH, &onboarding_body("refused", "UNKNOWN"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The consumer's cursor is on disk: it cannot be resumed while the storage is down.
    let status = gateway
        .try_subscribe_as("billing", None, no_filter())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    switch.set_failing(false);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut resumed = loop {
        match gateway.try_subscribe_as("billing", None, no_filter()).await {
            Ok(stream) => break stream,
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the storage never recovered by itself"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(expect_caught_up(&mut resumed).await, 1);
    gateway.until_readyz(StatusCode::OK).await;
    gateway
        .notify(PATH, &onboarding_body("after", "UNKNOWN"))
        .await;
    assert_eq!(interview_id(&next_event(&mut resumed).await), "after");
}

#[tokio::test]
async fn a_closed_log_answers_503() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = ServeArgs::for_tests();
    config.data_dir = data_dir.path().to_owned();
    let log: Arc<EmbeddedLog> =
        Arc::new(EmbeddedLog::open(data_dir.path(), config.embedded_settings()).unwrap());
    let gateway = Gateway::start_with_storage(data_dir, config, Storage::new(log.clone())).await;
    log.close().await.unwrap();
    let (status, body) = gateway
        .post_json(PATH, &onboarding_body("late", "UNKNOWN"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    gateway.until_readyz(StatusCode::SERVICE_UNAVAILABLE).await;
}

#[tokio::test]
async fn retention_removes_old_events_and_a_too_early_start_is_reported() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = ServeArgs::for_tests();
    config.data_dir = data_dir.path().to_owned();
    config.max_events = Some(3);
    let log: Arc<EmbeddedLog> =
        Arc::new(EmbeddedLog::open(data_dir.path(), config.embedded_settings()).unwrap());
    let gateway = Gateway::start_with_storage(data_dir, config, Storage::new(log.clone())).await;
    for i in 1..=5 {
        gateway
            .notify(PATH, &onboarding_body(&format!("r-{i}"), "UNKNOWN"))
            .await;
    }
    log.maintain().await.unwrap();

    // `earliest` is the oldest retained event: nothing to report.
    let mut stream = gateway.subscribe(earliest(), no_filter()).await;
    let sequences: Vec<_> = drain_until_caught_up(&mut stream)
        .await
        .iter()
        .map(|e| e.sequence)
        .collect();
    assert_eq!(sequences, [3, 4, 5]);

    // A cursor older than that is told which events it missed.
    let mut stream = gateway
        .subscribe(Some(Position::AfterSequence(1)), no_filter())
        .await;
    match next_message(&mut stream).await {
        Response::Gap(gap) => {
            assert_eq!((gap.first_sequence, gap.last_sequence), (2, 2));
        }
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(next_event(&mut stream).await.sequence, 3);
}

/// Subscribes to a gateway process from `earliest` over a connection that takes little at a
/// time (64 KiB HTTP/2 windows), so that a subscriber that stops reading stops the stream soon.
async fn narrow_subscription(
    process: &GatewayProcess,
) -> tonic::Streaming<incode_gateway::proto::v1::SubscribeResponse> {
    let channel = tonic::transport::Endpoint::from_shared(process.grpc_url.clone())
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let request = incode_gateway::proto::v1::SubscribeRequest {
        start: earliest().map(|position| incode_gateway::proto::v1::StartPosition {
            position: Some(position),
        }),
        ..Default::default()
    };
    incode_gateway::proto::v1::event_stream_service_client::EventStreamServiceClient::new(channel)
        .subscribe(request)
        .await
        .unwrap()
        .into_inner()
}

/// Retention driven by the real `--maintenance-interval` timer, with nobody asking for it: a
/// subscriber that stops reading falls further behind than the log keeps, and when it reads on
/// it gets the events it had in hand, a gap naming exactly what was removed before it could have
/// them, and then the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_falls_behind_timed_retention_gets_a_gap_mid_stream() {
    const KEPT: u64 = 10;
    const POSTED: u64 = 700;
    let data_dir = tempfile::tempdir().unwrap();
    let process = GatewayProcess::spawn_with(
        data_dir.path(),
        &[
            "--allow-unauthenticated-webhooks",
            "--max-events",
            "10",
            "--maintenance-interval",
            "100ms",
        ],
        &[],
    )
    .await;
    let http = http_client();
    let post = |n: u64| {
        // Large enough that the stalled stream's buffers hold only a fraction of them.
        let body = serde_json::json!({
            "interviewId": format!("r-{n}"),
            "onboardingStatus": "UNKNOWN",
            "padding": "p".repeat(6000),
        })
        .to_string();
        let request = http
            .post(format!("{}{PATH}", process.base_url))
            .header("content-type", "application/json")
            .body(body);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
    };

    let mut stalled = narrow_subscription(&process).await;
    assert_eq!(expect_caught_up(&mut stalled).await, 0);
    post(1).await;
    assert_eq!(next_event(&mut stalled).await.sequence, 1);
    // The subscriber stops reading while the rest arrives.
    for n in 2..=POSTED {
        post(n).await;
    }
    // The ticker removes all but the newest KEPT events, on its own.
    let oldest_kept = POSTED - KEPT + 1;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut fresh = narrow_subscription(&process).await;
        match next_progress(&mut fresh).await {
            Response::Event(event) if event.sequence == oldest_kept => break,
            // Retention is still at work, and may remove what this reader was about to read.
            Response::Event(_) | Response::Gap(_) => {}
            other => panic!("unexpected {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention did not run"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut expected = 2;
    let mut gap = None;
    while expected <= POSTED {
        match next_progress(&mut stalled).await {
            Response::Event(event) => {
                assert_eq!(event.sequence, expected, "gap {gap:?}");
                expected += 1;
            }
            Response::Gap(removed) => {
                assert_eq!(gap, None, "one gap");
                assert_eq!(
                    removed.first_sequence, expected,
                    "the gap starts where events stop"
                );
                assert!(
                    removed.last_sequence < oldest_kept,
                    "only removed events are in the gap: {removed:?}"
                );
                expected = removed.last_sequence + 1;
                gap = Some((removed.first_sequence, removed.last_sequence));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let (first, _) = gap.expect("the subscriber fell behind retention: a gap must say so");
    assert!(
        first > 2,
        "mid-stream: events came before the gap ({first})"
    );
}
