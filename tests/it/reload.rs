//! SIGHUP, as a service manager's reload sends it: the gateway keeps serving, with or without
//! TLS, and applies the config file's `[[subscribers]]` and webhook headers; a file it would
//! refuse changes nothing.

use std::path::Path;

use incode_gateway::proto::v1::{
    SubscribeRequest, event_stream_service_client::EventStreamServiceClient,
};
use reqwest::StatusCode;
use serde_json::Value;
use tonic::{Code, transport::Channel};

use crate::support::common::*;

const WEBHOOK: &str = "/webhooks/incode/onboarding-status";
const OLD_TOKEN: &str = "old-token-5b8e2c71d94f0a36";
const NEW_TOKEN: &str = "new-token-c07a1e94b2d8f653";

/// Sends SIGHUP to the gateway.
fn hang_up(process: &GatewayProcess) {
    send_signal(&process.child, "HUP");
}

/// The log records with `message`, as JSON.
fn records(process: &GatewayProcess, message: &str) -> Vec<Value> {
    process
        .output
        .lock()
        .unwrap()
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["message"] == message)
        .collect()
}

/// Waits until the gateway has logged `message` `count` times in all.
async fn logged(process: &GatewayProcess, message: &str, count: usize) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(record) = records(process, message).get(count - 1) {
            return record.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{message}` was not logged {count} time(s) in time"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn channel(process: &GatewayProcess) -> Channel {
    Channel::from_shared(process.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn subscribe(
    channel: &Channel,
    token: Option<&str>,
) -> Result<tonic::Streaming<incode_gateway::proto::v1::SubscribeResponse>, tonic::Status> {
    let request = SubscribeRequest {
        start: earliest().map(|position| incode_gateway::proto::v1::StartPosition {
            position: Some(position),
        }),
        ..Default::default()
    };
    EventStreamServiceClient::new(channel.clone())
        .subscribe(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

async fn post(process: &GatewayProcess, interview: &str, header: Option<&str>) -> StatusCode {
    let mut request = http_client()
        .post(format!("{}{WEBHOOK}", process.base_url))
        .header("content-type", "application/json")
        .body(onboarding_body(interview, "ONBOARDING_FINISHED"));
    if let Some(value) = header {
        request = request.header("x-incode-secret", value);
    }
    request.send().await.unwrap().status()
}

#[tokio::test]
async fn sighup_without_tls_keeps_the_gateway_serving() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut process = GatewayProcess::spawn(data_dir.path(), &[]).await;
    let channel = channel(&process).await;
    let mut stream = subscribe(&channel, None).await.unwrap();
    assert_eq!(expect_caught_up(&mut stream).await, 0);

    for count in 1..=2 {
        hang_up(&process);
        logged(&process, "configuration reloaded", count).await;
    }
    assert!(
        process.child.try_wait().unwrap().is_none(),
        "the gateway exited on SIGHUP"
    );
    assert_eq!(post(&process, "after-sighup", None).await, StatusCode::OK);
    assert_eq!(
        next_event(&mut stream).await.sequence,
        1,
        "the stream survived"
    );
    let mut fresh = subscribe(&channel, None).await.unwrap();
    assert_eq!(next_event(&mut fresh).await.sequence, 1);
}

/// A config file with the subscriber `billing` (these tokens) and the webhook header
/// `X-Incode-Secret: header`, then `extra`.
fn config_file(tokens: &[&str], header: &str, extra: &str) -> String {
    let tokens: Vec<String> = tokens.iter().map(|token| format!("{token:?}")).collect();
    format!(
        "[webhooks]\nheaders = {{ \"X-Incode-Secret\" = {header:?} }}\n\n\
         [[subscribers]]\nname = \"billing\"\ntokens = [{}]\nconsumers = [\"billing\"]\n{extra}",
        tokens.join(", ")
    )
}

fn write(path: &Path, text: &str) {
    // Written beside and renamed into place, as deployment tools do: the gateway never reads
    // half a file.
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

#[tokio::test]
async fn sighup_applies_subscriber_tokens_and_webhook_headers_from_the_file() {
    let data_dir = tempfile::tempdir().unwrap();
    let file = data_dir.path().join("gateway.toml");
    write(&file, &config_file(&[OLD_TOKEN], "first-value", ""));
    let config = file.to_str().unwrap();
    let process = GatewayProcess::spawn_with(data_dir.path(), &["--config", config], &[]).await;
    let channel = channel(&process).await;

    assert_eq!(
        post(&process, "one", Some("first-value")).await,
        StatusCode::OK
    );
    let mut old_stream = subscribe(&channel, Some(OLD_TOKEN)).await.unwrap();
    assert_eq!(next_event(&mut old_stream).await.sequence, 1);
    assert_eq!(expect_caught_up(&mut old_stream).await, 1);
    let refused = subscribe(&channel, Some(NEW_TOKEN)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The new token replaces the old one; the header changes value.
    write(&file, &config_file(&[NEW_TOKEN], "second-value", ""));
    hang_up(&process);
    let reloaded = logged(&process, "configuration reloaded", 1).await;
    assert_eq!(reloaded["subscribers"], 1, "{reloaded}");
    assert_eq!(reloaded["webhook_headers"], 1, "{reloaded}");

    let mut new_stream = subscribe(&channel, Some(NEW_TOKEN)).await.unwrap();
    assert_eq!(next_event(&mut new_stream).await.sequence, 1);
    assert_eq!(expect_caught_up(&mut new_stream).await, 1);
    let refused = subscribe(&channel, Some(OLD_TOKEN)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(
        post(&process, "two", Some("first-value")).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&process, "two", Some("second-value")).await,
        StatusCode::OK
    );
    assert_eq!(next_event(&mut new_stream).await.sequence, 2);
    // A stream opened before the reload keeps the identity it was opened with.
    assert_eq!(next_event(&mut old_stream).await.sequence, 2);

    // A file the gateway would refuse at start (a token too short to be one) changes nothing,
    // and the error names the problem without the token.
    write(
        &file,
        &config_file(&[NEW_TOKEN, "short-d41c"], "third-value", ""),
    );
    hang_up(&process);
    let error = logged(
        &process,
        "cannot reload the configuration; the previous settings stay in force",
        1,
    )
    .await;
    let text = error.to_string();
    assert!(text.contains("token #2"), "{text}");
    assert!(
        !text.contains("short-d41c") && !text.contains(NEW_TOKEN),
        "{text}"
    );
    subscribe(&channel, Some(NEW_TOKEN)).await.unwrap();
    assert_eq!(
        post(&process, "three", Some("second-value")).await,
        StatusCode::OK
    );
    assert_eq!(
        post(&process, "three", Some("third-value")).await,
        StatusCode::FORBIDDEN
    );

    // Settings only a restart applies are named, and the rest of the file is applied.
    write(
        &file,
        &config_file(
            &[NEW_TOKEN],
            "second-value",
            "\n[storage]\nretention = \"2d\"\n",
        ),
    );
    hang_up(&process);
    logged(&process, "configuration reloaded", 2).await;
    let warning = logged(
        &process,
        "these settings changed in the config file and take effect only after a restart (a \
         reload applies [[subscribers]] and webhooks.headers)",
        1,
    )
    .await;
    assert!(
        warning["keys"].to_string().contains("storage.retention"),
        "{warning}"
    );

    let output = process.output.lock().unwrap().join("\n");
    for secret in [
        OLD_TOKEN,
        NEW_TOKEN,
        "first-value",
        "second-value",
        "third-value",
    ] {
        assert!(!output.contains(secret), "{secret} was logged");
    }
}
