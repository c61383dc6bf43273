//! Counters: a convergent PN-counter kept as the value of a key's siblings.
//!
//! Each entry belongs to one writer - an actor and the epoch it started the entry at - and
//! holds the increments and the decrements it applied, apart; two states join by taking each
//! entry's maximum, so the join is commutative, associative and idempotent and a state seen
//! twice counts once. The value is every increment minus every decrement.
//!
//! An increment is applied by its coordinator to its own copy of the key merged with what a
//! read at R found, under the key's lock ([`PnCounter::of`] joins the siblings,
//! [`PnCounter::add`] bumps this actor's entry), then replicated like any write; concurrent increments through other coordinators
//! become siblings, which every read joins. An actor continues its newest entry only while
//! its own copy holds one: a copy it no longer holds (collected, handed over, lost) may come
//! back older than what it had written, so it then starts a new entry, keyed by the dot of the
//! write - dots are never issued twice - and no increment is counted over another.

use crate::version::{ActorId, Object, ValueKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Why a counter operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CounterError {
    /// The key holds a value that is not a counter.
    #[error("the key holds a value that is not a counter")]
    NotACounter,
    /// The new value would leave the range of a signed 64-bit integer.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// A stored counter state could not be decoded.
    #[error("undecodable counter state: {0}")]
    Undecodable(String),
}

/// One writer's entry: increments and decrements applied, apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Sum of increments.
    pub up: u64,
    /// Sum of decrements (as a positive number).
    pub down: u64,
}

/// A PN-counter's state: per writer (actor, epoch), its entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PnCounter {
    entries: BTreeMap<(u64, u64), Entry>,
}

impl PnCounter {
    /// The state encoded in a sibling's value.
    pub fn decode(bytes: &[u8]) -> Result<PnCounter, CounterError> {
        postcard::from_bytes(bytes).map_err(|e| CounterError::Undecodable(e.to_string()))
    }

    /// The bytes a sibling's value holds.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing an in-memory map into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// The counter `object` holds at wall-clock time `now`: the join of its live siblings
    /// (zero when none). Refused when a live sibling is not a counter.
    pub fn of(object: &Object, now: u64) -> Result<PnCounter, CounterError> {
        let mut state = PnCounter::default();
        for s in object.live_at(now) {
            if s.kind != ValueKind::Counter {
                return Err(CounterError::NotACounter);
            }
            let v = s.value.as_deref().unwrap_or_default();
            state.join(&PnCounter::decode(v)?);
        }
        Ok(state)
    }

    /// Joins `other` into this state: each entry's maximum, increments and decrements apart.
    pub fn join(&mut self, other: &PnCounter) {
        for (writer, e) in &other.entries {
            let mine = self.entries.entry(*writer).or_default();
            mine.up = mine.up.max(e.up);
            mine.down = mine.down.max(e.down);
        }
    }

    /// Every increment minus every decrement (wide, so no sum of entries can overflow).
    pub fn total(&self) -> i128 {
        self.entries
            .values()
            .map(|e| i128::from(e.up) - i128::from(e.down))
            .sum()
    }

    /// The value, as clients see it.
    pub fn value(&self) -> i64 {
        self.total().clamp(i64::MIN.into(), i64::MAX.into()) as i64
    }

    /// Adds `by` (negative: a decrement) to `actor`'s newest entry, or to a new one keyed by
    /// `epoch` (the counter of the dot the write will get) when this copy holds none of its
    /// own. Refused, and nothing changed, when the value would leave the 64-bit range.
    pub fn add(&mut self, actor: ActorId, epoch: u64, by: i64) -> Result<(), CounterError> {
        let total = self.total() + i128::from(by);
        if total > i128::from(i64::MAX) || total < i128::from(i64::MIN) {
            return Err(CounterError::Overflow);
        }
        let newest = self
            .entries
            .range((actor.0, 0)..=(actor.0, u64::MAX))
            .next_back()
            .map(|(w, _)| *w)
            .unwrap_or((actor.0, epoch));
        let e = self.entries.entry(newest).or_default();
        let step = by.unsigned_abs();
        let slot = if by >= 0 { &mut e.up } else { &mut e.down };
        *slot = slot.checked_add(step).ok_or(CounterError::Overflow)?;
        Ok(())
    }

    /// Number of writers with an entry.
    pub fn writers(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn increments_and_decrements_add_up_and_overflow_is_refused() {
        let mut c = PnCounter::default();
        c.add(ActorId(1), 1, 5).unwrap();
        c.add(ActorId(1), 9, -2).unwrap();
        c.add(ActorId(2), 3, 10).unwrap();
        assert_eq!(c.value(), 13);
        assert_eq!(c.writers(), 2, "actor 1 continued its entry");
        let before = c.clone();
        assert_eq!(c.add(ActorId(2), 3, i64::MAX), Err(CounterError::Overflow));
        assert_eq!(c, before, "nothing changed");
        let mut low = PnCounter::default();
        low.add(ActorId(1), 1, i64::MIN).unwrap();
        assert_eq!(low.value(), i64::MIN);
        assert_eq!(low.add(ActorId(1), 1, -1), Err(CounterError::Overflow));
        assert_eq!(PnCounter::decode(&c.encode()).unwrap(), c);
        assert!(PnCounter::decode(b"\xff\xff\xff").is_err());
    }

    proptest! {
        /// Replicas that each applied some increments and exchanged states in any order end
        /// with the sum of all of them; joining a state twice counts it once.
        #[test]
        fn join_counts_every_increment_once(
            ops in proptest::collection::vec((0u64..3, -50i64..50), 0..40),
            order in proptest::collection::vec((0usize..3, 0usize..3), 0..40),
        ) {
            let mut replicas = vec![PnCounter::default(); 3];
            let mut sum = 0i64;
            for (i, (actor, by)) in ops.iter().enumerate() {
                let r = *actor as usize;
                replicas[r].add(ActorId(*actor), 1, *by).unwrap();
                sum += by;
                if let Some((a, b)) = order.get(i) {
                    let other = replicas[*b].clone();
                    replicas[*a].join(&other);
                    replicas[*a].join(&other);
                }
            }
            let mut all = PnCounter::default();
            for r in replicas.iter().rev() {
                all.join(r);
            }
            prop_assert_eq!(all.value(), sum);
        }
    }
}
