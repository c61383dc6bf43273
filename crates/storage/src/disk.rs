//! The on-disk engine: fjall, one LSM tree per [`Space`] in one database directory.
//!
//! fjall writes every batch to its journal and hands it to the operating system before
//! returning (so a process crash loses nothing); fsync is ours to schedule, per [`SyncPolicy`]:
//! inline for `Always`, from a background thread for `Periodic`, never for `Never`. A clean
//! shutdown (drop) always syncs.

use crate::keyspaces::{Keyspaces, LOST_DATA, engine_err, space_err};
use crate::{
    BatchOp, DiskSpace, Engine, Entry, Result, Salvage, Space, StorageError, SyncPolicy, WriteBatch,
};
use fjall::{Database, Keyspace, PersistMode};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// The journal's limit: past it, the memtables holding the oldest journal's writes are flushed
/// so the journal can go. fjall's default (512 MiB) doubled the disk a million keys took
/// (docs/bench.md); 64 MiB is fjall's smallest.
pub const JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Threads for flushes and compactions (fjall's default is one per core, at most 4). On two
/// cores two long compactions left no thread to flush a full memtable, and writes were held
/// back until one finished; with 4, loading 2 M keys ran at 38 800 keys/s instead of
/// 30 600-32 800 (docs/bench.md).
pub const WORKER_THREADS: usize = 4;

/// The block cache unless told otherwise (`--cache-mb`).
pub const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The free space under which data writes are refused unless told otherwise
/// (`--min-free-disk-mb`): room for a memtable flush and a compaction's first segments, so the
/// engine itself never meets a full disk.
pub const DEFAULT_MIN_FREE_BYTES: u64 = 256 * 1024 * 1024;

/// How often the free space of the data directory's filesystem is looked at.
const SPACE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// How the disk engine is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskOptions {
    /// When to fsync.
    pub sync: SyncPolicy,
    /// Memory for cached data, index and filter blocks, in bytes: more keeps more of a large
    /// data set's blocks in memory, for faster reads and read-before-write.
    pub cache_bytes: u64,
    /// Under this much free space on the data directory's filesystem, writes of objects and
    /// hints are refused ([`StorageError::Full`]) until space returns; 0 turns it off.
    pub min_free_bytes: u64,
}

impl DiskOptions {
    /// The default options with sync policy `sync`.
    pub fn new(sync: SyncPolicy) -> Self {
        Self {
            sync,
            cache_bytes: DEFAULT_CACHE_BYTES,
            min_free_bytes: DEFAULT_MIN_FREE_BYTES,
        }
    }
}

/// Why the engine in `path` would not open, saying what to do when its files are damaged
/// (they fail their checksums: a flipped bit on disk, a torn copy).
fn damaged(path: &Path, e: fjall::Error) -> StorageError {
    let text = e.to_string();
    let journal = text.contains("JournalRecovery");
    if !(journal || text.contains("Checksum") || text.contains("Decompress")) {
        return engine_err(e);
    }
    let which = if journal {
        let files: Vec<String> = std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jnl"))
            .map(|p| p.display().to_string())
            .collect();
        format!("its journal ({})", files.join(", "))
    } else {
        "its data files".to_owned()
    };
    StorageError::Engine(format!(
        "the storage in {dir} is damaged: {which} fail their checksums ({text}). This node's copy cannot be trusted; move {dir} aside (keep it for inspection) and start the node again with --seeds on an empty directory: it joins as a new instance and receives its ranges from the other replicas",
        dir = path.display()
    ))
}

/// Free bytes (for an unprivileged process) on the filesystem holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed statvfs is a valid value to be filled in; `c` is a NUL-terminated path
    // that outlives the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// The free space of the data directory, as the monitor thread last saw it.
struct FreeSpace {
    reserve: u64,
    free: AtomicU64,
    refusing: AtomicBool,
}

impl FreeSpace {
    /// Looks at the filesystem again; logs when writes start or stop being refused.
    fn check(&self, path: &Path) {
        let Some(free) = free_bytes(path) else {
            return;
        };
        self.free.store(free, Ordering::Release);
        let refusing = self.reserve > 0 && free < self.reserve;
        if self.refusing.swap(refusing, Ordering::AcqRel) != refusing {
            if refusing {
                tracing::error!(
                    free_mb = free >> 20,
                    reserve_mb = self.reserve >> 20,
                    path = %path.display(),
                    "the data directory's filesystem is nearly full: refusing writes (reads go on) until space is freed"
                );
            } else {
                tracing::warn!(
                    free_mb = free >> 20,
                    "space on the data directory's filesystem is back: taking writes again"
                );
            }
        }
    }
}

struct Inner {
    /// The database and its keyspaces, one current generation per space.
    ks: Keyspaces,
    dirty: AtomicBool,
    /// Group commit is on: batches stay in the journal buffer until `commit_group`.
    group: AtomicBool,
    /// Batches were written since the last `commit_group`.
    pending: AtomicBool,
    space: FreeSpace,
}

impl Inner {
    fn space(&self, space: Space) -> Keyspace {
        self.ks.get(space)
    }

    fn sync(&self) -> Result<()> {
        self.dirty.store(false, Ordering::Release);
        self.ks.db.persist(PersistMode::SyncAll).map_err(engine_err)
    }
}

/// The fjall-backed engine. Cheap to share behind an `Arc`.
pub struct DiskEngine {
    inner: Arc<Inner>,
    policy: SyncPolicy,
    syncer: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    monitor: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

impl DiskEngine {
    /// Opens (or creates) the engine in directory `path` with the default options.
    ///
    /// Fails if another process holds the directory.
    pub fn open(path: &Path, policy: SyncPolicy) -> Result<Self> {
        Self::open_with(path, DiskOptions::new(policy))
    }

    /// Opens (or creates) the engine in directory `path` with `options`.
    ///
    /// Fails if another process holds the directory.
    pub fn open_with(path: &Path, options: DiskOptions) -> Result<Self> {
        let policy = options.sync;
        std::fs::create_dir_all(path)
            .map_err(|e| StorageError::Engine(format!("cannot create {}: {e}", path.display())))?;
        let db = Database::builder(path)
            .cache_size(options.cache_bytes)
            .max_journaling_size(JOURNAL_BYTES)
            .worker_threads(WORKER_THREADS)
            .open()
            .map_err(|e| match e {
            fjall::Error::Locked => StorageError::Engine(format!(
                "{} is in use by another process (another dynamokv node?); give each node its own data directory",
                path.display()
            )),
            other => damaged(path, other),
            })?;
        // Memory: each keyspace's memtable is sealed at MEMTABLE_BYTES and flushed to disk in
        // the background; the block cache is `options.cache_bytes`. See docs/bench.md.
        let inner = Arc::new(Inner {
            ks: Keyspaces::open(db)?,
            dirty: AtomicBool::new(false),
            group: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            space: FreeSpace {
                reserve: options.min_free_bytes,
                free: AtomicU64::new(u64::MAX),
                refusing: AtomicBool::new(false),
            },
        });
        inner.space.check(path);
        let monitor = {
            let (tx, rx) = mpsc::channel::<()>();
            let (inner, path) = (Arc::clone(&inner), path.to_owned());
            let handle = std::thread::Builder::new()
                .name("dynamokv-diskspace".into())
                .spawn(move || {
                    while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(SPACE_CHECK) {
                        inner.space.check(&path);
                    }
                })
                .map_err(|e| {
                    StorageError::Engine(format!("cannot start disk space thread: {e}"))
                })?;
            Some((tx, handle))
        };
        let syncer = match policy {
            SyncPolicy::Periodic(interval) => {
                let (tx, rx) = mpsc::channel::<()>();
                let inner = Arc::clone(&inner);
                let handle = std::thread::Builder::new()
                    .name("dynamokv-fsync".into())
                    .spawn(move || {
                        // Wakes every interval; a message or a closed channel means stop.
                        while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(interval) {
                            if inner.dirty.load(Ordering::Acquire)
                                && let Err(e) = inner.sync()
                            {
                                tracing::error!(error = %e, "periodic fsync failed");
                            }
                        }
                    })
                    .map_err(|e| StorageError::Engine(format!("cannot start fsync thread: {e}")))?;
                Some((tx, handle))
            }
            SyncPolicy::Always | SyncPolicy::Never => None,
        };
        Ok(Self {
            inner,
            policy,
            syncer,
            monitor,
        })
    }

    /// The sync policy in force.
    pub fn policy(&self) -> SyncPolicy {
        self.policy
    }
}

impl Drop for DiskEngine {
    fn drop(&mut self) {
        for (tx, handle) in [self.syncer.take(), self.monitor.take()]
            .into_iter()
            .flatten()
        {
            let _ = tx.send(());
            let _ = handle.join();
        }
        if let Err(e) = self.inner.sync() {
            tracing::error!(error = %e, "final fsync failed");
        }
    }
}

impl Engine for DiskEngine {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .space(space)
            .get(key)
            .map_err(|e| space_err(space, e))?
            .map(|v| v.to_vec()))
    }

    fn write(&self, batch: WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        // Short of space, writes of data are refused before the engine sees them (an engine
        // that meets a full disk stops taking writes until restarted). Deletes, which free
        // space in time, and the node's own metadata go on.
        let space = &self.inner.space;
        if space.refusing.load(Ordering::Acquire)
            && batch
                .ops
                .iter()
                .any(|op| matches!(op, BatchOp::Put { space, .. } if *space != Space::Meta))
        {
            return Err(StorageError::Full {
                free_bytes: space.free.load(Ordering::Acquire),
                reserve_bytes: space.reserve,
            });
        }
        // Shared with other writes; a salvage waits for it before it starts copying.
        let _gate = self.inner.ks.gate.read().unwrap_or_else(|p| p.into_inner());
        if let Some(op) = batch.ops.iter().find(|op| {
            let (BatchOp::Put { space, .. } | BatchOp::Delete { space, .. }) = op;
            self.inner.ks.salvaging[*space as usize].load(Ordering::Acquire)
        }) {
            let (BatchOp::Put { space, .. } | BatchOp::Delete { space, .. }) = op;
            return Err(StorageError::Salvaging(*space));
        }
        let group = self.inner.group.load(Ordering::Acquire);
        let mut b = self.inner.ks.db.batch();
        if group {
            // Left in the journal buffer; `commit_group` persists it with the others.
            b = b.durability(None);
        } else if self.policy == SyncPolicy::Always {
            b = b.durability(Some(PersistMode::SyncAll));
        }
        for op in batch.ops {
            match op {
                BatchOp::Put { space, key, value } => {
                    b.insert(&self.inner.space(space), key, value)
                }
                BatchOp::Delete { space, key } => b.remove(&self.inner.space(space), key),
            }
        }
        b.commit().map_err(engine_err)?;
        if group {
            self.inner.pending.store(true, Ordering::Release);
        } else if self.policy != SyncPolicy::Always {
            self.inner.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }

    fn disk_space(&self) -> Option<DiskSpace> {
        let space = &self.inner.space;
        Some(DiskSpace {
            free_bytes: space.free.load(Ordering::Acquire),
            reserve_bytes: space.reserve,
            refusing_writes: space.refusing.load(Ordering::Acquire),
        })
    }

    fn set_group_commit(&self, on: bool) {
        self.inner.group.store(on, Ordering::Release);
        if !on {
            let _ = self.commit_group();
        }
    }

    fn commit_group(&self) -> Result<()> {
        if !self.inner.pending.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let mode = if self.policy == SyncPolicy::Always {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        self.inner.ks.db.persist(mode).map_err(engine_err)?;
        if self.policy != SyncPolicy::Always {
            self.inner.dirty.store(true, Ordering::Release);
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
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for guard in self.inner.space(space).range::<&[u8], _>((start, end)) {
            let (k, v) = guard.into_inner().map_err(|e| space_err(space, e))?;
            out.push((k.to_vec(), v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    fn flush(&self) -> Result<()> {
        self.inner.sync()
    }

    fn salvage(&self, space: Space, keep: &dyn Fn(&[u8], &[u8]) -> bool) -> Result<Salvage> {
        crate::salvage::salvage(&self.inner.ks, space, keep)
    }

    fn lost_data(&self) -> Result<bool> {
        Ok(self.get(Space::Meta, LOST_DATA)?.is_some())
    }

    fn forget_lost_data(&self) -> Result<()> {
        self.delete(Space::Meta, LOST_DATA)?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
            e.put(Space::Objects, b"k", b"v").unwrap();
            e.put(Space::Meta, b"k", b"m").unwrap();
        }
        let e = DiskEngine::open(dir.path(), SyncPolicy::Always).unwrap();
        assert_eq!(e.get(Space::Objects, b"k").unwrap(), Some(b"v".to_vec()));
        assert_eq!(e.get(Space::Meta, b"k").unwrap(), Some(b"m".to_vec()));
        assert_eq!(e.get(Space::Hints, b"k").unwrap(), None);
    }

    #[test]
    fn group_commit_writes_are_read_at_once_and_kept_once_committed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = DiskEngine::open(dir.path(), SyncPolicy::Always).unwrap();
            e.set_group_commit(true);
            for i in 0..100u32 {
                e.put(Space::Objects, &i.to_be_bytes(), b"v").unwrap();
            }
            assert_eq!(
                e.get(Space::Objects, &7u32.to_be_bytes()).unwrap(),
                Some(b"v".to_vec())
            );
            assert!(e.inner.pending.load(Ordering::Acquire));
            e.commit_group().unwrap();
            assert!(!e.inner.pending.load(Ordering::Acquire));
        }
        let e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
        assert_eq!(
            e.scan(Space::Objects, Bound::Unbounded, Bound::Unbounded, 1000)
                .unwrap()
                .len(),
            100
        );
    }

    #[test]
    fn second_open_of_same_directory_fails() {
        let dir = tempfile::tempdir().unwrap();
        let _e = DiskEngine::open(dir.path(), SyncPolicy::Never).unwrap();
        assert!(DiskEngine::open(dir.path(), SyncPolicy::Never).is_err());
    }

    #[test]
    fn periodic_sync_thread_stops_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let e = DiskEngine::open(
            dir.path(),
            SyncPolicy::Periodic(std::time::Duration::from_millis(5)),
        )
        .unwrap();
        e.put(Space::Objects, b"a", b"1").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(!e.inner.dirty.load(Ordering::Acquire), "the syncer ran");
        drop(e);
    }
}
