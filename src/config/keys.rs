//! Where each `serve` flag lives in the config file: one table, so that every setting has a key
//! and the file, `serve --help` and `docs/configuration.md` cannot drift apart (tests check all
//! three against it).

/// A flag and its key in the config file (`section.key`, or a top-level `key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKey {
    /// The flag's long name, without the dashes.
    pub flag: &'static str,
    /// The key in the TOML file.
    pub path: &'static str,
}

const fn key(flag: &'static str, path: &'static str) -> FileKey {
    FileKey { flag, path }
}

/// Every flag of `serve` but `--config` itself, with its file key, in the order the file and
/// the documentation list them.
pub const FILE_KEYS: &[FileKey] = &[
    key("log-format", "log_format"),
    key("shutdown-timeout", "shutdown_timeout"),
    // The public listener.
    key("public-addr", "public.addr"),
    key("header-read-timeout", "public.header_read_timeout"),
    key("request-timeout", "public.request_timeout"),
    key("idle-timeout", "public.idle_timeout"),
    key("max-connections", "public.max_connections"),
    key(
        "http2-max-concurrent-streams",
        "public.http2_max_concurrent_streams",
    ),
    key("trusted-proxies", "public.trusted_proxies"),
    key("client-address-header", "public.client_address_header"),
    key(
        "trust-incoming-trace-context",
        "public.trust_incoming_trace_context",
    ),
    // Webhooks.
    key("max-body-bytes", "webhooks.max_body_bytes"),
    key("webhook-header", "webhooks.headers"),
    key(
        "allow-unauthenticated-webhooks",
        "webhooks.allow_unauthenticated",
    ),
    // OAuth: the token endpoint, its tokens and the limits on client authentication.
    key("oauth-client-id", "oauth.client_id"),
    key("oauth-client-secret", "oauth.client_secret"),
    key("token-ttl", "oauth.token_ttl"),
    key("token-signing-key-file", "oauth.signing_key_file"),
    key("token-signing-key", "oauth.signing_key"),
    key("token-verify-key-file", "oauth.verify_key_files"),
    key("token-verify-key", "oauth.verify_keys"),
    key("auth-failure-burst", "oauth.failure_burst"),
    key("auth-failure-interval", "oauth.failure_interval"),
    key(
        "auth-throttle-max-addresses",
        "oauth.throttle_max_addresses",
    ),
    key("disable-auth-throttle", "oauth.disable_throttle"),
    key(
        "max-concurrent-secret-checks",
        "oauth.max_concurrent_secret_checks",
    ),
    // Storage.
    key("storage", "storage.backend"),
    key("data-dir", "storage.data_dir"),
    key("retention", "storage.retention"),
    key("max-events", "storage.max_events"),
    key("dedup-window", "storage.dedup_window"),
    key("maintenance-interval", "storage.maintenance_interval"),
    key("max-commit-batch", "storage.max_commit_batch"),
    // NATS JetStream.
    key("nats-url", "nats.url"),
    key("nats-stream", "nats.stream"),
    key("nats-replicas", "nats.replicas"),
    key("nats-publish-timeout", "nats.publish_timeout"),
    key("nats-connect-timeout", "nats.connect_timeout"),
    key("nats-credentials", "nats.credentials"),
    key("nats-user", "nats.user"),
    key("nats-password", "nats.password"),
    key("nats-token", "nats.token"),
    key("nats-tls-ca", "nats.tls_ca"),
    key("nats-tls-cert", "nats.tls_cert"),
    key("nats-tls-key", "nats.tls_key"),
    key("nats-allow-plaintext", "nats.allow_plaintext"),
    // The internal listener.
    key("internal-addr", "internal.addr"),
    key("heartbeat-interval", "internal.heartbeat_interval"),
    key("internal-tls-cert", "internal.tls_cert"),
    key("internal-tls-key", "internal.tls_key"),
    key("internal-client-ca", "internal.client_ca"),
    key(
        "internal-tls-reload-interval",
        "internal.tls_reload_interval",
    ),
    key(
        "allow-unauthenticated-subscribers",
        "internal.allow_unauthenticated_subscribers",
    ),
    key("allow-anonymous-reads", "internal.allow_anonymous_reads"),
    key(
        "internal-max-concurrent-streams",
        "internal.max_concurrent_streams",
    ),
    key(
        "internal-http2-keepalive-interval",
        "internal.http2_keepalive_interval",
    ),
    key(
        "internal-http2-keepalive-timeout",
        "internal.http2_keepalive_timeout",
    ),
    key("internal-tcp-keepalive", "internal.tcp_keepalive"),
    key("internal-max-message-bytes", "internal.max_message_bytes"),
    // Durable consumers and consumer groups.
    key("max-consumers", "consumers.max"),
    key(
        "max-consumers-per-subscriber",
        "consumers.max_per_subscriber",
    ),
    key("group-session-timeout", "consumers.group_session_timeout"),
];

/// The file keys that are not flags: lists of structured entries.
pub const STRUCTURED_KEYS: &[&str] = &["oauth.clients", "subscribers"];

/// The key of a flag.
pub fn path_of(flag: &str) -> Option<&'static str> {
    FILE_KEYS
        .iter()
        .find(|key| key.flag == flag)
        .map(|key| key.path)
}

/// The flag of a key.
pub fn flag_of(path: &str) -> Option<&'static str> {
    FILE_KEYS
        .iter()
        .find(|key| key.path == path)
        .map(|key| key.flag)
}
