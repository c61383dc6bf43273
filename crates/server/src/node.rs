//! The node: storage, identity and the context codec, and the get/put/delete operations the
//! APIs call. Versioning decisions are [`dynamokv_core::version`]'s; this module only wires them
//! to storage and to the clock.

use crate::config::Config;
use crate::identity::Identity;
use dynamokv_core::{ActorId, ContextCodec, ContextError, Object, VersionVector, limits};
use dynamokv_storage::{DiskEngine, Engine, ObjectStore, StorageError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why an operation failed. Every variant leaves the store as it was.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The key is empty or too long.
    #[error(transparent)]
    BadKey(#[from] limits::KeyError),
    /// The context token is malformed or was not issued for this key by this cluster.
    #[error(transparent)]
    BadContext(#[from] ContextError),
    /// The value is larger than the configured maximum.
    #[error("the value is {size} bytes; this node accepts values up to {max} bytes")]
    ValueTooLarge {
        /// Size sent.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// The storage engine failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Milliseconds since the Unix epoch, from the wall clock (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One dynamokv node's local state.
pub struct Node {
    store: ObjectStore,
    identity: Identity,
    codec: ContextCodec,
    max_value_bytes: usize,
}

impl Node {
    /// Opens the data directory named by `config` and loads the node's identity.
    pub fn open(config: &Config) -> Result<Node, NodeError> {
        let engine: Arc<dyn Engine> =
            Arc::new(DiskEngine::open(&config.data_dir, config.sync_policy())?);
        Self::with_engine(engine, config)
    }

    /// A node over an existing engine (tests use the in-memory engine).
    pub fn with_engine(engine: Arc<dyn Engine>, config: &Config) -> Result<Node, NodeError> {
        let identity = Identity::load(engine.as_ref())?;
        let codec = match &config.cluster_secret {
            Some(s) => ContextCodec::from_passphrase(s),
            None => ContextCodec::new(Identity::generated_secret(engine.as_ref())?),
        };
        Ok(Node {
            store: ObjectStore::new(engine),
            identity,
            codec,
            max_value_bytes: config.max_value_bytes,
        })
    }

    /// The actor issuing this node's dots.
    pub fn actor(&self) -> ActorId {
        self.identity.actor
    }

    /// The identity loaded at start.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The largest value accepted.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// The context token of `obj` read from `key`; `None` when the object has no clock.
    pub fn context_token(&self, key: &[u8], obj: &Object) -> Option<String> {
        (!obj.clock().is_empty()).then(|| self.codec.encode(key, obj.clock()))
    }

    /// Decodes a context token a client sent for `key`.
    pub fn decode_context(&self, key: &[u8], token: &str) -> Result<VersionVector, NodeError> {
        Ok(self.codec.decode(key, token)?)
    }

    /// Checks a key and a value against the limits, without touching storage.
    pub fn check(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), NodeError> {
        limits::check_key(key)?;
        if let Some(v) = value
            && v.len() > self.max_value_bytes
        {
            return Err(NodeError::ValueTooLarge {
                size: v.len(),
                max: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// The stored object for `key` (empty when nothing was ever written).
    pub fn get(&self, key: &[u8]) -> Result<Object, NodeError> {
        limits::check_key(key)?;
        Ok(self.store.get(key)?.unwrap_or_default())
    }

    /// Writes `value` (`None`: a tombstone) with the client's `context`, stamped by this node.
    ///
    /// With no context, a value is a blind write (it becomes a sibling of whatever is there),
    /// and a delete supersedes every version this node holds.
    pub fn write(
        &self,
        key: &[u8],
        value: Option<Vec<u8>>,
        context: Option<VersionVector>,
    ) -> Result<Object, NodeError> {
        self.check(key, value.as_deref())?;
        let now = now_ms();
        let actor = self.identity.actor;
        Ok(self.store.modify(key, |current| {
            let ctx = match (&context, &value) {
                (Some(c), _) => c.clone(),
                (None, Some(_)) => VersionVector::new(),
                (None, None) => current.context(),
            };
            current.update(actor, &ctx, value, now)
        })?)
    }

    /// Marks a clean shutdown and syncs everything to disk.
    pub fn shutdown(&self) -> Result<(), NodeError> {
        Identity::mark_clean_shutdown(self.store.engine().as_ref())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_storage::MemoryEngine;

    fn node() -> Node {
        Node::with_engine(Arc::new(MemoryEngine::new()), &Config::default()).unwrap()
    }

    fn live(o: &Object) -> Vec<Vec<u8>> {
        o.live().filter_map(|s| s.value.clone()).collect()
    }

    #[test]
    fn blind_puts_are_siblings_context_put_reconciles() {
        let n = node();
        n.write(b"k", Some(b"a".to_vec()), None).unwrap();
        let o = n.write(b"k", Some(b"b".to_vec()), None).unwrap();
        assert_eq!(live(&o), vec![b"a".to_vec(), b"b".to_vec()]);
        let o = n
            .write(b"k", Some(b"c".to_vec()), Some(o.context()))
            .unwrap();
        assert_eq!(live(&o), vec![b"c".to_vec()]);
    }

    #[test]
    fn blind_delete_removes_what_the_node_holds() {
        let n = node();
        n.write(b"k", Some(b"a".to_vec()), None).unwrap();
        n.write(b"k", Some(b"b".to_vec()), None).unwrap();
        let o = n.write(b"k", None, None).unwrap();
        assert_eq!(o.live().count(), 0);
        assert_eq!(n.get(b"k").unwrap(), o);
    }

    #[test]
    fn bad_input_changes_nothing() {
        let n = node();
        let before = n.write(b"k", Some(b"a".to_vec()), None).unwrap();
        let big = vec![0u8; n.max_value_bytes() + 1];
        assert!(matches!(
            n.write(b"k", Some(big), None),
            Err(NodeError::ValueTooLarge { .. })
        ));
        assert!(matches!(
            n.write(b"", Some(b"x".to_vec()), None),
            Err(NodeError::BadKey(_))
        ));
        assert!(matches!(
            n.decode_context(b"k", "garbage!"),
            Err(NodeError::BadContext(_))
        ));
        assert_eq!(n.get(b"k").unwrap(), before);
    }
}
