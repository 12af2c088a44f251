//! Incode's wire formats: the JSON bodies Incode posts to the webhook endpoints, parsed into
//! typed notifications, and their conversion to the [`crate::proto`] contract.
//!
//! Decoding is strict about what Incode documents (a mandatory field that is missing or of the
//! wrong JSON type is an error) and lenient about everything else: fields it does not model are
//! kept in `additional_fields`, unknown statuses keep their raw spelling, and bodies of an unknown
//! shape are kept verbatim. Incode does not send a notification a third time, so nothing
//! well-formed is rejected, except what the event format cannot carry ([`limits`]): a stored
//! event that subscribers cannot decode would be worse than a refusal Incode is told about.

mod convert;
pub mod limits;
mod status;

use std::fmt;

use serde_json::{Map, Value};

use crate::error::{ErrorKind, ServiceError};

pub use status::OnboardingStatus;

/// The webhook endpoint a notification was posted to, which decides how its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /webhooks/incode/onboarding-status`.
    OnboardingStatus,
    /// `POST /webhooks/incode/watchlist-updated`.
    WatchlistUpdated,
    /// `POST /webhooks/incode`: the kind is recognised from the body's shape.
    Detect,
    /// `POST /webhooks/incode/{kind}` for a kind this version does not model.
    Other(KindName),
}

impl Endpoint {
    /// The endpoint of `POST /webhooks/incode/{kind}`, for the kind named in the URL (after
    /// percent-decoding).
    ///
    /// The name of a modelled kind is that kind's endpoint, however the URL spelled it:
    /// `/webhooks/incode/onboarding%2Dstatus` is `/webhooks/incode/onboarding-status` (RFC 3986
    /// §6.2.2.2 makes them the same URL, and a proxy in front may send either). Refusing the
    /// other spelling could lose a notification Incode will not send a third time; reading it
    /// as an unrecognised kind would store a second decoding of one kind, under the same
    /// deduplication key as the typed one, so that whichever came first would make the other
    /// a "duplicate".
    pub fn for_kind(name: &str) -> Result<Self, DecodeError> {
        match name {
            ONBOARDING_STATUS_KIND => Ok(Self::OnboardingStatus),
            WATCHLIST_UPDATED_KIND => Ok(Self::WatchlistUpdated),
            other => KindName::parse(other)
                .map(Self::Other)
                .ok_or(DecodeError::InvalidKind),
        }
    }

    /// The kind a call to this endpoint is meant to be, for counting calls that fail before
    /// their body is decoded: the kind name, or `detect` for `/webhooks/incode`.
    pub fn kind(&self) -> &str {
        match self {
            Self::OnboardingStatus => ONBOARDING_STATUS_KIND,
            Self::WatchlistUpdated => WATCHLIST_UPDATED_KIND,
            Self::Detect => "detect",
            Self::Other(kind) => kind.as_str(),
        }
    }
}

/// Kind name of "notify onboarding status changed".
const ONBOARDING_STATUS_KIND: &str = "onboarding-status";
/// Kind name of "notify global watchlist has updates".
const WATCHLIST_UPDATED_KIND: &str = "watchlist-updated";

/// The name of a notification kind this version does not model, taken from a webhook URL: 1 to
/// 64 ASCII letters, digits, `-`, `_` or `.`, and never the name of a modelled kind (those have
/// endpoints of their own, see [`Endpoint::for_kind`]). So a kind name always means one way of
/// reading a body, and the deduplication key (kind and body) one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KindName(String);

impl KindName {
    /// Longest accepted kind name.
    pub const MAX_LEN: usize = 64;

    /// The kind name `name`, unless it is not a plain name or names a modelled kind.
    fn parse(name: &str) -> Option<Self> {
        let modelled = [ONBOARDING_STATUS_KIND, WATCHLIST_UPDATED_KIND].contains(&name);
        (!modelled && crate::error::is_plain_name(name, Self::MAX_LEN))
            .then(|| Self(name.to_owned()))
    }

    /// The kind name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Incode's session id (`interviewId`): a non-empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterviewId(String);

impl InterviewId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<InterviewId> for String {
    fn from(id: InterviewId) -> Self {
        id.0
    }
}

/// "Notify onboarding status changed".
#[derive(Debug, Clone, PartialEq)]
pub struct OnboardingStatusNotification {
    /// `interviewId`.
    pub interview_id: InterviewId,
    /// `externalId`, when present and not null.
    pub external_id: Option<String>,
    /// `onboardingStatus`, known or not.
    pub onboarding_status: OnboardingStatus,
    /// Every other top-level field.
    pub additional_fields: Map<String, Value>,
}

/// "Notify global watchlist has updates".
#[derive(Debug, Clone, PartialEq)]
pub struct WatchlistNotification {
    /// `interviewId`.
    pub interview_id: InterviewId,
    /// `ref`.
    pub reference: String,
    /// `search_id`.
    pub search_id: String,
    /// Every other top-level field.
    pub additional_fields: Map<String, Value>,
}

/// A well-formed JSON object of a kind or shape this version does not model.
#[derive(Debug, Clone, PartialEq)]
pub struct UnrecognizedNotification {
    /// The kind from the URL, or `unknown`.
    pub kind: String,
    /// The body exactly as received.
    pub raw_json: String,
    /// The body's top-level `interviewId`, when it is a string.
    pub interview_id: Option<String>,
}

/// A decoded Incode notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// See [`OnboardingStatusNotification`].
    OnboardingStatusChanged(OnboardingStatusNotification),
    /// See [`WatchlistNotification`].
    WatchlistUpdated(WatchlistNotification),
    /// See [`UnrecognizedNotification`].
    Unrecognized(UnrecognizedNotification),
}

/// Kind name of notifications posted to `/webhooks/incode` whose shape is not recognised.
pub const UNKNOWN_KIND: &str = "unknown";

impl Notification {
    /// Decodes a webhook body posted to `endpoint`.
    pub fn decode(endpoint: &Endpoint, body: &[u8]) -> Result<Self, DecodeError> {
        let text = std::str::from_utf8(body).map_err(|e| DecodeError::InvalidUtf8 {
            valid_up_to: e.valid_up_to(),
        })?;
        let value: Value = serde_json::from_str(text).map_err(|e| DecodeError::InvalidJson {
            line: e.line(),
            column: e.column(),
            reason: e.to_string(),
        })?;
        let Value::Object(object) = value else {
            return Err(DecodeError::NotAnObject {
                found: json_type(&value),
            });
        };
        match endpoint {
            Endpoint::OnboardingStatus => Ok(Self::OnboardingStatusChanged(
                OnboardingStatusNotification::from_object(object)?,
            )),
            Endpoint::WatchlistUpdated => Ok(Self::WatchlistUpdated(
                WatchlistNotification::from_object(object)?,
            )),
            Endpoint::Other(kind) => Ok(Self::Unrecognized(UnrecognizedNotification::new(
                kind.as_str(),
                text,
                &object,
            ))),
            Endpoint::Detect => {
                if object.contains_key(OnboardingStatusNotification::STATUS) {
                    Ok(Self::OnboardingStatusChanged(
                        OnboardingStatusNotification::from_object(object)?,
                    ))
                } else if object.contains_key(WatchlistNotification::REF)
                    && object.contains_key(WatchlistNotification::SEARCH_ID)
                {
                    Ok(Self::WatchlistUpdated(WatchlistNotification::from_object(
                        object,
                    )?))
                } else {
                    Ok(Self::Unrecognized(UnrecognizedNotification::new(
                        UNKNOWN_KIND,
                        text,
                        &object,
                    )))
                }
            }
        }
    }

    /// The kind name of this notification: `onboarding-status`, `watchlist-updated`, or the
    /// unrecognised kind. Together with the body it identifies a notification for deduplication.
    pub fn kind(&self) -> &str {
        match self {
            Self::OnboardingStatusChanged(_) => ONBOARDING_STATUS_KIND,
            Self::WatchlistUpdated(_) => WATCHLIST_UPDATED_KIND,
            Self::Unrecognized(n) => &n.kind,
        }
    }
}

impl OnboardingStatusNotification {
    const INTERVIEW_ID: &str = "interviewId";
    const EXTERNAL_ID: &str = "externalId";
    const STATUS: &str = "onboardingStatus";

    fn from_object(mut object: Map<String, Value>) -> Result<Self, DecodeError> {
        let interview_id = take_interview_id(&mut object)?;
        let external_id = take_optional_string(&mut object, Self::EXTERNAL_ID)?;
        let status = take_string(&mut object, Self::STATUS)?;
        limits::check_struct_fields(&object)?;
        Ok(Self {
            interview_id,
            external_id,
            onboarding_status: OnboardingStatus::parse(status),
            additional_fields: object,
        })
    }
}

impl WatchlistNotification {
    const REF: &str = "ref";
    const SEARCH_ID: &str = "search_id";

    fn from_object(mut object: Map<String, Value>) -> Result<Self, DecodeError> {
        let interview_id = take_interview_id(&mut object)?;
        let reference = take_string(&mut object, Self::REF)?;
        let search_id = take_string(&mut object, Self::SEARCH_ID)?;
        limits::check_struct_fields(&object)?;
        Ok(Self {
            interview_id,
            reference,
            search_id,
            additional_fields: object,
        })
    }
}

impl UnrecognizedNotification {
    fn new(kind: &str, raw_json: &str, object: &Map<String, Value>) -> Self {
        // An id too long for any filter is left out; the body keeps it.
        let interview_id = object
            .get(OnboardingStatusNotification::INTERVIEW_ID)
            .and_then(Value::as_str)
            .filter(|id| limits::check_interview_id(id).is_ok())
            .map(str::to_owned);
        Self {
            kind: kind.to_owned(),
            raw_json: raw_json.to_owned(),
            interview_id,
        }
    }
}

fn take_interview_id(object: &mut Map<String, Value>) -> Result<InterviewId, DecodeError> {
    let field = OnboardingStatusNotification::INTERVIEW_ID;
    let id = take_string(object, field)?;
    if id.trim().is_empty() {
        return Err(DecodeError::EmptyField { field });
    }
    limits::check_interview_id(&id)?;
    Ok(InterviewId(id))
}

fn take_string(
    object: &mut Map<String, Value>,
    field: &'static str,
) -> Result<String, DecodeError> {
    match object.remove(field) {
        Some(Value::String(s)) => Ok(s),
        None | Some(Value::Null) => Err(DecodeError::MissingField { field }),
        Some(other) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
            found: json_type(&other),
        }),
    }
}

fn take_optional_string(
    object: &mut Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, DecodeError> {
    match object.remove(field) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(DecodeError::WrongType {
            field,
            expected: "a string",
            found: json_type(&other),
        }),
    }
}

fn json_type(value: &Value) -> JsonType {
    match value {
        Value::Null => JsonType::Null,
        Value::Bool(_) => JsonType::Boolean,
        Value::Number(_) => JsonType::Number,
        Value::String(_) => JsonType::String,
        Value::Array(_) => JsonType::Array,
        Value::Object(_) => JsonType::Object,
    }
}

/// The JSON type of a value, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    /// `null`.
    Null,
    /// `true` or `false`.
    Boolean,
    /// A number.
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

impl fmt::Display for JsonType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Null => "null",
            Self::Boolean => "a boolean",
            Self::Number => "a number",
            Self::String => "a string",
            Self::Array => "an array",
            Self::Object => "an object",
        })
    }
}

/// Why a webhook body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not valid UTF-8.
    #[error("the body is not valid UTF-8 (first invalid byte at offset {valid_up_to})")]
    InvalidUtf8 {
        /// Offset of the first invalid byte.
        valid_up_to: usize,
    },
    /// The body is not a JSON document.
    #[error("the body is not valid JSON: {reason}")]
    InvalidJson {
        /// Line of the error (1-based).
        line: usize,
        /// Column of the error (1-based).
        column: usize,
        /// The parser's description.
        reason: String,
    },
    /// The body is JSON but not an object.
    #[error("the body must be a JSON object, found {found}")]
    NotAnObject {
        /// What it is instead.
        found: JsonType,
    },
    /// A mandatory field is missing or null.
    #[error("{field} is missing")]
    MissingField {
        /// The field's name as Incode spells it.
        field: &'static str,
    },
    /// A mandatory field is an empty string.
    #[error("{field} must not be empty")]
    EmptyField {
        /// The field's name as Incode spells it.
        field: &'static str,
    },
    /// A field has the wrong JSON type.
    #[error("{field} must be {expected}, found {found}")]
    WrongType {
        /// The field's name as Incode spells it.
        field: &'static str,
        /// The type it must have.
        expected: &'static str,
        /// The type it has.
        found: JsonType,
    },
    /// The kind in the URL is not a valid kind name.
    #[error(
        "the notification kind in the URL must be 1 to 64 ASCII letters, digits, '-', '_' or '.'"
    )]
    InvalidKind,
    /// A field is longer than the gateway keeps.
    #[error("{field} must be at most {limit} bytes long")]
    FieldTooLong {
        /// The field's name as Incode spells it.
        field: &'static str,
        /// The longest accepted length.
        limit: usize,
    },
    /// The body nests deeper than the event format can carry.
    #[error(
        "the body nests deeper than {limit} levels of objects and arrays, which the event format cannot carry"
    )]
    TooDeep {
        /// The deepest accepted nesting.
        limit: usize,
    },
    /// A number that a double cannot hold exactly.
    #[error(
        "the number at `{path}` cannot be carried exactly: event fields hold numbers as doubles, exact for integers up to 2^53"
    )]
    UnrepresentableNumber {
        /// Where the number is, e.g. `device.scores[2]`.
        path: String,
    },
    /// The event would be larger than subscribers accept.
    #[error("the notification makes an event of {bytes} bytes; at most {limit} are accepted")]
    EventTooLarge {
        /// The encoded event's size.
        bytes: usize,
        /// The largest accepted size.
        limit: usize,
    },
}

impl ServiceError for DecodeError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidUtf8 { .. }
            | Self::InvalidJson { .. }
            | Self::NotAnObject { .. }
            | Self::InvalidKind => ErrorKind::BadRequest,
            Self::MissingField { .. }
            | Self::EmptyField { .. }
            | Self::WrongType { .. }
            | Self::FieldTooLong { .. }
            | Self::TooDeep { .. }
            | Self::UnrepresentableNumber { .. }
            | Self::EventTooLarge { .. } => ErrorKind::Unprocessable,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::InvalidJson { .. } => "invalid_json",
            Self::NotAnObject { .. } => "not_an_object",
            Self::MissingField { .. } => "missing_field",
            Self::EmptyField { .. } | Self::WrongType { .. } | Self::FieldTooLong { .. } => {
                "invalid_field"
            }
            Self::InvalidKind => "invalid_kind",
            Self::TooDeep { .. } => "too_deep",
            Self::UnrepresentableNumber { .. } => "unrepresentable_number",
            Self::EventTooLarge { .. } => "event_too_large",
        }
    }
}

#[cfg(test)]
mod tests;
