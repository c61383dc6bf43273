//! The data lifecycle in the workload - values with a time to live, conditional creates and
//! counters, each on keys of its own - and what the checker asks of each:
//!
//! - **Expiry**: no read returns a value after its deadline plus the clock-skew bound. A value
//!   written with time to live T whose write was answered at t has a deadline of at most
//!   t + T + s on the true clock (its coordinator's clock is at most s ahead, s the largest
//!   offset any node's wall clock had so far), and a coordinator whose clock is at most s behind
//!   stops returning it by t + T + 2s: a read issued later that returns it is an
//!   `ExpiredRead`.
//! - **Conditional creates** (`If-None-Match: *`, `SET NX`): a put with `Condition::Absent`,
//!   which the key's coordinator checks against a read at R before it writes with that read's
//!   context. The create keys are in the lost-write check (an acknowledged create is never
//!   lost: concurrent ones are siblings), and the run counts the keys more than one create was
//!   acknowledged for - the race rate, since the check is not linearizable.
//! - **Counters**: after the run settles, each counter's value lies between the sum of the
//!   acknowledged increments and the sum of those that may have been applied
//!   (`CounterOutOfRange`).

use crate::checker::{Outcome, Violation};
use crate::world::{OpKind, Sim};
use dynamokv_core::counter::PnCounter;
use dynamokv_core::message::{ClientRequest, ClientResponse, Condition, OpError, Reply};
use dynamokv_core::store::LocalStore;
use dynamokv_core::{Object, VersionVector};
use std::collections::{BTreeMap, BTreeSet};

/// Keys written with a time to live.
const EXPIRY_KEYS: u64 = 3;
/// Counter keys.
const COUNTER_KEYS: u64 = 2;
/// Conditional creates aim at one key per window of this many ms: clients in one window race.
const CREATE_WINDOW_MS: u64 = 300;

/// How the data lifecycle operations of a run went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LifecycleStats {
    /// Conditional creates acknowledged.
    pub creates_ok: usize,
    /// Conditional creates refused because their read found a value.
    pub creates_refused: usize,
    /// Create keys at least one create was acknowledged for.
    pub create_keys: usize,
    /// Of those, the keys more than one create was acknowledged for (they raced).
    pub create_keys_raced: usize,
    /// Reads of expiring keys checked.
    pub expiry_reads: usize,
    /// Increments acknowledged.
    pub increments_ok: usize,
}

impl Sim {
    /// Client `c` sends an operation of the data lifecycle.
    pub(crate) fn lifecycle_op(&mut self, c: usize) {
        let op = self.ops.len();
        let roll = self.rng.below(100);
        let context = |sim: &Sim, key: &[u8]| sim.clients[c].contexts.get(key).cloned();
        match roll {
            0..30 => {
                let key = format!("ttl{}", self.rng.below(EXPIRY_KEYS)).into_bytes();
                let ttl = self.rng.range(20, 3_000);
                let value = format!("c{c}-op{op}-ttl").into_bytes();
                self.expiring.insert(value.clone(), op);
                let request = ClientRequest::Put {
                    key: key.clone(),
                    value: Some(value),
                    context: context(self, &key),
                    w: None,
                    pw: None,
                    overwrite: false,
                    expires_in_ms: Some(ttl),
                    condition: None,
                };
                self.send(c, key, request, None, OpKind::Expiring { ttl });
            }
            30..55 => {
                let key = format!("ttl{}", self.rng.below(EXPIRY_KEYS)).into_bytes();
                let request = ClientRequest::Get {
                    key: key.clone(),
                    r: None,
                    pr: None,
                };
                self.send(c, key, request, None, OpKind::ExpiryRead);
            }
            55..75 => {
                let key = format!("new{:06}", self.now / CREATE_WINDOW_MS).into_bytes();
                let value = format!("c{c}-op{op}-new").into_bytes();
                let request = ClientRequest::Put {
                    key: key.clone(),
                    value: Some(value.clone()),
                    context: None,
                    w: None,
                    pw: None,
                    overwrite: false,
                    expires_in_ms: None,
                    condition: Some(Condition::Absent),
                };
                // The context the coordinator writes with is its read's: it covers no live
                // value (else the create is refused), so the checker is told none.
                let write = Some((Some(value), VersionVector::new(), None));
                self.send(c, key, request, write, OpKind::Create);
            }
            _ => {
                let key = format!("ctr{}", self.rng.below(COUNTER_KEYS)).into_bytes();
                let by = self.rng.range(1, 10) as i64;
                let request = ClientRequest::Increment {
                    key: key.clone(),
                    by,
                    w: None,
                    pw: None,
                };
                self.send(c, key, request, None, OpKind::Increment { by });
            }
        }
    }

    /// The answer to lifecycle operation `op` of client `c` (already marked done).
    pub(crate) fn lifecycle_answer(&mut self, c: usize, op: usize, response: ClientResponse) {
        let key = self.ops[op].key.clone();
        match (self.ops[op].kind, response) {
            (OpKind::ExpiryRead, Ok(Reply::Read(obj))) => {
                self.clients[c].contexts.insert(key.clone(), obj.context());
                self.check_expired(op, &obj);
            }
            (OpKind::Expiring { .. }, Ok(Reply::Written { object, dot })) => {
                self.clients[c].contexts.insert(key, object.context());
                self.ops[op].dot = Some(dot);
            }
            (OpKind::Create, Err(OpError::PreconditionFailed { .. })) => {
                self.creates_refused += 1;
            }
            (OpKind::Create | OpKind::Increment { .. }, Ok(Reply::Written { dot, .. })) => {
                self.ops[op].dot = Some(dot);
                self.check_ack(op, dot);
            }
            _ => {}
        }
        self.finish_op(c);
    }

    /// A read of an expiring key (operation `op`) returned `obj`: none of its values may be
    /// past its deadline plus the skew bound.
    fn check_expired(&mut self, op: usize, obj: &Object) {
        let issued = self.ops[op].issued_at;
        let bound = 2 * self.max_skew;
        for s in obj.live() {
            let Some(w) = s.value.as_ref().and_then(|v| self.expiring.get(v)) else {
                continue;
            };
            let (OpKind::Expiring { ttl }, Some(answered)) =
                (self.ops[*w].kind, self.ops[*w].answered_at)
            else {
                continue;
            };
            let latest = answered + ttl + bound;
            if issued > latest {
                self.violations.push(Violation::ExpiredRead {
                    key: self.ops[op].key.clone(),
                    value: s.value.clone().unwrap_or_default(),
                    late_by_ms: issued - latest,
                });
            }
        }
    }

    /// The create keys, for the final state the checker reads.
    pub(crate) fn create_keys(&self) -> BTreeSet<Vec<u8>> {
        self.ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Create))
            .map(|o| o.key.clone())
            .collect()
    }

    /// The keys of created values and counters the run wrote: like the main keys, they must
    /// converge (expiring keys may be collected at different moments, so they are left out).
    pub(crate) fn lifecycle_keys(&self) -> BTreeSet<Vec<u8>> {
        self.ops
            .iter()
            .filter(|o| matches!(o.kind, OpKind::Create | OpKind::Increment { .. }))
            .map(|o| o.key.clone())
            .collect()
    }

    /// After the run settled: every counter within its bounds; the lifecycle figures.
    pub(crate) fn check_lifecycle(&mut self) -> LifecycleStats {
        let mut stats = LifecycleStats {
            creates_refused: self.creates_refused,
            expiry_reads: self
                .ops
                .iter()
                .filter(|o| o.kind == OpKind::ExpiryRead && o.outcome == Some(Outcome::Ok))
                .count(),
            ..LifecycleStats::default()
        };
        let mut acked_creates: BTreeMap<&[u8], usize> = BTreeMap::new();
        for o in self.ops.iter().filter(|o| o.kind == OpKind::Create) {
            if o.outcome == Some(Outcome::Ok) {
                stats.creates_ok += 1;
                *acked_creates.entry(&o.key).or_default() += 1;
            }
        }
        stats.create_keys = acked_creates.len();
        stats.create_keys_raced = acked_creates.values().filter(|n| **n > 1).count();
        // Counters: acknowledged (and still held somewhere) <= value <= possibly applied.
        let mut bounds: BTreeMap<Vec<u8>, (i64, i64)> = BTreeMap::new();
        for o in &self.ops {
            let OpKind::Increment { by } = o.kind else {
                continue;
            };
            let b = bounds.entry(o.key.clone()).or_default();
            match o.outcome {
                Some(Outcome::Ok) => {
                    stats.increments_ok += 1;
                    let lost = o.excused
                        || (!o.holders.is_empty()
                            && o.holders
                                .iter()
                                .all(|(h, instance)| self.nodes[*h].lost.contains(instance)));
                    if !lost {
                        b.0 += by;
                    }
                    b.1 += by;
                }
                Some(Outcome::Failed {
                    maybe_written: false,
                }) => {}
                _ => b.1 += by,
            }
        }
        for (key, (acked, attempted)) in bounds {
            let merged = self
                .primaries(&key)
                .into_iter()
                .filter_map(|p| self.nodes[p].store.get(&key).ok().flatten())
                .fold(Object::new(), |acc, o| acc.merge(&o));
            let value = PnCounter::of(&merged, u64::MAX).map_or(i64::MIN, |c| c.value());
            if value < acked || value > attempted {
                self.violations.push(Violation::CounterOutOfRange {
                    key,
                    value,
                    acked,
                    attempted,
                });
            }
        }
        stats
    }
}
