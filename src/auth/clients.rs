//! OAuth clients and their secrets.
//!
//! Plain secrets are kept only as SHA-256 digests and compared in constant time (a fixed-length
//! digest, so the secret's length does not leak either); hashed secrets are argon2id PHC strings,
//! verified with the parameters they carry, which must lie within [`ARGON2_BOUNDS`]: strong
//! enough to be worth hashing, cheap enough that a request cannot make the gateway spend seconds
//! of CPU. A client may have several secrets, so that one can be rotated without downtime.
//!
//! Every check does the same argon2 work, whether the client id is known or not, whichever client
//! it is and whichever of its secrets matches: the same verifications, with the same parameters,
//! in the same order. The registry lays out one slot per verification, enough for every client's
//! hashes (a slot per parameter set, as many of each as the client with the most hashes of it
//! has); a check verifies the client's own hash in each slot where it has one and a decoy hash
//! with the slot's parameters in every other. So the time of an answer tells nothing about which
//! client ids exist, nor which client a request named.

use std::{collections::HashMap, fmt};

use argon2::{
    Algorithm, Argon2, Params, Version,
    password_hash::{
        PasswordHash, PasswordHashString, PasswordHasher, PasswordVerifier, SaltString,
        rand_core::OsRng,
    },
};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::Secret;

/// Longest accepted client id, in bytes.
const MAX_CLIENT_ID_LEN: usize = 256;

/// The accepted argon2id parameters.
#[derive(Debug, Clone, Copy)]
pub struct Argon2Bounds {
    /// Memory in KiB (`m`): at least, at most.
    pub memory_kib: (u32, u32),
    /// Passes (`t`): at least, at most.
    pub iterations: (u32, u32),
    /// Lanes (`p`): at least, at most.
    pub parallelism: (u32, u32),
    /// Least `m × t`: OWASP's weakest recommended combination is m = 7 MiB with t = 5.
    pub min_memory_times_iterations: u64,
}

/// The bounds hashed secrets are checked against when the configuration is loaded. OWASP's
/// recommendations (m = 19 MiB, t = 2, p = 1, the `hash-secret` default, and its equivalents)
/// are inside; a single check costs at most 256 MiB and 16 passes.
pub const ARGON2_BOUNDS: Argon2Bounds = Argon2Bounds {
    memory_kib: (7 * 1024, 256 * 1024),
    iterations: (1, 16),
    parallelism: (1, 8),
    min_memory_times_iterations: 7 * 1024 * 5,
};

impl Argon2Bounds {
    fn contain(&self, params: &Params) -> bool {
        let within = |value: u32, (low, high): (u32, u32)| (low..=high).contains(&value);
        within(params.m_cost(), self.memory_kib)
            && within(params.t_cost(), self.iterations)
            && within(params.p_cost(), self.parallelism)
            && u64::from(params.m_cost()) * u64::from(params.t_cost())
                >= self.min_memory_times_iterations
    }
}

/// The identifier of a configured OAuth client. Not a secret: it is logged and becomes the
/// `sub` of the client's tokens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// A client id: 1 to 256 bytes, no control characters.
    pub fn parse(text: &str) -> Result<Self, ClientConfigError> {
        if text.is_empty() || text.len() > MAX_CLIENT_ID_LEN || text.chars().any(char::is_control) {
            return Err(ClientConfigError::InvalidClientId);
        }
        Ok(Self(text.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Hash and Eq are the inner string's, so lookups by `&str` are consistent.
impl std::borrow::Borrow<str> for ClientId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a configured client or secret is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// The client id is empty, too long or has control characters.
    #[error("an OAuth client id must be 1 to {MAX_CLIENT_ID_LEN} bytes without control characters")]
    InvalidClientId,
    /// The same client id is configured twice.
    #[error(
        "OAuth client `{client}` is configured more than once; list all its secrets under one entry"
    )]
    DuplicateClient {
        /// The repeated id.
        client: ClientId,
    },
    /// A client has no secret.
    #[error("OAuth client `{client}` has no secret")]
    NoSecret {
        /// The client.
        client: ClientId,
    },
    /// A secret is the empty string.
    #[error("OAuth client `{client}` has an empty secret")]
    EmptySecret {
        /// The client.
        client: ClientId,
    },
    /// A secret starts like a PHC hash (`$argon2`) but is not a valid one.
    #[error(
        "a secret of OAuth client `{client}` starts with `$argon2` but is not a valid PHC string"
    )]
    InvalidHash {
        /// The client.
        client: ClientId,
        /// What the PHC parser said.
        #[source]
        source: argon2::password_hash::Error,
    },
    /// A PHC hash without salt or hash output.
    #[error(
        "a secret of OAuth client `{client}` is a PHC string without salt or hash; use `incode-gateway hash-secret`"
    )]
    IncompleteHash {
        /// The client.
        client: ClientId,
    },
    /// A secret is a PHC hash of another algorithm than argon2id.
    #[error(
        "a secret of OAuth client `{client}` is hashed with `{algorithm}`; only argon2id is accepted"
    )]
    NotArgon2id {
        /// The client.
        client: ClientId,
        /// The algorithm the hash names.
        algorithm: String,
    },
    /// A hash's parameters are outside [`ARGON2_BOUNDS`].
    #[error(
        "a secret of OAuth client `{client}` is hashed with m={memory_kib},t={iterations},p={parallelism}; \
         accepted are m from 7168 to 262144 (KiB), t from 1 to 16, p from 1 to 8, and m×t at least \
         35840; `incode-gateway hash-secret` uses m=19456,t=2,p=1"
    )]
    HashParamsOutOfBounds {
        /// The client.
        client: ClientId,
        /// `m`.
        memory_kib: u32,
        /// `t`.
        iterations: u32,
        /// `p`.
        parallelism: u32,
    },
    /// A decoy hash for unknown clients could not be computed.
    #[error("could not prepare argon2 verification")]
    Decoy(#[source] argon2::password_hash::Error),
}

/// Why presented credentials were refused; for the log, never for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsRefused {
    /// No client has this id.
    #[error("unknown client id")]
    UnknownClient,
    /// The client exists; the secret is none of its secrets.
    #[error("wrong secret for a known client id")]
    WrongSecret,
}

/// A client as configured: its id and every secret it may authenticate with, each either plain
/// text or an argon2id PHC string (anything starting with `$argon2`).
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// The client id.
    pub id: String,
    /// The accepted secrets.
    pub secrets: Vec<Secret>,
}

/// One accepted secret.
enum StoredSecret {
    /// SHA-256 of the plain secret.
    Plain([u8; 32]),
    /// An argon2id hash, and the parameters it was made with.
    Argon2id {
        hash: PasswordHashString,
        params: Params,
    },
}

impl StoredSecret {
    fn parse(client: &ClientId, secret: &Secret) -> Result<Self, ClientConfigError> {
        let text = secret.expose();
        if text.is_empty() {
            return Err(ClientConfigError::EmptySecret {
                client: client.clone(),
            });
        }
        if !text.starts_with("$argon2") {
            return Ok(Self::Plain(digest(text)));
        }
        let hash = PasswordHash::new(text).map_err(|source| ClientConfigError::InvalidHash {
            client: client.clone(),
            source,
        })?;
        if hash.algorithm != argon2::Algorithm::Argon2id.ident() {
            return Err(ClientConfigError::NotArgon2id {
                client: client.clone(),
                algorithm: hash.algorithm.to_string(),
            });
        }
        let params = Params::try_from(&hash).map_err(|source| ClientConfigError::InvalidHash {
            client: client.clone(),
            source,
        })?;
        if !ARGON2_BOUNDS.contain(&params) {
            return Err(ClientConfigError::HashParamsOutOfBounds {
                client: client.clone(),
                memory_kib: params.m_cost(),
                iterations: params.t_cost(),
                parallelism: params.p_cost(),
            });
        }
        if hash.salt.is_none() || hash.hash.is_none() {
            return Err(ClientConfigError::IncompleteHash {
                client: client.clone(),
            });
        }
        Ok(Self::Argon2id {
            hash: hash.serialize(),
            params,
        })
    }
}

/// Credentials a caller presented: a client id and a secret, not yet checked.
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    /// The client id as presented.
    pub id: String,
    /// The secret as presented.
    pub secret: Secret,
}

/// The configured clients.
pub struct ClientRegistry {
    clients: HashMap<ClientId, ClientSecrets>,
    /// One hash of a random secret per argon2 verification a check makes, with that slot's
    /// parameters: verified wherever the client (or an unknown id) has no hash of its own there.
    decoys: Vec<PasswordHashString>,
}

/// One client's secrets, laid out for checking.
struct ClientSecrets {
    /// SHA-256 digests of its plain secrets.
    plain: Vec<[u8; 32]>,
    /// Its argon2id hashes by slot (the index in [`ClientRegistry::decoys`]); `None` where the
    /// slot's decoy is verified instead.
    hashed: Vec<Option<PasswordHashString>>,
}

impl fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientRegistry")
            .field("clients", &self.clients.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ClientRegistry {
    /// The registry of these clients.
    pub fn new(configs: Vec<ClientSettings>) -> Result<Self, ClientConfigError> {
        let mut clients = HashMap::with_capacity(configs.len());
        for config in configs {
            let id = ClientId::parse(&config.id)?;
            if config.secrets.is_empty() {
                return Err(ClientConfigError::NoSecret { client: id });
            }
            let secrets = config
                .secrets
                .iter()
                .map(|secret| StoredSecret::parse(&id, secret))
                .collect::<Result<Vec<_>, _>>()?;
            let ambiguous = changes_under_form_decoding(id.as_str())
                || config.secrets.iter().any(|secret| {
                    !secret.expose().starts_with("$argon2")
                        && changes_under_form_decoding(secret.expose())
                });
            if ambiguous {
                tracing::warn!(
                    client = %id,
                    "this OAuth client's id or a plain secret contains '%' or '+': in HTTP Basic, \
                     clients must form-urlencode them (RFC 6749 section 2.3.1), which many skip; \
                     prefer ids and secrets of letters and digits"
                );
            }
            if clients.contains_key(&id) {
                return Err(ClientConfigError::DuplicateClient { client: id });
            }
            clients.insert(id, secrets);
        }
        // Each client's hashes take slots with their parameters, sharing the slots other clients
        // laid out and adding one only where none is free.
        let mut slots: Vec<Params> = Vec::new();
        let mut laid_out = HashMap::with_capacity(clients.len());
        let mut most_hashes = 0;
        for (id, secrets) in clients {
            let mut plain = Vec::new();
            let mut hashed: Vec<Option<PasswordHashString>> = Vec::new();
            let mut hashes = 0;
            for secret in secrets {
                let (hash, params) = match secret {
                    StoredSecret::Plain(digest) => {
                        plain.push(digest);
                        continue;
                    }
                    StoredSecret::Argon2id { hash, params } => (hash, params),
                };
                hashes += 1;
                let free = (0..slots.len()).find(|&slot| {
                    same_work(&slots[slot], &params) && hashed.get(slot).is_none_or(Option::is_none)
                });
                let slot = free.unwrap_or_else(|| {
                    slots.push(params);
                    slots.len() - 1
                });
                if hashed.len() <= slot {
                    hashed.resize(slot + 1, None);
                }
                hashed[slot] = Some(hash);
            }
            most_hashes = most_hashes.max(hashes);
            laid_out.insert(id, ClientSecrets { plain, hashed });
        }
        if slots.len() > most_hashes {
            tracing::warn!(
                verifications = slots.len(),
                "the OAuth clients' hashed secrets use different argon2 parameters: every token \
                 request verifies a hash of each (its client's own, decoys for the rest) so that \
                 its time does not tell which client it names; hash every secret with the same \
                 parameters (`incode-gateway hash-secret`) to make each request cheaper"
            );
        }
        let decoys = slots
            .into_iter()
            .map(|params| {
                let random = SaltString::generate(&mut OsRng);
                hash_with(random.as_str(), params)
            })
            .collect::<Result<_, _>>()
            .map_err(ClientConfigError::Decoy)?;
        Ok(Self {
            clients: laid_out,
            decoys,
        })
    }

    /// Whether no client is configured.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// How many clients are configured.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// The configured client with this id, if any.
    pub fn get(&self, id: &str) -> Option<&ClientId> {
        self.clients.get_key_value(id).map(|(id, _)| id)
    }

    /// The client these credentials belong to, if the secret is one of its secrets.
    ///
    /// Argon2 is slow by design: call this on a blocking thread.
    pub fn verify(&self, credentials: &ClientCredentials) -> Result<ClientId, CredentialsRefused> {
        let presented = credentials.secret.expose();
        let presented_digest = digest(presented);
        let (id, secrets) = match self.clients.get_key_value(credentials.id.as_str()) {
            Some((id, secrets)) => (Some(id), Some(secrets)),
            None => (None, None),
        };
        // Plain secrets: every one compared, in constant time.
        let mut matched = secrets
            .map_or(&[][..], |secrets| secrets.plain.as_slice())
            .iter()
            .map(|expected| expected.ct_eq(&presented_digest))
            .fold(Choice::from(0), |matched, this| matched | this);
        if id.is_none() {
            let _ = presented_digest.ct_eq(&[0; 32]);
        }
        // Hashed secrets: every slot verified, no early exit; only the client's own can match.
        for (hash, own) in self.argon2_checks(secrets) {
            let verified = verify_hash(hash, presented);
            matched |= Choice::from(u8::from(verified && own));
        }
        match (id, bool::from(matched)) {
            (Some(id), true) => Ok(id.clone()),
            (Some(_), false) => Err(CredentialsRefused::WrongSecret),
            (None, _) => Err(CredentialsRefused::UnknownClient),
        }
    }
}

impl ClientRegistry {
    /// The argon2 verifications of a check of `secrets` (`None`: an unknown id), in order: each
    /// slot's hash, and whether it is the client's own. The same slots, so the same work, for
    /// every client id.
    fn argon2_checks<'a>(
        &'a self,
        secrets: Option<&'a ClientSecrets>,
    ) -> impl Iterator<Item = (&'a PasswordHashString, bool)> {
        self.decoys.iter().enumerate().map(move |(slot, decoy)| {
            match secrets.and_then(|secrets| secrets.hashed.get(slot)?.as_ref()) {
                Some(own) => (own, true),
                None => (decoy, false),
            }
        })
    }
}

/// Whether verifying a hash of either costs the same: the same memory, passes, lanes and output.
fn same_work(a: &Params, b: &Params) -> bool {
    (a.m_cost(), a.t_cost(), a.p_cost(), a.output_len())
        == (b.m_cost(), b.t_cost(), b.p_cost(), b.output_len())
}

/// Whether an id or a plain secret reads differently once form-urlencoded and decoded again.
fn changes_under_form_decoding(text: &str) -> bool {
    text.contains(['%', '+'])
}

/// Hashes a secret with argon2id (the `argon2` crate's defaults, which follow OWASP's
/// recommendation) and a random salt, as a PHC string.
pub fn hash_secret(secret: &str) -> Result<PasswordHashString, argon2::password_hash::Error> {
    hash_with(secret, Params::default())
}

fn hash_with(
    secret: &str,
    params: Params,
) -> Result<PasswordHashString, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(secret.as_bytes(), &salt)?
        .serialize())
}

fn verify_hash(hash: &PasswordHashString, presented: &str) -> bool {
    // The hash carries its own algorithm, version and parameters.
    Argon2::default()
        .verify_password(presented.as_bytes(), &hash.password_hash())
        .is_ok()
}

fn digest(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(id: &str, secret: &str) -> ClientCredentials {
        ClientCredentials {
            id: id.into(),
            secret: Secret::new(secret),
        }
    }

    fn client(id: &str, secrets: &[&str]) -> ClientSettings {
        ClientSettings {
            id: id.into(),
            secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
        }
    }

    #[test]
    fn plain_and_hashed_secrets_verify_and_others_do_not() {
        let hashed = hash_secret("hashed-secret").unwrap();
        let registry = ClientRegistry::new(vec![
            client("a", &["one", "two"]),
            client("b", &[hashed.as_str()]),
        ])
        .unwrap();
        let a = registry
            .get("a")
            .cloned()
            .ok_or(CredentialsRefused::UnknownClient);
        let wrong = Err(CredentialsRefused::WrongSecret);
        assert_eq!(registry.verify(&credentials("a", "one")), a);
        assert_eq!(registry.verify(&credentials("a", "two")), a);
        assert_eq!(registry.verify(&credentials("a", "three")), wrong);
        assert_eq!(registry.verify(&credentials("a", "")), wrong);
        assert_eq!(registry.verify(&credentials("b", "one")), wrong);
        assert_eq!(
            registry.verify(&credentials("b", "hashed-secret")),
            registry
                .get("b")
                .cloned()
                .ok_or(CredentialsRefused::UnknownClient)
        );
        assert_eq!(
            registry.verify(&credentials("c", "one")),
            Err(CredentialsRefused::UnknownClient)
        );
        // The hash itself is not a password.
        assert_eq!(registry.verify(&credentials("b", hashed.as_str())), wrong);
        // Unknown ids and plain-secret clients do the hashed client's argon2 work too.
        assert_eq!(registry.decoys.len(), 1);
    }

    /// A hash of `secret` with these argon2 parameters (the cheapest accepted, and variations, so
    /// that the test stays quick).
    fn hashed(secret: &str, memory_kib: u32, iterations: u32) -> String {
        let params = Params::new(memory_kib, iterations, 1, None).unwrap();
        hash_with(secret, params).unwrap().as_str().to_owned()
    }

    /// `(m, t, p, whether it is the client's own hash)` of each verification a check of `id`
    /// makes.
    fn checks(registry: &ClientRegistry, id: &str) -> Vec<((u32, u32, u32), bool)> {
        registry
            .argon2_checks(registry.clients.get(id))
            .map(|(hash, own)| {
                let params = Params::try_from(&hash.password_hash()).unwrap();
                ((params.m_cost(), params.t_cost(), params.p_cost()), own)
            })
            .collect()
    }

    /// Clients whose hashes have different parameters, or more or fewer hashes, and unknown ids:
    /// every check verifies hashes of the same parameters in the same order, so that the time of
    /// an answer tells neither whether an id exists nor which client it is. Each client's own
    /// hashes are among them.
    #[test]
    fn every_check_does_the_same_argon2_work_whatever_the_client() {
        let (cheap, costly) = ((7 * 1024, 5), (8 * 1024, 6));
        let registry = ClientRegistry::new(vec![
            client("cheap", &[&hashed("c", cheap.0, cheap.1)]),
            client("costly", &[&hashed("x", costly.0, costly.1)]),
            client(
                "rotating",
                &[
                    &hashed("old", cheap.0, cheap.1),
                    &hashed("new", cheap.0, cheap.1),
                ],
            ),
            client("plain", &["p"]),
        ])
        .unwrap();
        let work = |id| {
            let mut params: Vec<_> = checks(&registry, id).into_iter().map(|(p, _)| p).collect();
            params.sort_unstable();
            params
        };
        let expected = [
            (cheap.0, cheap.1, 1),
            (cheap.0, cheap.1, 1),
            (costly.0, costly.1, 1),
        ];
        for id in ["cheap", "costly", "rotating", "plain", "nobody"] {
            assert_eq!(work(id), expected, "{id}");
            // The same slots, in the same order, for every id.
            let order: Vec<_> = checks(&registry, id).into_iter().map(|(p, _)| p).collect();
            let unknown: Vec<_> = checks(&registry, "nobody")
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            assert_eq!(order, unknown, "{id}");
        }
        let own = |id| checks(&registry, id).iter().filter(|(_, own)| *own).count();
        assert_eq!(
            [
                own("cheap"),
                own("costly"),
                own("rotating"),
                own("plain"),
                own("nobody")
            ],
            [1, 1, 2, 0, 0]
        );
        for (id, secret) in [
            ("cheap", "c"),
            ("costly", "x"),
            ("rotating", "old"),
            ("rotating", "new"),
            ("plain", "p"),
        ] {
            assert_eq!(
                registry
                    .verify(&credentials(id, secret))
                    .map(|id| id.to_string()),
                Ok(id.to_owned())
            );
        }
        // Another client's secret is not this one's.
        assert_eq!(
            registry.verify(&credentials("cheap", "x")),
            Err(CredentialsRefused::WrongSecret)
        );
    }

    #[test]
    fn bad_configurations_are_refused() {
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c2FsdHNhbHQ$6ftaeMI0ZbFqGjaCmR0K8w";
        let cases = [
            (vec![client("", &["x"])], "client id"),
            (vec![client("a", &[])], "no secret"),
            (vec![client("a", &[""])], "empty secret"),
            (
                vec![client("a", &["x"]), client("a", &["y"])],
                "more than once",
            ),
            (vec![client("a", &["$argon2id$nonsense"])], "PHC string"),
            (
                vec![client("a", &["$argon2id$v=19$m=19456,t=2,p=1"])],
                "PHC string",
            ),
            (vec![client("a", &[argon2i])], "only argon2id"),
            (
                vec![client(
                    "a",
                    &["$argon2id$v=19$m=4096,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"],
                )],
                "m=4096,t=2,p=1",
            ),
            (
                vec![client(
                    "a",
                    &["$argon2id$v=19$m=1048576,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"],
                )],
                "accepted are m from 7168",
            ),
            (
                vec![client(
                    "a",
                    &["$argon2id$v=19$m=19456,t=100,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"],
                )],
                "t=100",
            ),
            (
                vec![client(
                    "a",
                    &["$argon2id$v=19$m=8192,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"],
                )],
                "m×t at least",
            ),
        ];
        for (configs, expected) in cases {
            let error = ClientRegistry::new(configs).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let registry = ClientRegistry::new(vec![client("a", &["very-secret"])]).unwrap();
        let text = format!("{registry:?} {:?}", credentials("a", "very-secret"));
        assert!(!text.contains("very-secret"), "{text}");
    }
}
