//! Subscription filters, checked once when a subscription starts.
//!
//! Every list is bounded, and so is every id in it, so that one request cannot make the gateway
//! build and probe a table of hundreds of thousands of entries for each event it streams.

use std::collections::HashSet;

use crate::{
    error::{ErrorKind, ServiceError},
    incode::limits::MAX_INTERVIEW_ID_BYTES,
    proto::v1::{self, event::Payload},
};

/// Most interview ids in one filter.
pub const MAX_INTERVIEW_IDS: usize = 1024;
/// Most entries in `types` or `onboarding_statuses` (each has far fewer distinct values).
pub const MAX_ENUM_VALUES: usize = 32;

/// A validated [`v1::EventFilter`].
#[derive(Debug, Default, Clone)]
pub struct Filter {
    types: HashSet<v1::EventType>,
    interview_ids: HashSet<String>,
    statuses: HashSet<v1::OnboardingStatus>,
}

/// Why a filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// An event type value that is not defined, or `EVENT_TYPE_UNSPECIFIED`.
    #[error("filter.types: {0} is not a valid event type")]
    EventType(i32),
    /// An onboarding status value that is not defined.
    #[error("filter.onboarding_statuses: {0} is not a valid onboarding status")]
    OnboardingStatus(i32),
    /// A list longer than allowed.
    #[error("filter.{list} has {len} entries; at most {max} are allowed")]
    TooMany {
        /// The list's field name.
        list: &'static str,
        /// Its length.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// An interview id longer than any the gateway stores, or empty.
    #[error(
        "filter.interview_ids[{index}] must be 1 to {MAX_INTERVIEW_ID_BYTES} bytes long (it has {len})"
    )]
    InterviewIdLength {
        /// Its position in the list.
        index: usize,
        /// Its length in bytes.
        len: usize,
    },
}

impl ServiceError for FilterError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::BadRequest
    }

    fn code(&self) -> &'static str {
        "invalid_filter"
    }
}

impl TryFrom<v1::EventFilter> for Filter {
    type Error = FilterError;

    fn try_from(filter: v1::EventFilter) -> Result<Self, FilterError> {
        for (list, len, max) in [
            ("types", filter.types.len(), MAX_ENUM_VALUES),
            (
                "interview_ids",
                filter.interview_ids.len(),
                MAX_INTERVIEW_IDS,
            ),
            (
                "onboarding_statuses",
                filter.onboarding_statuses.len(),
                MAX_ENUM_VALUES,
            ),
        ] {
            if len > max {
                return Err(FilterError::TooMany { list, len, max });
            }
        }
        if let Some((index, id)) = filter
            .interview_ids
            .iter()
            .enumerate()
            .find(|(_, id)| id.is_empty() || id.len() > MAX_INTERVIEW_ID_BYTES)
        {
            return Err(FilterError::InterviewIdLength {
                index,
                len: id.len(),
            });
        }
        let types = filter
            .types
            .into_iter()
            .map(|value| match v1::EventType::try_from(value) {
                Ok(v1::EventType::Unspecified) | Err(_) => Err(FilterError::EventType(value)),
                Ok(known) => Ok(known),
            })
            .collect::<Result<_, _>>()?;
        let statuses = filter
            .onboarding_statuses
            .into_iter()
            .map(|value| {
                v1::OnboardingStatus::try_from(value)
                    .map_err(|_| FilterError::OnboardingStatus(value))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            types,
            interview_ids: filter.interview_ids.into_iter().collect(),
            statuses,
        })
    }
}

impl Filter {
    /// Whether the filter lets every event through.
    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.interview_ids.is_empty() && self.statuses.is_empty()
    }

    /// Whether the event matches every non-empty list of the filter.
    pub fn matches(&self, event: &v1::Event) -> bool {
        if !self.types.is_empty() {
            let matches_type = v1::EventType::try_from(event.r#type)
                .is_ok_and(|event_type| self.types.contains(&event_type));
            if !matches_type {
                return false;
            }
        }
        if !self.interview_ids.is_empty()
            && !event
                .interview_id()
                .is_some_and(|id| self.interview_ids.contains(id))
        {
            return false;
        }
        if !self.statuses.is_empty() {
            let Some(Payload::OnboardingStatusChanged(changed)) = &event.payload else {
                return false;
            };
            let status = v1::OnboardingStatus::try_from(changed.onboarding_status)
                .unwrap_or(v1::OnboardingStatus::Unspecified);
            if !self.statuses.contains(&status) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event of this type about this interview.
    fn event(event_type: v1::EventType, interview_id: &str) -> v1::Event {
        let interview_id = interview_id.to_owned();
        let payload = match event_type {
            v1::EventType::OnboardingStatusChanged => {
                Payload::OnboardingStatusChanged(v1::OnboardingStatusChanged {
                    interview_id,
                    ..Default::default()
                })
            }
            v1::EventType::WatchlistUpdated => Payload::WatchlistUpdated(v1::WatchlistUpdated {
                interview_id,
                ..Default::default()
            }),
            _ => Payload::UnrecognizedNotification(v1::UnrecognizedNotification {
                interview_id,
                ..Default::default()
            }),
        };
        v1::Event {
            r#type: event_type.into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn onboarding(interview_id: &str, status: impl Into<i32>) -> v1::Event {
        let mut event = event(v1::EventType::OnboardingStatusChanged, interview_id);
        if let Some(Payload::OnboardingStatusChanged(payload)) = &mut event.payload {
            payload.onboarding_status = status.into();
        }
        event
    }

    fn filter(types: &[v1::EventType], ids: &[&str], statuses: &[v1::OnboardingStatus]) -> Filter {
        Filter::try_from(v1::EventFilter {
            types: types.iter().map(|t| i32::from(*t)).collect(),
            interview_ids: ids.iter().map(|id| (*id).to_owned()).collect(),
            onboarding_statuses: statuses.iter().map(|s| i32::from(*s)).collect(),
        })
        .unwrap()
    }

    /// Which of `events` `filter` lets through, by index.
    fn passed(filter: &Filter, events: &[v1::Event]) -> Vec<usize> {
        (0..events.len())
            .filter(|&i| filter.matches(&events[i]))
            .collect()
    }

    fn sample() -> Vec<v1::Event> {
        vec![
            onboarding("a", v1::OnboardingStatus::OnboardingFinished),
            onboarding("b", v1::OnboardingStatus::Unknown),
            event(v1::EventType::WatchlistUpdated, "a"),
            event(v1::EventType::UnrecognizedNotification, "a"),
            event(v1::EventType::UnrecognizedNotification, ""),
            // A status this version does not know reads as unspecified.
            onboarding("c", 999),
        ]
    }

    #[test]
    fn an_empty_filter_lets_everything_through() {
        let filter = Filter::try_from(v1::EventFilter::default()).unwrap();
        assert!(filter.is_empty());
        assert_eq!(passed(&filter, &sample()), [0, 1, 2, 3, 4, 5]);
        assert!(filter.matches(&v1::Event::default()));
    }

    #[test]
    fn types_select_event_types() {
        use v1::EventType::*;
        let events = sample();
        assert_eq!(passed(&filter(&[WatchlistUpdated], &[], &[]), &events), [2]);
        assert_eq!(
            passed(
                &filter(
                    &[OnboardingStatusChanged, UnrecognizedNotification],
                    &[],
                    &[]
                ),
                &events
            ),
            [0, 1, 3, 4, 5]
        );
        let unknown_type = v1::Event {
            r#type: 42,
            ..event(WatchlistUpdated, "a")
        };
        assert!(!filter(&[WatchlistUpdated], &[], &[]).matches(&unknown_type));
    }

    #[test]
    fn interview_ids_select_sessions_of_every_kind() {
        let events = sample();
        assert_eq!(passed(&filter(&[], &["a"], &[]), &events), [0, 2, 3]);
        assert_eq!(passed(&filter(&[], &["b", "c"], &[]), &events), [1, 5]);
        // No id is not an empty id: an event without one never matches an id filter.
        assert!(!filter(&[], &["a"], &[]).matches(&v1::Event::default()));
    }

    #[test]
    fn onboarding_statuses_select_only_onboarding_events() {
        use v1::OnboardingStatus::*;
        let events = sample();
        assert_eq!(
            passed(&filter(&[], &[], &[OnboardingFinished]), &events),
            [0]
        );
        assert_eq!(
            passed(&filter(&[], &[], &[Unknown, Unspecified]), &events),
            [1, 5]
        );
    }

    #[test]
    fn every_list_must_match() {
        let events = sample();
        let both = filter(
            &[v1::EventType::OnboardingStatusChanged],
            &["a", "b"],
            &[v1::OnboardingStatus::Unknown],
        );
        assert!(!both.is_empty());
        assert_eq!(passed(&both, &events), [1]);
        let none = filter(&[v1::EventType::WatchlistUpdated], &["b"], &[]);
        assert!(passed(&none, &events).is_empty());
    }

    #[test]
    fn undefined_enum_values_are_refused() {
        let refuse = |types: Vec<i32>, statuses: Vec<i32>| {
            Filter::try_from(v1::EventFilter {
                types,
                onboarding_statuses: statuses,
                ..Default::default()
            })
            .unwrap_err()
        };
        for (error, expected) in [
            (
                refuse(vec![99], vec![]),
                "filter.types: 99 is not a valid event type",
            ),
            (
                refuse(vec![1, 0], vec![]),
                "filter.types: 0 is not a valid event type",
            ),
            (
                refuse(vec![], vec![1, -1]),
                "filter.onboarding_statuses: -1 is not a valid onboarding status",
            ),
        ] {
            assert_eq!(error.to_string(), expected);
            assert_eq!(error.grpc_code(), tonic::Code::InvalidArgument);
        }
        // Unspecified is a status a filter may ask for: the one unknown statuses read as.
        assert!(
            Filter::try_from(v1::EventFilter {
                onboarding_statuses: vec![0],
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn lists_and_ids_are_bounded() {
        let ids = |n: usize| (0..n).map(|i| format!("id-{i}")).collect::<Vec<_>>();
        let filter = |interview_ids, types: Vec<i32>, statuses: Vec<i32>| v1::EventFilter {
            types,
            interview_ids,
            onboarding_statuses: statuses,
        };
        assert!(Filter::try_from(filter(ids(MAX_INTERVIEW_IDS), vec![1; 32], vec![0; 32])).is_ok());
        for (bad, expected) in [
            (
                filter(ids(MAX_INTERVIEW_IDS + 1), vec![], vec![]),
                "filter.interview_ids has 1025",
            ),
            (filter(vec![], vec![1; 33], vec![]), "filter.types has 33"),
            (
                filter(vec![], vec![], vec![0; 33]),
                "filter.onboarding_statuses has 33",
            ),
            (
                filter(vec!["a".into(), String::new()], vec![], vec![]),
                "interview_ids[1]",
            ),
            (
                filter(vec!["x".repeat(257)], vec![], vec![]),
                "1 to 256 bytes",
            ),
        ] {
            let error = Filter::try_from(bad).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        assert!(Filter::try_from(filter(vec!["x".repeat(256)], vec![], vec![])).is_ok());
    }
}
