//! Durable consumer cursors, kept in the [`StateStore`](crate::log::StateStore) so that every gateway on the same storage
//! (every replica, over NATS) resumes every consumer from the same place.
//!
//! A cursor only moves forward: an ack is a compare-and-set loop that stores
//! `max(stored, acked)`, so two replicas taking acks of one consumer at once never move it
//! backwards.

use bytes::Bytes;

use super::{
    names::{ConsumerName, NameKind},
    quota::{Quota, QuotaError, SubscriberIdentity},
};
use crate::{
    error::{ErrorKind, ServiceError},
    log::{LogError, PutOutcome, Sequence, SharedState, Versioned},
};

/// Key prefix of consumer cursors in the state store.
const PREFIX: &str = NameKind::Consumer.prefix();

/// Why an ack was refused.
#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    /// Creating the consumer would exceed a limit.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The store failed.
    #[error(transparent)]
    Log(#[from] LogError),
}

impl ServiceError for CursorError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::Quota(error) => error.kind(),
            Self::Log(error) => error.kind(),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::Quota(error) => error.code(),
            Self::Log(error) => error.code(),
        }
    }
}

/// The cursors of durable consumers.
#[derive(Clone)]
pub struct Cursors {
    state: SharedState,
    quota: Quota,
}

impl Cursors {
    /// Cursors in `state`; the acks that create consumers are bounded by `quota`.
    pub fn new(state: SharedState, quota: Quota) -> Self {
        Self { state, quota }
    }

    /// The last sequence `consumer` acknowledged, or `None` for a consumer never seen.
    pub async fn get(&self, consumer: &ConsumerName) -> Result<Option<Sequence>, LogError> {
        let key = key(consumer);
        self.state
            .get(&key)
            .await?
            .map(|stored| decode(&key, &stored))
            .transpose()
    }

    /// Records that `consumer` has processed every event up to `sequence`, durably. Returns the
    /// consumer's cursor after the ack: an older ack than the stored cursor changes nothing. The
    /// first ack of a consumer creates it, charged to `caller`.
    pub async fn ack(
        &self,
        consumer: &ConsumerName,
        sequence: Sequence,
        caller: &SubscriberIdentity,
    ) -> Result<Sequence, CursorError> {
        let key = key(consumer);
        loop {
            let stored = self.state.get(&key).await?;
            let (current, expected) = match &stored {
                Some(stored) => (decode(&key, stored)?, Some(stored.revision)),
                None => {
                    // Only a new consumer can take a count over its limit.
                    self.quota
                        .admit(caller, NameKind::Consumer, consumer.as_str())
                        .await?;
                    (0, None)
                }
            };
            if stored.is_some() && sequence <= current {
                return Ok(current);
            }
            let value = Bytes::copy_from_slice(&sequence.to_be_bytes());
            match self.state.put(&key, value, expected).await? {
                PutOutcome::Stored(_) => return Ok(sequence),
                // Another ack of the same consumer won the race: look again.
                PutOutcome::Conflict => {}
            }
        }
    }
}

fn key(consumer: &ConsumerName) -> String {
    format!("{PREFIX}{consumer}")
}

fn decode(key: &str, stored: &Versioned) -> Result<Sequence, LogError> {
    let bytes: [u8; 8] = stored
        .value
        .as_ref()
        .try_into()
        .map_err(|_| LogError::CorruptState {
            key: key.to_owned(),
        })?;
    Ok(Sequence::from_be_bytes(bytes))
}
