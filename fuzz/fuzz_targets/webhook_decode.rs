//! The webhook decoder: any body posted to any endpoint either is refused or becomes an event
//! that encodes and decodes to itself, alone and as a stream message (no poison message).

#![no_main]

use incode_gateway::{
    incode::{Endpoint, Notification},
    proto::v1,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let endpoint = match selector % 4 {
        0 => Endpoint::OnboardingStatus,
        1 => Endpoint::WatchlistUpdated,
        2 => Endpoint::Detect,
        _ => match Endpoint::for_kind("document-expired") {
            Ok(endpoint) => endpoint,
            Err(_) => return,
        },
    };
    let Ok(notification) = Notification::decode(&endpoint, body) else {
        return;
    };
    let kind = notification.kind().to_owned();
    assert!(!kind.is_empty());
    let Ok(event) = notification.into_event("fuzz".into(), Default::default()) else {
        return;
    };
    let bytes = event.encode_to_vec();
    let decoded = v1::Event::decode(bytes.as_slice()).expect("a stored event decodes");
    assert_eq!(decoded, event);
    let response = v1::SubscribeResponse {
        response: Some(v1::subscribe_response::Response::Event(event)),
    };
    let bytes = response.encode_to_vec();
    let decoded =
        v1::SubscribeResponse::decode(bytes.as_slice()).expect("a streamed event decodes");
    assert_eq!(decoded, response);
});
