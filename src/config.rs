//! The gateway's configuration: one typed struct, read from command-line flags, their
//! `INCODE_GATEWAY_*` environment equivalents, and an optional TOML file ([`file`]) with a key for
//! every flag ([`keys`]), in that order of precedence, then the defaults. `incode-gateway serve
//! --help` lists every flag with its default; this module (with the argument groups it
//! flattens) is the one place they are defined, the tools' options too ([`tail`], [`simulate`];
//! the tools themselves are the binary's), except two groups of `serve` options: the
//! public listener's limits ([`crate::http::PublicListenerArgs`]) and the client authentication
//! limits ([`crate::auth::ClientAuthLimitArgs`]).

pub mod file;
pub mod keys;
pub mod simulate;
pub mod tail;

use std::{ffi::OsString, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::auth::Secret;

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
#[allow(clippy::large_enum_variant, reason = "made once at start-up")]
pub enum Command {
    /// Run the gateway (the default).
    Serve(Config),
    /// Print an argon2id hash (PHC string) of a client secret, for the config file or
    /// --oauth-client-secret. The secret is read from standard input, or prompted for without
    /// echo on a terminal, so that it stays out of the shell history.
    HashSecret,
    /// Subscribe to a gateway and print its events as JSON lines.
    Tail(tail::TailArgs),
    /// Play Incode: obtain a token and post notifications to a gateway, with Incode's retry.
    Simulate(simulate::SimulateArgs),
}

impl Cli {
    /// The configuration to serve with.
    pub fn into_config(self) -> Config {
        match self.command {
            Some(Command::Serve(config)) => config,
            Some(Command::HashSecret | Command::Tail(_) | Command::Simulate(_)) | None => {
                self.serve
            }
        }
    }

    /// The command to run.
    pub fn into_command(self) -> Command {
        self.command.unwrap_or(Command::Serve(self.serve))
    }

    /// The command line of this process, its `INCODE_GATEWAY_*` variables, and the config file
    /// `--config` (or `INCODE_GATEWAY_CONFIG`) names, with that precedence.
    pub fn load() -> Result<Self, LoadError> {
        Self::load_from(std::env::args_os(), Environment::Read)
    }

    /// Parses `args` (the program name first), the environment when `environment` says so,
    /// and the config file the result names: flags win over variables, variables over the
    /// file, the file over the defaults.
    pub fn load_from<I, T>(args: I, environment: Environment) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let command = match environment {
            Environment::Read => Self::command(),
            Environment::Ignore => without_env(Self::command()),
        };
        let matches = command.clone().try_get_matches_from(&args)?;
        let source = Arc::new(LoadSource { args, environment });
        let Some(path) = config_path(&matches) else {
            let mut cli = Self::from_arg_matches(&matches)?;
            cli.for_each_config(|config| config.source = Some(source.clone()));
            return Ok(cli);
        };
        let file = file::ConfigFile::load_checked(&path, &|flag, values| {
            check_file_values(&command, &matches, flag, values)
        })?;
        let command = with_file_defaults(command, &file);
        let matches = command.try_get_matches_from(&source.args)?;
        let mut cli = Self::from_arg_matches(&matches)?;
        let sections = Arc::new(file.sections.clone());
        cli.for_each_config(|config| {
            config.add_file_lists(&file);
            config.file = Some(sections.clone());
            config.source = Some(source.clone());
        });
        Ok(cli)
    }

    /// Applies `change` to the configuration of `serve`, given with the subcommand or without.
    fn for_each_config(&mut self, mut change: impl FnMut(&mut Config)) {
        change(&mut self.serve);
        if let Some(Command::Serve(config)) = &mut self.command {
            change(config);
        }
    }

    /// Parses `args` (the program name first) as the command line alone says them: no
    /// `INCODE_GATEWAY_*` variable is read, so that tests and programs embedding the gateway get
    /// the documented defaults whatever the environment they run in holds.
    pub fn try_parse_args_only<I, T>(args: I) -> Result<Self, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::load_from(args, Environment::Ignore)
    }
}

/// What a configuration was loaded from, to load it again ([`Config::reread`]).
struct LoadSource {
    args: Vec<OsString>,
    environment: Environment,
}

impl std::fmt::Debug for LoadSource {
    // The command line may hold secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadSource")
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// Whether [`Cli::load_from`] reads `INCODE_GATEWAY_*` variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Read them, as the binary does.
    Read,
    /// Ignore them, for tests and embedding.
    Ignore,
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The command line (or a variable) is not valid, or asked for help or the version.
    #[error(transparent)]
    Arguments(#[from] clap::Error),
    /// The config file is not usable.
    #[error(transparent)]
    File(#[from] file::ConfigFileError),
}

/// The config file `serve` is to read, from the command line or the environment.
fn config_path(matches: &ArgMatches) -> Option<PathBuf> {
    serve_matches(matches)?
        .get_one::<PathBuf>("config_file")
        .cloned()
}

/// The matches of `serve`'s arguments, given with or without the subcommand.
fn serve_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    match matches.subcommand() {
        Some(("serve", serve)) => Some(serve),
        Some(_) => None,
        None => Some(matches),
    }
}

/// Checks the values the config file gives the flag `flag` with the flag's own parser, unless
/// a flag or a variable gives it values instead (those win, so the file's are not used). A
/// refusal says why in words of its own: clap's message would quote the value, which may be a
/// secret, and name the flag, not the key of the file.
fn check_file_values(
    command: &clap::Command,
    matches: &ArgMatches,
    flag: &str,
    values: &[String],
) -> Result<(), String> {
    let Some(arg) = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(flag))
    else {
        return Ok(());
    };
    let overridden = serve_matches(matches)
        .and_then(|serve| serve.value_source(arg.get_id().as_str()))
        .is_some_and(|source| {
            matches!(
                source,
                clap::parser::ValueSource::CommandLine | clap::parser::ValueSource::EnvVariable
            )
        });
    if overridden && !ADDED_TO_FILE_LISTS.contains(&flag) {
        return Ok(());
    }
    let list = matches!(arg.get_action(), clap::ArgAction::Append);
    if values.len() > 1 && !list {
        return Err("takes one value, not a list".to_owned());
    }
    // The argument alone, taking a value whatever its action (a switch's value comes from the
    // file as `true` or `false`), parsed as clap parses it.
    let alone = arg.clone().env(None).action(if list {
        clap::ArgAction::Append
    } else {
        clap::ArgAction::Set
    });
    let probe = clap::Command::new("config-file")
        .no_binary_name(true)
        .disable_help_flag(true)
        .arg(alone);
    for value in values {
        if let Err(error) = probe
            .clone()
            .try_get_matches_from([format!("--{flag}={value}")])
        {
            return Err(refusal_reason(&error, value));
        }
    }
    Ok(())
}

/// Why clap refused `value`, without `value` itself.
fn refusal_reason(error: &clap::Error, value: &str) -> String {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match (error.kind(), error.get(ContextKind::ValidValue)) {
        (ErrorKind::InvalidValue, Some(ContextValue::Strings(valid))) => {
            let valid: Vec<String> = valid.iter().map(|value| format!("`{value}`")).collect();
            format!("must be one of {}", valid.join(", "))
        }
        _ => match std::error::Error::source(error) {
            Some(reason) => without_value(&reason.to_string(), value),
            None => "not a valid value".to_owned(),
        },
    }
}

/// `message` with every standalone occurrence of `value` (not inside a longer word) blanked.
fn without_value(message: &str, value: &str) -> String {
    if value.is_empty() {
        return message.to_owned();
    }
    let is_word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find(value) {
        out.push_str(&rest[..at]);
        let after = &rest[at + value.len()..];
        let standalone = !is_word(out.chars().next_back()) && !is_word(after.chars().next());
        out.push_str(if standalone { "…" } else { value });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// The lists a flag or variable adds to rather than replaces, as they always have: verify-only
/// keys add up (a key being rotated out stays accepted wherever it is configured), and a
/// `--webhook-header` replaces only the file's header of the same name, so that no header the
/// file requires is dropped by setting another one elsewhere. See [`Config::add_file_lists`].
const ADDED_TO_FILE_LISTS: [&str; 3] = [
    "token-verify-key-file",
    "token-verify-key",
    "webhook-header",
];

/// `command` with the settings of `file` as the defaults of the flags they belong to: clap then
/// gives a flag, then its variable, then the file, then the built-in default. The lists of
/// [`ADDED_TO_FILE_LISTS`] are combined after parsing instead.
fn with_file_defaults(command: clap::Command, file: &file::ConfigFile) -> clap::Command {
    let apply = |command: clap::Command| {
        let ids: Vec<(String, Vec<String>)> = command
            .get_arguments()
            .filter_map(|arg| {
                let long = arg.get_long()?;
                if ADDED_TO_FILE_LISTS.contains(&long) {
                    return None;
                }
                let values = file.values_of(long)?;
                Some((arg.get_id().to_string(), values.to_vec()))
            })
            .collect();
        ids.into_iter().fold(command, |command, (id, values)| {
            command.mut_arg(id, |arg| {
                // A secret from the file must not show in `--help` as a default.
                let secret = arg.is_hide_env_values_set();
                arg.default_values(values).hide_default_value(secret)
            })
        })
    };
    apply(command).mut_subcommand("serve", apply)
}

/// `command` with the environment variables of its arguments (and its subcommands') removed.
fn without_env(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.env(None))
        .mut_subcommands(without_env)
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
    source: Option<Arc<LoadSource>>,

    /// How callers of the public listener authenticate.
    #[command(flatten)]
    pub auth: AuthArgs,

    /// Timeouts and limits of the public listener, and whom it trusts.
    #[command(flatten)]
    pub public_listener: crate::http::PublicListenerArgs,

    /// Limits on client authentication at the token endpoint.
    #[command(flatten)]
    pub client_auth_limits: crate::auth::ClientAuthLimitArgs,
    /// The NATS JetStream backend (`--storage nats`).
    #[command(flatten)]
    pub nats: NatsArgs,

    /// TLS, subscriber authentication and transport limits of the internal listener.
    #[command(flatten)]
    pub internal: InternalListenerArgs,
}

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

/// The internal listener: TLS (reloaded when the files change or on SIGHUP), mutual TLS, who may
/// subscribe without credentials, and HTTP/2 and TCP limits. Subscriber identities (names,
/// tokens, the consumers each may use) are `[[subscribers]]` in the --config file. See
/// docs/internal-listener.md.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Internal listener")]
pub struct InternalListenerArgs {
    /// PEM certificate chain of the internal listener (server certificate first). With
    /// --internal-tls-key, the listener speaks TLS only.
    #[arg(long, env = "INCODE_GATEWAY_INTERNAL_TLS_CERT", value_name = "FILE")]
    pub internal_tls_cert: Option<PathBuf>,

    /// PEM private key of --internal-tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "INCODE_GATEWAY_INTERNAL_TLS_KEY", value_name = "FILE")]
    pub internal_tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that sign subscribers' client certificates: turns on mutual TLS.
    /// Every call then needs a client certificate signed by one of them, except gRPC health
    /// checks.
    #[arg(long, env = "INCODE_GATEWAY_INTERNAL_CLIENT_CA", value_name = "FILE")]
    pub internal_client_ca: Option<PathBuf>,

    /// How often the TLS files are checked for changes (they are also reloaded on SIGHUP).
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_TLS_RELOAD_INTERVAL",
        default_value = "5s",
        value_parser = parse_positive_duration
    )]
    pub internal_tls_reload_interval: Duration,

    /// Let the internal listener start on a non-loopback address although nothing
    /// authenticates subscribers: anyone who can reach it can then read every event and move
    /// every durable consumer.
    #[arg(
        long,
        env = "INCODE_GATEWAY_ALLOW_UNAUTHENTICATED_SUBSCRIBERS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unauthenticated_subscribers: bool,

    /// With subscribers configured, still let callers without credentials subscribe without a
    /// consumer (the plain stream), and use reflection and /metrics. Durable consumers always
    /// need a subscriber identity.
    #[arg(
        long,
        env = "INCODE_GATEWAY_ALLOW_ANONYMOUS_READS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_anonymous_reads: bool,

    /// Most concurrent streams (calls) a client may open on one HTTP/2 connection.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_MAX_CONCURRENT_STREAMS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub internal_max_concurrent_streams: u32,

    /// How often an HTTP/2 PING is sent to each client to find dead connections; `0s` turns it
    /// off.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_HTTP2_KEEPALIVE_INTERVAL",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub internal_http2_keepalive_interval: Duration,

    /// How long an unanswered HTTP/2 keepalive PING waits before the connection is closed.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_HTTP2_KEEPALIVE_TIMEOUT",
        default_value = "20s",
        value_parser = parse_positive_duration
    )]
    pub internal_http2_keepalive_timeout: Duration,

    /// Idle time before TCP keepalive probes start on internal connections; `0s` turns them
    /// off.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_TCP_KEEPALIVE",
        default_value = "60s",
        value_parser = parse_duration
    )]
    pub internal_tcp_keepalive: Duration,

    /// Largest gRPC request message accepted, in bytes (decoded); larger ones are refused with
    /// OUT_OF_RANGE.
    #[arg(
        long,
        env = "INCODE_GATEWAY_INTERNAL_MAX_MESSAGE_BYTES",
        default_value_t = 1024 * 1024,
        value_parser = clap::value_parser!(u32).range(1024..)
    )]
    pub internal_max_message_bytes: u32,
}

/// Authentication of the public listener: the OAuth clients Incode uses at `/oauth/token`, the
/// keys of the tokens it gets there, and the headers every webhook call must carry. With no
/// client and no header configured, `serve` refuses to start unless
/// `--allow-unauthenticated-webhooks` is given.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Client id Incode authenticates with at /oauth/token (more clients: the config file).
    #[arg(long, env = "INCODE_GATEWAY_OAUTH_CLIENT_ID", value_name = "ID")]
    pub oauth_client_id: Option<String>,

    /// Secret of --oauth-client-id: plain text, or an argon2id PHC string from `hash-secret`.
    /// Prefer the environment variable: flags show in the process list.
    #[arg(
        long,
        env = "INCODE_GATEWAY_OAUTH_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub oauth_client_secret: Option<Secret>,

    /// Lifetime of the access tokens /oauth/token issues (its `expires_in`), at most 24h
    /// [default: 1h].
    #[arg(long, env = "INCODE_GATEWAY_TOKEN_TTL", value_parser = parse_duration)]
    pub token_ttl: Option<Duration>,

    /// File with the base64 key that signs access tokens (at least 32 random bytes, e.g. from
    /// `openssl rand -base64 32`); every replica needs the same one. Without one, the embedded
    /// storage generates a key on first start and keeps it in --data-dir (`token-signing-key`,
    /// mode 0600); the memory storage uses a random key, and tokens do not survive a restart.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TOKEN_SIGNING_KEY_FILE",
        value_name = "FILE"
    )]
    pub token_signing_key_file: Option<PathBuf>,

    /// The signing key itself, base64. Prefer the key file or the environment variable.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TOKEN_SIGNING_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub token_signing_key: Option<Secret>,

    /// File with a verify-only key: an earlier signing key whose tokens are still accepted.
    /// Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long = "token-verify-key-file",
        env = "INCODE_GATEWAY_TOKEN_VERIFY_KEY_FILES",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub token_verify_key_files: Vec<PathBuf>,

    /// A verify-only key itself, base64. Repeatable; the environment variable takes a
    /// comma-separated list.
    #[arg(
        long = "token-verify-key",
        env = "INCODE_GATEWAY_TOKEN_VERIFY_KEYS",
        hide_env_values = true,
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub token_verify_keys: Vec<Secret>,

    /// A header every webhook call must carry with exactly this value (one of Incode's custom
    /// headers), as NAME=VALUE; compared in constant time. Repeatable.
    #[arg(
        long = "webhook-header",
        env = "INCODE_GATEWAY_WEBHOOK_HEADER",
        hide_env_values = true,
        value_name = "NAME=VALUE"
    )]
    pub webhook_headers: Vec<Secret>,

    /// Accept webhooks from anyone when no OAuth client and no webhook header is configured.
    /// For trying the gateway out only.
    #[arg(
        long,
        env = "INCODE_GATEWAY_ALLOW_UNAUTHENTICATED_WEBHOOKS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unauthenticated_webhooks: bool,
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

/// A duration that must not be zero (an interval of nothing would spin).
pub(crate) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(Duration::ZERO) => Err("must be longer than zero".to_owned()),
        Ok(duration) => Ok(duration),
        Err(error) => Err(error.to_string()),
    }
}

impl Config {
    /// The defaults, as `serve` with no flags would have them (whatever `INCODE_GATEWAY_*`
    /// variables the environment holds), with both listeners on ephemeral loopback ports,
    /// webhooks open to anyone, and no data directory: set `data_dir` (a temporary directory)
    /// before running with it. For tests.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests() -> Self {
        let mut config = match Cli::try_parse_args_only(["incode-gateway"]) {
            Ok(cli) => cli.serve,
            // No argument and no file to refuse: only a definition error, which every test
            // would show.
            Err(LoadError::Arguments(error)) => error.exit(),
            Err(error) => {
                eprintln!("incode-gateway: {error}");
                std::process::exit(2)
            }
        };
        config.public_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.internal_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config.storage = StorageKind::Embedded;
        config.data_dir = PathBuf::new();
        config.auth.allow_unauthenticated_webhooks = true;
        config
    }

    /// The parts of the config file that are not flags: as [`Cli::load_from`] read them, or
    /// read now from `config_file` for a configuration built in code. Such a configuration
    /// cannot take the file's flag settings (only [`Cli::load_from`] gives them their place in
    /// the precedence), so a file with any is refused rather than half applied.
    pub fn file_sections(&self) -> Result<Arc<file::FileSections>, file::ConfigFileError> {
        if let Some(sections) = &self.file {
            return Ok(sections.clone());
        }
        let Some(path) = &self.config_file else {
            return Ok(Arc::default());
        };
        let file = file::ConfigFile::load(path)?;
        if file.sets_flags() {
            return Err(file::ConfigFileError::FlagsNotApplied { path: path.clone() });
        }
        Ok(Arc::new(file.sections))
    }

    /// The configuration as it reads now: the same command line and environment with the config
    /// file as it is now, for what can change while the gateway runs (see [`crate::reload`]).
    /// A configuration built in code keeps its settings and reads its config file's sections
    /// again.
    pub fn reread(&self) -> Result<Self, LoadError> {
        if let Some(source) = &self.source {
            return Ok(
                Cli::load_from(source.args.iter().cloned(), source.environment)?.into_config(),
            );
        }
        let mut fresh = self.clone();
        fresh.file = None;
        fresh.file = Some(fresh.file_sections()?);
        Ok(fresh)
    }

    /// Like [`Config::for_tests`], with `args` (flags, `--config FILE`) on the command line too.
    #[cfg(any(test, feature = "test-util"))]
    pub fn for_tests_with(args: &[&str]) -> Result<Self, LoadError> {
        let mut config = Cli::try_parse_args_only(
            std::iter::once("incode-gateway").chain(args.iter().copied()),
        )?
        .serve;
        let defaults = Self::for_tests();
        config.public_addr = defaults.public_addr;
        config.internal_addr = defaults.internal_addr;
        config.data_dir = defaults.data_dir;
        Ok(config)
    }

    /// Adds the lists of [`ADDED_TO_FILE_LISTS`] that `file` holds to those the flags and
    /// variables gave: the file's verify-only keys before the others, and the file's webhook
    /// headers except those a flag or variable sets again by name (header names are
    /// case-insensitive).
    fn add_file_lists(&mut self, file: &file::ConfigFile) {
        let values = |flag| file.values_of(flag).unwrap_or_default().iter().cloned();
        let auth = &mut self.auth;
        auth.token_verify_key_files = values("token-verify-key-file")
            .map(PathBuf::from)
            .chain(std::mem::take(&mut auth.token_verify_key_files))
            .collect();
        auth.token_verify_keys = values("token-verify-key")
            .map(Secret::from)
            .chain(std::mem::take(&mut auth.token_verify_keys))
            .collect();
        let header_name = |header: &str| {
            header
                .split_once('=')
                .map(|(name, _)| name.trim().to_ascii_lowercase())
        };
        let set_again: Vec<Option<String>> = auth
            .webhook_headers
            .iter()
            .map(|header| header_name(header.expose()))
            .collect();
        auth.webhook_headers = values("webhook-header")
            .filter(|header| !set_again.contains(&header_name(header)))
            .map(Secret::from)
            .chain(std::mem::take(&mut auth.webhook_headers))
            .collect();
    }

    /// Options of the embedded log.
    pub fn embedded_log_options(&self) -> crate::log::embedded::EmbeddedSettings {
        let mut options = crate::log::embedded::EmbeddedSettings::new(self.dedup_window);
        options.retention = self.retention;
        options.max_events = self.max_events;
        options.maintenance_interval = self.maintenance_interval;
        options.max_commit_batch = usize::try_from(self.max_commit_batch).unwrap_or(usize::MAX);
        options
    }

    /// How consumer groups behave.
    pub fn group_settings(&self) -> crate::groups::GroupSettings {
        crate::groups::GroupSettings {
            session_timeout: self.group_session_timeout,
            ..crate::groups::GroupSettings::default()
        }
    }

    /// The limits on durable consumers and consumer groups.
    pub fn consumer_limits(&self) -> crate::log::QuotaSettings {
        crate::log::QuotaSettings {
            max_total: usize::try_from(self.max_consumers).unwrap_or(usize::MAX),
            max_per_subscriber: usize::try_from(self.max_consumers_per_subscriber)
                .unwrap_or(usize::MAX),
        }
    }

    /// Options of the memory log.
    pub fn memory_log_options(&self) -> crate::log::memory::MemorySettings {
        crate::log::memory::MemorySettings {
            dedup_window: self.dedup_window,
            retention: self.retention,
            max_events: self.max_events,
        }
    }

    /// Options of the NATS log.
    pub fn nats_log_options(&self) -> crate::log::nats::NatsSettings {
        let nats = &self.nats;
        let mut options =
            crate::log::nats::NatsSettings::new(nats.urls.clone(), nats.stream.clone());
        options.replicas = usize::from(nats.replicas);
        options.dedup_window = self.dedup_window;
        options.retention = self.retention;
        options.max_events = self.max_events;
        options.publish_timeout = nats.publish_timeout;
        options.connect_timeout = nats.connect_timeout;
        options.auth = crate::log::nats::NatsAuth {
            credentials_file: nats.credentials.clone(),
            user: nats.user.clone(),
            password: nats.password.clone(),
            token: nats.token.clone(),
        };
        options.tls = crate::log::nats::NatsTls {
            ca_file: nats.tls_ca.clone(),
            cert_file: nats.tls_cert.clone(),
            key_file: nats.tls_key.clone(),
        };
        options.allow_plaintext = nats.allow_plaintext;
        options
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, LoadError> {
        Cli::try_parse_args_only(std::iter::once("incode-gateway").chain(args.iter().copied()))
    }

    /// The long names of every flag of `serve`.
    fn serve_flags() -> Vec<String> {
        let command = Cli::command();
        let serve = command
            .get_subcommands()
            .find(|sub| sub.get_name() == "serve")
            .unwrap()
            .clone();
        serve
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(str::to_owned))
            .filter(|long| long != "help")
            .collect()
    }

    #[test]
    fn every_flag_has_one_file_key_and_every_key_one_flag() {
        let flags = serve_flags();
        for flag in &flags {
            if flag == "config" {
                assert_eq!(keys::path_of(flag), None, "--config has no key of its own");
                continue;
            }
            assert!(
                keys::path_of(flag).is_some(),
                "--{flag} has no key in the config file"
            );
        }
        for key in keys::FILE_KEYS {
            assert!(
                flags.iter().any(|flag| flag == key.flag),
                "{} is no flag",
                key.flag
            );
            let same_path = keys::FILE_KEYS
                .iter()
                .filter(|k| k.path == key.path)
                .count();
            assert_eq!(same_path, 1, "{} is used twice", key.path);
        }
    }

    fn write_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap().to_owned();
        (dir, path)
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let (_dir, path) = write_file(
            "log_format = \"json\"\n[public]\naddr = \"127.0.0.1:9999\"\nmax_connections = 7\n\
             trusted_proxies = [\"10.0.0.0/8\"]\n[storage]\nretention = \"2d\"\n\
             [internal]\nallow_anonymous_reads = true\n",
        );
        let config = parse(&["--config", &path, "--retention", "3d"])
            .unwrap()
            .serve;
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.public_addr, SocketAddr::from(([127, 0, 0, 1], 9999)));
        assert_eq!(config.public_listener.max_connections, 7);
        assert_eq!(config.public_listener.trusted_proxies.len(), 1);
        assert_eq!(
            config.retention,
            Duration::from_secs(3 * 24 * 3600),
            "the flag wins"
        );
        assert!(config.internal.allow_anonymous_reads);
        assert_eq!(
            config.dedup_window,
            Duration::from_secs(24 * 3600),
            "a default stays"
        );
        // The same through the subcommand.
        let Some(Command::Serve(config)) = parse(&["serve", "--config", &path]).unwrap().command
        else {
            panic!("serve expected");
        };
        assert_eq!(config.retention, Duration::from_secs(2 * 24 * 3600));
        assert!(config.file.is_some());
    }

    #[test]
    fn verify_keys_add_up_and_a_webhook_header_replaces_only_its_name() {
        let (_dir, path) = write_file(
            "[oauth]\nverify_keys = [\"ZmlsZS1rZXk=\"]\nverify_key_files = [\"/file.key\"]\n\
             [webhooks]\nheaders = { \"X-Incode-Secret\" = \"file\", \"X-Other\" = \"kept\" }\n",
        );
        let exposed = |secrets: &[Secret]| -> Vec<String> {
            secrets.iter().map(|s| s.expose().to_owned()).collect()
        };
        for args in [vec!["--config", &path], vec!["serve", "--config", &path]] {
            let mut args = args;
            args.extend([
                "--token-verify-key",
                "ZmxhZy1rZXk=",
                "--token-verify-key-file",
                "/flag.key",
                "--webhook-header",
                "x-incode-secret=flag",
            ]);
            let cli = parse(&args).unwrap();
            let config = match cli.command {
                Some(Command::Serve(config)) => config,
                _ => cli.serve,
            };
            let auth = &config.auth;
            assert_eq!(
                exposed(&auth.token_verify_keys),
                ["ZmlsZS1rZXk=", "ZmxhZy1rZXk="]
            );
            assert_eq!(
                auth.token_verify_key_files,
                [PathBuf::from("/file.key"), PathBuf::from("/flag.key")]
            );
            assert_eq!(
                exposed(&auth.webhook_headers),
                ["X-Other=kept", "x-incode-secret=flag"]
            );
        }
        // Without flags, the file's lists as they are.
        let auth = parse(&["--config", &path]).unwrap().serve.auth;
        assert_eq!(exposed(&auth.token_verify_keys), ["ZmlsZS1rZXk="]);
        assert_eq!(auth.webhook_headers.len(), 2);
    }

    #[test]
    fn a_bad_value_in_the_file_is_refused_at_its_key_without_the_value() {
        let (_dir, path) = write_file("[public]\nmax_connections = \"many\"\n");
        let error = parse(&["--config", &path]).unwrap_err().to_string();
        assert!(
            error.contains(&path)
                && error.contains("line 2, column 1")
                && error.contains("`public.max_connections` (--max-connections)")
                && !error.contains("many"),
            "{error}"
        );
        // A flag wins over the file: the file's value is not used, so not refused either.
        let config = parse(&["--config", &path, "--max-connections", "7"]).unwrap();
        assert_eq!(config.serve.public_listener.max_connections, 7);
        let (_dir, path) = write_file("[public]\nmax_conections = 3\n");
        let error = parse(&["--config", &path]).unwrap_err().to_string();
        assert!(error.contains("public.max_conections"), "{error}");
    }

    #[test]
    fn refusals_keep_the_reason_and_drop_the_value() {
        assert_eq!(
            without_value("3000 is not in 1..=1000", "3000"),
            "… is not in 1..=1000"
        );
        assert_eq!(
            without_value("expected number at 0", "e"),
            "expected number at 0"
        );
        assert_eq!(without_value("x: x1 x", "x"), "…: x1 …");
    }

    #[test]
    fn secrets_from_the_file_are_not_shown_as_defaults() {
        let (_dir, path) = write_file("[nats]\npassword = \"file-password-61c2\"\n");
        let command = with_file_defaults(
            Cli::command(),
            &file::ConfigFile::load(std::path::Path::new(&path)).unwrap(),
        );
        let help = command
            .find_subcommand("serve")
            .unwrap()
            .clone()
            .render_long_help()
            .to_string();
        assert!(!help.contains("file-password-61c2"), "{help}");
        let config = parse(&["--config", &path]).unwrap().serve;
        assert_eq!(config.nats.password.unwrap().expose(), "file-password-61c2");
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

    /// Names of the variables the arguments of `command` and of its subcommands read.
    fn variables(command: &clap::Command) -> Vec<String> {
        let own = command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned());
        let nested = command.get_subcommands().flat_map(variables);
        own.chain(nested.collect::<Vec<_>>()).collect()
    }

    #[test]
    fn parsing_arguments_only_reads_no_variable() {
        let all = variables(&Cli::command());
        for expected in [
            "INCODE_GATEWAY_WEBHOOK_HEADER",
            "INCODE_GATEWAY_INTERNAL_ADDR",
            "INCODE_GATEWAY_TAIL_ADDR",
            "INCODE_GATEWAY_SIMULATE_CLIENT_SECRET",
        ] {
            assert!(
                all.iter().any(|name| name == expected),
                "{expected} in {all:?}"
            );
        }
        assert_eq!(
            variables(&without_env(Cli::command())),
            Vec::<String>::new()
        );
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
