//! dynamokv-storage: where a node keeps its bytes.
//!
//! - [`Engine`]: a narrow trait - get, atomic batch write, ordered range scan, flush - over three
//!   keyspaces ([`Space`]): objects, hints, and node metadata. Every implementation passes one
//!   shared test suite (`suite` in this crate's tests).
//! - [`DiskEngine`]: the embedded on-disk engine, on fjall (a pure-Rust LSM tree), with a
//!   configurable [`SyncPolicy`].
//! - [`MemoryEngine`]: an in-memory engine for tests and the simulator.
//! - [`ObjectStore`]: versioned objects over any engine, keyed by ring position then key, so one
//!   arc of the ring is one contiguous scan.

mod damage;
mod disk;
mod hints;
mod keyspaces;
mod memory;
mod objects;
mod salvage;
#[cfg(test)]
mod suite;

pub use damage::DamageReport;
pub use disk::{DEFAULT_MIN_FREE_BYTES, DiskEngine, DiskOptions};
pub use memory::MemoryEngine;
pub use objects::{ObjectStore, decode_storage_key, storage_key, stored_bytes};

use std::ops::Bound;
use std::time::Duration;

/// The keyspaces of a node. Each is an independent ordered map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// Versioned objects, keyed by ring position then key.
    Objects,
    /// Hinted-handoff records kept for nodes that were down.
    Hints,
    /// Node metadata: identity, membership history, secrets.
    Meta,
    /// The keys holding a live value, in key order (listing): one empty record per key, kept
    /// with its object in the same batch.
    Index,
}

impl Space {
    /// Every space, in a fixed order.
    pub const ALL: [Space; 4] = [Space::Objects, Space::Hints, Space::Meta, Space::Index];

    /// The space's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Objects => "objects",
            Space::Hints => "hints",
            Space::Meta => "meta",
            Space::Index => "index",
        }
    }
}

/// When written data is forced to stable storage (fsync).
///
/// Every write reaches the operating system before it is acknowledged, so a crash of the
/// process alone (`kill -9`) loses nothing under any policy; the policy decides what survives a
/// power loss or kernel crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync before every write is acknowledged. Slowest, nothing acknowledged is ever lost.
    Always,
    /// fsync in the background every interval: at most one interval of writes is at risk.
    Periodic(Duration),
    /// Never fsync explicitly; the operating system writes back when it likes.
    Never,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Periodic(Duration::from_millis(100))
    }
}

/// A storage failure. Not retryable unless the cause (disk full, permissions) is fixed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The underlying engine failed (IO error, lock held by another process, ...).
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The data directory's filesystem has less free space than the reserve: writes of data
    /// are refused (before they reach the engine, so it never meets a full disk) until space
    /// returns. Reads go on.
    #[error(
        "the data directory's filesystem has {} MiB free, under the reserve of {} MiB: writes are refused until space is freed (--min-free-disk-mb)",
        .free_bytes >> 20, .reserve_bytes >> 20
    )]
    Full {
        /// Free bytes when the write was refused.
        free_bytes: u64,
        /// The reserve (`--min-free-disk-mb`).
        reserve_bytes: u64,
    },
    /// The keyspace is being salvaged ([`Engine::salvage`]): its writes are refused until
    /// the salvage ends. Reads go on.
    #[error(
        "this node is salvaging its damaged storage: writes of {0:?} are refused until it ends (seconds to minutes); the other replicas take them"
    )]
    Salvaging(Space),
    /// Bytes on disk could not be decoded, or failed a checksum: corruption or a newer format.
    #[error("corrupt record in {space:?}: {reason}")]
    Corrupt {
        /// The keyspace holding the record.
        space: Space,
        /// What was wrong.
        reason: String,
    },
}

/// The free space of a disk engine's filesystem, as its monitor last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct DiskSpace {
    /// Free bytes (for an unprivileged process).
    pub free_bytes: u64,
    /// The reserve: under it, data writes are refused.
    pub reserve_bytes: u64,
    /// Whether data writes are refused now.
    pub refusing_writes: bool,
}

/// What a salvage ([`Engine::salvage`]) kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Salvage {
    /// Records copied into the new generation.
    pub kept: u64,
    /// Records read back but refused by the caller (they failed their checksum).
    pub dropped: u64,
    /// Stretches of keys that could not be read at all (blocks failing the engine's
    /// checksums): their records are gone.
    pub unreadable: u64,
    /// How long the salvage took, ms.
    pub took_ms: u64,
    /// When it ended, ms since the Unix epoch.
    pub ended_at_ms: u64,
}

impl Salvage {
    /// Whether anything was lost (dropped or unreadable).
    pub fn lost_any(&self) -> bool {
        self.dropped > 0 || self.unreadable > 0
    }
}

/// Shorthand for storage results.
pub type Result<T> = std::result::Result<T, StorageError>;

/// One operation of a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` to `value` in `space`.
    Put {
        /// Target keyspace.
        space: Space,
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Remove `key` from `space` (no error if absent).
    Delete {
        /// Target keyspace.
        space: Space,
        /// Key bytes.
        key: Vec<u8>,
    },
}

/// Writes applied atomically: after a crash either all or none are visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The operations, applied in order.
    pub ops: Vec<BatchOp>,
}

impl WriteBatch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            space,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a delete.
    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            space,
            key: key.into(),
        });
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A key-value pair returned by a scan.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A node's storage engine: ordered byte maps per [`Space`].
///
/// Kept deliberately narrow so another engine can be added; every implementation must pass the
/// shared suite. Implementations are internally synchronized.
pub trait Engine: Send + Sync + 'static {
    /// The value stored under `key`, if any.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Applies every operation of `batch` atomically, honouring the sync policy.
    fn write(&self, batch: WriteBatch) -> Result<()>;

    /// Up to `limit` entries with keys in `(start, end)`, in ascending key order. Page through
    /// a large range by starting the next call after the last key returned.
    fn scan(
        &self,
        space: Space,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>>;

    /// Forces everything written so far to stable storage.
    fn flush(&self) -> Result<()>;

    /// Turns group commit on or off. While on, [`Engine::write`] may leave its batch in the
    /// engine's journal buffer (readers see it at once) until [`Engine::commit_group`] hands
    /// every such batch to the operating system together: one journal write for many batches
    /// (and, under [`SyncPolicy::Always`], one fsync). The node thread turns it on and commits
    /// before it sends any acknowledgement, so a write still reaches the operating system (or
    /// the disk) before it is acknowledged. Engines without a journal ignore it.
    fn set_group_commit(&self, _on: bool) {}

    /// Hands the batches written since the last call to the operating system (under
    /// [`SyncPolicy::Always`], to stable storage). A no-op without group commit.
    fn commit_group(&self) -> Result<()> {
        Ok(())
    }

    /// The data directory's free space, the reserve under which data writes are refused, and
    /// whether they are refused now; `None` for engines without a disk.
    fn disk_space(&self) -> Option<DiskSpace> {
        None
    }

    /// Rewrites `space` without its damage: every record that can be read and that `keep`
    /// accepts (given the key and the value) goes into a fresh copy of the keyspace, which then
    /// replaces it; the rest - records `keep` refuses, and whatever lies in blocks that cannot
    /// be read - is dropped. Writes to `space` are refused ([`StorageError::Salvaging`]) while
    /// it runs; reads go on from the old copy. When objects were dropped the engine records
    /// that data was lost ([`Engine::lost_data`]) in the same step that makes the new copy
    /// current, so a crash cannot forget it. Safe to crash at any point: the old copy stays
    /// current until the new one is complete.
    fn salvage(&self, space: Space, keep: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<Salvage>;

    /// Whether a salvage dropped data that has not been rebuilt since (see
    /// [`Engine::forget_lost_data`]). Survives restarts.
    fn lost_data(&self) -> Result<bool>;

    /// Records that what salvages dropped was rebuilt (the node synchronised every range).
    fn forget_lost_data(&self) -> Result<()>;

    /// Sets `key` to `value` (a batch of one).
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.put(space, key, value);
        self.write(b)
    }

    /// Removes `key` (a batch of one).
    fn delete(&self, space: Space, key: &[u8]) -> Result<()> {
        let mut b = WriteBatch::new();
        b.delete(space, key);
        self.write(b)
    }
}
