//! `serve`'s arguments, and the settings of the features they alone describe: the event log's
//! storage, consumer groups, the quota on durable consumers and the public router.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{Args, ValueEnum, builder::PossibleValue};

use super::{
    AuthArgs, ClientAuthLimitArgs, InternalListenerArgs, NatsArgs, PublicListenerArgs, file,
    load::LoadSource, parse_duration, parse_positive_duration,
};
use crate::{
    http::HttpSettings,
    log::{embedded::EmbeddedSettings, memory::MemorySettings},
    subscriptions::{QuotaSettings, groups::GroupSettings},
    telemetry::LogFormat,
};

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the public listener (Incode's webhooks and health).
    #[arg(
        long,
        env = "INCODE_GATEWAY_PUBLIC_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub public_addr: SocketAddr,

    /// Address of the internal listener (gRPC subscriptions, gRPC health and reflection,
    /// metrics). Loopback by default: on any other address `serve` refuses to start unless
    /// subscribers are authenticated (mutual TLS or tokens) or
    /// --allow-unauthenticated-subscribers is given.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_ADDR",
        default_value = "127.0.0.1:50051"
    )]
    pub internal_addr: SocketAddr,

    /// Where events are stored: `embedded` (durable, on local disk under --data-dir), `nats`
    /// (a replicated NATS JetStream stream shared by several gateway replicas) or `memory` (lost
    /// on restart; for trying things out).
    #[arg(long, env = "INCODE_GATEWAY_STORAGE", value_enum, default_value_t = StorageKind::Embedded)]
    pub storage: StorageKind,

    /// Directory of the embedded event log; created on first start, private to the gateway's
    /// user (mode 0700). Refused when other users can write it.
    #[arg(long, env = "INCODE_GATEWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Events older than this are removed from the log (e.g. `7d`, `12h`).
    #[arg(long, env = "INCODE_GATEWAY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Keep at most this many events, removing the oldest first; unset for no limit.
    #[arg(long, env = "INCODE_GATEWAY_MAX_EVENTS")]
    pub max_events: Option<u64>,

    /// How often the embedded log applies retention and forgets expired deduplication keys.
    #[arg(long, env = "INCODE_GATEWAY_MAINTENANCE_INTERVAL", default_value = "1m", value_parser = parse_positive_duration)]
    pub maintenance_interval: Duration,

    /// Most durable consumers and consumer groups, the two counted together; new names beyond
    /// it are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "INCODE_GATEWAY_MAX_CONSUMERS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_consumers: u32,

    /// Most durable consumers and consumer groups (together) that one subscriber identity may
    /// create, so that one subscriber cannot use up --max-consumers for all; new names beyond it
    /// are refused with RESOURCE_EXHAUSTED. Callers without credentials are bounded by
    /// --max-consumers only.
    #[arg(long, env = "INCODE_GATEWAY_MAX_CONSUMERS_PER_SUBSCRIBER", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_consumers_per_subscriber: u32,

    /// A consumer group member that has not renewed itself for this long (its gateway died or
    /// lost the storage) is gone: its partitions move to the other members. Members renew five
    /// times per timeout.
    #[arg(long, env = "INCODE_GATEWAY_GROUP_SESSION_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub group_session_timeout: Duration,

    /// Most appends committed together in one transaction and fsync (group commit); `1`
    /// commits every append on its own.
    #[arg(long, env = "INCODE_GATEWAY_MAX_COMMIT_BATCH", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_commit_batch: u32,

    /// How long an identical repeat of a notification is recognised as Incode's retry and not
    /// stored again (e.g. `24h`, `30m`).
    #[arg(long, env = "INCODE_GATEWAY_DEDUP_WINDOW", default_value = "24h", value_parser = parse_duration)]
    pub dedup_window: Duration,

    /// Largest accepted webhook body, in bytes.
    #[arg(long, env = "INCODE_GATEWAY_MAX_BODY_BYTES", default_value_t = 64 * 1024)]
    pub max_body_bytes: usize,

    /// How long a subscription stream may stay silent before a heartbeat is sent.
    #[arg(long, env = "INCODE_GATEWAY_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_positive_duration)]
    pub heartbeat_interval: Duration,

    /// On SIGINT/SIGTERM, how long to wait for in-flight requests and streams to finish; requests
    /// still in flight then are answered `503` before the gateway exits.
    #[arg(long, env = "INCODE_GATEWAY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log line format.
    #[arg(long, env = "INCODE_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// A TOML file with a key for every setting (incode-gateway.example.toml lists them all),
    /// OAuth clients (`[[oauth.clients]]`) and the internal listener's subscribers
    /// (`[[subscribers]]`). Flags and environment variables win over what it says.
    #[arg(long = "config", env = "INCODE_GATEWAY_CONFIG", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// The parts of the config file that are not flags (OAuth clients, subscribers), once
    /// [`Cli::load_from`] read it.
    #[arg(skip)]
    pub file: Option<Arc<file::FileSections>>,

    /// The command line and environment [`Cli::load_from`] read this from.
    #[arg(skip)]
    pub(super) source: Option<Arc<LoadSource>>,

    /// How callers of the public listener authenticate.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// Timeouts and limits of the public listener, and whom it trusts.
    #[command(flatten)]
    pub public_listener: PublicListenerArgs,

    /// Limits on client authentication at the token endpoint.
    #[command(flatten)]
    pub client_auth_limits: ClientAuthLimitArgs,
    /// The NATS JetStream backend (`--storage nats`).
    #[command(flatten)]
    pub nats: NatsArgs,

    /// TLS, subscriber authentication and transport limits of the internal listener.
    #[command(flatten)]
    pub internal: InternalListenerArgs,
}

/// Event log backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// Durable, in a redb file under `--data-dir`.
    Embedded,
    /// Durable and replicated, in a NATS JetStream stream shared by several gateways.
    Nats,
    /// In memory; lost on restart.
    Memory,
}

impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Text, Self::Json]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Self::Text => PossibleValue::new("text").help("Human-readable lines"),
            Self::Json => PossibleValue::new("json").help("One JSON object per line"),
        })
    }
}

impl ServeArgs {
    /// Settings of the embedded log.
    pub fn embedded_settings(&self) -> EmbeddedSettings {
        let mut settings = EmbeddedSettings::new(self.dedup_window);
        settings.retention = self.retention;
        settings.max_events = self.max_events;
        settings.maintenance_interval = self.maintenance_interval;
        settings.max_commit_batch = usize::try_from(self.max_commit_batch).unwrap_or(usize::MAX);
        settings
    }

    /// Settings of the memory log.
    pub fn memory_settings(&self) -> MemorySettings {
        MemorySettings {
            dedup_window: self.dedup_window,
            retention: self.retention,
            max_events: self.max_events,
        }
    }

    /// How consumer groups behave.
    pub fn group_settings(&self) -> GroupSettings {
        GroupSettings {
            session_timeout: self.group_session_timeout,
            ..GroupSettings::default()
        }
    }

    /// The limits on durable consumers and consumer groups.
    pub fn quota_settings(&self) -> QuotaSettings {
        QuotaSettings {
            max_total: usize::try_from(self.max_consumers).unwrap_or(usize::MAX),
            max_per_subscriber: usize::try_from(self.max_consumers_per_subscriber)
                .unwrap_or(usize::MAX),
        }
    }

    /// Settings of the public router.
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            max_body_bytes: self.max_body_bytes,
            trust_incoming_trace_context: self.public_listener.trust_incoming_trace_context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Cli, LoadError};

    fn parse(args: &[&str]) -> Result<Cli, LoadError> {
        Cli::try_parse_args_only(std::iter::once("incode-gateway").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_documentation() {
        let config = parse(&[]).unwrap().serve;
        assert_eq!(config.public_addr, SocketAddr::from(([0, 0, 0, 0], 8080)));
        assert_eq!(
            config.internal_addr,
            SocketAddr::from(([127, 0, 0, 1], 50051))
        );
        assert_eq!(config.internal.internal_tls_cert, None);
        assert!(!config.internal.allow_unauthenticated_subscribers);
        assert!(!config.internal.allow_anonymous_reads);
        assert_eq!(config.internal.internal_max_concurrent_streams, 256);
        assert_eq!(config.internal.internal_max_message_bytes, 1024 * 1024);
        assert_eq!(config.storage, StorageKind::Embedded);
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.dedup_window, Duration::from_secs(24 * 3600));
        assert_eq!(config.retention, Duration::from_secs(7 * 24 * 3600));
        assert_eq!(config.max_body_bytes, 64 * 1024);
    }

    #[test]
    fn intervals_must_not_be_zero() {
        for flag in ["--heartbeat-interval", "--maintenance-interval"] {
            let error = parse(&[flag, "0s"]).unwrap_err();
            assert!(error.to_string().contains("longer than zero"), "{error}");
        }
        let parsed = parse(&["--heartbeat-interval", "250ms"]);
        assert_eq!(
            parsed.unwrap().serve.heartbeat_interval,
            Duration::from_millis(250)
        );
    }
}
