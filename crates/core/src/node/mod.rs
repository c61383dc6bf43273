//! The node state machine, with no IO: the facade over one module per Dynamo concept.
//!
//! Inputs: [`Node::request`] for a client operation, [`Node::step`] for a peer message,
//! [`Node::tick`] for time passing, [`Node::peer_up`]/[`Node::peer_down`] for what the transport
//! sees. Every input takes [`Now`]: the monotonic clock for timers, the wall clock only for the
//! timestamps written into versions. Outputs collect in one [`Outbox`] ([`Node::drain`]):
//! messages to send, answers to clients, member records to persist.
//!
//! The concepts, each owning its state:
//! - [`cluster`]: membership view, ring, connections, failure detector, gossip;
//! - [`forward`]: who coordinates a request, and the requests forwarded to their coordinator;
//! - [`coordinator`]: the gets and puts coordinated here, their quorums and read repair;
//! - [`stamp`]: the version a write stores over the coordinator's copy (puts, increments,
//!   restores), within the object limits;
//! - [`replica`]: what a replica does with writes, reads, repairs and returning hints;
//! - [`trees`]: the Merkle trees of the ranges this node replicates, kept current by
//!   [`tracked`], the store's journal of writes;
//! - the background workers, one shape ([`worker`]: each owns its state and takes a context at
//!   every tick), each under its [`throttle`] and the [`scheduler`]'s one budget, which yields
//!   to foreground latency:
//!   - [`handoff`]: hints handed back to their owners;
//!   - [`exchange`]: anti-entropy's Merkle exchange with the other replicas of each range;
//!   - [`collector`]: tombstone collection once every replica holds a tombstone;
//!   - [`handover`]: keys of ranges no longer replicated here, handed to their owners;
//!   - [`scrub`]: every stored object read now and then, so damage on disk is found (and the
//!     node salvages its storage and rebuilds what it lost, [`Node::storage_salvaged`]);
//! - [`proofs`]: what the exchange proved (ranges equal with peers, the end of rebuilding lost
//!   data) and what the workers tell each other, read by [`rebalance`] and the collector;
//! - [`rebalance`]: this node's own join or leave, confirmed from the proofs;
//! - [`info`]: counters and the ring as operators and clients see it;
//! - [`listing`]: listing keys over a coverage plan (one replica per range), the `List` family;
//! - [`startup`]: how a node starts from its data directory (the server and the simulator);
//! - [`config`]: the settings ([`NodeConfig`]) and their defaults.
//!
//! Messages are dispatched by family ([`Message::Kv`], [`Message::Handoff`],
//! [`Message::Gossip`], [`Message::Sync`], [`Message::Collect`], [`Message::Handover`]); a new
//! concept brings its own family and module.
//!
//! Over 700 lines: the facade holds only delegation to the concept modules, plus the tick and
//! the entry points; what is left here is the order in which the modules are called, which is
//! clearest in one place.

pub mod cluster;
pub mod collector;
pub mod config;
pub mod coordinator;
pub mod exchange;
pub mod forward;
pub mod handoff;
pub mod handover;
pub mod info;
pub mod listing;
pub mod outbox;
pub mod proofs;
pub mod rebalance;
pub mod replica;
pub mod scheduler;
pub mod scrub;
pub mod stamp;
pub mod startup;
pub mod throttle;
pub mod tracked;
pub mod trees;
pub mod worker;

pub use config::NodeConfig;
pub use info::{AntiEntropyStats, CoordinatorLatency, MemberInfo, NodeStats, RingInfo};
pub use outbox::{Origin, Outbox, Output};

use crate::clock::Now;
use crate::failure_detector::Opinion;
use crate::limits;
use crate::membership::{Ended, Member, Status, View};
use crate::message::{ClientId, ClientRequest, HandoffMessage, KvMessage, Message, OpError};
use crate::preference::{PreferenceList, preference_list, with_pending};
use crate::ring::Ring;
use crate::store::LocalStore;
use crate::version::ActorId;
pub use cluster::Admission;
use cluster::Cluster;
use collector::Collector;
use coordinator::{Coordinator, Local};
use exchange::Exchange;
use forward::{Forwarder, Route};
use handoff::Handoff;
use handover::Handover;
use listing::Listing;
use proofs::Proofs;
use replica::Replica;
use scheduler::{Scheduler, SchedulerStats};
use scrub::Scrub;
use std::collections::BTreeMap;
use tracked::Tracked;
use trees::Trees;
use worker::{Ctx, StorageErrors, Worker};

/// Who this node is, for its coordinator (a macro, so that the borrows stay per field).
macro_rules! local {
    ($node:ident) => {
        Local {
            id: $node.cluster.id(),
            actor: $node.actor,
            config: &$node.config,
            store: &$node.store,
            rebuilding: $node.proofs.rebuilding(),
        }
    };
}

/// The context of the background workers, borrowed from the node's fields one by one (a macro,
/// so that the borrows stay per field): `$is_up` is the liveness function the caller made.
macro_rules! ctx {
    ($node:ident, $now:expr, $is_up:ident) => {
        Ctx {
            now: $now,
            me: $node.cluster.id(),
            rings: $node.cluster.rings(),
            is_up: &$is_up,
            share: $node.scheduler.share(),
            budget: $node.scheduler.budget(),
            store: &$node.store,
            trees: &mut $node.trees,
            proofs: &mut $node.proofs,
            errors: &mut $node.errors,
            out: &mut $node.out,
        }
    };
}

/// Where a joining node stands in placing its tokens.
#[derive(Debug, Default)]
struct Placement {
    /// When it first saw a ring to join.
    ring_seen: Option<u64>,
    /// Whether it placed its tokens.
    placed: bool,
}

/// One node: the concepts, its store and its outbox.
pub struct Node<S> {
    actor: ActorId,
    config: NodeConfig,
    store: Tracked<S>,
    cluster: Cluster,
    forwarder: Forwarder,
    coordinator: Coordinator,
    replica: Replica,
    handoff: Handoff,
    trees: Trees,
    proofs: Proofs,
    exchange: Exchange,
    collector: Collector,
    handover: Handover,
    scrub: Scrub,
    listing: Listing,
    errors: StorageErrors,
    scheduler: Scheduler,
    rebalance: rebalance::Rebalance,
    /// A joining node's token placement.
    placement: Placement,
    /// The node started with no data; rebuild it if the cluster knew this node before.
    data_lost: bool,
    /// Peers whose disks refused a replica write as full, until when (monotonic ms): writes
    /// treat them as down meanwhile, so a fallback keeps their replicas as hints.
    refusing_writes: std::collections::BTreeMap<String, u64>,
    out: Outbox,
}

/// How long a peer whose disk refused a write as full is left out of writes' preference
/// lists (then one write tries it again).
const REFUSING_WRITES_MS: u64 = 2_000;

impl<S: LocalStore> Node<S> {
    /// A node announcing `me`, stamping writes as `actor`, storing in `store`, drawing its
    /// random choices from `seed`, and starting from the member records and endings it
    /// persisted before (`known` and `ended`, which may be empty). Its generation and its data
    /// directory's epoch are raised above any it had before: the shell makes its record
    /// durable ([`Output::Persist`]) before announcing it.
    pub fn new(
        me: Member,
        actor: ActorId,
        config: NodeConfig,
        store: S,
        seed: u64,
        known: &[Member],
        ended: &[Ended],
    ) -> Self {
        let mut out = Outbox::default();
        let cluster = Cluster::new(
            me,
            config.detector(),
            config.gossip_interval_ms,
            seed,
            known,
            ended,
            &mut out,
        );
        // Every request id of this run starts at a random point, so that an answer meant for an
        // earlier run of this node (delivered late, after a restart) matches no request of this
        // one: a stale acknowledgement must not count towards a new write's quorum, nor a stale
        // root confirm another range.
        let mut ids = crate::rng::Rng::new(seed ^ 0x6964_7321);
        let mut first_id = || ids.next_u64() >> 8;
        let mut forwarder = Forwarder::default();
        forwarder.start_ids_at(first_id());
        let mut coordinator = Coordinator::default();
        coordinator.start_ids_at(first_id());
        let mut handoff = Handoff::new(config.handoff());
        handoff.start_ids_at(first_id());
        let mut exchange = Exchange::new(config.exchange());
        exchange.start_ids_at(first_id());
        let mut handover = Handover::new(config.handover());
        handover.start_ids_at(first_id());
        Self {
            actor,
            config,
            store: Tracked::new(store),
            cluster,
            forwarder,
            coordinator,
            replica: Replica::new(config.max_value_bytes),
            handoff,
            trees: Trees::default(),
            proofs: Proofs::new(),
            exchange,
            collector: Collector::new(config.collector()),
            handover,
            scrub: Scrub::new(config.scrub()),
            listing: Listing::default(),
            errors: StorageErrors::default(),
            scheduler: Scheduler::new(config.scheduler()),
            rebalance: rebalance::Rebalance::default(),
            placement: Placement::default(),
            data_lost: false,
            refusing_writes: std::collections::BTreeMap::new(),
            out,
        }
    }

    /// This node's own member record.
    pub fn me(&self) -> &Member {
        self.cluster.me()
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        self.cluster.id()
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        self.cluster.ring()
    }

    /// Counts changes to the member records; the shell re-dials peers when it moves.
    pub fn members_epoch(&self) -> u64 {
        self.cluster.members_epoch()
    }

    /// Every known member, by id.
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.cluster.view().members
    }

    /// The replicated membership state (records and heartbeats).
    pub fn view(&self) -> &View {
        self.cluster.view()
    }

    /// The coordination settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// The local store.
    pub fn store(&self) -> &S {
        self.store.inner()
    }

    /// The highest counter this node's actor issued for any key. A coordinator writing a key it
    /// holds no entry of its own for continues above it, so that a counter issued before the
    /// key's tombstone was collected is never issued again. The server keeps it across clean
    /// restarts ([`Node::raise_counter_floor`]).
    pub fn counter_floor(&self) -> u64 {
        self.coordinator.counter_floor()
    }

    /// Restores the counter floor of a previous run of the same actor.
    pub fn raise_counter_floor(&mut self, floor: u64) {
        self.coordinator.raise_counter_floor(floor);
    }

    /// Declares that this node started with an empty data directory. If the cluster turns out
    /// to know this node from before, it lost its data: it rebuilds it by anti-entropy, and its
    /// copies do not count towards read quorums until then.
    pub fn started_empty(&mut self) {
        self.data_lost = true;
    }

    /// Starts an anti-entropy round with every other replica of every range (an operator's
    /// repair); returns the round's id.
    pub fn repair(&mut self) -> u64 {
        self.exchange.force_round()
    }

    /// Anti-entropy counters and progress: the exchange's, the collector's and the handover's.
    pub fn anti_entropy_stats(&self) -> AntiEntropyStats {
        AntiEntropyStats::of(
            &self.exchange,
            &self.collector,
            &self.handover,
            &self.trees,
            &self.proofs,
            &self.errors,
        )
    }

    /// The storage was salvaged (the shell rewrote it without its damaged records, see
    /// `ObjectStore::salvage`). If anything was dropped (`lost`), this node rebuilds it from
    /// the other replicas as a node that lost its data does: its trees are rebuilt from what
    /// is left, an anti-entropy round with every other replica of every range starts, and its
    /// copies do not count towards read quorums until each range has synchronised. Also called
    /// at start when an earlier run's salvage had not been rebuilt yet.
    ///
    /// Sessions in flight compared trees of the storage as it was before: they are abandoned,
    /// so none of them counts as a range synchronised.
    pub fn storage_salvaged(&mut self, lost: bool) {
        self.scrub.restart();
        if !lost {
            self.proofs.salvage_ended();
            return;
        }
        self.trees.rebuild_all();
        self.exchange.abandon_sessions();
        let me = self.cluster.id();
        let others = self.cluster.view().members.keys().any(|id| id != me);
        if others {
            self.proofs.start_rebuilding();
        } else {
            self.proofs.salvage_ended();
        }
        self.exchange.force_round();
    }

    /// The shell begins salvaging the storage ([`Node::storage_salvaged`] follows): until
    /// then this node's copies do not count towards read quorums, for the salvage may drop a
    /// record between a read and the news of it.
    pub fn storage_salvage_begins(&mut self) {
        self.proofs.salvage_begins();
    }

    /// The scrub's counters and progress.
    pub fn scrub_stats(&self) -> scrub::ScrubStats {
        self.scrub.stats()
    }

    /// Storage errors the background workers met, and the last.
    pub fn storage_errors(&self) -> &StorageErrors {
        &self.errors
    }

    /// The background scheduler: its share, the foreground latency it saw, its counters.
    pub fn scheduler_stats(&self) -> SchedulerStats {
        self.scheduler.stats()
    }

    /// The last two minutes of foreground traffic coordinated here, a second each.
    pub fn traffic(&self) -> Vec<scheduler::Second> {
        self.scheduler.history()
    }

    /// Latencies of the operations coordinated and answered here, cumulative.
    pub fn coordinator_latency(&self) -> &CoordinatorLatency {
        self.coordinator.latency()
    }

    /// Brings the trees up to date with the writes of the last input, and notices lost data.
    fn follow_writes(&mut self) {
        for c in self.store.take_changes() {
            self.trees.apply(&c);
        }
        if self.data_lost && self.cluster.known_before() {
            self.data_lost = false;
            // Not a new node but one that lost its data: it takes its place back in the ring.
            if let Some(tokens) = self.cluster.previous_tokens().cloned()
                && tokens != self.cluster.me().tokens
            {
                self.cluster.set_tokens(tokens, &mut self.out);
            }
            if self.cluster.me().status == Status::Joining {
                self.cluster.set_status(Status::Up, &mut self.out);
            }
            self.proofs.start_rebuilding();
            self.exchange.force_round();
        }
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        let c = *self.coordinator.counters();
        NodeStats {
            forwarded: self.forwarder.forwarded(),
            forward_retries: self.forwarder.retried(),
            coordinated_reads: c.reads,
            coordinated_writes: c.writes,
            read_repairs: c.read_repairs,
            rejected_messages: self.replica.rejected() + self.cluster.rejected(),
            hints_stored: self.replica.hints_stored(),
            hints_delivered: self.handoff.delivered(),
            sloppy_writes: c.sloppy_writes,
            reads_by_versions: c.reads_by_versions,
            sibling_warnings: c.sibling_warnings,
            refused_writes: c.refused_writes,
        }
    }

    /// Whether `node` is reachable from here (this node always is).
    pub fn is_up(&self, node: &str) -> bool {
        self.cluster.is_up(node)
    }

    /// The failure detector's opinion of `node` as of the last input.
    pub fn opinion(&self, node: &str) -> Opinion {
        self.cluster.opinion(node)
    }

    /// Requests in flight: forwarded, coordinated, and hint deliveries.
    pub fn in_flight(&self) -> usize {
        self.forwarder.in_flight()
            + self.coordinator.in_flight()
            + self.handoff.in_flight()
            + self.exchange.in_flight()
    }

    /// Takes the outputs produced so far; notes the peers asked something that they answer at
    /// once (the failure detector suspects one that stays silent).
    pub fn drain(&mut self) -> Vec<Output> {
        let out = self.out.drain();
        for o in &out {
            if let Output::Send { to, message } = o
                && message.expects_prompt_answer()
            {
                self.cluster.asked(to);
            }
        }
        out
    }

    /// The ring and members for the admin endpoint and clients.
    pub fn ring_info(&self) -> RingInfo {
        info::ring_info(&self.cluster, (self.config.n, self.config.r, self.config.w))
    }

    /// The preference list of `key` as this node sees the cluster now, with the pending
    /// replicas of joins and leaves in progress.
    pub fn preference(&self, key: &[u8]) -> PreferenceList {
        let n = usize::from(self.config.n);
        let is_up = |node: &str| self.cluster.is_up(node);
        let pref = preference_list(self.cluster.ring(), key, n, is_up);
        with_pending(pref, &self.cluster.rings().future, key, n, is_up)
    }

    /// The preference list of a write of `key`: as [`Node::preference`], with the peers whose
    /// disks refuse writes counted as down (their replicas go to fallbacks as hints).
    fn write_preference(&mut self, key: &[u8], now: u64) -> PreferenceList {
        self.refusing_writes.retain(|_, until| now < *until);
        if self.refusing_writes.is_empty() {
            return self.preference(key);
        }
        let n = usize::from(self.config.n);
        let refusing = &self.refusing_writes;
        let is_up = |node: &str| self.cluster.is_up(node) && !refusing.contains_key(node);
        let pref = preference_list(self.cluster.ring(), key, n, is_up);
        with_pending(pref, &self.cluster.rings().future, key, n, is_up)
    }

    /// Learns member records (from a peer's handshake). Returns true when a record changed.
    pub fn learn(&mut self, incoming: &[Member]) -> bool {
        self.cluster.learn(incoming, &mut self.out)
    }

    /// Whether the messages of `from` are taken, on a connection whose handshake presented its
    /// data directory's instance `instance`. The shell asks before [`Node::step`]: nothing from
    /// an instance that ended (left, removed, stale) is ever taken - no write, repair, hint or
    /// anti-entropy object - and it is told so ([`Admission::Ended`]); nothing from an instance
    /// that is not the member's current one either.
    pub fn admits(&self, from: &str, instance: u64) -> Admission {
        self.cluster.admits(from, instance)
    }

    /// A peer said an instance ended (this node's own, when it was removed or found stale).
    pub fn on_ended(&mut self, ended: Ended) {
        self.cluster.on_ended(ended, &mut self.out);
    }

    /// This node's own ending, once it knows it left, was removed, or runs on a stale copy of
    /// its data directory. It then serves nothing: client requests are refused, peer messages
    /// other than gossip ignored, background work stopped.
    pub fn ended(&self) -> Option<&Ended> {
        self.cluster.ended()
    }

    /// Marks `id` as a seed: gossip turns to seeds now and then, so partitions heal.
    pub fn add_seed(&mut self, id: &str) {
        self.cluster.add_seed(id);
    }

    /// Starts a graceful leave: this node becomes `leaving`, hands its ranges to their new owners,
    /// then becomes `left`.
    pub fn leave(&mut self) -> Result<(), String> {
        match self.cluster.me().status {
            Status::Up => {
                let me = self.cluster.id().to_owned();
                self.cluster
                    .refuse_onto_down(&me, usize::from(self.config.n), false)?;
                self.cluster.set_status(Status::Leaving, &mut self.out);
                Ok(())
            }
            Status::Leaving => Ok(()),
            other => Err(format!(
                "this node is {}; only an up node can leave",
                other.as_str()
            )),
        }
    }

    /// Declares the dead member `id` removed: the new owners of its ranges rebuild them from
    /// the surviving replicas. Refused when a member that would take over its ranges is down,
    /// unless `force`.
    pub fn remove(&mut self, id: &str, force: bool) -> Result<(), String> {
        if !force && self.cluster.view().members.contains_key(id) && !self.cluster.is_up(id) {
            self.cluster
                .refuse_onto_down(id, usize::from(self.config.n), true)?;
        }
        self.cluster.remove(id, &mut self.out)
    }

    /// Why `id` may not go out of the ring now: a member that would take over its ranges is
    /// down (see [`Self::leave`] and [`Self::remove`]).
    pub fn refuse_onto_down(&self, id: &str, removal: bool) -> Result<(), String> {
        self.cluster
            .refuse_onto_down(id, usize::from(self.config.n), removal)
    }

    /// Declares a new status for this node; gossip spreads it and the history keeps it.
    pub fn set_status(&mut self, status: Status) {
        self.cluster.set_status(status, &mut self.out);
    }

    /// The transport connected to `node`: it gets this node's digest at once.
    pub fn peer_up(&mut self, node: &str) {
        self.cluster.peer_up(node, &mut self.out);
    }

    /// Records that the transport is connected to `node` without a gossip exchange. For
    /// simulations that start from an already converged, connected cluster.
    pub fn assume_connected(&mut self, node: &str) {
        self.cluster.assume_connected(node);
    }

    fn timed_out(&mut self, now: u64, silent: Vec<String>) {
        for node in silent {
            self.cluster.timed_out(now, &node);
        }
    }

    /// A client request arrived at this node.
    pub fn request(&mut self, now: Now, client: ClientId, request: ClientRequest) {
        self.cluster.observe(now.mono);
        if let Some(e) = self.cluster.ended() {
            let err = OpError::NotAMember(e.explain());
            return self.out.respond(Origin::Client(client), Err(err));
        }
        if let ClientRequest::List {
            prefix,
            after,
            limit,
            objects,
        } = request
        {
            let ask = listing::Ask {
                prefix,
                after,
                limit: limit as usize,
                objects,
                now: now.wall,
            };
            let plan = listing::Plan {
                me: self.cluster.id(),
                ring: &self.cluster.rings().current,
                n: usize::from(self.config.n),
                deadline: now.mono + self.config.request_timeout_ms,
            };
            let cluster = &self.cluster;
            let origin = Origin::Client(client);
            return self.listing.start(
                &self.store,
                &plan,
                |id| cluster.is_up(id),
                origin,
                ask,
                &mut self.out,
            );
        }
        self.route(now, Origin::Client(client), request, 0);
        self.follow_writes();
    }

    fn route(&mut self, now: Now, origin: Origin, request: ClientRequest, hops: u8) {
        if matches!(request, ClientRequest::List { .. }) {
            let why = "a listing is coordinated where it arrives, never forwarded".to_owned();
            return self.out.respond(origin, Err(OpError::BadRequest(why)));
        }
        if let Err(e) = limits::check_key(request.key()) {
            return self
                .out
                .respond(origin, Err(OpError::BadRequest(e.to_string())));
        }
        if let ClientRequest::Put { value: Some(v), .. } = &request
            && v.len() > self.config.max_value_bytes
        {
            let why = format!(
                "a value of {} bytes is over the limit of {} bytes",
                v.len(),
                self.config.max_value_bytes
            );
            return self.out.respond(origin, Err(OpError::BadRequest(why)));
        }
        if let ClientRequest::Put {
            expires_in_ms: Some(0),
            condition: None,
            ..
        } = &request
        {
            let why = "a time to live must be at least 1 ms".to_owned();
            return self.out.respond(origin, Err(OpError::BadRequest(why)));
        }
        if let ClientRequest::Restore { object, .. } = &request
            && let Err(e) = object.validate()
        {
            let why = format!("the object to restore is not valid: {e}");
            return self.out.respond(origin, Err(OpError::BadRequest(why)));
        }
        let pref = if matches!(
            request,
            ClientRequest::Put { .. }
                | ClientRequest::Restore { .. }
                | ClientRequest::Increment { .. }
        ) {
            self.write_preference(request.key(), now.mono)
        } else {
            self.preference(request.key())
        };
        if pref.primaries.is_empty() {
            return self.out.respond(origin, Err(OpError::NoRing));
        }
        match forward::route(&pref, self.cluster.id(), hops) {
            Route::Coordinate => {
                let local = local!(self);
                self.coordinator
                    .start(&local, now, origin, request, pref, &mut self.out);
            }
            Route::Forward(primaries) => {
                let deadline = now.mono + self.config.request_timeout_ms * 3 / 2;
                self.forwarder.forward(
                    now.mono,
                    self.forward_attempt_ms(),
                    deadline,
                    origin,
                    primaries,
                    request,
                    hops,
                    &mut self.out,
                );
            }
            Route::Unreachable => {
                let err = coordinator::unreachable(&pref, &request);
                self.out.respond(origin, Err(err));
            }
        }
    }

    /// A message from peer `from`.
    pub fn step(&mut self, now: Now, from: &str, message: Message) {
        self.cluster.observe(now.mono);
        self.cluster.heard_from(now.mono, from);
        if self.cluster.ended().is_some() {
            // An instance that ended only gossips (so that its own end spreads).
            if let Message::Gossip(m) = message {
                self.cluster.on_message(from, m, &mut self.out);
            }
            return;
        }
        match message {
            Message::Kv(m) => self.on_kv(now, from, m),
            Message::Handoff(HandoffMessage::Deliver { id, key, object }) => {
                self.replica
                    .on_handoff(&self.store, from, id, key, object, &mut self.out);
            }
            Message::Handoff(HandoffMessage::Ack { id, result }) => {
                self.handoff.on_ack(&self.store, from, id, result);
            }
            Message::Gossip(m) => self.cluster.on_message(from, m, &mut self.out),
            Message::Sync(m) => {
                let cluster = &self.cluster;
                let is_up = |n: &str| cluster.is_up(n);
                self.exchange
                    .on_message(&mut ctx!(self, now, is_up), from, m);
            }
            Message::Collect(m) => {
                let cluster = &self.cluster;
                let is_up = |n: &str| cluster.is_up(n);
                let mut ctx = ctx!(self, now, is_up);
                self.collector.on_message(&mut ctx, from, m);
                self.exchange.schedule(&mut ctx);
            }
            Message::List(m) => {
                let wall = now.wall;
                self.listing
                    .on_message(&self.store, wall, from, m, &mut self.out)
            }
            Message::Handover(m) => {
                let cluster = &self.cluster;
                let is_up = |n: &str| cluster.is_up(n);
                let mut ctx = ctx!(self, now, is_up);
                self.handover.on_message(&mut ctx, from, m);
                self.exchange.schedule(&mut ctx);
            }
        }
        self.follow_writes();
    }

    fn on_kv(&mut self, now: Now, from: &str, message: KvMessage) {
        let mono = now.mono;
        match message {
            KvMessage::Forward { id, request, hops } => {
                let origin = Origin::Peer {
                    node: from.to_owned(),
                    id,
                };
                self.route(now, origin, request, hops.saturating_add(1));
            }
            KvMessage::ForwardReply { id, response } => {
                self.forwarder.on_reply(from, id, response, &mut self.out);
            }
            KvMessage::Replicate {
                id,
                key,
                object,
                hint,
            } => {
                let me = self.cluster.id();
                self.replica.on_replicate(
                    me,
                    &self.store,
                    from,
                    id,
                    key,
                    object,
                    hint,
                    &mut self.out,
                );
            }
            KvMessage::ReplicateAck { id, result } => {
                if let Err(crate::message::WireError::Full(_)) = &result {
                    self.refusing_writes
                        .insert(from.to_owned(), mono + REFUSING_WRITES_MS);
                }
                let local = local!(self);
                let silent = self.coordinator.on_replicate_ack(
                    &local,
                    mono,
                    from,
                    id,
                    result,
                    &mut self.out,
                );
                self.timed_out(mono, silent);
            }
            KvMessage::Read { id, key } => {
                let rebuilding = self.proofs.rebuilding();
                self.replica
                    .on_read(&self.store, rebuilding, from, id, key, &mut self.out);
            }
            KvMessage::ReadReply { id, result } => {
                let local = local!(self);
                let silent =
                    self.coordinator
                        .on_read_reply(&local, mono, from, id, result, &mut self.out);
                self.timed_out(mono, silent);
            }
            KvMessage::Repair { key, object } => {
                self.replica.on_repair(&self.store, key, object);
            }
        }
    }

    /// The transport lost `node`: requests waiting on it stop waiting.
    pub fn peer_down(&mut self, now: Now, node: &str) {
        self.cluster.observe(now.mono);
        if !self.cluster.peer_down(node) {
            return;
        }
        let attempt = self.forward_attempt_ms();
        self.forwarder
            .peer_down(now.mono, attempt, node, &mut self.out);
        let local = local!(self);
        let silent = self
            .coordinator
            .peer_down(&local, now.mono, node, &mut self.out);
        self.handoff.peer_down(node);
        let cluster = &self.cluster;
        let is_up = |n: &str| cluster.is_up(n);
        self.exchange.peer_down(&mut ctx!(self, now, is_up), node);
        self.timed_out(now.mono, silent);
        self.follow_writes();
    }

    /// How long a forwarded request waits for its coordinator before the next primary is
    /// asked: half the request timeout (a coordinator answers well within it when it is alive).
    fn forward_attempt_ms(&self) -> u64 {
        self.config.request_timeout_ms / 2
    }

    /// Time passed: expire requests, gossip, hand hints off.
    pub fn tick(&mut self, now: Now) {
        let mono = now.mono;
        self.cluster.observe(mono);
        let attempt = self.forward_attempt_ms();
        // A primary that a forward waits on and that is now suspected: ask the next one at once.
        for node in self.forwarder.waiting_on() {
            if self.cluster.is_connected(&node) && !self.cluster.is_up(&node) {
                self.forwarder
                    .suspected(mono, attempt, &node, &mut self.out);
            }
        }
        self.listing.expire(mono, &mut self.out);
        let mut silent = self.forwarder.expire(mono, attempt, &mut self.out);
        let local = local!(self);
        silent.extend(self.coordinator.expire(&local, mono, &mut self.out));
        silent.extend(self.handoff.expire(mono));
        self.timed_out(mono, silent);
        self.cluster.tick(mono, &mut self.out);
        if self.cluster.ended().is_some() {
            return;
        }
        self.scheduler
            .tick(mono, self.coordinator.recent_latencies());
        self.tick_workers(now);
        self.place_tokens(mono);
        let status = self.cluster.me().status;
        // A joining node that has heard of no other member (its seeds are unreachable) waits
        // for one: alone it would make a cluster of its own and acknowledge writes that no
        // other node holds.
        let me = self.cluster.id();
        if status == Status::Joining && self.cluster.view().members.keys().all(|id| id == me) {
            return;
        }
        let step = self
            .rebalance
            .tick(mono, self.cluster.id(), status, &self.trees, &self.proofs);
        match step {
            rebalance::Step::Done(next) => self.cluster.set_status(next, &mut self.out),
            rebalance::Step::KeepComparing => self.exchange.keep_comparing(),
            rebalance::Step::Wait => {}
        }
    }

    /// The background workers' turn, each with the same context. Handoff and anti-entropy (the
    /// exchange, then collection and handover) take turns at going first, so neither starves
    /// the other of the shared budget when it is small; each worker sees the writes of those
    /// before it in the trees.
    fn tick_workers(&mut self, now: Now) {
        let handoff_first = self.scheduler.handoff_first();
        let cluster = &self.cluster;
        let is_up = |n: &str| cluster.is_up(n);
        let mut ctx = ctx!(self, now, is_up);
        let (handoff, exchange) = (&mut self.handoff, &mut self.exchange);
        let (collector, handover) = (&mut self.collector, &mut self.handover);
        let scrub = &mut self.scrub;
        let order: [&mut dyn Worker<S>; 5] = if handoff_first {
            [handoff, exchange, collector, handover, scrub]
        } else {
            [exchange, collector, handover, handoff, scrub]
        };
        for worker in order {
            worker.tick(&mut ctx);
            ctx.follow_writes();
        }
    }

    /// Records refused because a second live process claimed a member's id, and the last one.
    pub fn identity_conflicts(&self) -> (u64, Option<&Member>) {
        self.cluster.identity_conflicts()
    }

    /// A joining node places its tokens where they balance the ring it joins (once it has
    /// seen that ring for a couple of gossip rounds), instead of keeping hashed ones.
    fn place_tokens(&mut self, now: u64) {
        let me = self.cluster.me();
        let current = &self.cluster.rings().current;
        if me.status != Status::Joining
            || self.placement.placed
            || self.cluster.known_before()
            || current.is_empty()
            || current.nodes().contains(&me.id)
        {
            return;
        }
        let seen = *self.placement.ring_seen.get_or_insert(now);
        if now < seen + 2 * self.config.gossip_interval_ms {
            return;
        }
        self.placement.placed = true;
        let others: Vec<Member> = self
            .cluster
            .view()
            .members
            .values()
            .filter(|m| m.id != me.id && matches!(m.status, Status::Up | Status::Joining))
            .cloned()
            .collect();
        // The future ring without this node: other joining members count as placed.
        let tokens = others
            .iter()
            .map(|m| (m.id.clone(), m.tokens.clone()))
            .collect();
        let Ok(future) = Ring::new(&tokens) else {
            return;
        };
        let count = u16::try_from(me.tokens.len()).unwrap_or(u16::MAX);
        let tokens = crate::ring::balanced_tokens(&future, &me.id, count);
        self.cluster.set_tokens(tokens, &mut self.out);
    }

    /// How far this node's own join or leave is.
    pub fn transfer(&self) -> &rebalance::Transfer {
        self.rebalance.progress()
    }
}

#[cfg(test)]
mod tests;
