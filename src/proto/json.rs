//! The proto3 canonical JSON mapping of [`v1::Event`]: lowerCamelCase field names, enum values by
//! name, 64-bit integers as strings, `Timestamp` as RFC 3339, `Struct` as plain JSON, fields with
//! default values omitted (an `optional` field that is set is always printed).
//!
//! The mapping is driven by the contract's descriptors (the same set gRPC reflection serves)
//! through `prost-reflect`, so it follows the `.proto` files without hand-written field lists and
//! prints what `grpcurl`, Go's `protojson`, Python's `json_format` and protobuf-es print.

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::proto::v1;

/// Full protobuf name of the event message.
const EVENT: &str = "incode.gateway.v1.Event";

/// Why an event could not be mapped to or from JSON.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The embedded descriptor set is unusable (a build problem).
    #[error("the contract's descriptors cannot be loaded")]
    Descriptors(#[source] prost_reflect::DescriptorError),
    /// The descriptor set has no `Event` message (a build problem).
    #[error("the contract's descriptors have no {name}")]
    MissingMessage {
        /// The message looked for.
        name: &'static str,
    },
    /// The event could not be re-read through its descriptor.
    #[error("the event cannot be decoded through its descriptor")]
    Decode(#[source] prost::DecodeError),
    /// Serialising or parsing the JSON failed.
    #[error("JSON mapping failed")]
    Json(#[source] serde_json::Error),
}

/// Maps events to and from canonical JSON.
#[derive(Debug, Clone)]
pub struct EventJson {
    descriptor: MessageDescriptor,
}

impl EventJson {
    /// Loads the contract's descriptors.
    pub fn new() -> Result<Self, JsonError> {
        let pool =
            DescriptorPool::decode(v1::FILE_DESCRIPTOR_SET).map_err(JsonError::Descriptors)?;
        let descriptor = pool
            .get_message_by_name(EVENT)
            .ok_or(JsonError::MissingMessage { name: EVENT })?;
        Ok(Self { descriptor })
    }

    /// The event as one line of canonical JSON (no newline).
    pub fn to_json(&self, event: &v1::Event) -> Result<String, JsonError> {
        let message =
            DynamicMessage::decode(self.descriptor.clone(), event.encode_to_vec().as_slice())
                .map_err(JsonError::Decode)?;
        let mut serializer = serde_json::Serializer::new(Vec::new());
        message
            .serialize_with_options(&mut serializer, &SerializeOptions::new())
            .map_err(JsonError::Json)?;
        // serde_json writes valid UTF-8 only.
        Ok(String::from_utf8_lossy(&serializer.into_inner()).into_owned())
    }

    /// Reads an event back from its canonical JSON (what [`Self::to_json`] prints; unknown fields
    /// are an error).
    pub fn from_json(&self, json: &str) -> Result<v1::Event, JsonError> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let message = DynamicMessage::deserialize(self.descriptor.clone(), &mut deserializer)
            .map_err(JsonError::Json)?;
        deserializer.end().map_err(JsonError::Json)?;
        v1::Event::decode(message.encode_to_vec().as_slice()).map_err(JsonError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use prost_types::{Struct, Timestamp, Value, value::Kind};
    use serde_json::json;

    use super::*;

    fn event() -> v1::Event {
        v1::Event {
            sequence: 18_446_744_073_709_551_615,
            id: "0190a5b2-7c1d-7000-8000-0123456789ab".into(),
            received_at: Some(Timestamp {
                seconds: 1_714_564_800,
                nanos: 123_000_000,
            }),
            r#type: v1::EventType::OnboardingStatusChanged.into(),
            trace_context: [(
                "traceparent".to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            )]
            .into(),
            payload: Some(v1::event::Payload::OnboardingStatusChanged(
                v1::OnboardingStatusChanged {
                    interview_id: "64f0c1a2e4b0".into(),
                    external_id: Some(String::new()),
                    onboarding_status: v1::OnboardingStatus::OnboardingFinished.into(),
                    onboarding_status_raw: "ONBOARDING_FINISHED".into(),
                    additional_fields: Some(Struct {
                        fields: [
                            (
                                "flowId".to_owned(),
                                Value {
                                    kind: Some(Kind::StringValue("flow-7".into())),
                                },
                            ),
                            (
                                "score".to_owned(),
                                Value {
                                    kind: Some(Kind::NumberValue(97.5)),
                                },
                            ),
                        ]
                        .into(),
                    }),
                },
            )),
        }
    }

    #[test]
    fn events_map_to_canonical_json() {
        let mapping = EventJson::new().unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&mapping.to_json(&event()).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({
                "sequence": "18446744073709551615",
                "id": "0190a5b2-7c1d-7000-8000-0123456789ab",
                "receivedAt": "2024-05-01T12:00:00.123Z",
                "type": "EVENT_TYPE_ONBOARDING_STATUS_CHANGED",
                "traceContext": {
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                },
                "onboardingStatusChanged": {
                    "interviewId": "64f0c1a2e4b0",
                    "externalId": "",
                    "onboardingStatus": "ONBOARDING_STATUS_ONBOARDING_FINISHED",
                    "onboardingStatusRaw": "ONBOARDING_FINISHED",
                    "additionalFields": { "flowId": "flow-7", "score": 97.5 }
                }
            })
        );
    }

    #[test]
    fn default_values_are_omitted_and_unknown_enum_numbers_kept() {
        let mapping = EventJson::new().unwrap();
        let event = v1::Event {
            sequence: 1,
            r#type: 42,
            payload: Some(v1::event::Payload::WatchlistUpdated(v1::WatchlistUpdated {
                interview_id: "i".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let json: serde_json::Value =
            serde_json::from_str(&mapping.to_json(&event).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({ "sequence": "1", "type": 42, "watchlistUpdated": { "interviewId": "i" } })
        );
    }

    #[test]
    fn json_reads_back_to_the_same_event() {
        let mapping = EventJson::new().unwrap();
        let original = event();
        let json = mapping.to_json(&original).unwrap();
        assert_eq!(mapping.from_json(&json).unwrap(), original);
        assert!(mapping.from_json(r#"{"sequence":"1","bogus":1}"#).is_err());
    }
}
