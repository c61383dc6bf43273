//! Request routing: who coordinates a request, and the requests this node forwarded to their
//! coordinator (Dynamo section 4.5, "Solution 1").
//!
//! The coordinator of a key is the first reachable primary of its preference list. A node that
//! is not the coordinator forwards the request to it; a forwarded request is coordinated by the
//! receiver if it is a primary, so two nodes with different views never bounce a request back
//! and forth.

use super::outbox::{Origin, Outbox};
use crate::message::{ClientRequest, ClientResponse, KvMessage, OpError, RequestId};
use crate::preference::PreferenceList;
use std::collections::BTreeMap;

/// Most times a request is forwarded before a node coordinates or gives up.
pub const MAX_HOPS: u8 = 2;

/// What to do with a request that reached this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Coordinate it here.
    Coordinate,
    /// Forward it to this node.
    Forward(String),
    /// No primary is reachable and this node is none of them.
    Unreachable,
}

/// Where a request for a key with preference list `pref` goes when it reaches node `me` after
/// `hops` forwards.
pub fn route(pref: &PreferenceList, me: &str, hops: u8) -> Route {
    let i_am_primary = pref.primaries.iter().any(|p| p == me);
    let first_up = pref.coordinator();
    if i_am_primary && (hops > 0 || first_up == Some(me)) {
        return Route::Coordinate;
    }
    match first_up {
        Some(target) if target != me && hops < MAX_HOPS => Route::Forward(target.to_owned()),
        _ if i_am_primary => Route::Coordinate,
        _ => Route::Unreachable,
    }
}

#[derive(Debug)]
struct Forwarded {
    origin: Origin,
    to: String,
    deadline: u64,
}

/// The requests this node forwarded and is waiting on.
#[derive(Debug, Default)]
pub struct Forwarder {
    pending: BTreeMap<RequestId, Forwarded>,
    next_id: RequestId,
    forwarded: u64,
}

impl Forwarder {
    /// Sends `request` to coordinator `to`, answering `origin` when it replies or when
    /// `deadline` (monotonic ms) passes.
    pub fn forward(
        &mut self,
        deadline: u64,
        origin: Origin,
        to: &str,
        request: ClientRequest,
        hops: u8,
        out: &mut Outbox,
    ) {
        self.forwarded += 1;
        self.next_id += 1;
        let id = self.next_id;
        self.pending.insert(
            id,
            Forwarded {
                origin,
                to: to.to_owned(),
                deadline,
            },
        );
        out.send(to, KvMessage::Forward { id, request, hops });
    }

    /// The coordinator `from` answered request `id`; a reply from anyone else is ignored.
    pub fn on_reply(
        &mut self,
        from: &str,
        id: RequestId,
        response: ClientResponse,
        out: &mut Outbox,
    ) {
        if self.pending.get(&id).is_some_and(|f| f.to == from)
            && let Some(f) = self.pending.remove(&id)
        {
            out.respond(f.origin, response);
        }
    }

    /// The transport lost `node`: requests forwarded to it fail at once.
    pub fn peer_down(&mut self, node: &str, out: &mut Outbox) {
        let lost: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, f)| f.to == node)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            if let Some(f) = self.pending.remove(&id) {
                out.respond(
                    f.origin,
                    Err(OpError::CoordinatorUnreachable {
                        node: node.to_owned(),
                        reason: "connection lost".into(),
                    }),
                );
            }
        }
    }

    /// Fails the requests whose deadline passed; returns the coordinators that stayed silent.
    pub fn expire(&mut self, now: u64, out: &mut Outbox) -> Vec<String> {
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, f)| now >= f.deadline)
            .map(|(id, _)| *id)
            .collect();
        let mut silent = Vec::new();
        for id in expired {
            if let Some(f) = self.pending.remove(&id) {
                out.respond(
                    f.origin,
                    Err(OpError::CoordinatorUnreachable {
                        node: f.to.clone(),
                        reason: "timed out".into(),
                    }),
                );
                silent.push(f.to);
            }
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preference::{Role, Target};

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
        assert_eq!(route(&p, "c", 0), Route::Forward("b".into()));
        assert_eq!(
            route(&p, "c", 1),
            Route::Coordinate,
            "a forwarded request stays"
        );
        assert_eq!(route(&p, "x", 0), Route::Forward("b".into()));
        assert_eq!(route(&p, "x", MAX_HOPS), Route::Unreachable);
        let none = pref(&["a", "b", "c"], &[]);
        assert_eq!(route(&none, "x", 0), Route::Unreachable);
    }
}
