//! The replica side: what a node does when a coordinator, a read repair or a returning hint
//! asks it to store or read a key. Every write goes through the one merge
//! ([`crate::version::Object::merge`]) inside the store.

use super::outbox::Outbox;
use crate::limits;
use crate::message::{HandoffMessage, KvMessage, RequestId, WireError};
use crate::store::{LocalStore, StoreError};
use crate::version::Object;

/// The replica side: its limit and counters.
#[derive(Debug)]
pub struct Replica {
    max_value_bytes: usize,
    hints_stored: u64,
    rejected: u64,
}

/// This node's copy of `key` merged with any hints it keeps for it.
pub fn local_read<S: LocalStore>(store: &S, key: &[u8]) -> Result<Option<Object>, StoreError> {
    let own = store.get(key)?;
    let hints = store.hints_for_key(key)?;
    if hints.is_empty() {
        return Ok(own);
    }
    let merged = hints
        .iter()
        .fold(own.unwrap_or_default(), |acc, h| acc.merge(&h.object));
    Ok(Some(merged))
}

/// Checks a key and object a peer sent.
pub fn validate(key: &[u8], object: &Object, max_value_bytes: usize) -> Result<(), WireError> {
    limits::check_key(key).map_err(|e| WireError::Invalid(e.to_string()))?;
    if let Some(len) = object
        .siblings()
        .iter()
        .filter_map(|s| s.value.as_ref().map(Vec::len))
        .find(|len| *len > max_value_bytes)
    {
        return Err(WireError::Invalid(format!(
            "a value of {len} bytes is over this node's limit of {max_value_bytes}"
        )));
    }
    object
        .validate()
        .map_err(|e| WireError::Invalid(e.to_string()))
}

/// Merges an object a peer sent for `key` of `range` (anti-entropy, a handover) with this
/// node's copy, by the one merge: the merged copy and whether it changed anything; `None` when
/// the object is refused (invalid, or outside the range).
pub fn merge_from_peer<S: LocalStore>(
    store: &S,
    range: crate::merkle::Range,
    key: &[u8],
    object: &Object,
    max_value_bytes: usize,
) -> Result<Option<(Object, bool)>, StoreError> {
    if validate(key, object, max_value_bytes).is_err()
        || !range.contains(crate::ring::position(key))
    {
        return Ok(None);
    }
    let mut changed = false;
    let merged = store.modify(key, &mut |current| {
        let merged = current.merge(object);
        changed = merged != current;
        merged
    })?;
    Ok(Some((merged, changed)))
}

fn storage(e: StoreError) -> WireError {
    match e {
        StoreError::Full(m) => WireError::Full(m),
        StoreError::Failed(m) => WireError::Storage(m),
    }
}

impl Replica {
    /// A replica refusing values over `max_value_bytes` from peers too.
    pub fn new(max_value_bytes: usize) -> Self {
        Self {
            max_value_bytes,
            hints_stored: 0,
            rejected: 0,
        }
    }

    /// A coordinator's write: merged into this node's copy, or kept as a hint for `hint` when
    /// this node stands in for it. Answered with an ack.
    #[allow(clippy::too_many_arguments)] // the fields of the message, plus where it goes
    pub fn on_replicate<S: LocalStore>(
        &mut self,
        me: &str,
        store: &S,
        from: &str,
        id: RequestId,
        key: Vec<u8>,
        object: Object,
        hint: Option<String>,
        out: &mut Outbox,
    ) {
        let result = match (validate(&key, &object, self.max_value_bytes), hint) {
            (Err(e), _) => {
                self.rejected += 1;
                Err(e)
            }
            (Ok(()), None) => store.merge(&key, &object).map(drop).map_err(storage),
            (Ok(()), Some(owner)) if owner == me => {
                store.merge(&key, &object).map(drop).map_err(storage)
            }
            (Ok(()), Some(owner)) => match store.put_hint(&owner, &key, &object) {
                Ok(()) => {
                    self.hints_stored += 1;
                    Ok(())
                }
                Err(e) => Err(storage(e)),
            },
        };
        out.send(from, KvMessage::ReplicateAck { id, result });
    }

    /// A coordinator's read: this node's copy (hints included), unless it is rebuilding lost
    /// data.
    #[allow(clippy::too_many_arguments)] // the fields of the message, plus where it goes
    pub fn on_read<S: LocalStore>(
        &mut self,
        store: &S,
        rebuilding: bool,
        from: &str,
        id: RequestId,
        key: Vec<u8>,
        out: &mut Outbox,
    ) {
        let result = match limits::check_key(&key) {
            Err(e) => Err(WireError::Invalid(e.to_string())),
            Ok(()) if rebuilding => Err(WireError::Rebuilding),
            Ok(()) => local_read(store, &key).map_err(storage),
        };
        out.send(from, KvMessage::ReadReply { id, result });
    }

    /// A read repair: merged without an answer.
    pub fn on_repair<S: LocalStore>(&mut self, store: &S, key: Vec<u8>, object: Object) {
        if validate(&key, &object, self.max_value_bytes).is_ok() {
            let _ = store.merge(&key, &object);
        } else {
            self.rejected += 1;
        }
    }

    /// A replica of ours that a fallback kept while we were down: merged, then acknowledged so
    /// the fallback can delete its hint.
    pub fn on_handoff<S: LocalStore>(
        &mut self,
        store: &S,
        from: &str,
        id: RequestId,
        key: Vec<u8>,
        object: Object,
        out: &mut Outbox,
    ) {
        let result = match validate(&key, &object, self.max_value_bytes) {
            Err(e) => {
                self.rejected += 1;
                Err(e)
            }
            Ok(()) => store.merge(&key, &object).map(drop).map_err(storage),
        };
        out.send(from, HandoffMessage::Ack { id, result });
    }

    /// Replicas stored as a fallback, with a hint.
    pub fn hints_stored(&self) -> u64 {
        self.hints_stored
    }

    /// Peer messages refused as invalid.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::version::{ActorId, VersionVector};

    fn obj(value_len: usize) -> Object {
        Object::new().update(
            ActorId(1),
            &VersionVector::new(),
            Some(vec![b'x'; value_len]),
            1,
        )
    }

    #[test]
    fn a_peer_cannot_store_a_value_over_the_limit() {
        assert!(validate(b"k", &obj(100), 100).is_ok());
        let e = validate(b"k", &obj(101), 100).unwrap_err();
        assert!(
            matches!(&e, WireError::Invalid(m) if m.contains("101 bytes")),
            "{e:?}"
        );
        assert!(
            validate(b"", &obj(1), 100).is_err(),
            "and the key rules hold"
        );
    }
}
