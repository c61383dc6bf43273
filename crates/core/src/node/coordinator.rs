//! Coordination of gets and puts (Dynamo sections 4.5 and 4.7).
//!
//! Put: the coordinator stamps the new version against its own copy and the client's context,
//! stores it, sends it to the other targets of the preference list and answers after W
//! acknowledgements (its own included). Get: it reads its own copy, asks the other targets,
//! answers after R replies with their merge, and once every target answered (or the deadline
//! passed) sends the merged object to each primary whose copy differed (read repair).
//!
//! Each operation owns its tally, deadline and origin; one verdict ([`Tally::verdict`]) decides
//! reads and writes alike.
//!
//! What a write stores over this node's copy (puts, increments, restores, within the limits)
//! is [`super::stamp`]. Over 700 lines: admission (quorums, reachability), the read path, the
//! read-first writes (a delete without a context, an increment, a conditional put) and the
//! write path share one operation table and tally; the read path is the next part to move into
//! a module of its own.

use super::NodeConfig;
use super::info::{CoordinatorCounters, CoordinatorLatency, LatencyOp, LatencyOutcome};
use super::outbox::{Origin, Outbox};
use super::replica::local_read;
use super::scheduler::LatencyWindow;
pub use super::stamp::Local;
use super::stamp::{self, Write};
use crate::clock::Now;
use crate::message::{ClientRequest, KvMessage, OpError, QuorumKind, Reply, RequestId, WireError};
use crate::preference::PreferenceList;
use crate::quorum::{Reachability, Tally, Verdict};
use crate::store::LocalStore;
use crate::version::{Dot, Object, Stamp, ValueKind};
use std::collections::BTreeMap;

/// What each target returned to a read.
type Replies = BTreeMap<String, Option<Object>>;

/// A write that reads first, waiting for its read: a delete without a context (of what the
/// read found), an increment (over what the read found) or a conditional put (if what the
/// read found meets its condition).
#[derive(Debug)]
struct DeleteAfter {
    now: Now,
    pref: PreferenceList,
    /// The write, as the client sent it.
    request: ClientRequest,
}

/// Siblings per key at which writes are counted as warnings.
pub const SIBLING_WARNING: usize = 25;

#[derive(Debug)]
enum Kind {
    Read {
        key: Vec<u8>,
        replies: Replies,
        /// Nodes whose copy read repair may fix: the primaries.
        primaries: Vec<String>,
        /// Set when this read is the first half of a delete without a context.
        then_delete: Option<Box<DeleteAfter>>,
    },
    Write {
        object: Object,
        dot: Dot,
    },
}

/// One operation this node coordinates.
#[derive(Debug)]
struct Operation {
    /// `None` once answered (the operation may wait on for read repair or late acks).
    origin: Option<Origin>,
    tally: Tally,
    deadline: u64,
    /// When the request arrived here (monotonic, ms).
    started: u64,
    /// The wall clock then (ms since the Unix epoch): with `started`, the wall clock at any
    /// later monotonic time, for the deadlines of the values answered.
    wall: u64,
    kind: Kind,
}

/// The operations this node coordinates, and their counters.
#[derive(Debug, Default)]
pub struct Coordinator {
    ops: BTreeMap<RequestId, Operation>,
    next_id: RequestId,
    counters: CoordinatorCounters,
    /// The highest counter this node's actor issued, for any key (see `counter_floor`).
    counter_floor: u64,
    /// Every answered operation's latency, cumulative.
    latency: CoordinatorLatency,
    /// The latencies since the scheduler last took them.
    recent: LatencyWindow,
}

/// The quorum for a request: the override (1..=N) or the default capped at the number of
/// replicas the ring can offer.
fn quorum(
    n: u8,
    name: &str,
    asked: Option<u8>,
    default: u8,
    replicas: usize,
) -> Result<usize, OpError> {
    match asked {
        Some(v) if v == 0 || v > n => Err(OpError::InvalidQuorum {
            name: name.to_owned(),
            value: v,
            n,
        }),
        Some(v) => Ok(usize::from(v)),
        None => Ok(usize::from(default).min(replicas).max(1)),
    }
}

/// The error for a request no primary of which is reachable from a node that is not one.
pub fn unreachable(pref: &PreferenceList, request: &ClientRequest) -> OpError {
    Reachability {
        asked: pref.primaries.clone(),
        failed: pref.primaries.clone(),
        reachable: 0,
        primaries_reachable: 0,
    }
    .unavailable(kind_of(request), 1, 0)
}

fn kind_of(request: &ClientRequest) -> QuorumKind {
    match request {
        ClientRequest::Get { .. } | ClientRequest::List { .. } => QuorumKind::Read,
        ClientRequest::Put { .. }
        | ClientRequest::Restore { .. }
        | ClientRequest::Increment { .. } => QuorumKind::Write,
    }
}

fn merge_all<'a>(objects: impl Iterator<Item = &'a Option<Object>>) -> Object {
    objects.flatten().fold(Object::new(), |acc, o| acc.merge(o))
}

/// The tally of `request` over `pref` (R or W, and PR or PW, checked against the settings and
/// the replicas the ring offers), or why it cannot start: a bad quorum, or too few replicas
/// reachable.
fn admit(
    config: &NodeConfig,
    request: &ClientRequest,
    pref: &PreferenceList,
) -> Result<Tally, OpError> {
    let kind = kind_of(request);
    let (name, pname, asked_q, asked_p, default) = match request {
        ClientRequest::Get { r, pr, .. } => ("r", "pr", *r, *pr, config.r),
        ClientRequest::Put { w, pw, .. } | ClientRequest::Increment { w, pw, .. } => {
            ("w", "pw", *w, *pw, config.w)
        }
        ClientRequest::Restore { w, .. } => ("w", "pw", *w, None, config.w),
        ClientRequest::List { .. } => {
            let why = "a listing has no quorum: it is coordinated by listing".to_owned();
            return Err(OpError::BadRequest(why));
        }
    };
    let replicas = pref.primaries.len();
    let needed = quorum(config.n, name, asked_q, default, replicas)?;
    let primary_needed = match asked_p {
        None | Some(0) => 0,
        Some(v) => quorum(config.n, pname, Some(v), 0, replicas)?,
    };
    let up_primaries = pref.up_primaries();
    if pref.targets.len() < needed || up_primaries < primary_needed {
        let reach = Reachability {
            asked: pref.primaries.clone(),
            failed: pref.down_primaries(),
            reachable: pref.targets.len(),
            primaries_reachable: up_primaries,
        };
        return Err(reach.unavailable(kind, needed, primary_needed));
    }
    let asked: Vec<String> = pref.targets.iter().map(|t| t.node.clone()).collect();
    Ok(Tally::new(asked, needed).with_primaries(pref.primaries.iter().cloned(), primary_needed))
}

impl Coordinator {
    /// Numbers this run's operations from `first` on (see [`super::Node::new`]).
    pub fn start_ids_at(&mut self, first: RequestId) {
        self.next_id = first;
    }

    /// Starts coordinating `request` for `origin` over the preference list `pref`.
    pub fn start<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        now: Now,
        origin: Origin,
        request: ClientRequest,
        pref: PreferenceList,
        out: &mut Outbox,
    ) {
        self.begin(local, now, origin, request, pref, None, out)
    }

    /// [`Coordinator::start`]; `seen`: what the read of a read-first write found.
    #[allow(clippy::too_many_arguments)] // start's arguments, and the read
    fn begin<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        now: Now,
        origin: Origin,
        request: ClientRequest,
        pref: PreferenceList,
        seen: Option<Object>,
        out: &mut Outbox,
    ) {
        let mut tally = match admit(local.config, &request, &pref) {
            Ok(tally) => tally,
            Err(e) => return out.respond(origin, Err(e)),
        };
        self.next_id += 1;
        let id = self.next_id;
        // A delete without a context deletes what the replicas hold, an increment counts over
        // what they hold, and a conditional put checks what they hold: read it first (at R),
        // then write.
        let read_first = seen.is_none()
            && matches!(
                &request,
                ClientRequest::Put {
                    value: None,
                    context: None,
                    ..
                } | ClientRequest::Put {
                    condition: Some(_),
                    ..
                } | ClientRequest::Increment { .. }
            );
        let (request, then_delete) = if read_first {
            let replicas = pref.primaries.len();
            // An increment asked to wait for one replica reads only this one: it still counts,
            // its answer may lag increments through other nodes.
            let r = match &request {
                ClientRequest::Increment { w: Some(1), .. } => 1,
                _ => local.config.r,
            };
            let read_quorum = usize::from(r).min(replicas).max(1);
            let targets = pref.targets.iter().map(|t| t.node.clone()).collect();
            tally = Tally::new(targets, read_quorum);
            let read = ClientRequest::Get {
                key: request.key().to_vec(),
                r: None,
                pr: None,
            };
            let then = Box::new(DeleteAfter {
                now,
                pref: pref.clone(),
                request,
            });
            (read, Some(then))
        } else {
            (request, None)
        };
        let kind = match request {
            ClientRequest::Get { key, .. } => {
                self.counters.reads += 1;
                self.start_read(local, id, key, pref, then_delete, &mut tally, out)
            }
            ClientRequest::Put {
                key,
                value,
                context,
                overwrite,
                expires_in_ms,
                // Checked by the read first (a conditional put arrives here without it).
                condition: _,
                ..
            } => {
                let stamp = Stamp {
                    expires: expires_in_ms.map(|ttl| now.wall.saturating_add(ttl)),
                    kind: ValueKind::Bytes,
                };
                let write = Write::Put {
                    value,
                    context,
                    overwrite,
                    stamp,
                };
                match self.store_write(local, now, &key, write) {
                    Ok(object) => {
                        tally.succeed(local.id);
                        self.start_write(local, id, key, object, &pref, out)
                    }
                    Err(e) => return out.respond(origin, Err(e)),
                }
            }
            ClientRequest::Increment { key, by, .. } => {
                let write = Write::Increment {
                    by,
                    seen: seen.unwrap_or_default(),
                };
                match self.store_write(local, now, &key, write) {
                    Ok(object) => {
                        tally.succeed(local.id);
                        self.start_write(local, id, key, object, &pref, out)
                    }
                    Err(e) => return out.respond(origin, Err(e)),
                }
            }
            ClientRequest::Restore { key, object, .. } => {
                match self.store_write(local, now, &key, Write::Restore(object)) {
                    Ok(merged) => {
                        tally.succeed(local.id);
                        self.start_write(local, id, key, merged, &pref, out)
                    }
                    Err(e) => return out.respond(origin, Err(e)),
                }
            }
            // Refused by `admit` before it gets here.
            ClientRequest::List { .. } => return,
        };
        self.ops.insert(
            id,
            Operation {
                origin: Some(origin),
                tally,
                deadline: now.mono + local.config.request_timeout_ms,
                started: now.mono,
                wall: now.wall,
                kind,
            },
        );
        self.check(local, id, now.mono, out);
    }

    /// A read of `key` (operation `id`): this node's copy at once (unless it is rebuilding lost
    /// data), a `Read` to every other target.
    #[allow(clippy::too_many_arguments)] // the operation's parts, and the context
    fn start_read<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        id: RequestId,
        key: Vec<u8>,
        pref: PreferenceList,
        then_delete: Option<Box<DeleteAfter>>,
        tally: &mut Tally,
        out: &mut Outbox,
    ) -> Kind {
        let mut replies = BTreeMap::new();
        for t in &pref.targets {
            if t.node == local.id && local.rebuilding {
                tally.fail(&t.node);
            } else if t.node == local.id {
                match local_read(local.store, &key) {
                    Ok(obj) => {
                        tally.succeed(&t.node);
                        replies.insert(t.node.clone(), obj);
                    }
                    Err(_) => {
                        tally.fail(&t.node);
                    }
                }
            } else {
                out.send(
                    &t.node,
                    KvMessage::Read {
                        id,
                        key: key.clone(),
                    },
                );
            }
        }
        Kind::Read {
            key,
            replies,
            primaries: pref.primaries,
            then_delete,
        }
    }

    /// Stores `write` over this node's copy of `key` ([`stamp::apply`]), and counts it: a
    /// write, a refused one, a high counter, many siblings.
    fn store_write<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        now: Now,
        key: &[u8],
        write: Write,
    ) -> Result<Object, OpError> {
        self.counters.writes += 1;
        let stored = stamp::apply(local, now, key, write, self.counter_floor + 1);
        match &stored {
            Ok(object) => {
                let issued = object.clock().counter(local.actor);
                self.counter_floor = self.counter_floor.max(issued);
                if object.siblings().len() >= SIBLING_WARNING {
                    self.counters.sibling_warnings += 1;
                }
            }
            Err(OpError::Storage { .. } | OpError::InsufficientStorage { .. }) => {}
            Err(_) => self.counters.refused_writes += 1,
        }
        stored
    }

    /// The write of operation `id`, stored here: a `Replicate` to every other target (with a
    /// hint naming the owner a fallback stands in for), and to the pending replicas.
    fn start_write<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        id: RequestId,
        key: Vec<u8>,
        object: Object,
        pref: &PreferenceList,
        out: &mut Outbox,
    ) -> Kind {
        if pref.sloppy() {
            self.counters.sloppy_writes += 1;
        }
        for t in pref.targets.iter().filter(|t| t.node != local.id) {
            out.send(
                &t.node,
                KvMessage::Replicate {
                    id,
                    key: key.clone(),
                    object: object.clone(),
                    hint: t.hint().map(str::to_owned),
                },
            );
        }
        // Nodes joining (or taking over from a leaving node) get every write of the ranges they
        // will own; their answers do not count toward W.
        for p in pref.pending.iter().filter(|p| *p != local.id) {
            out.send(
                p,
                KvMessage::Replicate {
                    id,
                    key: key.clone(),
                    object: object.clone(),
                    hint: None,
                },
            );
        }
        let dot = Dot {
            actor: local.actor,
            counter: object.clock().counter(local.actor),
        };
        Kind::Write { object, dot }
    }

    /// Target `from` acknowledged (or refused) the write of operation `id`.
    pub fn on_replicate_ack<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        now: u64,
        from: &str,
        id: RequestId,
        result: Result<(), WireError>,
        out: &mut Outbox,
    ) -> Vec<String> {
        let Some(op) = self.ops.get_mut(&id) else {
            return Vec::new();
        };
        if !matches!(op.kind, Kind::Write { .. }) {
            return Vec::new();
        }
        if result.is_ok() {
            op.tally.succeed(from);
        } else {
            op.tally.fail(from);
        }
        self.check(local, id, now, out)
    }

    /// Target `from` answered the read of operation `id`.
    pub fn on_read_reply<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        now: u64,
        from: &str,
        id: RequestId,
        result: Result<Option<Object>, WireError>,
        out: &mut Outbox,
    ) -> Vec<String> {
        let Some(Operation {
            tally,
            kind: Kind::Read { replies, .. },
            ..
        }) = self.ops.get_mut(&id)
        else {
            return Vec::new();
        };
        match result {
            Ok(obj) if obj.as_ref().is_none_or(|o| o.validate().is_ok()) => {
                if tally.succeed(from) {
                    replies.insert(from.to_owned(), obj);
                }
            }
            _ => {
                tally.fail(from);
            }
        }
        self.check(local, id, now, out)
    }

    /// The transport lost `node`: operations waiting on it count it as failed.
    pub fn peer_down<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        now: u64,
        node: &str,
        out: &mut Outbox,
    ) -> Vec<String> {
        let ids: Vec<RequestId> = self
            .ops
            .iter_mut()
            .filter_map(|(id, op)| op.tally.fail(node).then_some(*id))
            .collect();
        let mut silent = Vec::new();
        for id in ids {
            silent.extend(self.check(local, id, now, out));
        }
        silent
    }

    /// Finishes the operations whose deadline passed; returns the targets that stayed silent.
    pub fn expire<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        now: u64,
        out: &mut Outbox,
    ) -> Vec<String> {
        let expired: Vec<RequestId> = self
            .ops
            .iter()
            .filter(|(_, op)| now >= op.deadline)
            .map(|(id, _)| *id)
            .collect();
        let mut silent = Vec::new();
        for id in expired {
            silent.extend(self.check(local, id, now, out));
        }
        silent
    }

    /// Answers and retires operation `id` as far as its replies allow; after its deadline,
    /// returns the targets that never answered.
    fn check<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        id: RequestId,
        now: u64,
        out: &mut Outbox,
    ) -> Vec<String> {
        let Some(op) = self.ops.get_mut(&id) else {
            return Vec::new();
        };
        let expired = now >= op.deadline;
        if let Kind::Read {
            then_delete: Some(_),
            ..
        } = &op.kind
            && op.origin.is_some()
            && op.tally.verdict(expired) == Verdict::Reached
        {
            return self.write_what_was_read(local, id, now, out);
        }
        if op.origin.is_some() {
            let (kind, written) = match &op.kind {
                Kind::Read { .. } => (QuorumKind::Read, false),
                Kind::Write { .. } => (QuorumKind::Write, true),
            };
            // Values past their deadline read as tombstones.
            let wall = op.wall + now.saturating_sub(op.started);
            let response = match op.tally.verdict(expired) {
                Verdict::Waiting => None,
                Verdict::Failed => Some(Err(op.tally.unavailable(kind, written))),
                Verdict::Reached => Some(Ok(match &op.kind {
                    Kind::Read { replies, .. } => {
                        let merged = merge_all(replies.values()).visible_at(wall);
                        let live = merged.live().count();
                        if live > 0 {
                            self.counters.reads_by_versions[live.min(4) - 1] += 1;
                        }
                        Reply::Read(merged)
                    }
                    Kind::Write { object, dot } => Reply::Written {
                        object: object.clone().visible_at(wall),
                        dot: *dot,
                    },
                })),
            };
            if let Some(response) = response
                && let Some(origin) = op.origin.take()
            {
                let outcome = match &response {
                    Ok(Reply::Read(o)) if o.live().next().is_none() => LatencyOutcome::NotFound,
                    Ok(_) => LatencyOutcome::Ok,
                    Err(_) => LatencyOutcome::Unavailable,
                };
                let kind = if written {
                    LatencyOp::Put
                } else {
                    LatencyOp::Get
                };
                let took = now.saturating_sub(op.started);
                self.latency.record(kind, outcome, took);
                self.recent.record(took);
                out.respond(origin, response);
            }
        }
        let silent = if expired {
            op.tally.pending_nodes()
        } else {
            Vec::new()
        };
        if (op.tally.complete() || expired)
            && let Some(done) = self.ops.remove(&id)
            && let Kind::Read {
                key,
                replies,
                primaries,
                ..
            } = done.kind
        {
            self.read_repair(local, &key, &replies, &primaries, out);
        }
        silent
    }

    /// The read of a read-first write reached R: delete exactly what it found (a put with the
    /// merged context), increment over it, or - if it meets the condition - put with its
    /// context, under the same origin.
    fn write_what_was_read<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        id: RequestId,
        now: u64,
        out: &mut Outbox,
    ) -> Vec<String> {
        let Some(op) = self.ops.get_mut(&id) else {
            return Vec::new();
        };
        let (
            Some(origin),
            Kind::Read {
                replies,
                then_delete,
                ..
            },
        ) = (op.origin.take(), &mut op.kind)
        else {
            return Vec::new();
        };
        let Some(then) = then_delete.take() else {
            return Vec::new();
        };
        let seen = merge_all(replies.values());
        let request = match then.request {
            ClientRequest::Put {
                condition: Some(condition),
                key,
                value,
                w,
                pw,
                expires_in_ms,
                ..
            } => {
                // The condition, against what the read found as a client would see it.
                let wall = then.now.wall + now.saturating_sub(then.now.mono);
                if let Some(reason) = condition.fails(&seen, wall) {
                    let err = OpError::PreconditionFailed {
                        reason: reason.to_owned(),
                        context: seen.context(),
                    };
                    out.respond(origin, Err(err));
                    return Vec::new();
                }
                ClientRequest::Put {
                    key,
                    value,
                    context: Some(seen.context()),
                    w,
                    pw,
                    overwrite: false,
                    expires_in_ms,
                    condition: None,
                }
            }
            // A delete without a context: of exactly what the read found.
            ClientRequest::Put {
                key,
                value: None,
                w,
                pw,
                ..
            } => ClientRequest::Put {
                key,
                value: None,
                context: Some(seen.context()),
                w,
                pw,
                overwrite: false,
                expires_in_ms: None,
                condition: None,
            },
            // An increment (over what the read found: `seen`).
            other => other,
        };
        // The read stays until its replies are in, for read repair.
        let now = Now {
            mono: now,
            wall: then.now.wall,
        };
        self.begin(local, now, origin, request, then.pref, Some(seen), out);
        Vec::new()
    }

    /// Sends the merge of every reply to each primary whose copy differed from it.
    fn read_repair<S: LocalStore>(
        &mut self,
        local: &Local<'_, S>,
        key: &[u8],
        replies: &Replies,
        primaries: &[String],
        out: &mut Outbox,
    ) {
        let merged = merge_all(replies.values());
        if merged.is_empty() {
            return;
        }
        // Only primaries are repaired: a fallback's copy goes home by handoff.
        for (node, copy) in replies.iter().filter(|(n, _)| primaries.contains(n)) {
            if copy.as_ref() == Some(&merged) {
                continue;
            }
            self.counters.read_repairs += 1;
            if node == local.id {
                let _ = local.store.merge(key, &merged);
            } else {
                out.send(
                    node,
                    KvMessage::Repair {
                        key: key.to_vec(),
                        object: merged.clone(),
                    },
                );
            }
        }
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// What this coordinator counted.
    pub fn counters(&self) -> &CoordinatorCounters {
        &self.counters
    }

    /// The highest counter this node's actor issued (persisted across clean restarts, when the
    /// actor is kept).
    pub fn counter_floor(&self) -> u64 {
        self.counter_floor
    }

    /// Raises the counter floor (to what a previous run of the same actor issued).
    pub fn raise_counter_floor(&mut self, floor: u64) {
        self.counter_floor = self.counter_floor.max(floor);
    }

    /// Latencies of the operations answered here, cumulative.
    pub fn latency(&self) -> &CoordinatorLatency {
        &self.latency
    }

    /// The latencies recorded since the last call (the scheduler empties it).
    pub fn recent_latencies(&mut self) -> &mut LatencyWindow {
        &mut self.recent
    }
}
