//! Access token verification. Half the inputs are tokens as such; the other half edit a genuine
//! token (overwrite bytes at an offset), and an edited token must never verify.

#![no_main]

use std::{sync::OnceLock, time::Duration};

use incode_gateway::auth::{ClientId, Secret, TokenKey, TokenSettings, Tokens};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "ZnV6ei1rZXktZm9yLWp3dC12ZXJpZnktMDEyMzQ1Njc4OWFi";
const OLD_KEY: &str = "b2xkLWZ1enota2V5LWZvci1qd3QtdmVyaWZ5LTAxMjM0NTY3";

fn tokens() -> &'static (Tokens, String) {
    static TOKENS: OnceLock<(Tokens, String)> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let key = |text: &str| TokenKey::parse(&Secret::new(text)).expect("a valid key");
        let tokens = Tokens::new(TokenSettings {
            ttl: Duration::from_secs(3600),
            signing_key: key(KEY),
            verify_only_keys: vec![key(OLD_KEY)],
        });
        let client = ClientId::parse("incode").expect("a valid client id");
        let genuine = tokens.issue(&client).expect("a token").access_token;
        (tokens, genuine.expose().to_owned())
    })
}

fuzz_target!(|data: &[u8]| {
    let (tokens, genuine) = tokens();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(text) = std::str::from_utf8(rest) {
            if tokens.verify(text).is_ok() {
                assert_eq!(text, genuine, "only the genuine token verifies");
            }
        }
        return;
    }
    let Some((&offset, patch)) = rest.split_first() else {
        return;
    };
    let mut edited = genuine.as_bytes().to_vec();
    let start = usize::from(offset) * edited.len() / 256;
    for (index, byte) in patch.iter().enumerate() {
        match edited.get_mut(start + index) {
            Some(slot) => *slot = *byte,
            None => edited.push(*byte),
        }
    }
    let Ok(text) = std::str::from_utf8(&edited) else {
        return;
    };
    if tokens.verify(text).is_ok() {
        assert_eq!(text, genuine, "an edited token verified");
    }
});
