//! The gateway's configuration: one typed struct, read from command-line flags and their
//! `INCODE_GATEWAY_*` environment equivalents. `incode-gateway serve --help` lists every key with
//! its default; this file is the one place they are defined. The tools' options (`tail`,
//! `simulate`) are defined beside the tools, in [`crate::tools`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "incode-gateway",
    version,
    about = "Receives Incode webhooks, stores them durably and streams them to internal services over gRPC",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, accepted without the subcommand too.
    #[command(flatten)]
    pub serve: Config,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve(Config),
    /// Subscribe to a gateway and print its events as JSON lines.
    Tail(crate::tools::tail::TailArgs),
    /// Play Incode: obtain a token and post notifications to a gateway, with Incode's retry.
    Simulate(crate::tools::simulate::SimulateArgs),
}

impl Cli {
    /// What to run: `serve` with the top-level options when no subcommand is given.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address of the public listener (Incode's webhooks and health).
    #[arg(
        long,
        env = "INCODE_GATEWAY_PUBLIC_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub public_addr: SocketAddr,

    /// Address of the internal listener (gRPC subscriptions, gRPC health and reflection).
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_ADDR",
        default_value = "0.0.0.0:50051"
    )]
    pub internal_addr: SocketAddr,

    /// Where events are stored: `embedded` (durable, on local disk under --data-dir) or
    /// `memory` (lost on restart; for trying things out).
    #[arg(long, env = "INCODE_GATEWAY_STORAGE", value_enum, default_value_t = StorageKind::Embedded)]
    pub storage: StorageKind,

    /// Directory of the embedded event log; created on first start.
    #[arg(long, env = "INCODE_GATEWAY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Events older than this are removed from the log (e.g. `7d`, `12h`).
    #[arg(long, env = "INCODE_GATEWAY_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,

    /// Keep at most this many events, removing the oldest first; unset for no limit.
    #[arg(long, env = "INCODE_GATEWAY_MAX_EVENTS")]
    pub max_events: Option<u64>,

    /// How often retention and the expiry of deduplication keys run.
    #[arg(long, env = "INCODE_GATEWAY_MAINTENANCE_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub maintenance_interval: Duration,

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
    #[arg(long, env = "INCODE_GATEWAY_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,

    /// On SIGINT/SIGTERM, how long to wait for in-flight requests and streams to finish before
    /// exiting anyway.
    #[arg(long, env = "INCODE_GATEWAY_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Log line format.
    #[arg(long, env = "INCODE_GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Event log backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// Durable, in a redb file under `--data-dir`.
    Embedded,
    /// In memory; lost on restart.
    Memory,
}

/// Log line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

impl Config {
    /// The defaults, as `serve` with no flags would have them, with both listeners on ephemeral
    /// loopback ports and no data directory: set `data_dir` (a temporary directory) before
    /// running with it. Meant for tests and embedding.
    pub fn for_tests() -> Self {
        let mut config = Cli::parse_from(["incode-gateway"]).serve;
        config.public_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.internal_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.storage = StorageKind::Embedded;
        config.data_dir = PathBuf::new();
        config
    }

    /// Options of the embedded log.
    pub fn embedded_log_options(&self) -> crate::log::embedded::Options {
        let mut options = crate::log::embedded::Options::new(self.dedup_window);
        options.retention = self.retention;
        options.max_events = self.max_events;
        options.max_commit_batch = usize::try_from(self.max_commit_batch).unwrap_or(usize::MAX);
        options
    }
}
