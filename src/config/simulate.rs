//! The arguments of `incode-gateway simulate` (the tool itself is the binary's `cli::simulate`).

use std::time::Duration;

use clap::{Args, ValueEnum};
use http::Uri;

use crate::auth::Secret;

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
pub fn parse_url(text: &str) -> Result<Uri, String> {
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
