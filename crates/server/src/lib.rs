//! dynamokv-server: the node process - storage wiring, identity, configuration and the HTTP API.
//!
//! [`run`] opens the data directory, binds the HTTP listener (printing `listening http=ADDR` on
//! standard output once it is bound, so tools that start nodes on port 0 learn the address),
//! serves until the shutdown future completes, then records a clean shutdown and syncs.

pub mod config;
pub mod http;
pub mod identity;
pub mod node;

pub use config::{Config, ConfigError, SyncMode};
pub use node::{Node, NodeError};

use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node could not open its data directory.
    #[error("cannot open the data directory")]
    Node(#[from] NodeError),
    /// A socket could not be bound or served.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The IO error.
        source: std::io::Error,
    },
}

/// Runs a node until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    config.validate()?;
    let cfg = config.clone();
    let node = tokio::task::spawn_blocking(move || Node::open(&cfg))
        .await
        .map_err(|e| ServerError::Io {
            context: "opening the data directory".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    let node = Arc::new(node);
    if let Some(why) = node.identity().fresh_actor {
        tracing::info!(actor = %node.actor(), reason = why, "new actor id");
    }
    let listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| ServerError::Io {
            context: format!("cannot listen for HTTP on {}", config.http),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Io {
        context: "reading the bound HTTP address".into(),
        source,
    })?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening http={addr}");
        let _ = out.flush();
    }
    tracing::info!(http = %addr, data_dir = %config.data_dir.display(), actor = %node.actor(), "node started");
    axum::serve(listener, http::router(node.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServerError::Io {
            context: "serving HTTP".into(),
            source,
        })?;
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .map_err(|e| ServerError::Io {
            context: "shutting down".into(),
            source: std::io::Error::other(e.to_string()),
        })??;
    tracing::info!("node stopped cleanly");
    Ok(())
}
