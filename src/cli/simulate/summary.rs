use super::*;

/// Counts deliveries as they complete.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) sent: u64,
    pub(super) acknowledged: u64,
    pub(super) retried: u64,
    pub(super) failed: u64,
    pub(super) latencies: Vec<Duration>,
    pub(super) answers: BTreeMap<String, u64>,
    pub(super) last_token_error: Option<String>,
}

impl Tally {
    pub(super) fn record(&mut self, delivery: Delivery) {
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

    pub(super) fn summarize(
        mut self,
        elapsed: Duration,
        tokens_obtained: u64,
        interrupted: bool,
    ) -> Summary {
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

pub(super) fn millis(duration: Duration) -> f64 {
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
pub(super) struct Progress {
    pub(super) total: u64,
    pub(super) terminal: bool,
    pub(super) shown_at: Option<Duration>,
}

impl Progress {
    const PIPE_INTERVAL: Duration = Duration::from_secs(5);

    pub(super) fn new(total: u64) -> Self {
        Self {
            total,
            terminal: io::stderr().is_terminal(),
            shown_at: None,
        }
    }

    pub(super) fn show(&mut self, tally: &Tally, elapsed: Duration) {
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

    pub(super) fn clear(&mut self) {
        if self.terminal && self.shown_at.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }
}
