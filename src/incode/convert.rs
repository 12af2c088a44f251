//! Conversion of decoded notifications to the protobuf contract.

use std::collections::HashMap;

use prost_types::{ListValue, Struct, value::Kind};
use serde_json::{Map, Value};

use super::{
    DecodeError, Notification, OnboardingStatusNotification, UnrecognizedNotification,
    WatchlistNotification, limits,
};
use crate::{
    log::{DedupKey, NewEvent},
    proto::v1,
};

impl Notification {
    /// What the log stores for this notification, received as `body`: the event, under a new
    /// id and carrying `trace_context` (the W3C context of the span that received it), and the
    /// key that recognises Incode's byte-for-byte retry of it.
    pub fn into_new_event(
        self,
        body: &[u8],
        trace_context: HashMap<String, String>,
    ) -> Result<NewEvent, DecodeError> {
        let dedup_key = DedupKey::for_notification(self.kind(), body);
        let event = self.into_event(uuid::Uuid::now_v7().to_string(), trace_context)?;
        Ok(NewEvent { dedup_key, event })
    }

    /// The event that stores this notification (its log position and time are set when it is
    /// appended), refused when it is larger than subscribers accept.
    pub fn into_event(
        self,
        id: String,
        trace_context: HashMap<String, String>,
    ) -> Result<v1::Event, DecodeError> {
        let event = v1::Event {
            id,
            r#type: self.event_type().into(),
            trace_context,
            payload: Some(self.into()),
            ..v1::Event::default()
        };
        limits::check_event_size(&event)?;
        Ok(event)
    }

    /// The contract's event type for this notification.
    pub fn event_type(&self) -> v1::EventType {
        match self {
            Self::OnboardingStatusChanged(_) => v1::EventType::OnboardingStatusChanged,
            Self::WatchlistUpdated(_) => v1::EventType::WatchlistUpdated,
            Self::Unrecognized(_) => v1::EventType::UnrecognizedNotification,
        }
    }
}

impl From<Notification> for v1::event::Payload {
    fn from(notification: Notification) -> Self {
        match notification {
            Notification::OnboardingStatusChanged(n) => Self::OnboardingStatusChanged(n.into()),
            Notification::WatchlistUpdated(n) => Self::WatchlistUpdated(n.into()),
            Notification::Unrecognized(n) => Self::UnrecognizedNotification(n.into()),
        }
    }
}

impl From<OnboardingStatusNotification> for v1::OnboardingStatusChanged {
    fn from(n: OnboardingStatusNotification) -> Self {
        Self {
            interview_id: n.interview_id.into(),
            external_id: n.external_id,
            onboarding_status: n.onboarding_status.known().into(),
            onboarding_status_raw: n.onboarding_status.into_raw(),
            additional_fields: Some(to_struct(n.additional_fields)),
        }
    }
}

impl From<WatchlistNotification> for v1::WatchlistUpdated {
    fn from(n: WatchlistNotification) -> Self {
        Self {
            interview_id: n.interview_id.into(),
            r#ref: n.reference,
            search_id: n.search_id,
            additional_fields: Some(to_struct(n.additional_fields)),
        }
    }
}

impl From<UnrecognizedNotification> for v1::UnrecognizedNotification {
    fn from(n: UnrecognizedNotification) -> Self {
        Self {
            kind: n.kind,
            raw_json: n.raw_json,
            interview_id: n.interview_id.unwrap_or_default(),
        }
    }
}

/// Converts a JSON object to a `google.protobuf.Struct`. Numbers become doubles, as the
/// protobuf JSON mapping defines.
pub fn to_struct(object: Map<String, Value>) -> Struct {
    Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, to_value(value)))
            .collect(),
    }
}

fn to_value(value: Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => Kind::NullValue(prost_types::NullValue::NullValue.into()),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_value).collect(),
        }),
        Value::Object(object) => Kind::StructValue(to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}
