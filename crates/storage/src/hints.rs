//! Hinted-handoff records kept for nodes that were down (Dynamo section 4.6), in the hints
//! keyspace of an [`ObjectStore`]: the key's ring position, the key, then the owner's id; the
//! value is an object record (format and checksum as objects', see [`crate::objects`]).

use crate::objects::{ObjectStore, decode, encode};
use crate::{Result, Space, StorageError};
use dynamokv_core::{Object, ring};

/// The hints-space key of the hint for `owner` under `key`: the key's ring position (8 bytes
/// BE), the key's length (2 bytes BE), the key, then the owner's id.
pub fn hint_key(key: &[u8], owner: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + key.len() + owner.len());
    k.extend_from_slice(&ring::position(key).to_be_bytes());
    k.extend_from_slice(&(key.len() as u16).to_be_bytes());
    k.extend_from_slice(key);
    k.extend_from_slice(owner.as_bytes());
    k
}

/// Splits a hints-space key into key and owner.
pub fn decode_hint_key(hk: &[u8]) -> Option<(&[u8], &str)> {
    let rest = hk.get(8..)?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    let key = rest.get(..len)?;
    let owner = std::str::from_utf8(rest.get(len..)?).ok()?;
    Some((key, owner))
}

fn decode_hint(hk: &[u8], bytes: &[u8]) -> Result<Object> {
    decode(hk, bytes).map_err(|e| match e {
        StorageError::Corrupt { reason, .. } => StorageError::Corrupt {
            space: Space::Hints,
            reason,
        },
        other => other,
    })
}

impl ObjectStore {
    /// Merges `incoming` into the hint for `owner` under `key`.
    pub fn put_hint(&self, owner: &str, key: &[u8], incoming: &Object) -> Result<()> {
        let _guard = self.lock(key);
        let hk = hint_key(key, owner);
        let read = self
            .engine()
            .get(Space::Hints, &hk)
            .and_then(|b| b.map(|b| decode_hint(&hk, &b)).transpose());
        let current = self.noticed(read, key)?.unwrap_or_default();
        let merged = current.merge(incoming);
        self.engine().put(Space::Hints, &hk, &encode(&hk, &merged))
    }

    /// Hints stored after `after` (exclusive), up to `limit`.
    pub fn scan_hints(
        &self,
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> Result<Vec<dynamokv_core::store::Hint>> {
        let start = after.map(|(k, o)| hint_key(k, o));
        let from = match &start {
            Some(s) => std::ops::Bound::Excluded(s.as_slice()),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        let page = self
            .engine()
            .scan(Space::Hints, from, std::ops::Bound::Unbounded, limit);
        for (hk, v) in self.noticed(page, b"")? {
            let Some((key, owner)) = decode_hint_key(&hk) else {
                tracing::warn!("skipping a malformed hint key");
                continue;
            };
            out.push(dynamokv_core::store::Hint {
                owner: owner.to_owned(),
                key: key.to_vec(),
                object: self.noticed(decode_hint(&hk, &v), key)?,
            });
        }
        Ok(out)
    }

    /// Every hint for `key`.
    pub fn hints_for_key(&self, key: &[u8]) -> Result<Vec<dynamokv_core::store::Hint>> {
        let mut prefix = ring::position(key).to_be_bytes().to_vec();
        prefix.extend_from_slice(&(key.len() as u16).to_be_bytes());
        prefix.extend_from_slice(key);
        // Every hint for the key sorts in [prefix, prefix + 0xFF..): bound the scan there, so
        // a read never walks past its key (nor over other keys' deleted hints).
        let mut upper = prefix.clone();
        upper.extend_from_slice(&[0xFF; 8]);
        let mut out = Vec::new();
        let page = self.engine().scan(
            Space::Hints,
            std::ops::Bound::Included(prefix.as_slice()),
            std::ops::Bound::Excluded(upper.as_slice()),
            1024,
        );
        for (hk, v) in self.noticed(page, key)? {
            if !hk.starts_with(&prefix) {
                break;
            }
            if let Some((k, owner)) = decode_hint_key(&hk)
                && k == key
            {
                out.push(dynamokv_core::store::Hint {
                    owner: owner.to_owned(),
                    key: key.to_vec(),
                    object: self.noticed(decode_hint(&hk, &v), key)?,
                });
            }
        }
        Ok(out)
    }

    /// Removes the hint if `delivered` covers it.
    pub fn remove_hint(&self, owner: &str, key: &[u8], delivered: &Object) -> Result<bool> {
        let _guard = self.lock(key);
        let hk = hint_key(key, owner);
        let read = self
            .engine()
            .get(Space::Hints, &hk)
            .and_then(|b| b.map(|b| decode_hint(&hk, &b)).transpose());
        let Some(current) = self.noticed(read, key)? else {
            return Ok(false);
        };
        if delivered.contains(&current) {
            self.engine().delete(Space::Hints, &hk)?;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// Hints pending per owner (a full scan of the hints space).
    pub fn hint_counts(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let mut counts = std::collections::BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let from = match &after {
                Some(a) => std::ops::Bound::Excluded(a.as_slice()),
                None => std::ops::Bound::Unbounded,
            };
            let page = self
                .engine()
                .scan(Space::Hints, from, std::ops::Bound::Unbounded, 4096)?;
            let Some((last, _)) = page.last() else {
                return Ok(counts);
            };
            for (hk, _) in &page {
                if let Some((_, owner)) = decode_hint_key(hk) {
                    *counts.entry(owner.to_owned()).or_insert(0) += 1;
                }
            }
            after = Some(last.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryEngine;
    use dynamokv_core::{ActorId, VersionVector};
    use std::sync::Arc;

    #[test]
    fn hints_merge_scan_and_remove_only_when_delivered() {
        let store = ObjectStore::new(Arc::new(MemoryEngine::new()));
        let a = Object::new().update(ActorId(1), &VersionVector::new(), Some(b"a".to_vec()), 1);
        let b = Object::new().update(ActorId(2), &VersionVector::new(), Some(b"b".to_vec()), 2);
        store.put_hint("n2", b"k", &a).unwrap();
        store.put_hint("n2", b"k", &b).unwrap();
        store.put_hint("n3", b"k", &a).unwrap();
        store.put_hint("n2", b"other", &a).unwrap();
        let for_k = store.hints_for_key(b"k").unwrap();
        assert_eq!(for_k.len(), 2);
        assert_eq!(
            for_k.iter().find(|h| h.owner == "n2").unwrap().object,
            a.merge(&b)
        );
        assert_eq!(
            store.hint_counts().unwrap(),
            [("n2".to_owned(), 2), ("n3".to_owned(), 1)].into()
        );
        let page = store.scan_hints(None, 2).unwrap();
        assert_eq!(page.len(), 2);
        let last = page.last().unwrap();
        let rest = store
            .scan_hints(Some((&last.key, &last.owner)), 10)
            .unwrap();
        assert_eq!(rest.len(), 1, "three hints in all");
        // Delivering only part of what is hinted keeps the hint.
        assert!(!store.remove_hint("n2", b"k", &a).unwrap());
        assert!(store.remove_hint("n2", b"k", &a.merge(&b)).unwrap());
        assert_eq!(store.hints_for_key(b"k").unwrap().len(), 1);
        assert_eq!(
            decode_hint_key(&hint_key(b"xy", "n9")),
            Some((&b"xy"[..], "n9"))
        );
        assert_eq!(decode_hint_key(b"short"), None);
    }
}
