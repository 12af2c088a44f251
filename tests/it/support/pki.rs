//! Throwaway certificates for the TLS tests: CAs, the gateway's server certificate, subscribers'
//! client certificates, and the files the gateway reads them from.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// A certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let certificate = params.self_signed(&key).unwrap();
        Self {
            pem: certificate.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `params` with these extended key usages; none leaves the extension
    /// out.
    fn sign(&self, mut params: CertificateParams, usages: &[ExtendedKeyUsagePurpose]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        params.extended_key_usages = usages.to_vec();
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let certificate = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            der: certificate.der().clone(),
        }
    }

    /// The gateway's certificate: `localhost` and `127.0.0.1`.
    pub fn server(&self) -> Leaf {
        let params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        self.sign(params, &[ExtendedKeyUsagePurpose::ServerAuth])
    }

    /// A subscriber's client certificate whose SAN DNS name is `name`.
    pub fn client(&self, name: &str) -> Leaf {
        self.client_with_usages(name, &[ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A certificate whose SAN DNS name is `name`, with these extended key usages (none: no
    /// extended key usage extension at all).
    pub fn client_with_usages(&self, name: &str, usages: &[ExtendedKeyUsagePurpose]) -> Leaf {
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        self.sign(params, usages)
    }

    /// A client certificate with no SAN, only the common name `name`.
    pub fn client_with_common_name(&self, name: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        self.sign(params, &[ExtendedKeyUsagePurpose::ClientAuth])
    }
}

/// The gateway's TLS files in a temporary directory.
pub struct TlsFiles {
    dir: TempDir,
}

impl TlsFiles {
    /// Writes the server certificate and key, and the client CA when given.
    pub fn new(server: &Leaf, client_ca: Option<&TestCa>) -> Self {
        let files = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        files.write_server(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.client_ca(), &ca.pem).unwrap();
        }
        files
    }

    /// Replaces the server certificate and key in place, one file after the other, as a
    /// careless rotation would.
    pub fn write_server(&self, server: &Leaf) {
        std::fs::write(self.cert(), &server.cert_pem).unwrap();
        std::fs::write(self.key(), &server.key_pem).unwrap();
    }

    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    pub fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }

    pub fn client_ca(&self) -> PathBuf {
        self.dir.path().join("client-ca.crt")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
