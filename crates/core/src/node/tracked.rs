//! The node's store, seen through a journal of changes: every write to an object, whatever
//! concept made it (a coordinator's write, a replica's, read repair, handoff, anti-entropy,
//! tombstone collection), is recorded with the digests of the version before and after, so
//! the Merkle trees follow every local write from one place.

use crate::merkle::{Digest, digest};
use crate::store::{Hint, LocalStore, StoreError};
use crate::version::Object;
use std::cell::RefCell;

/// One change to a key: the digest of its version before and after (`None`: absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// Its version before.
    pub old: Option<Digest>,
    /// Its version after.
    pub new: Option<Digest>,
    /// Whether it held only tombstones before.
    pub old_dead: bool,
    /// Whether it holds only tombstones after.
    pub new_dead: bool,
    /// When it holds no value after, by expiry alone ([`Object::expires`]).
    pub new_expires: Option<u64>,
}

/// Whether an object holds only tombstones (a deleted key).
pub fn dead(o: &Object) -> bool {
    !o.is_empty() && o.live().next().is_none()
}

fn digest_of(o: &Object) -> Option<Digest> {
    (!o.is_empty()).then(|| digest(o))
}

/// A store whose object writes are journaled until [`Tracked::take_changes`].
#[derive(Debug, Default)]
pub struct Tracked<S> {
    inner: S,
    changes: RefCell<Vec<Change>>,
}

impl<S: LocalStore> Tracked<S> {
    /// Journals the writes to `inner`.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            changes: RefCell::new(Vec::new()),
        }
    }

    /// The store underneath.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The changes since the last call, in order.
    pub fn take_changes(&self) -> Vec<Change> {
        std::mem::take(&mut *self.changes.borrow_mut())
    }

    fn record(&self, key: &[u8], (old, old_dead): (Option<Digest>, bool), new: &Object) {
        let new_digest = digest_of(new);
        if old != new_digest {
            self.changes.borrow_mut().push(Change {
                key: key.to_vec(),
                old,
                new: new_digest,
                old_dead,
                new_dead: dead(new),
                new_expires: new.expires(),
            });
        }
    }
}

impl<S: LocalStore> LocalStore for Tracked<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Object>, StoreError> {
        self.inner.get(key)
    }

    fn modify(
        &self,
        key: &[u8],
        f: &mut dyn FnMut(Object) -> Object,
    ) -> Result<Object, StoreError> {
        let mut old = (None, false);
        let new = self.inner.modify(key, &mut |current| {
            old = (digest_of(&current), dead(&current));
            f(current)
        })?;
        self.record(key, old, &new);
        Ok(new)
    }

    fn scan(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Object)>, StoreError> {
        self.inner.scan(lo, hi, after, limit)
    }

    fn remove_if(&self, key: &[u8], expected: &Object) -> Result<bool, StoreError> {
        let removed = self.inner.remove_if(key, expected)?;
        if removed {
            let old = (digest_of(expected), dead(expected));
            self.record(key, old, &Object::new());
        }
        Ok(removed)
    }

    fn put_hint(&self, owner: &str, key: &[u8], incoming: &Object) -> Result<(), StoreError> {
        self.inner.put_hint(owner, key, incoming)
    }

    fn list_keys(
        &self,
        after: Option<&[u8]>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<crate::store::Listed>, StoreError> {
        self.inner.list_keys(after, prefix, limit)
    }

    fn hints_for_key(&self, key: &[u8]) -> Result<Vec<Hint>, StoreError> {
        self.inner.hints_for_key(key)
    }

    fn scan_hints(
        &self,
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<Hint>, StoreError> {
        self.inner.scan_hints(after, limit)
    }

    fn remove_hint(&self, owner: &str, key: &[u8], delivered: &Object) -> Result<bool, StoreError> {
        self.inner.remove_hint(owner, key, delivered)
    }
}
