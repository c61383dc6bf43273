//! Versioned objects over an [`Engine`].
//!
//! Storage key: the key's ring position ([`dynamokv_core::ring::position`], 8 bytes big-endian)
//! followed by the key bytes, so the objects of one arc of the ring are one contiguous scan in
//! ring order. Stored value: a format byte (3), the xxh3-64 checksum of the storage key and the
//! encoding (8 bytes big-endian), then the postcard encoding of the [`Object`]. Formats 1 (no
//! checksum) and 2 (siblings without deadline or kind) are still read.
//!
//! A record that fails its checksum or does not decode, and a read the engine refuses because
//! its own block checksum fails, is corruption: the read fails (never a wrong value), the store
//! counts and logs it and asks for a salvage ([`ObjectStore::salvage`]), which the node runs.

use crate::damage::{Damage, DamageReport};
use crate::{Engine, Result, Space, StorageError, WriteBatch};
use dynamokv_core::{Object, ring};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Objects written before checksums: a format byte, then the postcard encoding.
const FORMAT_PLAIN: u8 = 1;
/// A format byte, an 8-byte checksum of storage key and encoding, then the encoding of
/// siblings without a deadline or a kind.
const FORMAT_CHECKED: u8 = 2;
/// As format 2, each sibling with its deadline and kind.
const FORMAT_STAMPED: u8 = 3;
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

/// The bytes the engine is given for `key`'s object: its storage key and its encoding (before
/// the engine's own framing and compression).
pub fn stored_bytes(key: &[u8], obj: &Object) -> usize {
    let sk = storage_key(key);
    sk.len() + encode(&sk, obj).len()
}

/// The checksum of a record: it covers the storage key too, so a record found under another
/// key (a torn or misplaced write) fails it.
fn checksum(sk: &[u8], encoding: &[u8]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(sk);
    h.update(encoding);
    h.digest()
}

pub(crate) fn encode(sk: &[u8], obj: &Object) -> Vec<u8> {
    // Serializing an in-memory Object into a Vec cannot fail.
    let encoding = postcard::to_allocvec(obj).unwrap_or_default();
    let mut out = Vec::with_capacity(9 + encoding.len());
    out.push(FORMAT_STAMPED);
    out.extend_from_slice(&checksum(sk, &encoding).to_be_bytes());
    out.extend_from_slice(&encoding);
    out
}

/// The encoding after a record's checksum, if the checksum holds.
fn checked<'a>(sk: &[u8], rest: &'a [u8]) -> std::result::Result<&'a [u8], String> {
    let (sum, encoding) = rest
        .split_first_chunk::<8>()
        .ok_or_else(|| "record shorter than its checksum".to_owned())?;
    if u64::from_be_bytes(*sum) != checksum(sk, encoding) {
        return Err("the record fails its checksum".into());
    }
    Ok(encoding)
}

/// The object stored under storage key `sk` as `bytes`, checked.
pub(crate) fn decode(sk: &[u8], bytes: &[u8]) -> Result<Object> {
    let corrupt = |reason: String| StorageError::Corrupt {
        space: Space::Objects,
        reason,
    };
    let checked = |rest| checked(sk, rest).map_err(corrupt);
    let obj = match bytes.split_first() {
        Some((&FORMAT_STAMPED, rest)) => postcard::from_bytes::<Object>(checked(rest)?),
        Some((&FORMAT_CHECKED, rest)) => dynamokv_core::version::decode_legacy(checked(rest)?),
        Some((&FORMAT_PLAIN, rest)) => dynamokv_core::version::decode_legacy(rest),
        Some((v, _)) => return Err(corrupt(format!("unknown object format {v}"))),
        None => return Err(corrupt("empty record".into())),
    }
    .map_err(|e| corrupt(format!("undecodable object: {e}")))?;
    obj.validate().map_err(|e| corrupt(e.to_string()))?;
    Ok(obj)
}

/// Versioned objects stored in the [`Space::Objects`] keyspace of an engine.
///
/// Read-modify-write of one key is serialized by a striped lock, so concurrent writers of the
/// same key never lose each other's siblings.
pub struct ObjectStore {
    engine: Arc<dyn Engine>,
    stripes: Vec<Mutex<()>>,
    /// Testing fault: every object read and write of the node waits this long first, ms.
    fault_delay_ms: AtomicU64,
    damage: Damage,
}

impl ObjectStore {
    /// Objects over `engine`.
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self {
            engine,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            fault_delay_ms: AtomicU64::new(0),
            damage: Damage::default(),
        }
    }

    /// Testing fault (`POST /admin/faults` with `storage_delay_ms`, on a node started with
    /// `--enable-fault-injection`): every read and write of an object through the node waits
    /// `ms` first, as on a slow disk; 0 ends it.
    pub fn set_fault_delay(&self, ms: u64) {
        self.fault_delay_ms.store(ms, Ordering::Relaxed);
    }

    fn fault_delay(&self) {
        let ms = self.fault_delay_ms.load(Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    /// The lock of `key`'s stripe: read-modify-write of one key (object or hint) runs under it.
    pub(crate) fn lock(&self, key: &[u8]) -> std::sync::MutexGuard<'_, ()> {
        let stripe = (ring::position(key) as usize) % LOCK_STRIPES;
        self.stripes[stripe]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// This node's copy of `key`, if it has one.
    /// A record failing its checksum, or a block the engine cannot read, is an error (and
    /// noted as damage), never a value.
    pub fn get(&self, key: &[u8]) -> Result<Option<Object>> {
        let sk = storage_key(key);
        let read = self
            .engine
            .get(Space::Objects, &sk)
            .and_then(|b| b.map(|b| decode(&sk, &b)).transpose());
        self.noticed(read, key)
    }

    /// Notes the corruption `r` met, reading at `key` ([`Damage::note`]).
    pub(crate) fn noticed<T>(&self, r: Result<T>, key: &[u8]) -> Result<T> {
        if let Err(StorageError::Corrupt { reason, .. }) = &r {
            self.damage.note(reason, key);
        }
        r
    }

    /// Corruption found and salvages run.
    pub fn damage(&self) -> DamageReport {
        self.damage.report()
    }

    /// Whether corruption was met since the last salvage began.
    pub fn salvage_due(&self) -> bool {
        self.damage.due()
    }

    /// Asks for a salvage again (the last one failed).
    pub fn mark_salvage_due(&self) {
        self.damage.set_due(true);
    }

    /// Salvages the objects, then the hints: keeps every record that reads back and passes its
    /// checksum, drops the rest (unreadable blocks included) and replaces the engine's copy with
    /// what was kept ([`Engine::salvage`]; writes are refused meanwhile). What was dropped is
    /// gone from this node: the caller rebuilds it from the other replicas, and the engine
    /// remembers that until told otherwise ([`Engine::lost_data`]).
    pub fn salvage(&self) -> Result<crate::Salvage> {
        self.damage.set_due(false);
        let keep = |sk: &[u8], v: &[u8]| decode(sk, v).is_ok();
        let mut report = self.engine.salvage(Space::Objects, &keep)?;
        // Hints are checked the same way (a lost hint's data comes back by anti-entropy
        // between its owner and the other replicas).
        let hints = self.engine.salvage(Space::Hints, &keep)?;
        report.kept += hints.kept;
        report.dropped += hints.dropped;
        report.unreadable += hints.unreadable;
        report.took_ms += hints.took_ms;
        // The index is made again from the objects kept.
        let index = self.engine.salvage(Space::Index, &|_, _| false)?;
        self.engine.delete(Space::Meta, INDEX_BUILT)?;
        self.ensure_index()?;
        report.took_ms += index.took_ms;
        report.ended_at_ms = index.ended_at_ms;
        self.damage.salvaged(&report);
        Ok(report)
    }

    /// Atomically replaces this node's copy of `key` by `f(current)` (current is empty when
    /// absent) and returns the stored result. `f` must be quick: it runs under the key's lock.
    pub fn modify(&self, key: &[u8], f: impl FnOnce(Object) -> Object) -> Result<Object> {
        let _guard = self.lock(key);
        let current = self.get(key)?.unwrap_or_default();
        let new = f(current.clone());
        if new != current {
            let sk = storage_key(key);
            let mut batch = WriteBatch::new();
            batch.put(Space::Objects, sk.clone(), encode(&sk, &new));
            // The index lists the keys holding a value, each with its deadline.
            let entry = index_entry(&new);
            if index_entry(&current) != entry {
                match entry {
                    Some(value) => batch.put(Space::Index, key, value),
                    None => batch.delete(Space::Index, key),
                }
            }
            self.engine.write(batch)?;
        }
        Ok(new)
    }

    /// Up to `limit` keys holding a value here, in key order, that start with `prefix`, after
    /// `after` (exclusive) when given, each with the deadline after which it holds none.
    pub fn list_keys(
        &self,
        after: Option<&[u8]>,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<dynamokv_core::store::Listed>> {
        use std::ops::Bound;
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let upper = prefix_end(prefix);
        let end = upper.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let page = self.engine.scan(Space::Index, start, end, limit);
        Ok(self
            .noticed(page, after.unwrap_or_default())?
            .into_iter()
            .map(|(k, v)| {
                let deadline = v.as_slice().try_into().ok().map(u64::from_be_bytes);
                (k, deadline)
            })
            .collect())
    }

    /// Builds the key index from the objects if this data directory has none yet (one made
    /// before listing existed); returns how many keys it indexed (0 when it had one).
    pub fn ensure_index(&self) -> Result<u64> {
        if self.engine.get(Space::Meta, INDEX_BUILT)?.is_some() {
            return Ok(0);
        }
        let mut indexed = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.scan(0, u64::MAX, after.as_deref(), 4096)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            let mut batch = WriteBatch::new();
            for (key, object) in &page {
                if let Some(value) = index_entry(object) {
                    batch.put(Space::Index, key.clone(), value);
                    indexed += 1;
                }
            }
            self.engine.write(batch)?;
        }
        self.engine.put(Space::Meta, INDEX_BUILT, b"1")?;
        Ok(indexed)
    }

    /// Merges `incoming` into this node's copy of `key` (replication, repair, handoff) and
    /// returns the result.
    pub fn merge(&self, key: &[u8], incoming: &Object) -> Result<Object> {
        self.modify(key, |current| current.merge(incoming))
    }

    /// Up to `limit` objects with ring position in `[lo, hi]`, in storage order, after `after`.
    pub fn scan(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Object)>> {
        use std::ops::Bound;
        let start = match after {
            Some(k) => Bound::Excluded(storage_key(k)),
            None => Bound::Included(lo.to_be_bytes().to_vec()),
        };
        let end = match hi.checked_add(1) {
            Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let page = self.engine.scan(
            Space::Objects,
            start.as_ref().map(Vec::as_slice),
            end.as_ref().map(Vec::as_slice),
            limit,
        );
        let page = self.noticed(page, after.unwrap_or_default())?;
        let mut out = Vec::with_capacity(page.len());
        for (sk, v) in page {
            let Some((_, key)) = decode_storage_key(&sk) else {
                tracing::warn!("skipping a malformed object key");
                continue;
            };
            let object = self.noticed(decode(&sk, &v), key)?;
            out.push((key.to_vec(), object));
        }
        Ok(out)
    }

    /// Removes `key` if its copy is exactly `expected` (checked under the key's lock).
    pub fn remove_if(&self, key: &[u8], expected: &Object) -> Result<bool> {
        let _guard = self.lock(key);
        if self.get(key)?.as_ref() != Some(expected) {
            return Ok(false);
        }
        let mut batch = WriteBatch::new();
        batch.delete(Space::Objects, storage_key(key));
        batch.delete(Space::Index, key);
        self.engine.write(batch)?;
        Ok(true)
    }
}

/// Meta-space key, present once the key index covers every object.
const INDEX_BUILT: &[u8] = b"\xffobjects/index-built";

/// The key index's record for `o`: none when it holds no value (a tombstone only), else the
/// deadline after which it holds none (8 bytes big-endian), or nothing when some value never
/// expires.
fn index_entry(o: &Object) -> Option<Vec<u8>> {
    o.live().next()?;
    Some(o.expires().map_or(Vec::new(), |d| d.to_be_bytes().to_vec()))
}

/// The first key after every key starting with `prefix` (`None`: no such key, the prefix is
/// empty or all 0xFF).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A storage error as the node's core sees it: writes refused for a while (a full disk, a
/// salvage under way) apart from other failures.
fn store_error(e: StorageError) -> dynamokv_core::store::StoreError {
    match e {
        StorageError::Full { .. } | StorageError::Salvaging(_) => {
            dynamokv_core::store::StoreError::Full(e.to_string())
        }
        other => dynamokv_core::store::StoreError::Failed(other.to_string()),
    }
}

impl dynamokv_core::store::LocalStore for ObjectStore {
    fn get(
        &self,
        key: &[u8],
    ) -> std::result::Result<Option<Object>, dynamokv_core::store::StoreError> {
        self.fault_delay();
        ObjectStore::get(self, key).map_err(store_error)
    }

    fn modify(
        &self,
        key: &[u8],
        f: &mut dyn FnMut(Object) -> Object,
    ) -> std::result::Result<Object, dynamokv_core::store::StoreError> {
        self.fault_delay();
        ObjectStore::modify(self, key, f).map_err(store_error)
    }

    fn scan(
        &self,
        lo: u64,
        hi: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> std::result::Result<Vec<(Vec<u8>, Object)>, dynamokv_core::store::StoreError> {
        ObjectStore::scan(self, lo, hi, after, limit).map_err(store_error)
    }

    fn remove_if(
        &self,
        key: &[u8],
        expected: &Object,
    ) -> std::result::Result<bool, dynamokv_core::store::StoreError> {
        ObjectStore::remove_if(self, key, expected).map_err(store_error)
    }

    fn list_keys(
        &self,
        after: Option<&[u8]>,
        prefix: &[u8],
        limit: usize,
    ) -> std::result::Result<Vec<dynamokv_core::store::Listed>, dynamokv_core::store::StoreError>
    {
        ObjectStore::list_keys(self, after, prefix, limit).map_err(store_error)
    }

    fn put_hint(
        &self,
        owner: &str,
        key: &[u8],
        incoming: &Object,
    ) -> std::result::Result<(), dynamokv_core::store::StoreError> {
        ObjectStore::put_hint(self, owner, key, incoming).map_err(store_error)
    }

    fn hints_for_key(
        &self,
        key: &[u8],
    ) -> std::result::Result<Vec<dynamokv_core::store::Hint>, dynamokv_core::store::StoreError>
    {
        ObjectStore::hints_for_key(self, key).map_err(store_error)
    }

    fn scan_hints(
        &self,
        after: Option<(&[u8], &str)>,
        limit: usize,
    ) -> std::result::Result<Vec<dynamokv_core::store::Hint>, dynamokv_core::store::StoreError>
    {
        ObjectStore::scan_hints(self, after, limit).map_err(store_error)
    }

    fn remove_hint(
        &self,
        owner: &str,
        key: &[u8],
        delivered: &Object,
    ) -> std::result::Result<bool, dynamokv_core::store::StoreError> {
        ObjectStore::remove_hint(self, owner, key, delivered).map_err(store_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryEngine;
    use dynamokv_core::{ActorId, VersionVector};

    #[test]
    fn records_of_formats_1_and_2_still_read() {
        #[derive(serde::Serialize)]
        struct Old {
            clock: VersionVector,
            siblings: Vec<(dynamokv_core::Dot, u64, Option<Vec<u8>>)>,
        }
        let o = Object::new().update(ActorId(1), &VersionVector::new(), Some(b"v".to_vec()), 5);
        let old = Old {
            clock: o.clock().clone(),
            siblings: o
                .siblings()
                .iter()
                .map(|s| (s.dot, s.timestamp, s.value.clone()))
                .collect(),
        };
        let encoding = postcard::to_allocvec(&old).unwrap();
        let sk = storage_key(b"k");
        let mut two = vec![FORMAT_CHECKED];
        two.extend(checksum(&sk, &encoding).to_be_bytes());
        two.extend(&encoding);
        assert_eq!(decode(&sk, &two).unwrap(), o);
        let mut one = vec![FORMAT_PLAIN];
        one.extend(&encoding);
        assert_eq!(decode(&sk, &one).unwrap(), o);
        let now = encode(&sk, &o);
        assert_eq!(now[0], FORMAT_STAMPED);
        assert_eq!(decode(&sk, &now).unwrap(), o);
    }

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
    fn scan_pages_a_span_in_ring_order_and_remove_if_checks_the_copy() {
        let store = ObjectStore::new(Arc::new(MemoryEngine::new()));
        let o = Object::new().update(ActorId(1), &VersionVector::new(), Some(b"v".to_vec()), 1);
        let keys: Vec<Vec<u8>> = (0..200u32).map(|i| i.to_string().into_bytes()).collect();
        for k in &keys {
            store.merge(k, &o).unwrap();
        }
        let (lo, hi) = (u64::MAX / 4, u64::MAX / 2);
        let mut expected: Vec<&Vec<u8>> = keys
            .iter()
            .filter(|k| (lo..=hi).contains(&ring::position(k)))
            .collect();
        expected.sort_by_key(|k| storage_key(k));
        let mut got = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = store.scan(lo, hi, after.as_deref(), 7).unwrap();
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            got.extend(page.into_iter().map(|(k, _)| k));
        }
        assert_eq!(got.iter().collect::<Vec<_>>(), expected);
        assert!(!expected.is_empty());
        let all = store.scan(0, u64::MAX, None, 1000).unwrap();
        assert_eq!(all.len(), 200, "the last position is included");

        let other = o.update(ActorId(1), &o.context(), None, 2);
        assert!(
            !store.remove_if(b"1", &other).unwrap(),
            "a different copy stays"
        );
        assert!(store.get(b"1").unwrap().is_some());
        assert!(store.remove_if(b"1", &o).unwrap());
        assert_eq!(store.get(b"1").unwrap(), None);
    }

    #[test]
    fn a_flipped_byte_fails_the_checksum_and_salvage_drops_the_record() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let store = ObjectStore::new(engine.clone());
        for k in [b"a", b"b"] {
            store
                .modify(k, |cur| {
                    cur.update(
                        ActorId(1),
                        &VersionVector::new(),
                        Some(b"value".to_vec()),
                        1,
                    )
                })
                .unwrap();
        }
        let sk = storage_key(b"a");
        let mut bytes = engine.get(Space::Objects, &sk).unwrap().unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        engine.put(Space::Objects, &sk, &bytes).unwrap();
        // The same bytes under another key fail too: the checksum covers the key.
        let good = engine
            .get(Space::Objects, &storage_key(b"b"))
            .unwrap()
            .unwrap();
        engine
            .put(Space::Objects, &storage_key(b"c"), &good)
            .unwrap();
        assert!(matches!(store.get(b"a"), Err(StorageError::Corrupt { .. })));
        assert!(matches!(store.get(b"c"), Err(StorageError::Corrupt { .. })));
        assert!(store.scan(0, u64::MAX, None, 10).is_err());
        assert!(store.salvage_due());
        assert_eq!(store.damage().corrupt_reads, 3);
        let report = store.salvage().unwrap();
        assert_eq!((report.kept, report.dropped), (1, 2));
        assert!(!store.salvage_due());
        assert!(engine.lost_data().unwrap());
        assert_eq!(store.get(b"a").unwrap(), None);
        assert!(store.get(b"b").unwrap().is_some());
        assert_eq!(store.scan(0, u64::MAX, None, 10).unwrap().len(), 1);
    }

    #[test]
    fn the_index_lists_live_keys_in_key_order_by_prefix() {
        let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let store = ObjectStore::new(engine.clone());
        assert_eq!(store.ensure_index().unwrap(), 0);
        let put = |k: &[u8], v: Option<&[u8]>| {
            store
                .modify(k, |cur| {
                    let ctx = cur.clock().clone();
                    cur.update(ActorId(1), &ctx, v.map(<[u8]>::to_vec), 1)
                })
                .unwrap();
        };
        for k in ["b/2", "a/1", "b/1", "c", "b/3"] {
            put(k.as_bytes(), Some(b"v"));
        }
        put(b"b/2", None);
        let list = |after: Option<&[u8]>, prefix: &[u8], limit| {
            store
                .list_keys(after, prefix, limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(list(None, b"", 10), ["a/1", "b/1", "b/3", "c"]);
        assert_eq!(list(None, b"b/", 10), ["b/1", "b/3"]);
        assert_eq!(list(Some(b"b/1"), b"b/", 10), ["b/3"]);
        assert_eq!(list(Some(b"a"), b"b/", 1), ["b/1"]);
        assert_eq!(list(None, b"", 2), ["a/1", "b/1"]);
        put(b"b/2", Some(b"back"));
        assert_eq!(list(None, b"b/", 10), ["b/1", "b/2", "b/3"]);
        // A directory from before the index: built once from the objects.
        for k in ["a/1", "b/1", "b/2", "b/3", "c"] {
            engine.delete(Space::Index, k.as_bytes()).unwrap();
        }
        engine.delete(Space::Meta, INDEX_BUILT).unwrap();
        assert_eq!(store.ensure_index().unwrap(), 5);
        assert_eq!(list(None, b"", 10), ["a/1", "b/1", "b/2", "b/3", "c"]);
        assert_eq!(store.ensure_index().unwrap(), 0);
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
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
