//! Scenario tests of the node state machine over the in-memory store and network.
//!
//! Over 700 lines on purpose: the whole file is tests (one harness and the scenarios it runs);
//! it splits when a concept's scenarios outgrow it.

use super::*;
use crate::membership::Delta;
use crate::message::{GossipMessage, QuorumKind, Reply};
use crate::ring::hashed_tokens;
use crate::testing::{MemoryStore, Network};
use crate::version::{Object, VersionVector};
use std::collections::BTreeMap;

/// Nodes wired together by the in-memory network (no delay: in order unless a link is cut).
struct Cluster {
    nodes: BTreeMap<String, Node<MemoryStore>>,
    net: Network,
    answers: BTreeMap<ClientId, crate::message::ClientResponse>,
    now: u64,
}

impl Cluster {
    fn new(count: usize) -> Cluster {
        let members: Vec<Member> = (0..count)
            .map(|i| Member {
                id: format!("n{i}"),
                generation: 1,
                version: 1,
                status: crate::membership::Status::Up,
                peer_addr: format!("p{i}"),
                http_addr: format!("h{i}"),
                tokens: hashed_tokens(&format!("n{i}"), 16),
                instance: 0,
                epoch: 0,
            })
            .collect();
        let mut nodes = BTreeMap::new();
        for (i, m) in members.iter().enumerate() {
            let mut n = Node::new(
                m.clone(),
                ActorId(i as u64),
                NodeConfig::default(),
                MemoryStore::default(),
                i as u64,
                &members,
                &[],
            );
            for other in &members {
                n.peer_up(&other.id);
            }
            nodes.insert(m.id.clone(), n);
        }
        Cluster {
            nodes,
            net: Network::new(0),
            answers: BTreeMap::new(),
            now: 1000,
        }
    }

    fn ids(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    fn t(&self) -> Now {
        Now::at(self.now)
    }

    /// Node `id` drops off the network (without anyone noticing).
    fn cut(&mut self, id: &str) {
        let all = self.ids();
        self.net.isolate(id, &all);
    }

    fn collect(&mut self, from: &str) {
        for out in self.nodes.get_mut(from).unwrap().drain() {
            match out {
                Output::Send { to, message } => {
                    self.net.send(self.now, from, &to, message);
                }
                Output::Persist(_) | Output::PersistEnded(_) => {}
                Output::Respond { client, response } => {
                    assert!(
                        self.answers.insert(client, response).is_none(),
                        "answered twice"
                    );
                }
            }
        }
    }

    fn run(&mut self) {
        while let Some((_, env)) = self.net.next_before(self.now) {
            let now = self.t();
            self.nodes
                .get_mut(&env.to)
                .unwrap()
                .step(now, &env.from, env.message);
            self.collect(&env.to);
        }
    }

    /// Node `id` dies: its links are cut and every other node learns it is down.
    fn kill(&mut self, id: &str) {
        self.cut(id);
        let now = self.t();
        for o in self.ids().into_iter().filter(|k| k != id) {
            self.nodes.get_mut(&o).unwrap().peer_down(now, id);
            self.collect(&o);
        }
    }

    /// Sends `req` to node `at` at time `now` and delivers what follows; the answer, if any,
    /// waits in `answers`.
    fn submit(&mut self, at: &str, now: Now, client: ClientId, req: ClientRequest) {
        self.nodes.get_mut(at).unwrap().request(now, client, req);
        self.collect(at);
        self.run();
    }

    /// Node `at`'s clock reads `now`.
    fn tick(&mut self, at: &str, now: Now) {
        self.nodes.get_mut(at).unwrap().tick(now);
        self.collect(at);
    }

    fn request(
        &mut self,
        at: &str,
        client: ClientId,
        req: ClientRequest,
    ) -> crate::message::ClientResponse {
        let now = self.t();
        self.submit(at, now, client, req);
        self.answers.remove(&client).expect("an answer")
    }

    fn put(
        &mut self,
        at: &str,
        key: &[u8],
        value: &[u8],
        context: Option<VersionVector>,
        w: Option<u8>,
    ) -> crate::message::ClientResponse {
        self.request(
            at,
            1,
            ClientRequest::Put {
                key: key.to_vec(),
                value: Some(value.to_vec()),
                context,
                w,
                pw: None,
                overwrite: false,
                expires_in_ms: None,
                condition: None,
            },
        )
    }

    fn get(&mut self, at: &str, key: &[u8]) -> Object {
        match self.request(
            at,
            2,
            ClientRequest::Get {
                key: key.to_vec(),
                r: None,
                pr: None,
            },
        ) {
            Ok(Reply::Read(o)) => o,
            other => panic!("get failed: {other:?}"),
        }
    }

    fn local(&self, node: &str, key: &[u8]) -> Option<Object> {
        self.nodes[node].store().object(key)
    }

    fn primaries(&self, key: &[u8]) -> Vec<String> {
        self.nodes["n0"].preference(key).primaries
    }
}

/// A put of `value` under `key` without context, with write quorum `w`.
fn put_request(key: &[u8], value: &[u8], w: Option<u8>) -> ClientRequest {
    ClientRequest::Put {
        key: key.to_vec(),
        value: Some(value.to_vec()),
        context: None,
        w,
        pw: None,
        overwrite: false,
        expires_in_ms: None,
        condition: None,
    }
}

fn values(o: &Object) -> Vec<Vec<u8>> {
    o.live().filter_map(|s| s.value.clone()).collect()
}

#[test]
fn write_anywhere_read_everywhere_on_exactly_n_replicas() {
    let mut c = Cluster::new(5);
    for k in 0..20u8 {
        let key = [b'k', k];
        let at = format!("n{}", k % 5);
        assert!(matches!(
            c.put(&at, &key, b"v", None, None),
            Ok(Reply::Written { .. })
        ));
        for reader in 0..5 {
            assert_eq!(
                values(&c.get(&format!("n{reader}"), &key)),
                vec![b"v".to_vec()]
            );
        }
        let primaries = c.primaries(&key);
        assert_eq!(primaries.len(), 3);
        for n in c.nodes.keys() {
            assert_eq!(
                c.local(n, &key).is_some(),
                primaries.contains(n),
                "{n} for key {k}"
            );
        }
    }
    let forwarded: u64 = c.nodes.values().map(|n| n.stats().forwarded).sum();
    assert!(forwarded > 0, "non-coordinators forwarded");
}

#[test]
fn writes_with_one_primary_down_and_w3_failure() {
    let mut c = Cluster::new(5);
    let key = b"key".to_vec();
    let primaries = c.primaries(&key);
    // Kill the coordinator itself: the next primary takes over.
    c.kill(&primaries[0]);
    let entry = c
        .nodes
        .keys()
        .find(|n| !primaries.contains(n))
        .unwrap()
        .clone();
    assert!(matches!(
        c.put(&entry, &key, b"v1", None, None),
        Ok(Reply::Written { .. })
    ));
    assert_eq!(values(&c.get(&entry, &key)), vec![b"v1".to_vec()]);
    // W=3 with a primary down still succeeds: a fallback stands in (sloppy quorum)...
    assert!(matches!(
        c.put(&entry, &key, b"v2", None, Some(3)),
        Ok(Reply::Written { .. })
    ));
    // ...unless the caller insists on primaries.
    match c.request(
        &entry,
        9,
        ClientRequest::Put {
            key: key.clone(),
            value: Some(b"v3".to_vec()),
            context: None,
            w: Some(3),
            pw: Some(3),
            overwrite: false,
            expires_in_ms: None,
            condition: None,
        },
    ) {
        Err(OpError::Unavailable {
            kind: QuorumKind::Write,
            primary_needed: 3,
            written: false,
            failed,
            ..
        }) => {
            assert_eq!(failed, vec![primaries[0].clone()]);
        }
        other => panic!("expected a quorum error, got {other:?}"),
    }
    assert!(matches!(
        c.put(&entry, &key, b"v2", None, Some(4)),
        Err(OpError::InvalidQuorum { value: 4, n: 3, .. })
    ));
}

#[test]
fn lost_messages_time_out_with_counts() {
    let mut c = Cluster::new(3);
    let key = b"x".to_vec();
    let primaries = c.primaries(&key);
    // The other two primaries silently drop everything (no peer_down).
    c.cut(&primaries[1]);
    c.cut(&primaries[2]);
    let coord = primaries[0].clone();
    let t = c.t();
    c.submit(&coord, t, 7, put_request(&key, b"v", None));
    assert!(c.answers.is_empty(), "no answer before the timeout");
    c.now += 2000;
    let t = c.t();
    c.tick(&coord, t);
    match c.answers.remove(&7) {
        Some(Err(OpError::Unavailable {
            answered: 1,
            written: true,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c.nodes[&coord].in_flight(), 0);
}

#[test]
fn read_repair_fixes_stale_replicas_and_skips_consistent_ones() {
    let mut c = Cluster::new(5);
    let key = b"r".to_vec();
    let primaries = c.primaries(&key);
    c.put(&primaries[0], &key, b"v1", None, None).unwrap();
    // The third primary misses the second write.
    c.cut(&primaries[2]);
    let ctx = c.local(&primaries[0], &key).unwrap().context();
    c.put(&primaries[0], &key, b"v2", Some(ctx), None).unwrap();
    c.net.heal_all();
    assert_eq!(
        values(&c.local(&primaries[2], &key).unwrap()),
        vec![b"v1".to_vec()]
    );
    let repairs_before: u64 = c.nodes.values().map(|n| n.stats().read_repairs).sum();
    assert_eq!(values(&c.get(&primaries[0], &key)), vec![b"v2".to_vec()]);
    assert_eq!(
        values(&c.local(&primaries[2], &key).unwrap()),
        vec![b"v2".to_vec()]
    );
    let repairs: u64 = c.nodes.values().map(|n| n.stats().read_repairs).sum();
    assert_eq!(repairs - repairs_before, 1);
    c.get(&primaries[0], &key);
    let again: u64 = c.nodes.values().map(|n| n.stats().read_repairs).sum();
    assert_eq!(again, repairs, "a consistent read repairs nothing");
}

#[test]
fn concurrent_writes_through_different_coordinators_become_siblings() {
    let mut c = Cluster::new(5);
    let key = b"s".to_vec();
    let primaries = c.primaries(&key);
    c.put(&primaries[0], &key, b"base", None, None).unwrap();
    let ctx = c.get(&primaries[0], &key).context();
    // Two coordinators (forced with hops > 0 by sending Forward directly) write with the same context.
    for (i, coord) in [&primaries[0], &primaries[1]].into_iter().enumerate() {
        let req = ClientRequest::Put {
            key: key.clone(),
            value: Some(vec![b'a' + i as u8]),
            context: Some(ctx.clone()),
            w: Some(3),
            pw: None,
            overwrite: false,
            expires_in_ms: None,
            condition: None,
        };
        c.net.send(
            c.now,
            "client",
            coord,
            KvMessage::Forward {
                id: 99,
                request: req,
                hops: 0,
            }
            .into(),
        );
    }
    c.nodes.insert(
        "client".into(),
        Node::new(
            Member {
                id: "client".into(),
                generation: 1,
                version: 1,
                status: crate::membership::Status::Up,
                peer_addr: String::new(),
                http_addr: String::new(),
                tokens: vec![1],
                instance: 0,
                epoch: 0,
            },
            ActorId(99),
            NodeConfig::default(),
            MemoryStore::default(),
            99,
            &[],
            &[],
        ),
    );
    c.run();
    let o = c.get(&primaries[2], &key);
    let mut vals = values(&o);
    vals.sort();
    assert_eq!(vals, vec![b"a".to_vec(), b"b".to_vec()]);
    // Reconcile with the merged context.
    c.put(&primaries[2], &key, b"ab", Some(o.context()), None)
        .unwrap();
    assert_eq!(values(&c.get(&primaries[1], &key)), vec![b"ab".to_vec()]);
}

#[test]
fn invalid_peer_messages_are_refused_without_panic() {
    let mut c = Cluster::new(3);
    let n = c.nodes.get_mut("n0").unwrap();
    n.drain();
    let t = Now::at(1);
    n.step(
        t,
        "n1",
        KvMessage::Replicate {
            id: 1,
            key: vec![],
            object: Object::new(),
            hint: None,
        }
        .into(),
    );
    n.step(
        t,
        "n1",
        KvMessage::Read {
            id: 2,
            key: vec![0; 5000],
        }
        .into(),
    );
    n.step(
        t,
        "n1",
        KvMessage::ReplicateAck {
            id: 12345,
            result: Ok(()),
        }
        .into(),
    );
    n.step(
        t,
        "n1",
        KvMessage::ForwardReply {
            id: 12345,
            response: Ok(Reply::Read(Object::new())),
        }
        .into(),
    );
    n.step(
        t,
        "n1",
        HandoffMessage::Ack {
            id: 12345,
            result: Ok(()),
        }
        .into(),
    );
    let out = n.drain();
    assert!(matches!(
        &out[0],
        Output::Send {
            message: Message::Kv(KvMessage::ReplicateAck { result: Err(e), .. }),
            ..
        } if !e.retryable()
    ));
    assert!(matches!(
        &out[1],
        Output::Send {
            message: Message::Kv(KvMessage::ReadReply { result: Err(e), .. }),
            ..
        } if !e.retryable()
    ));
    assert_eq!(out.len(), 2);
    assert_eq!(n.stats().rejected_messages, 1);
}

#[test]
fn sloppy_quorum_hints_and_handoff() {
    let mut c = Cluster::new(5);
    let key = b"h".to_vec();
    let primaries = c.primaries(&key);
    let down = primaries[2].clone();
    c.kill(&down);
    // W=3 still succeeds: the fallback's acknowledgement counts.
    assert!(matches!(
        c.put(&primaries[0], &key, b"v", None, Some(3)),
        Ok(Reply::Written { .. })
    ));
    let pref = c.nodes[&primaries[0]].preference(&key);
    let target = pref.targets.iter().find(|t| t.hint().is_some()).unwrap();
    let (fallback, owner) = (target.node.clone(), target.hint().map(str::to_owned));
    assert_eq!(owner.as_deref(), Some(down.as_str()));
    assert!(!primaries.contains(&fallback));
    assert_eq!(
        c.nodes[&fallback].store().hint_count(),
        1,
        "the fallback keeps a hint"
    );
    assert!(c.local(&fallback, &key).is_none(), "not in its own objects");
    assert_eq!(c.nodes[&fallback].stats().hints_stored, 1);
    // PW=3 refuses the sloppy write, saying how many primaries are there.
    match c.request(
        &primaries[0],
        5,
        ClientRequest::Put {
            key: key.clone(),
            value: Some(b"x".to_vec()),
            context: None,
            w: Some(2),
            pw: Some(3),
            overwrite: false,
            expires_in_ms: None,
            condition: None,
        },
    ) {
        Err(OpError::Unavailable {
            primary_needed: 3,
            primary_answered: 2,
            sent: false,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // The owner comes back: the hint goes home and is deleted.
    c.net.heal(&down);
    let ids: Vec<String> = c.nodes.keys().cloned().collect();
    for id in &ids {
        c.nodes.get_mut(id).unwrap().peer_up(&down);
        c.collect(id);
    }
    c.run();
    c.now += 2000;
    let t = c.t();
    c.tick(&fallback, t);
    c.run();
    assert_eq!(values(&c.local(&down, &key).unwrap()), vec![b"v".to_vec()]);
    assert!(
        c.nodes[&fallback].store().hint_count() == 0,
        "hint deleted after the ack"
    );
    assert_eq!(c.nodes[&fallback].stats().hints_delivered, 1);
}

fn mk(i: usize, generation: u64) -> Member {
    Member {
        id: format!("n{i}"),
        generation,
        version: 1,
        status: crate::membership::Status::Up,
        peer_addr: format!("p{i}"),
        http_addr: String::new(),
        tokens: hashed_tokens(&format!("n{i}"), 8),
        instance: 0,
        epoch: 0,
    }
}

/// A node for the gossip scenarios, which count messages: anti-entropy only on demand.
fn node(i: usize, known: &[Member]) -> Node<MemoryStore> {
    let me = known
        .iter()
        .find(|m| m.id == format!("n{i}"))
        .cloned()
        .unwrap_or_else(|| mk(i, 1));
    Node::new(
        me,
        ActorId(i as u64),
        NodeConfig {
            anti_entropy_interval_ms: 0,
            ..NodeConfig::default()
        },
        MemoryStore::default(),
        i as u64,
        known,
        &[],
    )
}

/// Delivers messages between `a` and `b` until neither has anything to say.
fn exchange(a: &mut Node<MemoryStore>, b: &mut Node<MemoryStore>, now: u64) -> usize {
    let mut sent = 0;
    loop {
        let mut quiet = true;
        for from in [0, 1] {
            let (src, dst) = if from == 0 {
                (&mut *a, &mut *b)
            } else {
                (&mut *b, &mut *a)
            };
            let (src_id, dst_id) = (src.id().to_owned(), dst.id().to_owned());
            for out in src.drain() {
                if let Output::Send { message, to } = out
                    && to == dst_id
                {
                    quiet = false;
                    sent += 1;
                    dst.step(Now::at(now), &src_id, message);
                }
            }
        }
        if quiet {
            return sent;
        }
    }
}

#[test]
fn gossip_spreads_members_and_ring_versions_converge() {
    let mut a = node(0, &[]);
    let mut b = node(1, &[]);
    assert!(b.learn(&[mk(2, 1)]));
    a.learn(&[mk(1, 1)]);
    b.learn(&[mk(0, 1)]);
    a.peer_up("n1");
    b.peer_up("n0");
    exchange(&mut a, &mut b, 10);
    assert_eq!(a.members().len(), 3);
    assert_eq!(b.members().len(), 3);
    assert_eq!(a.ring().version(), b.ring().version());
    assert_eq!(a.view().members, b.view().members);
    // Agreeing nodes exchange digests, plus the heartbeat that moved: syn, syn-ack, and an
    // ack carrying a's new heartbeat only.
    b.drain();
    a.tick(Now::at(2000));
    assert_eq!(exchange(&mut a, &mut b, 2000), 3);
    assert_eq!(a.view(), b.view());
}

#[test]
fn persisted_members_are_known_at_start_and_generation_rises() {
    let known = vec![mk(0, 5), mk(1, 7), mk(2, 1)];
    let mut n = Node::new(
        mk(0, 3),
        ActorId(0),
        NodeConfig::default(),
        MemoryStore::default(),
        0,
        &known,
        &[],
    );
    assert_eq!(n.members().len(), 3, "knows the cluster without seeds");
    assert_eq!(n.me().generation, 6, "above the persisted generation");
    assert_eq!(
        n.me().epoch,
        1,
        "the data directory's epoch rises at every start"
    );
    assert!(matches!(&n.drain()[..], [Output::Persist(m)] if m.generation == 6));
}

#[test]
fn silent_peers_are_suspected_and_readmitted_when_heard() {
    let mut a = node(0, &[mk(1, 1)]);
    a.peer_up("n1");
    a.drain();
    // n1's heartbeat arrives every second for a while...
    for t in 1..=20u64 {
        let delta = Delta {
            heartbeats: vec![("n1".into(), 1, t)],
            ..Delta::default()
        };
        a.step(Now::at(t * 1000), "n2", GossipMessage::Ack { delta }.into());
    }
    assert!(a.is_up("n1"));
    // ...then stops.
    a.tick(Now::at(40_000));
    assert!(!a.is_up("n1"), "phi {}", a.opinion("n1").phi);
    assert!(
        !a.ring_info()
            .members
            .iter()
            .find(|m| m.member.id == "n1")
            .unwrap()
            .up
    );
    // Hearing from it again re-admits it.
    a.step(
        Now::at(40_001),
        "n1",
        GossipMessage::Syn {
            digest: vec![],
            endings: 0,
        }
        .into(),
    );
    assert!(a.is_up("n1"));
}

/// The wall clock of `c.now` stepped back by `back` ms, the monotonic clock unmoved.
fn stepped_back(c: &Cluster, back: u64) -> Now {
    Now {
        mono: c.now,
        wall: c.now + 1_000_000 - back,
    }
}

#[test]
fn a_wall_clock_step_back_changes_no_timer() {
    let mut c = Cluster::new(5);
    c.now = 1_000_000;
    let key = b"clock".to_vec();
    let primaries = c.primaries(&key);
    let coord = primaries[0].clone();

    // Versions take the wall clock: a write stamped while the clock is 60 s behind says so.
    let t = stepped_back(&c, 60_000);
    c.submit(&coord, t, 1, put_request(&key, b"v", None));
    match c.answers.remove(&1) {
        Some(Ok(Reply::Written { object, .. })) => {
            let ts: Vec<u64> = object.live().map(|s| s.timestamp).collect();
            assert_eq!(ts, vec![t.wall]);
        }
        other => panic!("{other:?}"),
    }

    // A deadline set before the step still fires request_timeout_ms later on the monotonic
    // clock, though the wall clock now reads 58 s before the request was made.
    c.cut(&primaries[1]);
    c.cut(&primaries[2]);
    let t = c.t();
    c.submit(&coord, t, 2, put_request(&key, b"w", Some(3)));
    assert!(c.answers.is_empty());
    c.now += 2000;
    let t = stepped_back(&c, 60_000);
    c.tick(&coord, t);
    assert!(
        matches!(c.answers.remove(&2), Some(Err(OpError::Unavailable { .. }))),
        "the deadline fired on time"
    );
    c.net.heal_all();

    // Gossip keeps its interval: one round per second of monotonic time, whatever the wall
    // clock does.
    let n = c.nodes.get_mut(&coord).unwrap();
    n.drain();
    let mut rounds = 0;
    for step in 1..=5u64 {
        n.tick(Now {
            mono: 1_002_000 + step * 1000,
            wall: 900_000,
        });
        if n.drain().iter().any(|o| {
            matches!(
                o,
                Output::Send {
                    message: Message::Gossip(GossipMessage::Syn { .. }),
                    ..
                }
            )
        }) {
            rounds += 1;
        }
    }
    assert_eq!(rounds, 5, "a gossip round every second");

    // Handoff keeps its scan interval too: a hint goes home on the next scan.
    let mut c = Cluster::new(5);
    c.now = 1_000_000;
    let key = b"hinted".to_vec();
    let primaries = c.primaries(&key);
    let down = primaries[2].clone();
    c.kill(&down);
    assert!(matches!(
        c.put(&primaries[0], &key, b"h", None, Some(3)),
        Ok(Reply::Written { .. })
    ));
    let fallback = c.nodes[&primaries[0]]
        .preference(&key)
        .targets
        .iter()
        .find(|t| t.hint().is_some())
        .unwrap()
        .node
        .clone();
    c.net.heal(&down);
    for id in c.ids() {
        c.nodes.get_mut(&id).unwrap().peer_up(&down);
        c.collect(&id);
    }
    c.run();
    c.now += 1000;
    let t = stepped_back(&c, 60_000);
    c.tick(&fallback, t);
    c.run();
    assert_eq!(values(&c.local(&down, &key).unwrap()), vec![b"h".to_vec()]);
    assert_eq!(c.nodes[&fallback].store().hint_count(), 0);
}

#[test]
fn a_coordinator_whose_copy_was_collected_never_reissues_a_counter() {
    let mut c = Cluster::new(3);
    let at = c.primaries(b"k")[0].clone();
    let mut top = 0;
    for v in [&b"a"[..], b"b", b"c"] {
        let ctx = c.local(&at, b"k").map(|o| o.context());
        let Ok(Reply::Written { dot, .. }) = c.put(&at, b"k", v, ctx, None) else {
            panic!("write failed");
        };
        top = dot.counter;
    }
    assert!(top >= 3);
    // The key's copy goes (its tombstone collected here, say), but another replica may still
    // hold the old clock: the next dot must be above every counter issued before.
    let copy = c.local(&at, b"k").unwrap();
    assert!(c.nodes[&at].store().remove_if(b"k", &copy).unwrap());
    let Ok(Reply::Written { dot, .. }) = c.put(&at, b"k", b"d", None, None) else {
        panic!("write failed");
    };
    assert!(dot.counter > top, "{} after {top}", dot.counter);
    // And the floor survives a restart of the same actor.
    let floor = c.nodes[&at].counter_floor();
    assert_eq!(floor, dot.counter);
}

#[test]
fn an_overwrite_supersedes_what_its_coordinator_holds_but_not_unseen_writes() {
    let mut c = Cluster::new(3);
    let key = b"set".to_vec();
    let p = c.primaries(&key);
    let overwrite = |value: &[u8]| ClientRequest::Put {
        key: key.clone(),
        value: Some(value.to_vec()),
        context: None,
        w: Some(1),
        pw: None,
        overwrite: true,
        expires_in_ms: None,
        condition: None,
    };
    // Blind overwrites through one coordinator replace each other.
    c.request(&p[0], 1, overwrite(b"a")).unwrap();
    c.request(&p[0], 1, overwrite(b"b")).unwrap();
    assert_eq!(values(&c.get(&p[0], &key)), vec![b"b".to_vec()]);
    // A second coordinator that did not see the latest write writes concurrently: it replaces
    // what it holds ("b"), and both latest writes stay, as siblings. p[1] is cut off and
    // believes p[0] down, so it coordinates the key itself.
    c.cut(&p[1]);
    c.request(&p[0], 1, overwrite(b"c")).unwrap();
    let t = c.t();
    c.nodes.get_mut(&p[1]).unwrap().peer_down(t, &p[0]);
    c.collect(&p[1]);
    c.request(&p[1], 1, overwrite(b"d")).unwrap();
    c.net.heal_all();
    c.nodes.get_mut(&p[1]).unwrap().peer_up(&p[0]);
    let mut both = values(&c.get(&p[0], &key));
    both.sort();
    assert_eq!(both, vec![b"c".to_vec(), b"d".to_vec()]);
    // A plain blind put (no overwrite) through the same coordinator adds a sibling instead.
    c.put(&p[0], &key, b"e", None, Some(3)).unwrap();
    assert_eq!(values(&c.get(&p[0], &key)).len(), 3);
}

#[test]
fn a_silent_coordinator_is_skipped_for_the_next_primary_before_the_client_hears() {
    let mut c = Cluster::new(5);
    let key = b"fwd".to_vec();
    let p = c.primaries(&key);
    let other = c.ids().into_iter().find(|n| !p.contains(n)).unwrap();
    // The first primary drops everything and nobody has noticed yet.
    c.cut(&p[0]);
    let t = c.t();
    c.submit(&other, t, 9, put_request(&key, b"v", Some(2)));
    assert!(c.answers.is_empty(), "the first primary is silent");
    c.now += 1000;
    let t = c.t();
    c.tick(&other, t);
    c.run();
    assert!(
        matches!(c.answers.remove(&9), Some(Ok(Reply::Written { .. }))),
        "the next primary coordinated the put"
    );
    assert_eq!(c.nodes[&other].stats().forward_retries, 1);
}

#[test]
fn an_increment_forwarded_to_a_silent_coordinator_is_never_sent_on() {
    let mut c = Cluster::new(5);
    let key = b"fwd-ctr".to_vec();
    let p = c.primaries(&key);
    let other = c.ids().into_iter().find(|n| !p.contains(n)).unwrap();
    c.cut(&p[0]);
    let t = c.t();
    let incr = ClientRequest::Increment {
        key: key.clone(),
        by: 1,
        w: None,
        pw: None,
    };
    c.submit(&other, t, 9, incr);
    // The silent primary may have counted it: a second primary would count it again.
    for _ in 0..5 {
        c.now += 1000;
        let t = c.t();
        c.tick(&other, t);
        c.run();
    }
    assert_eq!(c.nodes[&other].stats().forward_retries, 0);
    let answer = c.answers.remove(&9);
    assert!(matches!(answer, Some(Err(_))), "{answer:?}");
    for id in &p[1..] {
        assert!(c.local(id, &key).is_none(), "{id} counted it");
    }
}

#[test]
fn a_failure_after_a_retried_forward_never_says_not_written() {
    let mut c = Cluster::new(5);
    let key = b"fwd-w".to_vec();
    let p = c.primaries(&key);
    let other = c.ids().into_iter().find(|n| !p.contains(n)).unwrap();
    // The first primary is silent (it may have stored the write); the second knows it is down
    // and refuses pw=3 at once, having written nothing itself.
    c.cut(&p[0]);
    let t = c.t();
    c.nodes.get_mut(&p[1]).unwrap().peer_down(t, &p[0]);
    c.collect(&p[1]);
    let strict = ClientRequest::Put {
        key: key.clone(),
        value: Some(b"v".to_vec()),
        context: None,
        w: Some(3),
        pw: Some(3),
        overwrite: false,
        expires_in_ms: None,
        condition: None,
    };
    c.submit(&other, t, 11, strict);
    c.now += 1000;
    let t = c.t();
    c.tick(&other, t);
    c.run();
    match c.answers.remove(&11) {
        Some(Err(OpError::Unavailable { written, .. })) => {
            assert!(written, "the silent first primary may hold the write")
        }
        other => panic!("{other:?}"),
    }
}

/// `mk(i, generation)` with its own data directory instance and an epoch.
fn mk_inst(i: usize, generation: u64, instance: u64, epoch: u64) -> Member {
    Member {
        instance,
        epoch,
        ..mk(i, generation)
    }
}

#[test]
fn a_removed_instance_is_refused_and_never_counts_again() {
    let known = [
        mk_inst(0, 1, 10, 1),
        mk_inst(1, 1, 11, 1),
        mk_inst(2, 1, 12, 1),
    ];
    let mut a = node(0, &known);
    a.drain();
    // n2 is down (never connected): it may be removed.
    assert_eq!(a.remove("n2", false), Ok(()));
    let out = a.drain();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PersistEnded(e) if e.id == "n2" && e.instance == 12)),
        "the ending is persisted: {out:?}"
    );
    assert!(!a.ring().nodes().iter().any(|n| n == "n2"));
    // Its machine starts again on its old data: a newer generation, the same instance.
    assert!(!a.learn(&[mk_inst(2, 9, 12, 2)]) || a.members()["n2"].status == Status::Left);
    assert_eq!(a.members()["n2"].status, Status::Left);
    assert!(
        !a.ring().nodes().iter().any(|n| n == "n2"),
        "it never re-enters the ring"
    );
    match a.admits("n2", 12) {
        Admission::Ended(e) => {
            assert_eq!(e.how, crate::membership::Ending::Removed);
            assert!(
                e.explain().contains("wipe the data directory"),
                "{}",
                e.explain()
            );
        }
        other => panic!("admitted {other:?}"),
    }
    assert_eq!(a.admits("n1", 11), Admission::Admitted);
    assert_eq!(
        a.admits("n1", 99),
        Admission::NotCurrent,
        "another instance of n1"
    );
    // Wiped and started again: a new instance, which joins as a new node.
    let mut fresh = mk_inst(2, 20, 13, 1);
    fresh.status = Status::Joining;
    assert!(a.learn(&[fresh]));
    assert_eq!(a.admits("n2", 13), Admission::Admitted);
    assert_eq!(a.members()["n2"].status, Status::Joining);
}

#[test]
fn a_start_on_an_older_copy_of_the_data_directory_ends_the_instance() {
    let known = [mk_inst(0, 1, 10, 1), mk_inst(1, 1, 11, 1)];
    let mut a = node(0, &known);
    // n1 restarted normally twice: epoch 3 is known.
    assert!(a.learn(&[mk_inst(1, 5, 11, 3)]));
    a.drain();
    // Its directory is put back from a copy taken at epoch 1: it starts with epoch 2.
    a.learn(&[mk_inst(1, 8, 11, 2)]);
    match a.admits("n1", 11) {
        Admission::Ended(e) => assert_eq!(e.how, crate::membership::Ending::Stale),
        other => panic!("admitted {other:?}"),
    }
    assert!(!a.ring().nodes().iter().any(|n| n == "n1"));
    assert!(
        a.drain()
            .iter()
            .any(|o| matches!(o, Output::PersistEnded(e) if e.id == "n1"))
    );
}

#[test]
fn a_copy_started_while_the_node_runs_is_refused_without_ending_it() {
    let known = [mk_inst(0, 1, 10, 1), mk_inst(1, 1, 11, 3)];
    let mut a = node(0, &known);
    a.peer_up("n1");
    a.drain();
    // Another process on a copy of n1's directory, while n1 is up here.
    assert!(!a.learn(&[mk_inst(1, 9, 11, 2)]));
    assert_eq!(a.identity_conflicts().0, 1);
    assert_eq!(
        a.admits("n1", 11),
        Admission::Admitted,
        "the real n1 goes on"
    );
    assert_eq!(a.members()["n1"].generation, 1);
}

#[test]
fn a_node_told_it_ended_stops_serving_and_keeps_the_end() {
    let known = [mk_inst(0, 1, 10, 1), mk_inst(1, 1, 11, 1)];
    let mut a = node(0, &known);
    a.drain();
    a.on_ended(crate::membership::Ended {
        id: "n0".into(),
        instance: 10,
        how: crate::membership::Ending::Removed,
        by: "n1".into(),
    });
    assert!(a.ended().is_some());
    assert_eq!(a.me().status, Status::Left);
    let out = a.drain();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::PersistEnded(e) if e.id == "n0"))
    );
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Persist(m) if m.id == "n0" && m.status == Status::Left))
    );
    a.request(Now::at(5), 1, put_request(b"k", b"v", None));
    match &a.drain()[..] {
        [Output::Respond { response, .. }] => {
            assert!(matches!(response, Err(OpError::NotAMember(m)) if m.contains("removed")))
        }
        other => panic!("{other:?}"),
    }
    // An ending about another instance of this id does not end this one.
    let mut b = node(1, &known);
    b.on_ended(crate::membership::Ended {
        id: "n1".into(),
        instance: 99,
        how: crate::membership::Ending::Removed,
        by: "n0".into(),
    });
    assert!(b.ended().is_none());
    // A start on a directory whose instance ended begins ended.
    let ended = [crate::membership::Ended {
        id: "n1".into(),
        instance: 11,
        how: crate::membership::Ending::Left,
        by: "n1".into(),
    }];
    let c = Node::new(
        mk_inst(1, 1, 11, 1),
        ActorId(1),
        NodeConfig::default(),
        MemoryStore::default(),
        1,
        &known,
        &ended,
    );
    assert!(c.ended().is_some());
}

#[test]
fn a_leave_that_completes_ends_the_instance() {
    let known = [mk_inst(0, 1, 10, 1), mk_inst(1, 1, 11, 1)];
    let mut a = node(0, &known);
    a.set_status(Status::Left);
    assert_eq!(
        a.ended().map(|e| e.how),
        Some(crate::membership::Ending::Left)
    );
    assert_eq!(a.members()["n0"].status, Status::Left);
    // Nothing brings it back.
    a.set_status(Status::Up);
    assert_eq!(a.me().status, Status::Left);
}

#[test]
fn the_data_directory_epoch_rises_at_start_and_every_minute() {
    let known = [mk_inst(0, 1, 10, 4), mk_inst(1, 1, 11, 1)];
    let mut a = node(0, &known);
    assert_eq!(a.me().epoch, 5, "above the persisted one");
    a.drain();
    a.tick(Now::at(1_000));
    a.drain();
    a.tick(Now::at(1_000 + cluster::EPOCH_INTERVAL_MS + 1));
    assert_eq!(a.me().epoch, 6);
    assert!(
        a.drain()
            .iter()
            .any(|o| matches!(o, Output::Persist(m) if m.id == "n0" && m.epoch == 6)),
        "persisted (the shell makes it durable before any peer hears of it)"
    );
}

#[test]
fn a_joining_node_whose_seeds_never_answer_stays_joining_and_takes_no_write() {
    // Found by the simulator (seed 1726 at 3 nodes): a node started with seeds while every seed
    // was down made a cluster of one and acknowledged W=2 writes it alone held.
    let mut me = mk(3, 1);
    me.status = Status::Joining;
    let mut a = node(3, std::slice::from_ref(&me));
    for t in (0..30_000).step_by(20) {
        a.tick(Now::at(t));
        a.drain();
    }
    assert_eq!(a.me().status, Status::Joining);
    a.request(Now::at(30_000), 1, put_request(b"k", b"v", None));
    match &a.drain()[..] {
        [Output::Respond { response, .. }] => assert!(response.is_err(), "{response:?}"),
        other => panic!("{other:?}"),
    }
    // Once it hears of a member, the join goes on (here: to a ring of its own tokens and
    // that member's).
    let other = mk(0, 1);
    assert!(a.learn(std::slice::from_ref(&other)));
}

#[test]
fn a_leave_or_removal_that_would_hand_ranges_to_a_down_member_is_refused_naming_it() {
    let known: Vec<Member> = (0..5).map(|i| mk(i, 1)).collect();
    // n0 has heard from nobody: every other member is down.
    let mut a = node(0, &known);
    a.drain();
    let why = a.leave().unwrap_err();
    assert!(
        why.contains("down and would take over ranges of n0")
            && why.contains("remove")
            && why.contains("% of the key space"),
        "{why}"
    );
    assert_eq!(a.me().status, crate::membership::Status::Up, "still up");
    let why = a.remove("n4", false).unwrap_err();
    assert!(why.contains("--force"), "{why}");
    let named = (1..4).any(|i| why.contains(&format!("n{i} (")));
    assert!(named, "the down gainer is named: {why}");
    assert!(a.ring().nodes().iter().any(|n| n == "n4"), "not removed");
    // Forced, the removal goes through.
    assert_eq!(a.remove("n4", true), Ok(()));
    assert!(!a.ring().nodes().iter().any(|n| n == "n4"));
}

#[test]
fn the_scrub_reads_every_object_and_a_salvage_that_lost_data_rebuilds_it() {
    let mut c = Cluster::new(3);
    for i in 0..50 {
        let r = c.put("n0", format!("s{i}").as_bytes(), b"v", None, Some(3));
        assert!(r.is_ok(), "{r:?}");
    }
    let now = c.t();
    c.tick("n1", now);
    assert_eq!(
        c.nodes["n1"].scrub_stats().passes,
        0,
        "not before its first pass is due"
    );
    c.now += scrub::FIRST_PASS_AFTER_MS + 1;
    let now = c.t();
    c.tick("n1", now);
    let scrub = c.nodes["n1"].scrub_stats();
    assert_eq!((scrub.passes, scrub.checked), (1, 50), "{scrub:?}");
    assert!(!scrub.running && scrub.next_pass_in_ms > 0, "{scrub:?}");

    // While a salvage runs, n1's copies do not count; one that kept everything changes
    // nothing else but the scrub's pass.
    c.nodes.get_mut("n1").unwrap().storage_salvage_begins();
    assert!(c.nodes["n1"].anti_entropy_stats().rebuilding);
    c.nodes.get_mut("n1").unwrap().storage_salvaged(false);
    assert!(!c.nodes["n1"].anti_entropy_stats().rebuilding);
    // One that dropped data: n1's copies stop counting until every range synchronised.
    c.nodes.get_mut("n1").unwrap().storage_salvaged(true);
    assert!(c.nodes["n1"].anti_entropy_stats().rebuilding);
    for _ in 0..600 {
        c.now += 100;
        let now = c.t();
        for id in c.ids() {
            c.tick(&id, now);
        }
        c.run();
        if !c.nodes["n1"].anti_entropy_stats().rebuilding {
            break;
        }
    }
    let ae = c.nodes["n1"].anti_entropy_stats();
    assert!(!ae.rebuilding, "rebuilt within a minute: {ae:?}");
}

#[test]
fn a_value_reads_as_absent_from_its_deadline_and_a_rewrite_keeps_no_deadline() {
    let mut c = Cluster::new(3);
    let put = |key: &[u8], value: &[u8], ttl: Option<u64>| ClientRequest::Put {
        key: key.to_vec(),
        value: Some(value.to_vec()),
        context: None,
        w: None,
        pw: None,
        overwrite: true,
        expires_in_ms: ttl,
        condition: None,
    };
    assert!(c.request("n0", 1, put(b"e", b"v", Some(1_000))).is_ok());
    assert_eq!(values(&c.get("n1", b"e")), vec![b"v".to_vec()]);
    let stored = c.local(&c.primaries(b"e")[0], b"e").unwrap();
    assert_eq!(stored.expires(), Some(c.now + 1_000), "{stored:?}");
    // One ms before the deadline it is there; at the deadline it is gone, everywhere.
    c.now += 999;
    assert_eq!(values(&c.get("n2", b"e")), vec![b"v".to_vec()]);
    c.now += 1;
    for id in c.ids() {
        let o = c.get(&id, b"e");
        assert!(o.live().next().is_none(), "{id}: {o:?}");
        assert!(
            !o.clock().is_empty(),
            "its context still covers the expired value"
        );
    }
    // A time to live of 0 is refused; a write without one keeps its value for good.
    assert!(matches!(
        c.request("n0", 1, put(b"e", b"w", Some(0))),
        Err(OpError::BadRequest(_))
    ));
    assert!(c.request("n0", 1, put(b"e", b"w", None)).is_ok());
    c.now += 5_000;
    assert_eq!(values(&c.get("n1", b"e")), vec![b"w".to_vec()]);
}

#[test]
fn counters_add_up_through_every_coordinator_and_refuse_other_kinds() {
    use crate::counter::PnCounter;
    let mut c = Cluster::new(3);
    let incr_at = |key: &[u8], by: i64, w: Option<u8>| ClientRequest::Increment {
        key: key.to_vec(),
        by,
        w,
        pw: None,
    };
    let incr = |by: i64| incr_at(b"hits", by, None);
    // Concurrent increments: n2 is cut off, so its increments become a sibling.
    c.cut("n2");
    let mut sum = 0;
    for (i, id) in ["n0", "n1", "n2", "n0"].into_iter().enumerate() {
        let by = (i as i64 + 1) * 10 - 25;
        let w = if id == "n2" { Some(1) } else { None };
        let r = c.request(id, 1, incr_at(b"hits", by, w));
        assert!(r.is_ok(), "{id}: {r:?}");
        sum += by;
    }
    c.net.heal_all();
    // Anti-entropy's work, done by hand: n2's copy merged into the others by a read repair.
    let o = c.get("n2", b"hits");
    assert!(o.live().count() >= 1);
    let r = c.request(
        "n0",
        2,
        ClientRequest::Get {
            key: b"hits".to_vec(),
            r: Some(3),
            pr: None,
        },
    );
    let Ok(Reply::Read(o)) = r else {
        panic!("{r:?}")
    };
    assert_eq!(PnCounter::of(&o, c.now).unwrap().value(), sum, "{o:?}");
    // A later increment supersedes the siblings it joined, keeps the sum and answers it,
    // through any coordinator (it reads at R first).
    for (i, id) in ["n1", "n2", "n0"].into_iter().enumerate() {
        let Ok(Reply::Written { object, .. }) = c.request(id, 1, incr(1)) else {
            panic!("increment at {id}")
        };
        assert_eq!(
            PnCounter::of(&object, c.now).unwrap().value(),
            sum + 1 + i as i64,
            "the answer of {id}"
        );
    }
    sum += 2;
    let o = c.get("n0", b"hits");
    assert_eq!(PnCounter::of(&o, c.now).unwrap().value(), sum + 1);
    // A plain write to the counter is refused, and so is an increment of a plain value or
    // past the 64-bit range; none changes anything.
    let r = c.put("n0", b"hits", b"text", None, None);
    assert!(matches!(r, Err(OpError::WrongType(_))), "{r:?}");
    assert!(c.put("n0", b"plain", b"text", None, None).is_ok());
    let r = c.request("n0", 1, incr_at(b"plain", 1, None));
    assert!(matches!(r, Err(OpError::WrongType(_))), "{r:?}");
    assert!(matches!(
        c.request("n0", 1, incr(i64::MAX)),
        Err(OpError::Overflow)
    ));
    let o = c.get("n0", b"hits");
    assert_eq!(PnCounter::of(&o, c.now).unwrap().value(), sum + 1);
    assert_eq!(values(&c.get("n0", b"plain")), vec![b"text".to_vec()]);
}

#[test]
fn a_conditional_put_is_checked_by_the_coordinator_against_a_read_at_r() {
    use crate::message::Condition;
    let mut c = Cluster::new(3);
    let put = |value: &[u8], condition: Condition, ttl: Option<u64>| ClientRequest::Put {
        key: b"cond".to_vec(),
        value: Some(value.to_vec()),
        context: None,
        w: None,
        pw: None,
        overwrite: false,
        expires_in_ms: ttl,
        condition: Some(condition),
    };
    // Present on a missing key fails; Absent writes, once.
    let r = c.request("n0", 1, put(b"x", Condition::Present, None));
    assert!(
        matches!(r, Err(OpError::PreconditionFailed { .. })),
        "{r:?}"
    );
    assert!(
        c.request("n1", 1, put(b"a", Condition::Absent, Some(1_000)))
            .is_ok()
    );
    let r = c.request("n2", 1, put(b"b", Condition::Absent, None));
    let Err(OpError::PreconditionFailed { context, .. }) = r else {
        panic!("{r:?}")
    };
    assert_eq!(values(&c.get("n0", b"cond")), vec![b"a".to_vec()]);
    // The context the failure carries is the current version: If-Match with it writes, and
    // replaces (no sibling); with it again, now stale, it fails.
    assert!(
        c.request(
            "n0",
            1,
            put(b"c", Condition::Version(context.clone()), Some(1_000))
        )
        .is_ok()
    );
    assert_eq!(values(&c.get("n1", b"cond")), vec![b"c".to_vec()]);
    let r = c.request("n1", 1, put(b"d", Condition::Version(context), None));
    assert!(
        matches!(r, Err(OpError::PreconditionFailed { .. })),
        "{r:?}"
    );
    // An expired value counts as absent: Absent writes over it, without a sibling.
    c.now += 1_000;
    assert!(
        c.request("n2", 1, put(b"e", Condition::Absent, None))
            .is_ok()
    );
    let o = c.get("n0", b"cond");
    assert_eq!(values(&o), vec![b"e".to_vec()]);
    assert_eq!(o.siblings().len(), 1, "{o:?}");
}

#[test]
fn a_counter_and_a_value_written_at_once_are_refused_until_deleted() {
    use crate::counter::{CounterError, PnCounter};
    let mut c = Cluster::new(3);
    // n2 is cut off: a value through n0 and an increment through n2 do not see each other.
    c.cut("n2");
    assert!(c.put("n0", b"mix", b"text", None, Some(2)).is_ok());
    let incr = |w: Option<u8>| ClientRequest::Increment {
        key: b"mix".to_vec(),
        by: 1,
        w,
        pw: None,
    };
    assert!(c.request("n2", 1, incr(Some(1))).is_ok());
    c.net.heal_all();
    let read = ClientRequest::Get {
        key: b"mix".to_vec(),
        r: Some(3),
        pr: None,
    };
    let Ok(Reply::Read(o)) = c.request("n0", 2, read) else {
        panic!("read")
    };
    assert_eq!(o.live().count(), 2, "both kinds kept: {o:?}");
    assert_eq!(PnCounter::of(&o, c.now), Err(CounterError::NotACounter));
    // Neither kind of write goes over both; a delete does, and then either starts again.
    assert!(matches!(
        c.request("n1", 1, incr(None)),
        Err(OpError::WrongType(_))
    ));
    let r = c.put("n1", b"mix", b"x", Some(o.context()), None);
    assert!(matches!(r, Err(OpError::WrongType(_))), "{r:?}");
    let del = ClientRequest::Put {
        key: b"mix".to_vec(),
        value: None,
        context: Some(o.context()),
        w: None,
        pw: None,
        overwrite: false,
        expires_in_ms: None,
        condition: None,
    };
    assert!(c.request("n1", 1, del).is_ok());
    let Ok(Reply::Written { object, .. }) = c.request("n2", 1, incr(None)) else {
        panic!("increment after the delete")
    };
    assert_eq!(PnCounter::of(&object, c.now).unwrap().value(), 1);
}
