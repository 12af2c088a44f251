//! TLS for the internal listener, reloaded without a restart.
//!
//! The certificate chain, its key and the client CA are read from PEM files into one rustls
//! [`ServerConfig`]. Every new connection takes the configuration current at its accept, so a
//! reload swaps the whole configuration (certificate *and* client CA, which cert-manager and
//! similar tools rotate too) while connections already open keep the session they negotiated:
//! their streams go on. The files are checked every `--internal-tls-reload-interval` and
//! reloaded when their content changed, and unconditionally on SIGHUP ([`crate::reload`]). A
//! reload that fails (a half-written file, a key that does not match) keeps the previous
//! configuration and says why.
//!
//! Under mutual TLS a client certificate must chain to the client CA and carry the
//! `clientAuth` extended key usage; anything else fails the handshake.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme,
        client::danger::HandshakeSignatureValid,
        crypto::{CryptoProvider, ring},
        pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject},
        server::{
            WebPkiClientVerifier,
            danger::{ClientCertVerified, ClientCertVerifier},
        },
    },
};
use tokio_util::sync::CancellationToken;
use x509_cert::{
    der::{Decode, oid::db::rfc5280::ID_KP_CLIENT_AUTH},
    ext::pkix::ExtendedKeyUsage,
};
use zeroize::Zeroizing;

use super::identity::certificate_names;
use crate::error::error_chain;

/// The PEM files TLS is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the listener's own certificate first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA certificates that sign client certificates; `Some` turns on mutual TLS.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used. Never shows key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} {}", path.display())]
    Read {
        /// Which file it is (`--internal-tls-cert`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A certificate file holds no usable certificate.
    #[error("{what} {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display())]
    NoCertificate {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate file is not valid PEM.
    #[error("{what} {} is not a valid PEM certificate file", path.display())]
    InvalidCertificate {
        /// Which file it is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: tokio_rustls::rustls::pki_types::pem::Error,
    },
    /// The key file holds no usable private key. (The parser's message is left out: it may
    /// quote the file.)
    #[error(
        "--internal-tls-key {} holds no PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`)",
        path.display()
    )]
    InvalidKey {
        /// The file.
        path: PathBuf,
    },
    /// A client CA certificate is not usable as a trust anchor.
    #[error("--internal-client-ca {}: a certificate is not usable as a trust anchor", path.display())]
    InvalidClientCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    /// The client certificate verifier could not be built.
    #[error("--internal-client-ca {}: cannot verify client certificates with it", path.display())]
    ClientVerifier {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: tokio_rustls::rustls::server::VerifierBuilderError,
    },
    /// The certificate and key do not make a usable server identity (e.g. they do not match).
    #[error(
        "--internal-tls-cert {} and --internal-tls-key {} are not a usable pair",
        cert.display(),
        key.display()
    )]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        #[source]
        source: tokio_rustls::rustls::Error,
    },
    /// The reload task failed.
    #[error("the TLS reload task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The contents of the files, as read once.
struct Contents {
    cert: Vec<u8>,
    key: Zeroizing<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl Contents {
    fn read(files: &TlsFiles) -> Result<Self, TlsError> {
        let read = |what, path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            cert: read("--internal-tls-cert", &files.cert)?,
            key: Zeroizing::new(read("--internal-tls-key", &files.key)?),
            client_ca: files
                .client_ca
                .as_deref()
                .map(|path| read("--internal-client-ca", path))
                .transpose()?,
        })
    }

    /// A digest of everything, to notice any change.
    fn fingerprint(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        for part in [
            Some(self.cert.as_slice()),
            Some(self.key.as_slice()),
            self.client_ca.as_deref(),
        ] {
            let part = part.unwrap_or_default();
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        hasher.finalize().into()
    }
}

/// What a loaded configuration serves, for the logs.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The names of the listener's certificate.
    pub names: Vec<String>,
    /// When it expires.
    pub not_after: Option<SystemTime>,
    /// How many client CA certificates are trusted (0 without mutual TLS).
    pub client_cas: usize,
}

/// The TLS configuration of the internal listener, reloadable.
pub struct ReloadingTls {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<ServerConfig>>,
    /// Fingerprint of the files last looked at, loaded, broken or unreadable: a failure is
    /// reported once, not at every check.
    seen: Mutex<[u8; 32]>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ReloadingTls {
    /// Loads the files; fails when they are not usable.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(ring::default_provider());
        let contents = Contents::read(&files)?;
        let (config, summary) = build(&files, &contents, &provider)?;
        log_loaded(&files, &summary, "internal listener TLS configured");
        Ok(Self {
            seen: Mutex::new(contents.fingerprint()),
            current: RwLock::new(Arc::new(config)),
            provider,
            files,
        })
    }

    /// Whether client certificates are asked for (mutual TLS).
    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the current configuration.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Reloads the files if their content changed since they were last looked at (or always,
    /// with `force`). `Ok(Some(_))` when a new configuration is in use, `Ok(None)` when nothing
    /// changed (a failure already returned once included); on error the previous configuration
    /// stays.
    pub fn reload(&self, force: bool) -> Result<Option<Summary>, TlsError> {
        let contents = Contents::read(&self.files);
        let fingerprint = match &contents {
            Ok(contents) => contents.fingerprint(),
            // A file that cannot be read is reported once per reason, like a broken one; once
            // readable again, the files differ from what was last seen and are loaded (and
            // logged) anew, even when their content is the one in use.
            Err(error) => unreadable_fingerprint(error),
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == fingerprint && !force {
                return Ok(None);
            }
            *seen = fingerprint;
        }
        let contents = contents?;
        let (config, summary) = build(&self.files, &contents, &self.provider)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(config);
        Ok(Some(summary))
    }
}

/// What `ReloadingTls::seen` holds after a failed read: a digest of the reason, so that the same
/// failure is seen as nothing new and another one is.
fn unreadable_fingerprint(error: &TlsError) -> [u8; 32] {
    Sha256::digest(format!("unreadable: {}", error_chain(error))).into()
}

/// Reloads `tls` when its files change (checked every `interval`), until `shutdown`. (A
/// reload request, SIGHUP, reloads them unconditionally: see [`reload_now`].)
pub async fn watch(tls: Arc<ReloadingTls>, interval: Duration, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        reload_now(&tls, false).await;
    }
}

/// Reloads `tls` now if its files changed (or whatever they hold, with `force`), and says what
/// happened: the new certificate, or why the previous configuration stays.
pub async fn reload_now(tls: &Arc<ReloadingTls>, force: bool) {
    let task = tls.clone();
    // Reading the files blocks.
    let result = tokio::task::spawn_blocking(move || task.reload(force))
        .await
        .unwrap_or_else(|error| Err(TlsError::Task(error)));
    match result {
        Ok(Some(summary)) => {
            log_loaded(&tls.files, &summary, "internal listener TLS reloaded");
        }
        Ok(None) => {}
        Err(error) => tracing::error!(
            error = %error_chain(&error),
            "cannot reload the internal listener's TLS files; new connections keep the previous certificate"
        ),
    }
}

fn log_loaded(files: &TlsFiles, summary: &Summary, message: &'static str) {
    let not_after = summary.not_after.map(humantime::format_rfc3339_seconds);
    tracing::info!(
        cert = %files.cert.display(),
        names = ?summary.names,
        not_after = not_after.map(tracing::field::display),
        mutual_tls = files.client_ca.is_some(),
        client_cas = summary.client_cas,
        "{message}"
    );
    if summary
        .not_after
        .is_some_and(|not_after| not_after <= SystemTime::now())
    {
        tracing::warn!(
            cert = %files.cert.display(),
            "the internal listener's TLS certificate has expired: clients will refuse it"
        );
    }
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::InvalidCertificate {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

fn build(
    files: &TlsFiles,
    contents: &Contents,
    provider: &Arc<CryptoProvider>,
) -> Result<(ServerConfig, Summary), TlsError> {
    let chain = certificates("--internal-tls-cert", &files.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|_| TlsError::InvalidKey {
        path: files.key.clone(),
    })?;
    let identity_error = |source| TlsError::Identity {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(identity_error)?;
    let (builder, client_cas) = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            let cas = certificates("--internal-client-ca", path, pem)?;
            let count = cas.len();
            let mut roots = RootCertStore::empty();
            for ca in cas {
                roots.add(ca).map_err(|source| TlsError::InvalidClientCa {
                    path: path.clone(),
                    source,
                })?;
            }
            // A client without a certificate completes the handshake so that health probes
            // work; every other call then needs the certificate (see `access`). A client that
            // presents a certificate the CA did not sign, or one not issued for client
            // authentication, fails the handshake.
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|source| TlsError::ClientVerifier {
                        path: path.clone(),
                        source,
                    })?;
            let verifier = Arc::new(RequireClientAuthUsage { inner: verifier });
            (builder.with_client_cert_verifier(verifier), count)
        }
        _ => (builder.with_no_client_auth(), 0),
    };
    let summary = Summary {
        names: chain
            .first()
            .and_then(|leaf| certificate_names(leaf).ok())
            .unwrap_or_default(),
        not_after: chain.first().and_then(not_after),
        client_cas,
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(identity_error)?;
    // gRPC clients (Go's in particular) insist on negotiating h2; /metrics scrapers may speak
    // HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((config, summary))
}

/// Client certificate verification that also insists on the `clientAuth` extended key usage.
///
/// webpki checks the purpose only when the certificate states one: a certificate without the
/// extended key usage extension passes as fit for anything (RFC 5280 allows that reading). A
/// CA that also signs server or code-signing certificates without EKUs would then hand out
/// subscriber identities by accident, so the extension must be present and name `clientAuth`.
#[derive(Debug)]
struct RequireClientAuthUsage {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for RequireClientAuthUsage {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, tokio_rustls::rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_client_auth_usage(end_entity)?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, tokio_rustls::rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

/// `Ok` when the certificate's extended key usage extension is present and lists `clientAuth`.
/// The refusal is the handshake alert `unsupported_certificate`, which the client reports.
fn check_client_auth_usage(
    certificate: &CertificateDer<'_>,
) -> Result<(), tokio_rustls::rustls::Error> {
    use tokio_rustls::rustls::{CertificateError, Error, ExtendedKeyPurpose};
    let certificate = x509_cert::Certificate::from_der(certificate.as_ref())
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let usage = certificate
        .tbs_certificate
        .get::<ExtendedKeyUsage>()
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?;
    match usage {
        Some((_, ExtendedKeyUsage(purposes))) if purposes.contains(&ID_KP_CLIENT_AUTH) => Ok(()),
        _ => Err(Error::InvalidCertificate(
            CertificateError::InvalidPurposeContext {
                required: ExtendedKeyPurpose::ClientAuth,
                presented: Vec::new(),
            },
        )),
    }
}

fn not_after(certificate: &CertificateDer<'_>) -> Option<SystemTime> {
    let certificate = x509_cert::Certificate::from_der(certificate.as_ref()).ok()?;
    Some(
        certificate
            .tbs_certificate
            .validity
            .not_after
            .to_system_time(),
    )
}
