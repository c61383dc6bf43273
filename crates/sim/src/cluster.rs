//! The simulated nodes: each a core node over the in-memory engine, its persisted history,
//! and whether it is paused; building the cluster, draining outputs, and the end-of-run checks
//! on membership and hints.

use crate::checker::Violation;
use crate::world::{Client, Ev, Sim, SimNode};
use crate::{EPOCH, Rng, SimConfig};
use dynamokv_core::ActorId;
use dynamokv_core::clock::Now;
use dynamokv_core::membership::Member;
use dynamokv_core::node::startup::NewActor;
use dynamokv_core::node::{Node, Output};
use dynamokv_core::ring::hashed_tokens;
use dynamokv_core::store::LocalStore;
use dynamokv_storage::{MemoryEngine, ObjectStore};
use std::collections::BinaryHeap;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

impl Sim {
    /// Builds the cluster for `cfg`.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        // With membership changes, one spare node waits to join.
        let slots = cfg.nodes + usize::from(cfg.faults.membership);
        let members: Vec<Member> = (0..cfg.nodes)
            .map(|i| sim_member(i, cfg.vnodes, dynamokv_core::membership::Status::Up))
            .collect();
        let mut nodes = Vec::new();
        for m in &members {
            let skew = if cfg.faults.skew {
                rng.range(0, 4000) as i64 - 2000
            } else {
                0
            };
            let store = Arc::new(ObjectStore::new(Arc::new(MemoryEngine::new())));
            let actor = ActorId(rng.next_u64());
            let mut core = Node::new(
                m.clone(),
                actor,
                cfg.node,
                store.clone(),
                rng.next_u64(),
                &members,
                &[],
            );
            // Start converged and connected: the history each node would have persisted.
            for other in &members {
                core.assume_connected(&other.id);
            }
            // Its own record for this start (a raised epoch) is persisted like any other.
            let mut history = members.clone();
            for out in core.drain() {
                if let Output::Persist(record) = out {
                    history.push(record);
                }
            }
            nodes.push(SimNode {
                member: core.me().clone(),
                history,
                ended: Vec::new(),
                core: Some(core),
                store,
                paused: false,
                slow_ms: 0,
                held: Vec::new(),
                skew,
                actor,
                counter_floor: 0,
                next_start: Some(NewActor::UncleanShutdown),
                retired: false,
                removed: false,
                lost: BTreeSet::new(),
                disk_replaced: Vec::new(),
                joined: true,
                copy: None,
            });
        }
        for i in cfg.nodes..slots {
            nodes.push(SimNode {
                member: sim_member(i, cfg.vnodes, dynamokv_core::membership::Status::Joining),
                history: Vec::new(),
                ended: Vec::new(),
                core: None,
                store: Arc::new(ObjectStore::new(Arc::new(MemoryEngine::new()))),
                paused: false,
                slow_ms: 0,
                held: Vec::new(),
                skew: 0,
                actor: ActorId(0),
                counter_floor: 0,
                next_start: Some(NewActor::NewDirectory),
                retired: false,
                removed: false,
                lost: BTreeSet::new(),
                disk_replaced: Vec::new(),
                joined: false,
                copy: None,
            });
        }
        let max_skew = nodes
            .iter()
            .map(|n| n.skew.unsigned_abs())
            .max()
            .unwrap_or(0);
        let clients = (0..cfg.clients)
            .map(|_| Client {
                busy: None,
                contexts: BTreeMap::new(),
            })
            .collect();
        Sim {
            rng,
            now: EPOCH,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            cut: BTreeSet::new(),
            isolated: BTreeSet::new(),
            loss: false,
            on_time: false,
            clients,
            ops: Vec::new(),
            pending: BTreeMap::new(),
            next_client_id: 1,
            issued: 0,
            faults: 0,
            delivered: 0,
            dropped: 0,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            trace: Vec::new(),
            violations: Vec::new(),
            stop_issuing: false,
            expiring: BTreeMap::new(),
            max_skew,
            creates_refused: 0,
            crashed_hint_stats: (0, 0),
            cfg,
        }
    }

    /// Node `i`'s clocks: the simulated time on its monotonic clock, and the simulated time
    /// plus its skew on its wall clock.
    pub(crate) fn node_now(&self, i: usize) -> Now {
        Now {
            mono: self.now,
            wall: self.now.saturating_add_signed(self.nodes[i].skew),
        }
    }

    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        id.strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .filter(|i: &usize| *i < self.nodes.len())
    }

    /// Moves node `i`'s outputs into the network and the client histories.
    pub(crate) fn drain(&mut self, i: usize) {
        let outs = match self.nodes[i].core.as_mut() {
            Some(c) => c.drain(),
            None => return,
        };
        for out in outs {
            match out {
                Output::Send { to, message } => {
                    let Some(j) = self.index_of(&to) else {
                        continue;
                    };
                    let instance = self.nodes[i].member.instance;
                    let delay = if self.cfg.faults.delay {
                        self.rng.range(1, 50)
                    } else {
                        self.rng.range(1, 3)
                    };
                    if self.severed(i, j) || (self.loss && self.rng.chance(0.05)) {
                        self.dropped += 1;
                        continue;
                    }
                    self.at(
                        self.now + delay,
                        Ev::Deliver {
                            from: i,
                            instance,
                            to: j,
                            message,
                        },
                    );
                }
                Output::Respond { client, response } => self.answer(client, response),
                Output::Persist(member) => self.nodes[i].history.push(member),
                Output::PersistEnded(e) => self.nodes[i].ended.push(e),
            }
        }
    }
    /// Hints kept anywhere in the cluster (a removed node's hints died with it, and a node
    /// that ended hands nothing over).
    pub(crate) fn hints_pending(&self) -> usize {
        self.in_cluster()
            .into_iter()
            .map(|i| {
                self.nodes[i]
                    .store
                    .scan_hints(None, usize::MAX)
                    .map_or(0, |h| h.len())
            })
            .sum()
    }

    /// The spare node that joins during the run, if any.
    pub(crate) fn spare(&self) -> Option<usize> {
        self.nodes.iter().position(|n| !n.joined)
    }

    /// Nodes that are members of the cluster: started, not crashed for good, not removed, and
    /// not ended (left, or told it was removed or stale).
    pub(crate) fn in_cluster(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                n.joined
                    && !n.retired
                    && !n.removed
                    && !n.ended()
                    && n.core
                        .as_ref()
                        .is_none_or(|c| c.me().status != dynamokv_core::membership::Status::Left)
            })
            .collect()
    }

    /// Whether every member believes every other member is up.
    pub(crate) fn all_up(&self) -> bool {
        let members = self.in_cluster();
        members.iter().all(|i| {
            self.nodes[*i]
                .core
                .as_ref()
                .is_some_and(|c| members.iter().all(|o| c.is_up(&self.nodes[*o].member.id)))
        })
    }

    /// Whether every live member holds the same membership records and ring (an instance
    /// that ended hears nothing more).
    pub(crate) fn views_agree(&self) -> bool {
        let mut views = self
            .nodes
            .iter()
            .filter(|n| !n.ended())
            .filter_map(|n| n.core.as_ref())
            .map(|c| (c.ring().version(), c.members()));
        let Some(first) = views.next() else {
            return true;
        };
        views.all(|v| v == first)
    }

    /// After the heal: every node holds the same membership view and ring version.
    pub(crate) fn check_membership(&mut self) {
        let views: Vec<(String, u64, BTreeMap<String, Member>)> = self
            .nodes
            .iter()
            .filter(|n| !n.ended())
            .filter_map(|n| n.core.as_ref())
            .map(|c| (c.id().to_owned(), c.ring().version(), c.members().clone()))
            .collect();
        if let Some((first, version, members)) = views.first() {
            for (id, v, m) in &views[1..] {
                if v != version || m != members {
                    self.violations.push(Violation::Membership {
                        what: format!("{id} and {first} disagree on the membership view or ring version after the heal"),
                    });
                    return;
                }
            }
            let started = self.nodes.iter().filter(|n| n.joined).count();
            if members.len() != started {
                self.violations.push(Violation::Membership {
                    what: format!(
                        "the view has {} members, the cluster {}",
                        members.len(),
                        started
                    ),
                });
            }
        }
    }
}

/// The member record of simulated node `i` (id `nNNN`, address `sim:i`) with `status`.
fn sim_member(i: usize, vnodes: u16, status: dynamokv_core::membership::Status) -> Member {
    let id = format!("n{i:03}");
    Member {
        tokens: hashed_tokens(&id, vnodes),
        // Each node's data directory is its own instance.
        instance: i as u64 + 1,
        epoch: 0,
        id,
        generation: EPOCH,
        version: 1,
        status,
        peer_addr: format!("sim:{i}"),
        http_addr: format!("sim:{i}"),
    }
}
