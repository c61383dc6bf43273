//! The shell around the core state machine: one thread owns the [`Node`], takes [`Event`]s from
//! the HTTP handlers and the transport, calls `request`/`step`/`tick` with both clocks (a
//! monotonic one for timers, the wall clock for version timestamps), and carries the outputs
//! out (messages to the transport, answers to waiting handlers).
//!
//! The thread works in bursts: it takes every event already queued (up to [`BURST`]), then
//! commits the storage writes of the whole burst at once (group commit: one journal write, or
//! one fsync under `--sync always`), and only then sends the burst's messages and answers - so
//! nothing is acknowledged before it reached the operating system (or the disk).

use crate::history::History;
use crate::node::now_ms;
use crate::transport::{PeerEvent, Transport};
use dynamokv_core::clock::Now;
use dynamokv_core::message::{ClientId, ClientRequest, ClientResponse, OpError};
use dynamokv_core::node::{Admission, Node, Output};
use dynamokv_storage::Engine;
use dynamokv_storage::ObjectStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The core node as the server runs it.
pub type CoreNode = Node<Arc<ObjectStore>>;

/// How often the node's clock ticks.
const TICK: Duration = Duration::from_millis(20);

/// Most events handled before the node commits its writes and carries its outputs out.
const BURST: usize = 256;

/// Longest a tick waits for queued events, in milliseconds.
const TICK_DEFER_MS: u64 = 1000;

/// A burst that kept the node thread this long is a *stall*: logged, and counted in
/// `dynamokv_node_thread_stalls_total`.
const SLOW_BURST: Duration = Duration::from_millis(100);

/// An answer and the ring version of the node that gave it.
pub type Answer = (ClientResponse, u64);

/// Work for the node thread.
pub enum Event {
    /// A client request and where to send the answer.
    Client {
        /// The request.
        request: ClientRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<Answer>,
    },
    /// What the transport saw.
    Transport(PeerEvent),
    /// Run a read-only query against the node.
    Query(Box<dyn FnOnce(&CoreNode) + Send>),
    /// Run an operator's command on the node (its outputs are carried out like any other).
    Command(Box<dyn FnOnce(&mut CoreNode) + Send>),
    /// Stop the thread.
    Stop,
}

/// A handle to the node thread.
#[derive(Clone)]
pub struct NodeHandle {
    events: Sender<Event>,
}

/// Why a call to the node thread failed.
#[derive(Debug, thiserror::Error)]
#[error("the node is shutting down")]
pub struct Stopped;

impl NodeHandle {
    /// A handle sending to `events`.
    pub fn new(events: Sender<Event>) -> Self {
        Self { events }
    }

    /// Submits a client request and waits for its answer.
    pub async fn call(&self, request: ClientRequest) -> Result<Answer, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Client { request, reply: tx })
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Runs `f` on the node thread and returns its result.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&CoreNode) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Query(Box::new(move |n| {
                let _ = tx.send(f(n));
            })))
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// Runs `f` on the node thread with the node mutable, and returns its result.
    pub async fn command<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut CoreNode) -> T + Send + 'static,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.events
            .send(Event::Command(Box::new(move |n| {
                let _ = tx.send(f(n));
            })))
            .map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// A sink for the transport's events, feeding this node thread.
    pub fn transport_sink(&self) -> crate::transport::EventSink {
        let events = self.events.clone();
        Box::new(move |e| events.send(Event::Transport(e)).is_ok())
    }

    /// Asks the node thread to stop.
    pub fn stop(&self) {
        let _ = self.events.send(Event::Stop);
    }
}

/// What the node thread watches between bursts, to log what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Watched {
    ring_version: u64,
    members_epoch: u64,
    conflicts: u64,
    storage_errors: u64,
    ended: bool,
}

impl Watched {
    fn of(node: &CoreNode) -> Watched {
        Watched {
            ring_version: node.ring().version(),
            members_epoch: node.members_epoch(),
            conflicts: node.identity_conflicts().0,
            storage_errors: node.storage_errors().count,
            ended: node.ended().is_some(),
        }
    }
}

/// The node thread: the node, the clients waiting for answers, and what it logs changes of.
struct NodeThread {
    node: CoreNode,
    transport: Transport,
    engine: Arc<dyn Engine>,
    history: History,
    clients: BTreeMap<ClientId, oneshot::Sender<Answer>>,
    next_client: ClientId,
    watched: Watched,
    next_tick: u64,
}

impl NodeThread {
    /// Handles one event; returns false on [`Event::Stop`].
    fn handle(&mut self, now: Now, event: Event) -> bool {
        let node = &mut self.node;
        match event {
            Event::Client { request, reply } => {
                let id = self.next_client;
                self.next_client += 1;
                self.clients.insert(id, reply);
                node.request(now, id, request);
            }
            Event::Transport(PeerEvent::Message {
                from,
                instance,
                message,
            }) => match node.admits(&from, instance) {
                Admission::Admitted => node.step(now, &from, message),
                // Nothing from an instance that ended, or that is not the member's current
                // one (the transport closes such connections).
                Admission::Ended(_) => {
                    metrics::counter!("dynamokv_peer_messages_refused_total", "reason" => "ended")
                        .increment(1)
                }
                Admission::NotCurrent => {
                    metrics::counter!("dynamokv_peer_messages_refused_total", "reason" => "not_current")
                        .increment(1)
                }
            },
            Event::Transport(PeerEvent::Ended(e)) => node.on_ended(e),
            Event::Transport(PeerEvent::Learn(member)) => {
                node.learn(&[member]);
            }
            Event::Transport(PeerEvent::Seed(member)) => {
                let id = member.id.clone();
                node.learn(&[member]);
                node.add_seed(&id);
            }
            Event::Transport(PeerEvent::Up(id)) => node.peer_up(&id),
            Event::Transport(PeerEvent::Down(id)) => node.peer_down(now, &id),
            Event::Query(f) => f(node),
            Event::Command(f) => f(node),
            Event::Stop => return false,
        }
        true
    }

    /// Time passed, unless a full burst is still being worked off: while events are still
    /// queued, timers wait for them, up to [`TICK_DEFER_MS`]; after a stall, the answers
    /// already queued count before a deadline expires the request they answer.
    fn tick(&mut self, now: Now, backlogged: bool) {
        if now.mono >= self.next_tick && (!backlogged || now.mono >= self.next_tick + TICK_DEFER_MS)
        {
            self.node.tick(now);
            self.next_tick = now.mono + TICK.as_millis() as u64;
        }
    }

    /// Logs what changed in the burst (refused impostors, storage errors, this node's end, the
    /// ring) and follows membership changes in the transport.
    fn follow_changes(&mut self) {
        let (node, was) = (&self.node, self.watched);
        let now = Watched::of(node);
        if now.conflicts != was.conflicts
            && let Some(m) = node.identity_conflicts().1
        {
            tracing::error!(
                id = %m.id, peer_addr = %m.peer_addr, http_addr = %m.http_addr,
                instance = format!("{:016x}", m.instance),
                "refused a second live process claiming node id {}: the id belongs to the node already up; stop the other process or give it its own --node-id",
                m.id
            );
        }
        if now.storage_errors != was.storage_errors {
            tracing::warn!(
                errors = now.storage_errors - was.storage_errors,
                last = node.storage_errors().last.as_deref().unwrap_or(""),
                "background work met storage errors (retried later; see dynamokv_background_storage_errors_total)"
            );
        }
        if !was.ended
            && let Some(e) = node.ended()
        {
            log_ended(e);
        }
        if now.members_epoch != was.members_epoch {
            if now.ring_version != was.ring_version {
                tracing::info!(
                    version = %format!("{:016x}", now.ring_version),
                    members = node.members().len(),
                    "ring changed"
                );
            }
            self.transport.sync_peers(node.view());
        }
        self.watched = now;
    }

    /// Keeps the burst's membership changes with its writes and commits them all: everything
    /// the burst wrote reaches the operating system (or the disk, under `--sync always`) before
    /// any of it is acknowledged, and a change of this node's own record (a new epoch, status
    /// or tokens) or any ending reaches the disk before any peer hears of it.
    fn commit(&mut self, outputs: &[Output]) -> Result<(), dynamokv_storage::StorageError> {
        let mut sync_membership = false;
        for out in outputs {
            let kept = match out {
                Output::Persist(member) => {
                    sync_membership |= member.id == self.node.me().id;
                    self.history.append(self.engine.as_ref(), member)
                }
                Output::PersistEnded(e) => {
                    sync_membership = true;
                    self.history.append_ended(self.engine.as_ref(), e)
                }
                _ => Ok(()),
            };
            if let Err(e) = kept {
                tracing::error!(error = %e, "cannot persist a membership change");
            }
        }
        let mut committed = self.engine.commit_group();
        if committed.is_ok() && sync_membership {
            committed = self.engine.flush();
        }
        if let Err(e) = &committed {
            tracing::error!(error = %e, "storage commit failed; answering this burst's requests with errors");
        }
        committed
    }

    /// Carries the burst's outputs out: messages (only once committed) and answers (a storage
    /// error when the commit failed).
    fn deliver(&mut self, outputs: Vec<Output>, committed: &Result<(), impl std::fmt::Display>) {
        let ring_version = self.node.ring().version();
        for out in outputs {
            match out {
                Output::Send { to, message } => {
                    if committed.is_ok() {
                        self.transport.send(&to, message)
                    }
                }
                Output::Persist(_) | Output::PersistEnded(_) => {}
                Output::Respond { client, response } => {
                    if let Some(tx) = self.clients.remove(&client) {
                        let response = match committed {
                            Ok(()) => response,
                            Err(e) => Err(OpError::Storage {
                                node: self.node.me().id.clone(),
                                message: e.to_string(),
                            }),
                        };
                        let _ = tx.send((response, ring_version));
                    }
                }
            }
        }
    }
}

/// Logs this node's end: at WARN for a clean leave, at ERROR otherwise.
fn log_ended(e: &dynamokv_core::membership::Ended) {
    let instance = format!("{:016x}", e.instance);
    if e.how == dynamokv_core::membership::Ending::Left {
        tracing::warn!(
            node = %e.id, %instance, "this node has left the cluster and serves nothing now; stop it ({})",
            e.explain()
        );
    } else {
        tracing::error!(
            node = %e.id, %instance, how = e.how.as_str(), by = %e.by,
            "this node no longer serves: {}", e.explain()
        );
    }
}

/// Runs the node until [`Event::Stop`] or until every sender is gone, appending membership
/// changes to `history` in `engine`.
pub fn run_node(
    node: CoreNode,
    events: Receiver<Event>,
    transport: Transport,
    engine: Arc<dyn Engine>,
    history: History,
) {
    transport.sync_peers(node.view());
    let mut t = NodeThread {
        watched: Watched::of(&node),
        node,
        transport,
        engine,
        history,
        clients: BTreeMap::new(),
        next_client: 1,
        next_tick: 0,
    };
    // The monotonic clock: milliseconds since the thread started (plus one, so no timer
    // starts at zero). The wall clock goes only into version timestamps.
    let started = Instant::now();
    let clock = move || Now {
        mono: started.elapsed().as_millis() as u64 + 1,
        wall: now_ms(),
    };
    t.engine.set_group_commit(true);
    let mut running = true;
    while running {
        let mut next = match events.recv_timeout(TICK) {
            Ok(e) => Some(e),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let now = clock();
        let burst_started = Instant::now();
        // A burst: every event already queued (up to BURST), then one storage commit and one
        // pass over the outputs, instead of one of each per event.
        let mut handled = 0;
        while let Some(event) = next.take() {
            handled += 1;
            running = t.handle(now, event);
            if running && handled < BURST {
                next = events.try_recv().ok();
            }
        }
        t.tick(now, handled >= BURST);
        t.follow_changes();
        let outputs = t.node.drain();
        let committed = t.commit(&outputs);
        let busy = burst_started.elapsed();
        if busy >= SLOW_BURST {
            metrics::counter!("dynamokv_node_thread_stalls_total").increment(1);
            // Every request of this node waited this long; the usual cause is the storage
            // engine holding writes back while its background flushes catch up.
            tracing::warn!(
                busy_ms = busy.as_millis() as u64,
                events = handled,
                "the node thread was busy for {} ms on one burst of {handled} events (storage write stall?)",
                busy.as_millis()
            );
        }
        t.deliver(outputs, &committed);
    }
    t.engine.set_group_commit(false);
    // The next run of the same actor must not issue these counters again.
    if let Err(e) =
        crate::identity::Identity::save_counter_floor(t.engine.as_ref(), t.node.counter_floor())
    {
        tracing::error!(error = %e, "cannot keep the version counter floor");
    }
    tracing::debug!("node thread stopped");
}
