//! [`AuthSettings`]: the authentication settings resolved from flags, environment variables and
//! the config file, in that order of precedence.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use zeroize::Zeroizing;

use super::{
    ClientConfigError, ClientSettings, KeyError, Secret, ThrottleSettings, TokenKey, TokenSettings,
    WebhookHeader, WebhookHeaderError,
};
use crate::config::{
    AuthArgs, Config, StorageKind,
    file::{ClientEntry, ConfigFileError},
};

/// Token lifetime when none is configured.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// Longest accepted token lifetime: a stolen token must not stay good for days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// Name of the signing key file the gateway generates in its data directory.
pub const SIGNING_KEY_FILE: &str = "token-signing-key";

/// Limits on client authentication at the token endpoint: the throttle on failures per client
/// address, and the number of argon2 secret checks at once.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Client authentication limits")]
pub struct ClientAuthLimitArgs {
    /// Failed client authentications one client address may make in a row before it is
    /// throttled (answered 429 with Retry-After).
    #[arg(long, env = "INCODE_GATEWAY_AUTH_FAILURE_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub auth_failure_burst: u32,

    /// After the burst, one more attempt per this much time.
    #[arg(long, env = "INCODE_GATEWAY_AUTH_FAILURE_INTERVAL", default_value = "6s", value_parser = crate::config::parse_positive_duration)]
    pub auth_failure_interval: Duration,

    /// Most client addresses the throttle tracks at once (about 100 bytes each). When full,
    /// the addresses it cannot track share one budget: it fails closed.
    #[arg(long, env = "INCODE_GATEWAY_AUTH_THROTTLE_MAX_ADDRESSES", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_throttle_max_addresses: u32,

    /// Do not throttle failed client authentication (for example when a proxy in front
    /// already does).
    #[arg(
        long,
        env = "INCODE_GATEWAY_DISABLE_AUTH_THROTTLE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub disable_auth_throttle: bool,

    /// Most argon2 secret checks running at once; a token request finding none free is answered
    /// 503 (temporarily_unavailable) at once. Only hashed secrets cost argon2 time.
    #[arg(long, env = "INCODE_GATEWAY_MAX_CONCURRENT_SECRET_CHECKS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub max_concurrent_secret_checks: u32,
}

impl Default for ClientAuthLimitArgs {
    fn default() -> Self {
        Self {
            auth_failure_burst: 10,
            auth_failure_interval: Duration::from_secs(6),
            auth_throttle_max_addresses: 65_536,
            disable_auth_throttle: false,
            max_concurrent_secret_checks: 2,
        }
    }
}

impl ClientAuthLimitArgs {
    /// The throttle these options describe.
    pub fn throttle(&self) -> ThrottleSettings {
        ThrottleSettings {
            enabled: !self.disable_auth_throttle,
            burst: self.auth_failure_burst,
            replenish_every: self.auth_failure_interval,
            max_sources: usize::try_from(self.auth_throttle_max_addresses).unwrap_or(usize::MAX),
            ..ThrottleSettings::default()
        }
    }
}

/// Where the token signing key comes from when none is configured. The caller picks it from the
/// storage backend: what replicas share decides what they need.
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
    /// The policy for a storage backend.
    pub fn for_storage(storage: StorageKind, data_dir: &Path) -> Self {
        match storage {
            StorageKind::Embedded => Self::PersistInDataDir(data_dir.join(SIGNING_KEY_FILE)),
            StorageKind::Memory => Self::Ephemeral,
            StorageKind::Nats => Self::RequireConfigured,
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
    /// The config file could not be read or parsed.
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
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

impl AuthSettings {
    /// Resolves the settings of `config`: its flags (which already hold what the environment and
    /// the config file say) and the OAuth clients of its config file. A signing key generated
    /// for the data directory is stored at once.
    pub fn from_config(config: &Config) -> Result<Self, AuthSetupError> {
        let (settings, unsaved) = Self::from_config_unsaved(config)?;
        unsaved.map(UnsavedKey::store).transpose()?;
        Ok(settings)
    }

    /// Like [`AuthSettings::from_config`], writing nothing: a signing key generated for the
    /// data directory comes back to be stored once start-up may write.
    pub fn from_config_unsaved(
        config: &Config,
    ) -> Result<(Self, Option<UnsavedKey>), AuthSetupError> {
        let sections = config.file_sections()?;
        let policy = KeyPolicy::for_storage(config.storage, &config.data_dir);
        Self::resolve_unsaved(
            &config.auth,
            &config.client_auth_limits,
            &sections.oauth_clients,
            &policy,
        )
    }

    /// Resolves the settings; a missing signing key is handled as `policy` says (a generated
    /// one is stored at once).
    pub fn resolve(
        args: &AuthArgs,
        limits: &ClientAuthLimitArgs,
        file_clients: &[ClientEntry],
        policy: &KeyPolicy,
    ) -> Result<Self, AuthSetupError> {
        let (settings, unsaved) = Self::resolve_unsaved(args, limits, file_clients, policy)?;
        unsaved.map(UnsavedKey::store).transpose()?;
        Ok(settings)
    }

    /// Like [`AuthSettings::resolve`], writing nothing.
    pub fn resolve_unsaved(
        args: &AuthArgs,
        limits: &ClientAuthLimitArgs,
        file_clients: &[ClientEntry],
        policy: &KeyPolicy,
    ) -> Result<(Self, Option<UnsavedKey>), AuthSetupError> {
        // The client given by flags replaces a file client with the same id.
        let mut clients: Vec<ClientSettings> = file_clients
            .iter()
            .map(|entry| ClientSettings {
                id: entry.id.clone(),
                secrets: entry.secrets.clone(),
            })
            .collect();
        match (&args.oauth_client_id, &args.oauth_client_secret) {
            (Some(id), Some(secret)) => {
                clients.retain(|client| &client.id != id);
                clients.push(ClientSettings {
                    id: id.clone(),
                    secrets: vec![secret.clone()],
                });
            }
            (None, Some(_)) => return Err(AuthSetupError::SecretWithoutClientId),
            (Some(_), None) => return Err(AuthSetupError::ClientIdWithoutSecret),
            (None, None) => {}
        }

        let ttl = args.token_ttl.unwrap_or(DEFAULT_TOKEN_TTL);
        if ttl < Duration::from_secs(1) {
            return Err(AuthSetupError::TokenTtlTooShort);
        }
        if ttl > MAX_TOKEN_TTL {
            return Err(AuthSetupError::TokenTtlTooLong { max: MAX_TOKEN_TTL });
        }

        let configured = signing_key(
            args.token_signing_key.as_ref(),
            "--token-signing-key (oauth.signing_key)",
            args.token_signing_key_file.as_deref(),
            "--token-signing-key-file (oauth.signing_key_file)",
        )?;

        let mut verify_only_keys = Vec::new();
        for (index, key) in args.token_verify_keys.iter().enumerate() {
            verify_only_keys.push(parse_key(key, || {
                format!("--token-verify-key #{} (oauth.verify_keys)", index + 1)
            })?);
        }
        for path in &args.token_verify_key_files {
            verify_only_keys.push(read_key(
                path,
                "--token-verify-key-file (oauth.verify_key_files)",
            )?);
        }

        let webhook_headers = webhook_headers(&args.webhook_headers)?;

        let (signing_key, unsaved) = match configured {
            Some(key) => (key, None),
            // Without clients no token is ever issued: any key will do.
            None if clients.is_empty() => (
                TokenKey::generate().map_err(AuthSetupError::GenerateKey)?,
                None,
            ),
            None => unconfigured_signing_key(policy)?,
        };

        let settings = Self {
            clients,
            tokens: TokenSettings {
                ttl,
                signing_key,
                verify_only_keys,
            },
            webhook_headers,
            allow_unauthenticated_webhooks: args.allow_unauthenticated_webhooks,
            throttle: limits.throttle(),
            max_concurrent_secret_checks: usize::try_from(limits.max_concurrent_secret_checks)
                .unwrap_or(1),
        };
        Ok((settings, unsaved))
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

/// The signing key when none is configured, as `policy` says, with the generated key still to
/// be stored when there is one.
fn unconfigured_signing_key(
    policy: &KeyPolicy,
) -> Result<(TokenKey, Option<UnsavedKey>), AuthSetupError> {
    match policy {
        KeyPolicy::RequireConfigured => Err(AuthSetupError::SigningKeyRequired),
        KeyPolicy::Ephemeral => {
            tracing::warn!(
                "no token signing key is configured; using a random one: access tokens will not \
                 survive a restart and will not work across replicas. Set \
                 --token-signing-key-file (or INCODE_GATEWAY_TOKEN_SIGNING_KEY) to keep them"
            );
            let key = TokenKey::generate().map_err(AuthSetupError::GenerateKey)?;
            Ok((key, None))
        }
        KeyPolicy::PersistInDataDir(path) => load_or_generate_key(path),
    }
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

fn signing_key(
    inline: Option<&Secret>,
    inline_name: &'static str,
    path: Option<&Path>,
    path_name: &'static str,
) -> Result<Option<TokenKey>, AuthSetupError> {
    match (inline, path) {
        (Some(_), Some(_)) => Err(AuthSetupError::TwoSigningKeys {
            first: inline_name,
            second: path_name,
        }),
        (Some(key), None) => parse_key(key, || inline_name.to_owned()).map(Some),
        (None, Some(path)) => read_key(path, path_name).map(Some),
        (None, None) => Ok(None),
    }
}

fn parse_key(key: &Secret, origin: impl FnOnce() -> String) -> Result<TokenKey, AuthSetupError> {
    TokenKey::parse(key).map_err(|source| AuthSetupError::Key {
        origin: origin(),
        source,
    })
}

fn read_key(path: &Path, setting: &str) -> Result<TokenKey, AuthSetupError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthSetupError::ReadKeyFile {
        path: path.to_owned(),
        source,
    })?;
    parse_key(&Secret::new(text), || {
        format!("{setting} {}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::webhook::check_headers;

    fn resolve(args: &AuthArgs, clients: &[ClientEntry]) -> Result<AuthSettings, AuthSetupError> {
        AuthSettings::resolve(
            args,
            &ClientAuthLimitArgs::default(),
            clients,
            &KeyPolicy::Ephemeral,
        )
    }

    const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    const KEY_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

    /// A config for the arguments `args`, with a config file that names a client, a token
    /// lifetime, a signing key and a webhook header.
    fn config_with_file(args: &[&str]) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[oauth]\ntoken_ttl = \"60s\"\nsigning_key = \"{KEY_A}\"\n\n\
                 [[oauth.clients]]\nid = \"incode\"\nsecrets = [\"from-file\"]\n\n\
                 [webhooks]\nheaders = {{ \"X-A\" = \"file\" }}\n"
            ),
        )
        .unwrap();
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        let config = Config::for_tests_with(&all).unwrap();
        (dir, config)
    }

    fn with_x_a(value: &'static str) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-a", axum::http::HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn flags_override_the_file() {
        let (_dir, config) = config_with_file(&[
            "--oauth-client-id",
            "incode",
            "--oauth-client-secret",
            "from-flags",
            "--token-ttl",
            "2m",
            "--token-signing-key",
            KEY_B,
            "--webhook-header",
            "X-A=flag",
        ]);
        let settings = AuthSettings::from_config(&config).unwrap();
        assert_eq!(settings.clients.len(), 1);
        assert_eq!(settings.clients[0].secrets[0].expose(), "from-flags");
        assert_eq!(settings.tokens.ttl, Duration::from_secs(120));
        let key_b = TokenKey::parse(&Secret::new(KEY_B)).unwrap();
        assert_eq!(settings.tokens.signing_key.id(), key_b.id());
        // The flag's `X-A` replaced the file's: its value is required, the file's refused.
        assert_eq!(settings.webhook_headers.len(), 1);
        check_headers(&settings.webhook_headers, &with_x_a("flag")).unwrap();
        assert!(check_headers(&settings.webhook_headers, &with_x_a("file")).is_err());
    }

    #[test]
    fn the_file_applies_where_no_flag_says_otherwise() {
        let (_dir, config) = config_with_file(&[]);
        let settings = AuthSettings::from_config(&config).unwrap();
        assert_eq!(settings.clients[0].secrets[0].expose(), "from-file");
        assert_eq!(settings.tokens.ttl, Duration::from_secs(60));
        let key_a = TokenKey::parse(&Secret::new(KEY_A)).unwrap();
        assert_eq!(settings.tokens.signing_key.id(), key_a.id());
        check_headers(&settings.webhook_headers, &with_x_a("file")).unwrap();
        assert!(check_headers(&settings.webhook_headers, &with_x_a("flag")).is_err());
    }

    #[test]
    fn defaults_and_inconsistencies() {
        let settings = resolve(&AuthArgs::default(), &[]).unwrap();
        assert_eq!(settings.tokens.ttl, DEFAULT_TOKEN_TTL);
        assert!(settings.clients.is_empty());

        let half = AuthArgs {
            oauth_client_id: Some("incode".into()),
            ..AuthArgs::default()
        };
        assert!(matches!(
            resolve(&half, &[]),
            Err(AuthSetupError::ClientIdWithoutSecret)
        ));
        let twice = AuthArgs {
            token_signing_key: Some(Secret::new(KEY_A)),
            token_signing_key_file: Some("/nonexistent".into()),
            ..AuthArgs::default()
        };
        assert!(matches!(
            resolve(&twice, &[]),
            Err(AuthSetupError::TwoSigningKeys { .. })
        ));
        let short = AuthArgs {
            token_signing_key: Some(Secret::new("c2hvcnQ=")),
            ..AuthArgs::default()
        };
        let error = resolve(&short, &[]).unwrap_err();
        assert!(error.to_string().contains("--token-signing-key"), "{error}");
    }

    fn with_client() -> AuthArgs {
        AuthArgs {
            oauth_client_id: Some("incode".into()),
            oauth_client_secret: Some(Secret::new("s3cret")),
            ..AuthArgs::default()
        }
    }

    fn resolve_with(policy: &KeyPolicy) -> Result<AuthSettings, AuthSetupError> {
        AuthSettings::resolve(&with_client(), &ClientAuthLimitArgs::default(), &[], policy)
    }

    #[test]
    fn a_generated_key_is_kept_in_the_data_directory_for_the_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new").join(SIGNING_KEY_FILE);
        let policy = KeyPolicy::PersistInDataDir(path.clone());
        let first = resolve_with(&policy).unwrap().tokens.signing_key;
        let second = resolve_with(&policy).unwrap().tokens.signing_key;
        assert_eq!(first.id(), second.id(), "the key survives a restart");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            TokenKey::parse(&Secret::new(text)).unwrap().id(),
            first.id()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Nothing else was left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [SIGNING_KEY_FILE]);

        // Resolving alone writes nothing: start-up stores the key once every check has passed.
        let fresh = dir.path().join("fresh").join(SIGNING_KEY_FILE);
        let (settings, unsaved) = AuthSettings::resolve_unsaved(
            &with_client(),
            &ClientAuthLimitArgs::default(),
            &[],
            &KeyPolicy::PersistInDataDir(fresh.clone()),
        )
        .unwrap();
        assert!(!fresh.parent().unwrap().exists());
        let unsaved = unsaved.expect("a generated key to store");
        assert_eq!(unsaved.path(), fresh);
        assert!(!format!("{unsaved:?}").contains("material"), "{unsaved:?}");
        unsaved.store().unwrap();
        let stored =
            TokenKey::parse(&Secret::new(std::fs::read_to_string(&fresh).unwrap())).unwrap();
        assert_eq!(stored.id(), settings.tokens.signing_key.id());

        // A damaged file is an error, not a silent new key.
        std::fs::write(&path, "not base64!").unwrap();
        let error = resolve_with(&policy).unwrap_err();
        assert!(error.to_string().contains("generated key file"), "{error}");
    }

    #[test]
    fn storage_shared_by_replicas_requires_a_configured_key() {
        assert!(matches!(
            resolve_with(&KeyPolicy::RequireConfigured),
            Err(AuthSetupError::SigningKeyRequired)
        ));
        let configured = AuthArgs {
            token_signing_key: Some(Secret::new(KEY_A)),
            ..with_client()
        };
        let settings = AuthSettings::resolve(
            &configured,
            &ClientAuthLimitArgs::default(),
            &[],
            &KeyPolicy::RequireConfigured,
        )
        .unwrap();
        let key_a = TokenKey::parse(&Secret::new(KEY_A)).unwrap();
        assert_eq!(settings.tokens.signing_key.id(), key_a.id());
        // Without OAuth clients no key is needed, and nothing is written.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SIGNING_KEY_FILE);
        AuthSettings::resolve(
            &AuthArgs::default(),
            &ClientAuthLimitArgs::default(),
            &[],
            &KeyPolicy::PersistInDataDir(path.clone()),
        )
        .unwrap();
        assert!(!path.exists());
        assert_eq!(
            KeyPolicy::for_storage(StorageKind::Memory, dir.path()),
            KeyPolicy::Ephemeral
        );
        assert_eq!(
            KeyPolicy::for_storage(StorageKind::Embedded, dir.path()),
            KeyPolicy::PersistInDataDir(path)
        );
        // Replicas over NATS verify each other's tokens: the key must be configured.
        assert_eq!(
            KeyPolicy::for_storage(StorageKind::Nats, dir.path()),
            KeyPolicy::RequireConfigured
        );
    }

    #[test]
    fn the_token_lifetime_is_bounded() {
        for (ttl, ok) in [
            (MAX_TOKEN_TTL, true),
            (MAX_TOKEN_TTL + Duration::from_secs(1), false),
            (Duration::from_millis(500), false),
        ] {
            let args = AuthArgs {
                token_ttl: Some(ttl),
                ..AuthArgs::default()
            };
            assert_eq!(resolve(&args, &[]).is_ok(), ok, "{ttl:?}");
        }
        let error = resolve(
            &AuthArgs {
                token_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
                ..AuthArgs::default()
            },
            &[],
        )
        .unwrap_err();
        assert!(error.to_string().contains("at most 1day"), "{error}");
    }
}
