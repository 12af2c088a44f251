//! Incode's onboarding status values.

use crate::proto::v1;

/// An onboarding status as Incode sent it: one this version knows, or any other string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnboardingStatus {
    known: v1::OnboardingStatus,
    raw: String,
}

/// Incode's spelling of each known status.
const KNOWN: [(&str, v1::OnboardingStatus); 9] = [
    ("UNKNOWN", v1::OnboardingStatus::Unknown),
    (
        "ID_VALIDATION_FINISHED",
        v1::OnboardingStatus::IdValidationFinished,
    ),
    (
        "POST_PROCESSING_FINISHED",
        v1::OnboardingStatus::PostProcessingFinished,
    ),
    (
        "FACE_VALIDATION_FINISHED",
        v1::OnboardingStatus::FaceValidationFinished,
    ),
    (
        "GOVERNMENT_VALIDATION_FINISHED",
        v1::OnboardingStatus::GovernmentValidationFinished,
    ),
    (
        "ONBOARDING_FINISHED",
        v1::OnboardingStatus::OnboardingFinished,
    ),
    (
        "MANUAL_REVIEW_APPROVED",
        v1::OnboardingStatus::ManualReviewApproved,
    ),
    (
        "MANUAL_REVIEW_REJECTED",
        v1::OnboardingStatus::ManualReviewRejected,
    ),
    (
        "ID_VALIDATION_FINISHED_SECOND_ID",
        v1::OnboardingStatus::IdValidationFinishedSecondId,
    ),
];

impl OnboardingStatus {
    /// Reads Incode's spelling; a value this version does not know becomes
    /// [`v1::OnboardingStatus::Unspecified`] and keeps its raw spelling.
    pub fn parse(raw: String) -> Self {
        let known = KNOWN
            .iter()
            .find(|(name, _)| *name == raw)
            .map_or(v1::OnboardingStatus::Unspecified, |(_, status)| *status);
        Self { known, raw }
    }

    /// The status in the contract's terms.
    pub fn known(&self) -> v1::OnboardingStatus {
        self.known
    }

    /// The status exactly as Incode spelled it.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// Incode's spelling of a known contract status.
    pub fn incode_name(status: v1::OnboardingStatus) -> Option<&'static str> {
        KNOWN
            .iter()
            .find(|(_, known)| *known == status)
            .map(|(name, _)| *name)
    }

    pub(super) fn into_raw(self) -> String {
        self.raw
    }
}
