//! The run loop: one event queue ordered by (time, sequence number), the network's deliveries,
//! ticks, client steps and fault events, every one hashed into the trace.
//!
//! Over 700 lines: the loop and the fault scenarios it plays live together because every
//! scenario steps the same event queue; the scenarios are the part to move out into a module of
//! their own when the file next grows.

use crate::EPOCH;
use crate::checker::{Outcome, Violation, WriteRecord};
use crate::world::{Ev, Sim, key_name};
use crate::{Report, TICK_MS};
use dynamokv_core::membership::Member;
use dynamokv_core::message::{
    CollectMessage, GossipMessage, HandoffMessage, HandoverMessage, KvMessage, Message, SyncMessage,
};
use dynamokv_core::node::Admission;
use dynamokv_core::node::startup::{self, Directory, NewActor, Setup};
use dynamokv_core::store::LocalStore;
use dynamokv_core::{ActorId, Object};
use dynamokv_storage::{Engine, MemoryEngine, ObjectStore, Space, WriteBatch};
use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

fn message_kind(m: &Message) -> (u8, &[u8]) {
    match m {
        Message::Kv(KvMessage::Forward { request, .. }) => (0, request.key()),
        Message::Kv(KvMessage::ForwardReply { .. }) => (1, &[]),
        Message::Kv(KvMessage::Replicate { key, .. }) => (2, key),
        Message::Kv(KvMessage::ReplicateAck { .. }) => (3, &[]),
        Message::Kv(KvMessage::Read { key, .. }) => (4, key),
        Message::Kv(KvMessage::ReadReply { .. }) => (5, &[]),
        Message::Kv(KvMessage::Repair { key, .. }) => (6, key),
        Message::Gossip(GossipMessage::Syn { .. }) => (7, &[]),
        Message::Gossip(GossipMessage::SynAck { .. }) => (8, &[]),
        Message::Gossip(GossipMessage::Ack { .. }) => (9, &[]),
        Message::Gossip(GossipMessage::Restarted { .. }) => (19, &[]),
        Message::Handoff(HandoffMessage::Deliver { key, .. }) => (10, key),
        Message::Handoff(HandoffMessage::Ack { .. }) => (11, &[]),
        Message::Sync(m) => (12 + sync_kind(m), &[]),
        Message::Collect(CollectMessage::Reap { .. }) => (19, &[]),
        Message::Handover(HandoverMessage::Offer { .. }) => (20, &[]),
        Message::Handover(HandoverMessage::Ack { .. }) => (21, &[]),
        Message::List(_) => (22, &[]),
    }
}

fn sync_kind(m: &SyncMessage) -> u8 {
    match m {
        SyncMessage::Root { .. } => 0,
        SyncMessage::RootReply { .. } => 1,
        SyncMessage::Leaves { .. } => 2,
        SyncMessage::Keys { .. } => 3,
        SyncMessage::Push { .. } => 4,
        SyncMessage::Pull { .. } => 5,
        SyncMessage::Refused { .. } => 6,
    }
}

impl Sim {
    pub(crate) fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((time, self.seq)));
        self.events.insert(self.seq, ev);
    }

    pub(crate) fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = line();
            self.trace.push(format!("{:>8} {l}", self.now - EPOCH));
        }
    }

    pub(crate) fn hash(&mut self, parts: &[u64], bytes: &[u8]) {
        for p in parts {
            self.hasher.update(&p.to_le_bytes());
        }
        self.hasher.update(bytes);
    }
    pub(crate) fn step(&mut self, time: u64, ev: Ev) {
        self.now = time;
        match ev {
            Ev::Deliver {
                from,
                instance,
                to,
                message,
            } => {
                let (kind, key) = message_kind(&message);
                let (kind, key) = (kind, key.to_vec());
                self.hash(&[time, 1, from as u64, to as u64, kind.into()], &key);
                if self.nodes[to].core.is_none() || self.severed(from, to) {
                    self.dropped += 1;
                    return;
                }
                if self.nodes[to].paused {
                    self.nodes[to].held.push(Ev::Deliver {
                        from,
                        instance,
                        to,
                        message,
                    });
                    return;
                }
                if self.nodes[to].slow_ms > 0 && !self.on_time {
                    let late = time + self.nodes[to].slow_ms;
                    let ev = Ev::Deliver {
                        from,
                        instance,
                        to,
                        message,
                    };
                    return self.at(late, Ev::Late(Box::new(ev)));
                }
                let now = self.node_now(to);
                let from_id = self.nodes[from].member.id.clone();
                let admission = self.nodes[to]
                    .core
                    .as_ref()
                    .map(|c| c.admits(&from_id, instance));
                match admission {
                    Some(Admission::Admitted) => {
                        self.delivered += 1;
                        if let Some(core) = self.nodes[to].core.as_mut() {
                            core.step(now, &from_id, message);
                        }
                        self.drain(to);
                    }
                    Some(Admission::Ended(e)) => {
                        // The transport closes the connection and tells the sender.
                        self.dropped += 1;
                        self.tell_ended(from, instance, e);
                    }
                    _ => self.dropped += 1,
                }
            }
            Ev::Request {
                to,
                client,
                request,
            } => {
                self.hash(&[time, 2, to as u64, client], request.key());
                if self.nodes[to].core.is_none() {
                    return;
                }
                if self.nodes[to].paused {
                    self.nodes[to].held.push(Ev::Request {
                        to,
                        client,
                        request,
                    });
                    return;
                }
                if self.nodes[to].slow_ms > 0 && !self.on_time {
                    let late = time + self.nodes[to].slow_ms;
                    let ev = Ev::Request {
                        to,
                        client,
                        request,
                    };
                    return self.at(late, Ev::Late(Box::new(ev)));
                }
                let now = self.node_now(to);
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.request(now, client, request);
                }
                self.drain(to);
            }
            Ev::Tick => {
                self.hash(&[time, 3], &[]);
                for i in 0..self.nodes.len() {
                    if self.nodes[i].paused {
                        continue;
                    }
                    let now = self.node_now(i);
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.tick(now);
                    }
                    self.drain(i);
                }
                self.at(time + TICK_MS, Ev::Tick);
            }
            Ev::ClientNext(c) => {
                self.hash(&[time, 4, c as u64], &[]);
                self.client_next(c);
            }
            Ev::ClientTimeout(c, op) => {
                if !self.ops[op].done {
                    self.hash(&[time, 5, c as u64, op as u64], &[]);
                    self.log(|| format!("client {c} op {op} timed out"));
                    self.ops[op].done = true;
                    self.ops[op].outcome = Some(Outcome::Unknown);
                    self.pending.retain(|_, v| *v != (c, op));
                    self.finish_op(c);
                }
            }
            Ev::Crash(i) => {
                self.hash(&[time, 6, i as u64], &[]);
                if let Some(dead) = self.nodes[i].core.take() {
                    self.crashed_hint_stats.0 += dead.stats().hints_stored;
                    self.crashed_hint_stats.1 += dead.stats().hints_delivered;
                    self.log(|| format!("crash n{i:03}"));
                    self.nodes[i].paused = false;
                    self.nodes[i].held.clear();
                    let id = self.nodes[i].member.id.clone();
                    for j in 0..self.nodes.len() {
                        let now = self.node_now(j);
                        if let Some(core) = self.nodes[j].core.as_mut() {
                            core.peer_down(now, &id);
                        }
                        self.drain(j);
                    }
                }
            }
            Ev::Stop(i) => {
                self.hash(&[time, 21, i as u64], &[]);
                if let Some(floor) = self.nodes[i].core.as_ref().map(|c| c.counter_floor())
                    && !self.nodes[i].paused
                {
                    self.log(|| format!("stop n{i:03} cleanly"));
                    self.nodes[i].counter_floor = floor;
                    self.step(time, Ev::Crash(i));
                    self.nodes[i].next_start = None;
                }
            }
            Ev::LoseDisk(i) => {
                self.hash(&[time, 22, i as u64], &[]);
                if self.nodes[i].joined && !self.nodes[i].retired && !self.nodes[i].removed {
                    self.log(|| format!("n{i:03} loses its data directory"));
                    self.wipe(i);
                }
            }
            Ev::Restart(i) => {
                self.hash(&[time, 7, i as u64], &[]);
                if self.nodes[i].core.is_none()
                    && !self.nodes[i].retired
                    && !self.nodes[i].removed
                    && self.nodes[i].joined
                {
                    self.log(|| format!("restart n{i:03}"));
                    self.start_node(i);
                }
            }
            Ev::Join(i) => {
                self.hash(&[time, 14, i as u64], &[]);
                if !self.nodes[i].joined {
                    self.log(|| format!("join n{i:03}"));
                    // It knows the cluster from a seed, as a node started with --seeds would.
                    let view: Vec<dynamokv_core::membership::Member> = self
                        .nodes
                        .iter()
                        .find_map(|n| n.core.as_ref())
                        .map(|c| c.members().values().cloned().collect())
                        .unwrap_or_default();
                    self.nodes[i].history = view;
                    self.nodes[i].joined = true;
                    self.start_node(i);
                }
            }
            Ev::Leave(i) => {
                self.hash(&[time, 15, i as u64], &[]);
                if let Some(core) = self.nodes[i].core.as_mut() {
                    let left = core.leave();
                    self.log(|| format!("leave n{i:03}: {left:?}"));
                    self.drain(i);
                }
            }
            Ev::Retire(i) => {
                self.hash(&[time, 16, i as u64], &[]);
                self.log(|| format!("retire n{i:03}"));
                self.nodes[i].retired = true;
                let instance = self.nodes[i].member.instance;
                self.nodes[i].lost.insert(instance);
                self.disks_lost();
                self.at(time, Ev::Crash(i));
            }
            Ev::Remove { victim, by } => {
                self.hash(&[time, 17, victim as u64, by as u64], &[]);
                let id = self.nodes[victim].member.id.clone();
                let result = self.nodes[by].core.as_mut().map(|c| c.remove(&id, true));
                self.log(|| format!("remove n{victim:03} by n{by:03}: {result:?}"));
                match result {
                    Some(Ok(())) => {
                        self.drain(by);
                        self.nodes[victim].removed = true;
                        let instance = self.nodes[victim].member.instance;
                        self.nodes[victim].lost.insert(instance);
                        self.disks_lost();
                        // A node removed while cut off is reachable again a little later.
                        if self.isolated.contains(&victim) {
                            let heal = self.rng.range(1_000, 5_000);
                            self.at(time + heal, Ev::Unisolate(victim));
                        }
                    }
                    // Still believed up, or the asked node is down: try again soon.
                    _ => self.at(time + 1_000, Ev::Remove { victim, by }),
                }
            }
            Ev::Isolate(i) => {
                self.hash(&[time, 18, i as u64], &[]);
                self.log(|| format!("isolate n{i:03}"));
                self.isolated.insert(i);
            }
            Ev::Unisolate(i) => {
                self.hash(&[time, 19, i as u64], &[]);
                self.log(|| format!("unisolate n{i:03}"));
                self.isolated.remove(&i);
            }
            Ev::CopyDir(i) => {
                self.hash(&[time, 20, i as u64], &[]);
                if self.nodes[i].core.is_some() && !self.nodes[i].paused {
                    self.log(|| format!("copy the data directory of n{i:03}"));
                    self.step(time, Ev::Crash(i));
                    let n = &self.nodes[i];
                    let copy = (copy_store(&n.store), n.history.clone(), n.ended.clone());
                    self.nodes[i].copy = Some(copy);
                    self.start_node(i);
                }
            }
            Ev::Pause(i) => {
                self.hash(&[time, 8, i as u64], &[]);
                if self.nodes[i].core.is_some() {
                    self.log(|| format!("pause n{i:03}"));
                    self.nodes[i].paused = true;
                }
            }
            Ev::Resume(i) => {
                self.hash(&[time, 9, i as u64], &[]);
                if self.nodes[i].paused {
                    self.log(|| format!("resume n{i:03}"));
                    self.nodes[i].paused = false;
                    let held = std::mem::take(&mut self.nodes[i].held);
                    for ev in held {
                        self.step(time, ev);
                    }
                }
            }
            Ev::Slow(i, ms) => {
                self.hash(&[time, 22, i as u64, ms], &[]);
                self.log(|| format!("n{i:03} handles everything {ms} ms late"));
                self.nodes[i].slow_ms = ms;
            }
            Ev::Late(ev) => {
                // Handled now, however slow the node is meanwhile (the delay was served).
                self.on_time = true;
                self.step(time, *ev);
                self.on_time = false;
            }
            Ev::Cut(links) => {
                self.hash(&[time, 10, links.len() as u64], &[]);
                self.log(|| format!("cut {links:?}"));
                self.cut.extend(links);
            }
            Ev::Heal(links) => {
                self.hash(&[time, 11, links.len() as u64], &[]);
                self.log(|| format!("heal {links:?}"));
                for l in links {
                    self.cut.remove(&l);
                }
            }
            Ev::Loss(on) => {
                self.hash(&[time, 12, u64::from(on)], &[]);
                self.log(|| format!("loss {on}"));
                self.loss = on;
            }
            Ev::ClockStep(i, delta) => {
                self.hash(&[time, 13, i as u64, delta as u64], &[]);
                self.log(|| format!("n{i:03} wall clock steps by {delta} ms"));
                self.nodes[i].skew += delta;
                self.max_skew = self.max_skew.max(self.nodes[i].skew.unsigned_abs());
            }
        }
    }

    /// Whether messages from `from` to `to` are lost to a cut link or an isolated node.
    pub(crate) fn severed(&self, from: usize, to: usize) -> bool {
        self.cut.contains(&(from, to))
            || self.isolated.contains(&from)
            || self.isolated.contains(&to)
    }

    /// Node `to` refused a message or a handshake of instance `instance` of node `i`, which
    /// ended: `i` is told (the transport's `Ended` frame), if that instance still runs.
    fn tell_ended(&mut self, i: usize, instance: u64, e: dynamokv_core::membership::Ended) {
        if let Some(c) = self.nodes[i].core.as_mut()
            && c.me().instance == instance
        {
            c.on_ended(e);
        }
        self.drain(i);
    }

    /// Starts node `i` from what its data directory holds, through the one startup path
    /// (`dynamokv_core::node::startup`, as the server does): its history, its endings, its
    /// instance, and its actor - the same one with its counter floor after a clean stop, a new
    /// one after a crash or on a new directory. Then it handshakes with every live node both
    /// ways. Refused, as the server refuses it, when its own instance ended (it left, was
    /// removed or found stale, and knows it).
    pub(crate) fn start_node(&mut self, i: usize) {
        let n = &self.nodes[i];
        let new_actor = n.next_start;
        let actor = match new_actor {
            None => n.actor,
            Some(_) => ActorId(self.rng.next_u64()),
        };
        let n = &self.nodes[i];
        let dir = Directory {
            node_id: n.member.id.clone(),
            instance: n.member.instance,
            known: n.history.clone(),
            ended: n.ended.clone(),
            actor,
            new_actor,
            counter_floor: n.counter_floor,
        };
        let setup = Setup {
            config: self.cfg.node,
            vnodes: self.cfg.vnodes,
            // A node with no history came through seeds (the spare, a wiped node).
            seeds: true,
            peer_addr: n.member.peer_addr.clone(),
            http_addr: n.member.http_addr.clone(),
        };
        let seed = self.rng.next_u64();
        let now = self.node_now(i);
        let started = startup::start(&dir, &setup, self.nodes[i].store.clone(), now, seed);
        let mut core = match started {
            Ok(core) => core,
            Err(e) => {
                self.log(|| format!("n{i:03} refuses to start: its instance ended ({e:?})"));
                return;
            }
        };
        self.nodes[i].actor = actor;
        // Until it stops cleanly, its next start is after a crash.
        self.nodes[i].next_start = Some(NewActor::UncleanShutdown);
        self.nodes[i].member = core.me().clone();
        let now = self.node_now(i);
        core.tick(now);
        self.nodes[i].core = Some(core);
        // Handshakes, both ways: each side learns the record the other presents, refuses an
        // instance that ended (telling it) and connects otherwise. (In this simulator a cut
        // link loses messages but keeps connections, so a start connects across one too.)
        let (id, instance) = (
            self.nodes[i].member.id.clone(),
            self.nodes[i].member.instance,
        );
        for j in 0..self.nodes.len() {
            if j == i || self.nodes[j].core.is_none() {
                continue;
            }
            let (Some(mi), Some(mj)) = (
                self.nodes[i].core.as_ref().map(|c| c.me().clone()),
                self.nodes[j].core.as_ref().map(|c| c.me().clone()),
            ) else {
                continue;
            };
            if let Some(c) = self.nodes[j].core.as_mut() {
                c.learn(&[mi]);
            }
            if let Some(c) = self.nodes[i].core.as_mut() {
                c.learn(std::slice::from_ref(&mj));
            }
            let by_j = self.nodes[j].core.as_ref().map(|c| c.admits(&id, instance));
            let by_i = self.nodes[i]
                .core
                .as_ref()
                .map(|c| c.admits(&mj.id, mj.instance));
            // (A record not taken yet - an instance not current here - still connects, as the
            // transport does: its messages are dropped until its record counts.)
            match (by_j, by_i) {
                (Some(Admission::Ended(e)), _) => self.tell_ended(i, instance, e),
                (_, Some(Admission::Ended(e))) => self.tell_ended(j, mj.instance, e),
                _ => {
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.peer_up(&mj.id);
                    }
                    if let Some(c) = self.nodes[j].core.as_mut() {
                        c.peer_up(&id);
                    }
                }
            }
            self.drain(j);
        }
        self.drain(i);
    }

    /// Node `i` loses its data directory (it crashes if it runs): a new, empty directory - a
    /// new instance - which learns the cluster through a seed when it starts, as a node
    /// started with `--seeds` does.
    pub(crate) fn wipe(&mut self, i: usize) {
        if self.nodes[i].core.is_some() {
            self.step(self.now, Ev::Crash(i));
        }
        let now = self.now;
        let n = &mut self.nodes[i];
        n.lost.insert(n.member.instance);
        n.disk_replaced.push(now);
        n.store = Arc::new(ObjectStore::new(Arc::new(MemoryEngine::new())));
        n.ended = Vec::new();
        n.member.instance += 1_000;
        n.next_start = Some(NewActor::NewDirectory);
        n.copy = None;
        self.disks_lost();
        // What the seed's handshake and first gossip teach it.
        let view: Vec<Member> = self
            .in_cluster()
            .into_iter()
            .find_map(|j| self.nodes[j].core.as_ref())
            .map(|c| c.members().values().cloned().collect())
            .unwrap_or_default();
        self.nodes[i].history = view;
    }

    /// Node `i`'s data directory is wiped and it starts again through a seed: a new instance,
    /// which joins (receiving its ranges from their current owners).
    pub(crate) fn rejoin(&mut self, i: usize) {
        self.log(|| format!("n{i:03} is wiped and joins again as a new instance"));
        self.wipe(i);
        self.nodes[i].retired = false;
        self.nodes[i].removed = false;
        self.start_node(i);
    }

    pub(crate) fn run_until(&mut self, end: u64) {
        while let Some(Reverse((time, seq))) = self.queue.peek().copied() {
            if time > end {
                break;
            }
            self.queue.pop();
            if let Some(ev) = self.events.remove(&seq) {
                self.step(time, ev);
            }
        }
        self.now = end;
    }

    /// Whether every key's primaries hold the same copy, and no other live node a copy.
    pub(crate) fn converged(&self) -> bool {
        let keys = (0..self.cfg.keys).map(key_name);
        keys.chain(self.lifecycle_keys()).all(|key| {
            let primaries = self.primaries(&key);
            let mut copies = primaries
                .iter()
                .map(|p| self.nodes[*p].store.get(&key).ok().flatten());
            let first = copies.next().flatten();
            copies.all(|c| c == first) && self.misplaced(&key, &primaries).is_empty()
        })
    }

    /// Members that are not primaries of `key` but hold a copy of it (an instance that ended
    /// keeps what it held on its disk, and hands nothing over).
    pub(crate) fn misplaced(&self, key: &[u8], primaries: &[usize]) -> Vec<usize> {
        self.in_cluster()
            .into_iter()
            .filter(|i| !primaries.contains(i) && self.nodes[*i].core.is_some())
            .filter(|i| self.nodes[*i].store.get(key).ok().flatten().is_some())
            .collect()
    }

    /// Repair by anti-entropy alone: no client reads. Every node starts a round with every
    /// other replica of each of its ranges, again every few seconds, until every key's
    /// primaries agree and the views too (or two simulated minutes pass: the checker then
    /// reports them).
    fn repair_until_converged(&mut self) {
        let deadline = self.now + 120_000;
        let mut next_round = self.now;
        while !(self.converged() && self.views_agree()) && self.now < deadline {
            if self.now >= next_round {
                for i in 0..self.nodes.len() {
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.repair();
                    }
                }
                next_round = self.now + 5_000;
            }
            let next = self.now + 250;
            self.run_until(next);
        }
    }

    /// Once the cluster settled (tombstones of the workload's deletes collected): a removed
    /// node's machine starts again on its old data directory, and a node's directory is put
    /// back from an older copy of itself. Neither may bring a deleted value back. Then every
    /// node that was removed or found stale is wiped and joins again as a new instance.
    fn returns_from_the_past(&mut self) {
        let mut back = false;
        for i in 0..self.nodes.len() {
            if self.nodes[i].removed && self.nodes[i].core.is_none() {
                self.log(|| format!("n{i:03} starts again on the data of a removed instance"));
                self.start_node(i);
                back = true;
            }
        }
        for i in 0..self.nodes.len() {
            let Some((store, history, ended)) = self.nodes[i].copy.take() else {
                continue;
            };
            if self.nodes[i].core.is_none() || !self.in_cluster().contains(&i) {
                continue;
            }
            self.log(|| format!("n{i:03} starts again on an older copy of its data directory"));
            self.step(self.now, Ev::Crash(i));
            let n = &mut self.nodes[i];
            (n.store, n.history, n.ended) = (store, history, ended);
            n.lost.insert(n.member.instance);
            n.disk_replaced.push(self.now);
            self.disks_lost();
            self.start_node(i);
            back = true;
        }
        if !back {
            return;
        }
        let end = self.now + 10_000;
        self.run_until(end);
        let gone: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                n.removed
                    || n.core
                        .as_ref()
                        .and_then(|c| c.ended())
                        .is_some_and(|e| e.how != dynamokv_core::membership::Ending::Left)
            })
            .collect();
        for &i in &gone {
            let why = self.nodes[i].core.as_ref().and_then(|c| c.ended().cloned());
            self.log(|| format!("n{i:03} ended: {why:?}"));
            self.rejoin(i);
        }
        let deadline = self.now + 60_000;
        let joined = |sim: &Sim| {
            gone.iter().all(|i| {
                sim.nodes[*i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.me().status == dynamokv_core::membership::Status::Up)
            })
        };
        while !(joined(self) && self.all_up()) && self.now < deadline {
            let next = self.now + 250;
            self.run_until(next);
        }
        if !joined(self) {
            self.violations.push(Violation::Membership {
                what: "a wiped node did not finish joining again within 60 s".into(),
            });
        }
        if !self.all_up() {
            self.violations.push(Violation::Membership {
                what: "some node believes a live peer is down 60 s after the wiped nodes joined"
                    .into(),
            });
        }
        self.repair_until_converged();
    }

    pub(crate) fn all_done(&self) -> bool {
        self.issued >= self.cfg.ops && self.clients.iter().all(|c| c.busy.is_none())
    }

    /// Runs the workload with faults, heals, settles, and checks.
    pub fn run(mut self) -> Report {
        self.at(self.now, Ev::Tick);
        for c in 0..self.clients.len() {
            self.at(self.now + c as u64, Ev::ClientNext(c));
        }
        // Faults hit while the workload runs (roughly 10 ms per operation per client).
        let window = (self.cfg.ops as u64 * 10 / self.cfg.clients.max(1) as u64).max(2000);
        self.schedule_faults(self.now + 100, self.now + window);
        // Run until the workload is done (bounded).
        let limit = self.now + window * 20 + 60_000;
        while !self.all_done() && self.now < limit {
            let next = self.now + 100;
            self.run_until(next);
        }
        self.stop_issuing = true;
        // Heal everything.
        self.run_until(self.now.max(EPOCH + window + 3000));
        let t = self.now + 1;
        for i in 0..self.nodes.len() {
            self.at(t, Ev::Restart(i));
            self.at(t, Ev::Resume(i));
        }
        let all: Vec<(usize, usize)> = self.cut.iter().copied().collect();
        self.at(t, Ev::Heal(all));
        self.at(t, Ev::Loss(false));
        self.run_until(t + 3000);
        // Wait (bounded) until every node believes every other is up again (and a node being
        // removed while cut off is removed and reachable again).
        let deadline = self.now + 60_000;
        while !(self.all_up() && self.hints_pending() == 0 && self.isolated.is_empty())
            && self.now < deadline
        {
            let next = self.now + 250;
            self.run_until(next);
        }
        if self.hints_pending() > 0 {
            self.violations.push(Violation::Membership {
                what: format!(
                    "{} hints still undelivered 60 s after the heal",
                    self.hints_pending()
                ),
            });
        }
        if !self.all_up() {
            self.violations.push(Violation::Membership {
                what: "some node still believes a live peer is down 60 s after the faults healed"
                    .into(),
            });
        }
        self.repair_until_converged();
        if self.cfg.faults.membership {
            self.returns_from_the_past();
        }
        // Every key on exactly its N owners: none left behind on a node that lost its range.
        let keys: Vec<Vec<u8>> = (0..self.cfg.keys)
            .map(key_name)
            .chain(self.lifecycle_keys())
            .collect();
        for key in keys {
            let primaries = self.primaries(&key);
            for i in self.misplaced(&key, &primaries) {
                self.violations.push(Violation::Misplaced {
                    key: key.clone(),
                    node: self.nodes[i].member.id.clone(),
                });
            }
        }
        // Final state of every key on its primaries.
        let mut replicas: BTreeMap<Vec<u8>, Vec<(String, Option<Object>)>> = BTreeMap::new();
        let keys = (0..self.cfg.keys).map(key_name).chain(self.create_keys());
        for key in keys {
            let copies = self
                .primaries(&key)
                .into_iter()
                .map(|p| {
                    (
                        self.nodes[p].member.id.clone(),
                        self.nodes[p].store.get(&key).ok().flatten(),
                    )
                })
                .collect();
            replicas.insert(key, copies);
        }
        let lifecycle = self.check_lifecycle();
        let writes: Vec<WriteRecord> = self
            .ops
            .iter()
            .filter_map(|o| {
                let (value, context, _) = o.write.clone()?;
                // A write whose every holder at acknowledgement later lost its disk (or was
                // removed, or put back on an older copy) may be gone: W copies were all on
                // disks that no longer count.
                let lost_with_its_disks = o.excused
                    || (!o.holders.is_empty()
                        && o.holders
                            .iter()
                            .all(|(h, instance)| self.nodes[*h].lost.contains(instance)));
                let outcome = match o.outcome.unwrap_or(Outcome::Unknown) {
                    Outcome::Ok if lost_with_its_disks => Outcome::Unknown,
                    other => other,
                };
                Some(WriteRecord {
                    key: o.key.clone(),
                    value,
                    context,
                    outcome,
                    dot: o.dot,
                })
            })
            .collect();
        self.check_membership();
        let mut violations = std::mem::take(&mut self.violations);
        violations.extend(crate::checker::check(&writes, &replicas));
        let count = |f: &dyn Fn(&Outcome) -> bool| {
            self.ops
                .iter()
                .filter(|o| o.outcome.as_ref().is_some_and(f))
                .count()
        };
        let _ = self.ops.iter().map(|o| o.client).max();
        Report {
            seed: self.cfg.seed,
            ops: self.ops.len(),
            ok: count(&|o| *o == Outcome::Ok),
            failed: count(&|o| matches!(o, Outcome::Failed { .. })),
            unknown: count(&|o| *o == Outcome::Unknown),
            faults: self.faults,
            delivered: self.delivered,
            dropped: self.dropped,
            sim_ms: self.now - EPOCH,
            trace_hash: self.hasher.digest(),
            hints_stored: self.crashed_hint_stats.0
                + self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref())
                    .map(|c| c.stats().hints_stored)
                    .sum::<u64>(),
            hints_delivered: self.crashed_hint_stats.1
                + self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref())
                    .map(|c| c.stats().hints_delivered)
                    .sum::<u64>(),
            ae_keys_repaired: self
                .nodes
                .iter()
                .filter_map(|n| n.core.as_ref())
                .map(|c| c.anti_entropy_stats().keys_repaired)
                .sum(),
            tombstones_collected: self
                .nodes
                .iter()
                .filter_map(|n| n.core.as_ref())
                .map(|c| c.anti_entropy_stats().tombstones_collected)
                .sum(),
            lifecycle,
            violations,
            trace: std::mem::take(&mut self.trace),
        }
    }
}

/// A copy of a node's data directory: every entry of every keyspace.
pub(crate) fn copy_store(store: &ObjectStore) -> Arc<ObjectStore> {
    let from = store.engine();
    let to = MemoryEngine::new();
    for space in Space::ALL {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let start = match &after {
                Some(k) => Bound::Excluded(k.as_slice()),
                None => Bound::Unbounded,
            };
            let page = from
                .scan(space, start, Bound::Unbounded, 1024)
                .unwrap_or_default();
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            let mut b = WriteBatch::new();
            for (k, v) in page {
                b.put(space, k, v);
            }
            let _ = to.write(b);
        }
    }
    Arc::new(ObjectStore::new(Arc::new(to)))
}
