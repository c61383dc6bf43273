//! TLS on the node's ports (rustls with the ring provider): optional, configured by a
//! certificate, its key and the cluster CA (`dynamokv admin certs` makes all three).
//!
//! - Peer port: mutual TLS. The acceptor requires a client certificate issued by the cluster
//!   CA and the dialer checks that the acceptor's is too. Nodes dial the addresses they learn
//!   from gossip, so the name in a peer's certificate is not compared with the address: the
//!   chain to the cluster CA is what is checked (and then the cluster-secret handshake runs
//!   inside the TLS session, as without TLS).
//! - HTTP and RESP: server-authenticated TLS (clients check the node's name as usual); with
//!   `require_client_cert`, a client certificate of the cluster CA is required too.
//!
//! A client that speaks plaintext to a TLS port is told so in its own protocol (an HTTP 400,
//! a RESP error) and disconnected; on the peer port it is refused like any bad handshake.

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Where the node's TLS files are (`[tls]` in the config file, or the `--tls-*` flags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// This node's TLS certificate (PEM, issued by the cluster CA; `dynamokv admin certs` makes
    /// one). With --tls-key and --tls-ca, every port speaks TLS: mutual TLS between nodes,
    /// HTTPS and RESP over TLS for clients. Default: off, plaintext.
    #[arg(long = "tls-cert", value_name = "PEM", required = false, requires_all = ["key", "ca"])]
    pub cert: PathBuf,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long = "tls-key", value_name = "PEM", required = false, requires_all = ["cert", "ca"])]
    pub key: PathBuf,
    /// The cluster CA's certificate (PEM): peers must present a certificate it issued.
    #[arg(long = "tls-ca", value_name = "PEM", required = false, requires_all = ["cert", "key"])]
    pub ca: PathBuf,
    /// Require HTTP and RESP clients to present a certificate of the cluster CA too (the
    /// `--tls-require-client-cert` flag sets it).
    #[serde(default)]
    #[arg(skip)]
    pub require_client_cert: bool,
}

/// Anything a connection can be: a plain TCP stream or a TLS session over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection of either kind.
pub type BoxedIo = Box<dyn Io>;

/// The node's TLS set-up, loaded once at start.
#[derive(Clone)]
pub struct Tls {
    peer_acceptor: TlsAcceptor,
    peer_connector: TlsConnector,
    client_acceptor: TlsAcceptor,
    ca_pem: Vec<u8>,
    identity_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What can go wrong loading TLS files or opening a TLS session; each names the file or the
/// step.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        /// Which file it is (certificate, private key, CA certificate).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A file is not the PEM it should be, or holds nothing usable.
    #[error("{} {problem}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The certificate and the key are not a pair.
    #[error("{} and {} do not go together: {source}", cert.display(), key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        source: rustls::Error,
    },
    /// rustls refused a configuration or a peer name.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
    /// A peer spoke plaintext to this TLS peer port.
    #[error("plaintext on a TLS peer port (is --tls-* set on every node?)")]
    Plaintext,
    /// The TLS handshake itself failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn pem_error(path: &Path, problem: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        problem: problem.to_string(),
    }
}

fn certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, format!("is not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error(path, "holds no certificate"));
    }
    Ok(certs)
}

impl Tls {
    /// Reads the files of `cfg` and builds the three configurations; the error names the file
    /// and what is wrong with it.
    pub fn load(cfg: &TlsConfig) -> Result<Tls, TlsError> {
        let cert_pem = read(&cfg.cert, "certificate")?;
        let key_pem = read(&cfg.key, "private key")?;
        let ca_pem = read(&cfg.ca, "CA certificate")?;
        let chain = certs(&cert_pem, &cfg.cert)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| pem_error(&cfg.key, format!("is not a PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca in certs(&ca_pem, &cfg.ca)? {
            roots
                .add(ca)
                .map_err(|e| pem_error(&cfg.ca, format!("is not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let mismatch = |source: rustls::Error| TlsError::Mismatch {
            cert: cfg.cert.clone(),
            key: cfg.key.clone(),
            source,
        };
        let setup = |e: &dyn std::fmt::Display| TlsError::Setup(e.to_string());

        let peers = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| setup(&e))?;
        let mut peer_server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?
            .with_client_cert_verifier(peers)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        peer_server.alpn_protocols = vec![b"dynamokv-peer".to_vec()];

        let server_verifier =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .map_err(|e| setup(&e))?;
        let mut peer_client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterCa(server_verifier)))
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(mismatch)?;
        peer_client.alpn_protocols = vec![b"dynamokv-peer".to_vec()];

        let clients = WebPkiClientVerifier::builder_with_provider(roots, provider());
        let clients = if cfg.require_client_cert {
            clients.build()
        } else {
            clients.allow_unauthenticated().build()
        }
        .map_err(|e| setup(&e))?;
        let client_server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain, key)
            .map_err(mismatch)?;

        let mut identity_pem = cert_pem;
        identity_pem.push(b'\n');
        identity_pem.extend_from_slice(&key_pem);
        Ok(Tls {
            peer_acceptor: TlsAcceptor::from(Arc::new(peer_server)),
            peer_connector: TlsConnector::from(Arc::new(peer_client)),
            client_acceptor: TlsAcceptor::from(Arc::new(client_server)),
            ca_pem,
            identity_pem,
        })
    }

    /// Opens a TLS session to the peer at `addr` over `stream`.
    pub async fn connect_peer(&self, addr: &str, stream: TcpStream) -> Result<BoxedIo, TlsError> {
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // A peer's name is not checked (see the module docs): an address that is no valid
        // name is sent as a fixed one.
        let name = ServerName::try_from(host.to_owned())
            .or_else(|_| ServerName::try_from("dynamokv-peer"))
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let tls = self
            .peer_connector
            .connect(name, stream)
            .await
            .map_err(TlsError::Handshake)?;
        Ok(Box::new(tls))
    }

    /// Accepts a peer's TLS session (its certificate must be of the cluster CA).
    pub async fn accept_peer(&self, stream: TcpStream) -> Result<BoxedIo, TlsError> {
        if !starts_with_tls(&stream).await {
            return Err(TlsError::Plaintext);
        }
        let tls = self
            .peer_acceptor
            .accept(stream)
            .await
            .map_err(TlsError::Handshake)?;
        Ok(Box::new(tls))
    }

    /// Accepts a client's TLS session on the HTTP or RESP port; `Err(stream)` when the client
    /// spoke plaintext (the caller tells it so in its protocol), `Ok(None)` when the handshake
    /// failed or timed out.
    pub async fn accept_client(
        &self,
        stream: TcpStream,
        within: Duration,
    ) -> Result<Option<BoxedIo>, TcpStream> {
        let accepted = tokio::time::timeout(within, async {
            if !starts_with_tls(&stream).await {
                return Err(stream);
            }
            match self.client_acceptor.accept(stream).await {
                Ok(tls) => Ok(Some(Box::new(tls) as BoxedIo)),
                Err(e) => {
                    metrics::counter!("dynamokv_tls_handshakes_failed_total", "port" => "client")
                        .increment(1);
                    tracing::debug!(error = %e, "client TLS handshake failed");
                    Ok(None)
                }
            }
        })
        .await;
        accepted.unwrap_or(Ok(None))
    }

    /// An HTTPS client for this node's own requests to other nodes: trusts the cluster CA and
    /// presents this node's certificate.
    pub fn http_client(&self, timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
        let ca = reqwest::Certificate::from_pem(&self.ca_pem)?;
        let identity = reqwest::Identity::from_pem(&self.identity_pem)?;
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .identity(identity)
            .timeout(timeout)
            .build()
    }
}

/// True when the first byte the client sent opens a TLS handshake record (0x16); false when it
/// sent something else or closed.
async fn starts_with_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16)
}

/// Checks a peer's certificate chain against the cluster CA without comparing names (see the
/// module docs): rustls's verifier checks the chain before the name, so a name mismatch
/// means the chain was good.
#[derive(Debug)]
struct ClusterCa(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ClusterCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}
