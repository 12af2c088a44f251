//! The NATS JetStream backend's arguments (`--storage nats`), and its settings.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{ServeArgs, parse_positive_duration};
use crate::{
    auth::Secret,
    log::nats::{NatsAuth, NatsSettings, NatsTls},
};

/// Where the NATS backend finds its servers and stream, and how it authenticates. Used only with
/// `--storage nats`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "NATS JetStream (--storage nats)")]
pub struct NatsArgs {
    /// NATS server URLs, comma-separated (`nats://host:4222`, or `tls://` for TLS); the client
    /// fails over between them.
    #[arg(
        long = "nats-url",
        env = "INCODE_GATEWAY_NATS_URL",
        value_name = "URL,...",
        value_delimiter = ',',
        default_value = "nats://127.0.0.1:4222"
    )]
    pub urls: Vec<String>,

    /// The JetStream stream of events (created if missing); its subject is `<stream>.events`,
    /// and the state bucket beside it `<stream>_STATE`.
    #[arg(
        long = "nats-stream",
        env = "INCODE_GATEWAY_NATS_STREAM",
        default_value = "INCODE_EVENTS"
    )]
    pub stream: String,

    /// Replicas of the stream: 1, or 3 in a three-node cluster.
    #[arg(long = "nats-replicas", env = "INCODE_GATEWAY_NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,

    /// How long a webhook waits for JetStream to store its event (retrying timeouts and leader
    /// elections with the same message id) before it is answered 503.
    #[arg(long = "nats-publish-timeout", env = "INCODE_GATEWAY_NATS_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub publish_timeout: Duration,

    /// How long start-up waits for NATS before giving up.
    #[arg(long = "nats-connect-timeout", env = "INCODE_GATEWAY_NATS_CONNECT_TIMEOUT", default_value = "30s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,

    /// A NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(
        long = "nats-credentials",
        env = "INCODE_GATEWAY_NATS_CREDENTIALS",
        value_name = "FILE"
    )]
    pub credentials: Option<PathBuf>,

    /// A NATS user name, with --nats-password.
    #[arg(long = "nats-user", env = "INCODE_GATEWAY_NATS_USER")]
    pub user: Option<String>,

    /// The NATS user's password. Prefer the environment variable: flags show in the process
    /// list.
    #[arg(
        long = "nats-password",
        env = "INCODE_GATEWAY_NATS_PASSWORD",
        hide_env_values = true,
        value_name = "PASSWORD"
    )]
    pub password: Option<Secret>,

    /// A NATS authentication token. Prefer the environment variable.
    #[arg(
        long = "nats-token",
        env = "INCODE_GATEWAY_NATS_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,

    /// CA certificates (PEM) that sign the NATS servers' certificates; TLS is then required.
    #[arg(
        long = "nats-tls-ca",
        env = "INCODE_GATEWAY_NATS_TLS_CA",
        value_name = "FILE"
    )]
    pub tls_ca: Option<PathBuf>,

    /// A client certificate (PEM) for NATS servers that verify clients, with --nats-tls-key.
    #[arg(
        long = "nats-tls-cert",
        env = "INCODE_GATEWAY_NATS_TLS_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The key (PEM) of --nats-tls-cert.
    #[arg(
        long = "nats-tls-key",
        env = "INCODE_GATEWAY_NATS_TLS_KEY",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// Send NATS credentials in plain text to servers that are not on loopback, for a network
    /// that encrypts the traffic itself (a service mesh, a VPN). Without it, `serve` refuses
    /// such a setup; plain text without credentials starts with a warning, and plain text to
    /// loopback servers is accepted.
    #[arg(
        long = "nats-allow-plaintext",
        env = "INCODE_GATEWAY_NATS_ALLOW_PLAINTEXT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_plaintext: bool,
}

impl ServeArgs {
    /// Settings of the NATS log.
    pub fn nats_settings(&self) -> NatsSettings {
        let nats = &self.nats;
        let mut settings = NatsSettings::new(nats.urls.clone(), nats.stream.clone());
        settings.replicas = usize::from(nats.replicas);
        settings.dedup_window = self.dedup_window;
        settings.retention = self.retention;
        settings.max_events = self.max_events;
        settings.publish_timeout = nats.publish_timeout;
        settings.connect_timeout = nats.connect_timeout;
        settings.auth = NatsAuth {
            credentials_file: nats.credentials.clone(),
            user: nats.user.clone(),
            password: nats.password.clone(),
            token: nats.token.clone(),
        };
        settings.tls = NatsTls {
            ca_file: nats.tls_ca.clone(),
            cert_file: nats.tls_cert.clone(),
            key_file: nats.tls_key.clone(),
        };
        settings.allow_plaintext = nats.allow_plaintext;
        settings
    }
}
