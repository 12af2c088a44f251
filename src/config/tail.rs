//! The arguments of `incode-gateway tail` (the tool itself is the binary's `cli::tail`).

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use clap::Args;

use crate::{auth::Secret, proto::v1};

/// Options of `tail`.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// The gateway's internal (gRPC) listener: `http://` in plain text, `https://` over TLS.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,

    /// PEM CA certificate(s) to verify the gateway's certificate with (`https://` only);
    /// without it, the system's trusted roots.
    #[arg(long, env = "INCODE_GATEWAY_TAIL_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// PEM client certificate to present, for a gateway with mutual TLS (with --key).
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,

    /// The name to verify the gateway's certificate against, when it differs from the host of
    /// --addr (e.g. connecting by IP address).
    #[arg(long, env = "INCODE_GATEWAY_TAIL_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Bearer token of a subscriber, sent as `authorization: Bearer <token>`. Prefer the
    /// environment variable: flags show in the process list.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TAIL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Secret>,

    /// Where to start: `latest` (only new events; the default), `earliest` (every stored
    /// event), a sequence number (that event and the ones after it) or an RFC 3339 time (events
    /// received at or after it, e.g. `2024-05-01T12:00:00Z`; UTC when no offset is given). With
    /// `--consumer` and no `--from`, after the consumer's last acknowledged event.
    #[arg(long, value_name = "POSITION", value_parser = parse_from)]
    pub from: Option<StartAt>,

    /// Only events of these types: `onboarding-status-changed`, `watchlist-updated`,
    /// `unrecognized-notification` (or the proto names, `EVENT_TYPE_...`). Repeat the flag or
    /// separate with commas.
    #[arg(long = "type", value_name = "TYPE", value_delimiter = ',', value_parser = parse_event_type)]
    pub types: Vec<v1::EventType>,

    /// Only events about these Incode sessions (`interviewId`). Repeat or separate with commas.
    #[arg(long = "interview-id", value_name = "ID", value_delimiter = ',')]
    pub interview_ids: Vec<String>,

    /// Only onboarding status events with these statuses, in Incode's spelling
    /// (`ONBOARDING_FINISHED`) or the proto names (`ONBOARDING_STATUS_...`); `unspecified` selects
    /// statuses the gateway does not know. Repeat or separate with commas.
    #[arg(long = "status", value_name = "STATUS", value_delimiter = ',', value_parser = parse_status)]
    pub statuses: Vec<v1::OnboardingStatus>,

    /// Subscribe as this durable consumer (without acknowledging anything).
    #[arg(long, value_name = "NAME")]
    pub consumer: Option<String>,

    /// Exit after printing this many events.
    #[arg(long, value_name = "N")]
    pub max_events: Option<u64>,

    /// How long to wait for the connection to the gateway.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

/// The start position asked for with `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// Only new events.
    Latest,
    /// Every stored event.
    Earliest,
    /// This sequence and the ones after it.
    Sequence(u64),
    /// Events received at or after this time.
    Time(SystemTime),
}

fn parse_from(text: &str) -> Result<StartAt, String> {
    match text {
        "latest" => return Ok(StartAt::Latest),
        "earliest" => return Ok(StartAt::Earliest),
        _ => {}
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse()
            .map(StartAt::Sequence)
            .map_err(|_| format!("sequence {text} is too large"));
    }
    parse_rfc3339(text).map(StartAt::Time).map_err(|reason| {
        format!(
            "expected `earliest`, `latest`, a sequence number or an RFC 3339 time such as \
             2024-05-01T12:00:00Z ({reason})"
        )
    })
}

/// Parses an RFC 3339 time with a `Z` or `±hh:mm` offset, or none (UTC): what `--from` and
/// the admin tools accept as a time.
pub fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    let (local, offset_seconds) = split_offset(text)?;
    let local = humantime::parse_rfc3339_weak(local).map_err(|e| e.to_string())?;
    let offset = Duration::from_secs(offset_seconds.unsigned_abs());
    // local = UTC + offset, so UTC = local - offset.
    let utc = if offset_seconds >= 0 {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    };
    utc.ok_or_else(|| "time out of range".to_owned())
}

fn split_offset(text: &str) -> Result<(&str, i64), String> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Ok((local, 0));
    }
    let split = text
        .len()
        .checked_sub(6)
        .and_then(|at| Some((text.get(..at)?, text.get(at..)?)));
    let Some((local, offset)) = split else {
        return Ok((text, 0));
    };
    let sign = match offset.as_bytes().first() {
        Some(b'+') => 1,
        Some(b'-') => -1,
        _ => return Ok((text, 0)),
    };
    let invalid = || format!("invalid UTC offset {offset:?}, expected +hh:mm or -hh:mm");
    let two_digits = |part: &str| -> Option<i64> {
        (part.len() == 2 && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let (hours, minutes) = offset
        .get(1..)
        .and_then(|hh_mm| hh_mm.split_once(':'))
        .and_then(|(hh, mm)| Some((two_digits(hh)?, two_digits(mm)?)))
        .ok_or_else(invalid)?;
    if hours > 23 || minutes > 59 {
        return Err(invalid());
    }
    Ok((local, sign * (hours * 3600 + minutes * 60)))
}

/// Uppercases and turns `-` into `_`, so that `watchlist-updated` reads as `WATCHLIST_UPDATED`.
fn normalize(text: &str) -> String {
    text.trim().to_ascii_uppercase().replace('-', "_")
}

fn parse_event_type(text: &str) -> Result<v1::EventType, String> {
    let name = normalize(text);
    let name = name.strip_prefix("EVENT_TYPE_").unwrap_or(&name);
    match v1::EventType::from_str_name(&format!("EVENT_TYPE_{name}")) {
        Some(v1::EventType::Unspecified) | None => Err(
            "expected onboarding-status-changed, watchlist-updated or unrecognized-notification"
                .to_owned(),
        ),
        Some(event_type) => Ok(event_type),
    }
}

fn parse_status(text: &str) -> Result<v1::OnboardingStatus, String> {
    let name = normalize(text);
    let name = name.strip_prefix("ONBOARDING_STATUS_").unwrap_or(&name);
    v1::OnboardingStatus::from_str_name(&format!("ONBOARDING_STATUS_{name}")).ok_or_else(|| {
        "expected one of Incode's statuses (UNKNOWN, ID_VALIDATION_FINISHED, \
         POST_PROCESSING_FINISHED, FACE_VALIDATION_FINISHED, GOVERNMENT_VALIDATION_FINISHED, \
         ONBOARDING_FINISHED, MANUAL_REVIEW_APPROVED, MANUAL_REVIEW_REJECTED, \
         ID_VALIDATION_FINISHED_SECOND_ID) or UNSPECIFIED"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn time(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn from_reads_every_kind_of_position() {
        assert_eq!(parse_from("latest"), Ok(StartAt::Latest));
        assert_eq!(parse_from("earliest"), Ok(StartAt::Earliest));
        assert_eq!(parse_from("42"), Ok(StartAt::Sequence(42)));
        assert_eq!(
            parse_from("2024-05-01T12:00:00Z"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00Z")))
        );
        assert_eq!(
            parse_from("2024-05-01T14:30:00.5+02:30"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00.5Z")))
        );
        assert_eq!(
            parse_from("2024-05-01T07:00:00-05:00"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00Z")))
        );
        assert_eq!(
            parse_from("2024-05-01T12:00:00"),
            Ok(StartAt::Time(time("2024-05-01T12:00:00Z")))
        );
        for bad in [
            "",
            "soon",
            "99999999999999999999999",
            "2024-05-01T12:00:00+2:00",
            "2024-05-01T12:00:00+25:00",
        ] {
            assert!(parse_from(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn types_and_statuses_read_short_and_proto_names() {
        for text in [
            "watchlist-updated",
            "WATCHLIST_UPDATED",
            "EVENT_TYPE_WATCHLIST_UPDATED",
        ] {
            assert_eq!(parse_event_type(text), Ok(v1::EventType::WatchlistUpdated));
        }
        assert!(parse_event_type("unspecified").is_err());
        assert!(parse_event_type("bogus").is_err());
        for text in [
            "ONBOARDING_FINISHED",
            "onboarding-finished",
            "ONBOARDING_STATUS_ONBOARDING_FINISHED",
        ] {
            assert_eq!(
                parse_status(text),
                Ok(v1::OnboardingStatus::OnboardingFinished)
            );
        }
        assert_eq!(
            parse_status("unspecified"),
            Ok(v1::OnboardingStatus::Unspecified)
        );
        assert!(parse_status("FINISHED").is_err());
    }
}
