//! The node state machine's view of local storage.
//!
//! `core` does no IO; it reaches the node's objects through this trait, which
//! `dynamokv-storage`'s `ObjectStore` implements over any engine.

use crate::version::Object;

/// A key the index lists, with the deadline after which it holds no value (if any).
pub type Listed = (Vec<u8>, Option<u64>);

/// A storage failure, as text (the core only reports it), and whether it is a full disk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage failed.
    #[error("{0}")]
    Failed(String),
    /// The disk is short of space: writes are refused until space returns; reads go on.
    #[error("{0}")]
    Full(String),
}

/// A replica kept for another node (the hint's owner) while that node was down: hinted
/// handoff (Dynamo section 4.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The node the replica belongs to.
    pub owner: String,
    /// The key.
    pub key: Vec<u8>,
    /// The replica.
    pub object: Object,
}

/// Versioned objects by key, and the hints kept for other nodes.
pub trait LocalStore {
    /// This node's copy of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Object>, StoreError>;

    /// Atomically replaces the copy of `key` (empty when absent) by `f(current)`; returns it.
    fn modify(&self, key: &[u8], f: &mut dyn FnMut(Object) -> Object)
    -> Result<Object, StoreError>;

    /// Merges `incoming` into the copy of `key`; returns the result.
    fn merge(&self, key: &[u8], incoming: &Object) -> Result<Object, StoreError> {
        self.modify(key, &mut |current| current.merge(incoming))
    }

    /// Up to `limit` objects whose ring position is in `[lo, hi]`, in storage order (ring
    /// position, then key), after the key `after` when given (its position must be in the
    /// span). Anti-entropy builds its trees and compares leaves with it.
    fn scan(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Object)>, StoreError>;

    /// Removes `key` if its copy is still exactly `expected`; returns whether it was removed
    /// (tombstone collection).
    fn remove_if(&self, key: &[u8], expected: &Object) -> Result<bool, StoreError>;

    /// Up to `limit` keys holding a value here (tombstones left out), in key order, starting
    /// with `prefix`, after `after` (exclusive) when given, each with the deadline after which
    /// it holds none ([`Object::expires`]; the caller leaves out the expired). Listing reads it.
    fn list_keys(
        &self,
        after: Option<&[u8]>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError>;

    /// Durably merges `incoming` into the hint kept for `owner` under `key`.
    fn put_hint(&self, owner: &str, key: &[u8], incoming: &Object) -> Result<(), StoreError>;

    /// Every hint kept for `key`, whoever owns it.
    fn hints_for_key(&self, key: &[u8]) -> Result<Vec<Hint>, StoreError>;

    /// Up to `limit` hints in storage order, after the hint `(key, owner)` when given.
    fn scan_hints(
        &self,
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<Hint>, StoreError>;

    /// Removes the hint for `owner` under `key` if `delivered` holds everything it holds (no
    /// write arrived since it was sent); returns whether it was removed.
    fn remove_hint(&self, owner: &str, key: &[u8], delivered: &Object) -> Result<bool, StoreError>;
}

impl<T: LocalStore + ?Sized> LocalStore for std::sync::Arc<T> {
    fn get(&self, key: &[u8]) -> Result<Option<Object>, StoreError> {
        (**self).get(key)
    }

    fn modify(
        &self,
        key: &[u8],
        f: &mut dyn FnMut(Object) -> Object,
    ) -> Result<Object, StoreError> {
        (**self).modify(key, f)
    }

    fn scan(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Object)>, StoreError> {
        (**self).scan(lo, hi, after, limit)
    }

    fn remove_if(&self, key: &[u8], expected: &Object) -> Result<bool, StoreError> {
        (**self).remove_if(key, expected)
    }

    fn list_keys(
        &self,
        after: Option<&[u8]>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        (**self).list_keys(after, prefix, limit)
    }

    fn put_hint(&self, owner: &str, key: &[u8], incoming: &Object) -> Result<(), StoreError> {
        (**self).put_hint(owner, key, incoming)
    }

    fn hints_for_key(&self, key: &[u8]) -> Result<Vec<Hint>, StoreError> {
        (**self).hints_for_key(key)
    }

    fn scan_hints(
        &self,
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<Hint>, StoreError> {
        (**self).scan_hints(after, limit)
    }

    fn remove_hint(&self, owner: &str, key: &[u8], delivered: &Object) -> Result<bool, StoreError> {
        (**self).remove_hint(owner, key, delivered)
    }
}
