//! OAuth clients and their secrets.
//!
//! Plain secrets are kept only as SHA-256 digests and compared in constant time (a fixed-length
//! digest, so the secret's length does not leak either); hashed secrets are argon2id PHC strings,
//! verified with the parameters they carry. A client may have several secrets, so that one can
//! be rotated without downtime.

use std::{collections::HashMap, fmt};

use argon2::{
    Argon2,
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
    /// A decoy hash for unknown clients could not be computed.
    #[error("could not prepare argon2 verification")]
    Decoy(#[source] argon2::password_hash::Error),
}

/// A client as configured: its id and every secret it may authenticate with, each either plain
/// text or an argon2id PHC string (anything starting with `$argon2`).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The client id.
    pub id: String,
    /// The accepted secrets.
    pub secrets: Vec<Secret>,
}

/// One accepted secret.
enum StoredSecret {
    /// SHA-256 of the plain secret.
    Plain([u8; 32]),
    /// An argon2id hash.
    Argon2id(PasswordHashString),
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
        argon2::Params::try_from(&hash).map_err(|source| ClientConfigError::InvalidHash {
            client: client.clone(),
            source,
        })?;
        if hash.salt.is_none() || hash.hash.is_none() {
            return Err(ClientConfigError::IncompleteHash {
                client: client.clone(),
            });
        }
        Ok(Self::Argon2id(hash.serialize()))
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
    clients: HashMap<ClientId, Vec<StoredSecret>>,
    /// Verified against for unknown client ids when hashed secrets are in use, so that an unknown
    /// id takes as long to refuse as a known one.
    decoy: Option<PasswordHashString>,
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
    pub fn new(configs: Vec<ClientConfig>) -> Result<Self, ClientConfigError> {
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
            if clients.contains_key(&id) {
                return Err(ClientConfigError::DuplicateClient { client: id });
            }
            clients.insert(id, secrets);
        }
        let uses_hashes = clients
            .values()
            .flatten()
            .any(|secret| matches!(secret, StoredSecret::Argon2id(_)));
        let decoy = if uses_hashes {
            let random = SaltString::generate(&mut OsRng);
            Some(hash_secret(random.as_str()).map_err(ClientConfigError::Decoy)?)
        } else {
            None
        };
        Ok(Self { clients, decoy })
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
    pub fn verify(&self, credentials: &ClientCredentials) -> Option<ClientId> {
        let presented = credentials.secret.expose();
        let presented_digest = digest(presented);
        let Some((id, secrets)) = self.clients.get_key_value(credentials.id.as_str()) else {
            // Do the work a known client would cost, then refuse.
            let _ = presented_digest.ct_eq(&[0; 32]);
            if let Some(decoy) = &self.decoy {
                let _ = verify_hash(decoy, presented);
            }
            return None;
        };
        let plain_match = secrets
            .iter()
            .filter_map(|secret| match secret {
                StoredSecret::Plain(expected) => Some(expected.ct_eq(&presented_digest)),
                StoredSecret::Argon2id(_) => None,
            })
            .fold(Choice::from(0), |matched, this| matched | this);
        if bool::from(plain_match) {
            return Some(id.clone());
        }
        let hash_match = secrets.iter().any(|secret| match secret {
            StoredSecret::Argon2id(hash) => verify_hash(hash, presented),
            StoredSecret::Plain(_) => false,
        });
        hash_match.then(|| id.clone())
    }
}

/// Hashes a secret with argon2id (the `argon2` crate's defaults, which follow OWASP's
/// recommendation) and a random salt, as a PHC string.
pub fn hash_secret(secret: &str) -> Result<PasswordHashString, argon2::password_hash::Error> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
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

    fn client(id: &str, secrets: &[&str]) -> ClientConfig {
        ClientConfig {
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
        let a = registry.get("a").cloned();
        assert_eq!(registry.verify(&credentials("a", "one")), a);
        assert_eq!(registry.verify(&credentials("a", "two")), a);
        assert_eq!(registry.verify(&credentials("a", "three")), None);
        assert_eq!(registry.verify(&credentials("a", "")), None);
        assert_eq!(registry.verify(&credentials("b", "one")), None);
        assert_eq!(
            registry.verify(&credentials("b", "hashed-secret")),
            registry.get("b").cloned()
        );
        assert_eq!(registry.verify(&credentials("c", "one")), None);
        // The hash itself is not a password.
        assert_eq!(registry.verify(&credentials("b", hashed.as_str())), None);
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
