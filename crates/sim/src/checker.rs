//! The checker: given the history of what clients were told and the replicas' final state after
//! the faults healed and the cluster settled, find broken promises.
//!
//! - **Lost write**: a write acknowledged to its client is neither present in the final object
//!   (as the value or a sibling, found by its dot) nor superseded by some write whose context
//!   covered its dot.
//! - **False sibling**: two siblings of the final object where one write's context covered the
//!   other's dot (the later write saw the earlier one, so it should have replaced it).
//! - **Diverged replicas**: the N replicas of a key do not hold the same object.
//! - **Resurrected value**: an acknowledged delete whose tombstone was collected, with a value
//!   it had superseded back in the final object.
//! - **Under-replicated acknowledgement**: a write acknowledged at W that fewer than W replicas
//!   held when it was acknowledged (a failed write reported as acknowledged). Only the simulator
//!   can see this one, at the moment of the answer; it records it as a violation directly.
//!
//! Writes are identified by their dot when the coordinator returned one, and by their value
//! otherwise (workloads write unique values). The checker is shared by the simulator and the
//! real-process fault tests.

use dynamokv_core::{Dot, Object, VersionVector};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What the client was told about a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: at least W replicas stored it.
    Ok,
    /// Refused. `maybe_written` is true when some replica may still have stored it.
    Failed {
        /// Whether the write may exist somewhere.
        maybe_written: bool,
    },
    /// No answer (timeout, connection lost): it may or may not exist.
    Unknown,
}

/// One put or delete as a client issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    /// The key.
    pub key: Vec<u8>,
    /// The value written; `None` for a delete.
    pub value: Option<Vec<u8>>,
    /// The context the client sent (empty for a blind write).
    pub context: VersionVector,
    /// What the client was told.
    pub outcome: Outcome,
    /// The dot the coordinator gave the write, when it answered.
    pub dot: Option<Dot>,
}

impl WriteRecord {
    /// True when the write may have reached a replica (and so superseded what it covered).
    fn may_exist(&self) -> bool {
        !matches!(
            self.outcome,
            Outcome::Failed {
                maybe_written: false
            }
        )
    }
}

/// A broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// An acknowledged write vanished without being superseded.
    LostWrite {
        /// The key.
        key: Vec<u8>,
        /// The value (`None`: a delete).
        value: Option<Vec<u8>>,
        /// Its dot.
        dot: Option<Dot>,
    },
    /// Two siblings where one write had seen the other.
    FalseSibling {
        /// The key.
        key: Vec<u8>,
        /// The earlier write's value.
        seen: Option<Vec<u8>>,
        /// The later write's value (whose context covered the earlier).
        by: Option<Vec<u8>>,
    },
    /// A value an acknowledged delete had superseded is back after its tombstone was
    /// collected.
    Resurrected {
        /// The key.
        key: Vec<u8>,
        /// The value that came back.
        value: Option<Vec<u8>>,
    },
    /// A live node that is not one of a key's owners still holds a copy after the run settled.
    Misplaced {
        /// The key.
        key: Vec<u8>,
        /// The node holding it.
        node: String,
    },
    /// Replicas of a key differ.
    Diverged {
        /// The key.
        key: Vec<u8>,
        /// The replicas, with a short description of each copy.
        copies: Vec<(String, String)>,
    },
    /// Nodes disagree about membership after the faults healed (simulator only).
    Membership {
        /// What disagreed.
        what: String,
    },
    /// A read returned a value after its deadline plus the clock-skew bound.
    ExpiredRead {
        /// The key.
        key: Vec<u8>,
        /// The value returned.
        value: Vec<u8>,
        /// How long after the latest moment it could still be returned the read was issued.
        late_by_ms: u64,
    },
    /// A counter's final value is below its acknowledged increments or above all attempted.
    CounterOutOfRange {
        /// The key.
        key: Vec<u8>,
        /// Its value.
        value: i64,
        /// Sum of the acknowledged increments.
        acked: i64,
        /// Sum of the increments that may have been applied.
        attempted: i64,
    },
    /// A write was acknowledged while fewer than W replicas held it.
    UnderReplicatedAck {
        /// The key.
        key: Vec<u8>,
        /// Its dot.
        dot: Dot,
        /// Replicas holding it at acknowledgement time.
        holders: usize,
        /// W.
        needed: usize,
    },
}

fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        Some(b) => format!("{:?}", String::from_utf8_lossy(b)),
        None => "<delete>".into(),
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::ExpiredRead {
                key,
                value,
                late_by_ms,
            } => write!(
                f,
                "expired value read: key {:?} value {:?}, {late_by_ms} ms past its deadline and the skew bound",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            ),
            Violation::CounterOutOfRange {
                key,
                value,
                acked,
                attempted,
            } => write!(
                f,
                "counter {:?} is {value}, outside {acked}..={attempted} (acknowledged..=attempted)",
                String::from_utf8_lossy(key)
            ),
            Violation::LostWrite { key, value, dot } => write!(
                f,
                "lost acknowledged write: key {:?} value {} dot {:?}",
                String::from_utf8_lossy(key),
                show(value),
                dot
            ),
            Violation::FalseSibling { key, seen, by } => write!(
                f,
                "false sibling: key {:?}: {} is kept beside {}, whose context had seen it",
                String::from_utf8_lossy(key),
                show(seen),
                show(by)
            ),
            Violation::Resurrected { key, value } => write!(
                f,
                "deleted value came back: key {:?}: {} after its tombstone was collected",
                String::from_utf8_lossy(key),
                show(value)
            ),
            Violation::Misplaced { key, node } => write!(
                f,
                "key {:?} is still on {node}, which is not one of its owners",
                String::from_utf8_lossy(key)
            ),
            Violation::Diverged { key, copies } => write!(
                f,
                "replicas diverged: key {:?}: {}",
                String::from_utf8_lossy(key),
                copies
                    .iter()
                    .map(|(n, c)| format!("{n}={c}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            Violation::Membership { what } => write!(f, "membership: {what}"),
            Violation::UnderReplicatedAck {
                key,
                dot,
                holders,
                needed,
            } => write!(
                f,
                "write acknowledged on {holders} replicas, W={needed}: key {:?} dot {dot:?}",
                String::from_utf8_lossy(key)
            ),
        }
    }
}

/// A short description of an object for reports.
pub fn describe(o: &Object) -> String {
    let sibs: Vec<String> = o
        .siblings()
        .iter()
        .map(|s| format!("{}@{}:{}", show(&s.value), s.dot.actor, s.dot.counter))
        .collect();
    format!("[{}]", sibs.join(","))
}

/// For each actor, the two highest counters that the context of a write that may exist covers,
/// with the writes that cover them: "is this dot covered by a write other than its own" in one
/// lookup, so the checker stays linear in the history (a 30-minute soak records millions of
/// writes).
struct Covering<'a> {
    top: BTreeMap<dynamokv_core::ActorId, [(u64, Option<&'a WriteRecord>); 2]>,
}

impl<'a> Covering<'a> {
    fn of(ws: &[&'a WriteRecord]) -> Self {
        let mut top: BTreeMap<dynamokv_core::ActorId, [(u64, Option<&'a WriteRecord>); 2]> =
            BTreeMap::new();
        for w in ws.iter().filter(|w| w.may_exist()) {
            for (actor, entry) in w.context.iter() {
                let t = top.entry(actor).or_insert([(0, None), (0, None)]);
                if entry.counter > t[0].0 {
                    t[1] = t[0];
                    t[0] = (entry.counter, Some(*w));
                } else if entry.counter > t[1].0 {
                    t[1] = (entry.counter, Some(*w));
                }
            }
        }
        Covering { top }
    }

    /// Whether a write other than `w` that may exist covers `d` in its context.
    fn by_another(&self, d: Dot, w: &WriteRecord) -> bool {
        let Some(t) = self.top.get(&d.actor) else {
            return false;
        };
        let (first, by) = t[0];
        if first >= d.counter && !by.is_some_and(|b| std::ptr::eq(b, w)) {
            return true;
        }
        t[1].0 >= d.counter
    }
}

/// Checks `writes` against the final state: for each key, every replica's copy (`None` when a
/// replica holds none).
pub fn check(
    writes: &[WriteRecord],
    replicas: &BTreeMap<Vec<u8>, Vec<(String, Option<Object>)>>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let mut by_key: BTreeMap<&[u8], Vec<&WriteRecord>> = BTreeMap::new();
    for w in writes {
        by_key.entry(&w.key).or_default().push(w);
    }
    let empty = Vec::new();
    let keys: BTreeSet<&[u8]> = by_key
        .keys()
        .copied()
        .chain(replicas.keys().map(Vec::as_slice))
        .collect();
    for key in keys {
        let copies = replicas.get(key).unwrap_or(&empty);
        // Convergence.
        let first = copies.first().map(|(_, o)| o.clone().unwrap_or_default());
        if copies
            .iter()
            .any(|(_, o)| Some(o.clone().unwrap_or_default()) != first)
        {
            out.push(Violation::Diverged {
                key: key.to_vec(),
                copies: copies
                    .iter()
                    .map(|(n, o)| (n.clone(), describe(&o.clone().unwrap_or_default())))
                    .collect(),
            });
        }
        let merged = copies
            .iter()
            .filter_map(|(_, o)| o.as_ref())
            .fold(Object::new(), |acc, o| acc.merge(o));
        let ws = by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        let covering = Covering::of(ws);

        // Lost writes.
        for w in ws.iter().filter(|w| w.outcome == Outcome::Ok) {
            let present = match w.dot {
                Some(d) => merged.siblings().iter().any(|s| s.dot == d),
                None => merged.siblings().iter().any(|s| s.value == w.value),
            };
            let superseded = w.dot.is_some_and(|d| covering.by_another(d, w));
            // A delete's tombstone may be collected once every replica held it; then nothing
            // it superseded may be back.
            if !present && w.value.is_none() {
                for s in merged.live() {
                    if w.context.covers(s.dot) {
                        out.push(Violation::Resurrected {
                            key: key.to_vec(),
                            value: s.value.clone(),
                        });
                    }
                }
                continue;
            }
            if !present && !superseded {
                out.push(Violation::LostWrite {
                    key: key.to_vec(),
                    value: w.value.clone(),
                    dot: w.dot,
                });
            }
        }

        // False siblings.
        let by_dot: BTreeMap<Dot, &WriteRecord> =
            ws.iter().rev().filter_map(|w| Some((w.dot?, *w))).collect();
        let by_value: BTreeMap<&[u8], &WriteRecord> = ws
            .iter()
            .rev()
            .filter(|w| w.dot.is_none())
            .filter_map(|w| Some((w.value.as_deref()?, *w)))
            .collect();
        let find = |s: &dynamokv_core::Sibling| -> Option<&WriteRecord> {
            by_dot
                .get(&s.dot)
                .or_else(|| s.value.as_deref().and_then(|v| by_value.get(v)))
                .copied()
        };
        let sibs = merged.siblings();
        for a in sibs {
            for b in sibs {
                if a.dot == b.dot {
                    continue;
                }
                if let Some(wb) = find(b)
                    && wb.context.covers(a.dot)
                {
                    out.push(Violation::FalseSibling {
                        key: key.to_vec(),
                        seen: a.value.clone(),
                        by: b.value.clone(),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamokv_core::ActorId;

    fn write(o: &Object, actor: u64, ctx: &VersionVector, v: &str) -> (Object, WriteRecord) {
        let new = o.update(ActorId(actor), ctx, Some(v.as_bytes().to_vec()), 1);
        let dot = new
            .siblings()
            .iter()
            .find(|s| s.value.as_deref() == Some(v.as_bytes()))
            .map(|s| s.dot);
        let rec = WriteRecord {
            key: b"k".to_vec(),
            value: Some(v.as_bytes().to_vec()),
            context: ctx.clone(),
            outcome: Outcome::Ok,
            dot,
        };
        (new, rec)
    }

    fn state(copies: &[(&str, &Object)]) -> BTreeMap<Vec<u8>, Vec<(String, Option<Object>)>> {
        BTreeMap::from([(
            b"k".to_vec(),
            copies
                .iter()
                .map(|(n, o)| (n.to_string(), Some((*o).clone())))
                .collect(),
        )])
    }

    #[test]
    fn a_clean_history_passes() {
        let (o1, w1) = write(&Object::new(), 1, &VersionVector::new(), "a");
        let (o2, w2) = write(&o1, 1, &o1.context(), "b");
        let (o3, w3) = write(&o2, 2, &o1.context(), "c");
        assert_eq!(o3.siblings().len(), 2, "b and c are true siblings");
        let v = check(&[w1, w2, w3], &state(&[("n1", &o3), ("n2", &o3)]));
        assert!(v.is_empty(), "{v:?}");
    }

    #[test]
    fn flags_a_lost_write() {
        let (o1, w1) = write(&Object::new(), 1, &VersionVector::new(), "a");
        let (_o2, w2) = write(&o1, 2, &VersionVector::new(), "b");
        // The final state only has "a": "b" was acknowledged, nobody covered it.
        let v = check(&[w1, w2], &state(&[("n1", &o1), ("n2", &o1)]));
        assert!(
            matches!(&v[..], [Violation::LostWrite { value: Some(b), .. }] if b == b"b"),
            "{v:?}"
        );
        assert!(v[0].to_string().contains("lost acknowledged write"));
    }

    #[test]
    fn superseded_is_not_lost_but_failed_unwritten_superseders_do_not_count() {
        let (o1, w1) = write(&Object::new(), 1, &VersionVector::new(), "a");
        let (o2, w2) = write(&o1, 1, &o1.context(), "b");
        assert!(check(&[w1.clone(), w2.clone()], &state(&[("n1", &o2)])).is_empty());
        let mut never_sent = w2;
        never_sent.outcome = Outcome::Failed {
            maybe_written: false,
        };
        let v = check(&[w1, never_sent], &state(&[("n1", &o2)]));
        assert!(matches!(&v[..], [Violation::LostWrite { .. }]), "{v:?}");
    }

    #[test]
    fn flags_a_false_sibling() {
        let (o1, w1) = write(&Object::new(), 1, &VersionVector::new(), "a");
        // "b" was written having seen "a" ...
        let (_, w2) = write(&o1, 2, &o1.context(), "b");
        // ... but a broken store kept both, as if "b" were blind.
        let (broken, _) = write(&o1, 2, &VersionVector::new(), "b");
        let v = check(&[w1, w2], &state(&[("n1", &broken)]));
        assert!(
            v.iter()
                .any(|x| matches!(x, Violation::FalseSibling { .. })),
            "{v:?}"
        );
    }

    #[test]
    fn flags_diverged_replicas() {
        let (o1, w1) = write(&Object::new(), 1, &VersionVector::new(), "a");
        let (o2, w2) = write(&o1, 1, &o1.context(), "b");
        let v = check(&[w1, w2], &state(&[("n1", &o2), ("n2", &o1)]));
        assert!(
            matches!(&v[..], [Violation::Diverged { copies, .. }] if copies.len() == 2),
            "{v:?}"
        );
        let missing = BTreeMap::from([(
            b"k".to_vec(),
            vec![
                ("n1".to_string(), Some(o2.clone())),
                ("n2".to_string(), None),
            ],
        )]);
        assert!(
            check(&[], &missing)
                .iter()
                .any(|x| matches!(x, Violation::Diverged { .. }))
        );
    }
}
