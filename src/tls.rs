//! TLS material for the agent link and for HTTPS on the REST/SSE side: PEM files read once
//! at start-up and checked, so a bad file is a clear one-line error instead of a panic
//! inside gRPC's C core (which rejects NUL bytes by panicking) or a late failure to listen.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a PEM file cannot be used.
#[derive(Debug)]
pub struct TlsError {
    path: PathBuf,
    what: &'static str,
    reason: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.reason)
    }
}

impl std::error::Error for TlsError {}

/// Reads a PEM file (`what` names it in errors: "certificate", "private key", "CA").
pub fn load_pem(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let err = |reason: String| TlsError {
        path: path.to_path_buf(),
        what,
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    if bytes.contains(&0) {
        return Err(err("contains a NUL byte; expected PEM text".into()));
    }
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(err("is not PEM (no -----BEGIN line)".into()));
    }
    Ok(bytes)
}

/// The server side of TLS on the agent link.
#[derive(Clone)]
pub struct ServerTls {
    /// The server's certificate chain (PEM).
    pub cert: Vec<u8>,
    /// The server's private key (PEM).
    pub key: Vec<u8>,
    /// When set, agents must present a certificate signed by this CA (mutual TLS).
    pub client_ca: Option<Vec<u8>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca.is_some())
            .finish()
    }
}

/// The agent side of TLS on the agent link.
#[derive(Clone)]
pub struct AgentTls {
    /// CA that signed the server's certificate (PEM).
    pub ca: Vec<u8>,
    /// The agent's certificate and key, for servers that require mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to expect in the server's certificate, when it differs from the address host.
    pub server_name: Option<String>,
}

impl fmt::Debug for AgentTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentTls")
            .field("client_certificate", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

#[cfg(feature = "grpc")]
impl ServerTls {
    /// gRPC server credentials for these files.
    pub fn credentials(&self) -> grpcio::ServerCredentials {
        let mut b =
            grpcio::ServerCredentialsBuilder::new().add_cert(self.cert.clone(), self.key.clone());
        if let Some(ca) = &self.client_ca {
            b = b.root_cert(
                ca.clone(),
                grpcio::CertificateRequestType::RequestAndRequireClientCertificateAndVerify,
            );
        }
        b.build()
    }
}

#[cfg(feature = "grpc")]
impl AgentTls {
    /// gRPC channel credentials for these files.
    pub fn credentials(&self) -> grpcio::ChannelCredentials {
        let mut b = grpcio::ChannelCredentialsBuilder::new().root_cert(self.ca.clone());
        if let Some((cert, key)) = &self.identity {
            b = b.cert(cert.clone(), key.clone());
        }
        b.build()
    }
}

/// HTTPS on the REST/SSE side (tiny_http with OpenSSL).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpTls {
    /// The server's certificate chain (PEM), leaf first.
    pub cert: Vec<u8>,
    /// The server's private key (PEM).
    pub key: Vec<u8>,
}

impl fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.write_str("HttpTls")
    }
}

impl HttpTls {
    /// Reads and checks the HTTPS files: both parse, and the key belongs to the certificate,
    /// so a mistake is reported before anything listens.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert = load_pem(cert_path, "certificate")?;
        let key = load_pem(key_path, "private key")?;
        let err = |path: &Path, what, reason: String| TlsError {
            path: path.to_path_buf(),
            what,
            reason,
        };
        let chain = openssl::x509::X509::stack_from_pem(&cert).map_err(|e| {
            err(
                cert_path,
                "certificate",
                format!("is not a PEM certificate: {e}"),
            )
        })?;
        let leaf = chain
            .first()
            .ok_or_else(|| err(cert_path, "certificate", "holds no certificate".into()))?;
        let pkey = openssl::pkey::PKey::private_key_from_pem(&key).map_err(|e| {
            err(
                key_path,
                "private key",
                format!("is not a PEM private key: {e}"),
            )
        })?;
        let matches = leaf
            .public_key()
            .is_ok_and(|public| public.public_eq(&pkey));
        if !matches {
            return Err(err(
                key_path,
                "private key",
                format!("does not belong to the certificate {}", cert_path.display()),
            ));
        }
        Ok(HttpTls { cert, key })
    }

    /// The form tiny_http takes.
    pub fn ssl_config(&self) -> tiny_http::SslConfig {
        tiny_http::SslConfig {
            certificate: self.cert.clone(),
            private_key: self.key.clone(),
        }
    }
}
