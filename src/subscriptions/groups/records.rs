//! What a consumer group keeps in the [`crate::log::StateStore`], and how events map to
//! partitions.
//!
//! - `group.<name>`: the group's partition count, where it started, and its live members with
//!   the time their session expires and the subscriber that joined each. Members renew
//!   themselves in it with compare-and-set.
//! - `partition.<name>.<n>`: one partition's cursor (its last acknowledged sequence), its owner
//!   and how far the owner got before it let go. An ack is a compare-and-set on this key that
//!   requires the acking member to be the owner: that is the fencing.
//!
//! Values are JSON, so that an operator can read them with `nats kv get`.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    log::{LogError, PutOutcome, Sequence, SharedState, Versioned},
    proto::v1,
};

/// The key of a group's record.
pub fn group_key(group: &str) -> String {
    format!("{GROUP_PREFIX}{group}")
}

/// The key of a partition's record.
pub fn partition_key(group: &str, partition: u32) -> String {
    format!("partition.{group}.{partition}")
}

/// The key prefix of every group record, which the [`Quota`](crate::subscriptions::Quota) counts.
pub const GROUP_PREFIX: &str = crate::subscriptions::names::NameKind::Group.prefix();

/// A group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Fixed when the group is created.
    pub partitions: u32,
    /// The cursor of every partition before its first ack: the group starts after it.
    pub start: Sequence,
    /// Live members: id to the time (milliseconds since the epoch) their session expires.
    #[serde(default)]
    pub members: BTreeMap<String, u64>,
    /// Live members: id to the name of the subscriber identity that joined it, the only one
    /// whose acks for the member count. A map of its own (not in `members`) so that a record
    /// written before it existed still reads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subscribers: BTreeMap<String, String>,
}

/// A partition of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The last acknowledged sequence of this partition (every earlier event of the partition
    /// is processed too).
    pub cursor: Sequence,
    /// The member that owns the partition, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Increases every time the partition gets a new owner.
    #[serde(default)]
    pub epoch: u64,
    /// The newest sequence of this partition handed to an owner so far (written when an owner
    /// lets go): events up to it that a new owner sends again are redeliveries.
    #[serde(default)]
    pub delivered: Sequence,
}

/// Encodes a record as the stored value.
pub fn encode<T: Serialize>(record: &T) -> Bytes {
    // Serializing these plain structs cannot fail.
    Bytes::from(serde_json::to_vec(record).unwrap_or_default())
}

/// Changes the record at `key` with `change`, compare-and-set, reading it again after a
/// conflict, at most five times: `change` returns `None` when there is nothing to change. A
/// record that is missing or cannot be read is left alone.
pub async fn update<T: Serialize + for<'de> Deserialize<'de>>(
    state: &SharedState,
    key: &str,
    mut change: impl FnMut(T) -> Option<T>,
) -> Result<(), LogError> {
    for _ in 0..5 {
        let Some(stored) = state.get(key).await? else {
            break;
        };
        let Ok(record) = decode::<T>(key, &stored) else {
            break;
        };
        let Some(changed) = change(record) else {
            break;
        };
        let outcome = state
            .put(key, encode(&changed), Some(stored.revision))
            .await?;
        if let PutOutcome::Stored(_) = outcome {
            break;
        }
    }
    Ok(())
}

/// Decodes a stored value.
pub fn decode<T: for<'de> Deserialize<'de>>(key: &str, stored: &Versioned) -> Result<T, LogError> {
    serde_json::from_slice(&stored.value).map_err(|_| LogError::CorruptState {
        key: key.to_owned(),
    })
}

/// The partition of `event` in a group of `count` partitions: the FNV-1a 64-bit hash of its
/// interview id (its event id when it has none), as UTF-8, modulo `count`. Stable across
/// versions and easy to compute in any language.
pub fn partition_of(event: &v1::Event, count: u32) -> u32 {
    let key = event.interview_id().unwrap_or(&event.id);
    let hash = fnv1a64(key.as_bytes());
    u32::try_from(hash % u64::from(count.max(1))).unwrap_or(0)
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::event::Payload;

    fn event(interview: &str, id: &str) -> v1::Event {
        v1::Event {
            id: id.to_owned(),
            payload: Some(Payload::OnboardingStatusChanged(
                v1::OnboardingStatusChanged {
                    interview_id: interview.to_owned(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn an_interview_always_lands_in_one_partition_and_ids_stand_in() {
        let a = partition_of(&event("interview-1", "e1"), 16);
        assert_eq!(partition_of(&event("interview-1", "e2"), 16), a);
        assert!(a < 16);
        let no_interview = event("", "event-7");
        assert_eq!(
            partition_of(&no_interview, 16),
            (fnv1a64(b"event-7") % 16) as u32
        );
        // Spread: 1,000 interviews over 16 partitions reach every partition.
        let used: std::collections::HashSet<_> = (0..1000)
            .map(|i| partition_of(&event(&format!("i-{i}"), "e"), 16))
            .collect();
        assert_eq!(used.len(), 16);
    }

    #[test]
    fn group_records_name_who_joined_each_member_and_older_ones_still_read() {
        let record = GroupRecord {
            partitions: 4,
            start: 0,
            members: BTreeMap::from([("m-1".into(), 99)]),
            subscribers: BTreeMap::from([("m-1".into(), "billing".into())]),
        };
        let stored = Versioned {
            value: encode(&record),
            revision: 1,
        };
        assert_eq!(
            std::str::from_utf8(&stored.value).unwrap(),
            r#"{"partitions":4,"start":0,"members":{"m-1":99},"subscribers":{"m-1":"billing"}}"#
        );
        let older = Versioned {
            value: Bytes::from_static(br#"{"partitions":4,"start":0,"members":{"m-1":99}}"#),
            revision: 1,
        };
        let read = decode::<GroupRecord>("k", &older).unwrap();
        assert!(read.subscribers.is_empty());
        assert_eq!(read.members.len(), 1);
    }

    #[test]
    fn records_round_trip_as_json() {
        let record = PartitionRecord {
            cursor: 7,
            owner: Some("m-1".into()),
            epoch: 3,
            delivered: 9,
        };
        let stored = Versioned {
            value: encode(&record),
            revision: 1,
        };
        assert_eq!(decode::<PartitionRecord>("k", &stored).unwrap(), record);
        assert_eq!(
            std::str::from_utf8(&stored.value).unwrap(),
            r#"{"cursor":7,"owner":"m-1","epoch":3,"delivered":9}"#
        );
    }
}
