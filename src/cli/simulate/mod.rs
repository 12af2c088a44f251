//! `incode-gateway simulate`: plays Incode against a gateway, without waiting for a real
//! onboarding.
//!
//! It behaves as Incode's documentation says Incode does:
//!
//! - With client credentials, it first obtains a token: `POST` to the token URL with
//!   `Content-Type: application/x-www-form-urlencoded`, the body `grant_type=client_credentials`
//!   and `Authorization: Basic base64(id:secret)` (id and secret form-urlencoded first, as OAuth
//!   2.0 specifies); the answer's `access_token` is then sent as `Authorization: Bearer` with
//!   every notification, and a new token is obtained shortly before `expires_in` runs out.
//! - It posts realistic notifications: onboarding sessions that move through Incode's statuses,
//!   with an `externalId` for some and extra fields such as `flowId`, and watchlist updates.
//! - A call that times out or is not answered `200` with a JSON content type or `204` is retried
//!   once, with exactly the same request (the same bytes and headers); after that the
//!   notification is given up, as Incode gives it up.
//!
//! The summary goes to stdout; progress (for long runs) and notes go to stderr. Secrets are never
//! printed.

use std::{
    collections::BTreeMap,
    fmt,
    io::{self, IsTerminal, Write},
    process::ExitCode,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use futures::{StreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use incode_gateway::{
    auth::Secret,
    config::simulate::{Kind, SimulateArgs, SummaryFormat},
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Why `simulate` could not run.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// A URL made from `--url` is invalid.
    #[error("{url:?} is not a valid URL")]
    Url {
        /// The URL made.
        url: String,
        /// Why it is invalid.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// The first token could not be obtained.
    #[error("cannot obtain a token from {url}")]
    Token {
        /// The token URL.
        url: String,
        /// Why.
        #[source]
        source: TokenFetchError,
    },
    /// The summary could not be written.
    #[error("cannot write the summary")]
    Output(#[source] io::Error),
}

/// Why a token could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum TokenFetchError {
    /// The call failed (connection, timeout).
    #[error("the token request failed")]
    Request(#[source] CallError),
    /// The token endpoint refused.
    #[error("the token endpoint answered {status}: {body}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// The beginning of its answer.
        body: String,
    },
    /// The answer is not `{"access_token": "...", "expires_in": N}`.
    #[error("the token endpoint's answer is not a token")]
    InvalidAnswer(#[source] serde_json::Error),
    /// `expires_in` is negative or not a number of seconds.
    #[error("the token's expires_in ({expires_in}) is not a number of seconds")]
    InvalidExpiry {
        /// What it said.
        expires_in: f64,
    },
    /// The client id or secret cannot be sent in a header.
    #[error("the client credentials cannot be sent in an HTTP header")]
    InvalidCredentials,
}

/// Why an HTTP call got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The request could not be built.
    #[error("the request cannot be built")]
    Build(#[source] http::Error),
    /// No complete answer within `--timeout`.
    #[error("no answer within {timeout:?}")]
    TimedOut {
        /// The timeout.
        timeout: Duration,
    },
    /// Connecting or sending failed.
    #[error("the request failed")]
    Send(#[source] hyper_util::client::legacy::Error),
    /// The answer broke off.
    #[error("the answer could not be read")]
    Receive(#[source] hyper::Error),
}

/// An answer: status, headers and the whole body.
struct Answered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

/// An HTTP/1.1 client with a connection pool, as a webhook sender has.
#[derive(Clone)]
struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

const USER_AGENT: &str = concat!("incode-gateway-simulate/", env!("CARGO_PKG_VERSION"));

impl Http {
    fn new(timeout: Duration, concurrency: u16) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(usize::from(concurrency))
                .build(connector),
            timeout,
        }
    }

    /// `POST`s `body` and reads the whole answer, all within the timeout.
    async fn post(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Answered, CallError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(header::USER_AGENT, USER_AGENT)
            .body(Full::new(body))
            .map_err(CallError::Build)?;
        request.headers_mut().extend(headers.clone());
        let call = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(CallError::Send)?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(CallError::Receive)?.to_bytes();
            Ok(Answered {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(CallError::TimedOut {
                timeout: self.timeout,
            }))
    }
}

/// Runs `simulate`; reports errors on stderr and returns the exit code: 0 when every
/// notification was acknowledged, 1 when some failed or `simulate` could not run, 130 when
/// interrupted.
pub async fn main(args: SimulateArgs) -> ExitCode {
    match run(&args, &mut io::stdout()).await {
        Ok(summary) if summary.interrupted => ExitCode::from(130),
        Ok(summary) if summary.failed > 0 => ExitCode::FAILURE,
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "incode-gateway simulate: {}",
                incode_gateway::error::error_chain(&error)
            );
            ExitCode::FAILURE
        }
    }
}

/// Sends the notifications, then writes the summary to `out` and returns it. Stops sending at
/// Ctrl-C or SIGTERM and waits for the notifications in flight.
pub async fn run(args: &SimulateArgs, out: &mut impl Write) -> Result<Summary, SimulateError> {
    let http = Http::new(args.timeout, args.concurrency);

    let tokens = match (&args.client_id, &args.client_secret) {
        (Some(id), Some(secret)) => {
            let url = match &args.token_url {
                Some(url) => url.clone(),
                None => endpoint(&args.url, "oauth/token")?,
            };
            let token_error = |source| SimulateError::Token {
                url: url.to_string(),
                source,
            };
            let tokens =
                TokenSource::new(http.clone(), url.clone(), id, secret).map_err(token_error)?;
            let expires_in = tokens.obtain_first().await.map_err(token_error)?;
            eprintln!(
                "obtained a token from {} (expires in {})",
                tokens.url,
                humantime::format_duration(expires_in)
            );
            Some(tokens)
        }
        _ => None,
    };
    let incode = Incode {
        http,
        tokens,
        onboarding_status_url: match &args.webhook_url {
            Some(url) => url.clone(),
            None => endpoint(&args.url, "webhooks/incode/onboarding-status")?,
        },
        watchlist_url: match &args.webhook_url {
            Some(url) => url.clone(),
            None => endpoint(&args.url, "webhooks/incode/watchlist-updated")?,
        },
    };

    let stop = CancellationToken::new();
    let notifications = notifications(args, stop.clone());
    let incode = &incode;
    let deliveries = notifications
        .map(|notification| incode.deliver(notification))
        .buffer_unordered(usize::from(args.concurrency));
    tokio::pin!(deliveries);

    let started = Instant::now();
    let mut tally = Tally::default();
    let mut progress = Progress::new(args.count);
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let interrupted = incode_gateway::server::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        tokio::select! {
            delivery = deliveries.next() => match delivery {
                Some(delivery) => tally.record(delivery),
                None => break,
            },
            _ = ticks.tick() => progress.show(&tally, started.elapsed()),
            () = &mut interrupted, if !stop.is_cancelled() => {
                stop.cancel();
                progress.clear();
                eprintln!("interrupted: no new notifications; waiting for those in flight");
            }
        }
    }
    progress.clear();

    let obtained = incode
        .tokens
        .as_ref()
        .map_or(0, |tokens| tokens.obtained.load(Ordering::Relaxed));
    let summary = tally.summarize(started.elapsed(), obtained, stop.is_cancelled());
    match args.summary {
        SummaryFormat::Text => write!(out, "{summary}"),
        SummaryFormat::Json => serde_json::to_writer(&mut *out, &summary)
            .map_err(io::Error::from)
            .and_then(|()| writeln!(out)),
    }
    .and_then(|()| out.flush())
    .map_err(SimulateError::Output)?;
    if incode.tokens.is_none() && summary.answers.contains_key("401") {
        eprintln!(
            "the gateway refused calls with 401: it wants a bearer token. Give simulate the OAuth \
             client Incode uses: --client-id ID, and the secret in \
             INCODE_GATEWAY_SIMULATE_CLIENT_SECRET"
        );
    }
    Ok(summary)
}

/// `base` with `path` appended to its path.
fn endpoint(base: &Uri, path: &str) -> Result<Uri, SimulateError> {
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |authority| authority.as_str());
    let prefix = base.path().trim_end_matches('/');
    let url = format!("{scheme}://{authority}{prefix}/{path}");
    url.parse()
        .map_err(|source| SimulateError::Url { url, source })
}

mod generator;
mod incode;
mod summary;
#[cfg(test)]
mod tests;
mod token;

use generator::*;
use incode::*;
use summary::*;
use token::*;
