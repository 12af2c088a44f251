//! Subscription filters, checked once when a subscription starts.

use std::collections::HashSet;

use crate::proto::v1::{self, event::Payload};

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
}

impl crate::error::ServiceError for FilterError {
    fn error_code(&self) -> crate::error::ErrorCode {
        crate::error::ErrorCode::BadRequest
    }
}

impl TryFrom<v1::EventFilter> for Filter {
    type Error = FilterError;

    fn try_from(filter: v1::EventFilter) -> Result<Self, FilterError> {
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
            && !interview_id(event).is_some_and(|id| self.interview_ids.contains(id))
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

fn interview_id(event: &v1::Event) -> Option<&str> {
    let id = match event.payload.as_ref()? {
        Payload::OnboardingStatusChanged(p) => &p.interview_id,
        Payload::WatchlistUpdated(p) => &p.interview_id,
        Payload::UnrecognizedNotification(p) => &p.interview_id,
    };
    (!id.is_empty()).then_some(id.as_str())
}
