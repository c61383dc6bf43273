//! How a node starts: from what its data directory holds, its settings and the clock, the node
//! it starts as - or why it must not start on that directory. One function, [`start`], that the
//! server and the simulator both call, so the restart paths production takes are the ones the
//! simulator runs.
//!
//! The rules:
//! - an instance that ended (it left, was removed, or runs on a stale copy of its directory, and
//!   its history says so) does not start: [`Ended::explain`] says how to bring the machine back;
//! - a node keeps the status and tokens of its last record; a node with no record of its own is
//!   `joining` when it came through seeds (it owns nothing until it holds its ranges' data) and
//!   `up` when it starts a cluster, with hashed tokens;
//! - its generation is the wall clock (raised above any it had), its data directory's epoch is
//!   raised above any it announced ([`super::cluster::Cluster::new`]);
//! - the same actor as the last run (after a clean shutdown) continues above the counters it
//!   issued; a new data directory declares itself empty, so that a node the cluster knew rebuilds
//!   its data before its copies count for reads.

use super::{Node, NodeConfig};
use crate::clock::Now;
use crate::membership::{Ended, Ending, Member, Status};
use crate::store::LocalStore;
use crate::version::ActorId;

/// Why this run's actor is new (none: the same actor as the last run, after a clean shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewActor {
    /// The data directory is new (or was wiped, or its disk lost).
    NewDirectory,
    /// The last run did not shut down cleanly: writes it acknowledged after its last fsync may
    /// be gone from this disk while living on other replicas, so its counters must not be
    /// reused.
    UncleanShutdown,
}

impl NewActor {
    /// Why, in words, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            NewActor::NewDirectory => "new data directory",
            NewActor::UncleanShutdown => "the last shutdown was not clean",
        }
    }
}

/// What a node's data directory holds when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    /// The node id it belongs to.
    pub node_id: String,
    /// Its instance number.
    pub instance: u64,
    /// The member records it persisted (its own among them, if it ran before).
    pub known: Vec<Member>,
    /// The endings it persisted.
    pub ended: Vec<Ended>,
    /// The actor of this run.
    pub actor: ActorId,
    /// Why the actor is new, if it is.
    pub new_actor: Option<NewActor>,
    /// The highest counter the actor issued in its last run (used when the actor is the same).
    pub counter_floor: u64,
}

/// How the node is set up to start.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// Its settings.
    pub config: NodeConfig,
    /// Tokens it places on the ring when it has none yet.
    pub vnodes: u16,
    /// Whether it was given seeds to join through.
    pub seeds: bool,
    /// The peer address it announces.
    pub peer_addr: String,
    /// The HTTP address it announces.
    pub http_addr: String,
}

/// The ending that keeps `dir` from starting: its own instance's, or - in a history written
/// before endings existed - its own record saying it left.
pub fn ended(dir: &Directory) -> Option<Ended> {
    let own_end = dir
        .ended
        .iter()
        .find(|e| e.id == dir.node_id && e.instance == dir.instance);
    if let Some(e) = own_end {
        return Some(e.clone());
    }
    own_record(dir)
        .filter(|m| m.status == Status::Left)
        .map(|m| Ended {
            id: m.id.clone(),
            instance: dir.instance,
            how: Ending::Left,
            by: m.id.clone(),
        })
}

/// This directory's own latest record, if it ran before.
fn own_record(dir: &Directory) -> Option<&Member> {
    dir.known
        .iter()
        .filter(|m| m.id == dir.node_id && m.instance == dir.instance)
        .max_by_key(|m| (m.generation, m.version))
}

/// The node that starts on `dir` with `setup` at `now`, over `store`, drawing its random choices
/// from `seed`; or the ending that keeps it from starting. Its own record for this start (with
/// the raised epoch) is its first output ([`super::Output::Persist`]): the shell makes it
/// durable before any peer hears of the node.
pub fn start<S: LocalStore>(
    dir: &Directory,
    setup: &Setup,
    store: S,
    now: Now,
    seed: u64,
) -> Result<Node<S>, Ended> {
    if let Some(e) = ended(dir) {
        return Err(e);
    }
    let previous = own_record(dir);
    let status = match previous {
        Some(p) => p.status,
        None if setup.seeds => Status::Joining,
        None => Status::Up,
    };
    let tokens = previous.map_or_else(
        || crate::ring::hashed_tokens(&dir.node_id, setup.vnodes),
        |p| p.tokens.clone(),
    );
    let me = Member {
        id: dir.node_id.clone(),
        generation: now.wall,
        version: 1,
        status,
        peer_addr: setup.peer_addr.clone(),
        http_addr: setup.http_addr.clone(),
        tokens,
        instance: dir.instance,
        epoch: 0,
    };
    let mut node = Node::new(
        me,
        dir.actor,
        setup.config,
        store,
        seed,
        &dir.known,
        &dir.ended,
    );
    match dir.new_actor {
        // The same actor as the last run: continue above the counters it issued.
        None => node.raise_counter_floor(dir.counter_floor),
        // If the cluster knew this node, its data is lost: rebuild it before counting reads.
        Some(NewActor::NewDirectory) => node.started_empty(),
        Some(NewActor::UncleanShutdown) => {}
    }
    Ok(node)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryStore;

    fn setup(seeds: bool) -> Setup {
        Setup {
            config: NodeConfig::default(),
            vnodes: 8,
            seeds,
            peer_addr: "p".into(),
            http_addr: "h".into(),
        }
    }

    fn dir(known: Vec<Member>, new_actor: Option<NewActor>) -> Directory {
        Directory {
            node_id: "n1".into(),
            instance: 7,
            known,
            ended: Vec::new(),
            actor: ActorId(1),
            new_actor,
            counter_floor: 40,
        }
    }

    fn record(status: Status, generation: u64, epoch: u64) -> Member {
        Member {
            id: "n1".into(),
            generation,
            version: 3,
            status,
            peer_addr: "old".into(),
            http_addr: "old".into(),
            tokens: vec![5, 6],
            instance: 7,
            epoch,
        }
    }

    #[test]
    fn a_new_directory_joins_through_seeds_or_starts_a_cluster() {
        let now = Now { mono: 1, wall: 100 };
        let d = dir(Vec::new(), Some(NewActor::NewDirectory));
        let joining = start(&d, &setup(true), MemoryStore::default(), now, 1).unwrap();
        assert_eq!(joining.me().status, Status::Joining);
        assert_eq!(joining.me().tokens.len(), 8);
        assert_eq!((joining.me().generation, joining.me().epoch), (100, 0));
        let first = start(&d, &setup(false), MemoryStore::default(), now, 1).unwrap();
        assert_eq!(first.me().status, Status::Up);
    }

    #[test]
    fn a_restart_keeps_its_place_and_raises_generation_epoch_and_counters() {
        let now = Now { mono: 1, wall: 100 };
        let d = dir(vec![record(Status::Leaving, 500, 4)], None);
        let mut n = start(&d, &setup(true), MemoryStore::default(), now, 1).unwrap();
        assert_eq!(n.me().status, Status::Leaving, "its status, not the seeds'");
        assert_eq!(n.me().tokens, vec![5, 6]);
        assert_eq!(n.me().peer_addr, "p", "its addresses of this run");
        assert_eq!((n.me().generation, n.me().epoch), (501, 5));
        assert_eq!(
            n.counter_floor(),
            40,
            "the same actor continues above its counters"
        );
        assert!(
            matches!(&n.drain()[..], [crate::node::Output::Persist(m)] if m.epoch == 5),
            "the record of this start is the first output"
        );
        let crashed = dir(
            vec![record(Status::Up, 500, 4)],
            Some(NewActor::UncleanShutdown),
        );
        let n = start(&crashed, &setup(true), MemoryStore::default(), now, 1).unwrap();
        assert_eq!(n.counter_floor(), 0, "a new actor starts its own counters");
    }

    #[test]
    fn an_instance_that_ended_does_not_start() {
        let now = Now { mono: 1, wall: 100 };
        let mut d = dir(vec![record(Status::Up, 500, 4)], None);
        d.ended.push(Ended {
            id: "n1".into(),
            instance: 7,
            how: Ending::Removed,
            by: "n2".into(),
        });
        let e = start(&d, &setup(true), MemoryStore::default(), now, 1).err();
        assert_eq!(e.map(|e| e.how), Some(Ending::Removed));
        // Another instance's end is not this one's.
        d.ended[0].instance = 8;
        assert!(start(&d, &setup(true), MemoryStore::default(), now, 1).is_ok());
        // A history from before endings: its own record says it left.
        let left = dir(vec![record(Status::Left, 500, 4)], None);
        let e = start(&left, &setup(true), MemoryStore::default(), now, 1).err();
        assert_eq!(e.map(|e| e.how), Some(Ending::Left));
    }
}
