//! Salvage of a damaged keyspace of the disk engine ([`crate::Engine::salvage`]).
//!
//! An LSM tree cannot mend a block that fails its checksum: a point write shadows the damaged
//! record for reads of that key, but every range scan over the block (Merkle trees, handoff,
//! listing) and every compaction that takes its table in still meets it - and a compaction that
//! fails stops the engine taking writes. So a damaged keyspace is rewritten: every record that
//! reads back (and that the caller's check accepts) is copied into a fresh keyspace, the next
//! generation of the space; unreadable stretches are stepped over; then the new generation
//! becomes current and the old one, damaged tables and all, is deleted.
//!
//! - Stepping over damage: the keys of the objects and hints spaces begin with an 8-byte ring
//!   position. After the last key read, positions are probed (doubling the step, then halving
//!   back) for the first from which the keyspace reads again; the keys in between are lost.
//! - Crash safety: the copy is made durable first; then one batch, fsynced, records the new
//!   generation and (if anything was dropped) that data was lost. A crash before it leaves the
//!   old generation current and the partial copy is deleted at the next open; a crash after it
//!   leaves the old generation to be deleted at the next open.
//! - Writes to the space are refused while the copy runs ([`crate::StorageError::Salvaging`]);
//!   the node's coordinators send them to other replicas meanwhile, as for a full disk.

use crate::keyspaces::{
    Keyspaces, LOST_DATA, generation_key, keyspace_name, open_keyspace, space_err,
};
use crate::{Result, Salvage, Space, StorageError};
use fjall::{Keyspace, PersistMode};
use std::ops::Bound;
use std::sync::atomic::Ordering;

/// Records copied per batch.
const COPY_BATCH: usize = 1000;

/// The salvage of `space` (see the module documentation).
pub(crate) fn salvage(
    inner: &Keyspaces,
    space: Space,
    keep: &dyn Fn(&[u8], &[u8]) -> bool,
) -> Result<Salvage> {
    if space == Space::Meta {
        return Err(StorageError::Engine(
            "the meta space cannot be salvaged".into(),
        ));
    }
    let started = std::time::Instant::now();
    let _one = inner.salvage_one.lock().unwrap_or_else(|p| p.into_inner());
    {
        // Waits for the writes under way; those after it see the flag.
        let _gate = inner.gate.write().unwrap_or_else(|p| p.into_inner());
        inner.salvaging[space as usize].store(true, Ordering::Release);
    }
    tracing::warn!(
        space = space.name(),
        "salvaging: copying every readable record"
    );
    let result = copy_and_swap(inner, space, keep);
    inner.salvaging[space as usize].store(false, Ordering::Release);
    let mut report = result?;
    report.took_ms = started.elapsed().as_millis() as u64;
    report.ended_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tracing::warn!(
        space = space.name(),
        kept = report.kept,
        dropped = report.dropped,
        unreadable = report.unreadable,
        took_ms = report.took_ms,
        "salvage done"
    );
    Ok(report)
}

fn copy_and_swap(
    inner: &Keyspaces,
    space: Space,
    keep: &dyn Fn(&[u8], &[u8]) -> bool,
) -> Result<Salvage> {
    let err = |e| space_err(space, e);
    let old = inner.get(space);
    let generation = inner.generations[space as usize].load(Ordering::Acquire) + 1;
    let new = open_keyspace(&inner.db, &keyspace_name(space, generation))?;
    let mut report = Salvage::default();
    let mut from: Bound<Vec<u8>> = Bound::Unbounded;
    let mut batch = inner.db.batch().durability(None);
    let mut in_batch = 0;
    loop {
        let mut floor = match &from {
            Bound::Included(k) => position(k),
            _ => 0,
        };
        let mut damaged = false;
        for guard in old.range::<Vec<u8>, _>((from.clone(), Bound::Unbounded)) {
            let (k, v) = match guard.into_inner().map_err(err) {
                Ok(kv) => kv,
                Err(StorageError::Corrupt { .. }) => {
                    damaged = true;
                    break;
                }
                Err(other) => return Err(other),
            };
            floor = position(&k);
            if keep(&k, &v) {
                batch.insert(&new, k, v);
                report.kept += 1;
                in_batch += 1;
                if in_batch >= COPY_BATCH {
                    batch.commit().map_err(err)?;
                    batch = inner.db.batch().durability(None);
                    in_batch = 0;
                }
            } else {
                report.dropped += 1;
            }
        }
        if !damaged {
            break;
        }
        report.unreadable += 1;
        match next_readable(&old, floor) {
            Some(p) => from = Bound::Included(p.to_be_bytes().to_vec()),
            None => break,
        }
    }
    batch.commit().map_err(err)?;
    // The copy on disk first; then, in one fsynced batch, the switch to it.
    inner.db.persist(PersistMode::SyncAll).map_err(err)?;
    let meta = inner.get(Space::Meta);
    let mut switch = inner.db.batch().durability(Some(PersistMode::SyncAll));
    switch.insert(&meta, generation_key(space), generation.to_be_bytes());
    if space == Space::Objects && report.lost_any() {
        switch.insert(&meta, LOST_DATA, [1u8]);
    }
    switch.commit().map_err(err)?;
    *inner.handles[space as usize]
        .write()
        .unwrap_or_else(|p| p.into_inner()) = new;
    inner.generations[space as usize].store(generation, Ordering::Release);
    if let Err(e) = inner.db.delete_keyspace(old) {
        // Deleted at the next open instead.
        tracing::warn!(error = %e, "could not delete the salvaged keyspace's old generation");
    }
    Ok(report)
}

/// The ring position a key begins with (zero-padded if shorter than 8 bytes).
fn position(key: &[u8]) -> u64 {
    let mut p = [0u8; 8];
    let n = key.len().min(8);
    p[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(p)
}

/// Whether `ks` reads from position `p` on (its first record there, or its end).
fn readable_from(ks: &Keyspace, p: u64) -> bool {
    let start = p.to_be_bytes();
    match ks
        .range::<&[u8], _>((Bound::Included(&start[..]), Bound::Unbounded))
        .next()
    {
        None => true,
        Some(guard) => guard.into_inner().is_ok(),
    }
}

/// The first position after `floor` from which `ks` reads again, or `None` if it never does.
fn next_readable(ks: &Keyspace, floor: u64) -> Option<u64> {
    let mut step = 1u64;
    let found = loop {
        let p = floor.saturating_add(step);
        if readable_from(ks, p) {
            break p;
        }
        if p == u64::MAX {
            return None;
        }
        step = step.saturating_mul(2);
    };
    // The boundary lies in (floor + step / 2, found]: halve back to it.
    let (mut lo, mut hi) = (floor.saturating_add(step / 2), found);
    if step == 1 {
        lo = floor;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if readable_from(ks, mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskEngine, Engine, SyncPolicy};

    fn files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for f in std::fs::read_dir(dir).unwrap().flatten() {
            let p = f.path();
            if p.is_dir() {
                out.extend(files(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    fn key(i: u32) -> Vec<u8> {
        // Spread like ring positions.
        let mut k = (u64::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            .to_be_bytes()
            .to_vec();
        k.extend_from_slice(format!("key{i}").as_bytes());
        k
    }

    /// Writes enough records to fill table files, flips bytes in the middle of the largest
    /// one, and salvages: every record that still reads is kept, reads and scans work again,
    /// the loss is remembered across a reopen, and writes go on.
    #[test]
    fn salvage_steps_over_damaged_blocks_and_remembers_the_loss() {
        let dir = tempfile::tempdir().unwrap();
        let n = 200_000u32;
        {
            let e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
            for i in 0..n {
                e.put(Space::Objects, &key(i), &[7u8; 90]).unwrap();
            }
        }
        let table = files(dir.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("tables"))
            .max_by_key(|p| std::fs::metadata(p).unwrap().len())
            .expect("a table file");
        let mut bytes = std::fs::read(&table).unwrap();
        let len = bytes.len();
        for at in [len / 3, len / 2] {
            bytes[at] ^= 0xFF;
        }
        std::fs::write(&table, bytes).unwrap();

        let e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
        let bad = (0..n)
            .filter(|i| {
                matches!(
                    e.get(Space::Objects, &key(*i)),
                    Err(StorageError::Corrupt { .. })
                )
            })
            .count();
        assert!(bad > 0, "the flipped bytes are met");
        assert!(!e.lost_data().unwrap());
        let report = e.salvage(Space::Objects, &|_, _| true).unwrap();
        assert!(report.unreadable >= 1, "{report:?}");
        assert!(
            report.kept >= u64::from(n) - bad as u64 - 2000,
            "{report:?}"
        );
        assert!(report.kept < u64::from(n), "{report:?}");
        assert!(e.lost_data().unwrap());
        let mut scanned = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let page = e
                .scan(Space::Objects, from, Bound::Unbounded, 5000)
                .unwrap();
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            scanned += page.len();
        }
        assert_eq!(scanned as u64, report.kept);
        for i in 0..n {
            assert!(e.get(Space::Objects, &key(i)).is_ok(), "key {i} reads");
        }
        e.put(Space::Objects, b"after", b"v").unwrap();
        drop(e);
        let e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
        assert!(e.lost_data().unwrap(), "the loss survives a reopen");
        assert_eq!(
            e.get(Space::Objects, b"after").unwrap(),
            Some(b"v".to_vec())
        );
        e.forget_lost_data().unwrap();
        assert!(!e.lost_data().unwrap());
    }

    /// A salvage with nothing damaged drops what the check refuses and nothing else, and
    /// writes are refused only while it runs.
    #[test]
    fn salvage_drops_what_the_check_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
        for i in 0..1000u32 {
            e.put(
                Space::Objects,
                &key(i),
                if i % 100 == 0 { b"bad" } else { b"ok" },
            )
            .unwrap();
        }
        e.put(Space::Hints, b"h", b"kept").unwrap();
        let report = e.salvage(Space::Objects, &|_, v| v == b"ok").unwrap();
        assert_eq!(
            (report.kept, report.dropped, report.unreadable),
            (990, 10, 0)
        );
        assert!(e.lost_data().unwrap());
        assert_eq!(e.get(Space::Objects, &key(100)).unwrap(), None);
        assert_eq!(
            e.get(Space::Objects, &key(101)).unwrap(),
            Some(b"ok".to_vec())
        );
        assert_eq!(e.get(Space::Hints, b"h").unwrap(), Some(b"kept".to_vec()));
        e.put(Space::Objects, &key(100), b"ok").unwrap();
        // A second salvage moves to the next generation.
        let again = e.salvage(Space::Objects, &|_, _| true).unwrap();
        assert_eq!(again.kept, 991);
        drop(e);
        let e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
        assert_eq!(
            e.get(Space::Objects, &key(100)).unwrap(),
            Some(b"ok".to_vec())
        );
    }
}
