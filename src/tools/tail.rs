//! `incode-gateway tail`: subscribes to a gateway like any internal service and prints every
//! event as one line of canonical JSON on stdout, for people and for `jq`.
//!
//! Only events go to stdout. Notes about the stream (`caught up`, a gap left by retention, the
//! stream ending) go to stderr as plain text; heartbeats are not shown. `tail` never acknowledges
//! anything: with `--consumer` it shows what that consumer would receive, without moving its
//! cursor.
//!
//! An `https://` address connects over TLS (`--ca` to trust a private CA, `--cert` and `--key`
//! for mutual TLS); `--token` (better: `INCODE_GATEWAY_TAIL_TOKEN`) authenticates as a
//! subscriber. The token is never printed.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::Args;
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::json::{EventJson, JsonError};
use crate::{
    auth::Secret,
    proto::v1::{
        self, EventFilter, StartPosition, SubscribeRequest,
        event_stream_service_client::EventStreamServiceClient, start_position::Position,
        subscribe_response::Response,
    },
};

/// Options of `tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The gateway's internal (gRPC) listener: `http://` in plain text, `https://` over TLS.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,

    /// PEM CA certificate(s) to verify the gateway's certificate with (`https://` only);
    /// without it, the system's trusted roots.
    #[arg(long, env = "INCODE_GATEWAY_TAIL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// PEM client certificate to present, for a gateway with mutual TLS (with --key).
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,

    /// The name to verify the gateway's certificate against, when it differs from the host of
    /// --addr (e.g. connecting by IP address).
    #[arg(long, env = "INCODE_GATEWAY_TAIL_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Bearer token of a subscriber, sent as `authorization: Bearer <token>`. Prefer the
    /// environment variable: flags show in the process list.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,

    /// Where to start: `latest` (only new events; the default), `earliest` (every stored
    /// event), a sequence number (that event and the ones after it) or an RFC 3339 time (events
    /// received at or after it, e.g. `2024-05-01T12:00:00Z`; UTC when no offset is given). With
    /// `--consumer` and no `--from`, after the consumer's last acknowledged event.
    #[arg(long, value_name = "POSITION", value_parser = parse_from)]
    pub from: Option<StartAt>,

    /// Only events of these types: `onboarding-status-changed`, `watchlist-updated`,
    /// `unrecognized-notification` (or the proto names, `EVENT_TYPE_...`). Repeat the flag or
    /// separate with commas.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',', value_parser = parse_event_type)]
    pub types: Vec<v1::EventType>,

    /// Only events about these Incode sessions (`interviewId`). Repeat or separate with commas.
    #[arg(long = "interview-id", value_name = "ID", value_delimiter = ',')]
    pub interview_ids: Vec<String>,

    /// Only onboarding status events with these statuses, in Incode's spelling
    /// (`ONBOARDING_FINISHED`) or the proto names (`ONBOARDING_STATUS_...`); `unspecified` selects
    /// statuses the gateway does not know. Repeat or separate with commas.
    #[arg(long = "status", value_name = "STATUS", value_delimiter = ',', value_parser = parse_status)]
    pub statuses: Vec<v1::OnboardingStatus>,

    /// Subscribe as this durable consumer (without acknowledging anything).
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,

    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,

    /// How long to wait for the connection to the gateway.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

/// The start position asked for with `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only new events.
    Latest,
    /// Every stored event.
    Earliest,
    /// This sequence and the ones after it.
    Sequence(u64),
    /// Events received at or after this time.
    Time(SystemTime),
}

impl StartAt {
    fn position(self) -> Position {
        match self {
            Self::Latest => Position::Latest(v1::start_position::Latest {}),
            Self::Earliest | Self::Sequence(0) => {
                Position::Earliest(v1::start_position::Earliest {})
            }
            Self::Sequence(sequence) => Position::AfterSequence(sequence - 1),
            Self::Time(time) => Position::Since(time.into()),
        }
    }
}

/// Why `tail` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// `--addr` is not a URL tonic can connect to.
    #[error("--addr {addr:?} is not a valid URL (e.g. http://127.0.0.1:50051)")]
    InvalidAddr {
        /// The address given.
        addr: String,
        /// Why it is invalid.
        #[source]
        source: tonic::transport::Error,
    },
    /// TLS options with a plain-text address.
    #[error("--ca, --cert, --key and --tls-server-name are for TLS: use an https:// --addr")]
    TlsOptionsWithoutTls,
    /// A TLS file could not be read.
    #[error("cannot read {what} {}", path.display())]
    ReadFile {
        /// Which option.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The TLS settings are not usable.
    #[error("the TLS settings are not usable")]
    Tls(#[source] tonic::transport::Error),
    /// The token cannot be sent as metadata.
    #[error("the token holds characters that cannot be sent in gRPC metadata")]
    InvalidToken,
    /// The gateway could not be reached.
    #[error("cannot connect to the gateway at {addr}")]
    Connect {
        /// The address given.
        addr: String,
        /// The transport failure.
        #[source]
        source: tonic::transport::Error,
    },
    /// The gateway refused the subscription or the stream failed.
    #[error("the subscription failed: {code:?}: {message}")]
    Stream {
        /// The gRPC status code.
        code: tonic::Code,
        /// The gateway's message.
        message: String,
    },
    /// The gateway ended the stream (it is shutting down, or gone).
    #[error("the gateway ended the stream{}", resume_hint(*.cursor))]
    Ended {
        /// Every event up to this sequence has been considered.
        cursor: Option<u64>,
    },
    /// An event could not be printed as JSON.
    #[error(transparent)]
    Json(#[from] JsonError),
    /// Writing to stdout failed.
    #[error("cannot write to stdout")]
    Output(#[source] io::Error),
}

fn resume_hint(cursor: Option<u64>) -> String {
    cursor.map_or_else(String::new, |cursor| {
        format!(
            " after sequence {cursor}; resume with --from {}",
            cursor.saturating_add(1)
        )
    })
}

impl From<tonic::Status> for TailError {
    fn from(status: tonic::Status) -> Self {
        Self::Stream {
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

/// Runs `tail`; reports errors on stderr and returns the exit code (0 after Ctrl-C or
/// `--max-events`, 1 on any error).
pub async fn main(args: TailArgs) -> ExitCode {
    let mut stdout = io::stdout();
    let result = tokio::select! {
        result = run(&args, &mut stdout) => result,
        () = super::interrupted() => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`tail | head`): nothing left to do.
        Err(TailError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("incode-gateway tail: {}", crate::error::error_chain(&error));
            ExitCode::FAILURE
        }
    }
}

/// Subscribes and writes every event to `out` as a JSON line, until `--max-events` events were
/// written or the stream fails.
pub async fn run(args: &TailArgs, out: &mut impl Write) -> Result<(), TailError> {
    let json = EventJson::new()?;
    if args.max_events == Some(0) {
        return Ok(());
    }
    let authorization = authorization(args.token.as_ref())?;
    let channel = connect(args).await?;
    let mut stream = client(channel, authorization)
        .subscribe(request(args))
        .await?
        .into_inner();

    let mut printed = 0_u64;
    let mut cursor = None;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            // The gateway ends streams with UNAVAILABLE when it shuts down.
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tracing::debug!(message = status.message(), "stream ended");
                break;
            }
            Err(status) => return Err(status.into()),
        };
        match message.response {
            Some(Response::Event(event)) => {
                let line = json.to_json(&event)?;
                writeln!(out, "{line}")
                    .and_then(|()| out.flush())
                    .map_err(TailError::Output)?;
                cursor = Some(event.sequence);
                printed += 1;
                if args.max_events.is_some_and(|max| printed >= max) {
                    return Ok(());
                }
            }
            Some(Response::CaughtUp(caught_up)) => {
                cursor = Some(caught_up.sequence);
                eprintln!(
                    "caught up at sequence {}; what follows is live",
                    caught_up.sequence
                );
            }
            Some(Response::Gap(gap)) => {
                eprintln!(
                    "events {} to {} were removed by retention before they could be shown",
                    gap.first_sequence, gap.last_sequence
                );
            }
            Some(Response::Heartbeat(heartbeat)) => cursor = Some(heartbeat.sequence),
            Some(Response::GroupAssignment(_)) => {}
            None => {}
        }
    }
    Err(TailError::Ended { cursor })
}

/// The `authorization` metadata value for a token, marked sensitive so that HTTP/2 header
/// compression never indexes it.
fn authorization(token: Option<&Secret>) -> Result<Option<AsciiMetadataValue>, TailError> {
    token
        .map(|token| {
            let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
                .map_err(|_| TailError::InvalidToken)?;
            value.set_sensitive(true);
            Ok(value)
        })
        .transpose()
}

type AuthorizingClient = EventStreamServiceClient<
    InterceptedService<
        Channel,
        Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
    >,
>;

/// A client that adds the `authorization` metadata, if any, to every call.
fn client(channel: Channel, authorization: Option<AsciiMetadataValue>) -> AuthorizingClient {
    EventStreamServiceClient::with_interceptor(
        channel,
        Box::new(move |mut request: tonic::Request<()>| {
            if let Some(value) = &authorization {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
            }
            Ok(request)
        }),
    )
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TailError> {
    std::fs::read(path).map_err(|source| TailError::ReadFile {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The TLS settings of the options, `None` for a plain-text address.
fn tls_config(args: &TailArgs) -> Result<Option<ClientTlsConfig>, TailError> {
    let tls = args
        .addr
        .get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    let tls_options = args.ca.is_some()
        || args.cert.is_some()
        || args.key.is_some()
        || args.tls_server_name.is_some();
    if !tls {
        return if tls_options {
            Err(TailError::TlsOptionsWithoutTls)
        } else {
            Ok(None)
        };
    }
    let mut config = ClientTlsConfig::new();
    config = match &args.ca {
        Some(path) => config.ca_certificate(Certificate::from_pem(read_file("--ca", path)?)),
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        config = config.identity(Identity::from_pem(
            read_file("--cert", cert)?,
            read_file("--key", key)?,
        ));
    }
    if let Some(name) = &args.tls_server_name {
        config = config.domain_name(name.clone());
    }
    Ok(Some(config))
}

async fn connect(args: &TailArgs) -> Result<Channel, TailError> {
    let addr = &args.addr;
    let mut endpoint =
        Endpoint::from_shared(addr.clone()).map_err(|source| TailError::InvalidAddr {
            addr: addr.clone(),
            source,
        })?;
    if let Some(tls) = tls_config(args)? {
        endpoint = endpoint.tls_config(tls).map_err(TailError::Tls)?;
    }
    endpoint
        .connect_timeout(args.connect_timeout)
        .connect()
        .await
        .map_err(|source| TailError::Connect {
            addr: addr.clone(),
            source,
        })
}

fn request(args: &TailArgs) -> SubscribeRequest {
    SubscribeRequest {
        start: args.from.map(|from| StartPosition {
            position: Some(from.position()),
        }),
        filter: Some(EventFilter {
            types: args.types.iter().map(|&t| t.into()).collect(),
            interview_ids: args.interview_ids.clone(),
            onboarding_statuses: args.statuses.iter().map(|&s| s.into()).collect(),
        }),
        consumer: args.consumer.clone().unwrap_or_default(),
        ..SubscribeRequest::default()
    }
}

fn parse_from(text: &str) -> Result<StartAt, String> {
    match text {
        "latest" => return Ok(StartAt::Latest),
        "earliest" => return Ok(StartAt::Earliest),
        _ => {}
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(StartAt::Sequence)
            .map_err(|_| format!("sequence {text} is too large"));
    }
    parse_rfc3339(text).map(StartAt::Time).map_err(|reason| {
        format!(
            "expected `earliest`, `latest`, a sequence number or an RFC 3339 time such as \
             2024-05-01T12:00:00Z ({reason})"
        )
    })
}

/// Parses an RFC 3339 time with a `Z` or `±hh:mm` offset, or none (UTC).
fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let (local, offset_seconds) = split_offset(text)?;
    let local = humantime::parse_rfc3339_weak(local).map_err(|e| e.to_string())?;
    let offset = Duration::from_secs(offset_seconds.unsigned_abs());
    // local = UTC + offset, so UTC = local - offset.
    let utc = if offset_seconds >= 0 {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    };
    utc.ok_or_else(|| "time out of range".to_owned())
}

fn split_offset(text: &str) -> Result<(&str, i64), String> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Ok((local, 0));
    }
    let split = text
        .len()
        .checked_sub(6)
        .and_then(|at| Some((text.get(..at)?, text.get(at..)?)));
    let Some((local, offset)) = split else {
        return Ok((text, 0));
    };
    let sign = match offset.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Ok((text, 0)),
    };
    let invalid = || format!("invalid UTC offset {offset:?}, expected +hh:mm or -hh:mm");
    let two_digits = |part: &str| -> Option<i64> {
        (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let (hours, minutes) = offset
        .get(1..)
        .and_then(|hh_mm| hh_mm.split_once(':'))
        .and_then(|(hh, mm)| Some((two_digits(hh)?, two_digits(mm)?)))
        .ok_or_else(invalid)?;
    if hours > 23 || minutes > 59 {
        return Err(invalid());
    }
    Ok((local, sign * (hours * 3600 + minutes * 60)))
}

/// Uppercases and turns `-` into `_`, so that `watchlist-updated` reads as `WATCHLIST_UPDATED`.
fn normalize(text: &str) -> String {
    text.trim().to_ascii_uppercase().replace('-', "_")
}

fn parse_event_type(text: &str) -> Result<v1::EventType, String> {
    let name = normalize(text);
    let name = name.strip_prefix("EVENT_TYPE_").unwrap_or(&name);
    match v1::EventType::from_str_name(&format!("EVENT_TYPE_{name}")) {
        Some(v1::EventType::Unspecified) | None => Err(
            "expected onboarding-status-changed, watchlist-updated or unrecognized-notification"
                .to_owned(),
        ),
        Some(event_type) => Ok(event_type),
    }
}

fn parse_status(text: &str) -> Result<v1::OnboardingStatus, String> {
    let name = normalize(text);
    let name = name.strip_prefix("ONBOARDING_STATUS_").unwrap_or(&name);
    v1::OnboardingStatus::from_str_name(&format!("ONBOARDING_STATUS_{name}")).ok_or_else(|| {
        "expected one of Incode's statuses (UNKNOWN, ID_VALIDATION_FINISHED, \
         POST_PROCESSING_FINISHED, FACE_VALIDATION_FINISHED, GOVERNMENT_VALIDATION_FINISHED, \
         ONBOARDING_FINISHED, MANUAL_REVIEW_APPROVED, MANUAL_REVIEW_REJECTED, \
         ID_VALIDATION_FINISHED_SECOND_ID) or UNSPECIFIED"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn from_reads_every_kind_of_position() {
        assert_eq!(parse_from("latest"), Ok(StartAt::Latest));
        assert_eq!(parse_from("earliest"), Ok(StartAt::Earliest));
        assert_eq!(parse_from("42"), Ok(StartAt::Sequence(42)));
        assert_eq!(
            parse_from("2024-05-01T12:00:00Z"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00Z")))
        );
        assert_eq!(
            parse_from("2024-05-01T14:30:00.5+02:30"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00.5Z")))
        );
        assert_eq!(
            parse_from("2024-05-01T07:00:00-05:00"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00Z")))
        );
        assert_eq!(
            parse_from("2024-05-01T12:00:00"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00Z")))
        );
        for bad in [
            "",
            "soon",
            "99999999999999999999999",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00+25:00",
        ] {
            assert!(parse_from(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_sequence_is_the_first_event_shown() {
        assert_eq!(
            StartAt::Sequence(42).position(),
            Position::AfterSequence(41)
        );
        assert!(matches!(
            StartAt::Sequence(1).position(),
            Position::AfterSequence(0)
        ));
        assert!(matches!(
            StartAt::Sequence(0).position(),
            Position::Earliest(_)
        ));
    }

    #[test]
    fn types_and_statuses_read_short_and_proto_names() {
        for text in [
            "watchlist-updated",
            "WATCHLIST_UPDATED",
            "EVENT_TYPE_WATCHLIST_UPDATED",
        ] {
            assert_eq!(parse_event_type(text), Ok(v1::EventType::WatchlistUpdated));
        }
        assert!(parse_event_type("unspecified").is_err());
        assert!(parse_event_type("bogus").is_err());
        for text in [
            "ONBOARDING_FINISHED",
            "onboarding-finished",
            "ONBOARDING_STATUS_ONBOARDING_FINISHED",
        ] {
            assert_eq!(
                parse_status(text),
                Ok(v1::OnboardingStatus::OnboardingFinished)
            );
        }
        assert_eq!(
            parse_status("unspecified"),
            Ok(v1::OnboardingStatus::Unspecified)
        );
        assert!(parse_status("FINISHED").is_err());
    }
}
