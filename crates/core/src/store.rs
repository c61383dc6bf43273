//! The node state machine's view of local storage.
//!
//! `core` does no IO; it reaches the node's objects through this trait, which
//! `dynamokv-storage`'s `ObjectStore` implements over any engine.

use crate::version::Object;

/// A storage failure, as text (the core only reports it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

/// Versioned objects by key.
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
}
