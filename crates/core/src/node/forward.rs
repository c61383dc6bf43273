//! Request routing: who coordinates a request, and the requests this node forwarded to their
//! coordinator (Dynamo section 4.5, "Solution 1").
//!
//! The coordinator of a key is the first reachable primary of its preference list. A node that
//! is not the coordinator forwards the request to it; a forwarded request is coordinated by the
//! receiver if it is a primary, so two nodes with different views never bounce a request back
//! and forth. A forward that gets no answer in time (the primary died or is cut off, and is not
//! yet known to be down) is sent on to the next reachable primary; the first answer from any of
//! them goes to the client.
//!
//! After a retry, a failure answer says the write may exist (`written`), since a primary asked
//! before may have stored it.
//!
//! Letting every primary coordinate what reaches it (the paper allows any of the top N) was
//! tried and taken back: with it the simulator found a deleted value back after its tombstone
//! was collected (one seed of 1000-1499 at 5 nodes), not yet explained; see docs/bench.md.

use super::outbox::{Origin, Outbox};
use crate::message::{ClientRequest, ClientResponse, KvMessage, OpError, RequestId};
use crate::preference::{PreferenceList, Role};
use std::collections::BTreeMap;

/// Most times a request is forwarded before a node coordinates or gives up.
pub const MAX_HOPS: u8 = 2;

/// What to do with a request that reached this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Coordinate it here.
    Coordinate,
    /// Forward it to the first of these reachable primaries (the next ones if it stays silent).
    Forward(Vec<String>),
    /// No primary is reachable and this node is none of them.
    Unreachable,
}

/// Where a request for a key with preference list `pref` goes when it reaches node `me` after
/// `hops` forwards.
pub fn route(pref: &PreferenceList, me: &str, hops: u8) -> Route {
    let i_am_primary = pref.primaries.iter().any(|p| p == me);
    if i_am_primary && (hops > 0 || pref.coordinator() == Some(me)) {
        return Route::Coordinate;
    }
    let up: Vec<String> = pref
        .targets
        .iter()
        .filter(|t| t.role == Role::Primary && t.node != me)
        .map(|t| t.node.clone())
        .collect();
    if !up.is_empty() && hops < MAX_HOPS {
        return Route::Forward(up);
    }
    if i_am_primary {
        Route::Coordinate
    } else {
        Route::Unreachable
    }
}

#[derive(Debug)]
struct Forwarded {
    origin: Origin,
    /// The request, kept for the next primary if this one stays silent.
    request: ClientRequest,
    hops: u8,
    /// Primaries asked so far (an answer from any of them is taken).
    asked: Vec<String>,
    /// Primaries still to try, in preference order.
    next: Vec<String>,
    /// When the last one asked counts as silent and the next is asked (monotonic ms).
    retry_at: u64,
    /// When the client is answered with an error (monotonic ms).
    deadline: u64,
}

/// The requests this node forwarded and is waiting on.
#[derive(Debug, Default)]
pub struct Forwarder {
    pending: BTreeMap<RequestId, Forwarded>,
    next_id: RequestId,
    forwarded: u64,
    retried: u64,
}

impl Forwarder {
    /// Numbers this run's forwarded requests from `first` on (see [`super::Node::new`]).
    pub fn start_ids_at(&mut self, first: RequestId) {
        self.next_id = first;
    }

    /// Sends `request` to the first of `primaries` (the reachable primaries, in preference
    /// order), asking the next one when no answer came within `attempt_ms`, and answering
    /// `origin` with the first reply or with an error at `deadline` (monotonic ms).
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        now: u64,
        attempt_ms: u64,
        deadline: u64,
        origin: Origin,
        mut primaries: Vec<String>,
        request: ClientRequest,
        hops: u8,
        out: &mut Outbox,
    ) {
        if primaries.is_empty() {
            return;
        }
        let first = primaries.remove(0);
        self.forwarded += 1;
        self.next_id += 1;
        let id = self.next_id;
        out.send(
            &first,
            KvMessage::Forward {
                id,
                request: request.clone(),
                hops,
            },
        );
        self.pending.insert(
            id,
            Forwarded {
                origin,
                request,
                hops,
                asked: vec![first],
                next: primaries,
                retry_at: now + attempt_ms,
                deadline,
            },
        );
    }

    /// Asks the next primary for request `id`; false when there is none.
    fn retry(&mut self, id: RequestId, retry_at: u64, out: &mut Outbox) -> bool {
        let Some(f) = self.pending.get_mut(&id) else {
            return false;
        };
        if f.next.is_empty() {
            return false;
        }
        let to = f.next.remove(0);
        out.send(
            &to,
            KvMessage::Forward {
                id,
                request: f.request.clone(),
                hops: f.hops,
            },
        );
        f.asked.push(to);
        f.retry_at = retry_at;
        self.retried += 1;
        true
    }

    /// A coordinator `from` answered request `id`; a reply from a node not asked is ignored.
    pub fn on_reply(
        &mut self,
        from: &str,
        id: RequestId,
        response: ClientResponse,
        out: &mut Outbox,
    ) {
        if self
            .pending
            .get(&id)
            .is_some_and(|f| f.asked.iter().any(|a| a == from))
            && let Some(f) = self.pending.remove(&id)
        {
            let mut response = response;
            if f.asked.len() > 1
                && let Err(OpError::Unavailable { written, .. }) = &mut response
            {
                // Another primary asked before may have stored the write: the client must not
                // be told it was not written.
                *written = true;
            }
            out.respond(f.origin, response);
        }
    }

    /// The transport lost `node`: requests forwarded to it go to the next primary at once, or
    /// fail when every primary asked is gone and none is left.
    pub fn peer_down(&mut self, now: u64, attempt_ms: u64, node: &str, out: &mut Outbox) {
        let lost: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, f)| f.asked.last().is_some_and(|a| a == node))
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if self.retry(id, now + attempt_ms, out) {
                continue;
            }
            if let Some(f) = self.pending.remove(&id) {
                out.respond(
                    f.origin,
                    Err(OpError::CoordinatorUnreachable {
                        node: f.asked.join(", "),
                        reason: "connection lost".into(),
                    }),
                );
            }
        }
    }

    /// Asks the next primary for requests whose last coordinator stayed silent past its
    /// attempt, and fails those past their deadline; returns the coordinators that stayed
    /// silent.
    pub fn expire(&mut self, now: u64, attempt_ms: u64, out: &mut Outbox) -> Vec<String> {
        let mut silent = Vec::new();
        let due: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, f)| now >= f.retry_at || now >= f.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(f) = self.pending.get(&id) else {
                continue;
            };
            let last = f.asked.last().cloned().unwrap_or_default();
            let (live, due) = (now < f.deadline, now >= f.retry_at);
            if live && due && self.retry(id, now + attempt_ms, out) {
                silent.push(last);
                continue;
            }
            if live {
                continue;
            }
            if let Some(f) = self.pending.remove(&id) {
                out.respond(
                    f.origin,
                    Err(OpError::CoordinatorUnreachable {
                        node: f.asked.join(", "),
                        reason: "timed out".into(),
                    }),
                );
                silent.extend(f.asked);
            }
        }
        silent.sort();
        silent.dedup();
        silent
    }

    /// Requests waiting on a coordinator.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Requests forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.forwarded
    }

    /// Forwards sent on to another primary after the first stayed silent.
    pub fn retried(&self) -> u64 {
        self.retried
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::Target;

    fn pref(primaries: &[&str], up: &[&str]) -> PreferenceList {
        PreferenceList {
            primaries: primaries.iter().map(|p| p.to_string()).collect(),
            targets: up
                .iter()
                .map(|n| Target {
                    node: n.to_string(),
                    role: Role::Primary,
                })
                .collect(),
            pending: Vec::new(),
        }
    }

    #[test]
    fn routes_to_the_first_reachable_primary() {
        let p = pref(&["a", "b", "c"], &["b", "c"]);
        assert_eq!(route(&p, "b", 0), Route::Coordinate);
        assert_eq!(route(&p, "c", 0), Route::Forward(vec!["b".into()]));
        assert_eq!(
            route(&p, "c", 1),
            Route::Coordinate,
            "a forwarded request stays"
        );
        assert_eq!(
            route(&p, "x", 0),
            Route::Forward(vec!["b".into(), "c".into()])
        );
        assert_eq!(route(&p, "x", MAX_HOPS), Route::Unreachable);
        let none = pref(&["a", "b", "c"], &[]);
        assert_eq!(route(&none, "x", 0), Route::Unreachable);
    }
}
