use super::*;
use crate::auth::Secret;

fn options(servers: &[&str]) -> NatsSettings {
    NatsSettings::new(servers.iter().map(|s| (*s).to_owned()).collect(), "EVENTS")
}

fn with(change: impl FnOnce(&mut NatsSettings)) -> Result<Transport, NatsOptionsError> {
    let mut options = options(&["nats://127.0.0.1:4222"]);
    change(&mut options);
    options.check()
}

#[test]
fn options_that_cannot_work_are_refused_before_connecting() {
    use NatsOptionsError::*;
    fn path() -> Option<PathBuf> {
        Some(PathBuf::from("/etc/nats/file"))
    }
    /// A change to valid options, the refusal it must meet, and words of its message.
    type Case = (
        Box<dyn FnOnce(&mut NatsSettings)>,
        NatsOptionsError,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (Box::new(|o| o.servers.clear()), NoServers, "--nats-url"),
        (
            Box::new(|o| o.servers = vec!["http://u:hunter2@nats:4222".into()]),
            InvalidUrl {
                url: "http://***@nats:4222".into(),
            },
            "not a NATS server URL",
        ),
        (
            Box::new(|o| o.stream = "has.dot".into()),
            InvalidStream {
                stream: "has.dot".into(),
            },
            "--nats-stream",
        ),
        (
            Box::new(|o| o.stream = "S".repeat(65)),
            InvalidStream {
                stream: "S".repeat(65),
            },
            "1 to 64",
        ),
        (
            Box::new(|o| o.stream = String::new()),
            InvalidStream {
                stream: String::new(),
            },
            "--nats-stream",
        ),
        (
            Box::new(|o| o.replicas = 0),
            InvalidReplicas { replicas: 0 },
            "between 1 and 5",
        ),
        (
            Box::new(|o| o.replicas = 6),
            InvalidReplicas { replicas: 6 },
            "not 6",
        ),
        (
            Box::new(|o| {
                o.dedup_window = Duration::from_secs(7200);
                o.retention = Duration::from_secs(3600);
            }),
            DedupWindowBeyondRetention {
                dedup_window: Duration::from_secs(7200),
                retention: Duration::from_secs(3600),
            },
            "--dedup-window (2h) must not be longer than --retention (1h)",
        ),
        (
            Box::new(|o| {
                o.auth.token = Some(Secret::new("token-hunter2"));
                o.auth.credentials_file = path();
            }),
            SeveralAuthentications,
            "give one NATS authentication",
        ),
        (
            Box::new(|o| {
                o.auth.token = Some(Secret::new("token-hunter2"));
                o.auth.user = Some("gateway".into());
                o.auth.password = Some(Secret::new("hunter2"));
            }),
            SeveralAuthentications,
            "--nats-token",
        ),
        (
            Box::new(|o| o.auth.password = Some(Secret::new("hunter2"))),
            HalfUser,
            "--nats-user and --nats-password",
        ),
        (
            Box::new(|o| o.auth.user = Some("gateway".into())),
            HalfUser,
            "go together",
        ),
        (
            Box::new(|o| o.tls.cert_file = path()),
            HalfClientCertificate,
            "--nats-tls-cert and --nats-tls-key",
        ),
        (
            Box::new(|o| o.tls.key_file = path()),
            HalfClientCertificate,
            "go together",
        ),
    ];
    for (change, expected, message) in cases {
        let error = with(change).unwrap_err();
        assert_eq!(error, expected);
        let text = NatsOpenError::from(error).to_string();
        assert!(text.contains(message), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
    // The defaults, and a usable set of everything.
    assert_eq!(with(|_| {}), Ok(Transport::LoopbackPlaintext));
    let all = with(|o| {
        o.servers = vec!["tls://nats-1:4222".into(), "tls://nats-2:4222".into()];
        o.stream = "INCODE_EVENTS-2".into();
        o.replicas = 5;
        o.auth.user = Some("gateway".into());
        o.auth.password = Some(Secret::new("hunter2"));
        o.tls.ca_file = path();
        o.tls.cert_file = path();
        o.tls.key_file = path();
    });
    assert_eq!(all, Ok(Transport::Tls));
}

#[test]
fn credentials_never_cross_the_network_in_clear_text_unless_allowed() {
    let token = |o: &mut NatsSettings| o.auth.token = Some(Secret::new("token-hunter2"));
    let user = |o: &mut NatsSettings| {
        o.auth.user = Some("gateway".into());
        o.auth.password = Some(Secret::new("hunter2"));
    };
    let creds = |o: &mut NatsSettings| o.auth.credentials_file = Some("/x.creds".into());
    let credentials: [&dyn Fn(&mut NatsSettings); 3] = [&token, &user, &creds];
    for add in credentials {
        // Loopback: the traffic stays on the host.
        for server in [
            "nats://127.0.0.1:4222",
            "127.0.0.2:4222",
            "nats://[::1]:4222",
            "nats://localhost:4222",
            "ws://LOCALHOST:8080",
        ] {
            let mut options = options(&[server]);
            add(&mut options);
            assert_eq!(
                options.check(),
                Ok(Transport::LoopbackPlaintext),
                "{server}"
            );
        }
        // TLS, by scheme or forced by a CA or a client certificate.
        for (servers, ca) in [
            (
                &["tls://nats.internal:4222", "wss://nats.internal:443"][..],
                false,
            ),
            (&["nats://nats.internal:4222", "nats-2.internal"][..], true),
        ] {
            let mut options = options(servers);
            add(&mut options);
            if ca {
                options.tls.ca_file = Some("/ca.pem".into());
            }
            assert_eq!(options.check(), Ok(Transport::Tls), "{servers:?}");
        }
        // One server in plain text on the network is one too many.
        let mut options = options(&[
            "tls://nats-1.internal:4222",
            "nats://nats-2.internal:4222",
            "nats://127.0.0.1:4222",
        ]);
        add(&mut options);
        let error = options.check().unwrap_err();
        assert_eq!(
            error,
            NatsOptionsError::PlaintextCredentials {
                servers: "nats://nats-2.internal:4222".into()
            }
        );
        let text = error.to_string();
        assert!(text.contains("--nats-allow-plaintext"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        options.allow_plaintext = true;
        assert!(matches!(options.check(), Ok(Transport::Plaintext { .. })));
    }
    // Credentials in a URL count as credentials, and are blanked.
    let mut options = options(&["nats://gateway:hunter2@10.0.0.7:4222"]);
    assert_eq!(
        options.check(),
        Err(NatsOptionsError::PlaintextCredentials {
            servers: "nats://***@10.0.0.7:4222".into()
        })
    );
    options.servers = vec!["nats://token-hunter2@10.0.0.7:4222".into()];
    assert!(options.check().is_err());
    // Plain text without credentials is allowed (with a warning at connection), as is a
    // name that only resolves to loopback: names other than `localhost` are not resolved.
    for server in [
        "nats://10.0.0.7:4222",
        "nats://nats.internal:4222",
        "ws://[::ffff:10.0.0.1]:80",
    ] {
        assert!(
            matches!(options_check(server), Ok(Transport::Plaintext { .. })),
            "{server}"
        );
    }
    assert_eq!(
        options_check("nats://[::ffff:127.0.0.1]:4222"),
        Ok(Transport::LoopbackPlaintext)
    );
}

fn options_check(server: &str) -> Result<Transport, NatsOptionsError> {
    options(&[server]).check()
}

#[test]
fn credentials_in_server_urls_are_not_shown() {
    let servers = [
        "nats://gateway:s3cret@nats-1:4222".to_owned(),
        "tls://token@nats-2:4222".to_owned(),
        "nats-3:4222".to_owned(),
    ];
    assert_eq!(
        redacted_servers(&servers),
        "nats://***@nats-1:4222,tls://***@nats-2:4222,nats-3:4222"
    );
}
