//! One member of a group, as the gateway serving its stream sees it: its partitions, what it
//! holds unacknowledged, and the heartbeat that renews it and moves partitions.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, MutexGuard},
    time::Instant,
};

use tokio::sync::{Notify, futures::Notified};
use tokio_util::sync::CancellationToken;

use super::{
    GroupError, GroupName, GroupSettings, MemberId, now_millis,
    records::{self, GroupRecord, PartitionRecord},
};
use crate::{
    error::error_chain,
    log::{LogError, PutOutcome, Sequence, SharedState},
    metrics::{GroupMemberGuard, Metrics},
    proto::v1,
    subscriptions::quota::SubscriberIdentity,
};

pub(super) struct SessionInit {
    pub group: GroupName,
    pub member_id: MemberId,
    pub subscriber: SubscriberIdentity,
    pub partitions: u32,
    pub start: Sequence,
    pub max_in_flight: usize,
    pub state: SharedState,
    pub settings: GroupSettings,
    pub metrics: Metrics,
}

/// A member's live state, shared by its stream, its heartbeat and acks.
pub struct Session {
    group: GroupName,
    member_id: MemberId,
    /// Who joined: the only subscriber whose acks for this member are taken.
    subscriber: SubscriberIdentity,
    partitions: u32,
    start: Sequence,
    max_in_flight: usize,
    state: SharedState,
    settings: GroupSettings,
    metrics: Metrics,
    progress: Mutex<Progress>,
    /// Per partition, the acks being written.
    acks: Mutex<std::collections::HashMap<u32, AckLane>>,
    /// Woken when a lane's write completes.
    ack_written: Notify,
    /// Woken when the assignment changes or an ack frees room.
    changed: Notify,
    stop: CancellationToken,
    gauges: GroupMemberGuard,
}

struct Progress {
    owned: BTreeMap<u32, Owned>,
    /// Delivered, not yet acknowledged: sequence to partition.
    in_flight: BTreeMap<Sequence, u32>,
    members: u32,
    /// Counts assignment changes.
    generation: u64,
    /// Where the stream must read again from, after partitions were gained.
    rewind: Option<Sequence>,
    /// Partitions let go of locally after the session expired, which the store may still name
    /// this member the owner of: looked at until settled.
    stale: BTreeSet<u32>,
    last_renewed: Instant,
}

/// The acks of one partition: what is wanted, what is written, whether a write is under way.
#[derive(Debug, Default)]
struct AckLane {
    wanted: Sequence,
    written: Sequence,
    writing: bool,
    /// The last write failed: acks up to this sequence failed with it.
    failed_up_to: Sequence,
    failed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Owned {
    /// The partition's last acknowledged sequence, as far as this member knows.
    cursor: Sequence,
    /// The newest sequence of the partition sent to this member.
    delivered: Sequence,
    /// Events up to this one were sent to a previous owner already.
    redelivery_until: Sequence,
}

/// What the stream should do with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Send it; it is now in flight. `redelivery` when a previous owner had it already.
    Deliver {
        /// Whether the event was sent to another member before.
        redelivery: bool,
    },
    /// Not this member's (another partition, or delivered already).
    Skip,
    /// This member holds as many unacknowledged events as it may: wait for acks.
    Full,
}

impl Session {
    pub(super) async fn start(init: SessionInit) -> Result<Arc<Self>, GroupError> {
        let gauges = init.metrics.group_member_joined(init.group.as_str());
        let session = Arc::new(Self {
            group: init.group,
            member_id: init.member_id,
            subscriber: init.subscriber,
            partitions: init.partitions,
            start: init.start,
            max_in_flight: init.max_in_flight.max(1),
            state: init.state,
            settings: init.settings,
            metrics: init.metrics,
            progress: Mutex::new(Progress {
                owned: BTreeMap::new(),
                in_flight: BTreeMap::new(),
                members: 0,
                generation: 0,
                rewind: None,
                stale: BTreeSet::new(),
                last_renewed: Instant::now(),
            }),
            acks: Mutex::new(std::collections::HashMap::new()),
            ack_written: Notify::new(),
            changed: Notify::new(),
            stop: CancellationToken::new(),
            gauges,
        });
        // The first heartbeat registers the member (and, for the first one, takes partitions)
        // before the stream sends its first assignment.
        session.heartbeat().await?;
        tokio::spawn(session.clone().run());
        tracing::info!(
            group = %session.group,
            member = %session.member_id.fingerprint(),
            subscriber = %session.subscriber,
            "group member joined"
        );
        Ok(session)
    }

    fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The member's id.
    pub fn member_id(&self) -> &MemberId {
        &self.member_id
    }

    /// The group.
    pub fn group(&self) -> &GroupName {
        &self.group
    }

    /// The subscriber that joined.
    pub fn subscriber(&self) -> &SubscriberIdentity {
        &self.subscriber
    }

    /// The group's partition count.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    /// Counts assignment changes; a stream compares it with the last it announced.
    pub fn generation(&self) -> u64 {
        self.progress().generation
    }

    /// The assignment now, with its generation.
    pub fn assignment(&self) -> (u64, v1::GroupAssignment) {
        let progress = self.progress();
        (
            progress.generation,
            v1::GroupAssignment {
                member_id: self.member_id.as_str().to_owned(),
                partition_count: self.partitions,
                partitions: progress.owned.keys().copied().collect(),
                members: progress.members,
            },
        )
    }

    /// Where the stream must read again from because partitions were gained, once.
    pub fn take_rewind(&self) -> Option<Sequence> {
        self.progress().rewind.take()
    }

    /// Where a new stream starts reading: after the lowest cursor of the owned partitions, or
    /// after the group's start while it owns none.
    pub fn resume_from(&self) -> Sequence {
        let progress = self.progress();
        progress
            .owned
            .values()
            .map(|owned| owned.delivered)
            .min()
            .unwrap_or(self.start)
            + 1
    }

    /// Completes when the assignment changes or an ack frees room.
    pub fn changed(&self) -> Notified<'_> {
        self.changed.notified()
    }

    /// Decides about an event read from the log.
    pub fn claim(&self, event: &v1::Event) -> Claim {
        let partition = records::partition_of(event, self.partitions);
        let mut progress = self.progress();
        let full = progress.in_flight.len() >= self.max_in_flight;
        let Some(owned) = progress.owned.get_mut(&partition) else {
            return Claim::Skip;
        };
        if event.sequence <= owned.delivered {
            return Claim::Skip;
        }
        if full {
            return Claim::Full;
        }
        owned.delivered = event.sequence;
        let redelivery = event.sequence <= owned.redelivery_until;
        progress.in_flight.insert(event.sequence, partition);
        if redelivery {
            self.metrics.group_redelivered(self.group.as_str());
        }
        Claim::Deliver { redelivery }
    }

    /// Whether the member may take another event now.
    pub fn has_room(&self) -> bool {
        self.progress().in_flight.len() < self.max_in_flight
    }

    /// The partition of an event this member holds unacknowledged.
    pub(super) fn in_flight_partition(&self, sequence: Sequence) -> Option<u32> {
        self.progress().in_flight.get(&sequence).copied()
    }

    /// Acknowledges `sequence` of `partition` for this member: joins the write under way for the
    /// partition, or writes itself, taking every ack that arrived meanwhile. The partition's
    /// cursor after the write.
    pub(super) async fn commit_ack(
        &self,
        partition: u32,
        sequence: Sequence,
    ) -> Result<Sequence, GroupError> {
        loop {
            let written = self.ack_written.notified();
            tokio::pin!(written);
            written.as_mut().enable();
            let target = {
                let mut lanes = self
                    .acks
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let lane = lanes.entry(partition).or_default();
                lane.wanted = lane.wanted.max(sequence);
                if lane.written >= sequence {
                    return Ok(lane.written);
                }
                if lane.failed && sequence <= lane.failed_up_to {
                    return Err(GroupError::NotOwner {
                        group: self.group.clone(),
                        partition,
                    });
                }
                if lane.writing {
                    None
                } else {
                    lane.writing = true;
                    Some(lane.wanted)
                }
            };
            let Some(target) = target else {
                written.await;
                continue;
            };
            let result = super::write_ack(
                &self.state,
                &self.group,
                partition,
                self.member_id.as_str(),
                target,
            )
            .await;
            {
                let mut lanes = self
                    .acks
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                let lane = lanes.entry(partition).or_default();
                lane.writing = false;
                match &result {
                    Ok(cursor) => {
                        lane.written = lane.written.max(*cursor);
                        lane.failed = false;
                    }
                    // Acks waiting on this write fail with it; after a storage failure they
                    // try again themselves.
                    Err(GroupError::NotOwner { .. }) => {
                        lane.failed_up_to = target;
                        lane.failed = true;
                    }
                    Err(_) => {}
                }
            }
            self.ack_written.notify_waiters();
            match result {
                Ok(cursor) => self.acked(partition, cursor),
                Err(error) => return Err(error),
            }
        }
    }

    /// An ack moved `partition`'s cursor to `cursor`.
    pub(super) fn acked(&self, partition: u32, cursor: Sequence) {
        let mut progress = self.progress();
        if let Some(owned) = progress.owned.get_mut(&partition) {
            owned.cursor = owned.cursor.max(cursor);
        }
        let before = progress.in_flight.len();
        progress
            .in_flight
            .retain(|&sequence, &mut p| p != partition || sequence > cursor);
        self.update_gauges(&progress);
        if progress.in_flight.len() != before {
            drop(progress);
            self.changed.notify_one();
        }
    }

    fn update_gauges(&self, progress: &Progress) {
        self.gauges.set(
            progress.owned.len() as u64,
            u64::from(progress.members),
            progress.owned.values().map(|owned| owned.cursor).min(),
        );
    }

    /// Heartbeats until the member is dropped, then lets go of its partitions.
    async fn run(self: Arc<Self>) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = self.stop.cancelled() => break,
                () = tokio::time::sleep(self.settings.heartbeat()) => {}
            }
            match self.heartbeat().await {
                Ok(()) => failing = false,
                Err(error) => {
                    if !failing {
                        tracing::warn!(
                            group = %self.group,
                            member = %self.member_id.fingerprint(),
                            error = %error_chain(&error),
                            "group member heartbeat failed; retrying"
                        );
                    }
                    failing = true;
                    self.expire_if_stale();
                }
            }
        }
        self.leave().await;
    }

    /// Without a heartbeat for the session timeout, the others may take this member's
    /// partitions: stop delivering them.
    fn expire_if_stale(&self) {
        let mut progress = self.progress();
        if progress.owned.is_empty()
            || progress.last_renewed.elapsed() < self.settings.session_timeout
        {
            return;
        }
        tracing::warn!(
            group = %self.group,
            member = %self.member_id.fingerprint(),
            "group member expired; letting go of its partitions"
        );
        let expired: Vec<u32> = progress.owned.keys().copied().collect();
        progress.stale.extend(expired);
        progress.owned.clear();
        progress.in_flight.clear();
        progress.generation += 1;
        self.update_gauges(&progress);
        drop(progress);
        self.changed.notify_one();
    }

    /// Renews the member, then takes, keeps or lets go of each partition.
    async fn heartbeat(&self) -> Result<(), GroupError> {
        let members = self.renew().await?;
        let index = members.iter().position(|m| m == self.member_id.as_str());
        let count = u32::try_from(members.len()).unwrap_or(u32::MAX).max(1);
        let wanted = |partition: u32| {
            index.is_some_and(|index| {
                usize::try_from(partition % count).is_ok_and(|slot| slot == index)
            })
        };
        let live: BTreeSet<&str> = members.iter().map(String::as_str).collect();
        // Only the partitions this member holds or should hold need a look.
        let held: BTreeSet<u32> = {
            let progress = self.progress();
            let stale = progress.stale.iter().copied();
            progress.owned.keys().copied().chain(stale).collect()
        };
        let mut changed = false;
        for partition in 0..self.partitions {
            if wanted(partition) || held.contains(&partition) {
                changed |= self.settle(partition, wanted(partition), &live).await?;
            }
        }
        let mut progress = self.progress();
        progress.stale.clear();
        if progress.members != count {
            progress.members = count;
            changed = true;
        }
        if changed {
            progress.generation += 1;
        }
        self.update_gauges(&progress);
        drop(progress);
        if changed {
            self.changed.notify_one();
        }
        Ok(())
    }

    /// Writes this member (and who joined it) into the group's record with a fresh expiry, drops
    /// expired members, and returns the live members, sorted.
    async fn renew(&self) -> Result<Vec<String>, GroupError> {
        let key = records::group_key(self.group.as_str());
        loop {
            let Some(stored) = self.state.get(&key).await? else {
                return Err(GroupError::UnknownGroup {
                    group: self.group.clone(),
                });
            };
            let mut record: GroupRecord = records::decode(&key, &stored)?;
            let now = now_millis();
            let timeout =
                u64::try_from(self.settings.session_timeout.as_millis()).unwrap_or(u64::MAX);
            record.members.retain(|_, expires| *expires > now);
            let GroupRecord {
                members,
                subscribers,
                ..
            } = &mut record;
            subscribers.retain(|member, _| members.contains_key(member));
            let id = self.member_id.as_str().to_owned();
            members.insert(id.clone(), now.saturating_add(timeout));
            subscribers.insert(id, self.subscriber.name().to_owned());
            let outcome = self
                .state
                .put(&key, records::encode(&record), Some(stored.revision))
                .await?;
            if let PutOutcome::Stored(_) = outcome {
                self.progress().last_renewed = Instant::now();
                return Ok(record.members.into_keys().collect());
            }
        }
    }

    /// Brings one partition in line with the assignment; whether this member's share changed.
    async fn settle(
        &self,
        partition: u32,
        wanted: bool,
        live: &BTreeSet<&str>,
    ) -> Result<bool, GroupError> {
        let key = records::partition_key(self.group.as_str(), partition);
        let stored = self.state.get(&key).await?;
        let (record, expected) = match &stored {
            Some(stored) => (
                records::decode::<PartitionRecord>(&key, stored)?,
                Some(stored.revision),
            ),
            None => (
                PartitionRecord {
                    cursor: self.start,
                    ..PartitionRecord::default()
                },
                None,
            ),
        };
        let mine = record.owner.as_deref() == Some(self.member_id.as_str());
        let held = self.progress().owned.get(&partition).copied();
        match (mine, held) {
            (true, Some(_)) if wanted => {
                // Kept: learn of acks that reached other gateways.
                self.acked(partition, record.cursor);
                Ok(false)
            }
            (true, held) if !wanted => {
                let delivered =
                    held.map_or(record.delivered, |h| h.delivered.max(record.delivered));
                let released = PartitionRecord {
                    owner: None,
                    delivered,
                    ..record
                };
                if let PutOutcome::Stored(_) = self
                    .state
                    .put(&key, records::encode(&released), expected)
                    .await?
                {
                    self.drop_partition(partition);
                    return Ok(held.is_some());
                }
                Ok(false)
            }
            (false, Some(_)) => {
                // Another member took it (this one expired meanwhile): fenced.
                tracing::warn!(
                    group = %self.group,
                    member = %self.member_id.fingerprint(),
                    partition,
                    "partition lost to another member"
                );
                self.drop_partition(partition);
                Ok(true)
            }
            (owned_in_store, None) => {
                let free = record
                    .owner
                    .as_deref()
                    .is_none_or(|owner| !live.contains(owner));
                if !(wanted && (free || owned_in_store)) {
                    return Ok(false);
                }
                let taken = PartitionRecord {
                    owner: Some(self.member_id.as_str().to_owned()),
                    epoch: record.epoch + 1,
                    ..record.clone()
                };
                if let PutOutcome::Stored(_) = self
                    .state
                    .put(&key, records::encode(&taken), expected)
                    .await?
                {
                    let mut progress = self.progress();
                    progress.owned.insert(
                        partition,
                        Owned {
                            cursor: record.cursor,
                            delivered: record.cursor,
                            redelivery_until: record.delivered,
                        },
                    );
                    let from = record.cursor + 1;
                    progress.rewind = Some(progress.rewind.map_or(from, |r| r.min(from)));
                    return Ok(true);
                }
                Ok(false)
            }
            (true, Some(_)) => Ok(false),
        }
    }

    fn drop_partition(&self, partition: u32) {
        let mut progress = self.progress();
        progress.owned.remove(&partition);
        progress.in_flight.retain(|_, p| *p != partition);
    }

    /// Lets go of every partition and leaves the group's record, so that the others take over
    /// at once rather than after the session timeout.
    async fn leave(&self) {
        let owned: Vec<(u32, Owned)> = self
            .progress()
            .owned
            .iter()
            .map(|(p, o)| (*p, *o))
            .collect();
        let me = self.member_id.as_str();
        let result: Result<(), LogError> = async {
            for (partition, held) in owned {
                let key = records::partition_key(self.group.as_str(), partition);
                records::update(&self.state, &key, |record: PartitionRecord| {
                    (record.owner.as_deref() == Some(me)).then(|| PartitionRecord {
                        owner: None,
                        delivered: record.delivered.max(held.delivered),
                        ..record
                    })
                })
                .await?;
            }
            let key = records::group_key(self.group.as_str());
            records::update(&self.state, &key, |mut record: GroupRecord| {
                record.members.remove(me)?;
                record.subscribers.remove(me);
                Some(record)
            })
            .await
        }
        .await;
        match result {
            Ok(()) => tracing::info!(
                group = %self.group,
                member = %self.member_id.fingerprint(),
                "group member left"
            ),
            Err(error) => tracing::warn!(
                group = %self.group,
                member = %self.member_id.fingerprint(),
                error = %error_chain(&error),
                "group member could not let go of its partitions; they move when its session expires"
            ),
        }
    }
}

/// A member's handle: while it lives the member takes part in the group; dropping it (the
/// stream ended) lets go of the member's partitions.
pub struct Member {
    session: Arc<Session>,
}

impl Member {
    pub(super) fn new(session: Arc<Session>) -> Self {
        Self { session }
    }

    /// The member's session.
    pub fn session(&self) -> &Arc<Session> {
        &self.session
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.session.stop.cancel();
    }
}
