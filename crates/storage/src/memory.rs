//! The in-memory engine: one `BTreeMap` per space behind a mutex. For tests and the simulator.

use crate::{BatchOp, Engine, Entry, Result, Salvage, Space, WriteBatch};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// An engine that keeps everything in memory and loses it when dropped.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    spaces: Mutex<[Map; 4]>,
    lost: std::sync::atomic::AtomicBool,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Map; 4]> {
        // A panic while holding the lock cannot leave a map half-written (each op is one
        // BTreeMap call), so a poisoned lock is safe to keep using.
        self.spaces.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock()[space as usize].get(key).cloned())
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut spaces = self.lock();
        for op in batch.ops {
            match op {
                BatchOp::Put { space, key, value } => {
                    spaces[space as usize].insert(key, value);
                }
                BatchOp::Delete { space, key } => {
                    spaces[space as usize].remove(&key);
                }
            }
        }
        Ok(())
    }

    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>> {
        // BTreeMap::range panics on inverted or doubly-excluded equal bounds; such ranges are empty.
        let empty = match (start, end) {
            (Bound::Included(s), Bound::Included(e)) => s > e,
            (Bound::Included(s) | Bound::Excluded(s), Bound::Excluded(e))
            | (Bound::Excluded(s), Bound::Included(e)) => s >= e,
            _ => false,
        };
        if empty {
            return Ok(Vec::new());
        }
        Ok(self.lock()[space as usize]
            .range::<[u8], _>((start, end))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Nothing in memory is unreadable: drops what `keep` refuses, in place.
    fn salvage(&self, space: Space, keep: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<Salvage> {
        let mut spaces = self.lock();
        let map = &mut spaces[space as usize];
        let before = map.len() as u64;
        map.retain(|k, v| keep(k, v));
        let kept = map.len() as u64;
        let report = Salvage {
            kept,
            dropped: before - kept,
            ..Salvage::default()
        };
        if space == Space::Objects && report.lost_any() {
            self.lost.store(true, std::sync::atomic::Ordering::Release);
        }
        Ok(report)
    }

    fn lost_data(&self) -> Result<bool> {
        Ok(self.lost.load(std::sync::atomic::Ordering::Acquire))
    }

    fn forget_lost_data(&self) -> Result<()> {
        self.lost.store(false, std::sync::atomic::Ordering::Release);
        Ok(())
    }
}
