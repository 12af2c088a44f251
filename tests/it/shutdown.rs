//! Shutdown with work in flight: a webhook being received when SIGTERM comes is answered `200`
//! and stored, or `503` and not stored, never `200` and lost; subscription streams end with
//! `UNAVAILABLE`, as the contract says.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use incode_gateway::{
    ServeArgs,
    log::{EmbeddedLog, EventLog, Storage},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;

use crate::support::{common::*, gated::GatedLog};

const PATH: &str = "/webhooks/incode/onboarding-status";

/// A webhook whose headers the gateway has read and whose body it is waiting for: it asked for
/// the body with `100 Continue`.
struct InFlight {
    connection: TcpStream,
    body: String,
}

impl InFlight {
    async fn start(base_url: &str, body: String) -> Self {
        let address = base_url.trim_start_matches("http://");
        let mut connection = TcpStream::connect(address).await.unwrap();
        let head = format!(
            "POST {PATH} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        connection.write_all(head.as_bytes()).await.unwrap();
        let interim = read_until_blank_line(&mut connection).await;
        assert!(
            interim.starts_with("HTTP/1.1 100"),
            "expected 100 Continue, got {interim:?}"
        );
        Self { connection, body }
    }

    /// Sends the body and returns the status of the answer, if one comes.
    async fn finish(mut self) -> Option<u16> {
        self.connection.write_all(self.body.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, self.connection.read_to_end(&mut answer))
            .await
            .expect("no answer and no close in time")
            .ok()?;
        let answer = String::from_utf8_lossy(&answer);
        let status = answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()?;
        if status == 200 {
            assert!(answer.ends_with(r#"{"success":true}"#), "{answer}");
        }
        Some(status)
    }
}

async fn read_until_blank_line(connection: &mut TcpStream) -> String {
    let mut read = Vec::new();
    let mut byte = [0u8; 1];
    while !read.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(PATIENCE, connection.read(&mut byte))
            .await
            .expect("no answer in time")
            .unwrap();
        assert_eq!(n, 1, "the connection closed after {read:?}");
        read.push(byte[0]);
    }
    String::from_utf8(read).unwrap()
}

/// The interview ids of every stored event, in order, checking sequences have no gap.
async fn stored_ids(process: &GatewayProcess) -> Vec<String> {
    let mut client = process.client().await;
    let request = incode_gateway::proto::v1::SubscribeRequest {
        start: earliest().map(|position| incode_gateway::proto::v1::StartPosition {
            position: Some(position),
        }),
        ..Default::default()
    };
    let mut stream = client.subscribe(request).await.unwrap().into_inner();
    let events = drain_until_caught_up(&mut stream).await;
    for (index, event) in events.iter().enumerate() {
        assert_eq!(event.sequence, index as u64 + 1, "sequences have a gap");
    }
    events.iter().map(|e| interview_id(e).to_owned()).collect()
}

#[derive(Debug, Default)]
struct Outcomes {
    acknowledged: Vec<String>,
    refused: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_a_webhook_in_flight_and_ends_streams_with_unavailable() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut process = GatewayProcess::spawn(data_dir.path(), &[]).await;
    let mut client = process.client().await;
    let mut stream = client
        .subscribe(incode_gateway::proto::v1::SubscribeRequest::default())
        .await
        .unwrap()
        .into_inner();

    // Webhooks keep arriving from several senders, as they would from Incode.
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let senders: Vec<_> = (0..4)
        .map(|sender| {
            let url = format!("{}{PATH}", process.base_url);
            let outcomes = outcomes.clone();
            tokio::spawn(async move {
                let http = http_client();
                for n in 0.. {
                    let id = format!("s{sender}-n{n}");
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(onboarding_body(&id, "UNKNOWN"))
                        .send()
                        .await;
                    match sent.map(|response| response.status()) {
                        Ok(StatusCode::OK) => outcomes.lock().unwrap().acknowledged.push(id),
                        Ok(StatusCode::SERVICE_UNAVAILABLE) => {
                            outcomes.lock().unwrap().refused.push(id);
                        }
                        Ok(other) => panic!("{id} answered {other}"),
                        Err(error) if error.is_timeout() => panic!("{id}: no answer in time"),
                        // The listener stopped accepting: not answered, so Incode retries.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while outcomes.lock().unwrap().acknowledged.len() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let in_flight = InFlight::start(
        &process.base_url,
        onboarding_body("in-flight", "ONBOARDING_FINISHED"),
    )
    .await;
    send_signal(&process.child, "TERM");

    // Shutdown is under way: the stream ends, with UNAVAILABLE.
    let end = loop {
        match tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the stream did not end in time")
        {
            Ok(Some(_)) => {}
            other => break other,
        }
    };
    match end {
        Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
        Ok(None) => panic!("the stream ended with OK, not UNAVAILABLE"),
        Ok(Some(_)) => unreachable!(),
    }

    // The webhook in flight is still served.
    let answer = in_flight.finish().await;
    for sender in senders {
        tokio::time::timeout(PATIENCE, sender)
            .await
            .expect("a sender hung")
            .unwrap();
    }
    expect_clean_exit(&mut process.child, "TERM").await;

    let mut outcomes = Arc::try_unwrap(outcomes).unwrap().into_inner().unwrap();
    match answer {
        Some(200) => outcomes.acknowledged.push("in-flight".to_owned()),
        Some(503) => outcomes.refused.push("in-flight".to_owned()),
        other => panic!("the webhook in flight was answered {other:?}"),
    }

    let restarted = GatewayProcess::spawn(data_dir.path(), &[]).await;
    let stored = stored_ids(&restarted).await;
    let stored_set: HashSet<_> = stored.iter().collect();
    assert_eq!(stored_set.len(), stored.len(), "stored twice");
    for id in &outcomes.acknowledged {
        assert!(stored_set.contains(id), "{id} was acknowledged and is lost");
    }
    for id in &outcomes.refused {
        assert!(
            !stored_set.contains(id),
            "{id} was refused (503) and is stored"
        );
    }
    eprintln!(
        "in flight: {answer:?}; {} acknowledged, {} refused, {} stored",
        outcomes.acknowledged.len(),
        outcomes.refused.len(),
        stored.len()
    );
}

/// A webhook whose append is still held when the shutdown deadline passes is answered 503, with
/// the usual JSON body, before its connection closes (never 200, never no answer at all), and
/// nothing of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_still_in_flight_at_the_shutdown_deadline_is_not_acknowledged() {
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut config = ServeArgs::for_tests();
    config.data_dir = data_dir.path().to_owned();
    config.shutdown_timeout = Duration::from_millis(300);
    let embedded: Arc<EmbeddedLog> =
        Arc::new(EmbeddedLog::open(data_dir.path(), config.embedded_settings()).unwrap());
    let log = GatedLog::new(embedded.clone());
    let appends = log.appends.clone();
    let storage = Storage {
        log: Arc::new(log),
        state: embedded.clone(),
    };
    let gateway = Gateway::start_with_storage(data_dir.clone(), config, storage).await;
    gateway
        .notify(PATH, &onboarding_body("before", "UNKNOWN"))
        .await;

    appends.close();
    let held = {
        let http = gateway.http.clone();
        let url = gateway.url(PATH);
        tokio::spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .body(onboarding_body("held", "UNKNOWN"))
                .send()
                .await?;
            Ok::<_, reqwest::Error>((response.status(), response.json::<Value>().await?))
        })
    };
    appends.until_waiting(1).await;
    // Shutdown waits for the webhook for the shutdown timeout, then closes the log anyway.
    gateway.stop().await.unwrap();
    appends.open();
    let (status, body) = held
        .await
        .unwrap()
        .expect("the webhook in flight got no answer");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body,
        json!({
            "success": false,
            "error": "unavailable",
            "detail": "the gateway is shutting down; retry later",
        })
    );
    drop(embedded);

    let reopened =
        EmbeddedLog::open(data_dir.path(), ServeArgs::for_tests().embedded_settings()).unwrap();
    assert_eq!(
        reopened.bounds().await.unwrap().head,
        1,
        "only `before` is stored"
    );
}

/// SIGTERM the moment the gateway says it listens is a graceful shutdown too: the handlers are
/// installed before the listeners accept anyone. (Without that, the signal's default action
/// ended the process in a fraction of the starts, hence several starts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_as_soon_as_the_gateway_listens_is_a_graceful_shutdown() {
    for _ in 0..10 {
        let data_dir = tempfile::tempdir().unwrap();
        let mut process = GatewayProcess::spawn(data_dir.path(), &[]).await;
        send_signal(&process.child, "TERM");
        expect_clean_exit(&mut process.child, "TERM").await;
    }
}

/// SIGTERM while the gateway still waits for NATS at start (up to --nats-connect-timeout) stops
/// it there, at once and with success.
#[tokio::test]
async fn sigterm_while_the_storage_opens_stops_the_start() {
    use tokio::io::AsyncBufReadExt;

    let data_dir = tempfile::tempdir().unwrap();
    let mut child = binary_async()
        .args(["serve", "--public-addr", "127.0.0.1:0"])
        .args(["--internal-addr", "127.0.0.1:0", "--log-format", "json"])
        .args(["--allow-unauthenticated-webhooks", "--storage", "nats"])
        // TEST-NET-1: never answers.
        .args(["--nats-url", "nats://192.0.2.1:4222"])
        .args(["--nats-connect-timeout", "60s"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Logged by the start-up checks, once the signal handlers are in place.
    tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("internal listener access configured") {
                return;
            }
        }
        panic!("the gateway exited before its start-up checks");
    })
    .await
    .expect("no start-up checks in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // Were it to go on waiting for NATS, it would not exit in time.
    send_signal(&child, "TERM");
    expect_clean_exit(&mut child, "TERM").await;
}
