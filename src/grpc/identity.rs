//! Subscriber identities of the internal listener: the `[[subscribers]]` of the config file,
//! their bearer tokens (kept only as SHA-256 digests, compared in constant time), the consumer
//! name patterns each may use, and the names a client certificate stands for.
//!
//! Tokens are long random strings, not passwords: one fast digest per call is enough, and lets
//! the configuration hold digests instead of the tokens themselves.

use std::{fmt, sync::Arc};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio_rustls::rustls::pki_types::CertificateDer;
use x509_cert::{
    Certificate,
    der::{
        Decode,
        asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef},
        oid::db::rfc4519::COMMON_NAME,
    },
    ext::pkix::{SubjectAltName, name::GeneralName},
};

use crate::{auth::Secret, error::is_plain_name};

/// Longest subscriber name: the longest consumer name too.
pub const MAX_NAME_LEN: usize = crate::subscriptions::names::MAX_NAME_LEN;

/// Shortest plain token accepted: anything shorter could be guessed.
pub const MIN_TOKEN_LEN: usize = 16;

/// How a token digest is written in the config file: `sha256:` and 64 hex digits.
pub const DIGEST_PREFIX: &str = "sha256:";

/// A configured subscriber.
#[derive(Debug)]
pub struct Subscriber {
    name: String,
    consumers: Vec<ConsumerPattern>,
    read_stream: bool,
    has_tokens: bool,
}

impl Subscriber {
    /// Its name, as it appears in logs, spans and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether it may subscribe without a consumer.
    pub fn may_read_stream(&self) -> bool {
        self.read_stream
    }

    /// Whether it may use and acknowledge the durable consumer or consumer group `name` (the
    /// two share one namespace and one set of name rules).
    pub fn may_use_consumer(&self, name: &str) -> bool {
        self.consumers.iter().any(|pattern| pattern.matches(name))
    }

    /// Whether it has tokens (otherwise only a client certificate can authenticate it).
    pub fn has_tokens(&self) -> bool {
        self.has_tokens
    }
}

/// A pattern of consumer names: the consumer-name alphabet, where `*` matches any run of
/// characters (also none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerPattern(String);

impl ConsumerPattern {
    /// Parses a pattern.
    pub fn parse(pattern: &str) -> Result<Self, InvalidPattern> {
        let plain = pattern.replace('*', "a");
        if is_plain_name(&plain, MAX_NAME_LEN) {
            Ok(Self(pattern.to_owned()))
        } else {
            Err(InvalidPattern)
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        wildcard_match(self.0.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for ConsumerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A consumer pattern with characters outside the consumer-name alphabet.
#[derive(Debug, thiserror::Error)]
#[error("1 to 128 ASCII letters, digits, '-', '_', '.' or '*'")]
pub struct InvalidPattern;

/// `*` matches any run of bytes; everything else matches itself. Linear in practice: on a
/// mismatch it only ever backtracks to just after the last `*`.
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                resume = Some((p + 1, n));
                p += 1;
            }
            Some(&c) if c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match resume {
                Some((after_star, from)) => {
                    p = after_star;
                    n = from + 1;
                    resume = Some((after_star, from + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*')
}

/// The SHA-256 digest of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
struct TokenDigest([u8; 32]);

impl TokenDigest {
    fn of(token: &[u8]) -> Self {
        Self(Sha256::digest(token).into())
    }

    /// Parses the 64 hex digits after [`DIGEST_PREFIX`].
    fn parse_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut digest = [0_u8; 32];
        for (out, pair) in digest.iter_mut().zip(bytes.chunks_exact(2)) {
            let high = char::from(pair[0]).to_digit(16)?;
            let low = char::from(pair[1]).to_digit(16)?;
            *out = u8::try_from(high * 16 + low).ok()?;
        }
        Some(Self(digest))
    }
}

/// A subscriber as configured (a `[[subscribers]]` entry of the config file).
#[derive(Debug, Clone)]
pub struct SubscriberSettings {
    /// Its name; a client certificate whose SAN DNS name (or, without DNS names, CN) is this
    /// name authenticates as this subscriber.
    pub name: String,
    /// Bearer tokens it may present, plain or as `sha256:<hex digest>`.
    pub tokens: Vec<Secret>,
    /// The durable consumers (and consumer groups) it may use and acknowledge; `*` matches any
    /// run of characters.
    pub consumers: Vec<String>,
    /// Whether it may subscribe without a consumer (the plain stream).
    pub read_stream: bool,
}

/// The configured subscribers.
#[derive(Debug, Default)]
pub struct Subscribers {
    subscribers: Vec<Arc<Subscriber>>,
    /// Every token digest with the index of its subscriber.
    tokens: Vec<(TokenDigest, usize)>,
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[digest]")
    }
}

/// Why a `[[subscribers]]` entry is not usable. Messages name the subscriber and the position
/// of a bad token, never the token.
#[derive(Debug, thiserror::Error)]
pub enum SubscriberConfigError {
    /// A name outside the allowed alphabet or length.
    #[error(
        "subscribers[{index}]: name {name:?} must be 1 to 128 ASCII letters, digits, '-', '_' or '.'"
    )]
    InvalidName {
        /// Position in the file (0-based).
        index: usize,
        /// The name.
        name: String,
    },
    /// Two entries with the same name.
    #[error("subscriber `{name}` is configured twice (names are compared ignoring case)")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A token that is too short or holds characters a header cannot carry.
    #[error(
        "subscriber `{name}`: token #{number} must be at least {MIN_TOKEN_LEN} visible ASCII \
         characters without spaces (e.g. from `openssl rand -base64 32`)"
    )]
    WeakToken {
        /// The subscriber.
        name: String,
        /// 1-based position among its tokens.
        number: usize,
    },
    /// A `sha256:` token that is not 64 hex digits.
    #[error(
        "subscriber `{name}`: token #{number} starts with `sha256:` but is not followed by 64 hex digits"
    )]
    InvalidDigest {
        /// The subscriber.
        name: String,
        /// 1-based position among its tokens.
        number: usize,
    },
    /// The same token (or digest) for two subscribers, or twice for one.
    #[error("the same token is configured for subscriber `{first}` and subscriber `{second}`")]
    DuplicateToken {
        /// One subscriber.
        first: String,
        /// The other (possibly the same).
        second: String,
    },
    /// A consumer pattern outside the alphabet.
    #[error("subscriber `{name}`: consumer pattern {pattern:?} must be {source}")]
    InvalidPattern {
        /// The subscriber.
        name: String,
        /// The pattern.
        pattern: String,
        /// What is wrong.
        source: InvalidPattern,
    },
}

impl Subscribers {
    /// The subscribers `configured`, in their order.
    pub fn new(configured: &[SubscriberSettings]) -> Result<Self, SubscriberConfigError> {
        let mut subscribers: Vec<Arc<Subscriber>> = Vec::with_capacity(configured.len());
        let mut tokens: Vec<(TokenDigest, usize)> = Vec::new();
        for (index, entry) in configured.iter().enumerate() {
            let name = entry.name.clone();
            if !is_plain_name(&name, MAX_NAME_LEN) {
                return Err(SubscriberConfigError::InvalidName { index, name });
            }
            if subscribers
                .iter()
                .any(|other| other.name.eq_ignore_ascii_case(&name))
            {
                return Err(SubscriberConfigError::DuplicateName { name });
            }
            for (position, token) in entry.tokens.iter().enumerate() {
                let digest = parse_token(token, &name, position + 1)?;
                if let Some(&(_, other)) = tokens.iter().find(|(known, _)| *known == digest) {
                    return Err(SubscriberConfigError::DuplicateToken {
                        first: subscribers
                            .get(other)
                            .map_or_else(|| name.clone(), |s| s.name.clone()),
                        second: name,
                    });
                }
                tokens.push((digest, index));
            }
            let consumers = entry
                .consumers
                .iter()
                .map(|pattern| {
                    ConsumerPattern::parse(pattern).map_err(|source| {
                        SubscriberConfigError::InvalidPattern {
                            name: name.clone(),
                            pattern: pattern.clone(),
                            source,
                        }
                    })
                })
                .collect::<Result<_, _>>()?;
            subscribers.push(Arc::new(Subscriber {
                has_tokens: !entry.tokens.is_empty(),
                name,
                consumers,
                read_stream: entry.read_stream,
            }));
        }
        Ok(Self {
            subscribers,
            tokens,
        })
    }

    /// Whether no subscriber is configured.
    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    /// How many subscribers are configured.
    pub fn len(&self) -> usize {
        self.subscribers.len()
    }

    /// The subscribers, in the file's order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Subscriber>> {
        self.subscribers.iter()
    }

    /// Whether any subscriber has a token.
    pub fn any_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    /// The subscriber a bearer token belongs to. Every configured digest is compared, in
    /// constant time, whatever matches: the time taken says nothing about the token.
    pub fn by_token(&self, token: &[u8]) -> Option<&Arc<Subscriber>> {
        let presented = TokenDigest::of(token);
        // 0 = no match; otherwise the index of the subscriber plus one.
        let mut found = 0_u64;
        for (digest, index) in &self.tokens {
            let candidate = u64::try_from(*index).map_or(0, |i| i.saturating_add(1));
            let equal = digest.0.ct_eq(&presented.0);
            found = u64::conditional_select(&found, &candidate, equal);
        }
        let index = usize::try_from(found.checked_sub(1)?).ok()?;
        self.subscribers.get(index)
    }

    /// The subscriber a client certificate with these names stands for: the one whose name is
    /// among them (ignoring ASCII case). `Err` when several subscribers match.
    pub fn by_certificate_names(
        &self,
        names: &[String],
    ) -> Result<Option<&Arc<Subscriber>>, AmbiguousCertificate> {
        let mut matching = self.subscribers.iter().filter(|subscriber| {
            names
                .iter()
                .any(|name| name.eq_ignore_ascii_case(&subscriber.name))
        });
        let first = matching.next();
        if matching.next().is_some() {
            return Err(AmbiguousCertificate);
        }
        Ok(first)
    }
}

/// A client certificate whose names match more than one subscriber.
#[derive(Debug, thiserror::Error)]
#[error("the client certificate names more than one configured subscriber")]
pub struct AmbiguousCertificate;

fn parse_token(
    token: &Secret,
    name: &str,
    number: usize,
) -> Result<TokenDigest, SubscriberConfigError> {
    let text = token.expose();
    if let Some(hex) = text.strip_prefix(DIGEST_PREFIX) {
        return TokenDigest::parse_hex(hex).ok_or_else(|| SubscriberConfigError::InvalidDigest {
            name: name.to_owned(),
            number,
        });
    }
    let visible = text.bytes().all(|b| b.is_ascii_graphic());
    if text.len() < MIN_TOKEN_LEN || !visible {
        return Err(SubscriberConfigError::WeakToken {
            name: name.to_owned(),
            number,
        });
    }
    Ok(TokenDigest::of(text.as_bytes()))
}

/// The names a client certificate stands for: its subject alternative DNS names, or when it has
/// none, its subject common names (RFC 6125 order of preference).
pub fn certificate_names(
    certificate: &CertificateDer<'_>,
) -> Result<Vec<String>, CertificateError> {
    let certificate = Certificate::from_der(certificate.as_ref()).map_err(CertificateError)?;
    let tbs = &certificate.tbs_certificate;
    if let Some((_, SubjectAltName(names))) =
        tbs.get::<SubjectAltName>().map_err(CertificateError)?
    {
        let dns: Vec<String> = names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DnsName(dns) => Some(dns.as_str().to_owned()),
                _ => None,
            })
            .collect();
        if !dns.is_empty() {
            return Ok(dns);
        }
    }
    let mut common_names = Vec::new();
    for rdn in tbs.subject.0.iter() {
        for attribute in rdn.0.iter() {
            if attribute.oid != COMMON_NAME {
                continue;
            }
            let value = &attribute.value;
            let text = value
                .decode_as::<Utf8StringRef<'_>>()
                .map(|s| s.as_str().to_owned())
                .or_else(|_| {
                    value
                        .decode_as::<PrintableStringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                })
                .or_else(|_| {
                    value
                        .decode_as::<Ia5StringRef<'_>>()
                        .map(|s| s.as_str().to_owned())
                });
            if let Ok(text) = text {
                common_names.push(text);
            }
        }
    }
    Ok(common_names)
}

/// A certificate that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the certificate cannot be parsed")]
pub struct CertificateError(#[source] x509_cert::der::Error);

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, tokens: &[&str], consumers: &[&str]) -> SubscriberSettings {
        SubscriberSettings {
            name: name.to_owned(),
            tokens: tokens.iter().map(|t| Secret::new(*t)).collect(),
            consumers: consumers.iter().map(|c| (*c).to_owned()).collect(),
            read_stream: true,
        }
    }

    #[test]
    fn patterns_match_with_stars() {
        let cases = [
            ("billing", "billing", true),
            ("billing", "billing-eu", false),
            ("billing-*", "billing-eu", true),
            ("billing-*", "billing-", true),
            ("billing-*", "billing", false),
            ("billing-*", "payments", false),
            ("*", "anything.at-all", true),
            ("*-eu", "billing-eu", true),
            ("*-eu", "billing-us", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*b", "abab", true),
            ("a**b", "ab", true),
        ];
        for (pattern, name, expected) in cases {
            let parsed = ConsumerPattern::parse(pattern).unwrap();
            assert_eq!(parsed.matches(name), expected, "{pattern} vs {name}");
        }
        for bad in ["", "billing eu", "bill/ing", "ü", &"a".repeat(129)] {
            assert!(ConsumerPattern::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_find_their_subscriber_plain_or_by_digest() {
        let digest = format!(
            "sha256:{}",
            Sha256::digest(b"payments-token-abcdef")
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<String>()
        );
        let subscribers = Subscribers::new(&[
            entry("billing", &["billing-token-0123456789"], &["billing"]),
            entry("payments", &[&digest], &[]),
            entry("certificate-only", &[], &[]),
        ])
        .unwrap();
        let name = |token: &str| subscribers.by_token(token.as_bytes()).map(|s| s.name());
        assert_eq!(name("billing-token-0123456789"), Some("billing"));
        assert_eq!(name("payments-token-abcdef"), Some("payments"));
        assert_eq!(name("billing-token-012345678"), None);
        assert_eq!(name(""), None);
        assert_eq!(name(&digest), None, "a digest is not a token");
        assert!(subscribers.any_tokens());
        assert!(!subscribers.iter().nth(2).unwrap().has_tokens());
    }

    #[test]
    fn bad_entries_are_refused_without_showing_tokens() {
        let secret = "s3cr3t";
        let cases = [
            (vec![entry("bill ing", &[], &[])], "name"),
            (
                vec![entry("billing", &[], &[]), entry("Billing", &[], &[])],
                "twice",
            ),
            (vec![entry("billing", &[secret], &[])], "at least 16"),
            (
                vec![entry("billing", &["with a space inside it"], &[])],
                "token #1",
            ),
            (
                vec![entry("billing", &["sha256:abc", secret], &[])],
                "64 hex",
            ),
            (
                vec![
                    entry("billing", &["same-token-0123456789"], &[]),
                    entry("payments", &["same-token-0123456789"], &[]),
                ],
                "`billing` and subscriber `payments`",
            ),
            (vec![entry("billing", &[], &["bill/ing"])], "pattern"),
        ];
        for (entries, expected) in cases {
            let error = Subscribers::new(&entries).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(
                !error.contains(secret) && !error.contains("same-token"),
                "{error}"
            );
        }
    }

    #[test]
    fn certificate_names_are_dns_names_or_the_common_name() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![
            "billing".to_owned(),
            "billing.internal".to_owned(),
        ])
        .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ignored-cn");
        let with_sans = params.self_signed(&key).unwrap();
        assert_eq!(
            certificate_names(with_sans.der()).unwrap(),
            ["billing", "billing.internal"]
        );

        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "payments");
        let cn_only = params.self_signed(&key).unwrap();
        assert_eq!(certificate_names(cn_only.der()).unwrap(), ["payments"]);

        assert!(certificate_names(&CertificateDer::from(vec![1, 2, 3])).is_err());

        let subscribers = Subscribers::new(&[
            entry("billing", &[], &[]),
            entry("billing.internal", &[], &[]),
            entry("payments", &[], &[]),
        ])
        .unwrap();
        let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            subscribers
                .by_certificate_names(&names(&["PAYMENTS"]))
                .unwrap()
                .map(|s| s.name()),
            Some("payments")
        );
        assert!(
            subscribers
                .by_certificate_names(&names(&["stranger"]))
                .unwrap()
                .is_none()
        );
        assert!(
            subscribers
                .by_certificate_names(&names(&["billing", "billing.internal"]))
                .is_err()
        );
    }
}
