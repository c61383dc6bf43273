//! TLS for talking to nodes over `https://`: the CA to trust (the cluster CA) and an optional
//! client certificate (for nodes started with `--tls-require-client-cert`). Set once by the
//! program ([`configure`], as the `dynamokv` CLI does from its `--cacert`, `--client-cert` and `--client-cert-key`
//! flags); every client built afterwards uses it.

use crate::ClientError;
use std::path::PathBuf;
use std::sync::OnceLock;

/// Where the client's TLS files are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// PEM certificate(s) to trust besides none: the cluster CA.
    pub ca: Option<PathBuf>,
    /// PEM client certificate to present.
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    pub key: Option<PathBuf>,
}

struct Loaded {
    ca: Option<reqwest::Certificate>,
    identity: Option<reqwest::Identity>,
}

static TLS: OnceLock<Loaded> = OnceLock::new();

fn read(path: &PathBuf, what: &str) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path)
        .map_err(|e| ClientError::Tls(format!("cannot read the {what} {}: {e}", path.display())))
}

/// Loads the files of `tls` for every client built from now on; the error names the file.
/// Only the first call counts.
pub fn configure(tls: &ClientTls) -> Result<(), ClientError> {
    let ca = match &tls.ca {
        None => None,
        Some(path) => Some(
            reqwest::Certificate::from_pem(&read(path, "CA certificate")?).map_err(|e| {
                ClientError::Tls(format!("{} is not a PEM certificate: {e}", path.display()))
            })?,
        ),
    };
    let identity = match (&tls.cert, &tls.key) {
        (None, None) => None,
        (Some(cert), Some(key)) => {
            let mut pem = read(cert, "client certificate")?;
            pem.push(b'\n');
            pem.extend(read(key, "client key")?);
            Some(reqwest::Identity::from_pem(&pem).map_err(|e| {
                ClientError::Tls(format!(
                    "{} and {} are not a PEM certificate and its key: {e}",
                    cert.display(),
                    key.display()
                ))
            })?)
        }
        _ => {
            return Err(ClientError::Tls(
                "a client certificate needs both --client-cert and --client-cert-key".into(),
            ));
        }
    };
    let _ = TLS.set(Loaded { ca, identity });
    Ok(())
}

/// A request builder with the configured TLS applied (rustls; only the configured CA is
/// trusted when one is set, the system's usual roots otherwise are not built in).
pub fn builder() -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder().use_rustls_tls();
    if let Some(t) = TLS.get() {
        if let Some(ca) = &t.ca {
            b = b
                .tls_built_in_root_certs(false)
                .add_root_certificate(ca.clone());
        }
        if let Some(id) = &t.identity {
            b = b.identity(id.clone());
        }
    }
    b
}

/// `http` or `https`, as in `url`: other nodes of a cluster are reached the way the first was.
pub fn scheme_of(url: &str) -> &'static str {
    if url.starts_with("https://") {
        "https"
    } else {
        "http"
    }
}
