//! The disk engine's keyspaces: one fjall keyspace per [`Space`], in its current generation
//! (a salvage, [`crate::salvage`], moves a space to the next one), the gate that keeps writes
//! out of a space being salvaged, and how fjall's errors read as [`StorageError`]s.

use crate::{Result, Space, StorageError};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, RwLock};

/// The size at which a keyspace's in-memory table is sealed and written out (fjall's default is
/// 64 MiB; smaller keeps a node's memory well inside its budget, and point reads faster).
pub const MEMTABLE_BYTES: u64 = 16 * 1024 * 1024;

/// The database and its keyspaces.
pub(crate) struct Keyspaces {
    pub(crate) db: Database,
    /// Each space's current keyspace (a salvage replaces one).
    pub(crate) handles: [RwLock<Keyspace>; 4],
    /// Each space's generation: 0 is the keyspace named after the space, each salvage adds
    /// one (kept in the meta space).
    pub(crate) generations: [AtomicU64; 4],
    /// Writes to a space being salvaged are refused.
    pub(crate) salvaging: [AtomicBool; 4],
    /// Held (shared) by every write while it checks `salvaging` and commits; a salvage takes
    /// it exclusively to start, so no write slips into the old copy behind its back.
    pub(crate) gate: RwLock<()>,
    /// One salvage at a time.
    pub(crate) salvage_one: Mutex<()>,
}

impl Keyspaces {
    /// Opens every space of `db` in its current generation, deleting what an unfinished
    /// salvage left.
    pub(crate) fn open(db: Database) -> Result<Keyspaces> {
        let meta = open_keyspace(&db, Space::Meta.name())?;
        let generation = |s: Space| -> Result<u64> {
            Ok(match meta.get(generation_key(s)).map_err(engine_err)? {
                Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                    StorageError::Corrupt {
                        space: Space::Meta,
                        reason: "a keyspace generation is not 8 bytes".into(),
                    }
                })?),
                None => 0,
            })
        };
        let generations = [
            generation(Space::Objects)?,
            generation(Space::Hints)?,
            0,
            generation(Space::Index)?,
        ];
        drop_leftovers(&db, &generations)?;
        let open = |s: Space| {
            open_keyspace(&db, &keyspace_name(s, generations[s as usize])).map(RwLock::new)
        };
        let spaces = [
            open(Space::Objects)?,
            open(Space::Hints)?,
            RwLock::new(meta),
            open(Space::Index)?,
        ];
        Ok(Keyspaces {
            db,
            handles: spaces,
            generations: generations.map(AtomicU64::new),
            salvaging: Default::default(),
            gate: RwLock::new(()),
            salvage_one: Mutex::new(()),
        })
    }

    /// The current keyspace of `space`.
    pub(crate) fn get(&self, space: Space) -> Keyspace {
        self.handles[space as usize]
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// `e`, met outside any one space's data, as a [`StorageError`].
pub(crate) fn engine_err(e: fjall::Error) -> StorageError {
    space_err(Space::Objects, e)
}

/// `e`, met in `space`: damaged bytes (a block failing its checksum or not decompressing) are
/// [`StorageError::Corrupt`], apart from other failures.
pub(crate) fn space_err(space: Space, e: fjall::Error) -> StorageError {
    use fjall::LsmError as L;
    match e {
        fjall::Error::Poisoned => StorageError::Engine(
            "the storage engine stopped taking writes after a failed write (a full disk?): free space and restart the node".into(),
        ),
        fjall::Error::Storage(
            ref inner @ (L::ChecksumMismatch { .. }
            | L::Decompress(_)
            | L::InvalidHeader(_)
            | L::InvalidTrailer
            | L::InvalidTag(_)),
        ) => StorageError::Corrupt {
            space,
            reason: format!("unreadable block: {inner:?}"),
        },
        fjall::Error::Decompress(_) | fjall::Error::InvalidTag(_) => StorageError::Corrupt {
            space,
            reason: e.to_string(),
        },
        other => StorageError::Engine(other.to_string()),
    }
}

/// Opens (or creates) the keyspace `name` with the node's options.
pub(crate) fn open_keyspace(db: &Database, name: &str) -> Result<Keyspace> {
    db.keyspace(name, || {
        KeyspaceCreateOptions::default().max_memtable_size(MEMTABLE_BYTES)
    })
    .map_err(engine_err)
}

/// Meta-space key, present while data dropped by a salvage has not been rebuilt.
pub(crate) const LOST_DATA: &[u8] = b"\xffengine/lost-data";

/// The meta-space key holding `space`'s generation.
pub(crate) fn generation_key(space: Space) -> Vec<u8> {
    let mut k = b"\xffengine/generation/".to_vec();
    k.extend_from_slice(space.name().as_bytes());
    k
}

/// The keyspace name of `space`'s generation `generation`.
pub(crate) fn keyspace_name(space: Space, generation: u64) -> String {
    if generation == 0 {
        space.name().to_owned()
    } else {
        format!("{}.{generation}", space.name())
    }
}

/// Deletes the keyspaces of generations that are not current: a salvage's partial copy, or the
/// old generation a salvage could not delete before a crash.
pub(crate) fn drop_leftovers(db: &Database, generations: &[u64; 4]) -> Result<()> {
    for space in [Space::Objects, Space::Hints, Space::Index] {
        let current = keyspace_name(space, generations[space as usize]);
        let dotted = format!("{}.", space.name());
        for name in db.list_keyspace_names() {
            let name: &str = &name;
            if name != current && (name == space.name() || name.starts_with(&dotted)) {
                tracing::warn!(
                    keyspace = name,
                    "deleting a leftover of an unfinished salvage"
                );
                let handle = open_keyspace(db, name)?;
                db.delete_keyspace(handle).map_err(engine_err)?;
            }
        }
    }
    Ok(())
}
