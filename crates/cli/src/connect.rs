//! What the operator commands share to reach a node: its URL flag, and a runtime with an HTTP
//! client (TLS flags honoured).

use clap::Args;

/// The node a command talks to.
#[derive(Args, Debug)]
pub struct NodeUrl {
    /// Base URL of a node's HTTP API (for join and leave: the node that joins or leaves).
    #[arg(
        long = "node",
        env = "DYNAMOKV_NODE",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    pub(crate) url: String,
}

impl NodeUrl {
    /// The base URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// A runtime and an HTTP client whose requests give up after `timeout`.
pub(crate) fn runtime_with_timeout(
    timeout: std::time::Duration,
) -> anyhow::Result<(tokio::runtime::Runtime, reqwest::Client)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = dynamokv_client::tls::builder().timeout(timeout).build()?;
    Ok((rt, http))
}
