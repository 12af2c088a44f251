use super::*;
use crate::proto::v1;

fn decode(endpoint: &Endpoint, body: &str) -> Result<Notification, DecodeError> {
    Notification::decode(endpoint, body.as_bytes())
}

#[test]
fn onboarding_status_keeps_every_field() {
    let n = decode(
        &Endpoint::OnboardingStatus,
        r#"{"interviewId":"abc","externalId":"ext-1","onboardingStatus":"ONBOARDING_FINISHED","flowId":"f1","score":7}"#,
    )
    .unwrap();
    let Notification::OnboardingStatusChanged(n) = n else {
        panic!("wrong kind: {n:?}")
    };
    assert_eq!(n.interview_id.as_str(), "abc");
    assert_eq!(n.external_id.as_deref(), Some("ext-1"));
    assert_eq!(
        n.onboarding_status.known(),
        v1::OnboardingStatus::OnboardingFinished
    );
    assert_eq!(n.additional_fields.len(), 2);
    let proto = v1::OnboardingStatusChanged::from(n);
    let fields = proto.additional_fields.unwrap().fields;
    assert_eq!(
        fields["score"].kind,
        Some(prost_types::value::Kind::NumberValue(7.0))
    );
}

#[test]
fn every_documented_status_is_known() {
    for raw in [
        "UNKNOWN",
        "ID_VALIDATION_FINISHED",
        "POST_PROCESSING_FINISHED",
        "FACE_VALIDATION_FINISHED",
        "GOVERNMENT_VALIDATION_FINISHED",
        "ONBOARDING_FINISHED",
        "MANUAL_REVIEW_APPROVED",
        "MANUAL_REVIEW_REJECTED",
        "ID_VALIDATION_FINISHED_SECOND_ID",
    ] {
        let status = OnboardingStatus::parse(raw.to_owned());
        assert_ne!(status.known(), v1::OnboardingStatus::Unspecified, "{raw}");
        assert_eq!(OnboardingStatus::incode_name(status.known()), Some(raw));
    }
}

#[test]
fn unknown_status_is_kept_raw() {
    let status = OnboardingStatus::parse("BRAND_NEW_STATUS".to_owned());
    assert_eq!(status.known(), v1::OnboardingStatus::Unspecified);
    assert_eq!(status.raw(), "BRAND_NEW_STATUS");
}

#[test]
fn detect_recognises_shapes() {
    let onboarding = decode(
        &Endpoint::Detect,
        r#"{"interviewId":"a","onboardingStatus":"UNKNOWN"}"#,
    )
    .unwrap();
    assert_eq!(onboarding.kind(), "onboarding-status");
    let watchlist = decode(
        &Endpoint::Detect,
        r#"{"interviewId":"a","ref":"r","search_id":"s"}"#,
    )
    .unwrap();
    assert_eq!(watchlist.kind(), "watchlist-updated");
    let other = decode(&Endpoint::Detect, r#"{"interviewId":"a","what":1}"#).unwrap();
    let Notification::Unrecognized(other) = other else {
        panic!("wrong kind")
    };
    assert_eq!(other.kind, UNKNOWN_KIND);
    assert_eq!(other.interview_id.as_deref(), Some("a"));
    assert_eq!(other.raw_json, r#"{"interviewId":"a","what":1}"#);
}

#[test]
fn bad_bodies_name_the_problem() {
    let cases: [(&[u8], &str); 8] = [
        (b"\xff\xfe", "invalid_utf8"),
        (b"{not json", "invalid_json"),
        (b"", "invalid_json"),
        (b"[1,2]", "not_an_object"),
        (br#"{"onboardingStatus":"UNKNOWN"}"#, "missing_field"),
        (
            br#"{"interviewId":null,"onboardingStatus":"UNKNOWN"}"#,
            "missing_field",
        ),
        (
            br#"{"interviewId":5,"onboardingStatus":"UNKNOWN"}"#,
            "invalid_field",
        ),
        (
            br#"{"interviewId":" ","onboardingStatus":"UNKNOWN"}"#,
            "invalid_field",
        ),
    ];
    for (body, code) in cases {
        let err = Notification::decode(&Endpoint::OnboardingStatus, body).unwrap_err();
        assert_eq!(err.code(), code, "{body:?}: {err}");
    }
    let err = decode(
        &Endpoint::WatchlistUpdated,
        r#"{"interviewId":"a","ref":1,"search_id":"s"}"#,
    )
    .unwrap_err();
    assert_eq!(err.to_string(), "ref must be a string, found a number");
}

#[test]
fn kind_names_are_restricted() {
    assert!(KindName::parse("document-expired").is_ok());
    assert!(KindName::parse("").is_err());
    assert!(KindName::parse("a/b").is_err());
    assert!(KindName::parse(&"x".repeat(65)).is_err());
}
