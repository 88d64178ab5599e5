//! TLS termination with BoringSSL: certificates that can be swapped on SIGHUP, ALPN for
//! HTTP/2, a minimum protocol version, and a clear answer to plain HTTP sent to a TLS port.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{PreTlsProcess, TlsAccept};
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::tls::ext;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::SslRef as TlsRef;
use pingora::tls::ssl::SslVersion;
use pingora::tls::x509::X509;
use sluice_conf::Tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate or key that cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("TLS file {path} holds no valid PEM {what}: {detail}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("the key {key} does not match the certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// A loaded certificate chain and its key.
struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
}

/// The certificate of one TLS listener, read from its files and replaceable at run time.
pub struct Certificate {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<Identity>,
}

impl Certificate {
    /// Read and check the files: both readable, valid PEM, and the key matching the leaf.
    pub fn load(tls: &Tls) -> Result<Arc<Self>, TlsError> {
        let identity = read_identity(&tls.cert, &tls.key)?;
        Ok(Arc::new(Certificate {
            cert_path: tls.cert.clone(),
            key_path: tls.key.clone(),
            current: ArcSwap::from_pointee(identity),
        }))
    }

    /// Read the files again; on error the certificate in use is kept.
    pub fn reload(&self) -> Result<(), TlsError> {
        let identity = read_identity(&self.cert_path, &self.key_path)?;
        self.current.store(Arc::new(identity));
        Ok(())
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Pingora listener settings serving this certificate.
    pub fn settings(self: &Arc<Self>, tls: &Tls) -> Result<TlsSettings, TlsError> {
        let mut settings = TlsSettings::with_callbacks(Box::new(CertificateCallback(self.clone())))
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let min = if tls.min_version == "1.3" {
            SslVersion::TLS1_3
        } else {
            SslVersion::TLS1_2
        };
        settings
            .set_min_proto_version(Some(min))
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        if tls.http2 {
            settings.enable_h2();
        }
        Ok(settings)
    }
}

fn read_identity(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let chain = X509::stack_from_pem(&read(cert_path)?).map_err(|e| TlsError::Parse {
        path: cert_path.to_path_buf(),
        what: "certificate",
        detail: e.to_string(),
    })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::Parse {
            path: cert_path.to_path_buf(),
            what: "certificate",
            detail: "the file is empty".into(),
        });
    };
    let key = PKey::private_key_from_pem(&read(key_path)?).map_err(|e| TlsError::Parse {
        path: key_path.to_path_buf(),
        what: "private key",
        detail: e.to_string(),
    })?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(TlsError::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
        });
    }
    Ok(Identity { chain, key })
}

/// Hands the current certificate to each handshake.
struct CertificateCallback(Arc<Certificate>);

#[async_trait]
impl TlsAccept for CertificateCallback {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let identity = self.0.current.load();
        let Some((leaf, intermediates)) = identity.chain.split_first() else {
            return;
        };
        let result = ext::ssl_use_certificate(ssl, leaf)
            .and_then(|()| ext::ssl_use_private_key(ssl, &identity.key))
            .and_then(|()| {
                intermediates
                    .iter()
                    .try_for_each(|c| ext::ssl_add_chain_cert(ssl, c))
            });
        if let Err(e) = result {
            tracing::error!(
                "cannot use the TLS certificate {}: {e}",
                self.0.cert_path.display()
            );
        }
    }
}

/// Answers plain HTTP on a TLS port with a 400 that says to use https, instead of a silent
/// handshake failure. TLS connections pass untouched.
pub struct PlainHttpRefusal;

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

#[async_trait]
impl PreTlsProcess for PlainHttpRefusal {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let mut first = [0u8; 1];
        let read = stream.read(&mut first).await.map_err(|e| {
            pingora::Error::because(pingora::ErrorType::ReadError, "reading the first byte", e)
        })?;
        if read == 0 || first[0] == TLS_HANDSHAKE {
            stream.rewind(&first[..read]);
            return Ok(());
        }
        let body = "This port speaks HTTPS only: use https:// in the URL.\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.flush().await;
        pingora::Error::e_explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "plain HTTP on a TLS port",
        )
    }
}
