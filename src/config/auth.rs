//! How callers of the public listener authenticate: the arguments, and their resolution into
//! [`AuthSettings`] with the OAuth clients of the config file.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;

use super::{
    ServeArgs, StorageKind,
    file::{ClientEntry, FileSections},
    parse_duration, parse_positive_duration,
};
use crate::auth::{
    AuthSettings, AuthSetupError, ClientSettings, DEFAULT_TOKEN_TTL, KeyPolicy, MAX_TOKEN_TTL,
    SIGNING_KEY_FILE, Secret, ThrottleSettings, TokenKey, TokenSettings, UnsavedKey, parse_key,
    read_key, webhook_headers,
};

/// Authentication of the public listener: the OAuth clients Incode uses at `/oauth/token`, the
/// keys of the tokens it gets there, and the headers every webhook call must carry. With no
/// client and no header configured, `serve` refuses to start unless
/// `--allow-unauthenticated-webhooks` is given.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthArgs {
    /// Client id Incode authenticates with at /oauth/token (more clients: the config file).
    #[arg(long, env = "INCODE_GATEWAY_OAUTH_CLIENT_ID", value_name = "ID")]
    pub oauth_client_id: Option<String>,

    /// Secret of --oauth-client-id: plain text, or an argon2id PHC string from `hash-secret`.
    /// Prefer the environment variable: flags show in the process list.
    #[arg(
        long,
        env = "INCODE_GATEWAY_OAUTH_CLIENT_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub oauth_client_secret: Option<Secret>,

    /// Lifetime of the access tokens /oauth/token issues (its `expires_in`), at most 24h
    /// [default: 1h].
    #[arg(long, env = "INCODE_GATEWAY_TOKEN_TTL", value_parser = parse_duration)]
    pub token_ttl: Option<Duration>,

    /// File with the base64 key that signs access tokens (at least 32 random bytes, e.g. from
    /// `openssl rand -base64 32`); every replica needs the same one. Without one, the embedded
    /// storage generates a key on first start and keeps it in --data-dir (`token-signing-key`,
    /// mode 0600); the memory storage uses a random key, and tokens do not survive a restart.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TOKEN_SIGNING_KEY_FILE",
        value_name = "FILE"
    )]
    pub token_signing_key_file: Option<PathBuf>,

    /// The signing key itself, base64. Prefer the key file or the environment variable.
    #[arg(
        long,
        env = "INCODE_GATEWAY_TOKEN_SIGNING_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub token_signing_key: Option<Secret>,

    /// File with a verify-only key: an earlier signing key whose tokens are still accepted.
    /// Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long = "token-verify-key-file",
        env = "INCODE_GATEWAY_TOKEN_VERIFY_KEY_FILES",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub token_verify_key_files: Vec<PathBuf>,

    /// A verify-only key itself, base64. Repeatable; the environment variable takes a
    /// comma-separated list.
    #[arg(
        long = "token-verify-key",
        env = "INCODE_GATEWAY_TOKEN_VERIFY_KEYS",
        hide_env_values = true,
        value_name = "KEY",
        value_delimiter = ','
    )]
    pub token_verify_keys: Vec<Secret>,

    /// A header every webhook call must carry with exactly this value (one of Incode's custom
    /// headers), as NAME=VALUE; compared in constant time. Repeatable.
    #[arg(
        long = "webhook-header",
        env = "INCODE_GATEWAY_WEBHOOK_HEADER",
        hide_env_values = true,
        value_name = "NAME=VALUE"
    )]
    pub webhook_headers: Vec<Secret>,

    /// Accept webhooks from anyone when no OAuth client and no webhook header is configured.
    /// For trying the gateway out only.
    #[arg(
        long,
        env = "INCODE_GATEWAY_ALLOW_UNAUTHENTICATED_WEBHOOKS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_unauthenticated_webhooks: bool,
}

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
    #[arg(long, env = "INCODE_GATEWAY_AUTH_FAILURE_INTERVAL", default_value = "6s", value_parser = parse_positive_duration)]
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
    /// The throttle these arguments describe.
    pub fn throttle_settings(&self) -> ThrottleSettings {
        ThrottleSettings {
            enabled: !self.disable_auth_throttle,
            burst: self.auth_failure_burst,
            replenish_every: self.auth_failure_interval,
            max_sources: usize::try_from(self.auth_throttle_max_addresses).unwrap_or(usize::MAX),
            ..ThrottleSettings::default()
        }
    }
}

impl ServeArgs {
    /// The authentication settings: the flags (which already hold what the environment and the
    /// config file say) and the OAuth clients of the config file's `sections`. Nothing is
    /// written: a signing key generated for the data directory comes back, to be stored once
    /// start-up may write.
    pub fn auth_settings(
        &self,
        sections: &FileSections,
    ) -> Result<(AuthSettings, Option<UnsavedKey>), AuthSetupError> {
        settings_from(
            &self.auth,
            &self.client_auth_limits,
            &sections.oauth_clients,
            &key_policy(self.storage, &self.data_dir),
        )
    }
}

/// Where the token signing key comes from when none is configured, for a storage backend: what
/// replicas share decides what they need.
fn key_policy(storage: StorageKind, data_dir: &Path) -> KeyPolicy {
    match storage {
        StorageKind::Embedded => KeyPolicy::PersistInDataDir(data_dir.join(SIGNING_KEY_FILE)),
        StorageKind::Memory => KeyPolicy::Ephemeral,
        StorageKind::Nats => KeyPolicy::RequireConfigured,
    }
}

impl From<&ClientEntry> for ClientSettings {
    fn from(entry: &ClientEntry) -> Self {
        Self {
            id: entry.id.clone(),
            secrets: entry.secrets.clone(),
        }
    }
}

/// Resolves the settings, writing nothing; a missing signing key is handled as `policy` says
/// (a key generated for the data directory comes back, to be stored once start-up may write).
fn settings_from(
    args: &AuthArgs,
    limits: &ClientAuthLimitArgs,
    file_clients: &[ClientEntry],
    policy: &KeyPolicy,
) -> Result<(AuthSettings, Option<UnsavedKey>), AuthSetupError> {
    // The client given by flags replaces a file client with the same id.
    let mut clients: Vec<ClientSettings> = file_clients.iter().map(ClientSettings::from).collect();
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
        None => policy.signing_key()?,
    };

    let settings = AuthSettings {
        clients,
        tokens: TokenSettings {
            ttl,
            signing_key,
            verify_only_keys,
        },
        webhook_headers,
        allow_unauthenticated_webhooks: args.allow_unauthenticated_webhooks,
        throttle: limits.throttle_settings(),
        max_concurrent_secret_checks: usize::try_from(limits.max_concurrent_secret_checks)
            .unwrap_or(1),
    };
    Ok((settings, unsaved))
}

/// The signing key configured inline or in a file, not both.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::check_headers;

    /// [`settings_from`], with a generated key stored at once.
    fn resolve_stored(
        args: &AuthArgs,
        limits: &ClientAuthLimitArgs,
        clients: &[ClientEntry],
        policy: &KeyPolicy,
    ) -> Result<AuthSettings, AuthSetupError> {
        let (settings, unsaved) = settings_from(args, limits, clients, policy)?;
        unsaved.map(UnsavedKey::store).transpose()?;
        Ok(settings)
    }

    /// The settings of `config`, with a generated key stored at once.
    fn settings_of(config: &ServeArgs) -> Result<AuthSettings, AuthSetupError> {
        let (settings, unsaved) = config.auth_settings(&config.file_sections().unwrap())?;
        unsaved.map(UnsavedKey::store).transpose()?;
        Ok(settings)
    }

    fn resolve(args: &AuthArgs, clients: &[ClientEntry]) -> Result<AuthSettings, AuthSetupError> {
        resolve_stored(
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
    fn config_with_file(args: &[&str]) -> (tempfile::TempDir, ServeArgs) {
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
        let config = ServeArgs::for_tests_with(&all).unwrap();
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
        let settings = settings_of(&config).unwrap();
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
        let settings = settings_of(&config).unwrap();
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
        resolve_stored(&with_client(), &ClientAuthLimitArgs::default(), &[], policy)
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
        let (settings, unsaved) = settings_from(
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
        let settings = resolve_stored(
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
        resolve_stored(
            &AuthArgs::default(),
            &ClientAuthLimitArgs::default(),
            &[],
            &KeyPolicy::PersistInDataDir(path.clone()),
        )
        .unwrap();
        assert!(!path.exists());
        assert_eq!(
            key_policy(StorageKind::Memory, dir.path()),
            KeyPolicy::Ephemeral
        );
        assert_eq!(
            key_policy(StorageKind::Embedded, dir.path()),
            KeyPolicy::PersistInDataDir(path)
        );
        // Replicas over NATS verify each other's tokens: the key must be configured.
        assert_eq!(
            key_policy(StorageKind::Nats, dir.path()),
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
