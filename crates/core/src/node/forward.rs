//! Request routing: who coordinates a request, and the requests this node forwarded to their
//! coordinator (Dynamo section 4.5, "Solution 1").
//!
//! Any reachable primary of a key's preference list coordinates the requests that reach it (the
//! paper lets any of the top N coordinate); a node that is no primary forwards the request to
//! the first reachable primary. A forward that gets no answer in time (the primary died or is
//! cut off, and is not yet known to be down) is sent on to the next reachable primary; the
//! first answer from any of them goes to the client. A request is forwarded at most
//! [`MAX_HOPS`] times, so nodes with different views never bounce it back and forth.
//!
//! After a retry, a failure answer says the write may exist (`written`), since a primary asked
//! before may have stored it. An increment is never sent on: the silent primary may have
//! applied it, and a second would count it twice (the client hears the coordinator was
//! unreachable, and decides).
//!
//! History: coordination by any primary was tried once before and taken back when the
//! simulator found a deleted value back after its tombstone was collected (one seed of
//! 1000-1499 at 5 nodes), never explained at the time. It does not reproduce since endings
//! (removed or stale instances are refused) and per-run request ids (a late acknowledgement of
//! a node's previous run no longer counts for its next run): 4 000 seeds at 3, 5 and 7 nodes
//! pass. What any-primary coordination did show up since - a joining node whose seeds were all
//! down making a cluster of its own - is fixed in `Node::tick`. It saves the forwarding hop for
//! the requests that reach a primary (3 in 5 instead of 1 in 5 at N=3 on 5 nodes).

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
/// `hops` forwards: a primary coordinates it; any other node forwards it to the reachable
/// primaries, or - after [`MAX_HOPS`] forwards, or with none reachable - answers that it cannot.
pub fn route(pref: &PreferenceList, me: &str, hops: u8) -> Route {
    if pref.primaries.iter().any(|p| p == me) {
        return Route::Coordinate;
    }
    let up: Vec<String> = pref
        .targets
        .iter()
        .filter(|t| t.role == Role::Primary)
        .map(|t| t.node.clone())
        .collect();
    if !up.is_empty() && hops < MAX_HOPS {
        Route::Forward(up)
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
        if matches!(request, ClientRequest::Increment { .. }) {
            primaries.clear();
        }
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

    /// The primaries that requests wait on (the last one asked for each).
    pub fn waiting_on(&self) -> std::collections::BTreeSet<String> {
        self.pending
            .values()
            .filter_map(|f| f.asked.last().cloned())
            .collect()
    }

    /// `node` is suspected (it leaves requests unanswered): requests forwarded to it go to the
    /// next primary at once, as if it were lost, without waiting for their attempt to expire.
    pub fn suspected(&mut self, now: u64, attempt_ms: u64, node: &str, out: &mut Outbox) {
        self.give_up_on(now, attempt_ms, node, "not answering", out);
    }

    /// The transport lost `node`: requests forwarded to it go to the next primary at once, or
    /// fail when every primary asked is gone and none is left.
    pub fn peer_down(&mut self, now: u64, attempt_ms: u64, node: &str, out: &mut Outbox) {
        self.give_up_on(now, attempt_ms, node, "connection lost", out);
    }

    fn give_up_on(&mut self, now: u64, attempt_ms: u64, node: &str, why: &str, out: &mut Outbox) {
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
                        reason: why.into(),
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
    fn a_primary_coordinates_and_others_forward_to_the_reachable_primaries() {
        let p = pref(&["a", "b", "c"], &["b", "c"]);
        assert_eq!(route(&p, "b", 0), Route::Coordinate);
        assert_eq!(route(&p, "c", 0), Route::Coordinate);
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
