//! The internal listener's security: the loopback default and the start-up rule, TLS, mutual
//! TLS with subscriber certificates, bearer tokens, what each subscriber may use, certificate
//! rotation with streams open, and the transport limits. Real TLS, real gRPC.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use incode_gateway::{
    ServeArgs,
    grpc::{
        Security, SetupError,
        tls::{ReloadingTls, TlsFiles as ReloadFiles},
    },
    proto::v1::{
        AckRequest, EventFilter, SubscribeRequest, SubscribeResponse,
        event_stream_service_client::EventStreamServiceClient,
    },
    server::ServerError,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::ring,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};
use tonic::{
    Code, Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest,
};

use crate::{
    support::{
        common::*,
        pki::{Leaf, TestCa, TlsFiles},
    },
    telemetry::{Collector, attribute},
};

const BILLING_TOKEN: &str = "billing-token-7f3a9c2e51d04b8a";
/// Configured as a digest only.
const PAYMENTS_TOKEN: &str = "payments-token-0b9e4d7c1a2f3e6d";
const SCRAPER_TOKEN: &str = "scraper-token-5c8e1f0a9b7d3c2e";
const WRONG_TOKEN: &str = "wrong-token-00000000000000000";
const WEBHOOK: &str = "/webhooks/incode/onboarding-status";

/// `sha256:<hex>`, as `printf %s TOKEN | sha256sum` makes it.
fn digest(token: &str) -> String {
    let hex: String = Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `billing` (a plain token; its own consumers), `payments` (a token stored as a digest) and
/// `scraper` (a token; may not read the stream).
fn subscribers_toml() -> String {
    format!(
        r#"
[[subscribers]]
name = "billing"
tokens = ["{BILLING_TOKEN}"]
consumers = ["billing", "billing-*"]

[[subscribers]]
name = "payments"
tokens = ["{payments}"]
consumers = ["payments"]

[[subscribers]]
name = "scraper"
tokens = ["{SCRAPER_TOKEN}"]
read_stream = false
"#,
        payments = digest(PAYMENTS_TOKEN)
    )
}

/// Certificate-only subscribers, for mutual TLS.
const CERTIFICATE_SUBSCRIBERS: &str = r#"
[[subscribers]]
name = "billing"
consumers = ["billing", "billing-*"]

[[subscribers]]
name = "payments"
consumers = ["payments"]
"#;

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn plain_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy()
}

async fn tls_channel(
    addr: SocketAddr,
    ca: &TestCa,
    client: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca.pem));
    if let Some(leaf) = client {
        tls = tls.identity(Identity::from_pem(&leaf.cert_pem, &leaf.key_pem));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

async fn subscribe(
    channel: &Channel,
    token: Option<&str>,
    consumer: &str,
) -> Result<Streaming<SubscribeResponse>, Status> {
    let request = SubscribeRequest {
        start: if consumer.is_empty() { latest() } else { None }.map(|position| {
            incode_gateway::proto::v1::StartPosition {
                position: Some(position),
            }
        }),
        filter: Some(EventFilter::default()),
        consumer: consumer.to_owned(),
        ..Default::default()
    };
    EventStreamServiceClient::new(channel.clone())
        .subscribe(with_token(request, token))
        .await
        .map(tonic::Response::into_inner)
}

async fn health(channel: &Channel, token: Option<&str>) -> ServingStatus {
    let request = HealthCheckRequest {
        service: "incode.gateway.v1.EventStreamService".into(),
    };
    HealthClient::new(channel.clone())
        .check(with_token(request, token))
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn list_services(channel: &Channel, token: Option<&str>) -> Result<Vec<String>, Status> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(with_token(futures::stream::iter([request]), token))
        .await?
        .into_inner();
    let response = responses.message().await?.expect("a reflection answer");
    match response.message_response {
        Some(
            tonic_reflection::pb::v1::server_reflection_response::MessageResponse::ListServicesResponse(
                list,
            ),
        ) => Ok(list.service.into_iter().map(|s| s.name).collect()),
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

fn assert_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, context: &str) -> Status {
    let status = result.expect_err(context);
    assert_eq!(status.code(), code, "{context}: {status:?}");
    status
}

async fn metrics(gateway: &Gateway, token: Option<&str>) -> reqwest::Response {
    let mut request = gateway
        .http
        .get(format!("http://{}/metrics", gateway.grpc_addr));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Whether the Prometheus text has a sample of `name` with all these labels and this value.
fn has_sample(text: &str, name: &str, labels: &[(&str, &str)], value: f64) -> bool {
    text.lines().any(|line| {
        line.starts_with(name)
            && labels
                .iter()
                .all(|(key, val)| line.contains(&format!("{key}=\"{val}\"")))
            && line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) == Some(value)
    })
}

fn token_config(dir: &Path) -> ServeArgs {
    let mut config = ServeArgs::for_tests();
    config.config_file = Some(write_config(dir, &subscribers_toml()));
    config
}

/// The internal listener's security as `config` describes it, bound at `bound`.
fn security(config: &ServeArgs, bound: SocketAddr) -> Result<Security, SetupError> {
    let sections = config.file_sections().unwrap();
    Security::new(config.security_settings(&sections), bound)
}

// ---- The default bind and the start-up rule ----

#[test]
fn serve_help_shows_the_loopback_default_and_the_new_flags() {
    let output = binary().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    assert!(help.contains("[default: 127.0.0.1:50051]"), "{help}");
    for flag in [
        "--internal-tls-cert",
        "--internal-tls-key",
        "--internal-client-ca",
        "--allow-unauthenticated-subscribers",
        "INCODE_GATEWAY_ALLOW_UNAUTHENTICATED_SUBSCRIBERS",
        "--allow-anonymous-reads",
        "--internal-max-concurrent-streams",
        "--internal-http2-keepalive-interval",
        "--internal-tcp-keepalive",
        "--internal-max-message-bytes",
    ] {
        assert!(help.contains(flag), "{flag} is not in --help:\n{help}");
    }
}

/// The default address is loopback, which needs no subscriber authentication. (The test does
/// not bind the default port itself: tests use ephemeral ports only.)
#[tokio::test]
async fn the_default_bind_starts_without_subscriber_authentication() {
    let defaults = incode_gateway::config::Cli::try_parse_args_only(["incode-gateway"])
        .unwrap()
        .serve;
    assert_eq!(defaults.internal_addr, "127.0.0.1:50051".parse().unwrap());
    security(&ServeArgs::for_tests(), defaults.internal_addr).unwrap();

    let data_dir = tempfile::tempdir().unwrap();
    let process = GatewayProcess::spawn(data_dir.path(), &[]).await;
    let channel = Channel::from_shared(process.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    assert_eq!(health(&channel, None).await, ServingStatus::Serving);
    subscribe(&channel, None, "").await.unwrap();
}

#[tokio::test]
async fn a_non_loopback_bind_without_subscriber_authentication_refuses_to_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = binary_async()
        .args(["serve", "--public-addr", "127.0.0.1:0"])
        .args(["--internal-addr", "0.0.0.0:0"])
        .args(["--allow-unauthenticated-webhooks"])
        .arg("--data-dir")
        .arg(data_dir.path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for hint in [
        "subscribers",
        "0.0.0.0",
        "--internal-client-ca",
        "[[subscribers]]",
        "tokens",
        "--allow-unauthenticated-subscribers",
    ] {
        assert!(stderr.contains(hint), "{hint:?} missing from:\n{stderr}");
    }
    assert!(
        std::fs::read_dir(data_dir.path()).unwrap().next().is_none(),
        "a refused start touches no storage"
    );

    // Explicitly allowed, it starts, and says so loudly.
    let process = GatewayProcess::spawn_on(
        "0.0.0.0:0",
        data_dir.path(),
        &[
            "--allow-unauthenticated-webhooks",
            "--allow-unauthenticated-subscribers",
        ],
        &[],
    )
    .await;
    let port = process.grpc_url.rsplit(':').next().unwrap();
    let channel = Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    subscribe(&channel, None, "billing").await.unwrap();
}

#[tokio::test]
async fn the_start_up_rule_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let everywhere: SocketAddr = "0.0.0.0:50051".parse().unwrap();
    let config = ServeArgs::for_tests();
    assert!(matches!(
        security(&config, everywhere),
        Err(SetupError::UnauthenticatedSubscribers { .. })
    ));
    let mut allowed = ServeArgs::for_tests();
    allowed.internal.allow_unauthenticated_subscribers = true;
    security(&allowed, everywhere).unwrap();
    // Tokens authenticate subscribers: allowed anywhere.
    security(&token_config(dir.path()), everywhere).unwrap();
    let v6: SocketAddr = "[::1]:1".parse().unwrap();
    security(&ServeArgs::for_tests(), v6).unwrap();

    // Through `run`, with the listener the gateway gets: loopback needs nothing.
    Gateway::start_with(ServeArgs::for_tests())
        .await
        .stop()
        .await
        .unwrap();
}

#[tokio::test]
async fn inconsistent_internal_settings_are_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("clients");
    let files = TlsFiles::new(&ca.server(), Some(&ca));
    let loopback: SocketAddr = "127.0.0.1:1".parse().unwrap();
    // What refuses the settings: the config file itself, or the listener's security.
    let check = |edit: &dyn Fn(&mut ServeArgs)| {
        let mut config = ServeArgs::for_tests();
        edit(&mut config);
        match config.file_sections() {
            Ok(sections) => Security::new(config.security_settings(&sections), loopback)
                .unwrap_err()
                .to_string(),
            Err(error) => error.to_string(),
        }
    };
    let message = check(&|c| c.internal.internal_tls_cert = Some(files.cert()));
    assert!(message.contains("--internal-tls-key"), "{message}");
    let message = check(&|c| c.internal.internal_client_ca = Some(files.client_ca()));
    assert!(message.contains("--internal-tls-cert"), "{message}");
    let message = check(&|c| {
        c.internal.internal_tls_cert = Some(files.cert());
        c.internal.internal_tls_key = Some(files.path().join("missing.key"));
    });
    assert!(message.contains("missing.key"), "{message}");
    let message = check(&|c| {
        c.internal.internal_tls_cert = Some(files.key());
        c.internal.internal_tls_key = Some(files.key());
    });
    assert!(message.contains("no PEM certificate"), "{message}");
    let message = check(&|c| {
        c.internal.internal_tls_cert = Some(files.cert());
        c.internal.internal_tls_key = Some(files.cert());
    });
    assert!(message.contains("no PEM private key"), "{message}");
    // A key that does not belong to the certificate.
    let other = ca.server();
    std::fs::write(files.path().join("other.key"), &other.key_pem).unwrap();
    let message = check(&|c| {
        c.internal.internal_tls_cert = Some(files.cert());
        c.internal.internal_tls_key = Some(files.path().join("other.key"));
    });
    assert!(message.contains("not a usable pair"), "{message}");
    // Certificate-only subscribers without mutual TLS could never authenticate.
    let path = write_config(dir.path(), CERTIFICATE_SUBSCRIBERS);
    let message = check(&|c| c.config_file = Some(path.clone()));
    assert!(
        message.contains("`billing` can never authenticate"),
        "{message}"
    );
    let message = check(&|c| {
        c.internal.internal_tls_cert = Some(files.cert());
        c.internal.internal_tls_key = Some(files.key());
        c.internal.internal_client_ca = Some(files.client_ca());
        c.internal.allow_anonymous_reads = true;
    });
    assert!(message.contains("--allow-anonymous-reads"), "{message}");
    // A bad token names the subscriber, not the token.
    let path = write_config(
        dir.path(),
        "[[subscribers]]\nname = \"billing\"\ntokens = [\"short-secret\"]\n",
    );
    let message = check(&|c| c.config_file = Some(path.clone()));
    assert!(
        message.contains("`billing`") && message.contains("token #1"),
        "{message}"
    );
    assert!(!message.contains("short-secret"), "{message}");
    let path = write_config(
        dir.path(),
        "[[subscribers]]\nname = \"billing\"\ntoken = [\"short-secret\"]\n",
    );
    let message = check(&|c| c.config_file = Some(path.clone()));
    assert!(message.contains("`token`"), "{message}");
    assert!(!message.contains("short-secret"), "{message}");

    // `run` refuses before it touches storage.
    let mut config = ServeArgs::for_tests();
    config.config_file = Some(write_config(
        dir.path(),
        "[[subscribers]]\nname = \"billing\"\ntokens = [\"short-secret\"]\n",
    ));
    let error = Gateway::start_with(config).await.stop().await.unwrap_err();
    assert!(
        matches!(error, ServerError::InternalListener(_)),
        "{error:?}"
    );
}

// ---- TLS ----

#[tokio::test]
async fn a_client_that_trusts_the_ca_subscribes_over_tls_and_a_plaintext_client_fails() {
    let ca = TestCa::new("gateway CA");
    let files = TlsFiles::new(&ca.server(), None);
    let mut config = ServeArgs::for_tests();
    config.internal.internal_tls_cert = Some(files.cert());
    config.internal.internal_tls_key = Some(files.key());
    let gateway = Gateway::start_with(config).await;

    let channel = tls_channel(gateway.grpc_addr, &ca, None).await.unwrap();
    let mut stream = subscribe(&channel, None, "").await.unwrap();
    gateway
        .notify(WEBHOOK, &onboarding_body("over-tls", "ONBOARDING_FINISHED"))
        .await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    assert_eq!(health(&channel, None).await, ServingStatus::Serving);

    let plaintext = subscribe(&plain_channel(gateway.grpc_addr), None, "").await;
    assert!(plaintext.is_err(), "a plaintext client was served");

    let stranger = TestCa::new("another CA");
    let untrusting = match tls_channel(gateway.grpc_addr, &stranger, None).await {
        Ok(channel) => subscribe(&channel, None, "").await.map(|_| ()),
        Err(error) => Err(Status::unavailable(error.to_string())),
    };
    assert!(
        untrusting.is_err(),
        "a client that does not trust the CA was served"
    );

    // /metrics over plain HTTP on the TLS port: refused by the handshake.
    assert!(
        gateway
            .http
            .get(format!("http://{}/metrics", gateway.grpc_addr))
            .send()
            .await
            .is_err()
    );
}

// ---- Mutual TLS ----

struct MutualTls {
    gateway: Gateway,
    ca: TestCa,
    clients: TestCa,
    _files: TlsFiles,
    _dir: tempfile::TempDir,
}

async fn mutual_tls_gateway(subscribers: &str) -> MutualTls {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let clients = TestCa::new("subscribers CA");
    let files = TlsFiles::new(&ca.server(), Some(&clients));
    let mut config = ServeArgs::for_tests();
    config.internal.internal_tls_cert = Some(files.cert());
    config.internal.internal_tls_key = Some(files.key());
    config.internal.internal_client_ca = Some(files.client_ca());
    if !subscribers.is_empty() {
        config.config_file = Some(write_config(dir.path(), subscribers));
    }
    MutualTls {
        gateway: Gateway::start_with(config).await,
        ca,
        clients,
        _files: files,
        _dir: dir,
    }
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_but_answers_their_health_checks() {
    let setup = mutual_tls_gateway(CERTIFICATE_SUBSCRIBERS).await;
    let channel = tls_channel(setup.gateway.grpc_addr, &setup.ca, None)
        .await
        .unwrap();
    let status = assert_code(
        subscribe(&channel, None, "").await,
        Code::Unauthenticated,
        "no client certificate",
    );
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );
    assert_code(
        ack(&channel, None, "billing", 0).await,
        Code::Unauthenticated,
        "ack without a certificate",
    );
    // A token is no substitute for the certificate.
    assert_code(
        subscribe(&channel, Some(BILLING_TOKEN), "").await,
        Code::Unauthenticated,
        "a token without a certificate",
    );
    assert_code(
        list_services(&channel, None).await,
        Code::Unauthenticated,
        "reflection without a certificate",
    );
    // Probes carry no certificate.
    assert_eq!(health(&channel, None).await, ServingStatus::Serving);

    // A certificate the client CA did not sign fails the handshake.
    let forged = TestCa::new("subscribers CA").client("billing");
    let refused = match tls_channel(setup.gateway.grpc_addr, &setup.ca, Some(&forged)).await {
        Ok(channel) => subscribe(&channel, None, "").await.map(|_| ()),
        Err(error) => Err(Status::unavailable(error.to_string())),
    };
    assert!(
        refused.is_err(),
        "a certificate from another CA was accepted"
    );
}

#[tokio::test]
async fn a_subscriber_certificate_may_use_its_consumers_only() {
    let setup = mutual_tls_gateway(CERTIFICATE_SUBSCRIBERS).await;
    let billing = setup.clients.client("billing");
    let channel = tls_channel(setup.gateway.grpc_addr, &setup.ca, Some(&billing))
        .await
        .unwrap();
    setup
        .gateway
        .notify(WEBHOOK, &onboarding_body("mtls", "ONBOARDING_FINISHED"))
        .await;

    let mut stream = subscribe(&channel, None, "billing-eu").await.unwrap();
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    assert_eq!(ack(&channel, None, "billing-eu", 1).await.unwrap(), 1);
    assert_eq!(ack(&channel, None, "billing", 1).await.unwrap(), 1);
    subscribe(&channel, None, "").await.unwrap();
    let services = list_services(&channel, None).await.unwrap();
    assert!(services.contains(&"incode.gateway.v1.EventStreamService".to_owned()));

    let status = assert_code(
        subscribe(&channel, None, "payments").await,
        Code::PermissionDenied,
        "billing subscribing as payments",
    );
    assert!(status.message().contains("payments"), "{status:?}");
    assert_code(
        ack(&channel, None, "payments", 1).await,
        Code::PermissionDenied,
        "billing acking for payments",
    );

    // The common name counts when the certificate has no DNS name.
    let payments = setup.clients.client_with_common_name("payments");
    let channel = tls_channel(setup.gateway.grpc_addr, &setup.ca, Some(&payments))
        .await
        .unwrap();
    assert_eq!(ack(&channel, None, "payments", 1).await.unwrap(), 1);
    assert_code(
        ack(&channel, None, "billing", 1).await,
        Code::PermissionDenied,
        "payments acking for billing",
    );
}

#[tokio::test]
async fn a_certificate_that_names_no_configured_subscriber_is_refused() {
    let setup = mutual_tls_gateway(CERTIFICATE_SUBSCRIBERS).await;
    let stranger = setup.clients.client("stranger");
    let channel = tls_channel(setup.gateway.grpc_addr, &setup.ca, Some(&stranger))
        .await
        .unwrap();
    let status = assert_code(
        subscribe(&channel, None, "").await,
        Code::PermissionDenied,
        "an unconfigured name",
    );
    assert!(
        status.message().contains("configured subscriber"),
        "{status:?}"
    );
    assert_code(
        ack(&channel, None, "stranger", 0).await,
        Code::PermissionDenied,
        "an unconfigured name acking",
    );
    assert_eq!(health(&channel, None).await, ServingStatus::Serving);
}

/// A connection with `client`, used for one call: `Err` when the handshake or the call fails.
async fn subscribe_with_certificate(setup: &MutualTls, client: &Leaf) -> Result<(), Status> {
    let channel = tls_channel(setup.gateway.grpc_addr, &setup.ca, Some(client))
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    subscribe(&channel, None, "").await.map(|_| ())
}

#[tokio::test]
async fn client_certificates_must_be_issued_for_client_authentication() {
    use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, CodeSigning, ServerAuth};
    for subscribers in [CERTIFICATE_SUBSCRIBERS, ""] {
        let setup = mutual_tls_gateway(subscribers).await;
        // Signed by the client CA and naming a configured subscriber, but without the extended
        // key usage extension (webpki alone takes that as "any purpose"), or with one that
        // lacks `clientAuth`: refused in the handshake.
        for (usages, what) in [
            (&[][..], "no extended key usage"),
            (&[ServerAuth][..], "serverAuth only"),
            (&[ServerAuth, CodeSigning][..], "serverAuth and codeSigning"),
        ] {
            let certificate = setup.clients.client_with_usages("billing", usages);
            let refused = subscribe_with_certificate(&setup, &certificate).await;
            assert!(
                refused.is_err(),
                "a certificate with {what} was accepted ({subscribers:?})"
            );
        }
        // `clientAuth` among others is enough.
        let certificate = setup
            .clients
            .client_with_usages("billing", &[ServerAuth, ClientAuth]);
        subscribe_with_certificate(&setup, &certificate)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn mutual_tls_without_subscribers_lets_every_certified_client_in() {
    let setup = mutual_tls_gateway("").await;
    let anyone = setup.clients.client("anyone");
    let channel = tls_channel(setup.gateway.grpc_addr, &setup.ca, Some(&anyone))
        .await
        .unwrap();
    subscribe(&channel, None, "whatever").await.unwrap();
    assert_eq!(ack(&channel, None, "whatever", 0).await.unwrap(), 0);
    let bare = tls_channel(setup.gateway.grpc_addr, &setup.ca, None)
        .await
        .unwrap();
    assert_code(
        subscribe(&bare, None, "").await,
        Code::Unauthenticated,
        "no certificate",
    );
}

// ---- Tokens ----

#[tokio::test]
async fn tokens_authenticate_subscribers_and_each_may_use_its_consumers_only() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(token_config(dir.path())).await;
    let channel = plain_channel(gateway.grpc_addr);

    for (token, context) in [(None, "no token"), (Some(WRONG_TOKEN), "a wrong token")] {
        let status = assert_code(
            subscribe(&channel, token, "").await,
            Code::Unauthenticated,
            context,
        );
        assert!(!status.message().contains(WRONG_TOKEN), "{status:?}");
        assert_code(
            ack(&channel, token, "billing", 0).await,
            Code::Unauthenticated,
            context,
        );
        // Probes need no token, and a wrong one does not hurt them.
        assert_eq!(health(&channel, token).await, ServingStatus::Serving);
    }
    assert_code(
        subscribe(&channel, Some(&digest(PAYMENTS_TOKEN)), "").await,
        Code::Unauthenticated,
        "the digest itself is not a token",
    );

    let mut stream = subscribe(&channel, Some(BILLING_TOKEN), "").await.unwrap();
    let mut durable = subscribe(&channel, Some(BILLING_TOKEN), "billing")
        .await
        .unwrap();
    assert_eq!(expect_caught_up(&mut durable).await, 0);
    gateway
        .notify(WEBHOOK, &onboarding_body("tokens", "ONBOARDING_FINISHED"))
        .await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    assert_eq!(next_event(&mut durable).await.sequence, 1);
    assert_eq!(
        ack(&channel, Some(BILLING_TOKEN), "billing", 1)
            .await
            .unwrap(),
        1
    );

    // The other subscriber's consumer is not billing's.
    let status = assert_code(
        ack(&channel, Some(BILLING_TOKEN), "payments", 1).await,
        Code::PermissionDenied,
        "billing acking for payments",
    );
    assert!(status.message().contains("`payments`"), "{status:?}");
    assert_code(
        subscribe(&channel, Some(BILLING_TOKEN), "payments").await,
        Code::PermissionDenied,
        "billing subscribing as payments",
    );
    // payments' token, configured as a digest, works for payments.
    assert_eq!(
        ack(&channel, Some(PAYMENTS_TOKEN), "payments", 1)
            .await
            .unwrap(),
        1
    );
    // The scraper may look, not read.
    assert_code(
        subscribe(&channel, Some(SCRAPER_TOKEN), "").await,
        Code::PermissionDenied,
        "the scraper reading the stream",
    );
}

/// What the binary logs and exports as spans: the subscriber's name on the rpc spans and on the
/// subscription and refusal lines, never a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_logs_name_the_subscriber_and_never_a_token() {
    let collector = Collector::default();
    let endpoint = collector.start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &subscribers_toml());
    let config = config.to_string_lossy().into_owned();
    let process = GatewayProcess::spawn_with(
        dir.path(),
        &["--allow-unauthenticated-webhooks", "--config", &config],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    )
    .await;
    let channel = Channel::from_shared(process.grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traced = |token: &str, consumer: &str| {
        let mut request = with_token(
            AckRequest {
                consumer: consumer.to_owned(),
                sequence: 0,
                ..Default::default()
            },
            Some(token),
        );
        request.metadata_mut().insert(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-01")
                .parse()
                .unwrap(),
        );
        request
    };
    let mut client = EventStreamServiceClient::new(channel.clone());
    client.ack(traced(BILLING_TOKEN, "billing")).await.unwrap();
    let status = client
        .ack(traced(BILLING_TOKEN, "payments"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let _ = client.ack(traced(WRONG_TOKEN, "billing")).await;
    let _durable = subscribe(&channel, Some(PAYMENTS_TOKEN), "payments")
        .await
        .unwrap();

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&trace_id[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let spans = collector
        .wait_for(&trace_bytes, |spans| {
            spans
                .iter()
                .filter(|s| s.name.ends_with("EventStreamService/Ack"))
                .count()
                >= 2
        })
        .await;
    for span in spans.iter().filter(|s| s.name.ends_with("/Ack")) {
        assert_eq!(
            attribute(span, "incode_gateway.subscriber"),
            Some(&AnyValue::StringValue("billing".into())),
            "{span:?}"
        );
    }

    // The subscription line and the refusals name the subscriber.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let lines = loop {
        let lines = process.output.lock().unwrap().clone();
        if lines.iter().any(|l| l.contains("subscription started"))
            && lines
                .iter()
                .filter(|l| l.contains("refused a call"))
                .count()
                >= 2
        {
            break lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "missing log lines:\n{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let started = lines
        .iter()
        .find(|l| l.contains("subscription started"))
        .unwrap();
    let started: serde_json::Value = serde_json::from_str(started).unwrap();
    assert_eq!(started["subscriber"], "payments", "{started}");
    assert_eq!(started["consumer"], "payments", "{started}");
    let refusals: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("refused a call"))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        refusals
            .iter()
            .any(|r| r["reason"] == "consumer_not_allowed"
                && r["subscriber"] == "billing"
                && r["peer"]
                    .as_str()
                    .is_some_and(|peer| peer.starts_with("127.0.0.1:"))),
        "{refusals:?}"
    );
    assert!(
        refusals.iter().any(|r| r["reason"] == "invalid_token"),
        "{refusals:?}"
    );

    let all_spans = collector.spans.lock().unwrap().clone();
    let text = format!("{}\n{all_spans:?}", lines.join("\n"));
    for secret in [BILLING_TOKEN, PAYMENTS_TOKEN, WRONG_TOKEN] {
        assert!(!text.contains(secret), "{secret} shows in logs or spans");
    }
}

#[tokio::test]
async fn metrics_and_reflection_need_an_identity_and_metrics_name_it() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(token_config(dir.path())).await;
    let channel = plain_channel(gateway.grpc_addr);

    let refused = metrics(&gateway, None).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().contains_key("www-authenticate"));
    assert_eq!(
        metrics(&gateway, Some(WRONG_TOKEN)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_code(
        list_services(&channel, None).await,
        Code::Unauthenticated,
        "reflection without a token",
    );
    let services = list_services(&channel, Some(SCRAPER_TOKEN)).await.unwrap();
    assert!(
        services.contains(&"grpc.health.v1.Health".to_owned()),
        "{services:?}"
    );

    let _stream = subscribe(&channel, Some(BILLING_TOKEN), "billing-eu")
        .await
        .unwrap();
    ack(&channel, Some(BILLING_TOKEN), "billing-eu", 0)
        .await
        .unwrap();
    let _ = ack(&channel, Some(BILLING_TOKEN), "payments", 0).await;
    let _ = subscribe(&channel, None, "").await;

    let answer = metrics(&gateway, Some(SCRAPER_TOKEN)).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let text = answer.text().await.unwrap();
    for (name, labels) in [
        (
            "incode_gateway_subscriber_lag",
            &[("subscriber", "billing"), ("consumer", "billing-eu")][..],
        ),
        (
            "incode_gateway_acks_total",
            &[("subscriber", "billing")][..],
        ),
        (
            "incode_gateway_internal_refusals_total",
            &[
                ("reason", "consumer_not_allowed"),
                ("subscriber", "billing"),
            ][..],
        ),
        (
            "incode_gateway_internal_refusals_total",
            &[
                ("reason", "credentials_required"),
                ("subscriber", "anonymous"),
            ][..],
        ),
    ] {
        let value = if name == "incode_gateway_subscriber_lag" {
            0.0
        } else {
            1.0
        };
        assert!(
            has_sample(&text, name, labels, value),
            "{name} {labels:?} in:\n{text}"
        );
    }
    assert!(!text.contains(BILLING_TOKEN) && !text.contains(SCRAPER_TOKEN));
}

#[tokio::test]
async fn anonymous_reads_open_the_plain_stream_but_not_consumers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = token_config(dir.path());
    config.internal.allow_anonymous_reads = true;
    let gateway = Gateway::start_with(config).await;
    let channel = plain_channel(gateway.grpc_addr);

    let mut stream = subscribe(&channel, None, "").await.unwrap();
    gateway
        .notify(
            WEBHOOK,
            &onboarding_body("anonymous", "ONBOARDING_FINISHED"),
        )
        .await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    list_services(&channel, None).await.unwrap();
    assert_eq!(metrics(&gateway, None).await.status(), StatusCode::OK);
    assert_code(
        subscribe(&channel, None, "billing").await,
        Code::Unauthenticated,
        "an anonymous durable consumer",
    );
    assert_code(
        ack(&channel, None, "billing", 1).await,
        Code::Unauthenticated,
        "an anonymous ack",
    );
    assert_code(
        subscribe(&channel, Some(WRONG_TOKEN), "").await,
        Code::Unauthenticated,
        "a wrong token is still wrong",
    );
}

#[tokio::test]
async fn a_certificate_and_a_token_must_name_the_same_subscriber() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let clients = TestCa::new("subscribers CA");
    let files = TlsFiles::new(&ca.server(), Some(&clients));
    let mut config = token_config(dir.path());
    config.internal.internal_tls_cert = Some(files.cert());
    config.internal.internal_tls_key = Some(files.key());
    config.internal.internal_client_ca = Some(files.client_ca());
    let gateway = Gateway::start_with(config).await;
    let billing = clients.client("billing");
    let channel = tls_channel(gateway.grpc_addr, &ca, Some(&billing))
        .await
        .unwrap();
    subscribe(&channel, Some(BILLING_TOKEN), "billing")
        .await
        .unwrap();
    subscribe(&channel, None, "billing").await.unwrap();
    assert_code(
        subscribe(&channel, Some(PAYMENTS_TOKEN), "payments").await,
        Code::Unauthenticated,
        "billing's certificate with payments' token",
    );
}

// ---- Certificate rotation ----

/// The certificate the listener presents to a new connection.
async fn presented_certificate(addr: SocketAddr, cas: &[&TestCa]) -> CertificateDer<'static> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap())
            .unwrap();
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Waits (at most [`PATIENCE`]) until new connections get `expected`.
async fn wait_for_certificate(addr: SocketAddr, cas: &[&TestCa], expected: &CertificateDer<'_>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if presented_certificate(addr, cas).await == *expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "new connections still get the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn rotated_certificate_files_are_served_to_new_connections_while_streams_go_on() {
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let old = old_ca.server();
    let files = TlsFiles::new(&old, None);
    let mut config = ServeArgs::for_tests();
    config.internal.internal_tls_cert = Some(files.cert());
    config.internal.internal_tls_key = Some(files.key());
    config.internal.internal_tls_reload_interval = Duration::from_millis(50);
    let gateway = Gateway::start_with(config).await;

    let old_channel = tls_channel(gateway.grpc_addr, &old_ca, None).await.unwrap();
    let mut stream = subscribe(&old_channel, None, "").await.unwrap();
    assert_eq!(
        presented_certificate(gateway.grpc_addr, &[&old_ca]).await,
        old.der
    );

    let new = new_ca.server();
    files.write_server(&new);
    wait_for_certificate(gateway.grpc_addr, &[&old_ca, &new_ca], &new.der).await;

    // The stream opened before the rotation goes on.
    gateway
        .notify(WEBHOOK, &onboarding_body("rotated", "ONBOARDING_FINISHED"))
        .await;
    assert_eq!(next_event(&mut stream).await.sequence, 1);
    // New clients need the new CA.
    let new_channel = tls_channel(gateway.grpc_addr, &new_ca, None).await.unwrap();
    let mut fresh = subscribe(&new_channel, None, "").await.unwrap();
    gateway
        .notify(
            WEBHOOK,
            &onboarding_body("rotated-2", "ONBOARDING_FINISHED"),
        )
        .await;
    assert_eq!(next_event(&mut fresh).await.sequence, 2);
    assert_eq!(next_event(&mut stream).await.sequence, 2);
}

#[tokio::test]
async fn a_broken_rotation_keeps_the_previous_certificate() {
    let ca = TestCa::new("CA");
    let first = ca.server();
    let files = TlsFiles::new(&first, None);
    let tls = ReloadingTls::load(ReloadFiles {
        cert: files.cert(),
        key: files.key(),
        client_ca: None,
    })
    .unwrap();
    assert!(tls.reload(false).unwrap().is_none(), "nothing changed");

    // Half a rotation: the new certificate, the old key.
    let second = ca.server();
    std::fs::write(files.cert(), &second.cert_pem).unwrap();
    let error = tls.reload(false).unwrap_err();
    assert!(error.to_string().contains("not a usable pair"), "{error}");
    assert!(tls.reload(false).unwrap().is_none(), "reported once");
    std::fs::write(files.cert(), "garbage").unwrap();
    assert!(tls.reload(false).is_err());

    // Still the first certificate for new connections.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.acceptor();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let _ = acceptor.accept(tcp).await;
    });
    assert_eq!(presented_certificate(addr, &[&ca]).await, first.der);

    files.write_server(&second);
    let summary = tls.reload(false).unwrap().expect("reloaded");
    assert_eq!(summary.names, ["localhost"], "DNS names only");
}

/// A missing file is a failure like a broken one: reported once, not at every check, and its
/// end is reported too, even when the files come back as they were.
#[tokio::test]
async fn a_missing_tls_file_is_reported_once_and_so_is_its_return() {
    let ca = TestCa::new("CA");
    let server = ca.server();
    let files = TlsFiles::new(&server, None);
    let tls = ReloadingTls::load(ReloadFiles {
        cert: files.cert(),
        key: files.key(),
        client_ca: None,
    })
    .unwrap();

    let moved_key = files.key().with_extension("key.moved");
    let moved_cert = files.cert().with_extension("crt.moved");
    std::fs::rename(files.key(), &moved_key).unwrap();
    let error = tls.reload(false).unwrap_err();
    assert!(error.to_string().contains("cannot read"), "{error}");
    for _ in 0..3 {
        assert!(tls.reload(false).unwrap().is_none(), "reported once");
    }
    // Another failure is news.
    std::fs::rename(files.cert(), &moved_cert).unwrap();
    assert!(tls.reload(false).is_err(), "a second missing file");
    assert!(tls.reload(false).unwrap().is_none());
    // A SIGHUP asks for an answer every time.
    assert!(tls.reload(true).is_err());

    std::fs::rename(&moved_cert, files.cert()).unwrap();
    std::fs::rename(&moved_key, files.key()).unwrap();
    let summary = tls
        .reload(false)
        .unwrap()
        .expect("loaded again, and so logged");
    assert_eq!(summary.names, ["localhost"]);
    assert!(tls.reload(false).unwrap().is_none(), "then nothing new");
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let data_dir = tempfile::tempdir().unwrap();
    let old_ca = TestCa::new("old CA");
    let new_ca = TestCa::new("new CA");
    let files = TlsFiles::new(&old_ca.server(), None);
    let cert = files.cert().to_string_lossy().into_owned();
    let key = files.key().to_string_lossy().into_owned();
    let process = GatewayProcess::spawn_with(
        data_dir.path(),
        &[
            "--allow-unauthenticated-webhooks",
            "--internal-tls-cert",
            &cert,
            "--internal-tls-key",
            &key,
            // Only the signal can reload within this test.
            "--internal-tls-reload-interval",
            "1h",
        ],
        &[],
    )
    .await;
    let addr: SocketAddr = process
        .grpc_url
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let channel = tls_channel(addr, &old_ca, None).await.unwrap();
    let mut stream = subscribe(&channel, None, "").await.unwrap();

    let new = new_ca.server();
    files.write_server(&new);
    send_signal(&process.child, "HUP");
    wait_for_certificate(addr, &[&old_ca, &new_ca], &new.der).await;

    let response = http_client()
        .post(format!("{}{WEBHOOK}", process.base_url))
        .header("content-type", "application/json")
        .body(onboarding_body("after-sighup", "ONBOARDING_FINISHED"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        next_event(&mut stream).await.sequence,
        1,
        "the stream survived"
    );
    let output = process.output.lock().unwrap().join("\n");
    assert!(
        output.contains("internal listener TLS reloaded"),
        "{output}"
    );
}

// ---- Transport limits ----

#[tokio::test]
async fn transport_limits_are_applied() {
    let mut config = ServeArgs::for_tests();
    config.internal.internal_max_concurrent_streams = 7;
    config.internal.internal_max_message_bytes = 2048;
    let gateway = Gateway::start_with(config).await;

    // The limit is announced in the server's HTTP/2 SETTINGS.
    let tcp = TcpStream::connect(gateway.grpc_addr).await.unwrap();
    let (mut client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let request = http::Request::get(format!("http://{}/metrics", gateway.grpc_addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::select! {
        response = response => response.unwrap(),
        result = &mut connection => panic!("the connection ended first: {result:?}"),
    };
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(connection.max_concurrent_send_streams(), 7);

    // A request larger than the limit is refused; one below it is served.
    let channel = plain_channel(gateway.grpc_addr);
    let mut client = EventStreamServiceClient::new(channel);
    let huge = SubscribeRequest {
        filter: Some(EventFilter {
            interview_ids: vec!["x".repeat(3000)],
            ..EventFilter::default()
        }),
        ..SubscribeRequest::default()
    };
    let status = client.subscribe(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("2048"), "{status:?}");
    client.subscribe(SubscribeRequest::default()).await.unwrap();
}

#[test]
fn transport_flags_parse_and_zero_turns_keepalives_off() {
    use incode_gateway::config::Cli;
    let config = Cli::try_parse_args_only([
        "incode-gateway",
        "--internal-http2-keepalive-interval",
        "0s",
        "--internal-tcp-keepalive",
        "0s",
    ])
    .unwrap()
    .serve;
    let limits = config.grpc_settings(false).limits;
    assert_eq!(limits.http2_keepalive_interval, None);
    assert_eq!(limits.tcp_keepalive, None);
    let defaults = Cli::try_parse_args_only(["incode-gateway"])
        .unwrap()
        .serve
        .grpc_settings(false);
    assert_eq!(
        defaults.limits.http2_keepalive_interval,
        Some(Duration::from_secs(30))
    );
    assert_eq!(defaults.limits.tcp_keepalive, Some(Duration::from_secs(60)));
    assert_eq!(defaults.limits.max_message_bytes, 1024 * 1024);
    for bad in [
        &["--internal-max-concurrent-streams", "0"][..],
        &["--internal-max-message-bytes", "10"],
        &["--internal-http2-keepalive-timeout", "0s"],
        &["--internal-tls-reload-interval", "0s"],
    ] {
        let error =
            Cli::try_parse_args_only(std::iter::once("incode-gateway").chain(bad.iter().copied()))
                .unwrap_err()
                .to_string();
        assert!(error.contains(bad[0]), "{error}");
    }
}

// ---- The tail tool ----

fn tail(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = binary_async();
    command
        .arg("tail")
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

async fn run_tail(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    tokio::time::timeout(PATIENCE, tail(args, env).output())
        .await
        .expect("tail did not exit in time")
        .unwrap()
}

#[tokio::test]
async fn tail_connects_with_tls_a_client_certificate_and_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let clients = TestCa::new("subscribers CA");
    let files = TlsFiles::new(&ca.server(), Some(&clients));
    let mut config = token_config(dir.path());
    config.internal.internal_tls_cert = Some(files.cert());
    config.internal.internal_tls_key = Some(files.key());
    config.internal.internal_client_ca = Some(files.client_ca());
    let gateway = Gateway::start_with(config).await;
    gateway
        .notify(WEBHOOK, &onboarding_body("tail-tls", "ONBOARDING_FINISHED"))
        .await;

    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let billing = clients.client("billing");
    let ca_file = write("ca.pem", &ca.pem);
    let cert_file = write("billing.pem", &billing.cert_pem);
    let key_file = write("billing.key", &billing.key_pem);
    let addr = format!("https://{}", gateway.grpc_addr);
    let args = [
        "--addr",
        &addr,
        "--ca",
        &ca_file,
        "--cert",
        &cert_file,
        "--key",
        &key_file,
        "--consumer",
        "billing-eu",
        "--max-events",
        "1",
    ];

    let output = run_tail(&args, &[("INCODE_GATEWAY_TAIL_TOKEN", BILLING_TOKEN)]).await;
    assert!(output.status.success(), "{output:?}");
    let event: serde_json::Value =
        serde_json::from_slice(output.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(
        event["onboardingStatusChanged"]["interviewId"], "tail-tls",
        "{event}"
    );

    // A wrong token: a clear error that does not repeat it.
    let output = run_tail(&args, &[("INCODE_GATEWAY_TAIL_TOKEN", WRONG_TOKEN)]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
    assert!(!stderr.contains(WRONG_TOKEN), "{stderr}");

    // Another subscriber's consumer.
    let mut others = args.to_vec();
    others[9] = "payments";
    let output = run_tail(&others, &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("PermissionDenied"), "{stderr}");

    // Without the client certificate.
    let output = run_tail(&args[..4], &[("INCODE_GATEWAY_TAIL_TOKEN", BILLING_TOKEN)]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("client certificate"), "{stderr}");

    // TLS options need an https:// address; --cert needs --key.
    let plain = format!("http://{}", gateway.grpc_addr);
    let output = run_tail(&["--addr", &plain, "--ca", &ca_file], &[]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("https://"), "{stderr}");
    let output = run_tail(&["--addr", &addr, "--cert", &cert_file], &[]).await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--key"),
        "{output:?}"
    );
}

#[tokio::test]
async fn tail_authenticates_with_a_token_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("gateway CA");
    let files = TlsFiles::new(&ca.server(), None);
    let mut config = token_config(dir.path());
    config.internal.internal_tls_cert = Some(files.cert());
    config.internal.internal_tls_key = Some(files.key());
    let gateway = Gateway::start_with(config).await;
    gateway
        .notify(
            WEBHOOK,
            &onboarding_body("tail-token", "ONBOARDING_FINISHED"),
        )
        .await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let ca_file = ca_file.to_string_lossy().into_owned();
    let addr = format!("https://localhost:{}", gateway.grpc_addr.port());
    let args = [
        "--addr",
        &addr,
        "--ca",
        &ca_file,
        "--from",
        "earliest",
        "--max-events",
        "1",
    ];
    let mut with_token = args.to_vec();
    with_token.extend(["--token", PAYMENTS_TOKEN]);
    let output = run_tail(&with_token, &[]).await;
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("tail-token"));

    let output = run_tail(&args, &[]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");
}
