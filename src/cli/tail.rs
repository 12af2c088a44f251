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
};

use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use incode_gateway::{
    auth::Secret,
    config::tail::{StartAt, TailArgs},
    proto::{
        json::{EventJson, JsonError},
        v1::{
            self, EventFilter, StartPosition, SubscribeRequest,
            event_stream_service_client::EventStreamServiceClient, start_position::Position,
            subscribe_response::Response,
        },
    },
};

/// The proto start position of `--from`.
fn position(start: StartAt) -> Position {
    match start {
        StartAt::Latest => Position::Latest(v1::start_position::Latest {}),
        StartAt::Earliest | StartAt::Sequence(0) => {
            Position::Earliest(v1::start_position::Earliest {})
        }
        StartAt::Sequence(sequence) => Position::AfterSequence(sequence - 1),
        StartAt::Time(time) => Position::Since(time.into()),
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
        () = incode_gateway::server::shutdown_signal() => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`tail | head`): nothing left to do.
        Err(TailError::Output(error)) if error.kind() == io::ErrorKind::BrokenPipe => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!(
                "incode-gateway tail: {}",
                incode_gateway::error::error_chain(&error)
            );
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
            position: Some(position(from)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sequence_is_the_first_event_shown() {
        assert_eq!(position(StartAt::Sequence(42)), Position::AfterSequence(41));
        assert!(matches!(
            position(StartAt::Sequence(1)),
            Position::AfterSequence(0)
        ));
        assert!(matches!(
            position(StartAt::Sequence(0)),
            Position::Earliest(_)
        ));
    }
}
