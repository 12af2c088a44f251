//! Connecting to NATS as deployments do (token, user and password, TLS with a CA) and the
//! stream's settings: created when missing, updated where safe, refused where not.

use std::{process::Stdio, time::Duration};

use async_nats::jetstream::stream::{self, StorageType};
use incode_gateway::{
    auth::Secret,
    error::error_chain,
    log::{AppendOutcome, DedupKey, EventLog, NatsLog, NewEvent, nats::NatsSettings},
    proto::v1,
};

use crate::support::{
    common::PATIENCE,
    nats_server::{NatsServer, NodeSettings},
    pki::TestCa,
};

const BINARY: &str = env!("CARGO_BIN_EXE_incode-gateway");

fn options(url: String) -> NatsSettings {
    let mut options = NatsSettings::new(vec![url], "SETUP");
    options.connect_timeout = Duration::from_secs(3);
    options
}

async fn append_one(log: &NatsLog) -> AppendOutcome {
    log.append(NewEvent {
        dedup_key: DedupKey::for_notification("setup", b"{}"),
        event: v1::Event::default(),
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_token_authenticates_and_a_wrong_one_is_refused_without_being_shown() {
    let nats = NatsServer::start_with(NodeSettings {
        extra: "authorization { token: \"right-token-5d1c\" }".to_owned(),
        ..NodeSettings::default()
    })
    .await;
    let mut good = options(nats.url());
    good.auth.token = Some(Secret::new("right-token-5d1c"));
    let log = NatsLog::connect(good).await.unwrap();
    assert_eq!(append_one(&log).await, AppendOutcome::Appended(1));

    let mut wrong = options(nats.url());
    wrong.auth.token = Some(Secret::new("wrong-token-77aa"));
    let error = NatsLog::connect(wrong).await.err().unwrap();
    let text = format!("{} / {error:?}", error_chain(&error));
    assert!(text.contains("cannot connect to NATS"), "{text}");
    assert!(!text.contains("wrong-token-77aa"), "{text}");
}

#[tokio::test]
async fn a_user_and_password_authenticate() {
    let nats = NatsServer::start_with(NodeSettings {
        extra: "authorization { user: gateway, password: \"pw-9c2e\" }".to_owned(),
        ..NodeSettings::default()
    })
    .await;
    let mut good = options(nats.url());
    good.auth.user = Some("gateway".to_owned());
    good.auth.password = Some(Secret::new("pw-9c2e"));
    let log = NatsLog::connect(good).await.unwrap();
    assert_eq!(append_one(&log).await, AppendOutcome::Appended(1));

    let mut wrong = options(nats.url());
    wrong.auth.user = Some("gateway".to_owned());
    wrong.auth.password = Some(Secret::new("not-it-1f0b"));
    let error = NatsLog::connect(wrong).await.err().unwrap();
    assert!(!format!("{error:?}").contains("not-it-1f0b"));

    // Half a user is a configuration mistake, said before connecting.
    let mut half = options(nats.url());
    half.auth.user = Some("gateway".to_owned());
    let error = NatsLog::connect(half).await.err().unwrap().to_string();
    assert!(error.contains("--nats-password"), "{error}");
}

#[tokio::test]
async fn tls_with_a_ca_file_connects_and_an_unknown_server_is_refused() {
    let ca = TestCa::new("nats test CA");
    let server = ca.server();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("nats.crt"), dir.path().join("nats.key"));
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.pem).unwrap();

    let nats = NatsServer::start_with(NodeSettings {
        extra: format!("tls {{\n  cert_file: {cert:?}\n  key_file: {key:?}\n}}"),
        scheme: "tls",
    })
    .await;
    let mut trusted = options(nats.url());
    trusted.tls.ca_file = Some(ca_file);
    let log = NatsLog::connect(trusted).await.unwrap();
    assert_eq!(append_one(&log).await, AppendOutcome::Appended(1));

    // Without the CA the server's certificate is not trusted.
    let other_ca = dir.path().join("other-ca.crt");
    std::fs::write(&other_ca, TestCa::new("someone else").pem).unwrap();
    let mut untrusted = options(nats.url());
    untrusted.tls.ca_file = Some(other_ca);
    assert!(NatsLog::connect(untrusted).await.is_err());
}

#[tokio::test]
async fn safe_differences_are_updated_and_the_storage_is_refused_at_start() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);

    // A stream made by hand with a shorter max_age is brought to the gateway's settings.
    jetstream
        .create_stream(stream::Config {
            name: "SETUP".to_owned(),
            subjects: vec!["SETUP.events".to_owned()],
            max_age: Duration::from_secs(3600),
            ..stream::Config::default()
        })
        .await
        .unwrap();
    let mut wanted = options(nats.url());
    wanted.max_events = Some(1000);
    let log = NatsLog::connect(wanted).await.unwrap();
    let info = jetstream
        .get_stream("SETUP")
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(info.config.max_age, Duration::from_secs(7 * 24 * 3600));
    assert_eq!(info.config.max_messages, 1000);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(24 * 3600));
    drop(log);

    // A stream in memory would lose events on a restart: the gateway refuses to start, and says
    // what differs.
    jetstream
        .create_stream(stream::Config {
            name: "INCODE_EVENTS".to_owned(),
            subjects: vec!["INCODE_EVENTS.events".to_owned()],
            storage: StorageType::Memory,
            ..stream::Config::default()
        })
        .await
        .unwrap();
    let data_dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(BINARY)
        .args([
            "--public-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
        .args(["--allow-unauthenticated-webhooks", "--storage", "nats"])
        .args(["--nats-url", &nats.url()])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("the gateway neither started nor refused")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("INCODE_EVENTS"), "{stderr}");
    assert!(stderr.contains("storage Memory"), "{stderr}");
    assert!(stderr.contains("needs File"), "{stderr}");
}

#[tokio::test]
async fn with_nats_and_oauth_serve_refuses_to_start_without_a_signing_key() {
    // Each replica would sign with its own random key and refuse the others' tokens.
    let data_dir = tempfile::tempdir().unwrap();
    let output = crate::support::common::binary_async()
        .args([
            "--public-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
        .args(["--storage", "nats", "--nats-url", "nats://127.0.0.1:9"])
        .args([
            "--oauth-client-id",
            "incode",
            "--oauth-client-secret",
            "a-secret-3b1f",
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("the gateway neither started nor refused")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--token-signing-key"), "{stderr}");
    assert!(!stderr.contains("a-secret-3b1f"), "{stderr}");
    // Nothing was written to the data directory.
    assert_eq!(std::fs::read_dir(data_dir.path()).unwrap().count(), 0);
}

/// `serve --storage nats` with a token (from the environment, as advised) and `args`, towards a
/// server that is never reachable (TEST-NET-1): what start-up says before and when connecting.
async fn serve_towards_an_unreachable_server(args: &[&str]) -> (bool, String, String) {
    let data_dir = tempfile::tempdir().unwrap();
    let output = crate::support::common::binary_async()
        .args([
            "--public-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
        .args(["--allow-unauthenticated-webhooks", "--log-format", "json"])
        .args(["--storage", "nats", "--nats-url", "nats://192.0.2.1:4222"])
        .args(["--nats-connect-timeout", "1s"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir.path())
        .env("INCODE_GATEWAY_NATS_TOKEN", "nats-token-hunter2")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .expect("the gateway neither started nor refused")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    for text in [&stdout, &stderr] {
        assert!(!text.contains("hunter2"), "the token was shown: {text}");
    }
    (output.status.success(), stdout, stderr)
}

#[tokio::test]
async fn a_token_in_plain_text_across_the_network_is_refused_unless_allowed() {
    // Refused before any attempt to connect, naming the server and the way out.
    let (started, _, stderr) = serve_towards_an_unreachable_server(&[]).await;
    assert!(!started);
    for expected in [
        "NATS credentials would travel in clear text to nats://192.0.2.1:4222",
        "--nats-allow-plaintext",
    ] {
        assert!(stderr.contains(expected), "{stderr}");
    }
    assert!(!stderr.contains("cannot connect"), "{stderr}");

    // Allowed: it tries to connect, with a warning.
    let (started, stdout, stderr) =
        serve_towards_an_unreachable_server(&["--nats-allow-plaintext"]).await;
    assert!(!started);
    assert!(stderr.contains("cannot connect to NATS"), "{stderr}");
    assert!(
        stdout.contains("THE CONNECTION TO NATS IS NOT ENCRYPTED"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_token_in_plain_text_to_loopback_is_accepted() {
    let nats = NatsServer::start_with(NodeSettings {
        extra: "authorization { token: \"loopback-token-3a7d\" }".to_owned(),
        ..NodeSettings::default()
    })
    .await;
    let data_dir = tempfile::tempdir().unwrap();
    let url = nats.url();
    let process = crate::support::common::GatewayProcess::spawn_with(
        data_dir.path(),
        &[
            "--allow-unauthenticated-webhooks",
            "--storage",
            "nats",
            "--nats-url",
            &url,
        ],
        &[("INCODE_GATEWAY_NATS_TOKEN", "loopback-token-3a7d")],
    )
    .await;
    let response = crate::support::common::http_client()
        .post(format!(
            "{}/webhooks/incode/onboarding-status",
            process.base_url
        ))
        .header("content-type", "application/json")
        .body(crate::support::common::onboarding_body(
            "loopback",
            "ONBOARDING_FINISHED",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}
