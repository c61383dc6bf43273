//! A node's persistent identity, kept in the metadata keyspace.
//!
//! - `actor`: the [`ActorId`] that issues this node's dots. It is kept across clean restarts. A
//!   node that starts without a clean-shutdown marker (it crashed, or its data directory is new)
//!   takes a fresh random actor: writes it acknowledged after its last fsync may be gone from its
//!   own disk while living on other replicas, and reusing their counters for new writes would
//!   make different values share a dot (Riak's KV679 lesson).
//! - `clean-shutdown`: written on clean shutdown, removed on start.
//! - `cluster-secret`: the generated context secret when none is configured.
//! - `cluster-id`: the cluster this directory belongs to ([`ClusterId`]).

use dynamokv_core::ActorId;
use dynamokv_core::node::startup::NewActor;
use dynamokv_storage::{Engine, Space, StorageError, WriteBatch};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

const ACTOR: &[u8] = b"actor";
const CLEAN: &[u8] = b"clean-shutdown";
const COUNTER_FLOOR: &[u8] = b"counter-floor";
const INSTANCE: &[u8] = b"instance";
const SECRET: &[u8] = b"cluster-secret";
const NODE_ID: &[u8] = b"node-id";
const CLUSTER_ID: &[u8] = b"cluster-id";

/// What [`Identity::load`] found and decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The actor for this run.
    pub actor: ActorId,
    /// Whether the actor is new this run, and why.
    pub new_actor: Option<NewActor>,
}

/// A data directory started under a node id other than the one it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrongNode {
    /// The id the directory belongs to.
    pub stored: String,
    /// The id it was started with.
    pub configured: String,
}

fn random_u64() -> Result<u64, StorageError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| StorageError::Engine(format!("no randomness: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

impl Identity {
    /// Loads the identity at start, choosing a fresh actor when the last shutdown was not
    /// clean, and clears the clean-shutdown marker (durably) for this run.
    pub fn load(engine: &dyn Engine) -> Result<Identity, StorageError> {
        let stored = engine
            .get(Space::Meta, ACTOR)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes);
        let clean = engine.get(Space::Meta, CLEAN)?.is_some();
        let (actor, new_actor) = match (stored, clean) {
            (Some(a), true) => (ActorId(a), None),
            (Some(_), false) => (ActorId(random_u64()?), Some(NewActor::UncleanShutdown)),
            (None, _) => (ActorId(random_u64()?), Some(NewActor::NewDirectory)),
        };
        let mut b = WriteBatch::new();
        b.put(Space::Meta, ACTOR, actor.0.to_be_bytes());
        b.delete(Space::Meta, CLEAN);
        engine.write(b)?;
        engine.flush()?;
        Ok(Identity { actor, new_actor })
    }

    /// The data directory's instance number: drawn when the directory is new, kept with it
    /// (across restarts and crashes), so two processes claiming one node id are told apart.
    pub fn instance(engine: &dyn Engine) -> Result<u64, StorageError> {
        if let Some(v) = engine
            .get(Space::Meta, INSTANCE)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        {
            return Ok(u64::from_be_bytes(v));
        }
        let v = random_u64()?;
        engine.put(Space::Meta, INSTANCE, &v.to_be_bytes())?;
        engine.flush()?;
        Ok(v)
    }

    /// The highest version counter the actor issued in its previous run (0 if unknown).
    pub fn counter_floor(engine: &dyn Engine) -> Result<u64, StorageError> {
        Ok(engine
            .get(Space::Meta, COUNTER_FLOOR)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// Keeps the highest version counter the actor issued, for its next run.
    pub fn save_counter_floor(engine: &dyn Engine, floor: u64) -> Result<(), StorageError> {
        engine.put(Space::Meta, COUNTER_FLOOR, &floor.to_be_bytes())
    }

    /// Records a clean shutdown, durably. Call after the last write.
    pub fn mark_clean_shutdown(engine: &dyn Engine) -> Result<(), StorageError> {
        engine.put(Space::Meta, CLEAN, b"1")?;
        engine.flush()
    }

    /// The node id: the stored one, `configured` if it names the same (or none is stored yet,
    /// then it is stored), else a new `node-XXXXXXXX` id (stored). A data directory belongs to
    /// one node id: configuring another is refused with [`WrongNode`], before anything is
    /// written.
    pub fn node_id(
        engine: &dyn Engine,
        configured: Option<&str>,
    ) -> Result<Result<String, WrongNode>, StorageError> {
        let stored = engine
            .get(Space::Meta, NODE_ID)?
            .and_then(|b| String::from_utf8(b).ok());
        let id = match (configured, &stored) {
            (Some(c), Some(s)) if c != s => {
                return Ok(Err(WrongNode {
                    stored: s.clone(),
                    configured: c.to_owned(),
                }));
            }
            (Some(c), _) => c.to_owned(),
            (None, Some(s)) => s.clone(),
            (None, None) => format!("node-{:08x}", random_u64()? as u32),
        };
        if stored.as_deref() != Some(id.as_str()) {
            engine.put(Space::Meta, NODE_ID, id.as_bytes())?;
            engine.flush()?;
        }
        Ok(Ok(id))
    }

    /// The stored generated cluster secret, creating one on first use.
    pub fn generated_secret(engine: &dyn Engine) -> Result<[u8; 32], StorageError> {
        if let Some(s) = engine.get(Space::Meta, SECRET)?
            && let Ok(secret) = <[u8; 32]>::try_from(s.as_slice())
        {
            return Ok(secret);
        }
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret)
            .map_err(|e| StorageError::Engine(format!("no randomness: {e}")))?;
        engine.put(Space::Meta, SECRET, &secret)?;
        engine.flush()?;
        Ok(secret)
    }
}

/// The cluster a data directory belongs to: a random id minted by the cluster's first node (a
/// new directory started without seeds) and adopted, at its first handshake, by every node that
/// joins through a seed. Peers present it at the handshake; a node that belongs to one cluster
/// refuses a peer of another, whatever their secrets (see `crate::handshake`). A directory that
/// has none yet (a node joining through seeds, or a directory from before cluster ids) takes the
/// first one a peer presents, and keeps it for good.
pub struct ClusterId {
    /// 0 while the directory belongs to no cluster yet.
    id: AtomicU64,
    engine: Arc<dyn Engine>,
}

/// Two nodes of different clusters met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtherCluster {
    /// This node's cluster.
    pub mine: u64,
    /// The peer's.
    pub theirs: u64,
}

impl ClusterId {
    /// The directory's cluster id; when it has none and `mint` says this node founds a
    /// cluster, a new one, stored durably.
    pub fn open(engine: Arc<dyn Engine>, mint: bool) -> Result<ClusterId, StorageError> {
        let stored = engine
            .get(Space::Meta, CLUSTER_ID)?
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|id| *id != 0);
        let id = match stored {
            Some(id) => id,
            None if mint => {
                let id = random_u64()?.max(1);
                engine.put(Space::Meta, CLUSTER_ID, &id.to_be_bytes())?;
                engine.flush()?;
                tracing::info!(cluster = %show(id), "founded a new cluster");
                id
            }
            None => 0,
        };
        Ok(ClusterId {
            id: AtomicU64::new(id),
            engine,
        })
    }

    /// The id, 0 while this directory belongs to no cluster yet.
    pub fn get(&self) -> u64 {
        self.id.load(Ordering::Acquire)
    }

    /// Whether a peer presenting `theirs` may be of this node's cluster: yes unless both have
    /// an id and they differ.
    pub fn check(&self, theirs: u64) -> Result<(), OtherCluster> {
        let mine = self.get();
        if mine != 0 && theirs != 0 && mine != theirs {
            return Err(OtherCluster { mine, theirs });
        }
        Ok(())
    }

    /// Takes `theirs` (a peer's, after both proofs were checked) if this directory has no id
    /// yet, storing it durably; a directory that has one (or took another meanwhile) keeps it,
    /// and a different id is refused.
    pub fn adopt(&self, theirs: u64) -> Result<(), OtherCluster> {
        if theirs == 0 {
            return Ok(());
        }
        match self
            .id
            .compare_exchange(0, theirs, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                let stored = self
                    .engine
                    .put(Space::Meta, CLUSTER_ID, &theirs.to_be_bytes())
                    .and_then(|()| self.engine.flush());
                match stored {
                    Ok(()) => tracing::info!(cluster = %show(theirs), "joined cluster"),
                    Err(e) => {
                        tracing::error!(cluster = %show(theirs), error = %e, "could not store the cluster id")
                    }
                }
                Ok(())
            }
            Err(mine) if mine == theirs => Ok(()),
            Err(mine) => Err(OtherCluster { mine, theirs }),
        }
    }
}

/// A cluster id as shown to people: 16 hex digits, or `none` for 0.
pub fn show(id: u64) -> String {
    if id == 0 {
        "none".to_owned()
    } else {
        format!("{id:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_storage::MemoryEngine;

    #[test]
    fn instance_is_kept_with_the_directory() {
        let e = MemoryEngine::new();
        let a = Identity::instance(&e).unwrap();
        assert_eq!(Identity::instance(&e).unwrap(), a);
        assert_ne!(Identity::instance(&MemoryEngine::new()).unwrap(), a);
    }

    #[test]
    fn counter_floor_is_kept() {
        let e = MemoryEngine::new();
        assert_eq!(Identity::counter_floor(&e).unwrap(), 0);
        Identity::save_counter_floor(&e, 1234).unwrap();
        assert_eq!(Identity::counter_floor(&e).unwrap(), 1234);
    }

    #[test]
    fn actor_kept_after_clean_shutdown_and_renewed_after_crash() {
        let e = MemoryEngine::new();
        let first = Identity::load(&e).unwrap();
        assert_eq!(first.new_actor, Some(NewActor::NewDirectory));
        Identity::mark_clean_shutdown(&e).unwrap();
        let second = Identity::load(&e).unwrap();
        assert_eq!(second.actor, first.actor);
        assert_eq!(second.new_actor, None);
        // No clean shutdown this time: a crash.
        let third = Identity::load(&e).unwrap();
        assert_ne!(third.actor, second.actor);
        assert_eq!(third.new_actor, Some(NewActor::UncleanShutdown));
    }

    #[test]
    fn node_id_is_generated_once_and_belongs_to_the_directory() {
        let e = MemoryEngine::new();
        let id = Identity::node_id(&e, None).unwrap().unwrap();
        assert!(id.starts_with("node-"));
        assert_eq!(Identity::node_id(&e, None).unwrap(), Ok(id.clone()));
        assert_eq!(Identity::node_id(&e, Some(&id)).unwrap(), Ok(id.clone()));
        assert_eq!(
            Identity::node_id(&e, Some("n1")).unwrap(),
            Err(WrongNode {
                stored: id.clone(),
                configured: "n1".into()
            })
        );
        assert_eq!(Identity::node_id(&e, None).unwrap(), Ok(id), "unchanged");
        let fresh = MemoryEngine::new();
        assert_eq!(
            Identity::node_id(&fresh, Some("n1")).unwrap(),
            Ok("n1".into())
        );
    }

    #[test]
    fn generated_secret_is_stable() {
        let e = MemoryEngine::new();
        let s = Identity::generated_secret(&e).unwrap();
        assert_eq!(Identity::generated_secret(&e).unwrap(), s);
    }

    #[test]
    fn a_founder_mints_a_cluster_id_a_joiner_adopts_one_and_both_keep_it() {
        let founder: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let a = ClusterId::open(founder.clone(), true).unwrap();
        assert_ne!(a.get(), 0);
        assert_eq!(
            ClusterId::open(founder.clone(), true).unwrap().get(),
            a.get()
        );
        let joiner: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
        let j = ClusterId::open(joiner.clone(), false).unwrap();
        assert_eq!(j.get(), 0);
        assert_eq!(j.check(a.get()), Ok(()));
        j.adopt(a.get()).unwrap();
        assert_eq!(
            ClusterId::open(joiner, false).unwrap().get(),
            a.get(),
            "stored"
        );
        let other = ClusterId::open(Arc::new(MemoryEngine::new()), true).unwrap();
        let mismatch = OtherCluster {
            mine: a.get(),
            theirs: other.get(),
        };
        assert_eq!(j.check(other.get()), Err(mismatch));
        assert_eq!(j.adopt(other.get()), Err(mismatch));
        assert_eq!(j.get(), a.get(), "kept");
        assert_eq!(j.check(0), Ok(()), "a peer with none yet may join");
    }
}
