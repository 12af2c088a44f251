//! How many durable consumers and consumer groups may exist. The two share one namespace and one
//! limit (`--max-consumers`); on top of it, each subscriber identity may create at most
//! `--max-consumers-per-subscriber` of them, so that one subscriber cannot use up the room of
//! all.
//!
//! The total is counted from the records themselves (`consumer.<name>`, `group.<name>`). Who
//! created what is kept beside them as one marker per creation,
//! `quota.<subscriber digest>.<kind>.<name>`, whose value is the subscriber's name for an
//! operator to read. The subscriber is a digest because a subscriber's name may hold dots and be
//! a prefix of another's (`billing`, `billing.eu`): counting the markers of one subscriber is a
//! prefix count, which needs the subscriber to be one fixed-length part of the key.
//!
//! Like the limit before it, the count is checked, then the name created: replicas creating names
//! at the same moment may overshoot a limit by a few.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::names::NameKind;
use crate::{
    error::{ErrorKind, ServiceError},
    log::{LogError, SharedState},
};

/// Key prefix of the creation markers.
const MARKER_PREFIX: &str = "quota.";

/// Who creates a consumer or group, or joins a group: the subscriber identity of the internal
/// listener. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberIdentity {
    name: Arc<str>,
    authenticated: bool,
}

impl SubscriberIdentity {
    /// Name of the identity of callers that authenticate as nobody.
    pub const ANONYMOUS: &str = "anonymous";

    /// A configured subscriber, or the name a client certificate stands for.
    pub fn authenticated(name: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            authenticated: true,
        }
    }

    /// A caller that did not authenticate (where nothing requires it). Such callers cannot be
    /// told apart, so only the total limit applies to them.
    pub fn anonymous() -> Self {
        Self {
            name: Arc::from(Self::ANONYMOUS),
            authenticated: false,
        }
    }

    /// The name, as logs and metrics show it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the caller proved who it is.
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// The key part that stands for this identity in markers: 32 hex digits of the SHA-256 of
    /// its name in lowercase (subscriber names are unique ignoring case).
    fn digest(&self) -> String {
        let digest = Sha256::digest(self.name.to_ascii_lowercase().as_bytes());
        digest[..16]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl fmt::Display for SubscriberIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Most durable consumers and consumer groups together.
    pub max_total: usize,
    /// Most of them one authenticated subscriber identity may create.
    pub max_per_subscriber: usize,
}

impl Default for QuotaSettings {
    fn default() -> Self {
        Self {
            max_total: 10_000,
            max_per_subscriber: 1_000,
        }
    }
}

/// Why a new consumer or group was refused.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// Consumers and groups together are at the limit.
    #[error(
        "too many durable consumers and consumer groups ({max}, the two counted together); reuse an existing name or ask the operator to raise --max-consumers"
    )]
    TooMany {
        /// The limit.
        max: usize,
    },
    /// The subscriber created as many as one subscriber may.
    #[error(
        "subscriber `{subscriber}` created as many durable consumers and consumer groups as one subscriber may ({max}); reuse one of them or ask the operator to raise --max-consumers-per-subscriber"
    )]
    TooManyForSubscriber {
        /// The subscriber's name.
        subscriber: String,
        /// The limit.
        max: usize,
    },
    /// The store failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ServiceError for QuotaError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::TooMany { .. } | Self::TooManyForSubscriber { .. } => {
                ErrorKind::ResourceExhausted
            }
            Self::Log(error) => error.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::TooMany { .. } => "too_many_consumers",
            Self::TooManyForSubscriber { .. } => "too_many_consumers_for_subscriber",
            Self::Log(error) => error.code(),
        }
    }
}

/// The limits on consumers and groups, over the state store that holds both.
#[derive(Clone)]
pub struct Quota {
    state: SharedState,
    limits: QuotaSettings,
}

impl Quota {
    /// The limits `limits` over the names kept in `state`.
    pub fn new(state: SharedState, limits: QuotaSettings) -> Self {
        Self { state, limits }
    }

    /// Makes room for a new consumer or group `name` that `creator` is about to create: refused
    /// when the total or the creator's share is used up; otherwise the creation is charged to the
    /// creator (an authenticated one) before the caller creates the record.
    pub async fn admit(
        &self,
        creator: &SubscriberIdentity,
        kind: NameKind,
        name: &str,
    ) -> Result<(), QuotaError> {
        let state = &self.state;
        let max = self.limits.max_total;
        let total = state.count(NameKind::Consumer.prefix()).await?
            + state.count(NameKind::Group.prefix()).await?;
        if total >= max {
            return Err(QuotaError::TooMany { max });
        }
        if !creator.is_authenticated() {
            return Ok(());
        }
        let subscriber = format!("{MARKER_PREFIX}{}.", creator.digest());
        let max = self.limits.max_per_subscriber;
        if state.count(&subscriber).await? >= max {
            return Err(QuotaError::TooManyForSubscriber {
                subscriber: creator.name().to_owned(),
                max,
            });
        }
        let marker = format!("{subscriber}{}.{name}", kind.word());
        // A marker left by an earlier attempt whose record was never written is a conflict:
        // the name is charged once either way.
        state
            .put(&marker, Bytes::from(creator.name().to_owned()), None)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::log::{MemoryLog, memory::MemorySettings};

    fn state() -> SharedState {
        Arc::new(MemoryLog::new(MemorySettings::new(Duration::from_secs(60))))
    }

    /// A quota with these limits over a new state store.
    fn limited(max_total: usize, max_per_subscriber: usize) -> (SharedState, Quota) {
        let state = state();
        let limits = QuotaSettings {
            max_total,
            max_per_subscriber,
        };
        let quota = Quota::new(state.clone(), limits);
        (state, quota)
    }

    async fn create(state: &SharedState, kind: NameKind, name: &str) {
        let key = format!("{}{name}", kind.prefix());
        state.put(&key, Bytes::new(), None).await.unwrap();
    }

    #[tokio::test]
    async fn consumers_and_groups_count_against_one_total() {
        let (state, quota) = limited(2, 10);
        let anonymous = SubscriberIdentity::anonymous();
        quota
            .admit(&anonymous, NameKind::Consumer, "c")
            .await
            .unwrap();
        create(&state, NameKind::Consumer, "c").await;
        quota.admit(&anonymous, NameKind::Group, "g").await.unwrap();
        create(&state, NameKind::Group, "g").await;
        for kind in [NameKind::Consumer, NameKind::Group] {
            let error = quota.admit(&anonymous, kind, "more").await.unwrap_err();
            assert!(matches!(error, QuotaError::TooMany { max: 2 }), "{error}");
            assert_eq!(error.kind(), ErrorKind::ResourceExhausted);
        }
        // Anonymous creations are charged to nobody.
        assert_eq!(state.count(MARKER_PREFIX).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn each_subscriber_has_its_own_share_whatever_its_name() {
        let (state, quota) = limited(100, 2);
        // One name is a prefix of the other, dots included: their shares stay apart.
        let billing = SubscriberIdentity::authenticated("billing");
        let billing_eu = SubscriberIdentity::authenticated("billing.eu");
        for (kind, name) in [(NameKind::Consumer, "b-1"), (NameKind::Group, "b-2")] {
            quota.admit(&billing, kind, name).await.unwrap();
            create(&state, kind, name).await;
        }
        let error = quota
            .admit(&billing, NameKind::Group, "b-3")
            .await
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "subscriber `billing` created as many durable consumers and consumer groups as one subscriber may (2); reuse one of them or ask the operator to raise --max-consumers-per-subscriber"
        );
        assert_eq!(error.code(), "too_many_consumers_for_subscriber");
        quota
            .admit(&billing_eu, NameKind::Consumer, "e-1")
            .await
            .unwrap();
        // Case does not make another subscriber.
        let shouting = SubscriberIdentity::authenticated("BILLING");
        assert!(
            quota
                .admit(&shouting, NameKind::Consumer, "x")
                .await
                .is_err()
        );
        // Anonymous callers are bounded by the total only.
        let anonymous = SubscriberIdentity::anonymous();
        for n in 0..3 {
            quota
                .admit(&anonymous, NameKind::Consumer, &format!("a-{n}"))
                .await
                .unwrap();
        }
    }
}
