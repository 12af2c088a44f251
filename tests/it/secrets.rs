//! Start-up rules and secrecy: the gateway refuses to run open by accident, `hash-secret` works,
//! and no secret or token shows in logs or `--help`.

use std::{
    io::Write,
    process::Stdio,
    sync::{Arc, Mutex},
};

use argon2::{Argon2, PasswordHash, PasswordVerifier};
use base64::{Engine, engine::general_purpose::STANDARD};
use incode_gateway::{
    ServeArgs,
    auth::{AuthSetupError, Secret},
    server::ServerError,
};
use reqwest::StatusCode;
use tokio::io::AsyncWriteExt;
use tracing_subscriber::{filter::LevelFilter, fmt::MakeWriter, prelude::*};

use crate::support::{auth_common::*, common::*};

/// Every log line the gateway writes while the guard lives, as text and as JSON.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;

    fn make_writer(&'a self) -> Self {
        self.clone()
    }
}

impl Captured {
    /// Captures the logs of this thread (the gateway runs on it: current-thread runtime).
    fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry()
            .with(LevelFilter::TRACE)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(self.clone()),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(self.clone()),
            );
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_logs_of_a_full_flow_hold_no_secret_and_no_token() {
    let logs = Captured::default();
    let _guard = logs.install();
    let wrong_secret = "wrong-secret-5e0a";
    let gateway = Gateway::start_with(oauth_config()).await;
    let mut stream = gateway.subscribe(latest(), no_filter()).await;

    let (status, _, _) = token_request(
        &gateway,
        &gateway.http,
        Some(&basic(CLIENT_ID, wrong_secret)),
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let token = fetch_token(&gateway).await;
    let bearer = format!("Bearer {token}");
    let (status, _, _) = post_webhook(
        &gateway,
        Some(&bearer),
        &[],
        &onboarding_body("logged", "ONBOARDING_FINISHED"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = post_webhook(
        &gateway,
        Some(&format!("{bearer}x")),
        &[],
        &onboarding_body("refused", "ONBOARDING_FINISHED"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    gateway.stop().await.unwrap();

    let text = logs.text();
    for expected in [
        "webhook authentication configured",
        "client authentication failed",
        "access token issued",
        "notification stored",
        "invalid_token",
    ] {
        assert!(
            text.contains(expected),
            "the logs lack {expected:?}:\n{text}"
        );
    }
    let signature = token.rsplit('.').next().unwrap();
    let basic_header = STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    for secret in [
        CLIENT_SECRET,
        wrong_secret,
        SIGNING_KEY,
        &token,
        signature,
        &basic_header,
    ] {
        assert!(!text.contains(secret), "the logs show {secret:?}:\n{text}");
    }
}

/// In-memory storage: a random key, with a warning that tokens will not survive a restart.
#[tokio::test(flavor = "current_thread")]
async fn with_memory_storage_and_no_signing_key_a_random_one_is_used_with_a_warning() {
    let logs = Captured::default();
    let _guard = logs.install();
    let mut config = oauth_config();
    config.auth.token_signing_key = None;
    config.storage = incode_gateway::config::StorageKind::Memory;
    let gateway = Gateway::start_with(config).await;
    let token = fetch_token(&gateway).await;
    let (status, _, _) = post_webhook(
        &gateway,
        Some(&format!("Bearer {token}")),
        &[],
        &onboarding_body("random-key", "UNKNOWN"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = logs.text();
    assert!(
        text.contains("will not survive a restart") && text.contains("across replicas"),
        "{text}"
    );
    assert!(
        !gateway
            .data_dir
            .path()
            .join(incode_gateway::auth::SIGNING_KEY_FILE)
            .exists()
    );
}

/// Embedded storage: the key is generated once and kept in the data directory, so a token
/// issued before a restart still works after it.
#[tokio::test]
async fn with_embedded_storage_a_generated_key_survives_a_restart() {
    let mut config = oauth_config();
    config.auth.token_signing_key = None;
    let gateway = Gateway::start_with(config.clone()).await;
    let token = fetch_token(&gateway).await;
    let data_dir = gateway.data_dir.clone();
    gateway.stop().await.unwrap();

    let key_file = data_dir.path().join(incode_gateway::auth::SIGNING_KEY_FILE);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    let restarted = Gateway::start_in(data_dir, config).await;
    let (status, _, answer) = post_webhook(
        &restarted,
        Some(&format!("Bearer {token}")),
        &[],
        &onboarding_body("kept-key", "UNKNOWN"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

#[tokio::test]
async fn serve_refuses_to_start_with_no_webhook_authentication() {
    let mut config = ServeArgs::for_tests();
    config.auth.allow_unauthenticated_webhooks = false;
    let error = Gateway::start_with(config).await.stop().await.unwrap_err();
    assert!(
        matches!(error, ServerError::Auth(AuthSetupError::NoWebhookAuth)),
        "{error:?}"
    );

    // The binary says what to do.
    let data_dir = tempfile::tempdir().unwrap();
    let output = binary_async()
        .args([
            "--public-addr",
            "127.0.0.1:0",
            "--internal-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for hint in [
        "--oauth-client-id",
        "--webhook-header",
        "--allow-unauthenticated-webhooks",
    ] {
        assert!(stderr.contains(hint), "{stderr}");
    }
    assert!(
        std::fs::read_dir(data_dir.path()).unwrap().next().is_none(),
        "a refused start touches no storage"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn allowing_unauthenticated_webhooks_warns_loudly() {
    let logs = Captured::default();
    let _guard = logs.install();
    let gateway = Gateway::start().await;
    gateway
        .notify(WEBHOOK, &onboarding_body("open", "UNKNOWN"))
        .await;
    assert!(logs.text().contains("WEBHOOKS ARE NOT AUTHENTICATED"));
}

/// `hash-secret` reads the secret from standard input; its output works as a client secret.
#[tokio::test]
async fn hash_secret_prints_an_argon2id_hash_that_authenticates() {
    let mut child = binary_async()
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"piped-secret-91b2\n").await.unwrap();
    drop(stdin);
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let parsed = PasswordHash::new(&hash).unwrap();
    Argon2::default()
        .verify_password(b"piped-secret-91b2", &parsed)
        .unwrap();

    let mut config = oauth_config();
    config.auth.oauth_client_secret = Some(Secret::new(hash.clone()));
    let gateway = Gateway::start_with(config).await;
    for (secret, expected) in [
        ("piped-secret-91b2", StatusCode::OK),
        ("piped-secret-91b2\n", StatusCode::UNAUTHORIZED),
        (hash.as_str(), StatusCode::UNAUTHORIZED),
    ] {
        let (status, _, body) = token_request(
            &gateway,
            &gateway.http,
            Some(&basic(CLIENT_ID, secret)),
            "grant_type=client_credentials",
        )
        .await;
        assert_eq!(status, expected, "{secret:?}: {body}");
    }
}

#[test]
fn help_shows_no_secret_values() {
    let secrets = [
        ("INCODE_GATEWAY_OAUTH_CLIENT_SECRET", "help-secret-1d4f"),
        ("INCODE_GATEWAY_TOKEN_SIGNING_KEY", SIGNING_KEY),
        ("INCODE_GATEWAY_TOKEN_VERIFY_KEYS", OTHER_KEY),
        (
            "INCODE_GATEWAY_WEBHOOK_HEADER",
            "X-Incode-Secret=help-header-8a3c",
        ),
    ];
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let output = binary().args(args).envs(secrets).output().unwrap();
        assert!(output.status.success());
        let help = String::from_utf8(output.stdout).unwrap();
        for (name, value) in secrets {
            assert!(help.contains(name), "{name} is not documented:\n{help}");
            assert!(!help.contains(value), "--help shows {value}:\n{help}");
        }
        assert!(help.contains("hash-secret") || args.len() == 2, "{help}");
    }
}

#[test]
fn the_configuration_debug_output_shows_no_secret() {
    let mut config = oauth_config();
    config.auth.webhook_headers = vec![Secret::new("X-Incode-Secret=debug-header-2b7e")];
    let text = format!("{config:?}");
    assert!(text.contains(CLIENT_ID), "{text}");
    for secret in [CLIENT_SECRET, SIGNING_KEY, "debug-header-2b7e"] {
        assert!(!text.contains(secret), "{text}");
    }
}
