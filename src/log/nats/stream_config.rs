//! The stream and the state bucket the gateway needs: created when missing, updated where the
//! difference is safe to change, refused where it is not.

use std::time::Duration;

use async_nats::jetstream::{
    self, kv,
    stream::{self, DiscardPolicy, RetentionPolicy, StorageType, Stream},
};

use super::{NatsOpenError, NatsSettings};
use crate::log::BoxError;

/// The existing stream cannot be used as it is, and changing it could lose or misroute events.
#[derive(Debug, thiserror::Error)]
#[error(
    "the existing JetStream stream `{stream}` has {setting} {found}, but the gateway needs {wanted}; \
     it is not changed automatically because {why}. Fix the stream by hand, or point --nats-stream at another one"
)]
pub struct StreamMismatch {
    /// The stream.
    pub stream: String,
    /// Which setting differs.
    pub setting: &'static str,
    /// Its value on the server.
    pub found: String,
    /// The value the gateway needs.
    pub wanted: String,
    /// Why the gateway does not change it.
    pub why: &'static str,
}

/// The stream configuration the gateway's settings call for.
pub(super) fn desired(options: &NatsSettings) -> stream::Config {
    stream::Config {
        name: options.stream.clone(),
        description: Some("incode-gateway events".to_owned()),
        subjects: vec![options.subject()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        num_replicas: options.replicas,
        max_age: options.retention,
        max_messages: options
            .max_events
            .map_or(-1, |max| i64::try_from(max).unwrap_or(i64::MAX)),
        duplicate_window: options.dedup_window,
        discard: DiscardPolicy::Old,
        ..stream::Config::default()
    }
}

/// Gets the stream, creating it if it is missing and updating it where it differs safely.
pub(super) async fn ensure_stream(
    jetstream: &jetstream::Context,
    options: &NatsSettings,
) -> Result<Stream, NatsOpenError> {
    let setup = |source: BoxError| NatsOpenError::Setup {
        stream: options.stream.clone(),
        source,
    };
    let wanted = desired(options);
    let mut stream = match jetstream.get_stream(&options.stream).await {
        Ok(stream) => stream,
        Err(error) if is_not_found(&error) => {
            match jetstream.create_stream(wanted.clone()).await {
                Ok(stream) => {
                    tracing::info!(stream = %options.stream, "JetStream stream created");
                    return Ok(stream);
                }
                // Another replica created it meanwhile: check it like an existing one.
                Err(_) => jetstream
                    .get_stream(&options.stream)
                    .await
                    .map_err(|error| setup(error.into()))?,
            }
        }
        Err(error) => return Err(setup(error.into())),
    };
    let found = stream
        .info()
        .await
        .map_err(|error| setup(error.into()))?
        .config
        .clone();
    let changes = reconcile(&options.stream, &found, &wanted)?;
    if changes.is_empty() {
        return Ok(stream);
    }
    tracing::warn!(
        stream = %options.stream,
        changes = %changes.join(", "),
        "updating the JetStream stream's settings to match the gateway's"
    );
    let updated = stream::Config {
        // Keep what the gateway does not manage (placement, description, ...).
        ..found
    };
    let updated = stream::Config {
        num_replicas: wanted.num_replicas,
        max_age: wanted.max_age,
        max_messages: wanted.max_messages,
        duplicate_window: wanted.duplicate_window,
        discard: wanted.discard,
        ..updated
    };
    jetstream
        .update_stream(updated)
        .await
        .map_err(|error| setup(error.into()))?;
    jetstream
        .get_stream(&options.stream)
        .await
        .map_err(|error| setup(error.into()))
}

/// The safe changes from `found` to `wanted`, described; an error for the unsafe ones.
pub(super) fn reconcile(
    name: &str,
    found: &stream::Config,
    wanted: &stream::Config,
) -> Result<Vec<String>, StreamMismatch> {
    let mismatch = |setting, found: String, wanted: String, why| StreamMismatch {
        stream: name.to_owned(),
        setting,
        found,
        wanted,
        why,
    };
    if found.subjects != wanted.subjects {
        return Err(mismatch(
            "subjects",
            format!("{:?}", found.subjects),
            format!("{:?}", wanted.subjects),
            "other publishers may use those subjects, and events on them would reach subscribers",
        ));
    }
    if found.storage != wanted.storage {
        return Err(mismatch(
            "storage",
            format!("{:?}", found.storage),
            format!("{:?}", wanted.storage),
            "JetStream cannot change a stream's storage, and memory storage loses events on restart",
        ));
    }
    if found.retention != wanted.retention {
        return Err(mismatch(
            "retention policy",
            format!("{:?}", found.retention),
            format!("{:?}", wanted.retention),
            "JetStream cannot change a stream's retention policy, and any other policy removes events subscribers have not read",
        ));
    }
    if found.sealed || found.mirror.is_some() {
        return Err(mismatch(
            "a mirror or seal",
            "that takes no publishes".to_owned(),
            "a stream that takes publishes".to_owned(),
            "the gateway could not store events",
        ));
    }
    let mut changes = Vec::new();
    let mut compare = |setting: &str, found: String, wanted: String| {
        if found != wanted {
            changes.push(format!("{setting} {found} -> {wanted}"));
        }
    };
    compare(
        "replicas",
        found.num_replicas.to_string(),
        wanted.num_replicas.to_string(),
    );
    compare("max_age", human(found.max_age), human(wanted.max_age));
    compare(
        "max_msgs",
        found.max_messages.to_string(),
        wanted.max_messages.to_string(),
    );
    compare(
        "duplicate_window",
        human(found.duplicate_window),
        human(wanted.duplicate_window),
    );
    compare(
        "discard",
        format!("{:?}", found.discard),
        format!("{:?}", wanted.discard),
    );
    Ok(changes)
}

fn human(duration: Duration) -> String {
    if duration.is_zero() {
        "unlimited".to_owned()
    } else {
        humantime::format_duration(duration).to_string()
    }
}

fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(inner)
            if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Gets the state bucket, creating it when missing.
///
/// The bucket's stream is created here with the key-value conventions (`KV_<bucket>`, subjects
/// `$KV.<bucket>.>`, one value per key, rollups allowed, deletes denied) rather than with the
/// client's `create_key_value`, which asks for account information in a shape nats-server 2.9
/// does not answer with.
pub(super) async fn ensure_bucket(
    jetstream: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, BoxError> {
    match jetstream.get_key_value(bucket).await {
        Ok(store) => return Ok(store),
        Err(error) if error.kind() == jetstream::context::KeyValueErrorKind::GetBucket => {}
        Err(error) => return Err(error.into()),
    }
    let created = jetstream
        .create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some("incode-gateway state: durable consumer cursors".to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: StorageType::File,
            num_replicas: replicas,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            ..stream::Config::default()
        })
        .await;
    match jetstream.get_key_value(bucket).await {
        Ok(store) => Ok(store),
        // Report why the creation failed, unless another replica created it meanwhile.
        Err(error) => Err(match created {
            Err(create) => create.into(),
            Ok(_) => error.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> NatsSettings {
        NatsSettings::new(vec!["nats://127.0.0.1:4222".to_owned()], "EVENTS")
    }

    #[test]
    fn limits_are_updated_and_the_storage_is_refused() {
        let wanted = desired(&options());
        assert!(reconcile("EVENTS", &wanted, &wanted).unwrap().is_empty());

        let shorter = stream::Config {
            max_age: Duration::from_secs(3600),
            num_replicas: 3,
            ..wanted.clone()
        };
        let changes = reconcile("EVENTS", &shorter, &wanted).unwrap();
        assert_eq!(changes, ["replicas 3 -> 1", "max_age 1h -> 7days"]);

        let in_memory = stream::Config {
            storage: StorageType::Memory,
            ..wanted.clone()
        };
        let error = reconcile("EVENTS", &in_memory, &wanted)
            .unwrap_err()
            .to_string();
        assert!(error.contains("storage Memory"), "{error}");
        assert!(error.contains("needs File"), "{error}");

        let other_subjects = stream::Config {
            subjects: vec!["orders.>".to_owned()],
            ..wanted.clone()
        };
        let error = reconcile("EVENTS", &other_subjects, &wanted)
            .unwrap_err()
            .to_string();
        assert!(error.contains("subjects"), "{error}");
    }
}
