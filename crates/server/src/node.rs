//! Opening a node's local state: storage, identity and the context codec.

use crate::config::Config;
use crate::identity::Identity;
use dynamokv_core::ContextCodec;
use dynamokv_storage::{DiskEngine, Engine, ObjectStore, StorageError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why the node's local state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The data directory belongs to another node id.
    #[error(
        "the data directory {dir} belongs to node {stored}, not {configured}: start it with --node-id {stored}, or give {configured} a data directory of its own"
    )]
    WrongNode {
        /// The directory.
        dir: String,
        /// The id it belongs to.
        stored: String,
        /// The id it was started with.
        configured: String,
    },
}

/// Milliseconds since the Unix epoch, from the wall clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A node's local state, opened.
pub struct LocalState {
    /// The engine underneath.
    pub engine: Arc<dyn Engine>,
    /// Versioned objects over it.
    pub store: Arc<ObjectStore>,
    /// Actor and restart facts.
    pub identity: Identity,
    /// The node id in force.
    pub node_id: String,
    /// The context codec (cluster secret).
    pub codec: ContextCodec,
}

impl LocalState {
    /// Opens the data directory named by `config`.
    pub fn open(config: &Config) -> Result<LocalState, NodeError> {
        let engine: Arc<dyn Engine> = Arc::new(DiskEngine::open_with(
            &config.data_dir,
            config.disk_options(),
        )?);
        Self::with_engine(engine, config)
    }

    /// Local state over an existing engine.
    pub fn with_engine(engine: Arc<dyn Engine>, config: &Config) -> Result<LocalState, NodeError> {
        let node_id =
            Identity::node_id(engine.as_ref(), config.node_id.as_deref())?.map_err(|w| {
                NodeError::WrongNode {
                    dir: config.data_dir.display().to_string(),
                    stored: w.stored,
                    configured: w.configured,
                }
            })?;
        let identity = Identity::load(engine.as_ref())?;
        let codec = match &config.cluster_secret {
            Some(s) => ContextCodec::from_passphrase(s),
            None => ContextCodec::new(Identity::generated_secret(engine.as_ref())?),
        };
        let store = Arc::new(ObjectStore::new(engine.clone()));
        let started = std::time::Instant::now();
        let indexed = store.ensure_index()?;
        if indexed > 0 {
            tracing::info!(
                keys = indexed,
                took_ms = started.elapsed().as_millis() as u64,
                "built the key index (listing) of a data directory made before it"
            );
        }
        Ok(LocalState {
            store,
            engine,
            identity,
            node_id,
            codec,
        })
    }

    /// Marks a clean shutdown and syncs.
    pub fn shutdown(&self) -> Result<(), NodeError> {
        Identity::mark_clean_shutdown(self.engine.as_ref())?;
        Ok(())
    }
}
