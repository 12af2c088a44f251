use super::*;

/// The stream of notifications to send: `--count` of them, at most `--rate` per second, until
/// `stop` is cancelled.
pub(super) fn notifications(
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
pub(super) struct Notification {
    pub(super) kind: NotificationKind,
    pub(super) body: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotificationKind {
    OnboardingStatus,
    WatchlistUpdated,
}

/// Incode's statuses in the order a session goes through them.
pub(super) const LIFECYCLE: [&str; 5] = [
    "ID_VALIDATION_FINISHED",
    "FACE_VALIDATION_FINISHED",
    "GOVERNMENT_VALIDATION_FINISHED",
    "POST_PROCESSING_FINISHED",
    "ONBOARDING_FINISHED",
];

/// The outcome of a manual review, for the sessions that get one after finishing.
pub(super) const REVIEWS: [&str; 2] = ["MANUAL_REVIEW_APPROVED", "MANUAL_REVIEW_REJECTED"];

/// How many onboarding sessions are in progress at once.
pub(super) const SESSIONS_IN_PROGRESS: usize = 16;

/// An onboarding session in progress.
pub(super) struct Session {
    pub(super) interview_id: String,
    pub(super) external_id: Option<String>,
    pub(super) flow_id: Option<String>,
    /// The statuses still to be reported, the next one last.
    pub(super) remaining: Vec<&'static str>,
}

/// The body of "Notify onboarding status changed", in Incode's field order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct OnboardingStatusBody<'a> {
    pub(super) interview_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) external_id: Option<&'a str>,
    pub(super) onboarding_status: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) flow_id: Option<&'a str>,
}

/// The body of "Notify global watchlist has updates".
#[derive(Serialize)]
pub(super) struct WatchlistBody<'a> {
    #[serde(rename = "interviewId")]
    pub(super) interview_id: &'a str,
    #[serde(rename = "ref")]
    pub(super) reference: &'a str,
    pub(super) search_id: &'a str,
}

/// Makes up realistic notifications: sessions that move through Incode's statuses, several in
/// progress at once, and watchlist updates about them.
pub(super) struct Generator {
    pub(super) rng: fastrand::Rng,
    pub(super) kind: Kind,
    pub(super) sessions: Vec<Session>,
}

impl Generator {
    pub(super) fn new(kind: Kind, seed: Option<u64>) -> Self {
        Self {
            rng: seed.map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed),
            kind,
            sessions: Vec::new(),
        }
    }

    pub(super) fn next_notification(&mut self) -> Notification {
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
    pub(super) fn session(&mut self) -> usize {
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

    pub(super) fn onboarding_status(&mut self) -> Notification {
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

    pub(super) fn watchlist_updated(&mut self) -> Notification {
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

    pub(super) fn hex(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| char::from(b"0123456789abcdef"[self.rng.usize(..16)]))
            .collect()
    }
}
