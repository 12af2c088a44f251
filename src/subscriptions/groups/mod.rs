//! Consumer groups: the replicas of one internal service share the stream. Each event goes to one
//! member, every event of one interview to the same member, in sequence order.
//!
//! A group has a fixed number of partitions; an event's partition is a stable hash of its
//! interview id ([`records::partition_of`]). Each partition has a cursor (its last acknowledged
//! sequence) and at most one owner. Members agree on the assignment without a leader: they
//! renew themselves in the group's record, see the same sorted list of live members, and each
//! member takes the partitions `p` with `p % members == its index` once their previous owner let
//! go or expired, and lets go of the others. Every change is a compare-and-set in the
//! [`StateStore`](crate::log::StateStore), so the group works the same over the embedded log
//! and over JetStream, with members on different gateway replicas.
//!
//! Delivery is at least once: a partition that changes owner resumes after its cursor, so what
//! the previous owner did not acknowledge is delivered again, in order. A member that lost a
//! partition cannot move its cursor: its ack is refused (fencing), and its stream is told.
//!
//! A member belongs to one group and to the subscriber identity that joined it: an ack naming
//! the member is taken only for that group from that subscriber, on whichever gateway it
//! arrives. Its id is a capability all the same, so logs show only a [`MemberId::fingerprint`].

pub mod records;
mod session;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, Weak},
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};

pub use records::partition_of;
pub use session::{Claim, Member, Session};

use super::{
    names::{GroupName, NameKind},
    quota::{Quota, QuotaError, SubscriberIdentity},
};
use crate::{
    error::{ErrorKind, ServiceError},
    log::{LogError, PutOutcome, ReadItem, Sequence, SharedLog, SharedState},
    metrics::Metrics,
};
use records::{GroupRecord, PartitionRecord};

/// A group member's id: what its stream's `GroupAssignment` names and its acks quote. It has no
/// `Display`, and its `Debug` shows only its fingerprint, so that it cannot slip into a log line.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MemberId(String);

impl MemberId {
    /// A new id: 32 hex digits of a UUIDv7, whose time first keeps the members' sorted order
    /// (which decides the assignment) about the order they joined in.
    fn generate() -> Self {
        Self(uuid::Uuid::now_v7().simple().to_string())
    }

    /// The id itself, for the member's own stream and the group's records.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What logs show for the member: the first 8 hex digits of the SHA-256 of its id, enough
    /// to follow one member through the log and no use for acking.
    pub fn fingerprint(&self) -> String {
        Sha256::digest(self.0.as_bytes())[..4]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({})", self.fingerprint())
    }
}

/// How groups behave.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// A member that has not renewed itself for this long is gone, and its partitions move.
    pub session_timeout: Duration,
    /// Partitions of a new group when the subscriber does not say.
    pub default_partitions: u32,
    /// Most unacknowledged events a member holds when the subscriber does not say.
    pub default_max_in_flight: u32,
}

impl GroupSettings {
    /// Most partitions a group may have.
    pub const MAX_PARTITIONS: u32 = 1024;
    /// Most unacknowledged events a member may ask to hold.
    pub const MAX_IN_FLIGHT: u32 = 10_000;

    /// How often a member renews itself and looks at the assignment.
    pub fn heartbeat(&self) -> Duration {
        (self.session_timeout / 5).max(Duration::from_millis(50))
    }
}

impl Default for GroupSettings {
    fn default() -> Self {
        Self {
            session_timeout: Duration::from_secs(10),
            default_partitions: 16,
            default_max_in_flight: 256,
        }
    }
}

/// Why a group operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// A partition count outside 1..=1024.
    #[error(
        "group_partitions must be between 1 and {}",
        GroupSettings::MAX_PARTITIONS
    )]
    InvalidPartitions,
    /// A flow-control bound that is too large.
    #[error("max_in_flight must be at most {}", GroupSettings::MAX_IN_FLIGHT)]
    InvalidMaxInFlight,
    /// The group exists with another partition count.
    #[error(
        "group {group} has {existing} partitions, not {asked}; a group's partition count is fixed when it is created"
    )]
    PartitionsMismatch {
        /// The group.
        group: GroupName,
        /// Its partition count.
        existing: u32,
        /// The count asked for.
        asked: u32,
    },
    /// Creating the group would exceed a limit.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The group does not exist.
    #[error("group {group} does not exist")]
    UnknownGroup {
        /// The group.
        group: GroupName,
    },
    /// The acking member does not own the event's partition (any more).
    #[error(
        "this member does not own partition {partition} of group {group}: it moved to another member, which receives its unacknowledged events again"
    )]
    NotOwner {
        /// The group.
        group: GroupName,
        /// The partition.
        partition: u32,
    },
    /// The ack names a member that is not a live member of this group joined by the caller: the
    /// member of another group or subscriber, or one that left or expired.
    #[error(
        "member_id is not a live member of group {group} joined by this subscriber: use the member_id of your own stream's group_assignment for its group (a member that left or expired must subscribe again)"
    )]
    NotMember {
        /// The group the ack named.
        group: GroupName,
    },
    /// The acked event is no longer stored, so its partition is unknown.
    #[error(
        "event {sequence} is no longer stored (retention removed it), so it cannot be acknowledged in a group"
    )]
    EventNotStored {
        /// The sequence.
        sequence: Sequence,
    },
    /// The store failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ServiceError for GroupError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidPartitions | Self::InvalidMaxInFlight => ErrorKind::BadRequest,
            Self::PartitionsMismatch { .. }
            | Self::NotOwner { .. }
            | Self::EventNotStored { .. }
            | Self::UnknownGroup { .. } => ErrorKind::FailedPrecondition,
            Self::NotMember { .. } => ErrorKind::PermissionDenied,
            Self::Quota(error) => error.kind(),
            Self::Log(error) => error.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidPartitions => "invalid_partitions",
            Self::InvalidMaxInFlight => "invalid_max_in_flight",
            Self::PartitionsMismatch { .. } => "partitions_mismatch",
            Self::Quota(error) => error.code(),
            Self::UnknownGroup { .. } => "unknown_group",
            Self::NotOwner { .. } => "not_owner",
            Self::NotMember { .. } => "not_group_member",
            Self::EventNotStored { .. } => "event_not_stored",
            Self::Log(error) => error.code(),
        }
    }
}

/// What a member asks for when it joins, within bounds.
#[derive(Debug, Clone, Copy)]
pub struct JoinOptions {
    /// Partitions of the group if it is created now; 0 for the default or the existing count.
    partitions: u32,
    /// The cursor every partition of a new group starts from (`next - 1` of its start).
    start_cursor: Sequence,
    /// Most unacknowledged events this member holds; 0 for the default.
    max_in_flight: u32,
}

impl JoinOptions {
    /// The options of a member that asks for `partitions` (of a new group; 0 for the default or
    /// the existing count), starting a new group after `start_cursor`, holding at most
    /// `max_in_flight` unacknowledged events (0 for the default).
    pub fn new(
        partitions: u32,
        start_cursor: Sequence,
        max_in_flight: u32,
    ) -> Result<Self, GroupError> {
        if partitions > GroupSettings::MAX_PARTITIONS {
            return Err(GroupError::InvalidPartitions);
        }
        if max_in_flight > GroupSettings::MAX_IN_FLIGHT {
            return Err(GroupError::InvalidMaxInFlight);
        }
        Ok(Self {
            partitions,
            start_cursor,
            max_in_flight,
        })
    }
}

/// The consumer groups of one gateway: the members connected to it, and acks.
#[derive(Clone)]
pub struct Groups {
    inner: Arc<Inner>,
}

struct Inner {
    state: SharedState,
    log: SharedLog,
    settings: GroupSettings,
    quota: Quota,
    metrics: Metrics,
    /// Members whose streams this gateway serves, by member id: acks for them update their
    /// flow control at once.
    local: Mutex<HashMap<String, Weak<Session>>>,
}

impl Groups {
    /// Groups kept in `state`, over the events of `log`; creating groups is bounded by `quota`.
    pub fn new(
        state: SharedState,
        log: SharedLog,
        settings: GroupSettings,
        quota: Quota,
        metrics: Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                state,
                log,
                settings,
                quota,
                metrics,
                local: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &GroupSettings {
        &self.inner.settings
    }

    /// Joins `group` as a new member of `subscriber`, creating the group (charged to it) if it
    /// does not exist. The member takes part in the assignment until it is dropped, which lets
    /// go of its partitions.
    pub async fn join(
        &self,
        group: &GroupName,
        options: JoinOptions,
        subscriber: &SubscriberIdentity,
    ) -> Result<Member, GroupError> {
        let settings = &self.inner.settings;
        let record = self.create_or_check(group, &options, subscriber).await?;
        let max_in_flight = match options.max_in_flight {
            0 => settings.default_max_in_flight,
            n => n,
        };
        let member_id = MemberId::generate();
        let session = Session::start(session::SessionInit {
            group: group.clone(),
            member_id: member_id.clone(),
            subscriber: subscriber.clone(),
            partitions: record.partitions,
            start: record.start,
            max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
            state: self.inner.state.clone(),
            settings: *settings,
            metrics: self.inner.metrics.clone(),
        })
        .await?;
        let mut local = self
            .inner
            .local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        local.retain(|_, session| session.strong_count() > 0);
        local.insert(member_id.0, Arc::downgrade(&session));
        Ok(Member::new(session))
    }

    async fn create_or_check(
        &self,
        group: &GroupName,
        options: &JoinOptions,
        subscriber: &SubscriberIdentity,
    ) -> Result<GroupRecord, GroupError> {
        let state = &self.inner.state;
        let key = records::group_key(group.as_str());
        loop {
            if let Some(stored) = state.get(&key).await? {
                let record: GroupRecord = records::decode(&key, &stored)?;
                if options.partitions != 0 && options.partitions != record.partitions {
                    return Err(GroupError::PartitionsMismatch {
                        group: group.clone(),
                        existing: record.partitions,
                        asked: options.partitions,
                    });
                }
                return Ok(record);
            }
            self.inner
                .quota
                .admit(subscriber, NameKind::Group, group.as_str())
                .await?;
            let record = GroupRecord {
                partitions: match options.partitions {
                    0 => self.inner.settings.default_partitions,
                    n => n,
                },
                start: options.start_cursor,
                members: Default::default(),
                subscribers: Default::default(),
            };
            match state.put(&key, records::encode(&record), None).await? {
                PutOutcome::Stored(_) => {
                    tracing::info!(
                        group = %group,
                        partitions = record.partitions,
                        start = record.start,
                        "consumer group created"
                    );
                    return Ok(record);
                }
                // Another member created it meanwhile: check against theirs.
                PutOutcome::Conflict => {}
            }
        }
    }

    /// Records that `member` of `group` processed the event `sequence` and every earlier event
    /// of its partition, for `subscriber`: refused unless the member belongs to that group and
    /// was joined by that subscriber. Returns the partition and its cursor after the ack.
    pub async fn ack(
        &self,
        group: &GroupName,
        member: &str,
        subscriber: &SubscriberIdentity,
        sequence: Sequence,
    ) -> Result<(u32, Sequence), GroupError> {
        let local = self.local_session(member);
        let (partitions, in_flight) = match &local {
            // The gateway serving the member's stream knows whom the member belongs to, even
            // while the group's record does not list it (it expired and has not renewed yet).
            Some(session) => {
                if session.group() != group || session.subscriber().name() != subscriber.name() {
                    return Err(GroupError::NotMember {
                        group: group.clone(),
                    });
                }
                (
                    session.partition_count(),
                    session.in_flight_partition(sequence),
                )
            }
            None => (self.check_member(group, member, subscriber).await?, None),
        };
        let partition = match in_flight {
            Some(partition) => partition,
            None => self.partition_of_stored(partitions, sequence).await?,
        };
        let cursor = match &local {
            // Acks of one partition are written one after the other, each write taking every
            // ack that arrived meanwhile (group commit for acks).
            Some(session) => session.commit_ack(partition, sequence).await?,
            None => write_ack(&self.inner.state, group, partition, member, sequence).await?,
        };
        Ok((partition, cursor))
    }

    fn local_session(&self, member: &str) -> Option<Arc<Session>> {
        self.inner
            .local
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(member)
            .and_then(Weak::upgrade)
    }

    /// For an ack that reaches a gateway other than the one serving the member's stream: checks
    /// in the group's record that `member` is a live member of `group` joined by `subscriber`,
    /// and returns the group's partition count.
    async fn check_member(
        &self,
        group: &GroupName,
        member: &str,
        subscriber: &SubscriberIdentity,
    ) -> Result<u32, GroupError> {
        let key = records::group_key(group.as_str());
        let record: GroupRecord = match self.inner.state.get(&key).await? {
            Some(stored) => records::decode(&key, &stored)?,
            None => {
                return Err(GroupError::UnknownGroup {
                    group: group.clone(),
                });
            }
        };
        let joined_by = record.subscribers.get(member).map(String::as_str);
        if !record.members.contains_key(member) || joined_by != Some(subscriber.name()) {
            return Err(GroupError::NotMember {
                group: group.clone(),
            });
        }
        Ok(record.partitions)
    }

    /// The partition, in a group of `partitions`, of a stored event read from the log: for an
    /// event the member does not hold in flight here.
    async fn partition_of_stored(
        &self,
        partitions: u32,
        sequence: Sequence,
    ) -> Result<u32, GroupError> {
        let mut reader = self.inner.log.read_from(sequence).await?;
        let item = tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .map_err(LogError::unavailable)??;
        match item {
            ReadItem::Events(events) => match events.first() {
                Some(event) if event.sequence == sequence => {
                    Ok(records::partition_of(event, partitions))
                }
                _ => Err(GroupError::EventNotStored { sequence }),
            },
            ReadItem::Gap { .. } | ReadItem::CaughtUp(_) => {
                Err(GroupError::EventNotStored { sequence })
            }
        }
    }
}

/// Moves `partition`'s cursor to `sequence` if `member` owns it; the cursor after the write.
async fn write_ack(
    state: &SharedState,
    group: &GroupName,
    partition: u32,
    member: &str,
    sequence: Sequence,
) -> Result<Sequence, GroupError> {
    let key = records::partition_key(group.as_str(), partition);
    loop {
        let stored = state.get(&key).await?;
        let (record, expected) = match &stored {
            Some(stored) => (
                records::decode::<PartitionRecord>(&key, stored)?,
                Some(stored.revision),
            ),
            None => (PartitionRecord::default(), None),
        };
        if record.owner.as_deref() != Some(member) {
            return Err(GroupError::NotOwner {
                group: group.clone(),
                partition,
            });
        }
        if sequence <= record.cursor {
            return Ok(record.cursor);
        }
        let updated = PartitionRecord {
            cursor: sequence,
            ..record
        };
        if let PutOutcome::Stored(_) = state.put(&key, records::encode(&updated), expected).await? {
            return Ok(sequence);
        }
    }
}

/// Milliseconds since the Unix epoch, for expiry times other replicas compare against.
fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}
