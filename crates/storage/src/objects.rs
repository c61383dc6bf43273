//! Versioned objects over an [`Engine`].
//!
//! Storage key: the key's ring position ([`dynamokv_core::ring::position`], 8 bytes big-endian)
//! followed by the key bytes, so the objects of one arc of the ring are one contiguous scan in
//! ring order. Stored value: a format byte (1) followed by the postcard encoding of the
//! [`Object`].

use crate::{Engine, Result, Space, StorageError};
use dynamokv_core::{Object, ring};
use std::sync::{Arc, Mutex};

const OBJECT_FORMAT: u8 = 1;
const LOCK_STRIPES: usize = 256;

/// The storage key of `key`: its ring position (big-endian) then the key.
pub fn storage_key(key: &[u8]) -> Vec<u8> {
    let mut sk = Vec::with_capacity(8 + key.len());
    sk.extend_from_slice(&ring::position(key).to_be_bytes());
    sk.extend_from_slice(key);
    sk
}

/// Splits a storage key into ring position and key; `None` if it is shorter than 8 bytes.
pub fn decode_storage_key(sk: &[u8]) -> Option<(u64, &[u8])> {
    let (pos, key) = sk.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*pos), key))
}

fn encode(obj: &Object) -> Vec<u8> {
    let mut out = vec![OBJECT_FORMAT];
    // Serializing an in-memory Object into a Vec cannot fail.
    out.extend(postcard::to_allocvec(obj).unwrap_or_default());
    out
}

fn decode(bytes: &[u8]) -> Result<Object> {
    let corrupt = |reason: String| StorageError::Corrupt {
        space: Space::Objects,
        reason,
    };
    match bytes.split_first() {
        Some((&OBJECT_FORMAT, rest)) => {
            let obj: Object = postcard::from_bytes(rest)
                .map_err(|e| corrupt(format!("undecodable object: {e}")))?;
            obj.validate().map_err(|e| corrupt(e.to_string()))?;
            Ok(obj)
        }
        Some((v, _)) => Err(corrupt(format!("unknown object format {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// Versioned objects stored in the [`Space::Objects`] keyspace of an engine.
///
/// Read-modify-write of one key is serialized by a striped lock, so concurrent writers of the
/// same key never lose each other's siblings.
pub struct ObjectStore {
    engine: Arc<dyn Engine>,
    stripes: Vec<Mutex<()>>,
}

impl ObjectStore {
    /// Objects over `engine`.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// This node's copy of `key`, if it has one.
    pub fn get(&self, key: &[u8]) -> Result<Option<Object>> {
        self.engine
            .get(Space::Objects, &storage_key(key))?
            .map(|b| decode(&b))
            .transpose()
    }

    /// Atomically replaces this node's copy of `key` by `f(current)` (current is empty when
    /// absent) and returns the stored result. `f` must be quick: it runs under the key's lock.
    pub fn modify(&self, key: &[u8], f: impl FnOnce(Object) -> Object) -> Result<Object> {
        let stripe = (ring::position(key) as usize) % LOCK_STRIPES;
        let _guard = self.stripes[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let current = self.get(key)?.unwrap_or_default();
        let new = f(current.clone());
        if new != current {
            self.engine
                .put(Space::Objects, &storage_key(key), &encode(&new))?;
        }
        Ok(new)
    }

    /// Merges `incoming` into this node's copy of `key` (replication, repair, handoff) and
    /// returns the result.
    pub fn merge(&self, key: &[u8], incoming: &Object) -> Result<Object> {
        self.modify(key, |current| current.merge(incoming))
    }
}

impl dynamokv_core::store::LocalStore for ObjectStore {
    fn get(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<Object>, dynamokv_core::store::StoreError> {
        ObjectStore::get(self, key).map_err(|e| dynamokv_core::store::StoreError(e.to_string()))
    }

    fn modify(
        &self,
        key: &[u8],
        f: &mut dyn FnMut(Object) -> Object,
    ) -> std::result::Result<Object, dynamokv_core::store::StoreError> {
        ObjectStore::modify(self, key, f)
            .map_err(|e| dynamokv_core::store::StoreError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryEngine;
    use dynamokv_core::{ActorId, VersionVector};

    #[test]
    fn storage_key_orders_by_ring_position() {
        let mut keys: Vec<Vec<u8>> = (0..100u32).map(|i| i.to_string().into_bytes()).collect();
        keys.sort_by_key(|k| storage_key(k));
        let positions: Vec<u64> = keys.iter().map(|k| ring::position(k)).collect();
        assert!(positions.windows(2).all(|w| w[0] <= w[1]));
        let sk = storage_key(b"abc");
        assert_eq!(
            decode_storage_key(&sk),
            Some((ring::position(b"abc"), &b"abc"[..]))
        );
        assert_eq!(decode_storage_key(b"short"), None);
    }

    #[test]
    fn modify_merge_and_corruption() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let store = ObjectStore::new(engine.clone());
        assert_eq!(store.get(b"k").unwrap(), None);
        let o = store
            .modify(b"k", |cur| {
                cur.update(ActorId(1), &VersionVector::new(), Some(b"v".to_vec()), 1)
            })
            .unwrap();
        assert_eq!(store.get(b"k").unwrap(), Some(o.clone()));
        let other = Object::new().update(ActorId(2), &VersionVector::new(), Some(b"w".to_vec()), 2);
        let merged = store.merge(b"k", &other).unwrap();
        assert_eq!(merged.siblings().len(), 2);
        assert_eq!(store.get(b"k").unwrap(), Some(merged));

        engine
            .put(Space::Objects, &storage_key(b"bad"), &[1, 200, 200])
            .unwrap();
        assert!(matches!(
            store.get(b"bad"),
            Err(StorageError::Corrupt { .. })
        ));
        engine
            .put(Space::Objects, &storage_key(b"v9"), &[9])
            .unwrap();
        assert!(matches!(
            store.get(b"v9"),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
