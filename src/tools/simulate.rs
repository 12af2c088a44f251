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
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant, SystemTime},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use futures::{StreamExt, stream};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Options of `simulate`.
#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Base URL of the gateway's public listener. Notifications go to
    /// `{url}/webhooks/incode/onboarding-status` and `{url}/webhooks/incode/watchlist-updated`.
    #[arg(
        long,
        env = "INCODE_GATEWAY_SIMULATE_URL",
        default_value = "http://127.0.0.1:8080",
        value_parser = parse_url
    )]
    pub url: Uri,

    /// Post every notification to this one URL instead (e.g.
    /// `http://127.0.0.1:8080/webhooks/incode`), as Incode does for an organisation that
    /// configured a single callback URL.
    #[arg(
        long,
        env = "INCODE_GATEWAY_SIMULATE_WEBHOOK_URL",
        value_name = "URL",
        value_parser = parse_url
    )]
    pub webhook_url: Option<Uri>,

    /// Where to obtain tokens; `{url}/oauth/token` by default.
    #[arg(
        long,
        env = "INCODE_GATEWAY_SIMULATE_TOKEN_URL",
        value_name = "URL",
        value_parser = parse_url,
        requires = "client_id"
    )]
    pub token_url: Option<Uri>,

    /// OAuth 2.0 client id that Incode authenticates with. With `--client-secret`, a token is
    /// obtained first and sent with every notification; without, notifications carry no
    /// `Authorization` header.
    #[arg(
        long,
        env = "INCODE_GATEWAY_SIMULATE_CLIENT_ID",
        value_name = "ID",
        requires = "client_secret"
    )]
    pub client_id: Option<String>,

    /// OAuth 2.0 client secret. Prefer the environment variable: other users can see command
    /// lines. Never printed.
    #[arg(
        long,
        env = "INCODE_GATEWAY_SIMULATE_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET",
        requires = "client_id"
    )]
    pub client_secret: Option<Secret>,

    /// How many notifications to send.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub count: u64,

    /// Most notifications started per second; as many as `--concurrency` allows when unset.
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// Which notifications to send; `mixed` sends about four onboarding status changes for
    /// every watchlist update.
    #[arg(long, value_enum, default_value_t = Kind::Mixed)]
    pub kind: Kind,

    /// Most notifications in flight at once.
    #[arg(long, value_name = "C", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// How long a call may take before it counts as timed out (and is retried).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,

    /// Seed of the random notifications, to send the same ones again; random when unset.
    #[arg(long)]
    pub seed: Option<u64>,

    /// Format of the summary printed at the end.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub summary: SummaryFormat,
}

/// A secret that `Debug` and error messages never show.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(text.to_owned()))
    }
}

/// Which notifications to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// "Notify onboarding status changed".
    OnboardingStatus,
    /// "Notify global watchlist has updates".
    WatchlistUpdated,
    /// Both, about four onboarding status changes for every watchlist update.
    Mixed,
}

/// Summary formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SummaryFormat {
    /// Aligned lines for people.
    Text,
    /// One JSON object, for scripts.
    Json,
}

/// A plain `http://` URL. (`simulate` speaks HTTP/1.1 without TLS: point it at the gateway's
/// listener, or at the plain side of the proxy that terminates TLS.)
fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|error| format!("not a URL: {error}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some("https"), _) => {
            Err("https is not supported: use the gateway's plain http listener".into())
        }
        _ => Err("expected an http:// URL, e.g. http://127.0.0.1:8080".into()),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate <= 1_000_000.0 => Ok(rate),
        _ => {
            Err("expected a number of notifications per second, above 0 and at most 1000000".into())
        }
    }
}

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
        source: TokenError,
    },
    /// The summary could not be written.
    #[error("cannot write the summary")]
    Output(#[source] io::Error),
}

/// Why a token could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
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
                crate::error::error_chain(&error)
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
    let interrupted = super::interrupted();
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

/// The stream of notifications to send: `--count` of them, at most `--rate` per second, until
/// `stop` is cancelled.
fn notifications(
    args: &SimulateArgs,
    stop: CancellationToken,
) -> impl futures::Stream<Item = Notification> + use<> {
    let generator = Generator::new(args.kind, args.seed);
    let ticks = args.rate.map(|rate| {
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        ticks
    });
    let count = args.count;
    stream::unfold(
        (generator, ticks, 0_u64),
        move |(mut generator, mut ticks, sent)| {
            let stop = stop.clone();
            async move {
                if sent >= count || stop.is_cancelled() {
                    return None;
                }
                if let Some(ticks) = ticks.as_mut() {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        () = stop.cancelled() => return None,
                    }
                }
                Some((generator.next_notification(), (generator, ticks, sent + 1)))
            }
        },
    )
}

/// One notification, ready to send.
#[derive(Debug, Clone)]
struct Notification {
    kind: NotificationKind,
    body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotificationKind {
    OnboardingStatus,
    WatchlistUpdated,
}

/// Incode's statuses in the order a session goes through them.
const LIFECYCLE: [&str; 5] = [
    "ID_VALIDATION_FINISHED",
    "FACE_VALIDATION_FINISHED",
    "GOVERNMENT_VALIDATION_FINISHED",
    "POST_PROCESSING_FINISHED",
    "ONBOARDING_FINISHED",
];

/// The outcome of a manual review, for the sessions that get one after finishing.
const REVIEWS: [&str; 2] = ["MANUAL_REVIEW_APPROVED", "MANUAL_REVIEW_REJECTED"];

/// How many onboarding sessions are in progress at once.
const SESSIONS_IN_PROGRESS: usize = 16;

/// An onboarding session in progress.
struct Session {
    interview_id: String,
    external_id: Option<String>,
    flow_id: Option<String>,
    /// The statuses still to be reported, the next one last.
    remaining: Vec<&'static str>,
}

/// The body of "Notify onboarding status changed", in Incode's field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OnboardingStatusBody<'a> {
    interview_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_id: Option<&'a str>,
    onboarding_status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    flow_id: Option<&'a str>,
}

/// The body of "Notify global watchlist has updates".
#[derive(Serialize)]
struct WatchlistBody<'a> {
    #[serde(rename = "interviewId")]
    interview_id: &'a str,
    #[serde(rename = "ref")]
    reference: &'a str,
    search_id: &'a str,
}

/// Makes up realistic notifications: sessions that move through Incode's statuses, several in
/// progress at once, and watchlist updates about them.
struct Generator {
    rng: fastrand::Rng,
    kind: Kind,
    sessions: Vec<Session>,
}

impl Generator {
    fn new(kind: Kind, seed: Option<u64>) -> Self {
        Self {
            rng: seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
            kind,
            sessions: Vec::new(),
        }
    }

    fn next_notification(&mut self) -> Notification {
        let watchlist = match self.kind {
            Kind::OnboardingStatus => false,
            Kind::WatchlistUpdated => true,
            Kind::Mixed => self.rng.u8(..5) == 0,
        };
        if watchlist {
            self.watchlist_updated()
        } else {
            self.onboarding_status()
        }
    }

    /// A session in progress, started when fewer than [`SESSIONS_IN_PROGRESS`] are.
    fn session(&mut self) -> usize {
        if self.sessions.len() < SESSIONS_IN_PROGRESS {
            let mut remaining: Vec<&'static str> = LIFECYCLE.iter().rev().copied().collect();
            if self.rng.u8(..5) == 0 {
                remaining.insert(0, REVIEWS[self.rng.usize(..REVIEWS.len())]);
            }
            let session = Session {
                interview_id: self.hex(24),
                external_id: self
                    .rng
                    .bool()
                    .then(|| format!("customer-{}", self.rng.u32(1..1_000_000))),
                flow_id: (self.rng.u8(..10) < 7).then(|| self.hex(24)),
                remaining,
            };
            self.sessions.push(session);
        }
        self.rng.usize(..self.sessions.len())
    }

    fn onboarding_status(&mut self) -> Notification {
        let index = self.session();
        let session = &mut self.sessions[index];
        let status = session.remaining.pop().unwrap_or(LIFECYCLE[0]);
        let body = serde_json::to_vec(&OnboardingStatusBody {
            interview_id: &session.interview_id,
            external_id: session.external_id.as_deref(),
            onboarding_status: status,
            flow_id: session.flow_id.as_deref(),
        });
        if session.remaining.is_empty() {
            self.sessions.swap_remove(index);
        }
        Notification {
            kind: NotificationKind::OnboardingStatus,
            // Serialising a struct of strings cannot fail.
            body: body.unwrap_or_default().into(),
        }
    }

    fn watchlist_updated(&mut self) -> Notification {
        let index = self.session();
        let created = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let reference = format!("{created}-{}", self.hex(8));
        let search_id = self.hex(24);
        let body = serde_json::to_vec(&WatchlistBody {
            interview_id: &self.sessions[index].interview_id,
            reference: &reference,
            search_id: &search_id,
        });
        Notification {
            kind: NotificationKind::WatchlistUpdated,
            body: body.unwrap_or_default().into(),
        }
    }

    fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"0123456789abcdef"[self.rng.usize(..16)]))
            .collect()
    }
}

/// Incode's side of the calls.
struct Incode {
    http: Http,
    tokens: Option<TokenSource>,
    onboarding_status_url: Uri,
    watchlist_url: Uri,
}

/// What became of one notification.
struct Delivery {
    attempts: Vec<Attempt>,
    /// Set when no token could be obtained, so nothing was sent.
    token_error: Option<String>,
}

impl Delivery {
    fn acknowledged(&self) -> bool {
        self.attempts
            .last()
            .is_some_and(|attempt| attempt.answer.acknowledged())
    }
}

/// One HTTP call.
struct Attempt {
    latency: Duration,
    answer: Answer,
}

/// How a call was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// A status, and whether the content type was JSON.
    Status { status: StatusCode, json: bool },
    /// No answer within `--timeout`.
    TimedOut,
    /// No answer: the connection failed.
    Failed,
}

impl Answer {
    /// Incode's rule: delivered when answered `200` with a JSON body, or `204`.
    fn acknowledged(&self) -> bool {
        match self {
            Self::Status { status, json } => {
                (*status == StatusCode::OK && *json) || *status == StatusCode::NO_CONTENT
            }
            Self::TimedOut | Self::Failed => false,
        }
    }

    fn label(&self) -> String {
        match self {
            Self::Status { status, json } if *status == StatusCode::OK && !json => {
                "200 not JSON".to_owned()
            }
            Self::Status { status, .. } => status.as_u16().to_string(),
            Self::TimedOut => "timeout".to_owned(),
            Self::Failed => "connection failed".to_owned(),
        }
    }
}

impl Incode {
    /// Sends a notification, and sends it once more, identical, if the first call failed.
    async fn deliver(&self, notification: Notification) -> Delivery {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(tokens) = &self.tokens {
            match tokens.bearer().await {
                Ok(bearer) => {
                    headers.insert(header::AUTHORIZATION, bearer);
                }
                Err(error) => {
                    return Delivery {
                        attempts: Vec::new(),
                        token_error: Some(crate::error::error_chain(&error)),
                    };
                }
            }
        }
        let url = match notification.kind {
            NotificationKind::OnboardingStatus => &self.onboarding_status_url,
            NotificationKind::WatchlistUpdated => &self.watchlist_url,
        };
        let first = self.call(url, &headers, &notification.body).await;
        let retry = !first.answer.acknowledged();
        let mut attempts = vec![first];
        if retry {
            attempts.push(self.call(url, &headers, &notification.body).await);
        }
        Delivery {
            attempts,
            token_error: None,
        }
    }

    async fn call(&self, url: &Uri, headers: &HeaderMap, body: &Bytes) -> Attempt {
        let started = Instant::now();
        let answer = match self.http.post(url, headers, body.clone()).await {
            Ok(answered) => Answer::Status {
                status: answered.status,
                json: is_json(&answered.headers),
            },
            Err(CallError::TimedOut { .. }) => Answer::TimedOut,
            Err(_) => Answer::Failed,
        };
        Attempt {
            latency: started.elapsed(),
            answer,
        }
    }
}

/// Whether the answer's content type is JSON (`application/json`, parameters allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Obtains and caches the bearer token, as Incode does for organisations using OAuth 2.0.
struct TokenSource {
    http: Http,
    url: Uri,
    /// `Basic base64(urlencode(id):urlencode(secret))`.
    authorization: HeaderValue,
    current: Mutex<Option<Token>>,
    obtained: AtomicU64,
}

struct Token {
    /// `Bearer <access_token>`, marked sensitive.
    authorization: HeaderValue,
    /// When to obtain the next one: shortly before this one expires.
    refresh_at: Instant,
}

/// The token endpoint's answer.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: f64,
}

impl TokenSource {
    fn new(
        http: Http,
        url: Uri,
        client_id: &str,
        client_secret: &Secret,
    ) -> Result<Self, TokenError> {
        Ok(Self {
            http,
            url,
            authorization: basic_authorization(client_id, client_secret.expose())?,
            current: Mutex::new(None),
            obtained: AtomicU64::new(0),
        })
    }

    /// Obtains the first token; returns how long it is valid.
    async fn obtain_first(&self) -> Result<Duration, TokenError> {
        let (token, expires_in) = self.obtain().await?;
        *self.current.lock().await = Some(token);
        Ok(expires_in)
    }

    /// The `Authorization` header for the next notification: the current token, or a new one
    /// when it is about to expire. Concurrent callers wait for one request.
    async fn bearer(&self) -> Result<HeaderValue, TokenError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref()
            && Instant::now() < token.refresh_at
        {
            return Ok(token.authorization.clone());
        }
        let (token, _) = self.obtain().await?;
        let authorization = token.authorization.clone();
        *current = Some(token);
        Ok(authorization)
    }

    async fn obtain(&self) -> Result<(Token, Duration), TokenError> {
        let requested = Instant::now();
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let body = Bytes::from_static(b"grant_type=client_credentials");
        let answered = self
            .http
            .post(&self.url, &headers, body)
            .await
            .map_err(TokenError::Request)?;
        if !answered.status.is_success() {
            return Err(TokenError::Refused {
                status: answered.status,
                body: excerpt(&answered.body),
            });
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&answered.body).map_err(TokenError::InvalidAnswer)?;
        let expires_in = Duration::try_from_secs_f64(answer.expires_in).map_err(|_| {
            TokenError::InvalidExpiry {
                expires_in: answer.expires_in,
            }
        })?;
        let mut authorization = HeaderValue::try_from(format!("Bearer {}", answer.access_token))
            .map_err(|_| TokenError::InvalidCredentials)?;
        authorization.set_sensitive(true);
        self.obtained.fetch_add(1, Ordering::Relaxed);
        // Renew a little early (a tenth of the lifetime, at most 30 s) so that no notification
        // goes out with a token that expires on the way.
        let margin = (expires_in / 10).min(Duration::from_secs(30));
        Ok((
            Token {
                authorization,
                refresh_at: requested + (expires_in - margin),
            },
            expires_in,
        ))
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))`, marked sensitive (RFC 6749, section 2.3.1).
fn basic_authorization(client_id: &str, client_secret: &str) -> Result<HeaderValue, TokenError> {
    let encode = |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
    let credentials = format!("{}:{}", encode(client_id), encode(client_secret));
    let mut value = HeaderValue::try_from(format!("Basic {}", BASE64.encode(credentials)))
        .map_err(|_| TokenError::InvalidCredentials)?;
    value.set_sensitive(true);
    Ok(value)
}

/// The beginning of an answer body, for error messages.
fn excerpt(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Counts deliveries as they complete.
#[derive(Default)]
struct Tally {
    sent: u64,
    acknowledged: u64,
    retried: u64,
    failed: u64,
    latencies: Vec<Duration>,
    answers: BTreeMap<String, u64>,
    last_token_error: Option<String>,
}

impl Tally {
    fn record(&mut self, delivery: Delivery) {
        self.sent += 1;
        if delivery.acknowledged() {
            self.acknowledged += 1;
        } else {
            self.failed += 1;
        }
        if delivery.attempts.len() > 1 {
            self.retried += 1;
        }
        for attempt in &delivery.attempts {
            self.latencies.push(attempt.latency);
            *self.answers.entry(attempt.answer.label()).or_default() += 1;
        }
        if let Some(error) = delivery.token_error {
            *self.answers.entry("no token".to_owned()).or_default() += 1;
            self.last_token_error = Some(error);
        }
    }

    fn summarize(mut self, elapsed: Duration, tokens_obtained: u64, interrupted: bool) -> Summary {
        self.latencies.sort_unstable();
        let percentile = |p: usize| {
            // Nearest rank.
            let rank = (self.latencies.len() * p).div_ceil(100).max(1);
            self.latencies.get(rank - 1).map(|latency| millis(*latency))
        };
        let seconds = elapsed.as_secs_f64();
        Summary {
            sent: self.sent,
            acknowledged: self.acknowledged,
            retried: self.retried,
            failed: self.failed,
            requests: self.latencies.len() as u64,
            tokens_obtained,
            elapsed_seconds: seconds,
            per_second: if seconds > 0.0 {
                self.sent as f64 / seconds
            } else {
                0.0
            },
            latency_ms: Latency {
                p50: percentile(50),
                p90: percentile(90),
                p99: percentile(99),
                max: self.latencies.last().map(|latency| millis(*latency)),
            },
            answers: self.answers,
            last_token_error: self.last_token_error,
            interrupted,
        }
    }
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Notifications handled: `acknowledged + failed`.
    pub sent: u64,
    /// Notifications the gateway acknowledged, at the first call or at the retry.
    pub acknowledged: u64,
    /// Notifications whose first call failed, so they were sent a second time.
    pub retried: u64,
    /// Notifications given up: both calls failed, or no token could be obtained.
    pub failed: u64,
    /// HTTP calls made for notifications.
    pub requests: u64,
    /// Tokens obtained from the token endpoint.
    pub tokens_obtained: u64,
    /// Duration of the run.
    pub elapsed_seconds: f64,
    /// Notifications per second.
    pub per_second: f64,
    /// Latency of the HTTP calls, in milliseconds; null without calls.
    pub latency_ms: Latency,
    /// How the calls were answered: a status (`200`, `503`, `200 not JSON`), `timeout`,
    /// `connection failed` or `no token`, with counts.
    pub answers: BTreeMap<String, u64>,
    /// The last reason a token could not be renewed, if any.
    pub last_token_error: Option<String>,
    /// Whether the run was stopped by Ctrl-C or SIGTERM.
    pub interrupted: bool,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// Slowest call.
    pub max: Option<f64>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms =
            |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} ms"));
        writeln!(
            f,
            "sent          {} notifications in {:.2} s ({:.1}/s){}",
            self.sent,
            self.elapsed_seconds,
            self.per_second,
            if self.interrupted {
                ", interrupted"
            } else {
                ""
            }
        )?;
        writeln!(f, "acknowledged  {}", self.acknowledged)?;
        writeln!(f, "retried       {}", self.retried)?;
        writeln!(f, "failed        {}", self.failed)?;
        writeln!(f, "requests      {}", self.requests)?;
        if self.tokens_obtained > 0 {
            writeln!(f, "tokens        {}", self.tokens_obtained)?;
        }
        writeln!(
            f,
            "latency       p50 {} · p90 {} · p99 {} · max {}",
            ms(self.latency_ms.p50),
            ms(self.latency_ms.p90),
            ms(self.latency_ms.p99),
            ms(self.latency_ms.max)
        )?;
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(answer, count)| format!("{answer} ×{count}"))
            .collect();
        writeln!(f, "answers       {}", answers.join(", "))?;
        if let Some(error) = &self.last_token_error {
            writeln!(f, "token error   {error}")?;
        }
        Ok(())
    }
}

/// Progress on stderr: a line rewritten every second on a terminal, otherwise a line every
/// [`Progress::PIPE_INTERVAL`]. Short runs show nothing.
struct Progress {
    total: u64,
    terminal: bool,
    shown_at: Option<Duration>,
}

impl Progress {
    const PIPE_INTERVAL: Duration = Duration::from_secs(5);

    fn new(total: u64) -> Self {
        Self {
            total,
            terminal: io::stderr().is_terminal(),
            shown_at: None,
        }
    }

    fn show(&mut self, tally: &Tally, elapsed: Duration) {
        let interval = if self.terminal {
            Duration::from_secs(1)
        } else {
            Self::PIPE_INTERVAL
        };
        if elapsed < interval || self.shown_at.is_some_and(|at| elapsed < at + interval) {
            return;
        }
        self.shown_at = Some(elapsed);
        let line = format!(
            "sent {}/{} · acknowledged {} · retried {} · failed {} · {:.0}/s",
            tally.sent,
            self.total,
            tally.acknowledged,
            tally.retried,
            tally.failed,
            tally.sent as f64 / elapsed.as_secs_f64()
        );
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn clear(&mut self) {
        if self.terminal && self.shown_at.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_authorization_form_encodes_id_and_secret() {
        let value = basic_authorization("id:1", "p@ss word/+").unwrap();
        assert!(value.is_sensitive());
        let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(BASE64.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "id%3A1:p%40ss+word%2F%2B");
    }

    #[test]
    fn incode_counts_200_json_and_204_as_delivered() {
        let answer = |status: u16, json: bool| Answer::Status {
            status: StatusCode::from_u16(status).unwrap(),
            json,
        };
        assert!(answer(200, true).acknowledged());
        assert!(answer(204, false).acknowledged());
        assert!(!answer(200, false).acknowledged());
        assert!(!answer(201, true).acknowledged());
        assert!(!answer(503, true).acknowledged());
        assert!(!Answer::TimedOut.acknowledged());
        assert!(!Answer::Failed.acknowledged());
    }

    #[test]
    fn json_content_types_are_recognised() {
        let headers = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            headers
        };
        assert!(is_json(&headers("application/json")));
        assert!(is_json(&headers("Application/JSON; charset=utf-8")));
        assert!(!is_json(&headers("text/plain")));
        assert!(!is_json(&headers("application/jsonp")));
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn sessions_go_through_incode_statuses_in_order_and_never_repeat() {
        let mut generator = Generator::new(Kind::OnboardingStatus, Some(7));
        let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for _ in 0..500 {
            let notification = generator.next_notification();
            assert_eq!(notification.kind, NotificationKind::OnboardingStatus);
            let body: serde_json::Value = serde_json::from_slice(&notification.body).unwrap();
            let id = body["interviewId"].as_str().unwrap();
            assert_eq!(id.len(), 24);
            let status = body["onboardingStatus"].as_str().unwrap().to_owned();
            seen.entry(id.to_owned()).or_default().push(status);
        }
        assert!(
            seen.len() > SESSIONS_IN_PROGRESS,
            "sessions finish and new ones start"
        );
        for statuses in seen.values() {
            assert!(statuses.len() <= LIFECYCLE.len() + 1, "{statuses:?}");
            for (status, expected) in statuses.iter().zip(LIFECYCLE) {
                assert_eq!(status, expected);
            }
            if let Some(review) = statuses.get(LIFECYCLE.len()) {
                assert!(REVIEWS.contains(&review.as_str()), "{statuses:?}");
            }
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_onboarding_notifications() {
        let bodies = |seed| {
            let mut generator = Generator::new(Kind::OnboardingStatus, Some(seed));
            (0..20)
                .map(|_| generator.next_notification().body)
                .collect::<Vec<_>>()
        };
        assert_eq!(bodies(1), bodies(1));
        assert_ne!(bodies(1), bodies(2));
    }

    #[test]
    fn mixed_sends_both_kinds() {
        let mut generator = Generator::new(Kind::Mixed, Some(3));
        let kinds: Vec<_> = (0..100)
            .map(|_| generator.next_notification().kind)
            .collect();
        let watchlist = kinds
            .iter()
            .filter(|kind| **kind == NotificationKind::WatchlistUpdated)
            .count();
        assert!(
            (5..50).contains(&watchlist),
            "{watchlist} watchlist updates in 100"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut tally = Tally::default();
        for ms in 1..=100 {
            tally.record(Delivery {
                attempts: vec![Attempt {
                    latency: Duration::from_millis(ms),
                    answer: Answer::Status {
                        status: StatusCode::OK,
                        json: true,
                    },
                }],
                token_error: None,
            });
        }
        let summary = tally.summarize(Duration::from_secs(1), 0, false);
        assert_eq!(summary.latency_ms.p50, Some(50.0));
        assert_eq!(summary.latency_ms.p90, Some(90.0));
        assert_eq!(summary.latency_ms.p99, Some(99.0));
        assert_eq!(summary.latency_ms.max, Some(100.0));
        assert_eq!(
            (summary.sent, summary.acknowledged, summary.requests),
            (100, 100, 100)
        );
    }

    #[test]
    fn secrets_are_not_shown_by_debug() {
        let secret: Secret = "hunter2".parse().unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn endpoints_append_to_the_base_path() {
        let url = |base: &str, path| {
            endpoint(&parse_url(base).unwrap(), path)
                .unwrap()
                .to_string()
        };
        assert_eq!(
            url("http://127.0.0.1:8080", "oauth/token"),
            "http://127.0.0.1:8080/oauth/token"
        );
        assert_eq!(
            url(
                "http://gw.internal/prefix/",
                "webhooks/incode/onboarding-status"
            ),
            "http://gw.internal/prefix/webhooks/incode/onboarding-status"
        );
        assert!(parse_url("https://gw.example").is_err());
        assert!(parse_url("127.0.0.1:8080").is_err());
    }
}
