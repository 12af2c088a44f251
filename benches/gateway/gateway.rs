//! The gateway under test, as a child process (so that its memory is its own), and a bare axum
//! server as the baseline of the HTTP stack.

use std::{net::SocketAddr, path::Path, process::Stdio, time::Duration};

use axum::{Json, Router, body::Bytes, routing::post};
use incode_gateway::proto::v1::event_stream_service_client::EventStreamServiceClient;
use serde_json::{Map, Value};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
};
use tonic::transport::Channel;

pub const CLIENT_ID: &str = "bench";
pub const CLIENT_SECRET: &str = "bench-secret-0123456789";
const SIGNING_KEY: &str = "YmVuY2gtc2lnbmluZy1rZXktMDEyMzQ1Njc4OWFiY2RlZg==";

pub struct GatewayProcess {
    child: Child,
    pub public: SocketAddr,
    pub internal: SocketAddr,
}

impl GatewayProcess {
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, &[]).await
    }

    /// The gateway with extra arguments (another storage backend).
    pub async fn start_with(data_dir: &Path, args: &[&str]) -> Self {
        // Another build of the gateway (an earlier commit, say) can be measured with the same
        // harness: INCODE_GATEWAY_BENCH_BIN names its binary.
        let binary = std::env::var_os("INCODE_GATEWAY_BENCH_BIN")
            .filter(|binary| !binary.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_incode-gateway").into());
        let mut child = Command::new(binary)
            .args([
                "serve",
                "--public-addr",
                "127.0.0.1:0",
                "--internal-addr",
                "127.0.0.1:0",
            ])
            .args(["--log-format", "json", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("INCODE_GATEWAY_OAUTH_CLIENT_ID", CLIENT_ID)
            .env("INCODE_GATEWAY_OAUTH_CLIENT_SECRET", CLIENT_SECRET)
            .env("INCODE_GATEWAY_TOKEN_SIGNING_KEY", SIGNING_KEY)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the gateway");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let listening = loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("the gateway exited before listening");
            if let Ok(record) = serde_json::from_str::<Value>(&line)
                && record["message"] == "incode-gateway listening"
            {
                break record;
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self {
            child,
            public: listening["public"].as_str().unwrap().parse().unwrap(),
            internal: listening["internal"].as_str().unwrap().parse().unwrap(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Resident memory of the gateway process, in bytes.
    pub fn rss(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    }

    /// A token obtained as Incode obtains it.
    pub async fn token(&self) -> String {
        let response: Value = reqwest::Client::new()
            .post(format!("http://{}/oauth/token", self.public))
            .basic_auth(CLIENT_ID, Some(CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        response["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.internal))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self) -> EventStreamServiceClient<Channel> {
        EventStreamServiceClient::new(self.channel().await)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A bare axum server that parses the same JSON and answers `{"success":true}`: no auth, no
/// log, no fan-out. Runs on its own two-worker runtime, like the gateway's.
pub fn start_baseline() -> (
    SocketAddr,
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let app = Router::new().route(
                "/webhooks/incode/onboarding-status",
                post(|body: Bytes| async move {
                    let parsed: Result<Map<String, Value>, _> = serde_json::from_slice(&body);
                    match parsed {
                        Ok(object) if object.contains_key("interviewId") => {
                            Ok(Json(serde_json::json!({ "success": true })))
                        }
                        _ => Err(axum::http::StatusCode::BAD_REQUEST),
                    }
                }),
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("baseline address");
    (addr, thread, stop_tx)
}
