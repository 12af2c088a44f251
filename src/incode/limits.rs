//! What the event format can carry, checked before a notification is stored.
//!
//! An event that is stored but cannot be decoded is a poison message: every subscriber that
//! reads it fails, and Incode has already been told it was delivered. So whatever the protobuf
//! decoders of the subscribers' languages refuse is refused here first, with a `422` that names
//! the problem:
//!
//! - **Nesting.** Decoders stop at 100 nested messages (prost's and upb's default recursion
//!   limit). In a `google.protobuf.Struct` each JSON object level costs three (`Struct`, the map
//!   entry, `Value`) and each array level two, on top of the event's own wrappers, so a body may
//!   nest at most [`MAX_NESTING_DEPTH`] levels, which leaves a wide margin.
//! - **Numbers.** `Struct` numbers are doubles (the protobuf JSON mapping). An integer beyond
//!   ±2^53 would silently become another number; it is refused rather than altered.
//! - **Size.** gRPC clients refuse messages over 4 MiB by default; an encoded event may have at
//!   most [`MAX_EVENT_BYTES`].
//! - **Session ids** longer than [`MAX_INTERVIEW_ID_BYTES`] could never be selected by a
//!   subscription filter, which caps its ids at that length.

use std::fmt::Write;

use prost::Message;
use serde_json::{Map, Value};

use super::DecodeError;
use crate::proto::v1;

/// Deepest JSON nesting a converted body may have; the body's own object is level 1.
pub const MAX_NESTING_DEPTH: usize = 24;

/// Largest encoded event, in bytes: a quarter of the 4 MiB that gRPC clients accept by default.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Longest accepted `interviewId`, in bytes; subscription filters take ids up to this length.
pub const MAX_INTERVIEW_ID_BYTES: usize = 256;

/// Largest integer magnitude a double holds exactly (2^53).
const MAX_EXACT_INTEGER: u64 = 1 << 53;

/// Longest field path quoted in an error.
const MAX_PATH_CHARS: usize = 120;

/// Checks the fields of a body that become a `google.protobuf.Struct`: `fields` are the body's
/// top-level members (level 1 is the body itself).
pub(super) fn check_struct_fields(fields: &Map<String, Value>) -> Result<(), DecodeError> {
    let mut path = String::new();
    for (key, value) in fields {
        path.clear();
        path.push_str(key);
        check_value(value, 2, &mut path)?;
    }
    Ok(())
}

fn check_value(value: &Value, depth: usize, path: &mut String) -> Result<(), DecodeError> {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
        Value::Number(number) => check_number(number, path),
        Value::Array(items) => {
            too_deep(depth)?;
            let len = path.len();
            for (index, item) in items.iter().enumerate() {
                path.truncate(len);
                let _ = write!(path, "[{index}]");
                check_value(item, depth + 1, path)?;
            }
            path.truncate(len);
            Ok(())
        }
        Value::Object(members) => {
            too_deep(depth)?;
            let len = path.len();
            for (key, member) in members {
                path.truncate(len);
                path.push('.');
                path.push_str(key);
                check_value(member, depth + 1, path)?;
            }
            path.truncate(len);
            Ok(())
        }
    }
}

fn too_deep(depth: usize) -> Result<(), DecodeError> {
    if depth > MAX_NESTING_DEPTH {
        Err(DecodeError::TooDeep {
            limit: MAX_NESTING_DEPTH,
        })
    } else {
        Ok(())
    }
}

fn check_number(number: &serde_json::Number, path: &str) -> Result<(), DecodeError> {
    let exact = if let Some(n) = number.as_u64() {
        n <= MAX_EXACT_INTEGER
    } else if let Some(n) = number.as_i64() {
        n.unsigned_abs() <= MAX_EXACT_INTEGER
    } else {
        number.as_f64().is_some_and(f64::is_finite)
    };
    if exact {
        Ok(())
    } else {
        Err(DecodeError::UnrepresentableNumber {
            path: shorten(path),
        })
    }
}

fn shorten(path: &str) -> String {
    if path.chars().count() <= MAX_PATH_CHARS {
        return path.to_owned();
    }
    let mut short: String = path.chars().take(MAX_PATH_CHARS).collect();
    short.push('…');
    short
}

/// Checks the length of a session id.
pub(super) fn check_interview_id(id: &str) -> Result<(), DecodeError> {
    if id.len() > MAX_INTERVIEW_ID_BYTES {
        return Err(DecodeError::FieldTooLong {
            field: "interviewId",
            limit: MAX_INTERVIEW_ID_BYTES,
        });
    }
    Ok(())
}

/// Checks that an event, as it will be stored and streamed, fits the size subscribers accept.
pub fn check_event_size(event: &v1::Event) -> Result<(), DecodeError> {
    let bytes = event.encoded_len();
    if bytes > MAX_EVENT_BYTES {
        return Err(DecodeError::EventTooLarge {
            bytes,
            limit: MAX_EVENT_BYTES,
        });
    }
    Ok(())
}
