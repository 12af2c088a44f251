//! Access tokens: self-contained JWTs, so that every replica holding the key material verifies
//! them without shared state.
//!
//! The algorithm is HS256, pinned. The gateway is both the only issuer and the only verifier of
//! its tokens, so a symmetric key shared by the replicas is all it needs; an asymmetric algorithm
//! would add key formats and slower verification with no third party to benefit. A token whose
//! header names any other algorithm (`none`, or an asymmetric one meant to trick a verifier into
//! using the HMAC key as a public key) is refused before its signature is looked at.
//!
//! Every token names the key that signed it (`kid`, derived from the key itself), so a key can be
//! rotated: the new key signs, the old one stays as verify-only until its tokens have expired.
//!
//! The JWS compact serialisation (RFC 7515) of one fixed algorithm is a few lines, so it is
//! written here on `hmac` and `sha2` rather than taken from a JWT library: those pull in every
//! other algorithm's code (RSA among them) and accept more token shapes than this gateway issues.
//! The signature is checked, in constant time, before the claims are parsed.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{ClientId, Secret};

/// The `iss` of every token.
pub const ISSUER: &str = "incode-gateway";
/// The `aud` of every token: the webhook endpoints.
pub const AUDIENCE: &str = "incode-gateway:webhooks";
/// The one accepted signing algorithm, as the JWS `alg` header names it.
pub const ALGORITHM: &str = "HS256";
/// Tolerated clock difference between replicas (and between issuing and checking).
pub const LEEWAY: Duration = Duration::from_secs(30);
/// Smallest accepted key, in bytes: the size of the HMAC-SHA-256 output.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest token looked at; ours are about 300 bytes.
const MAX_TOKEN_LEN: usize = 4096;

type HmacSha256 = Hmac<Sha256>;

/// HMAC key material for tokens: at least [`MIN_KEY_BYTES`] random bytes, written as base64
/// (standard or URL-safe alphabet, padding optional).
pub struct TokenKey {
    id: String,
    bytes: Zeroizing<Vec<u8>>,
    /// HMAC-SHA-256 keyed with `bytes`, cloned for each use.
    mac: HmacSha256,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why key material is not usable. The messages never include the material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The text is not base64.
    #[error("a token key must be base64 text (e.g. the output of `openssl rand -base64 32`)")]
    NotBase64,
    /// The key is too short.
    #[error("a token key must have at least {MIN_KEY_BYTES} bytes; this one has {bytes}")]
    TooShort {
        /// The key's length.
        bytes: usize,
    },
    /// The system's random number generator failed.
    #[error("could not generate a token key")]
    Random(#[source] argon2::password_hash::rand_core::Error),
    /// HMAC refused the key (it takes keys of any length, so this does not happen).
    #[error("the token key is not usable for HMAC-SHA-256")]
    Hmac,
}

impl TokenKey {
    /// Parses base64 key material; surrounding whitespace (a trailing newline in a key file) is
    /// ignored.
    pub fn parse(text: &Secret) -> Result<Self, KeyError> {
        let text = text.expose().trim();
        let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or(KeyError::NotBase64)?;
        Self::from_bytes(bytes)
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyError> {
        use argon2::password_hash::rand_core::{OsRng, RngCore};
        let mut bytes = vec![0; MIN_KEY_BYTES];
        OsRng.try_fill_bytes(&mut bytes).map_err(KeyError::Random)?;
        Self::from_bytes(bytes)
    }

    fn from_bytes(bytes: Vec<u8>) -> Result<Self, KeyError> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort { bytes: bytes.len() });
        }
        // A digest of a 256-bit random key says nothing about the key; truncated, it is a short
        // stable name that every replica derives alike.
        let mut hasher = Sha256::new();
        hasher.update(b"incode-gateway token key id\0");
        hasher.update(bytes.as_slice());
        let id = URL_SAFE_NO_PAD.encode(&hasher.finalize()[..12]);
        let mac = <HmacSha256 as Mac>::new_from_slice(&bytes).map_err(|_| KeyError::Hmac)?;
        Ok(Self { id, bytes, mac })
    }

    /// The key id that tokens signed with this key carry in their header.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw key, for signing tokens outside the gateway (tests, tools).
    pub fn expose_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// How tokens are issued and checked.
#[derive(Debug)]
pub struct TokenSettings {
    /// Lifetime of an issued token.
    pub ttl: Duration,
    /// The key that signs new tokens (and verifies them).
    pub signing_key: TokenKey,
    /// Keys that only verify: earlier signing keys, kept while their tokens may be in use.
    pub verify_only_keys: Vec<TokenKey>,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: [`ISSUER`].
    pub iss: String,
    /// Audience: [`AUDIENCE`].
    pub aud: String,
    /// Subject: the client id the token was issued to.
    pub sub: String,
    /// Issued at, in seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, in seconds since the Unix epoch.
    pub exp: u64,
    /// A unique id of this token.
    pub jti: String,
}

/// A freshly issued token.
#[derive(Debug)]
pub struct IssuedToken {
    /// The compact JWT.
    pub access_token: Secret,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// Its `jti`, which may be logged.
    pub token_id: String,
}

/// Why a token was refused. The messages are safe to show to the caller.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Longer than any token this gateway issues.
    #[error("the access token is too long")]
    TooLong,
    /// Not three base64url parts with a JSON header, or an unknown algorithm such as `none`.
    #[error("the access token is not a well-formed JWT")]
    Malformed,
    /// Signed with another algorithm than the pinned one.
    #[error("the access token is not signed with HS256")]
    WrongAlgorithm,
    /// No `kid` in the header.
    #[error("the access token does not name its key")]
    MissingKeyId,
    /// A `kid` this gateway does not have.
    #[error("the access token was signed with an unknown key")]
    UnknownKey,
    /// The signature does not match.
    #[error("the access token's signature is invalid")]
    InvalidSignature,
    /// `exp` is past (beyond the leeway).
    #[error("the access token has expired")]
    Expired,
    /// `iat` is in the future (beyond the leeway).
    #[error("the access token was issued in the future")]
    IssuedInFuture,
    /// `aud` is not [`AUDIENCE`].
    #[error("the access token is meant for another audience")]
    WrongAudience,
    /// `iss` is not [`ISSUER`].
    #[error("the access token was issued by someone else")]
    WrongIssuer,
    /// A claim is missing or of the wrong type.
    #[error("the access token's claims are incomplete or invalid")]
    InvalidClaims(#[source] serde_json::Error),
    /// The header names an extension that must be understood (`crit`); none is.
    #[error("the access token's header requires an unsupported extension")]
    UnsupportedHeader,
    /// `sub` is not a configured client (any more).
    #[error("the access token's client is not configured")]
    UnknownClient,
}

/// Why a token could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The system clock is before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// The claims could not be serialised.
    #[error("could not encode the access token")]
    Encode(#[source] serde_json::Error),
}

/// Issues and verifies access tokens.
pub struct Tokens {
    ttl: Duration,
    signing_key_id: String,
    /// The signing key's HMAC state, cloned for each token.
    signing: HmacSha256,
    /// Every key that verifies, by key id.
    verifying: HashMap<String, HmacSha256>,
    verified: VerifiedTokens,
}

/// The JOSE header of a token: what this gateway writes, and what it reads of others.
#[derive(Serialize, Deserialize)]
struct JoseHeader {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kid: Option<String>,
    /// Extensions the verifier must understand (RFC 7515 §4.1.11); this one understands none.
    #[serde(default, skip_serializing)]
    crit: Option<serde_json::Value>,
}

/// Tokens whose signature and claims were already checked, by the SHA-256 of their exact text.
///
/// Incode sends the same token with every notification until it expires, so verifying it once
/// spares a base64 decode, two JSON parses and an HMAC per request. Only the exact text that
/// passed verification hits, and expiry is still checked on every use. Bounded: when full it is
/// emptied (a miss only costs one verification).
#[derive(Default)]
struct VerifiedTokens(std::sync::Mutex<HashMap<[u8; 32], Claims>>);

impl VerifiedTokens {
    const CAPACITY: usize = 4096;

    fn get(&self, digest: &[u8; 32]) -> Option<Claims> {
        let cache = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(digest).cloned()
    }

    fn insert(&self, digest: [u8; 32], claims: &Claims) {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= Self::CAPACITY {
            cache.clear();
        }
        cache.insert(digest, claims.clone());
    }

    fn remove(&self, digest: &[u8; 32]) {
        let mut cache = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.remove(digest);
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .field("signing_key_id", &self.signing_key_id)
            .field("key_ids", &self.verifying.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens signed with `settings.signing_key`, verified with it and the verify-only keys.
    pub fn new(settings: TokenSettings) -> Self {
        let verifying = settings
            .verify_only_keys
            .iter()
            .chain(std::iter::once(&settings.signing_key))
            .map(|key| (key.id.clone(), key.mac.clone()))
            .collect();
        Self {
            ttl: settings.ttl,
            signing_key_id: settings.signing_key.id.clone(),
            signing: settings.signing_key.mac.clone(),
            verifying,
            verified: VerifiedTokens::default(),
        }
    }

    /// The lifetime of issued tokens.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new token for this client.
    pub fn issue(&self, client: &ClientId) -> Result<IssuedToken, IssueError> {
        let now = unix_seconds(SystemTime::now()).ok_or(IssueError::Clock)?;
        let expires_in = self.ttl.as_secs();
        let claims = Claims {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: client.as_str().to_owned(),
            iat: now,
            exp: now.saturating_add(expires_in),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        let header = JoseHeader {
            alg: ALGORITHM.to_owned(),
            typ: Some("JWT".to_owned()),
            kid: Some(self.signing_key_id.clone()),
            crit: None,
        };
        let header = serde_json::to_vec(&header).map_err(IssueError::Encode)?;
        let payload = serde_json::to_vec(&claims).map_err(IssueError::Encode)?;
        let mut token = URL_SAFE_NO_PAD.encode(header);
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(payload));
        let mut mac = self.signing.clone();
        mac.update(token.as_bytes());
        let signature = mac.finalize().into_bytes();
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(IssuedToken {
            access_token: Secret::new(token),
            expires_in,
            token_id: claims.jti,
        })
    }

    /// The claims of a token, if it is well-formed, signed by one of our keys with the pinned
    /// algorithm, for our audience, from our issuer, and current.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_seconds(SystemTime::now()).unwrap_or(0);
        if let Some(claims) = self.verified.get(&digest) {
            if claims.exp.saturating_add(LEEWAY.as_secs()) < now {
                self.verified.remove(&digest);
                return Err(TokenError::Expired);
            }
            return Ok(claims);
        }
        let claims = self.check(token, now)?;
        self.verified.insert(digest, &claims);
        Ok(claims)
    }

    /// Verifies a token's text from scratch (no cache).
    fn check(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: JoseHeader = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or(TokenError::Malformed)?;
        if header.alg != ALGORITHM {
            return Err(TokenError::WrongAlgorithm);
        }
        if header.crit.is_some() {
            return Err(TokenError::UnsupportedHeader);
        }
        let key_id = header.kid.ok_or(TokenError::MissingKeyId)?;
        let key = self.verifying.get(&key_id).ok_or(TokenError::UnknownKey)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        // The signing input is the text as sent, up to the second dot.
        let signed = &token[..header_and_payload_len(token)];
        let mut mac = key.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&signature)
            .map_err(|_| TokenError::InvalidSignature)?;

        // Authentic from here on: one of our keys signed these bytes.
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        let claims: Claims = serde_json::from_slice(&payload).map_err(TokenError::InvalidClaims)?;
        if claims.iss != ISSUER {
            return Err(TokenError::WrongIssuer);
        }
        if claims.aud != AUDIENCE {
            return Err(TokenError::WrongAudience);
        }
        if claims.exp.saturating_add(LEEWAY.as_secs()) < now {
            return Err(TokenError::Expired);
        }
        if claims.iat > now.saturating_add(LEEWAY.as_secs()) {
            return Err(TokenError::IssuedInFuture);
        }
        Ok(claims)
    }
}

/// Length of `header.payload` in a token already known to have three dot-separated parts.
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

fn unix_seconds(time: SystemTime) -> Option<u64> {
    time.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    fn key(text: &str) -> TokenKey {
        TokenKey::parse(&Secret::new(text)).unwrap()
    }

    fn tokens(signing: TokenKey, verify_only: Vec<TokenKey>) -> Tokens {
        Tokens::new(TokenSettings {
            ttl: Duration::from_secs(60),
            signing_key: signing,
            verify_only_keys: verify_only,
        })
    }

    fn client() -> ClientId {
        ClientId::parse("incode").unwrap()
    }

    #[test]
    fn a_verified_token_is_remembered_but_its_expiry_still_applies() {
        let tokens = tokens(key(KEY), Vec::new());
        let issued = tokens.issue(&client()).unwrap();
        let token = issued.access_token.expose();
        let first = tokens.verify(token).unwrap();
        assert_eq!(tokens.verify(token).unwrap(), first);

        // A remembered token past its expiry (and the leeway) is refused and forgotten.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let expired = Claims {
            exp: first.iat.saturating_sub(LEEWAY.as_secs() + 1),
            ..first.clone()
        };
        tokens.verified.insert(digest, &expired);
        assert!(matches!(tokens.verify(token), Err(TokenError::Expired)));
        // Forgotten: the next use verifies the text again, which is still valid.
        assert_eq!(tokens.verify(token).unwrap(), first);

        // A different text, even one signature byte off, is never a hit.
        let mut tampered = token.to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(tokens.verify(&tampered).is_err());
    }

    #[test]
    fn keys_parse_in_every_base64_flavour_and_have_stable_ids() {
        let standard = key(KEY);
        let url_safe_no_pad = key(&format!("  {}\n", KEY.trim_end_matches('=')));
        assert_eq!(standard.id(), url_safe_no_pad.id());
        assert_eq!(standard.expose_bytes(), b"0123456789abcdef0123456789abcdef");
        assert_ne!(standard.id(), TokenKey::generate().unwrap().id());
        assert!(matches!(
            TokenKey::parse(&Secret::new("c2hvcnQ=")),
            Err(KeyError::TooShort { bytes: 5 })
        ));
        assert!(matches!(
            TokenKey::parse(&Secret::new("not base64!")),
            Err(KeyError::NotBase64)
        ));
        assert!(!format!("{standard:?}").contains(KEY));
    }

    #[test]
    fn an_issued_token_verifies_and_carries_the_claims() {
        let tokens = tokens(key(KEY), vec![]);
        let issued = tokens.issue(&client()).unwrap();
        assert_eq!(issued.expires_in, 60);
        let claims = tokens.verify(issued.access_token.expose()).unwrap();
        assert_eq!(
            (claims.iss.as_str(), claims.aud.as_str()),
            (ISSUER, AUDIENCE)
        );
        assert_eq!(claims.sub, "incode");
        assert_eq!(claims.exp - claims.iat, 60);
        assert_eq!(claims.jti, issued.token_id);
        let other = tokens.issue(&client()).unwrap();
        assert_ne!(other.token_id, issued.token_id);
    }

    #[test]
    fn a_token_is_a_standard_hs256_jws() {
        let tokens = tokens(key(KEY), vec![]);
        let token = tokens.issue(&client()).unwrap().access_token;
        let parts: Vec<&str> = token.expose().split('.').collect();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], key(KEY).id());
        // RFC 7515 §5.1: the MAC of `header.payload` under the key, base64url without padding.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key(KEY).expose_bytes()).unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()),
            parts[2]
        );
        // A claim changed after signing breaks the signature.
        let forged_claims = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
                .unwrap()
                .replace("incode", "incodf"),
        );
        let forged = format!("{}.{}.{}", parts[0], forged_claims, parts[2]);
        assert!(matches!(
            tokens.verify(&forged),
            Err(TokenError::InvalidSignature)
        ));
    }

    #[test]
    fn verify_only_keys_verify_and_unknown_keys_do_not() {
        let old = tokens(key(KEY), vec![]);
        let token = old.issue(&client()).unwrap().access_token;
        let rotated = tokens(TokenKey::generate().unwrap(), vec![key(KEY)]);
        assert!(rotated.verify(token.expose()).is_ok());
        let forgotten = tokens(TokenKey::generate().unwrap(), vec![]);
        assert!(matches!(
            forgotten.verify(token.expose()),
            Err(TokenError::UnknownKey)
        ));
    }

    #[test]
    fn garbage_is_malformed() {
        let tokens = tokens(key(KEY), vec![]);
        for garbage in ["", "a.b.c", "not a token", "a.b.c.d", "e30.e30.e30"] {
            assert!(
                matches!(tokens.verify(garbage), Err(TokenError::Malformed)),
                "{garbage}"
            );
        }
        // `alg: none`, and a header that demands an extension.
        assert!(matches!(
            tokens.verify("eyJhbGciOiJub25lIn0.e30."),
            Err(TokenError::WrongAlgorithm)
        ));
        let crit = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","kid":"x","crit":["exp"]}"#);
        assert!(matches!(
            tokens.verify(&format!("{crit}.e30.AAAA")),
            Err(TokenError::UnsupportedHeader)
        ));
        assert!(matches!(
            tokens.verify(&"a".repeat(5000)),
            Err(TokenError::TooLong)
        ));
    }
}
