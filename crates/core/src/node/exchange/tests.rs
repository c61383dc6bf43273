//! Anti-entropy between the workers of replicas over in-memory stores - the exchange, the
//! tombstone collector and the moved-data handover, wired as the node wires them - messages
//! delivered in order.

use super::*;
use crate::clock::Now;
use crate::membership::Rings;
use crate::message::{Message, SyncMessage};
use crate::node::NodeConfig;
use crate::node::collector::Collector;
use crate::node::handover::Handover;
use crate::node::info::AntiEntropyStats;
use crate::node::outbox::{Outbox, Output};
use crate::node::proofs::Proofs;
use crate::node::tracked::Tracked;
use crate::node::trees::Trees;
use crate::node::worker::StorageErrors;
use crate::ring::{Ring, hashed_tokens, position};
use crate::testing::MemoryStore;
use crate::version::{ActorId, Object, VersionVector};
use std::collections::BTreeSet;

/// A shared background budget that never runs out (these tests are about the protocol).
fn unlimited() -> Throttle {
    Throttle::new(1 << 40, usize::MAX)
}

/// What the workers of one replica share, as the node holds it.
struct State {
    trees: Trees,
    proofs: Proofs,
    errors: StorageErrors,
    store: Tracked<MemoryStore>,
}

/// One replica: its workers, and what they share.
struct Replica {
    state: State,
    exchange: Exchange,
    collector: Collector,
    handover: Handover,
    up: bool,
}

fn config() -> NodeConfig {
    NodeConfig {
        anti_entropy_interval_ms: 1_000,
        anti_entropy_keys_per_sec: 100_000,
        anti_entropy_bytes_per_sec: 1 << 30,
        anti_entropy_sessions: 4,
        request_timeout_ms: 1_000,
        tombstone_min_age_ms: 1_000,
        ..NodeConfig::default()
    }
}

/// The workers' context at `now` over `state`, sending into `out`.
fn ctx<'a>(
    state: &'a mut State,
    now: u64,
    me: &'a str,
    rings: &'a Rings,
    is_up: &'a dyn Fn(&str) -> bool,
    budget: &'a mut Throttle,
    out: &'a mut Outbox,
) -> Ctx<'a, MemoryStore> {
    Ctx {
        now: Now {
            mono: now,
            wall: now,
        },
        me,
        rings,
        is_up,
        share: 1.0,
        budget,
        store: &state.store,
        trees: &mut state.trees,
        proofs: &mut state.proofs,
        errors: &mut state.errors,
        out,
    }
}

impl Replica {
    fn new() -> Replica {
        Replica {
            state: State {
                trees: Trees::default(),
                proofs: Proofs::new(),
                errors: StorageErrors::default(),
                store: Tracked::new(MemoryStore::default()),
            },
            exchange: Exchange::new(config().exchange()),
            collector: Collector::new(config().collector()),
            handover: Handover::new(config().handover()),
            up: true,
        }
    }

    fn stats(&self) -> AntiEntropyStats {
        let s = &self.state;
        AntiEntropyStats::of(
            &self.exchange,
            &self.collector,
            &self.handover,
            &s.trees,
            &s.proofs,
            &s.errors,
        )
    }

    fn rebuilding(&self) -> bool {
        self.state.proofs.rebuilding()
    }

    /// Time passed: the workers' turn, as the node gives it.
    fn tick(&mut self, now: u64, me: &str, rings: &Rings, is_up: &dyn Fn(&str) -> bool) -> Outbox {
        let (mut out, mut budget) = (Outbox::default(), unlimited());
        let mut c = ctx(
            &mut self.state,
            now,
            me,
            rings,
            is_up,
            &mut budget,
            &mut out,
        );
        self.exchange.tick(&mut c);
        c.follow_writes();
        self.collector.tick(&mut c);
        c.follow_writes();
        self.handover.tick(&mut c);
        c.follow_writes();
        out
    }

    /// A message to this replica, dispatched by family as the node does.
    fn receive(&mut self, now: u64, me: &str, rings: &Rings, from: &str, m: Message) -> Outbox {
        let (mut out, mut budget) = (Outbox::default(), unlimited());
        let all = |_: &str| true;
        let mut c = ctx(&mut self.state, now, me, rings, &all, &mut budget, &mut out);
        match m {
            Message::Sync(m) => self.exchange.on_message(&mut c, from, m),
            Message::Collect(m) => self.collector.on_message(&mut c, from, m),
            Message::Handover(m) => self.handover.on_message(&mut c, from, m),
            _ => {}
        }
        out
    }
}

struct Lab {
    ring: Rings,
    nodes: BTreeMap<String, Replica>,
    now: u64,
}

fn obj(actor: u64, value: &str) -> Object {
    Object::new().update(
        ActorId(actor),
        &VersionVector::new(),
        Some(value.as_bytes().to_vec()),
        1,
    )
}

impl Lab {
    fn new(ids: &[&str]) -> Lab {
        let tokens = ids
            .iter()
            .map(|id| (id.to_string(), hashed_tokens(id, 8)))
            .collect();
        Lab {
            ring: {
                let r = Ring::new(&tokens).unwrap();
                Rings {
                    current: r.clone(),
                    future: r.clone(),
                    all: r,
                }
            },
            nodes: ids
                .iter()
                .map(|id| (id.to_string(), Replica::new()))
                .collect(),
            now: 1_000,
        }
    }

    fn write(&mut self, id: &str, key: &[u8], o: &Object) {
        let s = &mut self.nodes.get_mut(id).unwrap().state;
        s.store.merge(key, o).unwrap();
        for c in s.store.take_changes() {
            s.trees.apply(&c);
        }
    }

    /// The node loses its disk: a new, empty store and new workers.
    fn wipe(&mut self, id: &str) {
        *self.nodes.get_mut(id).unwrap() = Replica::new();
    }

    /// Runs `ms` of time in 20 ms ticks, delivering every message at once.
    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        let up: BTreeSet<String> = self
            .nodes
            .iter()
            .filter(|(_, r)| r.up)
            .map(|(id, _)| id.clone())
            .collect();
        let is_up = |n: &str| up.contains(n);
        while self.now < end {
            self.now += 20;
            let mut queue: VecDeque<(String, String, Message)> = VecDeque::new();
            for (id, r) in self.nodes.iter_mut().filter(|(_, r)| r.up) {
                let out = r.tick(self.now, id, &self.ring, &is_up);
                queue.extend(sends(id, out));
            }
            while let Some((from, to, m)) = queue.pop_front() {
                let Some(r) = self.nodes.get_mut(&to).filter(|r| r.up) else {
                    continue;
                };
                let out = r.receive(self.now, &to, &self.ring, &from, m);
                queue.extend(sends(&to, out));
            }
        }
    }

    fn object(&self, id: &str, key: &[u8]) -> Option<Object> {
        self.nodes[id].state.store.inner().object(key)
    }
}

fn sends(from: &str, mut out: Outbox) -> Vec<(String, String, Message)> {
    out.drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send { to, message } => Some((from.to_owned(), to, message)),
            _ => None,
        })
        .collect()
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("key-{i}").into_bytes()).collect()
}

#[test]
fn a_wiped_replica_gets_every_key_back_without_reads() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    for k in keys(500) {
        for id in ["a", "b", "c"] {
            lab.write(id, &k, &obj(1, "v"));
        }
    }
    lab.run(3_000);
    assert!(
        lab.nodes["a"].stats().in_sync > 0,
        "equal trees compare equal"
    );
    lab.wipe("c");
    assert_eq!(lab.object("c", b"key-7"), None);
    lab.run(5_000);
    for k in keys(500) {
        assert_eq!(lab.object("c", &k), Some(obj(1, "v")), "{k:?}");
    }
    let repaired: u64 = lab.nodes.values().map(|r| r.stats().keys_repaired).sum();
    assert_eq!(repaired, 500, "each key repaired once, on the wiped node");
}

#[test]
fn divergent_replicas_converge_both_ways_with_the_one_merge() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    for (i, k) in keys(200).iter().enumerate() {
        match i % 3 {
            0 => lab.write("a", k, &obj(1, "only-a")),
            1 => {
                lab.write("a", k, &obj(1, "x"));
                lab.write("b", k, &obj(2, "y"));
            }
            _ => lab.write("c", k, &obj(3, "only-c")),
        }
    }
    lab.run(5_000);
    for (i, k) in keys(200).iter().enumerate() {
        let expected = match i % 3 {
            0 => obj(1, "only-a"),
            1 => obj(1, "x").merge(&obj(2, "y")),
            _ => obj(3, "only-c"),
        };
        for id in ["a", "b", "c"] {
            assert_eq!(lab.object(id, k).as_ref(), Some(&expected), "{id} {k:?}");
        }
    }
    // And once converged, the trees say so.
    let before: u64 = lab.nodes.values().map(|r| r.stats().keys_repaired).sum();
    lab.run(3_000);
    let after: u64 = lab.nodes.values().map(|r| r.stats().keys_repaired).sum();
    assert_eq!(before, after, "nothing left to repair");
}

#[test]
fn a_down_replica_is_skipped_and_caught_up_when_back() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    lab.nodes.get_mut("c").unwrap().up = false;
    for k in keys(50) {
        lab.write("a", &k, &obj(1, "v"));
    }
    lab.run(3_000);
    assert!(lab.nodes["a"].stats().round.is_some() || lab.nodes["a"].stats().last_round > 0);
    assert_eq!(lab.object("b", b"key-1"), Some(obj(1, "v")));
    assert_eq!(lab.object("c", b"key-1"), None);
    lab.nodes.get_mut("c").unwrap().up = true;
    lab.run(3_000);
    for k in keys(50) {
        assert_eq!(lab.object("c", &k), Some(obj(1, "v")));
    }
}

#[test]
fn a_tree_built_across_ticks_with_writes_in_between_equals_a_fresh_build() {
    let mut lab = Lab::new(&["a"]);
    let store = Tracked::new(MemoryStore::default());
    for k in keys(3000) {
        store.merge(&k, &obj(1, "old")).unwrap();
    }
    let _ = store.take_changes();
    let mut trees = Trees::default();
    trees.reshape(&lab.ring, "a", 3);
    let mut round = 0;
    loop {
        // Writes before and after the build's cursor, and deletes, between pages.
        for (i, k) in keys(3000).iter().enumerate().skip(round).step_by(97) {
            if i % 2 == 0 {
                store.merge(k, &obj(2, "new")).unwrap();
            } else {
                store.remove_if(k, &store.get(k).unwrap().unwrap()).unwrap();
            }
        }
        for c in store.take_changes() {
            trees.apply(&c);
        }
        if trees.build(&store, 100).unwrap() == 0 {
            break;
        }
        round += 1;
    }
    let mut fresh = Trees::default();
    fresh.reshape(&lab.ring, "a", 3);
    fresh.build(&store, usize::MAX).unwrap();
    let ranges: Vec<Range> = trees.peers().keys().copied().collect();
    assert!(round > 10, "the build took many pages");
    for r in ranges {
        let (a, b) = (trees.get_mut(&r).unwrap(), fresh.get_mut(&r).unwrap());
        assert!(a.ready() && b.ready());
        let (ka, kb) = (a.tree.keys(), b.tree.keys());
        assert_eq!((a.tree.root(), ka), (b.tree.root(), kb));
    }
    lab.nodes.clear();
}

#[test]
fn a_corrupt_tree_is_rebuilt_and_changes_no_value() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    for k in keys(100) {
        for id in ["a", "b", "c"] {
            lab.write(id, &k, &obj(1, "v"));
        }
    }
    lab.run(2_000);
    // A key that is not in storage lands in a's tree: the trees now disagree with the data.
    let bogus = b"key-7";
    let pos = position(bogus);
    let r = lab.nodes.get_mut("a").unwrap();
    let range = r.state.trees.range_of(pos).unwrap();
    r.state
        .trees
        .get_mut(&range)
        .unwrap()
        .tree
        .update(pos, bogus, None, Some(&[9; 16]));
    lab.run(5_000);
    assert!(lab.nodes["a"].stats().trees_rebuilt >= 1);
    for k in keys(100) {
        for id in ["a", "b", "c"] {
            assert_eq!(lab.object(id, &k), Some(obj(1, "v")));
        }
    }
    let in_sync = lab.nodes["a"].stats().in_sync;
    lab.run(3_000);
    assert!(
        lab.nodes["a"].stats().in_sync > in_sync,
        "in sync again after the rebuild"
    );
}

#[test]
fn rebuilding_ends_once_every_range_synchronised() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    for k in keys(100) {
        lab.write("a", &k, &obj(1, "v"));
        lab.write("b", &k, &obj(1, "v"));
    }
    let r = lab.nodes.get_mut("c").unwrap();
    r.state.trees.reshape(&lab.ring, "c", 3);
    r.state.proofs.start_rebuilding();
    r.exchange.force_round();
    assert!(lab.nodes["c"].rebuilding());
    lab.run(5_000);
    assert!(!lab.nodes["c"].rebuilding());
    assert_eq!(lab.object("c", b"key-3"), Some(obj(1, "v")));
}

#[test]
fn sessions_begun_before_a_salvage_do_not_count_towards_the_rebuild() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    for k in keys(100) {
        for id in ["a", "b", "c"] {
            lab.write(id, &k, &obj(1, "v"));
        }
    }
    lab.run(3_000);
    // c starts a round; its roots are in flight when the salvage drops one of its records.
    let up = |_: &str| true;
    lab.now += 20;
    let c = lab.nodes.get_mut("c").unwrap();
    c.exchange.force_round();
    let in_flight = sends("c", c.tick(lab.now, "c", &lab.ring, &up));
    assert!(!in_flight.is_empty(), "sessions in flight");
    c.state.store.inner().lose(b"key-3");
    // What the node does when told of the salvage.
    c.state.trees.rebuild_all();
    c.exchange.abandon_sessions();
    c.state.proofs.start_rebuilding();
    c.exchange.force_round();
    let left = c.stats().rebuilding_ranges;
    assert!(left > 0);
    // The peers answer the old roots: equal. That proves nothing about what c holds now.
    let mut answers = Vec::new();
    for (from, to, m) in in_flight {
        let r = lab.nodes.get_mut(&to).unwrap();
        answers.extend(sends(&to, r.receive(lab.now, &to, &lab.ring, &from, m)));
    }
    assert!(!answers.is_empty());
    let c = lab.nodes.get_mut("c").unwrap();
    for (from, _, m) in answers {
        let _ = c.receive(lab.now, "c", &lab.ring, &from, m);
    }
    assert_eq!(lab.nodes["c"].stats().rebuilding_ranges, left);
    assert!(lab.nodes["c"].rebuilding());
    lab.run(5_000);
    assert!(!lab.nodes["c"].rebuilding());
    assert_eq!(lab.object("c", b"key-3"), Some(obj(1, "v")));
}

#[test]
fn a_stranger_or_a_key_outside_the_range_changes_nothing() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    lab.run(200);
    let r = lab.nodes.get_mut("a").unwrap();
    let range = *r.state.trees.peers().keys().next().unwrap();
    let outside = (0..1000)
        .map(|i| format!("x{i}").into_bytes())
        .find(|k| !range.contains(position(k)))
        .unwrap();
    let inside = (0..1000)
        .map(|i| format!("x{i}").into_bytes())
        .find(|k| range.contains(position(k)))
        .unwrap();
    let ring = lab.ring.clone();
    let push = |from: &str, key: &[u8], r: &mut Replica| {
        let m = SyncMessage::Push {
            session: 1,
            range,
            objects: vec![(key.to_vec(), obj(9, "evil"))],
            want: vec![],
        };
        r.receive(1, "a", &ring, from, m.into()).drain()
    };
    let answer = push("mallory", &inside, r);
    assert!(matches!(
        &answer[..],
        [Output::Send {
            message: Message::Sync(SyncMessage::Refused { .. }),
            ..
        }]
    ));
    push("b", &outside, r);
    assert_eq!(r.state.store.inner().object(&inside), None);
    assert_eq!(r.state.store.inner().object(&outside), None);
    push("b", &inside, r);
    assert_eq!(
        r.state.store.inner().object(&inside),
        Some(obj(9, "evil")),
        "a replica's push merges"
    );
}

fn deleted(o: &Object) -> Object {
    o.update(ActorId(1), &o.context(), None, 5)
}

#[test]
fn tombstones_are_collected_once_every_replica_holds_them() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    let ks = keys(30);
    for k in &ks {
        for id in ["a", "b", "c"] {
            lab.write(id, k, &deleted(&obj(1, "v")));
        }
    }
    lab.write("a", b"alive", &obj(1, "v"));
    lab.write("b", b"alive", &obj(1, "v"));
    lab.write("c", b"alive", &obj(1, "v"));
    // Collection waits for a first pass proving no node holds moved keys (10 s after start).
    lab.run(20_000);
    for k in &ks {
        for id in ["a", "b", "c"] {
            assert_eq!(lab.object(id, k), None, "{id} {k:?}");
        }
    }
    assert_eq!(
        lab.object("c", b"alive"),
        Some(obj(1, "v")),
        "values are never collected"
    );
    let collected: u64 = lab
        .nodes
        .values()
        .map(|r| r.stats().tombstones_collected)
        .sum();
    assert_eq!(collected, 90, "every replica's copy went");
    assert!(lab.nodes.values().all(|r| r.stats().tombstones == 0));
}

/// `value` written by actor 1, expiring at `deadline`.
fn expiring(value: &str, deadline: u64) -> Object {
    let stamp = crate::version::Stamp {
        expires: Some(deadline),
        kind: crate::version::ValueKind::Bytes,
    };
    Object::new().update_stamped(
        ActorId(1),
        &VersionVector::new(),
        Some(value.as_bytes().to_vec()),
        1,
        0,
        stamp,
    )
}

#[test]
fn expired_values_are_collected_like_tombstones_and_never_earlier() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    // Some keys expire 25 s in, others only in an hour.
    let soon = lab.now + 25_000;
    let ks = keys(30);
    for (i, k) in ks.iter().enumerate() {
        let deadline = if i % 3 == 0 { soon + 3_600_000 } else { soon };
        for id in ["a", "b", "c"] {
            lab.write(id, k, &expiring("v", deadline));
        }
    }
    // Long after collection could run (see above), nothing went before its deadline.
    lab.run(20_000);
    for k in &ks {
        assert!(
            lab.object("a", k).is_some(),
            "{k:?} went before its deadline"
        );
    }
    // Past the deadline and the minimum age, the expired keys go from every replica.
    lab.run(20_000);
    for (i, k) in ks.iter().enumerate() {
        for id in ["a", "b", "c"] {
            assert_eq!(lab.object(id, k).is_some(), i % 3 == 0, "{id} {k:?}");
        }
    }
    let collected: u64 = lab
        .nodes
        .values()
        .map(|r| r.stats().tombstones_collected)
        .sum();
    assert_eq!(collected, 60);
}

#[test]
fn collection_waits_for_a_down_replica_and_the_delete_wins_when_it_returns() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    let ks = keys(30);
    for k in &ks {
        // c missed the delete: it still holds the value.
        lab.write("a", k, &deleted(&obj(1, "v")));
        lab.write("b", k, &deleted(&obj(1, "v")));
        lab.write("c", k, &obj(1, "v"));
    }
    lab.nodes.get_mut("c").unwrap().up = false;
    lab.run(10_000);
    for k in &ks {
        assert_eq!(
            lab.object("a", k),
            Some(deleted(&obj(1, "v"))),
            "kept while c is down"
        );
    }
    lab.nodes.get_mut("c").unwrap().up = true;
    lab.run(2_000);
    // Anti-entropy brings c the delete before anything is collected: no value comes back.
    for k in &ks {
        for id in ["a", "b", "c"] {
            let o = lab.object(id, k);
            assert!(o.is_none_or(|o| o.live().count() == 0), "{id} {k:?}");
        }
    }
    lab.run(20_000);
    for k in &ks {
        for id in ["a", "b", "c"] {
            assert_eq!(lab.object(id, k), None, "collected at last on {id}");
        }
    }
}

#[test]
fn a_pending_hint_anywhere_holds_collection_back() {
    let mut lab = Lab::new(&["a", "b", "c"]);
    let k = b"k".to_vec();
    for id in ["a", "b", "c"] {
        lab.write(id, &k, &deleted(&obj(1, "v")));
    }
    // b keeps an old value for some other owner: it might hand it back after collection.
    lab.nodes["b"]
        .state
        .store
        .put_hint("elsewhere", b"other", &obj(1, "v"))
        .unwrap();
    lab.run(20_000);
    for id in ["a", "b", "c"] {
        assert!(lab.object(id, &k).is_some(), "{id} kept its tombstone");
    }
}
