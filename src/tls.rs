//! TLS for TCP (rustls with the ring provider): the daemon's certificate chain and key come from
//! the systemd credentials `tls-cert` / `tls-key` or the configured PEM files; a client trusts
//! the certificates of a CA file, else the system's store.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{read_private_file, read_secret_file};
use crate::env;
use crate::error::{Error, Result};

/// The systemd credential holding the daemon's PEM certificate chain.
pub const CERT_CREDENTIAL: &str = "tls-cert";
/// The systemd credential holding the daemon's PEM private key.
pub const KEY_CREDENTIAL: &str = "tls-key";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A PEM text and where it came from (for messages).
struct Pem {
    text: String,
    source: String,
}

/// The credential `name`, else `file` (read by `read`), else None.
fn pem(credential: &str, file: Option<&Path>, read: fn(&Path) -> Result<String>) -> Result<Option<Pem>> {
    if let Some(text) = env::credential(credential)? {
        return Ok(Some(Pem { text, source: format!("the credential {credential}") }));
    }
    let Some(file) = file else { return Ok(None) };
    Ok(Some(Pem { text: read(file)?, source: file.display().to_string() }))
}

fn certificates(pem: &Pem) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.text.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{}: unreadable PEM certificate: {e}", pem.source)))?;
    if certs.is_empty() {
        return Err(Error::Config(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", pem.source)));
    }
    Ok(certs)
}

/// The daemon's TLS settings; None when no certificate is configured (TCP stays clear text,
/// which the daemon allows on loopback addresses only).
pub fn server_config(cert_file: Option<&Path>, key_file: Option<&Path>) -> Result<Option<Arc<ServerConfig>>> {
    let (cert, key) =
        match (pem(CERT_CREDENTIAL, cert_file, read_secret_file)?, pem(KEY_CREDENTIAL, key_file, read_private_file)?) {
            (None, None) => return Ok(None),
            (Some(cert), Some(key)) => (cert, key),
            _ => {
                return Err(Error::Config(
                    "TLS needs both a certificate and its key: set [daemon] tls_cert_file and tls_key_file \
                 (or the credentials tls-cert and tls-key)"
                        .into(),
                ))
            }
        };
    let chain = certificates(&cert)?;
    let private = PrivateKeyDer::from_pem_slice(key.text.as_bytes())
        .map_err(|e| Error::Config(format!("{}: no readable PEM private key: {e}", key.source)))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            Error::Config(format!("the TLS certificate ({}) and key ({}) do not fit: {e}", cert.source, key.source))
        })?;
    Ok(Some(Arc::new(config)))
}

/// The PEM certificates of a CA file.
pub fn ca_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>> {
    certificates(&Pem { text: read_secret_file(file)?, source: file.display().to_string() })
}

/// A client's TLS settings: trust the certificates in `ca_file`, else the system's store.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            for cert in ca_certificates(file)? {
                roots
                    .add(cert)
                    .map_err(|e| Error::Config(format!("{}: unusable CA certificate: {e}", file.display())))?;
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(Error::Config(
                    "no system CA certificates were found to check the daemon's certificate; pass --ca-file FILE \
                     (or STEADYTEXT_CA_FILE)"
                        .into(),
                ));
            }
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
