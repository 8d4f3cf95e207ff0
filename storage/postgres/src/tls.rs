//! The TLS connector of a [`PgConfig`] that asks for TLS: rustls with the ring provider, the
//! system's trust anchors or the configured authority, the client's certificate if any.
//! Files are read once, when the database is opened; what is wrong with them fails the
//! start with the file's name.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{PgConfig, PgTls};

/// Why the TLS connector could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgTlsError {
    /// A certificate file could not be read or holds no valid PEM certificate.
    #[error("cannot read certificates from {path}")]
    Certificates {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A certificate file without a certificate.
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A trust anchor rustls does not accept.
    #[error("{path}: not a usable trust anchor")]
    TrustAnchor {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// No trust anchor at all: the system has none and no `ca_file` was given.
    #[error(
        "no trust anchors for the database's certificate: the system has none; give a CA file"
    )]
    NoTrustAnchors,
    /// The client's private key could not be read.
    #[error("cannot read the private key in {path}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What went wrong (never the key).
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the configuration (a key that does not match its certificate, …).
    #[error("TLS configuration refused")]
    Config(#[source] rustls::Error),
}

/// The connector for `config`, `None` for plaintext.
pub(crate) fn connector(config: &PgConfig) -> Result<Option<MakeRustlsConnect>, PgTlsError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    Ok(Some(MakeRustlsConnect::new(client_config(tls)?)))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, PgTlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| PgTlsError::Certificates {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(PgTlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn client_config(tls: &PgTls) -> Result<rustls::ClientConfig, PgTlsError> {
    let mut roots = RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            for c in certificates(path)? {
                roots.add(c).map_err(|source| PgTlsError::TrustAnchor {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => {
            let (_added, _ignored) =
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(PgTlsError::NoTrustAnchors);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(PgTlsError::Config)?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| PgTlsError::Key {
                path: key.clone(),
                source,
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(PgTlsError::Config)
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
