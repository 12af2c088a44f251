//! [`AuthSettings`]: what [`super::Auth`] is built from, and the token signing key's storage when
//! none is configured.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use zeroize::Zeroizing;

use super::{
    ClientConfigError, ClientSettings, KeyError, Secret, ThrottleSettings, TokenKey, TokenSettings,
    WebhookHeader, WebhookHeaderError,
};

/// Token lifetime when none is configured.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Longest accepted token lifetime: a stolen token must not stay good for days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Name of the signing key file the gateway generates in its data directory.
pub const SIGNING_KEY_FILE: &str = "token-signing-key";

/// Where the token signing key comes from when none is configured. The configuration picks it
/// from the storage backend: what replicas share decides what they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Generate one on first start and keep it in this file (mode 0600), so that tokens survive
    /// a restart. For a single gateway with its own data directory.
    PersistInDataDir(PathBuf),
    /// A random key for the life of the process, with a warning. For storage that does not
    /// survive a restart either.
    Ephemeral,
    /// Refuse to start: replicas behind one load balancer must all verify each other's tokens,
    /// so the key must be configured, the same on each.
    RequireConfigured,
}

impl KeyPolicy {
    /// The signing key when none is configured, as the policy says, with the generated key
    /// still to be stored when there is one.
    pub fn signing_key(&self) -> Result<(TokenKey, Option<UnsavedKey>), AuthSetupError> {
        match self {
            Self::RequireConfigured => Err(AuthSetupError::SigningKeyRequired),
            Self::Ephemeral => {
                tracing::warn!(
                    "no token signing key is configured; using a random one: access tokens will \
                     not survive a restart and will not work across replicas. Set \
                     --token-signing-key-file (or INCODE_GATEWAY_TOKEN_SIGNING_KEY) to keep them"
                );
                let key = TokenKey::generate().map_err(AuthSetupError::GenerateKey)?;
                Ok((key, None))
            }
            Self::PersistInDataDir(path) => load_or_generate_key(path),
        }
    }
}

/// Everything [`super::Auth`] is built from.
#[derive(Debug)]
pub struct AuthSettings {
    /// The OAuth clients.
    pub clients: Vec<ClientSettings>,
    /// Token lifetime and keys.
    pub tokens: TokenSettings,
    /// Headers every webhook call must carry.
    pub webhook_headers: Vec<WebhookHeader>,
    /// Whether webhooks may be accepted with no authentication at all.
    pub allow_unauthenticated_webhooks: bool,
    /// The throttle on failed client authentication.
    pub throttle: ThrottleSettings,
    /// Most argon2 secret checks at once.
    pub max_concurrent_secret_checks: usize,
}

/// Why the authentication settings are not usable. Messages never include secret values.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// A client secret without a client id.
    #[error("--oauth-client-secret is set but --oauth-client-id is not")]
    SecretWithoutClientId,
    /// A client id without a client secret.
    #[error("--oauth-client-id is set but --oauth-client-secret is not")]
    ClientIdWithoutSecret,
    /// A client is not usable.
    #[error(transparent)]
    Client(#[from] ClientConfigError),
    /// The signing key is given twice at the same level.
    #[error("both {first} and {second} are set; give the token signing key once")]
    TwoSigningKeys {
        /// One setting.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A key file could not be read.
    #[error("cannot read the token key file {path}")]
    ReadKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key is not usable.
    #[error("the token key from {origin} is not usable")]
    Key {
        /// Where the key came from.
        origin: String,
        /// What is wrong with it.
        #[source]
        source: KeyError,
    },
    /// No signing key was configured and none could be generated.
    #[error("could not generate a token signing key")]
    GenerateKey(#[source] KeyError),
    /// The generated signing key could not be stored.
    #[error("cannot store the generated token signing key in {path}")]
    WriteKeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The storage backend needs a configured signing key and none is.
    #[error(
        "OAuth clients are configured but no token signing key is, and this storage serves several \
         replicas that must verify each other's tokens: set the same --token-signing-key-file (or \
         INCODE_GATEWAY_TOKEN_SIGNING_KEY, or oauth.signing_key_file) on every replica"
    )]
    SigningKeyRequired,
    /// The token lifetime is shorter than a second.
    #[error("the token lifetime (--token-ttl) must be at least one second")]
    TokenTtlTooShort,
    /// The token lifetime is longer than allowed.
    #[error("the token lifetime (--token-ttl) must be at most {}", humantime::format_duration(*max))]
    TokenTtlTooLong {
        /// The longest accepted lifetime.
        max: Duration,
    },
    /// A webhook header is not usable.
    #[error(transparent)]
    WebhookHeader(#[from] WebhookHeaderError),
    /// A webhook header would take the place of the bearer token.
    #[error(
        "webhook header `{name}` cannot be required while OAuth clients are configured: the bearer token travels in it"
    )]
    HeaderConflictsWithBearer {
        /// The header.
        name: axum::http::HeaderName,
    },
    /// Nothing protects the webhooks and that was not explicitly allowed.
    #[error(
        "no webhook authentication is configured. Configure the OAuth client Incode uses \
         (--oauth-client-id and --oauth-client-secret, or INCODE_GATEWAY_OAUTH_CLIENT_ID and \
         INCODE_GATEWAY_OAUTH_CLIENT_SECRET, or [[oauth.clients]] in the --config file), or a shared \
         header (--webhook-header NAME=VALUE), or pass --allow-unauthenticated-webhooks to accept \
         webhooks from anyone"
    )]
    NoWebhookAuth,
}

/// A signing key generated for the data directory and not written there yet. Start-up stores it
/// only once every check has passed, so that a refused start leaves the data directory as it
/// found it.
#[must_use = "a generated key that is not stored changes at every restart"]
pub struct UnsavedKey {
    path: PathBuf,
    material: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for UnsavedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnsavedKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl UnsavedKey {
    /// Where it is to be kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes it (mode 0600), so that the next start uses it too.
    pub fn store(self) -> Result<(), AuthSetupError> {
        write_key_file(&self.path, &self.material).map_err(|source| {
            AuthSetupError::WriteKeyFile {
                path: self.path.clone(),
                source,
            }
        })?;
        tracing::info!(
            path = %self.path.display(),
            "generated a token signing key and stored it in the data directory; to run \
             replicas, give each the same key with --token-signing-key-file"
        );
        Ok(())
    }
}

/// The webhook headers `specs` (`NAME=VALUE`) require; a later header replaces an earlier one of
/// the same name.
pub fn webhook_headers(specs: &[Secret]) -> Result<Vec<WebhookHeader>, WebhookHeaderError> {
    let mut headers: Vec<WebhookHeader> = Vec::new();
    for spec in specs {
        let header = WebhookHeader::parse(spec)?;
        headers.retain(|existing| existing.name() != header.name());
        headers.push(header);
    }
    Ok(headers)
}

/// The key in `path`, or on first start a new one, to be stored there.
fn load_or_generate_key(path: &Path) -> Result<(TokenKey, Option<UnsavedKey>), AuthSetupError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            let key = parse_key(&Secret::new(text), || {
                format!("the generated key file {}", path.display())
            })?;
            tracing::info!(path = %path.display(), key_id = key.id(), "token signing key loaded from the data directory");
            Ok((key, None))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = TokenKey::generate().map_err(AuthSetupError::GenerateKey)?;
            let unsaved = UnsavedKey {
                path: path.to_owned(),
                material: Zeroizing::new(key.expose_bytes().to_vec()),
            };
            Ok((key, Some(unsaved)))
        }
        Err(source) => Err(AuthSetupError::ReadKeyFile {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes the key as base64 to a temporary file readable by the owner only, flushes it to disk
/// and renames it into place, so that a crash never leaves half a key behind.
fn write_key_file(path: &Path, material: &[u8]) -> std::io::Result<()> {
    use std::io::Write;

    use base64::Engine;

    let dir = path.parent().unwrap_or(Path::new("."));
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;

    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&temporary)?;
        let text = zeroize::Zeroizing::new(format!(
            "{}\n",
            base64::engine::general_purpose::STANDARD.encode(material)
        ));
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        // The rename itself must reach the disk too.
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path)
        && metadata.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the token signing key file can be read by other users; chmod 600 it"
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// The key `key` holds (base64); `origin` names where it came from, for the error.
pub fn parse_key(
    key: &Secret,
    origin: impl FnOnce() -> String,
) -> Result<TokenKey, AuthSetupError> {
    TokenKey::parse(key).map_err(|source| AuthSetupError::Key {
        origin: origin(),
        source,
    })
}

/// The key in the file `path`, which `setting` names.
pub fn read_key(path: &Path, setting: &str) -> Result<TokenKey, AuthSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::ReadKeyFile {
        path: path.to_owned(),
        source,
    })?;
    parse_key(&Secret::new(text), || {
        format!("{setting} {}", path.display())
    })
}
