//! `incode-gateway tail`, the binary, against a running gateway: its JSON lines read back to
//! exactly the stored events.

use std::process::{Output, Stdio};

use incode_gateway::proto::{json::EventJson, v1};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, BufReader, Lines},
    process::{ChildStdout, Command},
};

use crate::support::common::*;

/// `incode-gateway tail --addr <the gateway>` with piped output.
fn tail(grpc_url: &str) -> Command {
    let mut command = binary_async();
    command
        .args(["tail", "--addr", grpc_url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn grpc_url(gateway: &Gateway) -> String {
    format!("http://{}", gateway.grpc_addr)
}

async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .expect("no line in time")
        .unwrap()
        .expect("tail closed its output")
}

/// Runs a `tail` that exits by itself and returns what it printed.
async fn run(command: &mut Command) -> Output {
    tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("tail did not exit in time")
        .unwrap()
}

/// Sends SIGINT, as Ctrl-C in a terminal does.
fn interrupt(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn sequences(output: &Output) -> Vec<String> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            let event: Value = serde_json::from_str(line).unwrap();
            event["sequence"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn tail_prints_every_field_as_canonical_json_and_exits_cleanly_on_ctrl_c() {
    let gateway = Gateway::start().await;
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            r#"{"interviewId":"s-1","externalId":"customer-42","onboardingStatus":"ONBOARDING_FINISHED","flowId":"flow-7","score":97.5,"tags":["kyc",3,true,null]}"#,
        )
        .await;
    gateway
        .notify(
            "/webhooks/incode/watchlist-updated",
            r#"{"interviewId":"s-2","ref":"1683042533-abc","search_id":"d2e1f"}"#,
        )
        .await;
    let expired = r#"{"interviewId":"s-3","document":{"type":"passport"}}"#;
    gateway
        .notify("/webhooks/incode/document-expired", expired)
        .await;
    let mut subscription = gateway.subscribe(earliest(), no_filter()).await;
    let mut stored = drain_until_caught_up(&mut subscription).await;
    assert_eq!(stored.len(), 3);

    let mut child = tail(&grpc_url(&gateway))
        .args(["--from", "earliest"])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for _ in 0..3 {
        printed.push(next_line(&mut lines).await);
    }
    // Then live.
    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            r#"{"interviewId":"s-4","onboardingStatus":"SOMETHING_NEW"}"#,
        )
        .await;
    stored.push(next_event(&mut subscription).await);
    printed.push(next_line(&mut lines).await);

    interrupt(child.id().unwrap());
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("tail did not stop on SIGINT")
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let notes = String::from_utf8(output.stderr).unwrap();
    assert!(
        notes.contains("caught up at sequence 3"),
        "stderr: {notes:?}"
    );

    // Every field survives: each line reads back to exactly the stored event.
    let mapping = EventJson::new().unwrap();
    for (line, event) in printed.iter().zip(&stored) {
        assert_eq!(&mapping.from_json(line).unwrap(), event, "line: {line}");
    }

    // And the lines are the canonical mapping that jq users see.
    let lines: Vec<Value> = printed
        .iter()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let received_at = humantime::parse_rfc3339(lines[0]["receivedAt"].as_str().unwrap()).unwrap();
    let stored_at = std::time::SystemTime::try_from(stored[0].received_at.unwrap()).unwrap();
    assert_eq!(received_at, stored_at);
    assert_eq!(lines[0]["id"], stored[0].id);
    assert_eq!(lines[0]["sequence"], "1", "uint64 is a JSON string");
    assert_eq!(lines[0]["type"], "EVENT_TYPE_ONBOARDING_STATUS_CHANGED");
    assert_eq!(
        lines[0]["onboardingStatusChanged"],
        json!({
            "interviewId": "s-1",
            "externalId": "customer-42",
            "onboardingStatus": "ONBOARDING_STATUS_ONBOARDING_FINISHED",
            "onboardingStatusRaw": "ONBOARDING_FINISHED",
            "additionalFields": { "flowId": "flow-7", "score": 97.5, "tags": ["kyc", 3.0, true, null] }
        })
    );
    assert_eq!(lines[1]["sequence"], "2");
    assert_eq!(lines[1]["type"], "EVENT_TYPE_WATCHLIST_UPDATED");
    assert_eq!(
        lines[1]["watchlistUpdated"],
        json!({
            "interviewId": "s-2",
            "ref": "1683042533-abc",
            "searchId": "d2e1f",
            "additionalFields": {}
        })
    );
    assert_eq!(lines[2]["type"], "EVENT_TYPE_UNRECOGNIZED_NOTIFICATION");
    assert_eq!(
        lines[2]["unrecognizedNotification"],
        json!({ "kind": "document-expired", "rawJson": expired, "interviewId": "s-3" })
    );
    assert_eq!(lines[3]["sequence"], "4");
    assert_eq!(
        lines[3]["onboardingStatusChanged"],
        json!({
            "interviewId": "s-4",
            "onboardingStatusRaw": "SOMETHING_NEW",
            "additionalFields": {}
        }),
        "an unknown status is UNSPECIFIED, which as the default value is omitted"
    );
}

#[tokio::test]
async fn tail_filters_starts_at_a_sequence_and_stops_after_max_events() {
    let gateway = Gateway::start().await;
    for body in [
        onboarding_body("s-a", "ID_VALIDATION_FINISHED"),
        onboarding_body("s-a", "ONBOARDING_FINISHED"),
        onboarding_body("s-b", "ONBOARDING_FINISHED"),
    ] {
        gateway
            .notify("/webhooks/incode/onboarding-status", &body)
            .await;
    }
    gateway
        .notify(
            "/webhooks/incode/watchlist-updated",
            r#"{"interviewId":"s-b","ref":"r","search_id":"s"}"#,
        )
        .await;
    let url = grpc_url(&gateway);

    let output = run(tail(&url).args([
        "--from",
        "3",
        "--status",
        "onboarding_finished",
        "--max-events",
        "1",
    ]))
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(sequences(&output), ["3"], "--from 3 starts with event 3");

    let output = run(tail(&url).args([
        "--from",
        "earliest",
        "--status",
        "ONBOARDING_STATUS_ONBOARDING_FINISHED",
        "--max-events",
        "2",
    ]))
    .await;
    assert_eq!(sequences(&output), ["2", "3"]);

    let output = run(tail(&url).args([
        "--from",
        "earliest",
        "--type",
        "watchlist-updated,onboarding-status-changed",
        "--interview-id",
        "s-b",
        "--max-events",
        "2",
    ]))
    .await;
    assert_eq!(sequences(&output), ["3", "4"]);
}

#[tokio::test]
async fn tail_as_a_consumer_resumes_after_its_cursor_without_moving_it() {
    let gateway = Gateway::start().await;
    for n in 0..3 {
        gateway
            .notify(
                "/webhooks/incode/onboarding-status",
                &onboarding_body(&format!("s-{n}"), "ONBOARDING_FINISHED"),
            )
            .await;
    }
    let mut client = gateway.client().await;
    client
        .ack(v1::AckRequest {
            consumer: "billing".into(),
            sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap();

    for _ in 0..2 {
        let output =
            run(tail(&grpc_url(&gateway)).args(["--consumer", "billing", "--max-events", "2"]))
                .await;
        assert_eq!(sequences(&output), ["2", "3"], "{output:?}");
    }
}

#[tokio::test]
async fn tail_fails_clearly_when_the_gateway_is_unreachable() {
    // A port that nothing listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");

    let output = run(&mut tail(&url)).await;

    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.starts_with(&format!(
            "incode-gateway tail: cannot connect to the gateway at {url}: "
        )),
        "stderr: {error:?}"
    );
    assert!(error.contains("Connection refused"), "stderr: {error:?}");
}

#[tokio::test]
async fn tail_reports_a_refused_subscription_and_a_stream_ended_by_the_gateway() {
    let gateway = Gateway::start().await;
    let url = grpc_url(&gateway);

    let output = run(tail(&url).args(["--from", "7"])).await;
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains("the subscription failed: OutOfRange"),
        "stderr: {error:?}"
    );

    gateway
        .notify(
            "/webhooks/incode/onboarding-status",
            &onboarding_body("s-1", "ONBOARDING_FINISHED"),
        )
        .await;
    let mut child = tail(&url).args(["--from", "earliest"]).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    next_line(&mut lines).await;
    gateway.stop().await.unwrap();
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("tail did not exit when the gateway stopped")
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(
        error.contains("the gateway ended the stream after sequence 1; resume with --from 2"),
        "stderr: {error:?}"
    );
}
