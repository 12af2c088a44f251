//! The log of refused requests, rate-limited: anyone on the internet can send refused requests as
//! fast as the network allows, and a line for each would let them fill the disk, drown the lines
//! that matter and cost the gateway more than the refusal itself.
//!
//! Whoever answers a refusal attaches a [`Rejection`] to the answer; [`log_rejections`], around
//! every route, writes it, at most [`LINES_PER_WINDOW`] lines per `error` code in each
//! [`WINDOW`]. The first line of a code after a window in which some went unlogged says how many
//! (`suppressed`). The metrics count every refusal, logged or not.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::Response,
};

use super::{AppState, ClientAddress};

/// How long one window of the rate limit lasts.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Most lines per `error` code in one window.
pub const LINES_PER_WINDOW: u32 = 10;

/// A refusal, as its answer carries it to the log.
#[derive(Debug, Clone)]
pub(super) struct Rejection {
    status: StatusCode,
    code: &'static str,
    /// What the caller was told.
    detail: String,
    /// What the caller was not told (which check failed), for the operator; never a secret.
    reason: Option<String>,
    /// Logged as a warning rather than as information: the gateway's own limits (busy,
    /// throttling), which an operator may need to act on.
    warn: bool,
}

impl Rejection {
    /// A refusal answered `status`, with this `error` code and detail.
    pub(super) fn new(status: StatusCode, code: &'static str, detail: String) -> Self {
        Self {
            status,
            code,
            detail,
            reason: None,
            warn: false,
        }
    }

    /// The precise reason, for the log only.
    pub(super) fn with_reason(mut self, reason: String) -> Self {
        self.reason = Some(reason);
        self
    }

    /// Logged as a warning.
    pub(super) fn logged_as_warning(mut self) -> Self {
        self.warn = true;
        self
    }

    /// Adds the precise reason to the rejection `response` carries, if it carries one.
    pub(super) fn add_reason(response: &mut Response, reason: String) {
        if let Some(rejection) = response.extensions_mut().get_mut::<Self>() {
            rejection.reason = Some(reason);
        }
    }

    fn write(&self, client: Option<IpAddr>, suppressed: u64) {
        let status = self.status.as_u16();
        let (error, detail, reason) = (self.code, &self.detail, self.reason.as_deref());
        let client = client.map(tracing::field::display);
        // Fields that are `None` are left out: the common line stays short.
        let suppressed = (suppressed > 0).then_some(suppressed);
        let window_secs = suppressed.map(|_| WINDOW.as_secs());
        if self.warn {
            tracing::warn!(status, error, %detail, reason, client, suppressed, window_secs, "request rejected");
        } else {
            tracing::info!(status, error, %detail, reason, client, suppressed, window_secs, "request rejected");
        }
    }
}

/// The rate limit on rejection lines: a fixed window per `error` code.
#[derive(Debug, Default)]
pub(super) struct RejectionLog {
    /// One entry per code: the codes are `&'static str`, so the map cannot grow without bound.
    windows: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

/// What to do with one rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Log it, saying that this many of its code went unlogged in the window before.
    Log { suppressed_before: u64 },
    /// Count it only.
    Suppress,
}

impl RejectionLog {
    fn judge(&self, code: &'static str, now: Instant) -> Verdict {
        let mut windows = self.windows.lock().unwrap_or_else(PoisonError::into_inner);
        let window = windows.entry(code).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        let mut suppressed_before = 0;
        if now.duration_since(window.started) >= WINDOW {
            suppressed_before = window.suppressed;
            *window = Window {
                started: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if window.logged < LINES_PER_WINDOW {
            window.logged += 1;
            Verdict::Log { suppressed_before }
        } else {
            window.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// Logs `rejection` (from `client`, when known) unless its code has had its lines in this
    /// window.
    pub(super) fn record(&self, rejection: &Rejection, client: Option<IpAddr>) {
        if let Verdict::Log { suppressed_before } = self.judge(rejection.code, Instant::now()) {
            rejection.write(client, suppressed_before);
        }
    }
}

/// Around every route: logs the [`Rejection`] an answer carries, within the rate limit, inside
/// the request's span (so the line carries its trace id).
pub(super) async fn log_rejections(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let client = client_of(&request);
    let mut response = next.run(request).await;
    if let Some(rejection) = response.extensions_mut().remove::<Rejection>() {
        state.rejections().record(&rejection, client);
    }
    response
}

/// The client's address as the listener resolved it, else the TCP peer.
fn client_of(request: &Request) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<ClientAddress>()
        .map(|client| client.0)
        .or_else(|| {
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0.ip())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_logs_a_few_lines_per_window_then_says_how_many_it_did_not() {
        let log = RejectionLog::default();
        let start = Instant::now();
        let verdicts: Vec<_> = (0..100).map(|_| log.judge("not_found", start)).collect();
        let logged = verdicts
            .iter()
            .filter(|verdict| **verdict != Verdict::Suppress)
            .count();
        assert_eq!(logged, LINES_PER_WINDOW as usize);
        assert!(
            verdicts[..LINES_PER_WINDOW as usize]
                .iter()
                .all(|verdict| *verdict
                    == Verdict::Log {
                        suppressed_before: 0
                    })
        );
        // Another code has its own budget.
        assert_eq!(
            log.judge("invalid_json", start),
            Verdict::Log {
                suppressed_before: 0
            }
        );
        // Still the same window, however long the flood goes on.
        let late = start + WINDOW - Duration::from_millis(1);
        assert_eq!(log.judge("not_found", late), Verdict::Suppress);
        // The next window's first line says how many were not logged.
        let next = start + WINDOW;
        assert_eq!(
            log.judge("not_found", next),
            Verdict::Log {
                suppressed_before: 100 - u64::from(LINES_PER_WINDOW) + 1
            }
        );
        assert_eq!(
            log.judge("not_found", next),
            Verdict::Log {
                suppressed_before: 0
            }
        );
    }
}
