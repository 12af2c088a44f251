//! Throttling of failed client authentication, per source address, so that a client secret
//! cannot be guessed at speed (and argon2 cannot be used to burn the gateway's CPU).
//!
//! Each attempt is charged before the secret is checked and refunded if it succeeds, so
//! concurrent guesses are counted too while a client with the right secret is never slowed by
//! its own calls. The budget is a GCRA over failures: `burst` attempts at once, then one every
//! `replenish_every`. (`governor` implements GCRA too, but charges on every check and offers no
//! refund; its keyed store also grows until pruned by hand.)
//!
//! The source is the client's address: the TCP peer, or behind a trusted proxy the address the
//! proxy reports (see [`crate::http`]), so that an attacker behind the same proxy as Incode only
//! throttles itself.
//!
//! Memory is bounded: at most `max_sources` sources are tracked; sources whose budget is full
//! again are pruned when room is needed. When the table is still full, the throttle fails
//! closed: every source it cannot track shares one more budget of the same size, so no source
//! goes unthrottled, however many addresses an attacker has. IPv6 sources are tracked per /64,
//! the block a single host usually has.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// The throttle's parameters.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleSettings {
    /// Whether failures are throttled at all.
    pub enabled: bool,
    /// Failed attempts allowed in a row before throttling starts.
    pub burst: u32,
    /// After that, one more attempt per this much time.
    pub replenish_every: Duration,
    /// Most sources tracked at once.
    pub max_sources: usize,
    /// Least time between two prunings of the table when it is full.
    pub prune_interval: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            burst: 10,
            replenish_every: Duration::from_secs(6),
            max_sources: 65_536,
            prune_interval: Duration::from_secs(1),
        }
    }
}

/// The source has no attempts left for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled {
    /// When the next attempt will be allowed.
    pub retry_after: Duration,
}

/// Per-source budget of failed authentication attempts.
#[derive(Debug)]
pub struct FailureThrottle {
    settings: ThrottleSettings,
    // A std mutex: the critical sections are a hash map access, never held across an await.
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Per source, the GCRA "theoretical arrival time": the budget is full again at that instant.
    sources: HashMap<IpAddr, Instant>,
    /// The shared budget of the sources that do not fit in `sources`.
    overflow: Option<Instant>,
    next_prune: Option<Instant>,
}

/// One attempt charged by [`FailureThrottle::try_acquire`], to give back with
/// [`FailureThrottle::refund`] when it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge(Budget);

/// Whose budget an attempt was charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Budget {
    /// The throttle is off: nothing was charged.
    None,
    /// A tracked source's own budget.
    Source(IpAddr),
    /// The budget shared by the sources the full table cannot track.
    Overflow,
}

impl FailureThrottle {
    /// A throttle with these parameters.
    pub fn new(settings: ThrottleSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(State {
                sources: HashMap::new(),
                overflow: None,
                next_prune: None,
            }),
        }
    }

    /// Charges one attempt to `source`, or says when it may try again.
    pub fn try_acquire(&self, source: IpAddr, now: Instant) -> Result<Charge, Throttled> {
        if !self.settings.enabled {
            return Ok(Charge(Budget::None));
        }
        let key = source_key(source);
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(full_at) = state.sources.get_mut(&key) {
            self.charge(full_at, now)?;
            return Ok(Charge(Budget::Source(key)));
        }
        if state.sources.len() >= self.settings.max_sources {
            self.prune(&mut state, now);
        }
        if state.sources.len() < self.settings.max_sources {
            state
                .sources
                .insert(key, now + self.settings.replenish_every);
            return Ok(Charge(Budget::Source(key)));
        }
        // Fail closed: untracked sources share one budget rather than go unthrottled.
        let full_at = state.overflow.get_or_insert(now);
        self.charge(full_at, now)?;
        Ok(Charge(Budget::Overflow))
    }

    /// One GCRA step: take one attempt from the budget that is full again at `full_at`.
    fn charge(&self, full_at: &mut Instant, now: Instant) -> Result<(), Throttled> {
        let period = self.settings.replenish_every;
        let tolerance = period.saturating_mul(self.settings.burst.saturating_sub(1));
        let debt = full_at.saturating_duration_since(now);
        if debt > tolerance {
            return Err(Throttled {
                retry_after: debt - tolerance,
            });
        }
        *full_at = (*full_at).max(now) + period;
        Ok(())
    }

    /// Gives back an attempt charged by [`Self::try_acquire`]: it succeeded, or was never
    /// checked.
    pub fn refund(&self, charge: Charge, now: Instant) {
        let period = self.settings.replenish_every;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match charge.0 {
            Budget::None => {}
            Budget::Source(key) => {
                if let Some(full_at) = state.sources.get(&key).copied() {
                    match full_at.checked_sub(period) {
                        Some(earlier) if earlier > now => {
                            state.sources.insert(key, earlier);
                        }
                        _ => {
                            state.sources.remove(&key);
                        }
                    }
                }
            }
            Budget::Overflow => {
                if let Some(full_at) = state.overflow {
                    state.overflow = full_at.checked_sub(period).filter(|earlier| *earlier > now);
                }
            }
        }
    }

    /// How many sources are tracked.
    pub fn tracked_sources(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .sources
            .len()
    }

    fn prune(&self, state: &mut State, now: Instant) {
        if state.next_prune.is_some_and(|next| now < next) {
            return;
        }
        state.sources.retain(|_, full_at| *full_at > now);
        state.next_prune = Some(now + self.settings.prune_interval);
        if state.sources.len() >= self.settings.max_sources {
            tracing::warn!(
                tracked = state.sources.len(),
                "too many client addresses are failing client authentication to track them all; \
                 the others share one budget until some recover"
            );
        }
    }
}

/// IPv4 (also when mapped into IPv6) per address, IPv6 per /64.
fn source_key(source: IpAddr) -> IpAddr {
    match source.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ThrottleSettings {
        ThrottleSettings {
            enabled: true,
            burst: 3,
            replenish_every: Duration::from_secs(10),
            max_sources: 4,
            prune_interval: Duration::from_secs(1),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_burst_of_failures_is_allowed_then_one_per_period() {
        let throttle = FailureThrottle::new(settings());
        let start = Instant::now();
        let source = ip("192.0.2.1");
        for _ in 0..3 {
            throttle.try_acquire(source, start).unwrap();
        }
        assert_eq!(
            throttle.try_acquire(source, start),
            Err(Throttled {
                retry_after: Duration::from_secs(10)
            })
        );
        // Being refused costs nothing more.
        let later = start + Duration::from_secs(4);
        assert_eq!(
            throttle.try_acquire(source, later),
            Err(Throttled {
                retry_after: Duration::from_secs(6)
            })
        );
        let after_one_period = start + Duration::from_secs(10);
        throttle.try_acquire(source, after_one_period).unwrap();
        assert!(throttle.try_acquire(source, after_one_period).is_err());
        // Another source is not affected.
        throttle.try_acquire(ip("192.0.2.2"), start).unwrap();
    }

    #[test]
    fn successes_are_refunded_so_they_never_throttle() {
        let throttle = FailureThrottle::new(settings());
        let now = Instant::now();
        let source = ip("192.0.2.1");
        for _ in 0..100 {
            let charge = throttle.try_acquire(source, now).unwrap();
            throttle.refund(charge, now);
        }
        assert_eq!(throttle.tracked_sources(), 0);
    }

    #[test]
    fn ipv6_is_tracked_per_64_and_mapped_ipv4_as_ipv4() {
        let throttle = FailureThrottle::new(settings());
        let now = Instant::now();
        for host in 1..=3 {
            throttle
                .try_acquire(ip(&format!("2001:db8::{host}")), now)
                .unwrap();
        }
        assert!(throttle.try_acquire(ip("2001:db8::ffff:1"), now).is_err());
        throttle.try_acquire(ip("2001:db8:0:1::1"), now).unwrap();

        for _ in 0..3 {
            throttle.try_acquire(ip("::ffff:192.0.2.9"), now).unwrap();
        }
        assert!(throttle.try_acquire(ip("192.0.2.9"), now).is_err());
    }

    #[test]
    fn the_table_is_bounded_and_recovered_sources_are_pruned() {
        let throttle = FailureThrottle::new(settings());
        let start = Instant::now();
        for host in 1..=4 {
            throttle
                .try_acquire(ip(&format!("192.0.2.{host}")), start)
                .unwrap();
        }
        assert_eq!(throttle.tracked_sources(), 4);
        // Once the early sources have recovered, newcomers are tracked again.
        let recovered = start + Duration::from_secs(11);
        for _ in 0..3 {
            throttle.try_acquire(ip("198.51.100.1"), recovered).unwrap();
        }
        assert_eq!(throttle.tracked_sources(), 1);
        assert!(throttle.try_acquire(ip("198.51.100.1"), recovered).is_err());
    }

    #[test]
    fn a_full_table_fails_closed() {
        let throttle = FailureThrottle::new(settings());
        let start = Instant::now();
        // Four sources, out of attempts for the next 30 s: nothing to prune.
        for host in 1..=4 {
            for _ in 0..3 {
                throttle
                    .try_acquire(ip(&format!("192.0.2.{host}")), start)
                    .unwrap();
            }
        }
        // Sources that do not fit share one budget: three attempts in all, not three each.
        let mut outcomes = Vec::new();
        for host in 10..16 {
            outcomes.push(
                throttle
                    .try_acquire(ip(&format!("192.0.2.{host}")), start)
                    .is_ok(),
            );
        }
        assert_eq!(outcomes, [true, true, true, false, false, false]);
        assert_eq!(throttle.tracked_sources(), 4);
        // A success among them gives its attempt back to the shared budget.
        let later = start + Duration::from_millis(500);
        assert!(throttle.try_acquire(ip("192.0.2.20"), later).is_err());
        let after_a_period = start + Duration::from_secs(10);
        let charge = throttle
            .try_acquire(ip("192.0.2.21"), after_a_period)
            .unwrap();
        assert_eq!(charge, Charge(Budget::Overflow));
        throttle.refund(charge, after_a_period);
        assert!(
            throttle
                .try_acquire(ip("192.0.2.22"), after_a_period)
                .is_ok()
        );
    }

    #[test]
    fn a_disabled_throttle_never_refuses_or_tracks() {
        let throttle = FailureThrottle::new(ThrottleSettings {
            enabled: false,
            ..settings()
        });
        let now = Instant::now();
        for _ in 0..100 {
            throttle.try_acquire(ip("192.0.2.1"), now).unwrap();
        }
        assert_eq!(throttle.tracked_sources(), 0);
    }
}
