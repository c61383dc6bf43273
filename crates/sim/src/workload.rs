//! The clients: what they send (gets, puts with the context of their last read, blind puts,
//! deletes), and how their answers are recorded for the checker.

use crate::CLIENT_TIMEOUT_MS;
use crate::checker::{Outcome, Violation};
use crate::world::{Ev, OpKind, OpRecord, Sim, SimNode, key_name};
use dynamokv_core::VersionVector;
use dynamokv_core::message::{ClientId, ClientRequest, ClientResponse, OpError, Reply};
use dynamokv_core::store::LocalStore;

impl Sim {
    pub(crate) fn answer(&mut self, cid: ClientId, response: ClientResponse) {
        let Some((c, op)) = self.pending.remove(&cid) else {
            return;
        };
        if self.ops[op].done {
            return;
        }
        let key = self.ops[op].key.clone();
        let is_write = self.ops[op].write.is_some();
        let outcome = match &response {
            Ok(_) => Outcome::Ok,
            Err(OpError::Unavailable { written, .. }) => Outcome::Failed {
                maybe_written: *written,
            },
            Err(OpError::CoordinatorUnreachable { .. }) => Outcome::Unknown,
            Err(_) => Outcome::Failed {
                maybe_written: false,
            },
        };
        self.ops[op].answered_at = Some(self.now);
        if self.ops[op].kind != OpKind::Plain {
            self.ops[op].done = true;
            self.ops[op].outcome = Some(outcome);
            return self.lifecycle_answer(c, op, response);
        }
        match response {
            Ok(Reply::Read(obj)) => {
                self.clients[c].contexts.insert(key.clone(), obj.context());
            }
            Ok(Reply::Written { object, dot }) => {
                self.ops[op].dot = Some(dot);
                self.clients[c]
                    .contexts
                    .insert(key.clone(), object.context());
                self.check_ack(op, dot);
            }
            // The workload does not list.
            Ok(Reply::Keys { .. }) | Err(_) => {}
        }
        self.log(|| {
            format!(
                "client {c} op {op} {} -> {outcome:?}",
                if is_write { "write" } else { "read" }
            )
        });
        self.ops[op].done = true;
        self.ops[op].outcome = Some(outcome);
        self.finish_op(c);
    }

    /// An acknowledged write must be held by at least W of its primaries right now.
    pub(crate) fn check_ack(&mut self, op: usize, dot: dynamokv_core::Dot) {
        let key = self.ops[op].key.clone();
        let w = self.ops[op]
            .write
            .as_ref()
            .and_then(|(_, _, w)| *w)
            .unwrap_or(self.cfg.node.w) as usize;
        // Holders: nodes whose own copy, or a hint they keep, has the write.
        let holding: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                n.store
                    .get(&key)
                    .ok()
                    .flatten()
                    .is_some_and(|o| o.clock().covers(dot))
                    || n.store
                        .hints_for_key(&key)
                        .unwrap_or_default()
                        .iter()
                        .any(|h| h.object.clock().covers(dot))
            })
            .collect();
        // A replica that acknowledged and then lost its disk (or had it put back from a copy)
        // before the answer reached the client held the write when it acknowledged.
        let issued = self.ops[op].issued_at;
        let wiped = (0..self.nodes.len())
            .filter(|i| !holding.contains(i))
            .filter(|i| self.nodes[*i].disk_replaced.iter().any(|t| *t >= issued))
            .count();
        let holders = holding.len() + wiped;
        self.ops[op].holders = holding
            .into_iter()
            .map(|i| (i, self.nodes[i].member.instance))
            .collect();
        if holders < w {
            self.violations.push(Violation::UnderReplicatedAck {
                key,
                dot,
                holders,
                needed: w,
            });
        }
    }

    /// Some disks stopped counting (a node crashed for good, lost its disk, was removed, or was
    /// put back on an older copy): every acknowledged write no longer held by any node whose
    /// disk counts (in its store or a hint it keeps) may be gone, through no fault of the
    /// cluster - its W copies were all on those disks (copies move: a hint handed to its owner,
    /// keys handed to new owners).
    pub(crate) fn disks_lost(&mut self) {
        for o in 0..self.ops.len() {
            let op = &self.ops[o];
            let (Some(dot), Some(Outcome::Ok), false) = (op.dot, op.outcome, op.excused) else {
                continue;
            };
            let held = |n: &SimNode| {
                !n.lost.contains(&n.member.instance)
                    && (n
                        .store
                        .get(&op.key)
                        .ok()
                        .flatten()
                        .is_some_and(|x| x.clock().covers(dot))
                        || n.store
                            .hints_for_key(&op.key)
                            .unwrap_or_default()
                            .iter()
                            .any(|h| h.object.clock().covers(dot)))
            };
            if !self.nodes.iter().any(held) {
                self.ops[o].excused = true;
            }
        }
    }

    pub(crate) fn primaries(&self, key: &[u8]) -> Vec<usize> {
        let ring_owner = self
            .in_cluster()
            .into_iter()
            .find_map(|i| self.nodes[i].core.as_ref())
            .map(|c| c.preference(key).primaries);
        ring_owner
            .unwrap_or_default()
            .iter()
            .filter_map(|id| self.index_of(id))
            .collect()
    }

    pub(crate) fn finish_op(&mut self, c: usize) {
        self.clients[c].busy = None;
        let think = self.rng.range(1, 10);
        self.at(self.now + think, Ev::ClientNext(c));
    }

    pub(crate) fn client_next(&mut self, c: usize) {
        if self.clients[c].busy.is_some() || self.stop_issuing || self.issued >= self.cfg.ops {
            return;
        }
        self.issued += 1;
        // Now and then an operation of the data lifecycle: expiry, a conditional create, a
        // counter (see `lifecycle`).
        if self.rng.chance(0.2) {
            return self.lifecycle_op(c);
        }
        let k = key_name(self.rng.below(self.cfg.keys as u64) as usize);
        let n = self.cfg.node.n;
        let quorum = if self.rng.chance(0.3) {
            Some(self.rng.range(1, u64::from(n)) as u8)
        } else {
            None
        };
        let roll = self.rng.below(100);
        let op = self.ops.len();
        let value = format!("c{c}-op{op}").into_bytes();
        let last = self.clients[c]
            .contexts
            .get(&k)
            .cloned()
            .unwrap_or_default();
        // Now and then ask for primaries explicitly (PR/PW), which refuses sloppy quorums.
        let strict = if self.rng.chance(0.1) {
            Some(self.rng.range(1, u64::from(n)) as u8)
        } else {
            None
        };
        let (request, write) = match roll {
            0..30 => (
                ClientRequest::Get {
                    key: k.clone(),
                    r: quorum,
                    pr: strict,
                },
                None,
            ),
            30..65 => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: Some(value.clone()),
                    context: Some(last.clone()),
                    w: quorum,
                    pw: strict,
                    overwrite: false,
                    expires_in_ms: None,
                    condition: None,
                },
                Some((Some(value), last, quorum)),
            ),
            65..80 => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: Some(value.clone()),
                    context: Some(VersionVector::new()),
                    w: quorum,
                    pw: strict,
                    overwrite: false,
                    expires_in_ms: None,
                    condition: None,
                },
                Some((Some(value), VersionVector::new(), quorum)),
            ),
            80..92 => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: None,
                    context: Some(last.clone()),
                    w: quorum,
                    pw: strict,
                    overwrite: false,
                    expires_in_ms: None,
                    condition: None,
                },
                Some((None, last, quorum)),
            ),
            _ => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: None,
                    context: Some(VersionVector::new()),
                    w: quorum,
                    pw: strict,
                    overwrite: false,
                    expires_in_ms: None,
                    condition: None,
                },
                Some((None, VersionVector::new(), quorum)),
            ),
        };
        self.send(c, k, request, write, OpKind::Plain);
    }

    /// Client `c` sends `request` (about `key`) to a random node, recording it as an operation
    /// of `kind` (`write`: what it writes, for the checker).
    pub(crate) fn send(
        &mut self,
        c: usize,
        key: Vec<u8>,
        request: ClientRequest,
        write: Option<(Option<Vec<u8>>, VersionVector, Option<u8>)>,
        kind: OpKind,
    ) {
        let op = self.ops.len();
        self.ops.push(OpRecord {
            client: c,
            key,
            write,
            done: false,
            outcome: None,
            dot: None,
            holders: Vec::new(),
            issued_at: self.now,
            excused: false,
            kind,
            answered_at: None,
        });
        let to = self.rng.below(self.nodes.len() as u64) as usize;
        self.clients[c].busy = Some(op);
        if self.nodes[to].core.is_none() {
            // Connection refused: nothing was sent.
            self.ops[op].done = true;
            self.ops[op].outcome = Some(Outcome::Failed {
                maybe_written: false,
            });
            self.finish_op(c);
            return;
        }
        let cid = self.next_client_id;
        self.next_client_id += 1;
        self.pending.insert(cid, (c, op));
        self.at(
            self.now + 1,
            Ev::Request {
                to,
                client: cid,
                request,
            },
        );
        self.at(self.now + CLIENT_TIMEOUT_MS, Ev::ClientTimeout(c, op));
    }
}
