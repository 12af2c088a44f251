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
    assert!(KindName::parse("document-expired").is_some());
    assert!(KindName::parse("").is_none());
    assert!(KindName::parse("a/b").is_none());
    assert!(KindName::parse(&"x".repeat(65)).is_none());
    for error in [
        Endpoint::for_kind(""),
        Endpoint::for_kind("a/b"),
        Endpoint::for_kind(&"x".repeat(65)),
    ] {
        assert_eq!(error, Err(DecodeError::InvalidKind));
    }
}

/// A modelled kind named in `/webhooks/incode/{kind}` is that kind's endpoint, never an
/// unrecognised kind of the same name: its notifications are decoded as the typed route does,
/// and so have one deduplication key and one event.
#[test]
fn a_modelled_kind_named_in_the_url_is_its_own_endpoint() {
    assert_eq!(
        Endpoint::for_kind("onboarding-status"),
        Ok(Endpoint::OnboardingStatus)
    );
    assert_eq!(
        Endpoint::for_kind("watchlist-updated"),
        Ok(Endpoint::WatchlistUpdated)
    );
    assert!(KindName::parse("onboarding-status").is_none());
    assert!(KindName::parse("watchlist-updated").is_none());
    assert_eq!(
        Endpoint::for_kind("face-match"),
        Ok(Endpoint::Other(KindName("face-match".to_owned())))
    );
}

/// A body whose extra field `deep` nests `depth` levels in all (the body itself is level 1),
/// alternating objects and arrays, or objects only.
fn nested_body(depth: usize, objects_only: bool) -> String {
    let mut value = serde_json::json!("leaf");
    for level in (2..=depth).rev() {
        value = if objects_only || level % 2 == 0 {
            serde_json::json!({ "k": value })
        } else {
            serde_json::json!([value])
        };
    }
    serde_json::json!({ "interviewId": "deep", "onboardingStatus": "UNKNOWN", "deep": value })
        .to_string()
}

fn event_of(notification: Notification) -> v1::Event {
    notification
        .into_event("id".into(), Default::default())
        .unwrap()
}

/// The deepest accepted body still decodes, with a margin, wherever an event travels: inside a
/// `SubscribeResponse`, and inside two more wrappers than that.
#[test]
fn the_deepest_accepted_body_decodes_with_a_margin() {
    use prost::Message;
    for objects_only in [true, false] {
        let body = nested_body(limits::MAX_NESTING_DEPTH, objects_only);
        let event = event_of(decode(&Endpoint::OnboardingStatus, &body).unwrap());
        let response = v1::SubscribeResponse {
            response: Some(v1::subscribe_response::Response::Event(event.clone())),
        };
        let decoded = v1::SubscribeResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, response);
        // Two more levels of wrapping: a `Struct` holding a `Value` holding the event's bytes
        // does not nest, so nest the payload deeper instead and check it still decodes.
        let deeper = nested_body(limits::MAX_NESTING_DEPTH + 8, objects_only);
        let value: serde_json::Value = serde_json::from_str(&deeper).unwrap();
        let Some(serde_json::Value::Object(fields)) = Some(value) else {
            unreachable!()
        };
        let proto = super::convert::to_struct(fields);
        let wrapped = v1::SubscribeResponse {
            response: Some(v1::subscribe_response::Response::Event(v1::Event {
                payload: Some(v1::event::Payload::OnboardingStatusChanged(
                    v1::OnboardingStatusChanged {
                        additional_fields: Some(proto),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            })),
        };
        assert!(
            v1::SubscribeResponse::decode(wrapped.encode_to_vec().as_slice()).is_ok(),
            "no margin left at depth {} (objects only: {objects_only})",
            limits::MAX_NESTING_DEPTH + 8
        );
    }
}

/// The failure this guards against: a body nested 40 levels makes an event that prost refuses.
#[test]
fn deeper_bodies_are_refused_before_they_become_events() {
    use prost::Message;
    let body = nested_body(limits::MAX_NESTING_DEPTH + 1, true);
    let error = decode(&Endpoint::OnboardingStatus, &body).unwrap_err();
    assert_eq!(error.code(), "too_deep");
    assert!(error.to_string().contains("24 levels"), "{error}");
    let watchlist = nested_body(limits::MAX_NESTING_DEPTH + 1, false).replace(
        "\"onboardingStatus\":\"UNKNOWN\"",
        "\"ref\":\"r\",\"search_id\":\"s\"",
    );
    let error = decode(&Endpoint::WatchlistUpdated, &watchlist).unwrap_err();
    assert_eq!(error.code(), "too_deep");

    // What the limit prevents: 40 levels convert, encode, and then cannot be decoded.
    let forty: serde_json::Value = serde_json::from_str(&nested_body(40, true)).unwrap();
    let serde_json::Value::Object(fields) = forty else {
        unreachable!()
    };
    let event = v1::Event {
        payload: Some(v1::event::Payload::OnboardingStatusChanged(
            v1::OnboardingStatusChanged {
                additional_fields: Some(super::convert::to_struct(fields)),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    assert!(v1::Event::decode(event.encode_to_vec().as_slice()).is_err());

    // Unrecognised bodies are kept as text, whatever their depth.
    let n = decode(
        &Endpoint::Other(KindName::parse("x").unwrap()),
        &nested_body(60, true),
    )
    .unwrap();
    let event = event_of(n);
    assert!(v1::Event::decode(event.encode_to_vec().as_slice()).is_ok());
}

#[test]
fn integers_a_double_cannot_hold_are_refused_by_path() {
    let body = |value: &str| {
        format!(r#"{{"interviewId":"n","onboardingStatus":"UNKNOWN","a":{{"b":[1,{value}]}}}}"#)
    };
    for exact in [
        "9007199254740992",
        "-9007199254740992",
        "1e300",
        "-0.0",
        "0.1",
        "1.5e-320",
    ] {
        decode(&Endpoint::OnboardingStatus, &body(exact)).unwrap();
    }
    for inexact in [
        "9007199254740993",
        "-9007199254740993",
        "18446744073709551615",
        "-9223372036854775808",
    ] {
        let error = decode(&Endpoint::OnboardingStatus, &body(inexact)).unwrap_err();
        assert_eq!(error.code(), "unrepresentable_number", "{inexact}");
        assert!(error.to_string().contains("`a.b[1]`"), "{error}");
    }
    // JSON has no NaN or infinity, and serde_json refuses numbers beyond a double's range.
    for invalid in ["NaN", "Infinity", "1e400"] {
        let error = decode(&Endpoint::OnboardingStatus, &body(invalid)).unwrap_err();
        assert_eq!(error.code(), "invalid_json", "{invalid}");
    }
}

#[test]
fn interview_ids_are_bounded_and_events_too() {
    let long = "x".repeat(limits::MAX_INTERVIEW_ID_BYTES + 1);
    let body = serde_json::json!({ "interviewId": long, "onboardingStatus": "UNKNOWN" });
    let error = decode(&Endpoint::OnboardingStatus, &body.to_string()).unwrap_err();
    assert_eq!(error.code(), "invalid_field");
    assert!(error.to_string().contains("256 bytes"), "{error}");
    // Unrecognised notifications are kept; an id too long to filter on is left out.
    let n = decode(
        &Endpoint::Other(KindName::parse("x").unwrap()),
        &body.to_string(),
    )
    .unwrap();
    let Notification::Unrecognized(unrecognized) = &n else {
        panic!("{n:?}")
    };
    assert_eq!(unrecognized.interview_id, None);

    // Small numbers grow eightfold as doubles: a body under a megabyte can make a larger event.
    let numbers = vec![0; 150_000];
    let body =
        serde_json::json!({ "interviewId": "big", "onboardingStatus": "UNKNOWN", "n": numbers });
    let n = decode(&Endpoint::OnboardingStatus, &body.to_string()).unwrap();
    let error = n.into_event("id".into(), Default::default()).unwrap_err();
    assert_eq!(error.code(), "event_too_large");
}

#[test]
fn a_notification_becomes_the_event_that_stores_it() {
    let body = r#"{"interviewId":"abc","onboardingStatus":"ONBOARDING_FINISHED"}"#;
    let trace_context =
        std::collections::HashMap::from([("traceparent".to_owned(), "00-ab-cd-01".to_owned())]);
    let new = |endpoint: &Endpoint, body: &str| {
        decode(endpoint, body)
            .unwrap()
            .into_new_event(body.as_bytes(), trace_context.clone())
            .unwrap()
    };
    let first = new(&Endpoint::OnboardingStatus, body);
    let event = &first.event;
    assert_eq!(event.r#type(), v1::EventType::OnboardingStatusChanged);
    assert!(matches!(
        event.payload,
        Some(v1::event::Payload::OnboardingStatusChanged(_))
    ));
    assert_eq!(event.trace_context, trace_context);
    let id = uuid::Uuid::parse_str(&event.id).unwrap();
    assert_eq!(id.get_version_num(), 7, "time-ordered ids");
    assert_eq!(
        (event.sequence, event.received_at),
        (0, None),
        "the log sets them"
    );

    // Incode's retry is the same body: the same key, under a new event id.
    let retry = new(&Endpoint::Detect, body);
    assert_eq!(retry.dedup_key, first.dedup_key);
    assert_ne!(retry.event.id, first.event.id);
    // The same body as another kind, or another body, is another notification.
    let other_kind = new(&Endpoint::Other(KindName::parse("x").unwrap()), body);
    assert_ne!(other_kind.dedup_key, first.dedup_key);
    let other_body = new(&Endpoint::OnboardingStatus, &format!("{body} "));
    assert_ne!(other_body.dedup_key, first.dedup_key);
}

mod accepted_bodies_decode {
    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<f64>()
                .prop_filter("JSON numbers are finite", |f| f.is_finite())
                .prop_map(serde_json::Value::from),
            any::<String>().prop_map(serde_json::Value::from),
        ];
        // Deep enough to cross the nesting limit now and then.
        leaf.prop_recursive(32, 256, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(any::<String>(), inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    fn endpoint() -> impl Strategy<Value = Endpoint> {
        prop_oneof![
            Just(Endpoint::OnboardingStatus),
            Just(Endpoint::WatchlistUpdated),
            Just(Endpoint::Detect),
            Just(Endpoint::Other(KindName::parse("other").unwrap())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever is accepted becomes an event that encodes and decodes to itself, alone and
        /// inside a `SubscribeResponse`.
        #[test]
        fn any_accepted_body_makes_a_decodable_event(
            endpoint in endpoint(),
            extra in prop::collection::btree_map(any::<String>(), json(), 0..4),
            interview_id in any::<String>(),
            status in any::<String>(),
        ) {
            let mut body = serde_json::Map::new();
            body.insert("interviewId".into(), interview_id.into());
            body.insert("onboardingStatus".into(), status.clone().into());
            body.insert("ref".into(), status.clone().into());
            body.insert("search_id".into(), status.into());
            body.extend(extra);
            let text = serde_json::Value::Object(body).to_string();
            let Ok(notification) = Notification::decode(&endpoint, text.as_bytes()) else {
                return Ok(());
            };
            let Ok(event) = notification.into_event("id".into(), Default::default()) else {
                return Ok(());
            };
            let bytes = event.encode_to_vec();
            prop_assert_eq!(&v1::Event::decode(bytes.as_slice()).unwrap(), &event);
            let response = v1::SubscribeResponse {
                response: Some(v1::subscribe_response::Response::Event(event)),
            };
            let bytes = response.encode_to_vec();
            prop_assert_eq!(v1::SubscribeResponse::decode(bytes.as_slice()).unwrap(), response);
        }
    }
}
