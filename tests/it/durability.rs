//! The durable log through the real gateway: restarts, storage failure, retention and durable
//! consumers.

use std::sync::Arc;

use incode_gateway::{
    Config,
    log::{EmbeddedLog, EventLog, Storage, embedded::fault::FaultSwitch},
    proto::v1::{AckRequest, start_position::Position, subscribe_response::Response},
};
use reqwest::StatusCode;
use tonic::Code;

use crate::common::*;

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

    let gateway = Gateway::start_in(data_dir, Config::for_tests()).await;
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
    let mut config = Config::for_tests();
    config.data_dir = data_dir.path().to_owned();
    let switch = FaultSwitch::new();
    let log = EmbeddedLog::open_with_faults(
        data_dir.path(),
        config.embedded_log_options(),
        switch.clone(),
    )
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
    let (status, ready) = gateway.get_json("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");

    // Incode's retry succeeds once the disk is back, and stores the event exactly once.
    switch.set_failing(false);
    let (status, _) = gateway.get_json("/readyz").await;
    assert_eq!(status, StatusCode::OK);
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

#[tokio::test]
async fn a_closed_log_answers_503() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = Config::for_tests();
    config.data_dir = data_dir.path().to_owned();
    let log: Arc<EmbeddedLog> =
        Arc::new(EmbeddedLog::open(data_dir.path(), config.embedded_log_options()).unwrap());
    let gateway = Gateway::start_with_storage(data_dir, config, Storage::new(log.clone())).await;
    log.close().await.unwrap();
    let (status, body) = gateway
        .post_json(PATH, &onboarding_body("late", "UNKNOWN"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, _) = gateway.get_json("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn retention_removes_old_events_and_a_too_early_start_is_reported() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = Config::for_tests();
    config.data_dir = data_dir.path().to_owned();
    config.max_events = Some(3);
    let log: Arc<EmbeddedLog> =
        Arc::new(EmbeddedLog::open(data_dir.path(), config.embedded_log_options()).unwrap());
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
