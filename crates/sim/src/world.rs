//! The simulation's state: the event kinds, the simulated nodes and clients, and the [`Sim`]
//! that holds them. The run loop (`run`), the cluster (`cluster`), the clients (`workload`) and
//! the faults (`faults`) each add their behaviour to `Sim` and depend only on this module.

use crate::checker::{Outcome, Violation};
use crate::{CoreNode, Rng, SimConfig};
use dynamokv_core::membership::{Ended, Member};
use dynamokv_core::message::{ClientId, ClientRequest, Message};
use dynamokv_core::node::startup::NewActor;
use dynamokv_core::{ActorId, VersionVector};
use dynamokv_storage::ObjectStore;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub(crate) enum Ev {
    Deliver {
        from: usize,
        /// The sender's data directory instance when it sent the message.
        instance: u64,
        to: usize,
        message: Message,
    },
    Request {
        to: usize,
        client: ClientId,
        request: ClientRequest,
    },
    Tick,
    ClientNext(usize),
    ClientTimeout(usize, usize),
    Crash(usize),
    /// A node stops cleanly (its next run keeps its actor and counter floor).
    Stop(usize),
    /// A node loses its data directory (it crashes; it restarts on an empty one).
    LoseDisk(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    /// Node `.0` handles every message and request `.1` ms late (0: on time again): a slow
    /// disk, a GC pause or an overloaded node, which still answers - late.
    Slow(usize, u64),
    /// An event a slow node handles now, after its delay.
    Late(Box<Ev>),
    Cut(Vec<(usize, usize)>),
    Heal(Vec<(usize, usize)>),
    Loss(bool),
    /// Node `.0`'s wall clock jumps by `.1` ms (its monotonic clock does not move).
    ClockStep(usize, i64),
    /// The spare node starts and joins.
    Join(usize),
    /// A node starts a graceful leave.
    Leave(usize),
    /// A node crashes for good (it will be removed).
    Retire(usize),
    /// Node `by` declares node `victim` removed (retried while it still looks up).
    Remove {
        /// The dead (or cut off) node.
        victim: usize,
        /// The node asked.
        by: usize,
    },
    /// Every link to and from a node is cut, until it is removed (then healed a little later).
    Isolate(usize),
    /// The links of an isolated node heal.
    Unisolate(usize),
    /// A node stops, its data directory is copied, and it starts again.
    CopyDir(usize),
}

/// A simulation run.
pub struct Sim {
    pub(crate) cfg: SimConfig,
    pub(crate) rng: Rng,
    pub(crate) now: u64,
    pub(crate) seq: u64,
    pub(crate) queue: BinaryHeap<Reverse<(u64, u64)>>,
    pub(crate) events: BTreeMap<u64, Ev>,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) cut: BTreeSet<(usize, usize)>,
    /// Nodes cut off from every other node (to be removed while alive).
    pub(crate) isolated: BTreeSet<usize>,
    pub(crate) loss: bool,
    /// Set while a slow node handles an event whose delay it already served.
    pub(crate) on_time: bool,
    pub(crate) clients: Vec<Client>,
    pub(crate) ops: Vec<OpRecord>,
    pub(crate) pending: BTreeMap<ClientId, (usize, usize)>,
    pub(crate) next_client_id: ClientId,
    pub(crate) issued: usize,
    pub(crate) faults: usize,
    pub(crate) delivered: u64,
    pub(crate) dropped: u64,
    pub(crate) hasher: xxhash_rust::xxh3::Xxh3,
    pub(crate) trace: Vec<String>,
    pub(crate) violations: Vec<Violation>,
    pub(crate) stop_issuing: bool,
    /// Each value written with a time to live, and its operation.
    pub(crate) expiring: BTreeMap<Vec<u8>, usize>,
    /// The largest wall-clock offset any node had so far, ms.
    pub(crate) max_skew: u64,
    /// Conditional creates refused because their read found a value.
    pub(crate) creates_refused: usize,
    /// Hint counters of node incarnations that crashed (stored, delivered).
    pub(crate) crashed_hint_stats: (u64, u64),
}

pub(crate) struct SimNode {
    pub(crate) member: Member,
    /// The persisted membership history (survives crashes).
    pub(crate) history: Vec<Member>,
    /// The persisted endings (survive crashes).
    pub(crate) ended: Vec<Ended>,
    pub(crate) core: Option<CoreNode>,
    pub(crate) store: Arc<ObjectStore>,
    pub(crate) paused: bool,
    pub(crate) held: Vec<Ev>,
    /// How late the node handles what reaches it, ms (0: on time).
    pub(crate) slow_ms: u64,
    pub(crate) skew: i64,
    /// The actor of the node's last run, the highest counter it issued (kept at a clean stop),
    /// and why the next run's actor is new (none: a clean stop, the same actor goes on).
    pub(crate) actor: ActorId,
    pub(crate) counter_floor: u64,
    pub(crate) next_start: Option<NewActor>,
    /// Crashed for good (to be removed): never restarted by the heal.
    pub(crate) retired: bool,
    /// Declared removed (its instance ended): out of the cluster until it is wiped and joins
    /// again as a new instance.
    pub(crate) removed: bool,
    /// Its instances whose disks no longer count (it crashed for good, lost its disk, was
    /// removed, or was put back on an older copy): a write that only such instances held when
    /// it was acknowledged may be gone.
    pub(crate) lost: BTreeSet<u64>,
    /// When its disk was wiped or put back from a copy.
    pub(crate) disk_replaced: Vec<u64>,
    /// Started at least once (the spare node waits for its join).
    pub(crate) joined: bool,
    /// A copy of its data directory (store, history, endings), to be put back later.
    pub(crate) copy: Option<(Arc<ObjectStore>, Vec<Member>, Vec<Ended>)>,
}

impl SimNode {
    /// Whether this node's current instance knows it ended (it left, was removed, or is
    /// stale): it serves nothing, and its view and disk no longer count.
    pub(crate) fn ended(&self) -> bool {
        self.core.as_ref().is_some_and(|c| c.ended().is_some())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct OpRecord {
    pub(crate) client: usize,
    pub(crate) key: Vec<u8>,
    pub(crate) write: Option<(Option<Vec<u8>>, VersionVector, Option<u8>)>,
    pub(crate) done: bool,
    pub(crate) outcome: Option<Outcome>,
    pub(crate) dot: Option<dynamokv_core::Dot>,
    /// The nodes (with their instances) holding the write when it was acknowledged.
    pub(crate) holders: Vec<(usize, u64)>,
    /// When the client sent it.
    pub(crate) issued_at: u64,
    /// Every copy of it was, at some point after it was acknowledged, on disks that no longer
    /// count (see [`Sim::disks_lost`]): it may be gone.
    pub(crate) excused: bool,
    /// What kind of operation it is.
    pub(crate) kind: OpKind,
    /// When the client heard its answer (none: no answer).
    pub(crate) answered_at: Option<u64>,
}

/// The kinds of operation the clients send (see `workload` and `lifecycle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpKind {
    /// A get, put or delete of the main keys.
    Plain,
    /// A put with a time to live (ms).
    Expiring { ttl: u64 },
    /// A read of an expiring key.
    ExpiryRead,
    /// A conditional create (`If-None-Match: *`): a put that only writes if the key's
    /// coordinator finds no live value at R.
    Create,
    /// An increment of a counter.
    Increment { by: i64 },
}

pub(crate) struct Client {
    pub(crate) busy: Option<usize>,
    pub(crate) contexts: BTreeMap<Vec<u8>, VersionVector>,
}

pub(crate) fn key_name(i: usize) -> Vec<u8> {
    format!("key{i:03}").into_bytes()
}
