//! Starts the real gateway on ephemeral loopback ports and talks to it as Incode (HTTP) and as a
//! subscriber (gRPC) would.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tempfile::TempDir;

use incode_gateway::{
    ServeArgs,
    log::Storage,
    proto::v1::{
        self, EventFilter, StartPosition, SubscribeRequest, SubscribeResponse,
        event_stream_service_client::EventStreamServiceClient, start_position::Position,
        subscribe_response::Response,
    },
    server::ServerError,
};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Streaming, transport::Channel};

/// How long a test waits for something that should happen promptly before failing.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A running gateway.
pub struct Gateway {
    /// The data directory, removed when the last handle to it is dropped.
    pub data_dir: Arc<TempDir>,
    pub base_url: String,
    pub grpc_addr: SocketAddr,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Gateway {
    /// A gateway with the test defaults.
    pub async fn start() -> Self {
        Self::start_with(ServeArgs::for_tests()).await
    }

    /// A gateway with this configuration in a new temporary data directory; its listen
    /// addresses are ignored.
    pub async fn start_with(config: ServeArgs) -> Self {
        Self::start_in(Arc::new(tempfile::tempdir().unwrap()), config).await
    }

    /// A gateway on an existing data directory (a restart).
    pub async fn start_in(data_dir: Arc<TempDir>, mut config: ServeArgs) -> Self {
        config.data_dir = data_dir.path().to_owned();
        let storage = incode_gateway::server::open_storage(&config).await.unwrap();
        Self::start_with_storage(data_dir, config, storage).await
    }

    /// A gateway over storage the test opened itself.
    pub async fn start_with_storage(
        data_dir: Arc<TempDir>,
        config: ServeArgs,
        storage: Storage,
    ) -> Self {
        let public = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let internal = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}", public.local_addr().unwrap());
        let grpc_addr = internal.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(incode_gateway::server::run_with_storage(
            config,
            storage,
            public,
            internal,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            data_dir,
            base_url,
            grpc_addr,
            http: http_client(),
            stop: Some(stop),
            task,
        }
    }

    /// Asks the gateway to shut down and waits until `run` returns.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the gateway did not stop in time")
            .expect("the gateway task panicked")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// A GET on the public listener; returns the status and the parsed JSON answer.
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        answer(self.http.get(self.url(path)).send().await.unwrap()).await
    }

    /// Waits (at most [`PATIENCE`]) until `GET /readyz` answers `status`, and returns its JSON
    /// answer: it tells what the gateway's readiness check, once a second, last found.
    pub async fn until_readyz(&self, status: StatusCode) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let (now, answer) = self.get_json("/readyz").await;
            if now == status {
                return answer;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz still answers {now} {answer}, not {status}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Posts a JSON body as Incode does; returns the status and the parsed JSON answer.
    pub async fn post_json(&self, path: &str, body: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        answer(response).await
    }

    /// Posts a notification and asserts it was acknowledged.
    pub async fn notify(&self, path: &str, body: &str) {
        let (status, answer) = self.post_json(path, body).await;
        assert_eq!(status, StatusCode::OK, "answer: {answer}");
        assert_eq!(answer, serde_json::json!({ "success": true }));
    }

    pub async fn client(&self) -> EventStreamServiceClient<Channel> {
        EventStreamServiceClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Opens a subscription; the start position is fixed when this returns.
    pub async fn subscribe(
        &self,
        position: Option<Position>,
        filter: EventFilter,
    ) -> Streaming<SubscribeResponse> {
        self.try_subscribe(position, filter).await.unwrap()
    }

    pub async fn try_subscribe(
        &self,
        position: Option<Position>,
        filter: EventFilter,
    ) -> Result<Streaming<SubscribeResponse>, tonic::Status> {
        self.try_subscribe_as("", position, filter).await
    }

    /// Subscribes as a durable consumer (none when `consumer` is empty).
    pub async fn try_subscribe_as(
        &self,
        consumer: &str,
        position: Option<Position>,
        filter: EventFilter,
    ) -> Result<Streaming<SubscribeResponse>, tonic::Status> {
        let request = SubscribeRequest {
            start: position.map(|position| StartPosition {
                position: Some(position),
            }),
            filter: Some(filter),
            consumer: consumer.to_owned(),
            ..Default::default()
        };
        self.client()
            .await
            .subscribe(request)
            .await
            .map(tonic::Response::into_inner)
    }
}

pub async fn answer(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = response.text().await.unwrap();
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "every answer is JSON; got {text:?}"
    );
    let value = serde_json::from_str(&text).unwrap();
    (status, value)
}

pub fn earliest() -> Option<Position> {
    Some(Position::Earliest(v1::start_position::Earliest {}))
}

pub fn latest() -> Option<Position> {
    Some(Position::Latest(v1::start_position::Latest {}))
}

pub fn no_filter() -> EventFilter {
    EventFilter::default()
}

/// An HTTP client whose every call fails the test, rather than hang it, when no answer comes in
/// time.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

/// The next message of a stream; fails the test if none comes in time.
pub async fn next_message(stream: &mut Streaming<SubscribeResponse>) -> Response {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("no message in time")
        .expect("stream failed")
        .expect("stream ended")
        .response
        .expect("empty response")
}

/// The next message that is not a heartbeat. Heartbeats show the stream is alive but are no
/// progress: a stream that only beats fails the test after [`PATIENCE`] instead of hanging it.
pub async fn next_progress(stream: &mut Streaming<SubscribeResponse>) -> Response {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let message = tokio::time::timeout_at(deadline, next_message(stream))
            .await
            .expect("only heartbeats in time");
        if !matches!(message, Response::Heartbeat(_)) {
            return message;
        }
    }
}

/// The next event, skipping heartbeats; fails on anything else.
pub async fn next_event(stream: &mut Streaming<SubscribeResponse>) -> v1::Event {
    match next_progress(stream).await {
        Response::Event(event) => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

/// Expects `caught_up` next (heartbeats aside) and returns its sequence.
pub async fn expect_caught_up(stream: &mut Streaming<SubscribeResponse>) -> u64 {
    match next_progress(stream).await {
        Response::CaughtUp(caught_up) => caught_up.sequence,
        other => panic!("expected caught_up, got {other:?}"),
    }
}

pub fn onboarding_body(interview_id: &str, status: &str) -> String {
    serde_json::json!({ "interviewId": interview_id, "onboardingStatus": status }).to_string()
}

/// Reads every stored event of a stream that started in the past, up to `caught_up`.
pub async fn drain_until_caught_up(stream: &mut Streaming<SubscribeResponse>) -> Vec<v1::Event> {
    let mut events = Vec::new();
    loop {
        match next_progress(stream).await {
            Response::Event(event) => events.push(event),
            Response::CaughtUp(_) => return events,
            other => panic!("unexpected {other:?}"),
        }
    }
}

pub fn interview_id(event: &v1::Event) -> &str {
    match event.payload.as_ref() {
        Some(v1::event::Payload::OnboardingStatusChanged(p)) => &p.interview_id,
        Some(v1::event::Payload::WatchlistUpdated(p)) => &p.interview_id,
        Some(v1::event::Payload::UnrecognizedNotification(p)) => &p.interview_id,
        None => "",
    }
}

/// The gateway binary, with none of the caller's `INCODE_GATEWAY_*` (or `OTEL_*`) variables: a
/// test says every setting its process gets, and an exported variable in the shell that runs the
/// suite changes nothing.
pub fn binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_incode-gateway"));
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("INCODE_GATEWAY_") || text.starts_with("OTEL_") {
            command.env_remove(&name);
        }
    }
    command
}

/// [`binary`], for tokio.
pub fn binary_async() -> tokio::process::Command {
    let mut command = tokio::process::Command::from(binary());
    command.kill_on_drop(true);
    command
}

/// [`binary_async`], started by `sh` under `umask`: what the gateway creates must not depend on
/// the umask of whoever runs the tests.
pub fn binary_under_umask(umask: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", r#"umask "$0" && exec "$@""#, umask])
        .arg(env!("CARGO_BIN_EXE_incode-gateway"))
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        let text = name.to_string_lossy();
        if text.starts_with("INCODE_GATEWAY_") || text.starts_with("OTEL_") {
            command.env_remove(&name);
        }
    }
    command
}

/// The gateway binary running as a child process, for what only a real process can show
/// (crashes, signals, environment configuration).
pub struct GatewayProcess {
    pub child: tokio::process::Child,
    pub base_url: String,
    pub grpc_url: String,
    /// Every line the process wrote to standard output after it started listening.
    pub output: Arc<std::sync::Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts the binary on ephemeral ports over `data_dir`, with extra environment variables,
    /// and waits for its "listening" log line to learn its ports.
    /// Webhooks are open to anyone.
    pub async fn spawn(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_with(data_dir, &["--allow-unauthenticated-webhooks"], env).await
    }

    /// Like [`GatewayProcess::spawn`], with these extra arguments instead of open webhooks.
    pub async fn spawn_with(
        data_dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_on("127.0.0.1:0", data_dir, args, env).await
    }

    /// Like [`GatewayProcess::spawn_with`], with the internal listener on `internal_addr`.
    pub async fn spawn_on(
        internal_addr: &str,
        data_dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn_command(binary_async(), internal_addr, data_dir, args, env).await
    }

    /// Like [`GatewayProcess::spawn_on`], running the gateway with `command` ([`binary_async`]
    /// or [`binary_under_umask`]).
    pub async fn spawn_command(
        mut command: tokio::process::Command,
        internal_addr: &str,
        data_dir: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = command
            .args(["serve", "--public-addr", "127.0.0.1:0"])
            .args(["--internal-addr", internal_addr, "--log-format", "json"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let listening = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let Ok(record) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if record["message"] == "incode-gateway listening" {
                    return record;
                }
            }
            panic!("the gateway exited before listening")
        })
        .await
        .expect("the gateway did not start in time");
        // Keep draining its output so that it never blocks on a full pipe.
        let output = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                collected.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            base_url: format!("http://{}", listening["public"].as_str().unwrap()),
            grpc_url: format!("http://{}", listening["internal"].as_str().unwrap()),
            output,
        }
    }

    pub async fn client(&self) -> EventStreamServiceClient<Channel> {
        let channel = Channel::from_shared(self.grpc_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        EventStreamServiceClient::new(channel)
    }
}

/// `message` as a gRPC request, with `token` as its bearer token when there is one.
pub fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// Acknowledges `sequence` for the durable consumer `consumer`; the answer is the cursor.
pub async fn ack(
    channel: &Channel,
    token: Option<&str>,
    consumer: &str,
    sequence: u64,
) -> Result<u64, tonic::Status> {
    let request = v1::AckRequest {
        consumer: consumer.to_owned(),
        sequence,
        ..Default::default()
    };
    EventStreamServiceClient::new(channel.clone())
        .ack(with_token(request, token))
        .await
        .map(|answer| answer.into_inner().sequence)
}

/// Sends `signal` (`"TERM"`, `"HUP"`, …) to the process `child`, which must still run.
pub fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process has exited").to_string();
    let sent = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} failed");
}

/// Waits for `child` to exit after a signal and requires a successful exit: a graceful stop.
pub async fn expect_clean_exit(child: &mut tokio::process::Child, signal: &str) {
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the gateway did not exit after SIG{signal}"))
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}
